"""Exactness, shown: run the full simulation (all factors as matrices, core :class:`Simulator` with plain GD) from
a Hadamard initialization and compare it with the reduced dynamics.

Reports over time (a) the largest off-diagonal entry of ``Q^T Zbar Q`` (the singular vectors stay frozen) and
(b) the relative gap ``max_i |a_sim - a_ref| / max_i a_ref`` between the simulated spectrum (the diagonal) and
the reduced ODE (gradient flow at ``t = step * lr``; differs by the O(lr) discretization of GD) and the exact
reduced GD map (differs by rounding only).

>>> r = exactness_check([[0.0, 0.3, 0.2, 0.1]], depth=2, lr=1e-3, t_end=0.5)
>>> bool(r.max_offdiag < 1e-12), bool(r.max_gap_gd < 1e-12), bool(r.max_gap_ode < 1e-3)
(True, True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from implicit_geometry._validation import check_choice, check_float, check_int
from implicit_geometry.dynamics.hadamard import REDUCTIONS, check_spectrum, class_logits, hadamard_init, spectral_coordinates
from implicit_geometry.dynamics.reduced import gd_reduced, solve_reduced
from implicit_geometry.train.losses import CrossEntropy
from implicit_geometry.train.simulator import OptimizerConfig, Simulator, record_steps
from implicit_geometry.train.threads import threads_for


@dataclass
class ExactnessReport:
    """Per record (T,) and initial condition (B,): ``offdiag``, ``gap_ode``, ``gap_gd``; spectra (T, B, K)."""

    steps: np.ndarray
    t: np.ndarray
    offdiag: np.ndarray
    gap_ode: np.ndarray
    gap_gd: np.ndarray
    a_sim: np.ndarray
    a_ode: np.ndarray
    seconds_sim: float

    @property
    def max_offdiag(self) -> float:
        return float(self.offdiag.max())

    @property
    def max_gap_ode(self) -> float:
        return float(self.gap_ode.max())

    @property
    def max_gap_gd(self) -> float:
        return float(self.gap_gd.max())

    def to_dict(self) -> dict[str, Any]:
        return {"max_offdiag": self.max_offdiag, "max_rel_gap_ode": self.max_gap_ode, "max_rel_gap_gd": self.max_gap_gd,
                "final_t": float(self.t[-1]), "seconds_full_simulation": self.seconds_sim}


def relative_gap(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``max_i |a_i - ref_i| / max_i |ref_i|`` over the last axis."""
    return np.abs(a - ref).max(-1) / np.maximum(np.abs(ref).max(-1), 1e-300)


def simulate_full(
    a0: Any,
    *,
    depth: int = 1,
    dim: int | None = None,
    samples_per_class: int = 1,
    reduction: str = "sum",
    lr: float = 1e-3,
    steps: int = 1000,
    records: int = 40,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Full GD from the Hadamard init of spectra a0 (B, K): returns (record steps, Q^T Zbar Q per record (T, B, K, K),
    final factors' spectra unused, seconds). Only the :class:`Simulator` is timed."""
    import time

    init = hadamard_init(a0, depth=depth, dim=dim, samples_per_class=samples_per_class, seed=seed, device=device)
    k = init.num_classes
    loss = CrossEntropy(init.labels, k, reduction=reduction, device=device)
    sim = Simulator(init.model, loss, OptimizerConfig(name="gd", lr=lr))
    marks = record_steps(steps, records)
    coords: list[np.ndarray] = []

    def on_record(s: Simulator) -> None:
        coords.append(spectral_coordinates(class_logits(s.model.logits(), samples_per_class), init.Q))

    # Each matrix is tiny (K, d ~ 16..64), however large the batch: a second intra-op thread costs more in
    # synchronization than it gains, so always one (numel 0 says "small").
    with threads_for(0, torch.device(device)):
        t0 = time.perf_counter()
        sim.run(steps, record_at=marks, on_record=on_record)
        seconds = time.perf_counter() - t0
    return np.asarray(marks), np.stack(coords), init.Q, seconds


def exactness_check(
    a0: Any,
    *,
    depth: int = 1,
    dim: int | None = None,
    samples_per_class: int = 1,
    reduction: str = "sum",
    lr: float = 1e-3,
    t_end: float = 1.0,
    records: int = 40,
    seed: int = 0,
    rtol: float = 1e-11,
) -> ExactnessReport:
    """Full simulation (GD, learning rate ``lr``, ``round(t_end/lr)`` steps, ``reduction``-CE) against the reduced
    ODE and the reduced GD map from the same initial spectra a0 (K) or (B, K)."""
    a0 = check_spectrum(a0, name="a0")
    L = check_int("depth", depth, minimum=1)
    n = check_int("samples_per_class", samples_per_class, minimum=1)
    check_choice("reduction", reduction, REDUCTIONS)
    lr = check_float("lr", lr, minimum=0.0, strict_min=True)
    t_end = check_float("t_end", t_end, minimum=0.0, strict_min=True)
    steps = max(1, int(round(t_end / lr)))
    marks, coords, _, seconds = simulate_full(a0, depth=L, dim=dim, samples_per_class=n, reduction=reduction, lr=lr,
                                              steps=steps, records=records, seed=seed)
    k = a0.shape[1]
    diag = np.einsum("tbii->tbi", coords)
    off = np.abs(coords - diag[..., :, None] * np.eye(k)).max((-1, -2))
    t = marks * lr
    ode = solve_reduced(a0, t, depth=L, samples_per_class=n, reduction=reduction, rtol=rtol, atol=1e-13).a
    gd = gd_reduced(a0, lr, marks, depth=L, samples_per_class=n, reduction=reduction)
    return ExactnessReport(steps=marks, t=t, offdiag=off, gap_ode=relative_gap(diag, ode), gap_gd=relative_gap(diag, gd),
                           a_sim=diag, a_ode=ode, seconds_sim=seconds)
