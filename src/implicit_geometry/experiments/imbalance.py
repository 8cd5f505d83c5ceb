"""Experiment ``imbalance``: sweep the imbalance ratio R (and the minority fraction rho) for one CE
parameterization; at each point predict the max-margin UFM geometry (class level) and train the UFM (batched
over seeds, scale-free normalized GD), then compare learned with predicted: classifier and class-mean norm ratios
majority/minority, cosines between minority classifiers, and normalized distances to the prediction.

Conventions: sum-CE (``reduction``), step imbalance with majorities first and rho counting minorities,
``Delta_c = (n_c/n_min)^gamma`` normalized to mean 1, ``iota_c = tau log pi_c`` (see :mod:`implicit_geometry.imbalance.losses`).
The prediction is exact for depth 1, ``dim >= k`` and no weight decay.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from implicit_geometry._validation import InvalidParameterError, check_choice, check_float, check_int
from implicit_geometry.experiments.base import (
    ExperimentConfig,
    Interrupted,
    interruptible,
    progress_bar,
    resolve_device,
    run_experiment,
)
from implicit_geometry.geometry.batched import GeometryDistances
from implicit_geometry.geometry.targets import step_imbalance_counts
from implicit_geometry.imbalance.losses import check_loss, loss_parameters, simulator_loss
from implicit_geometry.imbalance.predict import imbalance_geometry
from implicit_geometry.io import read_torch, write_csv, write_json, write_npz, write_torch
from implicit_geometry.models.ufm import DeepUFM
from implicit_geometry.sweep.contract import Sweepable
from implicit_geometry.train.simulator import OptimizerConfig, Simulator, record_steps

DISTANCE_KEYS = ("dist_W", "dist_H", "dist_means", "dist_Z")
SHAPE_KEYS = ("w_norm_ratio", "h_norm_ratio", "w_cos_min", "w_cos_maj", "w_cos_across")


@dataclass
class ImbalanceConfig(ExperimentConfig):
    INF_FIELDS: ClassVar[tuple[str, ...]] = ("norm_ref",)

    classes: int = 10
    ratios: list[float] = field(default_factory=lambda: [1.0, 2.0, 5.0, 10.0, 20.0])
    minority_fractions: list[float] = field(default_factory=lambda: [0.5])
    n_min: int = 1
    loss: str = "ce"
    gamma: float | None = None
    tau: float | None = None
    beta: float | None = None
    dim: int | None = None
    steps: int = 20000
    lr: float = 1.0
    norm_ref: float = 100.0
    init_std: float = 0.1
    seeds: int = 1
    first_seed: int = 0
    reduction: str = "sum"
    records: int = 40
    device: str = "auto"
    checkpoint_seconds: float = 30.0

    def validate(self) -> ImbalanceConfig:
        self.classes = check_int("classes", self.classes, minimum=2)
        if not self.ratios:
            raise InvalidParameterError("ratios must be a non-empty list of numbers >= 1 (got [])")
        self.ratios = [check_float("ratio", r, minimum=1.0) for r in self.ratios]
        if not self.minority_fractions:
            raise InvalidParameterError("minority_fractions must be a non-empty list of numbers in (0, 1) (got [])")
        self.minority_fractions = [check_float("minority_fraction", f, minimum=0.0, maximum=1.0) for f in self.minority_fractions]
        for f in self.minority_fractions:
            if not 0 < round(f * self.classes) < self.classes:
                raise InvalidParameterError(
                    f"minority_fraction must leave at least one majority and one minority class among {self.classes} (got {f!r})")
        self.n_min = check_int("n_min", self.n_min, minimum=1)
        self.loss = check_loss(self.loss)
        # Validates the hyperparameters against the loss (unused ones rejected, unknown values one-line errors).
        self.params_for([1] * self.classes)
        # Default width 4k: the prediction needs d >= k, and extra width markedly speeds up convergence with
        # multiplicative (CDT/VS) losses (measured: k=10, R=10, CDT gamma=0.3 reaches 1e-2 with d=40, not d=12).
        self.dim = 4 * self.classes if self.dim is None else check_int("dim", self.dim, minimum=1)
        self.steps = check_int("steps", self.steps, minimum=1)
        self.lr = check_float("lr", self.lr, minimum=0.0, strict_min=True)
        if self.norm_ref != math.inf:
            self.norm_ref = check_float("norm_ref", self.norm_ref, minimum=0.0, strict_min=True)
        self.init_std = check_float("init_std", self.init_std, minimum=0.0, strict_min=True)
        self.seeds = check_int("seeds", self.seeds, minimum=1)
        self.validate_run_fields()
        check_choice("reduction", self.reduction, ["sum", "mean"])
        self.records = check_int("records", self.records, minimum=2)
        return self

    def params_for(self, counts: Any) -> Any:
        return loss_parameters(counts, self.loss, gamma=self.gamma, tau=self.tau, beta=self.beta)

    def points(self) -> list[tuple[float, float]]:
        return [(rho, R) for rho in self.minority_fractions for R in self.ratios]




def group_shape(W_gram: np.ndarray, mean_gram: np.ndarray, k_maj: int) -> dict[str, float]:
    """Group-averaged shape numbers of a geometry with majorities first: norm ratios majority/minority
    (mean norms), mean cosines within minorities, within majorities and across."""
    k = W_gram.shape[0]
    maj, mnr = np.arange(k_maj), np.arange(k_maj, k)

    def norms(G: np.ndarray) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(G), 1e-300, None))

    def mean_cos(G: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        n = norms(G)
        C = G / np.outer(n, n)
        block = C[np.ix_(a, b)]
        if a is b:
            if a.size < 2:
                return 1.0
            return float(block[~np.eye(a.size, dtype=bool)].mean())
        return float(block.mean())

    wn, hn = norms(W_gram), norms(mean_gram)
    return {
        "w_norm_ratio": float(wn[maj].mean() / wn[mnr].mean()),
        "h_norm_ratio": float(hn[maj].mean() / hn[mnr].mean()),
        "w_cos_min": mean_cos(W_gram, mnr, mnr),
        "w_cos_maj": mean_cos(W_gram, maj, maj),
        "w_cos_across": mean_cos(W_gram, maj, mnr),
    }


class ImbalanceRun:
    """The sweep bound to a run folder; points are trained one after the other, seeds batched."""

    def __init__(self, config: ImbalanceConfig, folder: Path) -> None:
        self.config = config
        self.folder = folder
        self.device = resolve_device(config.device)
        self.seed_list = list(range(config.first_seed, config.first_seed + config.seeds))
        self.results: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self.finals: dict[str, np.ndarray] = {}
        self.seconds = 0.0
        self.point = 0
        self.sim: Simulator | None = None

    # -- one point ----------------------------------------------------------------------------------------
    def _setup(self, index: int, state: dict[str, Any] | None = None) -> None:
        c = self.config
        rho, R = c.points()[index]
        self.counts = step_imbalance_counts(c.classes, R, rho, c.n_min)
        self.k_maj = c.classes - int(round(rho * c.classes))
        self.params = c.params_for(self.counts)
        self.target, self.info = imbalance_geometry(self.counts, self.params, return_info=True)
        model = DeepUFM.random(
            num_classes=c.classes, num_samples=int(self.counts.sum()), dim=c.dim, batch=c.seeds,
            init_std=c.init_std, seeds=self.seed_list, device=self.device,
        )
        loss = simulator_loss(self.counts, self.params, reduction=c.reduction, device=self.device)
        opt = OptimizerConfig(name="ngd", lr=c.lr, norm_ref=c.norm_ref)
        self.sim = Simulator(model, loss, opt)
        if state is not None:
            self.sim.load_state_dict(state)
        self.dists = GeometryDistances(self.target, device=self.device)

    def _measure(self) -> dict[str, np.ndarray]:
        assert self.sim is not None
        model = self.sim.model
        W, H = model.classifier(), model.H
        return {key: v.cpu().numpy() for key, v in self.dists(W, H).items()}

    def _record(self, sim: Simulator) -> None:
        rho, R = self.config.points()[self.point]
        m = self._measure()
        for i, seed in enumerate(self.seed_list):
            row = {"point": self.point, "ratio": R, "minority_fraction": rho, "step": sim.step, "seed": seed}
            row.update({key: float(v[i]) for key, v in m.items()})
            self.history.append(row)

    def _finish_point(self) -> None:
        assert self.sim is not None
        c = self.config
        rho, R = c.points()[self.point]
        model = self.sim.model
        W = model.classifier().cpu().numpy()
        H = model.H.cpu().numpy()
        labels = self.target.labels
        onehot = np.eye(c.classes)[labels]
        predicted = group_shape(self.target.W_gram, self.target.mean_gram, self.k_maj)
        final = self._measure()
        learned = []
        for b in range(c.seeds):
            means = H[b] @ onehot / self.counts
            learned.append(group_shape(W[b] @ W[b].T, means.T @ means, self.k_maj))
        row: dict[str, Any] = {
            "point": self.point, "ratio": R, "minority_fraction": rho, "counts": self.counts.tolist(),
            "solver": self.info.method, "solver_seconds": self.info.seconds,
        }
        for key in SHAPE_KEYS:
            row["predicted_" + key] = predicted[key]
            vals = [s[key] for s in learned]
            row["learned_" + key] = float(np.mean(vals))
        for key in DISTANCE_KEYS:
            row[key] = float(np.mean(final[key]))
            row[key + "_max"] = float(np.max(final[key]))
        self.results.append(row)
        tag = f"R{R:g}_rho{rho:g}"
        self.finals[f"W_{tag}"] = W if c.seeds > 1 else W[0]
        self.finals[f"H_{tag}"] = H if c.seeds > 1 else H[0]
        self.finals[f"pred_W_gram_{tag}"] = self.target.W_gram
        self.finals[f"pred_mean_gram_{tag}"] = self.target.mean_gram
        self.finals[f"pred_logits_{tag}"] = self.target.class_logits
        # learned Grams of the first seed beside the predicted ones (the report pairs pred_X with learned_X)
        means0 = H[0] @ onehot / self.counts
        self.finals[f"learned_W_gram_{tag}"] = W[0] @ W[0].T
        self.finals[f"learned_mean_gram_{tag}"] = means0.T @ means0

    # -- checkpoints --------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        assert self.sim is not None
        write_torch(self.folder / "checkpoint.pt", {
            "point": self.point, "sim": self.sim.state_dict(), "results": self.results, "history": self.history,
            "finals": self.finals, "seconds": self.seconds,
        })

    def load_checkpoint(self) -> dict[str, Any]:
        state = read_torch(self.folder / "checkpoint.pt")
        self.point = int(state["point"])
        self.results, self.history = state["results"], state["history"]
        self.finals, self.seconds = state["finals"], float(state["seconds"])
        return state["sim"]

    # -- main loop ----------------------------------------------------------------------------------------
    def train(self, progress: bool = True, sim_state: dict[str, Any] | None = None) -> None:
        c = self.config
        points = c.points()
        total = c.steps * len(points)
        done_before = self.point * c.steps + (int(sim_state["step"]) if sim_state else 0)
        bar = progress_bar(total, f"imbalance ({c.loss})", progress, initial=done_before)
        marks = record_steps(c.steps, c.records)
        with interruptible() as stop, bar:
            while self.point < len(points):
                self._setup(self.point, sim_state)
                sim_state = None
                assert self.sim is not None
                while True:
                    t0 = time.perf_counter()
                    deadline = t0 + c.checkpoint_seconds
                    done = self.sim.run(
                        c.steps, record_at=marks, on_record=self._record,
                        should_stop=lambda: stop.requested or time.perf_counter() > deadline, progress=bar,
                    )
                    self.seconds += time.perf_counter() - t0
                    if done:
                        break
                    self.save_checkpoint()
                    if stop.requested:
                        raise Interrupted(self.folder, self.point * c.steps + self.sim.step)
                self._finish_point()
                self.point += 1

    def finish(self, figures: bool = True) -> dict[str, Any]:
        c = self.config
        write_csv(self.folder / "history.csv", self.history)
        write_csv(self.folder / "points.csv", [{k: v for k, v in r.items() if k != "counts"} for r in self.results])
        write_npz(self.folder / "final.npz", seeds=np.asarray(self.seed_list), **self.finals)
        worst = max(max(r[k + "_max"] for k in DISTANCE_KEYS) for r in self.results)
        summary: dict[str, Any] = {
            "experiment": "imbalance",
            "loss": c.loss,
            "loss_parameters": {k: v for k, v in c.params_for([1] * c.classes).hyper.items()},
            "k": c.classes,
            "d": c.dim,
            "steps": c.steps,
            "seeds": self.seed_list,
            "reduction": c.reduction,
            "seconds": round(self.seconds, 4),
            "prediction_exact": bool(c.dim >= c.classes),
            "conventions": "sum-CE; majorities first; rho counts minorities; Delta=(n/n_min)^gamma normalized to mean 1; iota=tau*log(pi)",
            "worst_distance": worst,
            "points": self.results,
        }
        summary["verdict"] = verdict(summary)
        if figures:
            self._figures()
        write_json(self.folder / "summary.json", summary)
        (self.folder / "checkpoint.pt").unlink(missing_ok=True)
        return summary

    def _figures(self) -> None:
        from implicit_geometry.report.figures import plot_curves

        c = self.config
        figs = self.folder / "figures"
        for rho in c.minority_fractions:
            rows = [r for r in self.results if r["minority_fraction"] == rho]
            x = [r["ratio"] for r in rows]
            suffix = f"_rho{rho:g}" if len(c.minority_fractions) > 1 else ""
            series, styles = {}, {}
            for key, label in (("w_norm_ratio", "classifier norm ratio maj/min"), ("h_norm_ratio", "embedding norm ratio maj/min")):
                series[f"{label} (predicted)"] = [r["predicted_" + key] for r in rows]
                series[f"{label} (learned)"] = [r["learned_" + key] for r in rows]
                styles[f"{label} (learned)"] = "o"
            plot_curves(figs / f"norm_ratios{suffix}.png", x, series, xlabel="imbalance ratio R", ylabel="ratio",
                        title=f"{c.loss}: norm ratios, k={c.classes}, rho={rho:g}", styles=styles, logy=True)
            series, styles = {}, {}
            for key, label in (("w_cos_min", "cos between minority classifiers"), ("w_cos_maj", "cos between majority classifiers")):
                series[f"{label} (predicted)"] = [r["predicted_" + key] for r in rows]
                series[f"{label} (learned)"] = [r["learned_" + key] for r in rows]
                styles[f"{label} (learned)"] = "o"
            plot_curves(figs / f"angles{suffix}.png", x, series, xlabel="imbalance ratio R", ylabel="cosine",
                        title=f"{c.loss}: classifier angles, k={c.classes}, rho={rho:g}", styles=styles, logy=False)
            series = {key: [max(r[key], 1e-16) for r in rows] for key in DISTANCE_KEYS}
            plot_curves(figs / f"distances{suffix}.png", x, series, xlabel="imbalance ratio R",
                        ylabel="normalized distance to prediction", title=f"{c.loss}: learned vs predicted after {c.steps} steps")


def verdict(summary: dict[str, Any]) -> list[str]:
    pts = summary["points"]
    worst = summary["worst_distance"]
    params = ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in (summary["loss_parameters"] or {}).items())
    lines = [
        f"{summary['loss']}{' (' + params + ')' if params else ''}: {len(pts)} points (R, rho), {summary['steps']} steps each; "
        f"worst normalized distance to the predicted geometry {worst:.1e}"
    ]
    last = max(pts, key=lambda r: (r["ratio"], r["minority_fraction"]))
    lines.append(
        f"at R={last['ratio']:g}, rho={last['minority_fraction']:g}: classifier norm ratio maj/min learned "
        f"{last['learned_w_norm_ratio']:.3f} vs predicted {last['predicted_w_norm_ratio']:.3f}; minority classifier "
        f"cosine {last['learned_w_cos_min']:.3f} vs {last['predicted_w_cos_min']:.3f}"
    )
    if worst < 1e-2:
        lines.append("the learned geometry matches the cost-sensitive max-margin prediction at every point")
    else:
        lines.append(f"not converged everywhere (worst distance {worst:.1e}): train longer (--steps)")
    if not summary.get("prediction_exact", True):
        lines[-1] += " [the prediction is exact only for dim >= k]"
    return lines


def run_imbalance(
    config: ImbalanceConfig | None = None,
    out: Path | str | None = None,
    *,
    resume: Path | str | None = None,
    progress: bool = True,
    figures: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the imbalance sweep; returns the summary (also written to ``summary.json``).
    ``figures=False`` skips the matplotlib figures (``igeom sweep`` does, unless ``--figures``)."""
    # load_checkpoint returns the simulator's state, which train() restores
    return run_experiment("imbalance", ImbalanceConfig, ImbalanceRun, config, out, resume,
                          work=lambda run, sim_state: run.train(progress=progress, sim_state=sim_state),
                          finish=lambda run: run.finish(figures=figures))


# ``igeom sweep imbalance``: each point is one run (its R/rho points trained one after the other, seeds batched).
SWEEP = Sweepable(config=ImbalanceConfig, run=run_imbalance, figures_option="figures", volatile=("seconds", "folder", "solver_seconds"))
