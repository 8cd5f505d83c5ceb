"""Bars of the depth topic (issue 5). Run: ``python benchmarks/bench_depth.py [--quick] [--max-steps N]``.

1. Softmax-code solver: K-gon (K = 3..16, r = 2) and simplex (K = 3..10, r = K-1) within 1e-6 of the optimum.
2. ``depth`` at the paper's setting (d = 100, K = 10, n = 5, std 0.03), L = 1..10, 5 seeds, run as
   ``igeom sweep depth`` with 2 workers: PASS/FAIL per depth (every run terminal with a converged code phase;
   effective rank close to K-1 at L = 1 and <= K/2 for L >= 3), and the wall time (bar 300 s) with the workers' CPU
   time, both also as a ratio to a baseline workload measured in the same run (the machine is shared, so absolute
   seconds are noisy).
3. Rank-2 solutions: adjacent class angles within 2 degrees of 360/K, read at directional convergence (the code
   phase), at every depth of the sweep where they occur (at least one at L >= 6).

``--follow-stalled`` then follows every run the sweep's stall rule stopped on the rank-1 saddle: each alone, in its
own single-threaded worker, with ``--root-spectrum --plateau-budget 2000 --max-steps 20000`` (as ``igeom run depth
--depths L --seeds 1 --first-seed s`` would), and judges the rank and angle bars again over all runs. Its time is
reported apart: it is the compute those runs need, not part of the 5-minute bar (at the paper's setting L = 10 seed
0, ~3 minutes since session 23's root spectrum; about an hour with BDF2 plateau steps, session 19; docs/depth.md).

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


def _sweep(quick: bool, max_steps: int, depths: list[int], jobs: int) -> tuple[list[dict], list[dict], float, float]:
    """The depth sweep as ``igeom sweep depth --grid depths=... --seeds 5 --jobs 2`` runs it: one point per depth, the
    deepest first (they take longest, so two workers end together). Returns the per-depth table rows, the runs, the
    wall time and the summed time of the points (each in one single-threaded worker: their compute time)."""
    from implicit_geometry.io import read_json
    from implicit_geometry.sweep.runner import run_sweep
    from implicit_geometry.sweep.spec import SweepSpec

    spec = SweepSpec("depth", grid={"depths": [[L] for L in sorted(depths, reverse=True)]},
                     fixed={"max_steps": max_steps, "device": "cpu"}, seeds=5 if not quick else 2)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = run_sweep(spec, f"{tmp}/sweep", jobs=jobs, progress=False)
        wall = time.perf_counter() - t
        if res.failed:
            raise SystemExit(f"depth sweep: {res.failed} point(s) failed: {res.errors}")
        summaries = [read_json(p / "summary.json") for p in sorted((res.folder / "points").iterdir())]
        cpu = sum(s["seconds"] for s in summaries)
    rows = sorted(({**row, "seconds": s["seconds"]} for s in summaries for row in s["table"]), key=lambda r: r["depth"])
    runs = [r for s in summaries for r in s["runs"]]
    return rows, runs, wall, cpu


def _rank_ok(L: int, er: float, K: int) -> bool:
    """The rank bar at depth L: close to K-1 at L = 1, at most K/2 from L = 3 (none at L = 2)."""
    return er > K - 1.5 if L == 1 else er <= K / 2 if L >= 3 else True


def bar_depth(rows: list[dict], runs: list[dict], wall: float, cpu: float, base: float, K: int = 10) -> bool:
    ok = True
    print(f"  rank bar per depth: every run terminal with a converged code, and effective rank > {K - 1.5} at L = 1, "
          f"<= {K / 2} at L >= 3 (L = 2: no rank bar); in brackets the effective rank at the terminal point (margin 10)")
    for row in rows:
        L, er = row["depth"], row["effective_rank_mean"]
        mine = [r for r in runs if r["depth"] == L]
        er_text = "-" if er is None else f"{er:.2f} +- {row['effective_rank_std']:.2f}"
        ter = row.get("terminal_effective_rank_mean")
        good = row["terminal_runs"] == row["runs"] and not row.get("code_unconverged_runs") and er is not None
        good = good and _rank_ok(L, er, K)
        ok &= good
        print(f"  [{'PASS' if good else 'FAIL'}] L={L:2d}: effective rank {er_text} [{'-' if ter is None else f'{ter:.2f}'}] "
              f"(numerical ranks {row['numerical_ranks']}; terminal {row['terminal_runs']}/{row['runs']}"
              + (f", {row['saddle_runs']} on the rank-1 saddle" if row.get("saddle_runs") else "")
              + f"); {row['seconds']:.0f} s; steps to terminal <= {row['steps_max']}, code-phase steps {[r.get('code_steps') for r in mine]}, "
              f"implicit plateau steps {[r.get('plateau_steps') for r in mine]}")
    print(f"[{'PASS' if ok else 'FAIL'}] depth ranks (all runs terminal at every depth; L=1 near {K - 1}, L>=3 at most {K / 2})")
    fast = wall < 300
    print(f"[{'PASS' if fast else 'FAIL'}] depth sweep time on 2 workers: wall {wall:.1f} s, summed point time {cpu:.1f} s (bar 300 s wall); "
          f"= {wall / base:.1f} x / {cpu / base:.1f} x the baseline ({base:.2f} s)")
    return ok and fast


def bar_angles(runs: list[dict], K: int = 10) -> bool:
    """Rank-2 codes read at directional convergence (the code phase), at every depth where they occur."""
    errs = [(r["depth"], r["seed"], r["max_angle_error_deg"]) for r in runs
            if r["terminal"] and r.get("code_converged") and r["numerical_rank"] == 2]
    for L, seed, e in sorted(errs):
        print(f"  L={L:2d} seed {seed}: rank 2, largest |adjacent angle - {360 / K:g}| = {e:.2f} deg")
    deep = [e for L, _, e in errs if L >= 6]
    ok = bool(deep) and max(e for *_, e in errs) <= 2.0
    print(f"[{'PASS' if ok else 'FAIL'}] rank-2 angles within 2 deg of 360/K ({len(errs)} rank-2 runs, {len(deep)} at L >= 6; "
          f"worst {max((e for *_, e in errs), default=float('nan')):.2f} deg)")
    return ok


def _follow_one(args: tuple[int, int, int, int]) -> tuple[float, list[dict]]:
    """One stalled run, alone, in a fresh single-threaded worker. Returns its wall time and its rows."""
    L, seed, budget, max_steps = args
    torch.set_num_threads(1)
    from implicit_geometry.experiments.depth import DepthConfig, run_depth

    cfg = DepthConfig(depths=[L], seeds=1, first_seed=seed, plateau_budget=budget, max_steps=max_steps, device="cpu",
                      root_spectrum=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        summary = run_depth(cfg, f"{tmp}/run", progress=False, figures=False)
        return time.perf_counter() - t, summary["runs"]


def follow_stalled(rows: list[dict], runs: list[dict], jobs: int, budget: int, max_steps: int,
                   K: int = 10) -> bool:
    """Follow the runs the stall rule stopped, then judge the rank and angle bars over all runs."""
    import concurrent.futures as cf
    import multiprocessing as mp

    stalled = sorted(((r["depth"], r["seed"]) for r in runs if r.get("stalled")), key=lambda p: (p[1], p[0]))
    if not stalled:
        print("  no run was stopped by the stall rule: nothing to follow")
        return True
    print(f"  following {len(stalled)} stalled run(s) {stalled} alone, --plateau-budget {budget} --max-steps {max_steps}, "
          f"{jobs} worker(s)")
    t = time.perf_counter()
    followed: dict[tuple[int, int], dict] = {}
    # seed order puts the slowest known run (L = 10 seed 0) first, so the workers end close together
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_follow_one, (L, s, budget, max_steps)): (L, s) for L, s in stalled}
        for fut in cf.as_completed(futures):
            seconds, got = fut.result()
            (r,) = got
            followed[futures[fut]] = r
            print(f"  L={r['depth']:2d} seed {r['seed']}: {seconds:.0f} s, terminal {r['terminal']}, "
                  f"implicit steps {r['plateau_steps']}, flow time on the saddle {r['plateau_flow_time']:.1f}"
                  + (f", effective rank {r['effective_rank']:.2f}, numerical rank {r['numerical_rank']}" if r["terminal"] else "")
                  + (f", largest angle error {r['max_angle_error_deg']:.2f} deg" if r.get("max_angle_error_deg") is not None else ""),
                  flush=True)
    wall = time.perf_counter() - t
    merged = [followed.get((r["depth"], r["seed"]), r) for r in runs]
    ok = True
    for row in rows:
        L = row["depth"]
        mine = [r for r in merged if r["depth"] == L and not r.get("diverged")]
        read = [r for r in mine if r["terminal"] and r.get("code_converged") is not False]
        er = float(np.mean([r["effective_rank"] for r in read])) if read else float("nan")
        good = len(read) == len(mine) == row["runs"] and _rank_ok(L, er, K)
        ok &= good
        if any(r["depth"] == L for r in followed.values()) or not good:
            print(f"  [{'PASS' if good else 'FAIL'}] L={L:2d} with the followed runs: effective rank {er:.2f} "
                  f"(numerical ranks {[r['numerical_rank'] for r in read]}; terminal {len(read)}/{row['runs']})")
    print(f"[{'PASS' if ok else 'FAIL'}] depth ranks with the stalled runs followed (every run terminal; L=1 near {K - 1}, "
          f"L>=3 at most {K / 2}); the follow-up took {wall:.0f} s wall on {jobs} worker(s), apart from the 5-minute bar")
    return bar_angles(merged, K) and ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2 seeds at L = 1, 3, 6 (a smoke run; the bars need the full sweep)")
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--jobs", type=int, default=2, help="sweep workers (the bar: 2 cores)")
    ap.add_argument("--follow-stalled", action="store_true",
                    help="then follow each run the stall rule stopped, alone, with --root-spectrum (~3 minutes at the paper's setting)")
    ap.add_argument("--follow-budget", type=int, default=2000, help="--plateau-budget of the followed runs")
    ap.add_argument("--follow-max-steps", type=int, default=20000, help="--max-steps of the followed runs")
    ap.add_argument("--skip", default="", help="comma-separated: codes,depth (the sweep, which the angle bar reads too)")
    a = ap.parse_args()
    if a.follow_stalled:  # the followed runs' settings, checked before the sweep rather than in a worker after it
        from implicit_geometry._validation import InvalidParameterError
        from implicit_geometry.experiments.depth import DepthConfig

        try:
            DepthConfig(plateau_budget=a.follow_budget, max_steps=a.follow_max_steps).validate()
        except InvalidParameterError as e:
            ap.error(str(e))
    torch.set_num_threads(1)  # a shared, loaded machine: extra threads only spin
    skip = set(a.skip.split(","))
    base = baseline_seconds()
    print(f"baseline: 500 plain-GD steps of the depth-1 UFM (d=100, K=10, n=5, 5 seeds): {base:.2f} s")
    results = []
    if "codes" not in skip:
        results.append(bar_codes(a.quick))
    if "depth" not in skip:
        rows, runs, wall, cpu = _sweep(a.quick, a.max_steps, [1, 3, 6] if a.quick else list(range(1, 11)), a.jobs)
        results.append(bar_depth(rows, runs, wall, cpu, base))
        results.append(bar_angles(runs))
        if a.follow_stalled:
            results.append(follow_stalled(rows, runs, a.jobs, a.follow_budget, a.follow_max_steps))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
