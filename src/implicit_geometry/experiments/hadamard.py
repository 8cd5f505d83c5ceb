"""Experiment ``hadamard``: analyses of the exact reduced dynamics of Hadamard-initialized (deep) UFMs.

Everything runs through the reduced ODE (:mod:`implicit_geometry.dynamics.reduced`), integrated for whole batches
of random initial conditions at once; :func:`implicit_geometry.dynamics.exactness_check` shows it equals the
full simulation. Conventions: sum-CE by default (``reduction``), gradient flow in time t (GD with learning rate
eta: t = steps * eta), depth L counts weight matrices, ``a`` is the spectrum of the class-level logits, mode 0
(all ones) starts at 0, random spectra are uniform in [low, high] rescaled to L1 norm ``init_norm``.

Analyses (``analyses``):

- ``trajectories``: normalized singular values ``a_hat``, logit norm ``||a||_2``, Lyapunov ``KL(u || a_hat)``
  (monotone for L = 1) for ``depths``;
- ``rank``: effective rank of the logits at the horizon against depth (``rank_depths``);
- ``basin``: fraction of initial conditions heading to neural collapse against L (``basin_depths``) and K
  (``basin_classes``);
- ``exactness``: the full simulation (core ``Simulator``, plain GD, learning rate ``exact_lr`` to ``exact_t``) from
  the same initialization for 2 ICs per depth: off-diagonal of ``Q^T Z Q`` and the singular-value gaps;
- ``repulsion``: when each mode runs away (reaches ``runaway_level``), in which order, against the small-a
  prediction (larger modes first, finite-time blow-up for L >= 2).

Initial conditions with some informative ``a_i = 0`` (``zero_modes`` or ``init``) sit on an invariant face; they
are counted apart and never reported as neural collapse.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from implicit_geometry._validation import InvalidParameterError, check_choice, check_float, check_int, parse_int_list
from implicit_geometry.dynamics.exactness import exactness_check
from implicit_geometry.dynamics.hadamard import REDUCTIONS, check_power_of_two, check_spectrum, sample_singular_values
from implicit_geometry.dynamics.reduced import (
    crossing_times,
    effective_rank_of_spectrum,
    endpoint_classification,
    log_time_grid,
    lyapunov,
    normalized_spectrum,
    predicted_runaway_times,
    solve_reduced,
)
from implicit_geometry.experiments.base import (
    ExperimentConfig,
    Interrupted,
    interruptible,
    progress_bar,
    run_experiment,
)
from implicit_geometry.io import read_torch, write_csv, write_json, write_npz, write_torch

ANALYSES = ("exactness", "trajectories", "rank", "basin", "repulsion")


def _int_list(name: str, values: Any, minimum: int, power_of_two: bool = False) -> list[int]:
    if isinstance(values, str):
        values = parse_int_list(name, values)
    if isinstance(values, (int, np.integer)):
        values = [values]
    out = [check_int(name, v, minimum=minimum) for v in values]
    if not out:
        raise InvalidParameterError(f"{name} must list at least one value (got {values!r})")
    if power_of_two:
        out = [check_power_of_two(v, name) for v in out]
    return sorted(set(out))


@dataclass
class HadamardConfig(ExperimentConfig):
    classes: int = 16
    depths: list[int] = field(default_factory=lambda: [1, 2, 3])
    rank_depths: list[int] = field(default_factory=lambda: list(range(1, 11)))
    basin_depths: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    basin_classes: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    analyses: list[str] = field(default_factory=lambda: list(ANALYSES))
    ics: int = 200
    horizon: float = 1e4
    points: int = 150
    init_norm: float = 1.0
    low: float = 0.0
    high: float = 1.0
    zero_modes: int = 0
    init: list[float] | None = None
    samples_per_class: int = 1
    reduction: str = "sum"
    runaway_level: float = 1.0
    rtol: float = 1e-8
    exact_lr: float = 1e-2
    exact_t: float = 5.0
    figures: bool = True
    seeds: int = 1
    first_seed: int = 0
    device: str = "auto"
    checkpoint_seconds: float = 30.0

    def validate(self) -> HadamardConfig:
        self.classes = check_power_of_two(self.classes, "classes")
        self.depths = _int_list("depths", self.depths, 1)
        self.rank_depths = _int_list("rank_depths", self.rank_depths, 1)
        self.basin_depths = _int_list("basin_depths", self.basin_depths, 1)
        self.basin_classes = _int_list("basin_classes", self.basin_classes, 2, power_of_two=True)
        if isinstance(self.analyses, str):
            self.analyses = [a.strip() for a in self.analyses.split(",") if a.strip()]
        if not self.analyses:
            raise InvalidParameterError(f"analyses must name at least one of {', '.join(ANALYSES)} (got none)")
        self.analyses = [check_choice("analyses", a, ANALYSES) for a in self.analyses]
        self.ics = check_int("ics", self.ics, minimum=1)
        self.horizon = check_float("horizon", self.horizon, minimum=0.0, strict_min=True, maximum=1e12)
        self.points = check_int("points", self.points, minimum=10)
        self.init_norm = check_float("init_norm", self.init_norm, minimum=0.0, strict_min=True)
        self.low = check_float("low", self.low, minimum=0.0)
        self.high = check_float("high", self.high, minimum=self.low, strict_min=True)
        self.zero_modes = check_int("zero_modes", self.zero_modes, minimum=0, maximum=self.classes - 2)
        if self.init is not None:
            if isinstance(self.init, str):
                try:
                    self.init = [float(v) for v in self.init.split(",") if v.strip()]
                except ValueError:
                    raise InvalidParameterError(f"init must be comma-separated numbers >= 0 (got {self.init!r})") from None
            if np.asarray(self.init).size != self.classes:
                raise InvalidParameterError(f"init must have classes = {self.classes} values (got {np.asarray(self.init).size})")
            self.init = check_spectrum(self.init, name="init")[0].tolist()
        self.samples_per_class = check_int("samples_per_class", self.samples_per_class, minimum=1)
        check_choice("reduction", self.reduction, REDUCTIONS)
        self.runaway_level = check_float("runaway_level", self.runaway_level, minimum=0.0, strict_min=True)
        self.rtol = check_float("rtol", self.rtol, minimum=1e-13, maximum=1e-3)
        self.exact_lr = check_float("exact_lr", self.exact_lr, minimum=0.0, strict_min=True, maximum=1.0)
        self.exact_t = check_float("exact_t", self.exact_t, minimum=0.0, strict_min=True)
        if self.exact_t / self.exact_lr > 1e6:
            raise InvalidParameterError(f"exact_t / exact_lr must be at most 1e6 GD steps (got {self.exact_t / self.exact_lr:.3g})")
        self.figures = bool(self.figures)
        self.seeds = check_int("seeds", self.seeds, minimum=1)
        self.validate_run_fields()
        return self




class HadamardRun:
    """The analyses as a list of units (analysis, K, L); each unit's result is kept, checkpointed and resumed."""

    def __init__(self, config: HadamardConfig, folder: Path) -> None:
        self.config = config
        self.folder = folder
        c = config
        self.seed_list = list(range(c.first_seed, c.first_seed + c.seeds))
        units: list[tuple[str, int, int]] = []
        if "exactness" in c.analyses:
            units += [("exactness", c.classes, L) for L in c.depths]
        if "trajectories" in c.analyses:
            units += [("trajectories", c.classes, L) for L in c.depths]
        if "rank" in c.analyses:
            units += [("rank", c.classes, L) for L in c.rank_depths]
        if "basin" in c.analyses:
            units += [("basin", K, L) for K in c.basin_classes for L in c.basin_depths]
        if "repulsion" in c.analyses:
            units += [("repulsion", c.classes, L) for L in c.depths]
        self.units = units
        self.results: dict[str, dict[str, Any]] = {}
        self.seconds = 0.0

    # -- initial conditions and one unit ------------------------------------------------------------------
    def initial_conditions(self, K: int, analysis: str) -> np.ndarray:
        c = self.config
        if c.init is not None and analysis in ("trajectories", "repulsion") and K == c.classes:
            return np.asarray([c.init], dtype=np.float64)
        return np.concatenate([
            sample_singular_values(K, c.ics, low=c.low, high=c.high, l1_norm=c.init_norm, zero_modes=min(c.zero_modes, K - 2), seed=s)
            for s in self.seed_list
        ])

    def solve(self, a0: np.ndarray, L: int, times: np.ndarray) -> np.ndarray:
        c = self.config
        return solve_reduced(a0, times, depth=L, samples_per_class=c.samples_per_class, reduction=c.reduction,
                             rtol=c.rtol, atol=c.rtol * 1e-2).a

    def classify(self, a_end: np.ndarray, a0: np.ndarray, L: int) -> dict[str, np.ndarray]:
        c = self.config
        return endpoint_classification(a_end, depth=L, a0=a0, samples_per_class=c.samples_per_class, reduction=c.reduction)

    def run_unit(self, analysis: str, K: int, L: int) -> dict[str, Any]:
        c = self.config
        a0 = self.initial_conditions(K, analysis)
        if analysis == "exactness":
            r = exactness_check(a0[:2], depth=L, samples_per_class=c.samples_per_class, reduction=c.reduction,
                                lr=c.exact_lr, t_end=c.exact_t, records=30)
            return {"t": r.t, "offdiag": r.offdiag, "gap_ode": r.gap_ode, "gap_gd": r.gap_gd, "seconds": r.seconds_sim}
        if analysis in ("trajectories", "repulsion"):
            t = log_time_grid(c.horizon, c.points if analysis == "trajectories" else 3 * c.points, 1e-3)
            a = self.solve(a0, L, t)
            out: dict[str, Any] = {"t": t, "a": a, "a0": a0}
            if analysis == "repulsion":
                out = {"t": t, "a0": a0, "runaway": crossing_times(t, a, c.runaway_level)[:, 1:],
                       "predicted": predicted_runaway_times(a0, c.runaway_level, depth=L, samples_per_class=c.samples_per_class,
                                                            reduction=c.reduction)[:, 1:]}
            return out
        a = self.solve(a0, L, np.array([0.0, c.horizon]))[-1]
        cls = self.classify(a, a0, L)
        return {"a0": a0, "a_end": a, **cls}

    # -- checkpoints --------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        write_torch(self.folder / "checkpoint.pt", {"results": self.results, "seconds": self.seconds})

    def load_checkpoint(self) -> None:
        state = read_torch(self.folder / "checkpoint.pt")
        self.results = state["results"]
        self.seconds = float(state["seconds"])

    def compute(self, progress: bool = True) -> None:
        c = self.config
        todo = [u for u in self.units if self.key(*u) not in self.results]
        bar = progress_bar(len(self.units), "hadamard", progress, initial=len(self.units) - len(todo))
        bar.unit = "unit"
        last = time.perf_counter()
        with interruptible() as stop, bar:
            for unit in todo:
                if stop.requested:
                    self.save_checkpoint()
                    raise Interrupted(self.folder, len(self.results), "finished unit")
                t0 = time.perf_counter()
                self.results[self.key(*unit)] = self.run_unit(*unit)
                self.seconds += time.perf_counter() - t0
                bar.update(1)
                if time.perf_counter() - last > c.checkpoint_seconds:
                    self.save_checkpoint()
                    last = time.perf_counter()
            if stop.requested:  # the signal came during the last unit: everything is done, finish normally
                pass

    @staticmethod
    def key(analysis: str, K: int, L: int) -> str:
        return f"{analysis}/K{K}/L{L}"

    # -- summary --------------------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        c = self.config
        summary: dict[str, Any] = {
            "experiment": "hadamard",
            "classes": c.classes,
            "reduction": c.reduction,
            "samples_per_class": c.samples_per_class,
            "horizon": c.horizon,
            "initial_conditions_per_setting": c.ics * c.seeds,
            "explicit_init": c.init,
            "seeds": self.seed_list,
            "seconds": round(self.seconds, 4),
            "ode": "da_i/dt = kappa (L+1) (1 - b_i) a_i^(2L/(L+1)), b = chi softmax(chi a / K), "
                   f"kappa = n^(L/(L+1)){' / (nK)' if c.reduction == 'mean' else ''} ({c.reduction}-CE, gradient flow)",
        }
        history: list[dict[str, Any]] = []
        arrays: dict[str, np.ndarray] = {}
        faces: list[dict[str, Any]] = []
        if "exactness" in c.analyses:
            summary["exactness"] = {}
            for L in c.depths:
                r = self.results[self.key("exactness", c.classes, L)]
                summary["exactness"][str(L)] = {"lr": c.exact_lr, "t_end": float(r["t"][-1]), "max_offdiag": float(r["offdiag"].max()),
                                                "max_rel_gap_ode": float(r["gap_ode"].max()), "max_rel_gap_gd": float(r["gap_gd"].max())}
                arrays[f"exactness_offdiag_L{L}"] = r["offdiag"]
                arrays[f"exactness_gap_ode_L{L}"] = r["gap_ode"]
        if "trajectories" in c.analyses:
            summary["trajectories"] = {}
            for L in c.depths:
                r = self.results[self.key("trajectories", c.classes, L)]
                t, a, a0 = r["t"], r["a"], r["a0"]
                V = lyapunov(a)
                finite = np.all(np.isfinite(V), axis=0)
                dV = np.diff(V[:, finite], axis=0)
                norm = np.linalg.norm(a, axis=-1)
                erank = effective_rank_of_spectrum(a)
                cls = self.classify(a[-1], a0, L)
                arrays[f"trajectories_a_L{L}"] = a
                arrays["trajectories_t"] = t
                for j, tj in enumerate(t):
                    history.append({"analysis": "trajectories", "depth": L, "classes": c.classes, "t": float(tj),
                                    "logit_norm_mean": float(norm[j].mean()), "effective_rank_mean": float(erank[j].mean()),
                                    "lyapunov_mean": float(V[j, finite].mean()) if finite.any() else None,
                                    "spread_mean": float(normalized_spectrum(a[j]).min(-1).mean() / max(normalized_spectrum(a[j]).max(-1).mean(), 1e-300))})
                summary["trajectories"][str(L)] = {
                    "lyapunov_start_mean": float(V[0, finite].mean()) if finite.any() else None,
                    "lyapunov_end_mean": float(V[-1, finite].mean()) if finite.any() else None,
                    "lyapunov_max_increase": float(dV.max()) if dV.size else None,
                    "lyapunov_monotone": bool(dV.max() <= 1e-9) if dV.size else None,
                    "logit_norm_end_mean": float(norm[-1].mean()),
                    "effective_rank_end_mean": float(erank[-1].mean()),
                    "fraction_nc": float(cls["nc"][~cls["on_face"]].mean()) if (~cls["on_face"]).any() else None,
                }
                faces.append(self._faces("trajectories", L, c.classes, a0, a[-1], cls))
        if "rank" in c.analyses:
            rows = []
            for L in c.rank_depths:
                r = self.results[self.key("rank", c.classes, L)]
                er = r["effective_rank"][~r["on_face"]] if (~r["on_face"]).any() else r["effective_rank"]
                rows.append({"depth": L, "effective_rank_mean": float(er.mean()), "effective_rank_std": float(er.std()),
                             "effective_rank_median": float(np.median(er)), "fraction_nc": float(r["nc"].mean())})
                history.append({"analysis": "rank", "depth": L, "classes": c.classes, "t": c.horizon, "effective_rank_mean": float(er.mean())})
                arrays[f"rank_effective_rank_L{L}"] = r["effective_rank"]
                faces.append(self._faces("rank", L, c.classes, r["a0"], r["a_end"], r))
            summary["rank_vs_depth"] = rows
        if "basin" in c.analyses:
            table = {}
            for K in c.basin_classes:
                table[str(K)] = {}
                for L in c.basin_depths:
                    r = self.results[self.key("basin", K, L)]
                    off = ~r["on_face"]
                    table[str(K)][str(L)] = float(r["nc"][off].mean()) if off.any() else None
                    history.append({"analysis": "basin", "depth": L, "classes": K, "t": c.horizon,
                                    "fraction_nc": table[str(K)][str(L)], "effective_rank_mean": float(r["effective_rank"].mean())})
                    faces.append(self._faces("basin", L, K, r["a0"], r["a_end"], r))
            summary["basin_fraction_nc"] = table
        if "repulsion" in c.analyses:
            summary["repulsion"] = {}
            for L in c.depths:
                r = self.results[self.key("repulsion", c.classes, L)]
                summary["repulsion"][str(L)] = repulsion_summary(r["a0"][:, 1:], r["runaway"], r["predicted"])
                arrays[f"repulsion_runaway_L{L}"] = np.where(np.isfinite(r["runaway"]), r["runaway"], -1.0)
                arrays[f"repulsion_predicted_L{L}"] = np.where(np.isfinite(r["predicted"]), r["predicted"], -1.0)
        summary["faces"] = [f for f in faces if f["on_face"]]
        summary["verdict"] = verdict(summary, c)
        columns = list(dict.fromkeys(k for row in history for k in row))  # one header for every analysis
        write_csv(self.folder / "history.csv", [{k: row.get(k) for k in columns} for row in history])
        write_npz(self.folder / "final.npz", **arrays)
        if c.figures:
            self._figures(summary)
        write_json(self.folder / "summary.json", summary)
        (self.folder / "checkpoint.pt").unlink(missing_ok=True)
        return summary

    @staticmethod
    def _faces(analysis: str, L: int, K: int, a0: np.ndarray, a_end: np.ndarray, cls: dict[str, np.ndarray]) -> dict[str, Any]:
        zero = a0[:, 1:] == 0
        stayed = bool(np.all(a_end[:, 1:][zero] == 0))
        return {"analysis": analysis, "depth": L, "classes": K, "on_face": int(cls["on_face"].sum()),
                "stayed_on_face": stayed, "of": int(len(a0))}

    def _figures(self, summary: dict[str, Any]) -> None:
        from implicit_geometry.io import save_figure
        from implicit_geometry.report.figures import _plt, plot_curves

        c = self.config
        figs = self.folder / "figures"
        plt = _plt()
        if "exactness" in c.analyses:
            series, styles = {}, {}
            for L in c.depths:
                r = self.results[self.key("exactness", c.classes, L)]
                series[f"offdiag L={L}"] = np.maximum(r["offdiag"].T, 1e-18)
                series[f"gap to ODE L={L}"] = np.maximum(r["gap_ode"].T, 1e-18)
                styles[f"gap to ODE L={L}"] = "--"
            t = self.results[self.key("exactness", c.classes, c.depths[0])]["t"]
            plot_curves(figs / "exactness.png", np.maximum(t, c.exact_lr / 2), series, xlabel="t = steps * lr", ylabel="",
                        title=f"full GD (lr {c.exact_lr:g}) vs reduced: off-diagonal of Q^T Z Q, relative gap", styles=styles)
        if "trajectories" in c.analyses:
            fig, axes = plt.subplots(1, len(c.depths), figsize=(4.2 * len(c.depths), 3.6), constrained_layout=True, squeeze=False)
            for ax, L in zip(axes[0], c.depths):
                r = self.results[self.key("trajectories", c.classes, L)]
                ah = normalized_spectrum(r["a"][:, 0])
                ax.plot(np.maximum(r["t"], 1e-3), ah)
                ax.set_xscale("log")
                ax.set_title(f"L = {L}: a_hat (first IC)", fontsize=9)
                ax.set_xlabel("t")
            save_figure(figs / "trajectories.png", fig, dpi=110)
            plt.close(fig)
            t = np.maximum(self.results[self.key("trajectories", c.classes, c.depths[0])]["t"], 1e-3)
            norms = {f"L = {L}": np.linalg.norm(self.results[self.key("trajectories", c.classes, L)]["a"], axis=-1).T for L in c.depths}
            plot_curves(figs / "logit_norm.png", t, norms, xlabel="t", ylabel="||Z||_F (class logits)", title="logit norm")
            lyap = {}
            for L in c.depths:
                V = lyapunov(self.results[self.key("trajectories", c.classes, L)]["a"])
                ok = np.all(np.isfinite(V), axis=0)
                if ok.any():
                    lyap[f"L = {L}"] = np.maximum(V[:, ok].T, 1e-16)
            if lyap:
                plot_curves(figs / "lyapunov.png", t, lyap, xlabel="t", ylabel="KL(u || a_hat)", title="Lyapunov function (monotone for L = 1)")
        if "rank" in c.analyses:
            rows = summary["rank_vs_depth"]
            fig, ax = plt.subplots(figsize=(5.6, 3.8), constrained_layout=True)
            data = [self.results[self.key("rank", c.classes, r["depth"])]["effective_rank"] for r in rows]
            ax.boxplot(data)
            ax.set_xticks(range(1, len(rows) + 1), [str(r["depth"]) for r in rows])
            ax.axhline(c.classes - 1, ls="--", color="k", lw=0.8, label="K-1 (neural collapse)")
            ax.set_xlabel("depth L")
            ax.set_ylabel(f"effective rank at t = {c.horizon:g}")
            ax.set_title(f"K = {c.classes}: effective rank of the logits")
            ax.legend(fontsize=8)
            save_figure(figs / "rank_vs_depth.png", fig, dpi=110)
            plt.close(fig)
        if "basin" in c.analyses:
            fig, ax = plt.subplots(figsize=(5.6, 3.8), constrained_layout=True)
            for K, row in summary["basin_fraction_nc"].items():
                ax.plot([int(L) for L in row], [np.nan if v is None else v for v in row.values()], "o-", label=f"K = {K}")
            ax.set_xlabel("depth L")
            ax.set_ylabel("fraction heading to neural collapse")
            ax.set_ylim(-0.02, 1.02)
            ax.legend(fontsize=8)
            ax.set_title("basin of attraction of neural collapse")
            save_figure(figs / "basin.png", fig, dpi=110)
            plt.close(fig)
        if "repulsion" in c.analyses:
            fig, ax = plt.subplots(figsize=(5.2, 4.2), constrained_layout=True)
            for L in c.depths:
                r = self.results[self.key("repulsion", c.classes, L)]
                ok = np.isfinite(r["runaway"]) & np.isfinite(r["predicted"]) & (r["runaway"] > 0)
                ax.loglog(r["predicted"][ok], r["runaway"][ok], ".", ms=2, label=f"L = {L}")
            lim = ax.get_xlim()
            ax.plot(lim, lim, "k--", lw=0.8)
            ax.set_xlabel("predicted runaway time (small-a)")
            ax.set_ylabel(f"measured time to a_i = {c.runaway_level:g}")
            ax.legend(fontsize=8)
            ax.set_title("early-time repulsion")
            save_figure(figs / "repulsion.png", fig, dpi=110)
            plt.close(fig)


def repulsion_summary(a0: np.ndarray, runaway: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Order and timing of runaways: ``order_agreement`` is the fraction of mode pairs (a0_i > a0_j) where i runs
    away no later than j (1: larger modes always first; None when no two nonzero modes differ); ``first_*`` concern
    the first mode of each IC."""
    B, m = a0.shape
    bigger = a0[:, :, None] > a0[:, None, :]
    earlier = runaway[:, :, None] <= runaway[:, None, :]
    live = (a0[:, :, None] > 0) & (a0[:, None, :] > 0)
    pairs = bigger & live
    agree = float((earlier & pairs).sum() / pairs.sum()) if pairs.any() else None
    ran = np.isfinite(runaway)
    first = np.where(ran.any(1), runaway.min(1, initial=np.inf, where=ran), np.inf)
    first_idx = np.where(ran, runaway, np.inf).argmin(1)
    pred_first = predicted[np.arange(B), first_idx]
    ok = np.isfinite(first) & (first > 0)
    rel = np.abs(first[ok] / pred_first[ok] - 1) if ok.any() else np.array([])
    last = np.where(ran, runaway, -np.inf).max(1)
    return {
        "order_agreement": agree,
        "first_is_largest": float(np.mean(first_idx == a0.argmax(1))),
        "first_time_median": float(np.median(first[np.isfinite(first)])) if np.isfinite(first).any() else None,
        "last_time_median": float(np.median(last[np.isfinite(last)])) if np.isfinite(last).any() else None,
        "modes_run_away_mean": float(ran.sum(1).mean()),
        "first_time_vs_prediction_median_rel_error": float(np.median(rel)) if rel.size else None,
    }


def verdict(summary: dict[str, Any], c: HadamardConfig) -> list[str]:
    lines = [f"reduced ODE ({c.reduction}-CE, n = {c.samples_per_class} per class) to t = {c.horizon:g}; K = {c.classes} "
             f"unless stated; {summary['seconds']:.1f} s in all"]
    for L, s in summary.get("exactness", {}).items():
        lines.append(f"exactness L = {L} (full GD, lr {s['lr']:g}, to t = {s['t_end']:g}): off-diagonal of Q^T Z Q "
                     f"{s['max_offdiag']:.1e}, gap to the reduced GD map {s['max_rel_gap_gd']:.1e}, to the ODE "
                     f"{s['max_rel_gap_ode']:.1e} (O(lr))")
    for L, s in summary.get("trajectories", {}).items():
        ly = "" if s["lyapunov_max_increase"] is None else (
            f", Lyapunov KL(u||a_hat) {s['lyapunov_start_mean']:.3g} -> {s['lyapunov_end_mean']:.3g} "
            f"({'monotone' if s['lyapunov_monotone'] else 'NOT monotone: max increase %.1e' % s['lyapunov_max_increase']})")
        lines.append(f"L = {L}: effective rank {s['effective_rank_end_mean']:.2f} of {c.classes - 1}, logit norm "
                     f"{s['logit_norm_end_mean']:.3g}{ly}")
    if "rank_vs_depth" in summary:
        lines.append("effective rank at the horizon vs depth: " + ", ".join(
            f"L{r['depth']} {r['effective_rank_mean']:.2f}" for r in summary["rank_vs_depth"]) + f" (neural collapse: {c.classes - 1})")
    if "basin_fraction_nc" in summary:
        for K, row in summary["basin_fraction_nc"].items():
            lines.append(f"basin of neural collapse, K = {K}: " + ", ".join(
                f"L{L} {'n/a' if v is None else f'{v:.0%}'}" for L, v in row.items()))
    for L, s in summary.get("repulsion", {}).items():
        order = ("no two nonzero modes differ" if s["order_agreement"] is None
                 else f"larger modes run away first in {s['order_agreement']:.0%} of pairs")
        lines.append(f"repulsion L = {L}: {order}, "
                     f"{s['modes_run_away_mean']:.1f} modes reach a = {c.runaway_level:g}, first at t ~ "
                     f"{s['first_time_median'] if s['first_time_median'] is None else round(s['first_time_median'], 3)}")
    faces = summary.get("faces", [])
    if faces:
        total = sum(f["on_face"] for f in faces)
        where = sorted({f["analysis"] for f in faces})
        stayed = all(f["stayed_on_face"] for f in faces)
        lines.append(
            f"{total} initial conditions ({', '.join(where)}) start on a face a_i = 0 and "
            + ("all stay on it exactly (a_i = 0 at the horizon)" if stayed else "SOME LEFT IT (unexpected: report a bug)")
            + ": they end at spurious critical points (rank-deficient), NOT at neural collapse, and are excluded from the NC fractions"
        )
    return lines


def run_hadamard(
    config: HadamardConfig | None = None,
    out: Path | str | None = None,
    *,
    resume: Path | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the hadamard experiment; returns the summary (also written to ``summary.json``)."""
    return run_experiment("hadamard", HadamardConfig, HadamardRun, config, out, resume,
                          work=lambda run, _: run.compute(progress=progress), finish=lambda run: run.finish())
