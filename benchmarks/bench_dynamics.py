"""Bars of issue 4 (Hadamard dynamics), each printed with the number it is judged on and, for speed, a ratio
against a baseline measured in the same run.

1. Exactness: reduced ODE vs the full simulation (core Simulator, optimizer gd, sum-CE), K = 16, L = 1, 2, 3, to
   t = 50: largest off-diagonal of Q^T Z Q (bar 1e-10) and relative singular-value gap (bar 1e-4). GD at learning
   rate eta is the ODE plus O(eta): the raw gap at eta and eta/2 is printed (its halving shows the order), and the
   Richardson combination 2 a(eta/2) - a(eta) removes the O(eta) term; the reduced GD map is printed too (equal
   to the full simulation up to rounding).
2. Lyapunov: L = 1, 100 random trajectories to t = 1e6 on a 400-point log grid: max increase of KL(u || a_hat)
   (bar: never increases, to 1e-9).
3. Speed: 1,000 initial conditions, K = 64, L = 3, to t = 1e3 through the reduced ODE (bar < 10 s), against the
   full simulation measured on a subset and extrapolated at equal accuracy (bar >= 100x).

Run: ``python benchmarks/bench_dynamics.py [--quick] [1] [2] [3]`` (quick: exactness to t = 5 only; digits pick
bars).
"""

from __future__ import annotations

import os
import sys
import time

# One BLAS/torch thread: at these sizes (64 x 64 blocks) a second thread only adds contention on a shared 2-core
# machine; both the reduced ODE and the full simulation get the same treatment.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np
import torch

from implicit_geometry.dynamics import exactness_check, gd_reduced, hadamard_init, log_time_grid, lyapunov, sample_singular_values, solve_reduced
from implicit_geometry.dynamics.exactness import relative_gap
from implicit_geometry.train.losses import CrossEntropy
from implicit_geometry.train.simulator import OptimizerConfig, Simulator


def bar(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def exactness(t_end: float) -> bool:
    print(f"== 1. reduced ODE vs full simulation, K = 16, to t = {t_end:g} (sum-CE, gd)")
    a0 = sample_singular_values(16, 2, l1_norm=1.0, seed=11)
    lr = 5e-3
    ok_all = True
    for L in (1, 2, 3):
        t0 = time.perf_counter()
        r1 = exactness_check(a0, depth=L, dim=20, lr=lr, t_end=t_end, records=30)
        r2 = exactness_check(a0, depth=L, dim=20, lr=lr / 2, t_end=t_end, records=30)
        ode = r1.a_ode[-1]
        rich = relative_gap(2 * r2.a_sim[-1] - r1.a_sim[-1], ode).max()
        off = max(r1.max_offdiag, r2.max_offdiag)
        ok = off < 1e-10 and rich < 1e-4
        ok_all &= ok
        print(f"  L = {L}: max offdiag {off:.1e} (bar 1e-10) | gap to ODE at eta={lr:g}: {r1.gap_ode[-1].max():.2e}, "
              f"eta/2: {r2.gap_ode[-1].max():.2e} (ratio {r1.gap_ode[-1].max() / r2.gap_ode[-1].max():.2f}: O(eta)) | "
              f"Richardson: {rich:.1e} (bar 1e-4) | gap to reduced GD map {max(r1.max_gap_gd, r2.max_gap_gd):.1e} | "
              f"{time.perf_counter() - t0:.0f} s  {bar(ok)}")
    return ok_all


def lyapunov_bar() -> bool:
    print("== 2. Lyapunov function KL(u || a_hat) along 100 random trajectories, to t = 1e6")
    a0 = sample_singular_values(16, 100, l1_norm=1.0, seed=12)
    t = log_time_grid(1e6, 400)
    ok = True
    for L in (1, 2, 3):
        V = lyapunov(solve_reduced(a0, t, depth=L, rtol=1e-10, atol=1e-12).a)
        inc = np.diff(V, axis=0).max()
        line = f"  L = {L}: max increase {inc:.1e}, V {V[0].mean():.3f} -> {V[-1].mean():.3f}"
        if L == 1:
            ok = bool(inc <= 1e-9)
            line += f" (bar <= 1e-9)  {bar(ok)}"
        else:
            line += " (not monotone beyond L = 1, as expected)"
        print(line)
    return ok


def speed() -> bool:
    print("== 3. speed: 1000 ICs, K = 64, L = 3, to t = 1e3")
    K, L, B, T = 64, 3, 1000, 1e3
    a0 = sample_singular_values(K, B, l1_norm=1.0, seed=13)
    t = log_time_grid(T, 100)
    t0, c0 = time.perf_counter(), time.process_time()
    sol = solve_reduced(a0, t, depth=L, rtol=1e-8, atol=1e-10)
    ode_wall, ode_s = time.perf_counter() - t0, time.process_time() - c0
    sub = 20
    ref = solve_reduced(a0[:sub], t, depth=L, rtol=1e-12, atol=1e-14).a
    err_ode = relative_gap(sol.a[:, :sub], ref).max()
    print(f"  reduced ODE: {ode_s:.2f} s CPU ({ode_wall:.2f} s wall on this shared machine) for {B} ICs ({sol.nfev} RHS calls), "
          f"accuracy {err_ode:.1e} (vs rtol 1e-12)  {bar(ode_s < 10)} (bar < 10 s; CPU time = wall time on idle cores)")

    # Full simulation: time per GD step on a batch of `batch` ICs, extrapolated to 1000 ICs.
    batch, steps, lr = 200, 60, 1e-2
    init = hadamard_init(a0[:batch], depth=L, dim=K)
    sim = Simulator(init.model, CrossEntropy(init.labels, K), OptimizerConfig(name="gd", lr=lr))
    sim.run(5)
    c0 = time.process_time()
    sim.run(5 + steps)
    per_step = (time.process_time() - c0) / steps * (B / batch)  # CPU time, like the ODE's
    # Accuracy of GD at lr (the reduced GD map equals the full simulation to rounding, bar 1): O(lr) error at T.
    m = gd_reduced(a0[:sub], lr, [int(T / lr)], depth=L)[-1]
    err_gd = relative_gap(m, ref[-1]).max()
    lr_eq = lr * err_ode / err_gd  # GD's error is linear in lr
    full_coarse = per_step * T / lr
    full_eq = per_step * T / lr_eq
    print(f"  full simulation: {per_step * 1e3:.1f} ms CPU per GD step for {B} ICs (measured on {batch}, x{B // batch}); "
          f"at lr = {lr:g} ({int(T / lr)} steps) error {err_gd:.1e}: {full_coarse:.0f} s  -> {full_coarse / ode_s:.0f}x slower "
          f"while {err_gd / err_ode:.0f}x less accurate")
    ratio = full_eq / ode_s
    print(f"  at equal accuracy ({err_ode:.1e}: lr = {lr_eq:.1e}, {T / lr_eq:.2e} steps): {full_eq:.2e} s -> reduced ODE "
          f"{ratio:.1e}x faster  {bar(ratio >= 100)} (bar >= 100x)")
    return ode_s < 10 and ratio >= 100


def main() -> int:
    quick = "--quick" in sys.argv
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    only = [a for a in sys.argv[1:] if a.isdigit()]
    todo = {"1": lambda: exactness(5.0 if quick else 50.0), "2": lyapunov_bar, "3": speed}
    results = [todo[k]() for k in (only or ["1", "2", "3"])]
    print("all bars:", bar(all(results)))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
