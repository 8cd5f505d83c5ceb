"""Bars of the depth topic (issue 5). Run: ``python benchmarks/bench_depth.py [--quick] [--max-steps N]``.

1. Softmax-code solver: K-gon (K = 3..16, r = 2) and simplex (K = 3..10, r = K-1) within 1e-6 of the optimum.
2. ``depth`` at the paper's setting (d = 100, K = 10, n = 5, std 0.03), L = 1..10, 5 seeds: PASS/FAIL per depth
   (every run terminal; effective rank close to K-1 at L = 1 and <= K/2 for L >= 3); wall time, CPU time, and both
   as a ratio to a baseline workload measured in the same run (the machine is shared, so absolute seconds are
   noisy). Unless ``--skip old``: the same sweep with the previous rule (``plateau=False``), its time as a ratio, and
   per seed the effective/numerical ranks of both rules where the previous one reached the terminal phase.
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


def _sweep(quick: bool, max_steps: int, plateau: bool) -> tuple[dict, float, float]:
    from implicit_geometry.experiments.depth import DepthConfig, run_depth

    cfg = DepthConfig(seeds=5 if not quick else 2, depths=list(range(1, 11)) if not quick else [1, 3, 6],
                      max_steps=max_steps, device="cpu", plateau=plateau)
    with tempfile.TemporaryDirectory() as tmp:
        t, c = time.perf_counter(), time.process_time()
        s = run_depth(cfg, f"{tmp}/run", progress=False, figures=False)
        return s, time.perf_counter() - t, time.process_time() - c


def bar_depth(quick: bool, max_steps: int, base: float, compare_old: bool) -> tuple[bool, dict]:
    s, wall, cpu = _sweep(quick, max_steps, plateau=True)
    K = s["K"]
    ok = True
    print(f"  rank bar per depth: every run terminal, and effective rank > {K - 1.5} at L = 1, <= {K / 2} at L >= 3 "
          "(L = 2: no rank bar)")
    for row in s["table"]:
        L, er = row["depth"], row["effective_rank_mean"]
        runs = [r for r in s["runs"] if r["depth"] == L]
        nonterm = [r["effective_rank"] for r in runs if not r["terminal"]]
        er_text = "-" if er is None else f"{er:.2f} +- {row['effective_rank_std']:.2f}"
        good = row["terminal_runs"] == row["runs"] and er is not None
        if good and L == 1:
            good = er > K - 1.5
        elif good and L >= 3:
            good = er <= K / 2
        ok &= good
        print(f"  [{'PASS' if good else 'FAIL'}] L={L:2d}: effective rank {er_text} (numerical ranks {row['numerical_ranks']}; "
              f"terminal {row['terminal_runs']}/{row['runs']}"
              + (f", the others now at rank {np.round(nonterm, 2).tolist()}" if nonterm else "")
              + f"); steps <= {row['steps_max']}, implicit plateau steps {[r['plateau_steps'] for r in runs]}")
    print(f"[{'PASS' if ok else 'FAIL'}] depth ranks (all runs terminal at every depth; L=1 near {K - 1}, L>=3 at most {K / 2})")
    fast = wall < 300
    print(f"[{'PASS' if fast else 'FAIL'}] depth sweep time: wall {wall:.1f} s, CPU {cpu:.1f} s (bar 300 s); "
          f"= {wall / base:.1f} x / {cpu / base:.1f} x the baseline ({base:.2f} s)")
    if compare_old:
        old, owall, ocpu = _sweep(quick, max_steps, plateau=False)
        print(f"  previous rule (explicit path steps throughout, --no-plateau), same seeds: wall {owall:.1f} s, CPU {ocpu:.1f} s; "
              f"new / previous = {wall / owall:.2f} (wall), {cpu / ocpu:.2f} (CPU)")
        same = True
        for row in old["table"]:
            L = row["depth"]
            pairs = [(a, b) for a in s["runs"] for b in old["runs"]
                     if a["depth"] == L == b["depth"] and a["seed"] == b["seed"] and a["terminal"] and b["terminal"]]
            if not pairs:
                print(f"  L={L:2d}: previous rule terminal in {row['terminal_runs']}/{row['runs']} runs, none in common (not compared)")
                continue
            if len(pairs) < row["terminal_runs"]:  # the previous rule reached the terminal phase, the new one did not
                same = False
            d_er = max(abs(a["effective_rank"] - b["effective_rank"]) for a, b in pairs)
            ranks = all(a["numerical_rank"] == b["numerical_rank"] for a, b in pairs)
            same &= d_er <= 0.05 and ranks
            print(f"  L={L:2d}: effective rank new {np.round([a['effective_rank'] for a, _ in pairs], 3).tolist()} "
                  f"previous {np.round([b['effective_rank'] for _, b in pairs], 3).tolist()}; largest difference {d_er:.3g}, "
                  f"numerical ranks {'equal' if ranks else 'DIFFER'}; seeds terminal under both rules: {len(pairs)}/{row['runs']}")
        print(f"[{'PASS' if same else 'FAIL'}] unchanged where the previous rule reached the terminal phase "
              "(effective rank within 0.05, same numerical rank, per seed)")
        ok &= same
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
    ap.add_argument("--skip", default="", help="comma-separated: codes,depth,old,angles (old: the previous rule's sweep)")
    a = ap.parse_args()
    torch.set_num_threads(1)  # a shared, loaded machine: extra threads only spin
    skip = set(a.skip.split(","))
    base = baseline_seconds()
    print(f"baseline: 500 plain-GD steps of the depth-1 UFM (d=100, K=10, n=5, 5 seeds): {base:.2f} s")
    results = []
    if "codes" not in skip:
        results.append(bar_codes(a.quick))
    if "depth" not in skip:
        results.append(bar_depth(a.quick, a.max_steps, base, "old" not in skip)[0])
    if "angles" not in skip:
        results.append(bar_angles(a.quick, a.angle_margin, a.max_steps))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
