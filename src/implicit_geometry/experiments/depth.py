"""Experiment ``depth``: the implicit low-rank bias of deep UFMs, swept over depth L and width d.

For every (d, L) cell, ``seeds`` runs from Gaussian initialization (std ``init_std``) are trained together (one
batched :class:`~implicit_geometry.depth.stepping.PathSimulator`) until each reaches the terminal phase (smallest
margin >= ``target_margin``, so the loss is below ``N (K-1) e^-target_margin``, and the logit norm has grown by
``norm_factor``) or ``max_steps``. Then (``code=True``, the default) each terminal run continues into the *code
phase* (:meth:`~implicit_geometry.depth.stepping.PathSimulator.start_code`): scale-free normalized steps until its
direction, which is what gradient descent converges to, has converged (normalized margin no longer growing), so
the geometry read is the limit one and not a snapshot at margin ``target_margin`` (at L >= 6 that snapshot is a
lopsided rank-2 code, tens of degrees from the regular K-gon it converges to). Recorded per run: the ETF distance
of ``dZ/dt`` at initialization (class means), the ETF distance of the class-mean logits when their norm first
exceeds ``norm_factor`` times its initial value, the ranks at the terminal point (``terminal_*``), and at the end
the effective/stable/numerical rank of the class-mean logits and the learned code (Gram factor, adjacent angles,
best-matching softmax code). Runs that did not reach the terminal phase are flagged and left out of the rank
statistics; so is the code of a run whose code phase did not converge within ``code_max_steps`` (flagged).

Conventions: CE summed over samples, depth counts weight matrices (L+1 factors), ``n`` samples per class.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from implicit_geometry._validation import InvalidParameterError, check_bool, check_choice, check_float, check_int
from implicit_geometry.depth.curvature import tangent_logits
from implicit_geometry.depth.reading import read_geometry
from implicit_geometry.depth.stepping import CODE_ASCENT, CODE_SETTLE, PathSimulator
from implicit_geometry.experiments.base import (
    ExperimentConfig,
    Interrupted,
    interruptible,
    progress_bar,
    resolve_device,
    run_experiment,
)
from implicit_geometry.geometry.metrics import effective_rank, normalized_distance
from implicit_geometry.io import read_torch, write_csv, write_json, write_npz, write_torch
from implicit_geometry.models.ufm import DeepUFM
from implicit_geometry.sweep.contract import Sweepable
from implicit_geometry.train.losses import CrossEntropy
from implicit_geometry.train.simulator import OptimizerConfig, record_steps

STEPPERS = ("path", "ngd", "gd")
SETTLE_STEPS = 500  # steps of code_step / 10 that end the code phase (they damp its O(code_step) chatter)


@dataclass
class DepthConfig(ExperimentConfig):
    classes: int = 10
    samples_per_class: int = 5
    dims: list[int] = field(default_factory=lambda: [100])
    depths: list[int] = field(default_factory=lambda: list(range(1, 11)))
    init_std: float = 0.03
    seeds: int = 5
    first_seed: int = 0
    optimizer: str = "path"
    eta: float = 0.01
    plateau: bool = True
    plateau_budget: int = 1200
    slow_steps: bool = True
    root_spectrum: bool = True
    lr: float = 1.0
    max_steps: int = 3000
    target_margin: float = 10.0
    norm_factor: float = 10.0
    code: bool = True
    code_step: float = 0.01
    code_max_steps: int = 20000
    check_every: int = 10
    records: int = 60
    rank_tol: float = 0.05
    device: str = "auto"
    checkpoint_seconds: float = 30.0

    def validate(self) -> DepthConfig:
        self.classes = check_int("classes", self.classes, minimum=3)
        self.samples_per_class = check_int("samples_per_class", self.samples_per_class, minimum=1)
        if not self.dims or not self.depths:
            raise InvalidParameterError(f"dims and depths must be non-empty lists (got {self.dims!r} and {self.depths!r})")
        # logits Z = W_L ... W_1 H have rank <= d, and rank-1 logits separate at most 2 of the K >= 3 classes
        self.dims = [check_int("dim", d, minimum=2) for d in self.dims]
        self.depths = [check_int("depth", L, minimum=1, maximum=50) for L in self.depths]
        self.init_std = check_float("init_std", self.init_std, minimum=0.0, strict_min=True)
        self.seeds = check_int("seeds", self.seeds, minimum=1)
        self.validate_run_fields()
        check_choice("optimizer", self.optimizer, STEPPERS)
        self.eta = check_float("eta", self.eta, minimum=0.0, maximum=0.5, strict_min=True)
        self.plateau = check_bool("plateau", self.plateau)
        self.plateau_budget = check_int("plateau_budget", self.plateau_budget, minimum=0)
        self.slow_steps = check_bool("slow_steps", self.slow_steps)
        self.root_spectrum = check_bool("root_spectrum", self.root_spectrum)
        self.lr = check_float("lr", self.lr, minimum=0.0, strict_min=True)
        self.max_steps = check_int("max_steps", self.max_steps, minimum=1)
        self.target_margin = check_float("target_margin", self.target_margin, minimum=0.0, strict_min=True)
        self.norm_factor = check_float("norm_factor", self.norm_factor, minimum=1.0, strict_min=True)
        self.code = check_bool("code", self.code)
        self.code_step = check_float("code_step", self.code_step, minimum=0.0, maximum=0.1, strict_min=True)
        self.code_max_steps = check_int("code_max_steps", self.code_max_steps, minimum=1)
        self.check_every = check_int("check_every", self.check_every, minimum=1)
        self.records = check_int("records", self.records, minimum=2)
        self.rank_tol = check_float("rank_tol", self.rank_tol, minimum=0.0, maximum=1.0, strict_min=True)
        return self

    @property
    def cells(self) -> list[tuple[int, int]]:
        return [(d, L) for d in self.dims for L in self.depths]

    @property
    def total_steps(self) -> int:
        """Steps a cell may take: ``max_steps`` to reach the terminal phase, then the code phase and its settling."""
        return self.max_steps + (self.code_max_steps + SETTLE_STEPS if self.code else 0)


class _Cell:
    """One (d, L) batch of seeds: its simulator and per-run tracking state."""

    def __init__(self, run: DepthRun, d: int, L: int) -> None:
        c = run.config
        self.d, self.L = d, L
        model = DeepUFM.random(num_classes=run.K, num_samples=run.N, dim=d, depth=L, batch=c.seeds,
                               init_std=c.init_std, seeds=run.seed_list, device=run.device)
        loss = CrossEntropy(run.labels, run.K, device=run.device)
        opt = OptimizerConfig(name="ngd" if c.optimizer == "path" else c.optimizer, lr=c.lr)
        self.sim = PathSimulator(model, loss, eta=c.eta, optimizer=opt, path=c.optimizer == "path", plateau=c.plateau,
                                 plateau_budget=c.plateau_budget, code_step=c.code_step, code_margin=c.target_margin,
                                 code_max_steps=c.code_max_steps, settle_steps=SETTLE_STEPS, slow_steps=c.slow_steps,
                                 root_spectrum=c.root_spectrum)
        self.run = run
        B = c.seeds
        self.init_logit_norm = torch.linalg.matrix_norm(model.logits()).cpu().numpy()
        self.grown_etf = np.full(B, np.nan)
        self.grown_step = np.full(B, -1)
        self.done_step = np.full(B, -1)
        self.diverged_step = np.full(B, -1)  # step at which a run's logits stopped being finite (a too-large --lr)
        self.stop_step = np.full(B, -1)  # step at which a run that never became terminal stopped (max_steps, or stalled)
        self.terminal_means = np.full((B, run.K, run.K), np.nan)  # class-mean logits when the run became terminal
        # gradient flow conserves the factors' imbalance D_l: its drift by the terminal point tells how closely a
        # run's steps followed the flow (recomputed from the seeds on resume, like the initialization itself)
        self.init_imbalance = model.imbalance()
        self.terminal_drift = np.full(B, np.nan)
        self.history: list[dict[str, Any]] = []
        chain = model.chain()
        G, _ = loss.scaled_gradient(chain.logits)
        dZ = tangent_logits(chain, chain.pullback(G))
        self.init_dz_etf = np.array([normalized_distance(run.class_means(dZ[b]), run.etf) for b in range(B)])

    def state(self) -> dict[str, Any]:
        return {"sim": self.sim.state_dict(), "grown_etf": self.grown_etf, "grown_step": self.grown_step,
                "done_step": self.done_step, "diverged_step": self.diverged_step, "stop_step": self.stop_step,
                "terminal_means": self.terminal_means, "terminal_drift": self.terminal_drift,
                "history": self.history}

    def load(self, s: dict[str, Any]) -> None:
        self.sim.load_state_dict(s["sim"])
        self.grown_etf, self.grown_step, self.done_step = s["grown_etf"], s["grown_step"], s["done_step"]
        self.history = s["history"]
        self.diverged_step = s.get("diverged_step", np.full(len(self.done_step), -1))
        self.terminal_means = s.get("terminal_means", self.terminal_means)
        self.stop_step = s.get("stop_step", self.stop_step)
        self.terminal_drift = s.get("terminal_drift", self.terminal_drift)

    def imbalance_drift(self) -> np.ndarray:
        """Per run, ``max_l ||D_l - D_l(0)||_F / ||D_l(0)||_F``: how far the steps moved what gradient flow conserves."""
        now = self.sim.model.imbalance()
        return torch.stack([torch.linalg.matrix_norm(D - D0) / torch.linalg.matrix_norm(D0)
                            for D, D0 in zip(now, self.init_imbalance)]).amax(dim=0).cpu().numpy()

    def diverged(self, Z: torch.Tensor, log_loss: torch.Tensor, norm: torch.Tensor | None = None) -> np.ndarray:
        """Which runs have diverged (non-finite logits, norm or loss: the step was too large for them). They are frozen and
        flagged, never measured, so no NaN reaches a results file and the other runs of the batch go on."""
        # finite logits whose norm or loss overflows are as diverged as non-finite ones
        norm = torch.linalg.matrix_norm(Z) if norm is None else norm
        finite = (torch.isfinite(Z).flatten(1).all(dim=1) & torch.isfinite(norm) & torch.isfinite(log_loss)).cpu().numpy()
        self.diverged_step[~finite & (self.diverged_step < 0)] = self.sim.step
        return self.diverged_step >= 0

    def check(self) -> None:
        """Terminal-phase test and the norm-growth snapshot (every ``check_every`` steps)."""
        run, sim = self.run, self.sim
        Z = sim.model.logits()
        norm = torch.linalg.matrix_norm(Z)
        bad = self.diverged(Z, sim.loss.log_loss(Z), norm)
        lnorm = norm.cpu().numpy()
        margin = run.min_margin(Z).cpu().numpy()
        for b in range(Z.shape[0]):
            if bad[b]:
                continue
            if self.grown_step[b] < 0 and lnorm[b] >= run.config.norm_factor * self.init_logit_norm[b]:
                self.grown_step[b] = sim.step
                self.grown_etf[b] = normalized_distance(run.class_means(Z[b]), run.etf)
            if self.done_step[b] < 0 and margin[b] >= run.config.target_margin and self.grown_step[b] >= 0:
                self.done_step[b] = sim.step
                self.terminal_means[b] = run.class_means(Z[b])
        newly = (self.done_step == sim.step) & np.isnan(self.terminal_drift)
        if newly.any():  # one reading for every run that became terminal at this check
            self.terminal_drift[newly] = self.imbalance_drift()[newly]
        terminal = torch.as_tensor(self.done_step >= 0, device=Z.device)
        if run.config.code:
            sim.start_code(terminal)
        coding = (sim.code_phase == CODE_ASCENT) | (sim.code_phase == CODE_SETTLE)
        # runs still heading for the terminal phase (until max_steps), and terminal runs in their code phase
        pending = ~terminal & (sim.step < run.config.max_steps) & ~sim.stalled
        sim.active = (pending | (terminal & coding)) & torch.as_tensor(~bad, device=Z.device)
        stopped = (~terminal & ~pending).cpu().numpy() & (self.stop_step < 0)
        self.stop_step[stopped] = sim.step

    def record(self) -> None:
        run, sim = self.run, self.sim
        Z = sim.model.logits()
        nat_loss = sim.loss.log_loss(Z)
        bad = self.diverged(Z, nat_loss)
        log_loss = (nat_loss / math.log(10)).cpu().numpy()
        margin = run.min_margin(Z).cpu().numpy()
        for b, seed in enumerate(run.seed_list):
            if bad[b]:
                continue
            M = run.class_means(Z[b])
            s = np.linalg.svd(M, compute_uv=False)
            row = {"dim": self.d, "depth": self.L, "seed": seed, "step": sim.step, "log10_loss": float(log_loss[b]),
                   "logit_norm": float(np.linalg.norm(Z[b].cpu().numpy())), "min_margin": float(margin[b]),
                   "effective_rank": effective_rank(M)}
            row.update({f"sv{i + 1}": float(v / s[0]) if s[0] > 0 else 0.0 for i, v in enumerate(s)})
            self.history.append(row)

    def train(self, stop, deadline: float, bar) -> bool:
        c = self.run.config
        marks = set(record_steps(c.total_steps, c.records))
        sim = self.sim
        while sim.step < c.total_steps:
            # every step while a run takes implicit steps: one of those can move the margin by several units
            if sim.step % c.check_every == 0 or bool((sim.stiff & sim.active).any()):
                self.check()
                if not bool(sim.active.any()):
                    break
            if sim.step in marks:
                self.record()
            if stop.requested or time.perf_counter() > deadline:
                return False
            sim.update()
            bar.update(1)
        self.check()
        self.record()
        return True

    def results(self) -> list[dict[str, Any]]:
        run = self.run
        Z = self.sim.model.logits()
        margin = run.min_margin(Z).cpu().numpy()
        nat_loss = self.sim.loss.log_loss(Z)
        bad = self.diverged(Z, nat_loss)
        log_loss = (nat_loss / math.log(10)).cpu().numpy()
        drift_now = self.imbalance_drift()
        out = []
        for b, seed in enumerate(run.seed_list):
            if bad[b]:
                out.append({"dim": self.d, "depth": self.L, "seed": seed, "terminal": False, "diverged": True,
                            "steps": int(self.diverged_step[b]), "init_dz_etf_distance": float(self.init_dz_etf[b]),
                            "grown_etf_distance": None if self.grown_step[b] < 0 else float(self.grown_etf[b])})
                continue
            M = run.class_means(Z[b])
            g = read_geometry(M, tol=run.config.rank_tol, restarts=3, fit_code=True, code_cache=run.code_cache)
            terminal = bool(self.done_step[b] >= 0)
            coded = terminal and run.config.code
            at_terminal: dict[str, Any] = {}
            if terminal:  # the reading at the terminal point (margin target_margin), before the code phase
                Mt = self.terminal_means[b]
                gt = g if not coded else read_geometry(Mt, tol=run.config.rank_tol, fit_code=False)
                at_terminal = {"terminal_effective_rank": gt.effective_rank, "terminal_numerical_rank": gt.numerical_rank,
                               "terminal_max_angle_error_deg": _angle_error(gt, run.K)}
            out.append({
                "dim": self.d, "depth": self.L, "seed": seed, "terminal": terminal, "diverged": False,
                "steps": int(self.done_step[b]) if terminal else int(self.stop_step[b] if self.stop_step[b] >= 0 else self.sim.step),
                "code_steps": int(self.sim.code_steps[b]) if coded else None,
                "code_converged": bool(self.sim.code_converged[b]) if coded else None,
                **at_terminal,
                "log10_loss": float(log_loss[b]), "min_margin": float(margin[b]),
                "init_dz_etf_distance": float(self.init_dz_etf[b]),
                "grown_etf_distance": None if self.grown_step[b] < 0 else float(self.grown_etf[b]),
                "grown_step": int(self.grown_step[b]),
                "plateau_steps": int(self.sim.plateau_steps[b]),
                "plateau_newton_iterations": int(self.sim.newton_iterations[b]),
                "plateau_flow_time": float(self.sim.plateau_time[b]),
                # relative drift of the conserved imbalance D_l at the terminal point (at the stop, if never terminal)
                "imbalance_drift": float(self.terminal_drift[b] if terminal else drift_now[b]),
                # stopped on the rank-1 saddle: its escape was predicted far beyond the plateau budget (flow time from
                # the saddle; None where not predicted, or not finite: sigma_2 was not growing)
                "stalled": bool(self.sim.stalled[b]),
                "predicted_escape_flow_time": _finite_or_none(self.sim.predicted_escape[b]),
                "effective_rank": g.effective_rank, "stable_rank": g.stable_rank, "numerical_rank": g.numerical_rank,
                "etf_distance": g.etf_distance, "code_distance": g.code_distance, "code_value_ratio": g.code_value_ratio,
                "adjacent_angles_deg": g.adjacent_angles.tolist(),
                "max_angle_error_deg": _angle_error(g, run.K),
                "gram_factor": g.gram_factor.tolist(), "mean_logits": M.tolist(),
            })
        return out


def _finite_or_none(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _angle_error(g, K: int) -> float | None:
    """Largest |adjacent angle - 360/K| (degrees) of a rank-2 reading; None for other ranks."""
    return float(np.abs(g.adjacent_angles - 360.0 / K).max()) if g.numerical_rank == 2 else None


class DepthRun:
    def __init__(self, config: DepthConfig, folder: Path) -> None:
        self.config = c = config
        self.folder = folder
        self.device = resolve_device(c.device)
        self.K = c.classes
        self.N = c.classes * c.samples_per_class
        self.labels = np.repeat(np.arange(self.K), c.samples_per_class)
        self.seed_list = list(range(c.first_seed, c.first_seed + c.seeds))
        self.etf = np.eye(self.K) - 1.0 / self.K
        self._avg = torch.zeros((self.N, self.K), dtype=torch.float64, device=self.device)
        self._avg[torch.arange(self.N), torch.as_tensor(self.labels)] = 1.0 / c.samples_per_class
        self._labels_t = torch.as_tensor(self.labels, device=self.device)
        self.results: list[dict[str, Any]] = []
        self.histories: list[dict[str, Any]] = []
        self.cell_index = 0
        self.cell: _Cell | None = None
        self.seconds = 0.0
        self.code_cache: dict = {}

    def class_means(self, Z: torch.Tensor) -> np.ndarray:
        return (Z @ self._avg).cpu().numpy()

    def min_margin(self, Z: torch.Tensor) -> torch.Tensor:
        y = self._labels_t.expand(Z.shape[0], 1, -1)
        zy = Z.gather(1, y).squeeze(1)
        other = Z.scatter(1, y, -math.inf).amax(dim=1)
        return (zy - other).amin(dim=1)

    def save_checkpoint(self) -> None:
        write_torch(self.folder / "checkpoint.pt", {
            "cell_index": self.cell_index, "results": self.results, "histories": self.histories,
            "cell": None if self.cell is None else self.cell.state(), "seconds": self.seconds})

    def load_checkpoint(self) -> None:
        s = read_torch(self.folder / "checkpoint.pt")
        self.cell_index, self.results, self.histories, self.seconds = s["cell_index"], s["results"], s["histories"], s["seconds"]
        if s["cell"] is not None:
            d, L = self.config.cells[self.cell_index]
            self.cell = _Cell(self, d, L)
            self.cell.load(s["cell"])

    def train(self, progress: bool = True) -> None:
        c = self.config
        cells = c.cells
        bar = progress_bar(len(cells) * c.total_steps, "depth", progress)
        with interruptible() as stop, bar:
            while self.cell_index < len(cells):
                d, L = cells[self.cell_index]
                if self.cell is None:
                    self.cell = _Cell(self, d, L)
                bar.set_description(f"depth d={d} L={L}")
                t0 = time.perf_counter()
                done = self.cell.train(stop, t0 + c.checkpoint_seconds, bar)
                self.seconds += time.perf_counter() - t0
                if not done:
                    self.save_checkpoint()
                    if stop.requested:
                        raise Interrupted(self.folder, self.cell.sim.step)
                    continue
                self.results.extend(self.cell.results())
                self.histories.extend(self.cell.history)
                bar.update(c.total_steps - self.cell.sim.step)
                self.cell = None
                self.cell_index += 1

    def finish(self, figures: bool = True) -> dict[str, Any]:
        c = self.config
        write_csv(self.folder / "history.csv", self.histories)
        res = self.results
        table = []
        for d, L in c.cells:
            rows = [r for r in res if r["dim"] == d and r["depth"] == L]
            term = [r for r in rows if r["terminal"]]
            read = [r for r in term if r.get("code_converged") is not False]  # the runs whose geometry is reported
            er = [r["effective_rank"] for r in read]
            ter = [r["terminal_effective_rank"] for r in term]
            table.append({
                "dim": d, "depth": L, "terminal_runs": len(term), "runs": len(rows),
                "diverged_runs": sum(bool(r.get("diverged")) for r in rows),
                "effective_rank_mean": float(np.mean(er)) if er else None,
                "effective_rank_std": float(np.std(er)) if er else None,
                "numerical_ranks": [r["numerical_rank"] for r in read],
                # the code phase did not converge within code_max_steps: terminal, but no limit code to report
                "code_unconverged_runs": sum(1 for r in rows if r.get("code_converged") is False),
                "terminal_effective_rank_mean": float(np.mean(ter)) if ter else None,
                "max_angle_error_deg": max((r["max_angle_error_deg"] for r in read if r["max_angle_error_deg"] is not None),
                                           default=None),
                "init_dz_etf_distance_mean": float(np.mean([r["init_dz_etf_distance"] for r in rows])),
                "grown_etf_distance_mean": float(np.mean([r["grown_etf_distance"] for r in rows if r["grown_etf_distance"] is not None]))
                if any(r["grown_etf_distance"] is not None for r in rows) else None,
                "steps_max": int(max(r["steps"] for r in rows)),
                # the largest drift of gradient flow's conserved imbalance among the terminal runs (at the terminal point)
                "imbalance_drift_max": max((r["imbalance_drift"] for r in term), default=None),
                # why the others are not terminal: still separating (margin < 0) at numerical rank 1 = the rank-1 saddle
                "saddle_runs": sum(1 for r in rows if not r["terminal"] and not r.get("diverged")
                                   and r["numerical_rank"] == 1 and r["min_margin"] < 0),
                "stalled_runs": sum(1 for r in rows if r.get("stalled")),
                "predicted_escape_flow_times": [r.get("predicted_escape_flow_time") for r in rows if r.get("stalled")],
            })
        summary = {
            "experiment": "depth", "K": self.K, "n": c.samples_per_class, "N": self.N, "dims": c.dims, "depths": c.depths,
            "init_std": c.init_std, "seeds": self.seed_list, "optimizer": c.optimizer, "eta": c.eta,
            "plateau": c.plateau, "slow_steps": c.slow_steps, "root_spectrum": c.root_spectrum, "code": c.code, "code_step": c.code_step,
            "reduction": "sum", "target_margin": c.target_margin, "seconds": round(self.seconds, 3),
            "table": table, "runs": [{k: v for k, v in r.items() if k not in ("gram_factor", "mean_logits")} for r in res],
        }
        summary["verdict"] = verdict(summary)
        kept = [r for r in res if not r.get("diverged")]  # the arrays hold the runs with finite logits
        write_npz(self.folder / "final.npz",
                  dims=np.array([r["dim"] for r in kept]), depths=np.array([r["depth"] for r in kept]),
                  seeds=np.array([r["seed"] for r in kept]), terminal=np.array([r["terminal"] for r in kept], dtype=bool),
                  effective_rank=np.array([r["effective_rank"] for r in kept], dtype=float),
                  mean_logits=np.array([r["mean_logits"] for r in kept], dtype=float).reshape(len(kept), self.K, self.K))
        if figures:
            self._figures()
        write_json(self.folder / "summary.json", summary)
        (self.folder / "checkpoint.pt").unlink(missing_ok=True)
        return summary

    def _figures(self) -> None:
        from implicit_geometry.depth.plots import plot_depth_figures

        plot_depth_figures(self.folder / "figures", self.config, self.results, self.histories, self.K)


def verdict(summary: dict[str, Any]) -> list[str]:
    K = summary["K"]
    lines = [f"K={K}, n={summary['n']}, init std {summary['init_std']}, {len(summary['seeds'])} seed{'s' if len(summary['seeds']) != 1 else ''}, "
             f"{summary['optimizer']} steps" + (" (implicit on plateaus)" if summary.get("plateau") and summary["optimizer"] == "path" else "")
             + f", {summary['seconds']:.1f} s"
             + ("; geometry read at directional convergence (code phase), in brackets at the terminal point "
                f"(margin {summary['target_margin']:g})" if summary.get("code") else "")]
    for row in summary["table"]:
        head = f"d={row['dim']:<4d} L={row['depth']:<3d}"
        diverged = row.get("diverged_runs", 0)
        if diverged == row["runs"]:
            lines.append(f"{head} DIVERGED in all {diverged} runs (non-finite logits; no rank reported): use a smaller --lr, or --optimizer path")
            continue
        if not row["terminal_runs"]:
            saddle = row.get("saddle_runs", 0)
            # runs stopped by the stall rule did not use up --max-steps: raising it would not change them
            all_stalled = row.get("stalled_runs", 0) == row["runs"] - diverged
            lines.append(f"{head} NOT in the terminal phase after {row['steps_max']} steps (no rank reported)"
                         + ("" if all_stalled else ": raise --max-steps")
                         + (f"; {saddle} run(s) on the rank-1 saddle (numerical rank 1, classes not yet separated: "
                            f"see docs/depth.md)" if saddle else "") + _stall_text(row)
                         + (f"; {diverged} run(s) diverged (non-finite logits: use a smaller --lr)" if diverged else ""))
            continue
        unconverged = row.get("code_unconverged_runs", 0)
        if row["effective_rank_mean"] is None:  # terminal, but no run's code phase converged
            lines.append(f"{head} {row['terminal_runs']} run(s) terminal (effective rank {row['terminal_effective_rank_mean']:.2f} "
                         f"at the terminal point), but the code phase did not converge in any within --code-max-steps: "
                         "no limit geometry reported (raise --code-max-steps)")
            continue
        msg = (f"{head} effective rank {row['effective_rank_mean']:.2f} +- {row['effective_rank_std']:.2f} "
               f"(numerical ranks {row['numerical_ranks']}"
               + (f"; [{row['terminal_effective_rank_mean']:.2f}]" if summary.get("code") else "")
               + (f"; rank-2 angles within {row['max_angle_error_deg']:.2f} deg of {360 / K:g}" if row.get("max_angle_error_deg") is not None else "")
               + f"); ETF distance of dZ/dt(0) {row['init_dz_etf_distance_mean']:.2f}")
        if unconverged:
            msg += f"; {unconverged} run(s) whose code phase did not converge within --code-max-steps, left out"
        if row["terminal_runs"] < row["runs"] - diverged:
            msg += f"; {row['runs'] - diverged - row['terminal_runs']} run(s) not terminal, left out"
            if row.get("saddle_runs"):
                msg += f" ({row['saddle_runs']} on the rank-1 saddle{_stall_text(row)})"
        if diverged:
            msg += f"; {diverged} run(s) diverged (non-finite logits: use a smaller --lr), left out"
        lines.append(msg)
    return lines


def _stall_text(row: dict[str, Any]) -> str:
    """What the verdict says of runs that stopped on the saddle because their escape was predicted far away."""
    if not row.get("stalled_runs"):
        return ""
    times = sorted(round(t) for t in row.get("predicted_escape_flow_times", []) if t is not None)
    span = "" if not times else f"{times[0]}" if times[0] == times[-1] else f"{times[0]}-{times[-1]}"
    when = f"predicted escape after a flow time of {span} from the saddle" if times else "the second mode was not growing"
    return f"; {row['stalled_runs']} stopped early: {when}, far beyond --plateau-budget (raise it to follow them)"


def run_depth(config: DepthConfig | None = None, out: Path | str | None = None, *, resume: Path | str | None = None,
              progress: bool = True, figures: bool = True) -> dict[str, Any]:
    """Run (or resume) the depth sweep; returns the summary (also in ``summary.json``).
    ``figures=False`` skips the matplotlib figures (``igeom sweep`` does, unless ``--figures``)."""
    return run_experiment("depth", DepthConfig, DepthRun, config, out, resume,
                          work=lambda run, _: run.train(progress=progress), finish=lambda run: run.finish(figures=figures))


# ``igeom sweep depth``: each point is one run over its (d, L) cells, seeds batched in one simulation per cell.
SWEEP = Sweepable(config=DepthConfig, run=run_depth, figures_option="figures")
