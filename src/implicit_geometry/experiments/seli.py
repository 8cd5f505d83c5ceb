"""Experiment ``seli``: predict the SELI geometry from class counts, train the (deep) UFM with cross-entropy,
and track the learned geometry's distance to the prediction (and to the ETF) over training.

Conventions: CE summed over samples (``reduction``), majorities first for ``--classes/--ratio`` counts, depth
counts the weight matrices. The SELI prediction is exact for depth 1 and ``dim >= k - 1``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from implicit_geometry._validation import InvalidParameterError, check_choice, check_counts, check_float, check_int
from implicit_geometry.experiments.base import (
    ExperimentConfig,
    Interrupted,
    finishing,
    interruptible,
    open_run_folder,
    progress_bar,
    resolve_device,
    run_experiment,
    threads_for,
)
from implicit_geometry.geometry.batched import GeometryDistances
from implicit_geometry.geometry.targets import etf_geometry, seli_geometry
from implicit_geometry.io import read_torch, write_csv, write_json, write_npz, write_torch
from implicit_geometry.models.ufm import DeepUFM
from implicit_geometry.sweep.contract import Sweepable
from implicit_geometry.train.losses import CrossEntropy
from implicit_geometry.train.simulator import OPTIMIZERS, OptimizerConfig, Simulator, record_steps

DISTANCE_KEYS = ("dist_W", "dist_H", "dist_means", "dist_Z")


@dataclass
class SeliConfig(ExperimentConfig):
    INF_FIELDS: ClassVar[tuple[str, ...]] = ("norm_ref",)

    counts: list[int] = field(default_factory=lambda: [20, 20, 20, 2, 2, 2, 2, 2, 2, 2])
    dim: int = 20
    depth: int = 1
    steps: int = 20000
    optimizer: str = "ngd"
    lr: float = 0.02
    norm_ref: float = 40.0
    weight_decay: float = 0.0
    init_std: float = 0.1
    seeds: int = 1
    first_seed: int = 0
    reduction: str = "sum"
    records: int = 120
    device: str = "auto"
    checkpoint_seconds: float = 30.0

    def validate(self) -> SeliConfig:
        self.counts = check_counts(self.counts).tolist()
        self.dim = check_int("dim", self.dim, minimum=1)
        self.depth = check_int("depth", self.depth, minimum=1)
        self.steps = check_int("steps", self.steps, minimum=1)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        self.lr = check_float("lr", self.lr, minimum=0.0, strict_min=True)
        if self.norm_ref != math.inf:
            self.norm_ref = check_float("norm_ref", self.norm_ref, minimum=0.0, strict_min=True)
        self.weight_decay = check_float("weight_decay", self.weight_decay, minimum=0.0)
        self.init_std = check_float("init_std", self.init_std, minimum=0.0, strict_min=True)
        self.seeds = check_int("seeds", self.seeds, minimum=1)
        self.validate_run_fields()
        check_choice("reduction", self.reduction, ["sum", "mean"])
        self.records = check_int("records", self.records, minimum=2)
        self.optimizer_config()  # cross-field checks (weight decay needs gd)
        return self

    def optimizer_config(self) -> OptimizerConfig:
        return OptimizerConfig(name=self.optimizer, lr=self.lr, norm_ref=self.norm_ref, weight_decay=self.weight_decay)




class SeliRun:
    """One (possibly batched over seeds) SELI experiment bound to a run folder."""

    def __init__(self, config: SeliConfig, folder: Path) -> None:
        self.config = config
        self.folder = folder
        c = config
        self.device = resolve_device(c.device)
        self.counts = np.asarray(c.counts)
        self.k = len(c.counts)
        self.N = int(self.counts.sum())
        self.seed_list = list(range(c.first_seed, c.first_seed + c.seeds))
        self.target = seli_geometry(self.counts)
        self.etf = etf_geometry(self.counts)
        model = DeepUFM.random(
            num_classes=self.k, num_samples=self.N, dim=c.dim, depth=c.depth, batch=c.seeds,
            init_std=c.init_std, seeds=self.seed_list, device=self.device,
        )
        loss = CrossEntropy(self.target.labels, self.k, reduction=c.reduction, device=self.device)
        self.sim = Simulator(model, loss, c.optimizer_config())
        self.to_seli = GeometryDistances(self.target, device=self.device)
        self.to_etf = GeometryDistances(self.etf, device=self.device)
        self.history: list[dict[str, Any]] = []
        self.seconds = 0.0

    # -- tracking -----------------------------------------------------------------------------------------
    def measure(self) -> dict[str, np.ndarray]:
        model = self.sim.model
        W, H = model.classifier(), model.H
        Z = W @ H
        out = {k: v.cpu().numpy() for k, v in self.to_seli(W, H).items()}
        out.update({"etf_" + k: v.cpu().numpy() for k, v in self.to_etf(W, H).items()})
        sq = model.squared_norm()
        y = self.sim.loss.labels
        zy = Z.gather(1, y.expand(Z.shape[0], 1, -1)).squeeze(1)
        other = torch.where(self.sim.loss.mask, -torch.inf, Z).amax(dim=1)
        margin = (zy - other).amin(dim=1)
        out.update(
            log10_loss=(self.sim.loss.log_loss(Z) / math.log(10)).cpu().numpy(),
            param_norm=torch.sqrt(sq).cpu().numpy(),
            logit_norm=torch.linalg.matrix_norm(Z).cpu().numpy(),
            min_margin=margin.cpu().numpy(),
            normalized_margin=(margin / sq ** ((model.depth + 1) / 2)).cpu().numpy(),
        )
        return out

    def _record(self, sim: Simulator) -> None:
        if self.history and self.history[-1]["step"] == sim.step:
            return  # recorded before a checkpoint; a resumed loop starts on the same step
        m = self.measure()
        bad = [seed for i, seed in enumerate(self.seed_list) if not all(np.isfinite(v[i]) for v in m.values())]
        if bad:
            raise InvalidParameterError(
                f"lr must be smaller for this problem: training diverged (non-finite factors) by step {sim.step} for seed(s) {bad}"
            )
        for i, seed in enumerate(self.seed_list):
            row = {"step": sim.step, "seed": seed}
            row.update({k: float(v[i]) for k, v in m.items()})
            row["seconds"] = self.seconds + (time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0)
            self.history.append(row)

    # -- checkpoints --------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        write_torch(self.folder / "checkpoint.pt", {"sim": self.sim.state_dict(), "history": self.history, "seconds": self.seconds})

    def load_checkpoint(self) -> None:
        state = read_torch(self.folder / "checkpoint.pt")
        self.sim.load_state_dict(state["sim"])
        self.history = state["history"]
        self.seconds = float(state["seconds"])

    # -- main loop ----------------------------------------------------------------------------------------
    def train(self, progress: bool = True) -> None:
        c = self.config
        marks = record_steps(c.steps, c.records)
        bar = progress_bar(c.steps, "seli", progress, initial=self.sim.step)
        with interruptible() as stop, bar, threads_for(c.seeds * self.k * self.N * max(c.dim, self.k), self.device):
            while True:
                self._t0 = time.perf_counter()
                deadline = self._t0 + c.checkpoint_seconds
                done = self.sim.run(
                    c.steps, record_at=marks, on_record=self._record,
                    should_stop=lambda: stop.requested or time.perf_counter() > deadline, progress=bar,
                )
                self.seconds += time.perf_counter() - self._t0
                del self._t0
                if done:
                    return
                self.save_checkpoint()
                if stop.requested:
                    raise Interrupted(self.folder, self.sim.step)

    def finish(self, figures: bool = True) -> dict[str, Any]:
        c = self.config
        write_csv(self.folder / "history.csv", self.history)
        final = self.measure()
        model = self.sim.model
        squeeze = (lambda a: a[0]) if c.seeds == 1 else (lambda a: a)
        arrays = {
            "H": squeeze(model.H.cpu().numpy()),
            "W": squeeze(model.classifier().cpu().numpy()),
            "labels": self.target.labels,
            "counts": self.counts,
            "seeds": np.asarray(self.seed_list),
            "seli_W_gram": self.target.W_gram,
            "seli_mean_gram": self.target.mean_gram,
            "seli_logits": self.target.logits,
        }
        if c.depth > 1:
            arrays.update({f"W{l}": squeeze(model.factors[l].cpu().numpy()) for l in range(1, c.depth + 1)})
        write_npz(self.folder / "final.npz", **arrays)
        summary: dict[str, Any] = {
            "experiment": "seli",
            "k": self.k,
            "N": self.N,
            "d": c.dim,
            "depth": c.depth,
            "steps": self.sim.step,
            "seconds": round(self.seconds, 4),
            "seeds": self.seed_list,
            "reduction": c.reduction,
            "prediction_exact": bool(c.depth == 1 and c.dim >= self.k - 1 and c.weight_decay == 0),
        }
        for key, vals in final.items():
            summary[key] = float(np.mean(vals))
        summary["per_seed"] = {key: vals.tolist() for key, vals in final.items()}
        summary["verdict"] = verdict(summary, self.counts)
        if figures:
            self._figures(final)
        write_json(self.folder / "summary.json", summary)
        (self.folder / "checkpoint.pt").unlink(missing_ok=True)
        return summary

    def _figures(self, final: dict[str, np.ndarray]) -> None:
        from implicit_geometry.report.figures import plot_curves, plot_matrix_pairs

        figs = self.folder / "figures"
        steps = sorted({r["step"] for r in self.history})
        by_key = lambda key: np.array([[r[key] for r in self.history if r["seed"] == s] for s in self.seed_list])  # noqa: E731
        x = np.asarray(steps, float) + 1
        series = {f"{k} (SELI)": by_key(k) for k in DISTANCE_KEYS}
        # The ETF logits S Y coincide with SELI's, so only the Grams tell the two apart.
        series.update({f"{k} (ETF)": by_key("etf_" + k) for k in DISTANCE_KEYS[:3]})
        styles = {f"{k} (ETF)": "--" for k in DISTANCE_KEYS[:3]}
        plot_curves(figs / "distances.png", x, series, xlabel="step + 1", ylabel="normalized distance",
                    title=f"UFM (depth {self.config.depth}) vs SELI, counts {format_counts(self.counts)}", styles=styles)
        plot_curves(figs / "loss.png", x, {"log10 loss": by_key("log10_loss")}, xlabel="step + 1", ylabel="log10 loss",
                    title="training loss (log10; finite far below 1e-300)", logy=False)
        W = self.sim.model.classifier()[0].cpu().numpy()
        H = self.sim.model.H[0].cpu().numpy()
        means = (H @ np.eye(self.k)[self.target.labels]) / self.counts
        plot_matrix_pairs(figs / "grams.png", [
            ("W W^T", self.target.W_gram, W @ W.T),
            ("class-mean Gram", self.target.mean_gram, means.T @ means),
            ("H^T H", self.target.H_gram, H.T @ H),
        ], title=f"SELI predicted vs learned (seed {self.seed_list[0]}, step {self.sim.step})")


def format_counts(counts: np.ndarray) -> str:
    counts = list(map(int, counts))
    parts, i = [], 0
    while i < len(counts):
        j = i
        while j < len(counts) and counts[j] == counts[i]:
            j += 1
        parts.append(f"{j - i}x{counts[i]}" if j - i > 1 else str(counts[i]))
        i = j
    return "+".join(parts)


def verdict(summary: dict[str, Any], counts: np.ndarray) -> list[str]:
    line1 = (
        f"predicted (SELI) vs learned after {summary['steps']} steps ({summary['seconds']:.1f} s): distance of "
        f"W-Gram {summary['dist_W']:.1e}, H-Gram {summary['dist_H']:.1e}, class means {summary['dist_means']:.1e}, logits {summary['dist_Z']:.1e}"
    )
    worst = max(summary[k] for k in DISTANCE_KEYS)
    etf = min(summary["etf_" + k] for k in ("dist_W", "dist_H"))
    if len(set(map(int, counts))) == 1:
        line2 = "balanced counts: SELI is the simplex ETF (neural collapse); " + ("the learned geometry matches it" if worst < 1e-2 else "not converged yet: train longer")
    elif worst < 1e-2:
        line2 = f"the learned geometry is SELI, not neural collapse (ETF distance of the W- and H-Grams >= {etf:.2f})"
    else:
        line2 = f"not converged to SELI yet (worst distance {worst:.1e}): train longer"
    if not summary.get("prediction_exact", True):
        line2 += " [SELI is the exact prediction only for depth 1, dim >= k-1 and no weight decay]"
    return [line1, line2]


def run_seli(
    config: SeliConfig | None = None,
    out: Path | str | None = None,
    *,
    resume: Path | str | None = None,
    progress: bool = True,
    figures: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the SELI experiment; returns the summary (also written to ``summary.json``).

    ``figures=False`` skips the matplotlib figures (most of the time of a short run; sweeps turn them off).

    Raises :class:`Interrupted` after saving a checkpoint if SIGINT/SIGTERM arrives during training.
    """
    return run_experiment("seli", SeliConfig, SeliRun, config, out, resume,
                          work=lambda run, _: run.train(progress=progress), finish=lambda run: run.finish(figures=figures))


# Fields that may differ between runs of one simulation: per-run step parameters, initialization, seeds.
PER_RUN_FIELDS = ("lr", "norm_ref", "init_std", "seeds", "first_seed")


def seli_batch_key(config: SeliConfig) -> tuple[Any, ...]:
    """Configs with equal keys have equal tensor shapes and loss, so :func:`run_seli_batch` runs them together.

    >>> seli_batch_key(SeliConfig(lr=0.1)) == seli_batch_key(SeliConfig(lr=0.5, init_std=0.3, seeds=2))
    True
    >>> seli_batch_key(SeliConfig(dim=3)) == seli_batch_key(SeliConfig(dim=4))
    False
    """
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(config.to_dict().items()) if k not in PER_RUN_FIELDS)


def run_seli_batch(
    configs: list[SeliConfig], outs: list[Path | str | None], *, progress: bool = False, figures: bool = True
) -> list[dict[str, Any] | None]:
    """Run several seli configs of equal :func:`seli_batch_key` as ONE simulation (their seeds side by side, each
    run with its own lr, norm_ref and initialization); each writes its own run folder, as :func:`run_seli` would.
    ``outs[i] = None`` simulates config i without writing it (a sweep keeps a batch's composition fixed, so its
    numbers do not depend on which of its points were already finished). Returns the summaries (None where not
    written).

    On CPU each run's numbers are the same bits as a separate run's (tests/test_sweep.py); GPU BLAS may pick
    kernels by batch size, which is why a sweep keeps a batch's composition fixed. No checkpoint: an interrupted
    batch is rerun from the start (a sweep loses at most the batches in flight).
    """
    if len(configs) != len(outs) or not configs:
        raise InvalidParameterError(f"outs must have one entry per config (got {len(outs)} outs for {len(configs)} configs)")
    configs = [SeliConfig.from_dict(c.to_dict()) for c in configs]  # validated copies
    if len({seli_batch_key(c) for c in configs}) != 1:
        raise InvalidParameterError(f"configs must agree in every field but {', '.join(PER_RUN_FIELDS)} to run as one simulation")
    runs = []
    for config, out in zip(configs, outs):
        folder = open_run_folder("seli", SeliConfig, config, out, None)[0] if out is not None else None
        runs.append(SeliRun(config, folder))  # type: ignore[arg-type]
    lead = runs[0]
    merged = DeepUFM([torch.cat([r.sim.model.factors[i] for r in runs]) for i in range(lead.config.depth + 1)])
    sim = Simulator(merged, lead.sim.loss, [r.config.optimizer_config() for r in runs for _ in range(r.config.seeds)])
    start = 0
    for r in runs:  # every run's model becomes a view of its slice of the merged factors (updated in place)
        r.sim.model.factors = [F[start : start + r.config.seeds] for F in merged.factors]
        start += r.config.seeds

    def record(sim: Simulator) -> None:
        for r in runs:
            r.sim.step = sim.step
            r._record(r.sim)

    c = lead.config
    total_runs = merged.batch
    t0 = time.perf_counter()
    with interruptible() as stop, progress_bar(c.steps, "seli batch", progress) as bar, threads_for(
        total_runs * lead.k * lead.N * max(c.dim, lead.k), lead.device
    ):
        for r in runs:
            r._t0 = t0
        done = sim.run(c.steps, record_at=record_steps(c.steps, c.records), on_record=record, should_stop=lambda: stop.requested, progress=bar)
        if not done:
            exc = Interrupted(lead.folder or Path("."), sim.step)
            exc.args = (f"batch of {len(runs)} runs interrupted at step {sim.step}; nothing saved: rerun it",)
            raise exc
    seconds = time.perf_counter() - t0
    summaries: list[dict[str, Any] | None] = []
    for r in runs:
        del r._t0
        r.sim.step = sim.step
        r.seconds = seconds
        if r.folder is None:
            summaries.append(None)
            continue
        with finishing():
            summary = r.finish(figures=figures)
        summary["folder"] = str(r.folder)
        summaries.append(summary)
    return summaries


# The sweep contract (docs/sweeps.md): seeds of one point are batched into one simulation, and so are points
# that differ only in PER_RUN_FIELDS.
SWEEP = Sweepable(
    config=SeliConfig, run=run_seli, seeds_field="seeds", first_seed_field="first_seed", figures_option="figures",
    run_batch=run_seli_batch, batch_key=seli_batch_key,
)
