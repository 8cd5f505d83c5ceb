"""Do the backward-Euler plateau steps follow gradient flow's path? (issue 5; slow: minutes per run at L >= 7)

The depth experiment crosses the saddle plateaus of deep UFMs with implicit (backward-Euler) steps, which are
L-stable and take steps limited by accuracy; the explicit path rule (``--no-plateau``) follows gradient flow with
steps capped by the stiff curvature, ~1e2-1e3x more of them. Both are discretizations of the same flow, so they must
reach the same limit geometry. A rank-2 softmax code of K classes is a regular K-gon whose *cyclic order of the
classes* is a discrete outcome of the whole path (which classes split first, which pairs end up adjacent): a
sharp test that the two integrators followed the same path, where a distance between geometries would only say
"both are 10-gons".

Per depth and seed: the cyclic class order of the learned code (starting from class 0, read in the direction of
the smaller neighbour), for the explicit rule and for the plateau steps, at ``--eta`` (and ``--eta / 2`` with
``--halve``), the run times and their ratio (same machine, same process: no lone times).

    OMP_NUM_THREADS=1 python benchmarks/plateau_fidelity.py --depths 6 --seeds 0,1
    OMP_NUM_THREADS=1 python benchmarks/plateau_fidelity.py --depths 7 --seeds 0 --halve     # ~15 min
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import torch

from implicit_geometry.depth.reading import read_geometry
from implicit_geometry.experiments.depth import DepthConfig, run_depth


def cyclic_order(mean_logits: np.ndarray) -> list[int] | None:
    """Class order around the learned rank-2 code, canonical up to rotation and reflection (None if not rank 2)."""
    g = read_geometry(mean_logits, tol=0.05, fit_code=False)
    if g.numerical_rank != 2:
        return None
    X = g.gram_factor  # r x K: one point per class
    order = np.argsort(np.arctan2(X[1], X[0])).tolist()
    i = order.index(0)
    order = order[i:] + order[:i]
    return order if order[1] < order[-1] else [order[0]] + order[1:][::-1]


def one_run(L: int, seed: int, plateau: bool, eta: float, max_steps: int) -> tuple[list[int] | None, float, bool]:
    cfg = DepthConfig(depths=[L], dims=[100], seeds=1, first_seed=seed, device="cpu", plateau=plateau, eta=eta,
                      max_steps=max_steps)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        summary = run_depth(cfg, f"{tmp}/run", progress=False, figures=False)
        seconds = time.perf_counter() - t
        means = np.load(f"{tmp}/run/final.npz")["mean_logits"][0]
    run = summary["runs"][0]
    return (cyclic_order(means) if run["terminal"] else None), seconds, bool(run["terminal"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", default="6")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--eta", type=float, default=0.01)
    ap.add_argument("--halve", action="store_true", help="also both rules at eta / 2")
    ap.add_argument("--max-steps", type=int, default=1_000_000, help="cap for the explicit rule's steps")
    a = ap.parse_args()
    torch.set_num_threads(1)
    ok = True
    etas = [a.eta, a.eta / 2] if a.halve else [a.eta]
    for L in (int(x) for x in a.depths.split(",")):
        for seed in (int(x) for x in a.seeds.split(",")):
            orders = {}
            for eta in etas:
                for plateau in (True, False):
                    order, seconds, terminal = one_run(L, seed, plateau, eta, a.max_steps)
                    orders[(eta, plateau)] = (order, seconds)
                    print(f"  L={L} seed {seed} eta {eta:g} {'plateau steps' if plateau else 'explicit only':13s}: "
                          f"{seconds:6.0f} s, terminal {terminal}, class order {order}", flush=True)
            same = all(o == orders[(a.eta, True)][0] for o, _ in orders.values()) and orders[(a.eta, True)][0] is not None
            ratio = orders[(a.eta, False)][1] / orders[(a.eta, True)][1]
            ok &= same
            print(f"[{'SAME' if same else 'DIFFERENT'}] L={L} seed {seed}: explicit / plateau time {ratio:.1f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
