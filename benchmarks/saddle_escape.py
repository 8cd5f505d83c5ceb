"""How long gradient flow sits on the rank-1 saddle of the depth experiment (issue 5), per depth and seed.

Each run is trained by the explicit path rule (``plateau=False``) for ``--saddle-steps`` steps, which brings the
paper's setting (d = 100, K = 10, n = 5, std 0.03) at L >= 6 onto the rank-1 saddle and no further; from there
gradient flow is integrated by backward-Euler steps of fixed flow time ``--dt``
(:func:`implicit_geometry.depth.stepping.backward_euler_step`: Newton-CG with exact Hessian-vector products,
preconditioned by the Gauss-Newton system), halving dt where Newton does not converge (the escape itself is fast).

Printed per run: sigma_1, sigma_2 of the class-mean logits along flow time, sigma_2's relative growth rate over the
first 10 units on the saddle and the escape time it implies under ``d sigma_2/dt = c sigma_2^p`` (``p = 2L/(L+1)``,
blow-up after ``1/((p-1) rate)``), and, if the run escapes within ``--flow``, when, with sigma_1 and the effective
rank at the target margin. Findings are in docs/depth.md ("How long the saddle lasts").

    OMP_NUM_THREADS=1 python benchmarks/saddle_escape.py --depths 8,10 --seeds 0 --dt 1 --flow 60
    python benchmarks/saddle_escape.py --check          # the Hessian-vector product against finite differences
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

from implicit_geometry.depth.curvature import hessian_vector_product, param_dot, softmax_root
from implicit_geometry.depth.stepping import PathSimulator, backward_euler_step
from implicit_geometry.geometry.metrics import effective_rank
from implicit_geometry.models.ufm import DeepUFM
from implicit_geometry.train.losses import CrossEntropy

K, N_PER, D, STD = 10, 5, 100, 0.03


def class_stats(Z, labels):
    avg = np.zeros((len(labels), K))
    avg[np.arange(len(labels)), labels] = 1.0 / N_PER
    M = Z[0].numpy() @ avg
    s = np.linalg.svd(M, compute_uv=False)
    zy = Z[0].numpy()[labels, np.arange(len(labels))]
    other = Z[0].numpy().copy()
    other[labels, np.arange(len(labels))] = -np.inf
    return s, float((zy - other.max(0)).min()), effective_rank(M)


def to_saddle(L, seed, steps, labels, loss):
    """The explicit path rule for ``steps`` steps: it reaches the saddle and cannot leave it."""
    m = DeepUFM.random(num_classes=K, num_samples=len(labels), dim=D, depth=L, batch=1, init_std=STD, seeds=[seed])
    sim = PathSimulator(m, loss, eta=0.01, plateau=False)
    with torch.no_grad():
        sim.run(steps)
    return sim.model, sim.step


def check() -> int:
    labels = np.repeat(np.arange(4), 2)
    loss = CrossEntropy(labels, 4)
    m = DeepUFM.random(num_classes=4, num_samples=8, dim=6, depth=4, batch=1, init_std=0.8, seeds=[3])
    v = [torch.randn(F.shape, dtype=F.dtype, generator=torch.Generator().manual_seed(i)) for i, F in enumerate(m.factors)]

    def gradient(model):
        chain = model.chain()
        G, ls = loss.scaled_gradient(chain.logits)
        g = G * torch.exp(ls)[:, None, None]
        return chain, g, chain.pullback(g)

    chain, g, _ = gradient(m)
    Hv = hessian_vector_product(chain, g, softmax_root(loss, chain.logits), v)
    eps = 1e-5
    plus = gradient(DeepUFM([F + eps * u for F, u in zip(m.factors, v)]))[2]
    minus = gradient(DeepUFM([F - eps * u for F, u in zip(m.factors, v)]))[2]
    diff = [h - (a - b) / (2 * eps) for h, a, b in zip(Hv, plus, minus)]
    err = math.sqrt(float(param_dot(diff, diff)[0]) / float(param_dot(Hv, Hv)[0]))
    ok = err < 1e-7
    print(f"[{'PASS' if ok else 'FAIL'}] Hessian-vector product vs central differences of the gradient: relative error {err:.1e}")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", default="8,10")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--dt", type=float, default=1.0, help="flow time per backward-Euler step")
    ap.add_argument("--flow", type=float, default=60.0, help="flow time to integrate from the saddle")
    ap.add_argument("--target-margin", type=float, default=10.0)
    ap.add_argument("--saddle-steps", type=int, default=300, help="explicit path steps to reach the saddle")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.check:
        return check()
    labels = np.repeat(np.arange(K), N_PER)
    loss = CrossEntropy(labels, K)
    for L in [int(x) for x in a.depths.split(",")]:
        p = 2 * L / (L + 1)
        for seed in [int(x) for x in a.seeds.split(",")]:
            t0 = time.perf_counter()
            m, steps = to_saddle(L, seed, a.saddle_steps, labels, loss)
            s, margin, _ = class_stats(m.logits(), labels)
            print(f"L={L} seed {seed}: after {steps} explicit path steps sigma_1 {s[0]:.3e}, sigma_2 {s[1]:.3e}, margin {margin:.3f}", flush=True)
            t, first, escaped, rate, h = 0.0, None, None, None, a.dt
            while t < a.flow:
                nxt, nit = backward_euler_step(m, loss, h)
                if nxt is None:  # the escape itself is fast: halve dt (down to dt/1024), grow it back after successes
                    if h < a.dt / 1024:
                        print(f"  t={t:.2f}: Newton did not converge even at dt {h:g}; stopped", flush=True)
                        break
                    h /= 2
                    continue
                m = nxt
                t += h
                s, margin, er = class_stats(m.logits(), labels)
                if first is None:
                    first = (t, s[1])
                if rate is None and t - first[0] >= 10:  # sigma_2's growth rate over the first 10 units on the saddle
                    rate = math.log(s[1] / first[1]) / (t - first[0])
                    print(f"  sigma_2 grows {100 * rate:.2f}% per unit flow time over t = {first[0]:.1f}..{t:.1f}"
                          + (f": blow-up estimate of the escape {1 / ((p - 1) * rate) + first[0]:.0f} units from the saddle"
                             if rate > 0 else ""), flush=True)
                if escaped is None and margin > 0:
                    escaped = t
                print(f"  t={t:7.2f}  sigma_1 {s[0]:.4e}  sigma_2 {s[1]:.4e}  margin {margin:8.3f}  dt {h:.3g}  Newton {nit:2d}  "
                      f"wall {time.perf_counter() - t0:6.1f} s", flush=True)
                if margin >= a.target_margin:
                    print(f"  TERMINAL at flow time {t:.1f} from the saddle (all samples separated from t = {escaped:.1f}): "
                          f"sigma_1 {s[0]:.3e}, sigma_2/sigma_1 {s[1] / s[0]:.2e}, effective rank {er:.5f}; "
                          f"wall {time.perf_counter() - t0:.1f} s", flush=True)
                    break
                h = min(a.dt, 2 * h)
            else:
                print(f"  still on the saddle after flow time {t:.1f} (margin {margin:.3f}); wall {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
