"""Experiment ``head-depth``: the same MLP with ReLU heads of depth L = 1..6 (and several widths) trained on the
same data; reports the effective rank of the mean logit matrix at the end of training (the depth paper's
real-data check: deeper ReLU heads give lower-rank logits) next to NC1 and the training error.

Every configuration is a :class:`~implicit_geometry.experiments.network.NetworkTrainer` run with the network
experiment's conventions; a checkpoint holds the finished rows and the running configuration's trainer state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from implicit_geometry._validation import InvalidParameterError, check_int
from implicit_geometry.experiments.base import (
    ExperimentConfig,
    Interrupted,
    check_not_diverged,
    finishing,
    interruptible,
    open_run_folder,
    progress_bar,
    resolve_device,
    signals_from_start,
)
from implicit_geometry.experiments.network import NetworkConfig, NetworkTrainer, prepare_data
from implicit_geometry.io import read_torch, write_csv, write_json, write_npz, write_torch


@dataclass
class HeadDepthConfig(ExperimentConfig):
    depths: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6])
    widths: list[int] = field(default_factory=lambda: [128])
    network: dict[str, Any] = field(default_factory=lambda: {"dataset": "digits", "per_class": 0, "epochs": 30, "batch_size": 64,
                                                             "lr": 0.05, "weight_decay": 5e-4})

    def validate(self) -> HeadDepthConfig:
        self.depths = [check_int("depths", d, minimum=1) for d in self.depths]
        self.widths = [check_int("widths", w, minimum=1) for w in self.widths]
        if not self.depths or not self.widths:
            raise InvalidParameterError(f"depths and widths must be non-empty (got {self.depths} and {self.widths})")
        self.base().validate()
        return self

    def base(self) -> NetworkConfig:
        return NetworkConfig.from_dict({**self.network, "model": "mlp"}) if self.network else NetworkConfig(model="mlp")

    def runs(self) -> list[NetworkConfig]:
        b = self.base()
        return [replace(b, depth=d, width=w) for w in self.widths for d in self.depths]




@signals_from_start
def run_head_depth(config: HeadDepthConfig | None = None, out: Path | str | None = None, *, resume: Path | str | None = None,
                   progress: bool = True) -> dict[str, Any]:
    folder, config, finished = open_run_folder("head-depth", HeadDepthConfig, config, out, resume,
                                               precheck=lambda c: prepare_data(c.base()))
    if finished is not None:
        return finished
    runs = config.runs()
    base = config.base()
    device = resolve_device(base.device)
    data = prepare_data(base)
    state = read_torch(folder / "checkpoint.pt") if (folder / "checkpoint.pt").exists() else None
    rows: list[dict[str, Any]] = state["rows"] if state else []
    seconds = state["seconds"] if state else 0.0
    bar = progress_bar(len(runs) * base.epochs, "head-depth", progress, initial=len(rows) * base.epochs)
    with interruptible() as stop, bar:
        for i in range(len(rows), len(runs)):
            c = runs[i]
            trainer = NetworkTrainer(c, data, c.first_seed, device)
            if state and state.get("trainer") is not None:
                trainer.load_state_dict(state["trainer"])
                state = None
            last = time.perf_counter()
            while trainer.epoch < c.epochs:
                t0 = time.perf_counter()
                done = trainer.run_epoch(lambda: stop.requested or time.perf_counter() - last > c.checkpoint_seconds)
                seconds += time.perf_counter() - t0
                if not done:
                    write_torch(folder / "checkpoint.pt", {"rows": rows, "trainer": trainer.state_dict(), "seconds": seconds})
                    last = time.perf_counter()
                    if stop.requested:
                        raise Interrupted(folder, len(rows), "finished configuration")
                    continue
                check_not_diverged(trainer.end_epoch(), f"in epoch {trainer.epoch} (depth {c.depth}, width {c.width})")
                bar.update(1)
            m = trainer.measure()
            pen = m["layers"]["penultimate"]
            rows.append({"depth": c.depth, "width": c.width, "effective_rank_mean_logits": pen["effective_rank_mean_logits"],
                         "stable_rank_mean_logits": pen["stable_rank_mean_logits"], "nc1": pen["nc1"], "train_error": 1 - pen["accuracy"],
                         "seli_dist_logits": pen["seli_dist_logits"], **_code_reading(m["logit_geometry"], data.num_classes),
                         "seconds": seconds})
            write_torch(folder / "checkpoint.pt", {"rows": rows, "trainer": None, "seconds": seconds})
    with finishing():
        return _finish(folder, config, data, rows, seconds)


def _code_reading(g: dict[str, Any] | None, k: int) -> dict[str, Any]:
    """The row's share of the mean logits' reading (``measure.api.logit_geometry``): numerical rank, distances to
    the softmax code of that rank and to the ETF, and for rank 2 the largest adjacent-angle error against 360/k."""
    if g is None:
        return {"numerical_rank_mean_logits": None, "code_distance": None, "etf_distance_logits": None, "max_angle_error_deg": None}
    angles = g["adjacent_angles_deg"]
    return {"numerical_rank_mean_logits": g["numerical_rank"], "code_distance": g["code_distance"], "etf_distance_logits": g["etf_distance"],
            "max_angle_error_deg": None if angles is None else float(np.abs(np.asarray(angles) - 360.0 / k).max())}


def _finish(folder: Path, config: HeadDepthConfig, data, rows, seconds) -> dict[str, Any]:
    from implicit_geometry.report.figures import plot_curves

    write_csv(folder / "history.csv", rows)
    k = data.num_classes
    table = {w: [r["effective_rank_mean_logits"] for r in rows if r["width"] == w] for w in config.widths}
    write_npz(folder / "final.npz", depths=np.asarray(config.depths), widths=np.asarray(config.widths),
              effective_rank=np.asarray([table[w] for w in config.widths]))
    plot_curves(folder / "figures" / "effective_rank.png", np.asarray(config.depths, float), {f"width {w}": table[w] for w in config.widths},
                xlabel="ReLU head depth L", ylabel="effective rank of the mean logit matrix", title=f"{data.name}: rank vs head depth",
                logx=False, logy=False)
    summary: dict[str, Any] = {"experiment": "head-depth", "dataset": data.name, "k": k, "seconds": round(seconds, 2), "rows": rows}
    lines = [f"effective rank of the mean logit matrix (k-1 = {k - 1} for the ETF), depth L = {config.depths}:"]
    for w in config.widths:
        errs = [r["train_error"] for r in rows if r["width"] == w]
        ranks = [r.get("numerical_rank_mean_logits") for r in rows if r["width"] == w]
        lines.append(f"  width {w}: " + ", ".join(f"{v:.2f}" for v in table[w]) + f"  (max train error {max(errs):.3f}"
                     + (f"; numerical ranks {ranks}" if all(v is not None for v in ranks) else "") + ")")
    r = table[config.widths[0]]
    trend = "decreases" if r[-1] < r[0] - 0.1 else ("increases" if r[-1] > r[0] + 0.1 else "stays flat")
    lines.append(f"from L = {config.depths[0]} to L = {config.depths[-1]} the effective rank {trend} ({r[0]:.2f} -> {r[-1]:.2f})")
    summary["verdict"] = lines
    write_json(folder / "summary.json", summary)
    (folder / "checkpoint.pt").unlink(missing_ok=True)
    summary["folder"] = str(folder)
    return summary
