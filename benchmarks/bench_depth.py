"""Bars of the depth topic (issue 5). Run: ``python benchmarks/bench_depth.py [--quick] [--max-steps N]``.

1. Softmax-code solver: K-gon (K = 3..16, r = 2) and simplex (K = 3..10, r = K-1) within 1e-6 of the optimum.
2. ``depth`` at the paper's setting (d = 100, K = 10, n = 5, std 0.03), L = 1..10, 5 seeds: effective rank
   close to K-1 at L = 1 and <= K/2 for L >= 3; wall time, CPU time, and both as a ratio to a baseline workload
   measured in the same run (the machine is shared, so absolute seconds are noisy).
3. Rank-2 solutions at large depth: adjacent class angles within 2 degrees of 360/K, after training further
   into the terminal phase (``--angle-margin``; directional convergence is slow).

Baseline: 500 plain-GD updates of the depth-1 UFM at the paper's size (5 seeds batched), i.e. what a textbook
loop costs on this machine right now.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time

import numpy as np
import torch


def baseline_seconds() -> float:
    from implicit_geometry.models.ufm import DeepUFM
    from implicit_geometry.train.losses import CrossEntropy
    from implicit_geometry.train.simulator import OptimizerConfig, Simulator

    m = DeepUFM.random(num_classes=10, num_samples=50, dim=100, depth=1, batch=5, init_std=0.03)
    sim = Simulator(m, CrossEntropy(np.repeat(np.arange(10), 5), 10), OptimizerConfig("gd", lr=0.01))
    t = time.perf_counter()
    sim.run(500)
    return time.perf_counter() - t


def bar_codes(quick: bool) -> bool:
    from implicit_geometry.depth.codes import softmax_code

    worst = 0.0
    t = time.perf_counter()
    for K in range(3, 17 if not quick else 9):
        c = softmax_code(K, 2, restarts=6)
        err = abs(c.distance - (1 - math.cos(2 * math.pi / K)))
        worst = max(worst, err)
        print(f"  K-gon K={K:2d}: distance {c.distance:.12f}, error {err:.1e}, restarts {np.round(c.restarts, 6).tolist()}")
    for K in range(3, 11):
        c = softmax_code(K, K - 1)
        worst = max(worst, abs(c.distance - K / (K - 1)))
    for K, r in ((6, 3), (8, 4)):
        c = softmax_code(K, r, restarts=6)
        print(f"  cross-polytope K={K} r={r}: distance {c.distance:.9f} (optimum 1)")
    ok = worst < 1e-6
    print(f"[{'PASS' if ok else 'FAIL'}] softmax-code solver: worst error {worst:.1e} (bar 1e-6), {time.perf_counter() - t:.1f} s")
    return ok


def bar_depth(quick: bool, max_steps: int, base: float) -> tuple[bool, dict]:
    from implicit_geometry.experiments.depth import DepthConfig, run_depth

    cfg = DepthConfig(seeds=5 if not quick else 2, depths=list(range(1, 11)) if not quick else [1, 3, 5],
                      max_steps=max_steps, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        t, c = time.perf_counter(), time.process_time()
        s = run_depth(cfg, f"{tmp}/run", progress=False)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    K = s["K"]
    ok = True
    for row in s["table"]:
        L, er = row["depth"], row["effective_rank_mean"]
        flagged = f"{row['runs'] - row['terminal_runs']} not terminal" if row["terminal_runs"] < row["runs"] else "all terminal"
        nonterm = [r["effective_rank"] for r in s["runs"] if r["depth"] == L and not r["terminal"]]
        er_text = "-" if er is None else f"{er:.2f} +- {row['effective_rank_std']:.2f}"
        print(f"  L={L:2d}: effective rank {er_text} "
              f"(numerical ranks {row['numerical_ranks']}; {flagged}"
              + (f", their current rank {np.round(nonterm, 2).tolist()}" if nonterm else "") + f"); steps <= {row['steps_max']}")
        if er is None:
            ok = False
        elif L == 1:
            ok &= er > K - 1.5
        elif L >= 3:
            ok &= er <= K / 2
    print(f"[{'PASS' if ok else 'FAIL'}] depth ranks (L=1 near {K - 1}, L>=3 at most {K / 2}; flagged runs excluded)")
    fast = wall < 300
    print(f"[{'PASS' if fast else 'FAIL'}] depth sweep time: wall {wall:.1f} s, CPU {cpu:.1f} s (bar 300 s); "
          f"= {wall / base:.1f} x / {cpu / base:.1f} x the baseline ({base:.2f} s)")
    return ok and fast, s


def bar_angles(quick: bool, margin: float, max_steps: int) -> bool:
    from implicit_geometry.experiments.depth import DepthConfig, run_depth

    cfg = DepthConfig(seeds=5 if not quick else 2, depths=[4], target_margin=margin,
                      max_steps=max_steps, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        s = run_depth(cfg, f"{tmp}/run", progress=False)
    errs = [(r["depth"], r["seed"], r["max_angle_error_deg"]) for r in s["runs"] if r["terminal"] and r["numerical_rank"] == 2]
    for L, seed, e in errs:
        print(f"  L={L} seed {seed}: rank 2, largest |adjacent angle - 36| = {e:.2f} deg")
    ok = bool(errs) and max(e for *_, e in errs) <= 2.0
    print(f"[{'PASS' if ok else 'FAIL'}] rank-2 angles within 2 deg of 360/K at target margin {margin} ({len(errs)} rank-2 runs)")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--angle-margin", type=float, default=200.0)
    ap.add_argument("--skip", default="", help="comma-separated: codes,depth,angles")
    a = ap.parse_args()
    torch.set_num_threads(1)  # a shared, loaded machine: extra threads only spin
    skip = set(a.skip.split(","))
    base = baseline_seconds()
    print(f"baseline: 500 plain-GD steps of the depth-1 UFM (d=100, K=10, n=5, 5 seeds): {base:.2f} s")
    results = []
    if "codes" not in skip:
        results.append(bar_codes(a.quick))
    if "depth" not in skip:
        results.append(bar_depth(a.quick, a.max_steps, base)[0])
    if "angles" not in skip:
        results.append(bar_angles(a.quick, a.angle_margin, a.max_steps))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
