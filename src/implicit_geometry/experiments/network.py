"""Experiment ``network``: train a real network (MLP with a ReLU head, or ResNet-20) on a real data set (optionally
class-imbalanced) into the terminal phase of training, measuring the geometry of its penultimate layer every
few epochs with :mod:`implicit_geometry.measure`, next to the ETF and SELI predictions for the data's counts.

Conventions: mean cross-entropy over a mini-batch, SGD with momentum and weight decay, learning rate divided by
10 at given fractions of the epochs (default 1/2 and 3/4). Measurements use the whole training set in eval mode,
streamed once at batches of 4096: NC4 counts against the penultimate class means of the previous measurement (the
measurement at epoch 0 streams twice, NC4 against its own means). Mini-batch order depends only on (seed, epoch),
so a resumed run gives the same numbers.

The summary judges the issue's terminal-phase bar (:func:`terminal_phase_bar`): the first measured epoch with zero
training error, NC1 there and at the end, their ratio (PASS at >= 10x) and the wall time.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from implicit_geometry._validation import InvalidParameterError, check_bool, check_choice, check_float, check_int
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
from implicit_geometry.io import read_torch, write_csv, write_json, write_npz, write_torch
from implicit_geometry.models.networks import check_architecture

EPOCH_LAYERS = ("penultimate",)  # what the per-epoch measurements stream (TRACKED and the mean logits come from it)
TRACKED = (
    "nc1", "cdnv", "nc3", "nc4", "equinorm_means", "equiangular_means", "etf_dist_means", "seli_dist_means",
    "etf_dist_W", "seli_dist_W", "seli_dist_logits", "effective_rank_mean_logits", "stable_rank_mean_logits",
    "effective_rank_means",
)


@dataclass
class NetworkConfig(ExperimentConfig):
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    model: str = "mlp"
    width: int = 512
    depth: int = 2
    trunk: int = 0
    batch_norm: bool = False  # mlp: BatchNorm1d before every hidden ReLU
    per_class: int = 100  # rows per class of the balanced subset (0 = the whole data set)
    imbalance: str = "none"
    ratio: float = 10.0
    minority_fraction: float = 0.5
    epochs: int = 80
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # weight decay on the weights that feed a batch norm (models.networks.normalized_weights); None: weight_decay.
    # (their decay does not regularize the function; it only shrinks their norm and so raises their effective step)
    weight_decay_normalized: float | None = None
    lr_drops: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of the epochs where lr /= 10
    lr_schedule: str = "step"  # "step": /10 at lr_drops; "cosine": lr (1 + cos(pi epoch / epochs)) / 2, lr_drops unused
    measure_every: int = 5
    permutations: int = 10
    # replay each full mini-batch's step from a CUDA graph (train.graphed_step): the same numbers, far fewer launches
    cuda_graphs: bool = False
    seeds: int = 1
    first_seed: int = 0
    device: str = "auto"
    checkpoint_seconds: float = 60.0

    def validate(self) -> NetworkConfig:
        from implicit_geometry.measure.data import check_dataset

        self.dataset = check_dataset(self.dataset)
        self.width = check_int("width", self.width, minimum=1)
        self.depth = check_int("depth", self.depth, minimum=1)
        self.trunk = check_int("trunk", self.trunk, minimum=0)
        self.batch_norm = check_bool("batch_norm", self.batch_norm)
        self.model = check_architecture(self.model, self.batch_norm)
        self.per_class = check_int("per_class", self.per_class, minimum=0)
        check_choice("imbalance", self.imbalance, ["none", "step", "exp"])
        self.ratio = check_float("ratio", self.ratio, minimum=1.0)
        self.minority_fraction = check_float("minority_fraction", self.minority_fraction, minimum=0.0, maximum=1.0)
        self.epochs = check_int("epochs", self.epochs, minimum=1)
        self.batch_size = check_int("batch_size", self.batch_size, minimum=1)
        self.lr = check_float("lr", self.lr, minimum=0.0, strict_min=True)
        self.momentum = check_float("momentum", self.momentum, minimum=0.0, maximum=1.0)
        self.weight_decay = check_float("weight_decay", self.weight_decay, minimum=0.0)
        if self.weight_decay_normalized is not None:
            self.weight_decay_normalized = check_float("weight_decay_normalized", self.weight_decay_normalized, minimum=0.0)
            if self.model == "mlp" and not self.batch_norm:
                raise InvalidParameterError("weight_decay_normalized applies to batch-normalized networks only (resnet20, or mlp with batch_norm; got mlp without batch_norm)")
        self.lr_drops = [check_float("lr_drops", f, minimum=0.0, maximum=1.0) for f in self.lr_drops]
        check_choice("lr_schedule", self.lr_schedule, ["step", "cosine"])
        self.measure_every = check_int("measure_every", self.measure_every, minimum=1)
        self.permutations = check_int("permutations", self.permutations, minimum=0)
        self.cuda_graphs = check_bool("cuda_graphs", self.cuda_graphs)
        self.seeds = check_int("seeds", self.seeds, minimum=1)
        self.validate_run_fields()
        return self




def prepare_data(c: NetworkConfig):
    """The training data of a config: the data set, its balanced or imbalanced subset (seeded by first_seed)."""
    from implicit_geometry.measure.data import imbalanced_indices, load

    data = load(c.dataset, data_dir=c.data_dir)
    smallest = int(data.counts().min())
    if c.per_class > smallest:
        raise InvalidParameterError(f"per_class must be at most {smallest}, the size of the smallest class of {data.name} "
                                    f"(got {c.per_class}; 0 uses every row)")
    if c.per_class or c.imbalance != "none":
        n_max = c.per_class or smallest
        data = data.subset(imbalanced_indices(data.y, profile=c.imbalance, ratio=c.ratio, minority_fraction=c.minority_fraction,
                                              n_max=n_max, seed=c.first_seed))
    return data


def scheduled_lr(c: NetworkConfig, epoch: int) -> float:
    """The learning rate of an epoch (constant within it, so a resumed epoch continues with the same rate).

    >>> c = NetworkConfig(lr=0.1, epochs=10, lr_schedule="cosine")
    >>> [round(scheduled_lr(c, e), 4) for e in (0, 5, 9)]
    [0.1, 0.05, 0.0024]
    >>> [scheduled_lr(NetworkConfig(lr=1.0, epochs=10, lr_drops=[0.5]), e) for e in (4, 5)]
    [1.0, 0.1]
    """
    if c.lr_schedule == "cosine":
        # a smooth decay: no sudden drop, and no long constant phase (where batch-norm networks under weight decay
        # showed loss spikes late in the terminal phase, docs/measure.md)
        return c.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / c.epochs))
    return c.lr * (0.1 ** sum(epoch >= int(f * c.epochs) for f in c.lr_drops if int(f * c.epochs) > 0))


class NetworkTrainer:
    """Train one network with a deterministic mini-batch order; state at batch granularity for checkpoints."""

    def __init__(self, c: NetworkConfig, data, seed: int, device: torch.device) -> None:
        from implicit_geometry.models.networks import build, normalized_weights
        from implicit_geometry.train.graphed_step import GraphedStep

        self.c, self.data, self.seed, self.device = c, data, seed, device
        torch.manual_seed(seed)
        self.model = build(c.model, in_shape=data.in_shape, num_classes=data.num_classes, width=c.width, depth=c.depth, trunk=c.trunk,
                           batch_norm=c.batch_norm).to(device)
        params: Any = self.model.parameters()
        if c.weight_decay_normalized is not None:  # two groups (one otherwise: the optimizer state of older runs still loads)
            normed = {id(p) for p in normalized_weights(self.model)}
            params = [{"params": [p for p in self.model.parameters() if id(p) in normed], "weight_decay": c.weight_decay_normalized},
                      {"params": [p for p in self.model.parameters() if id(p) not in normed]}]
        self.opt = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        self.step = GraphedStep(self.model, self.opt, torch.nn.functional.cross_entropy,
                                graphs="cuda" if c.cuda_graphs and device.type == "cuda" else "off")
        self.epoch, self.batch, self.seen = 0, 0, 0
        self.x, self.y = data.x.to(device), data.y.to(device)
        # the epoch's loss is summed on the device: reading it every batch would wait for the GPU every batch
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest conv kernels

    def order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1_000_003 * self.seed + epoch)
        return torch.randperm(self.x.shape[0], generator=g)

    def run_epoch(self, should_stop, on_batch=None) -> bool:
        """Continue the current epoch; False if stopped before its end."""
        perm = self.order(self.epoch).to(self.device)
        B = self.c.batch_size
        nb = (len(perm) + B - 1) // B
        for g in self.opt.param_groups:
            g["lr"] = scheduled_lr(self.c, self.epoch)
        self.model.train()
        while self.batch < nb:
            if should_stop():
                return False
            idx = perm[self.batch * B : (self.batch + 1) * B]
            loss = self.step(self.x[idx], self.y[idx])
            # float64 sum of (float32 loss x batch size): exact products, the same bits as a Python float sum
            self._loss_sum += loss.detach().double() * len(idx)
            self.seen += len(idx)
            self.batch += 1
            if on_batch:
                on_batch()
        return True

    def end_epoch(self) -> float:
        loss = float(self._loss_sum) / max(self.seen, 1)
        self.epoch, self.batch, self.seen = self.epoch + 1, 0, 0
        self._loss_sum.zero_()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "epoch": self.epoch, "batch": self.batch,
                "loss_sum": float(self._loss_sum), "seen": self.seen}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        self.epoch, self.batch, self.seen = s["epoch"], s["batch"], s["seen"]
        self._loss_sum.fill_(s["loss_sum"])  # a float64 round trip: the resumed sum continues with the same bits

    def measure(self, permutations: int = 0, layers=("penultimate", "logits"), centers: Any | None = None) -> dict[str, Any]:
        """The geometry on the whole training set in eval mode. With ``centers`` (the penultimate class means of the
        previous measurement) the data is streamed once and NC4 counted against them; without, twice."""
        from implicit_geometry.measure.api import measure
        from implicit_geometry.measure.data import TensorBatches
        from implicit_geometry.measure.metrics import DegenerateLayerError

        # the training tensors already on the device; large eval batches: the pass is matrix products, and 4096 x width floats stay small
        try:
            return measure(self.model, TensorBatches(self.x, self.y, 4096), self.data.num_classes, layers, device=self.device,
                           permutations=permutations, seed=self.seed, nc4="two-pass" if centers is None else "centers",
                           centers=centers, sample_rows=200 if permutations == 0 else 1000)
        except DegenerateLayerError:
            raise InvalidParameterError(
                f"lr must be smaller for this problem: after epoch {self.epoch} (seed {self.seed}) every class has the same "
                f"{'penultimate features' if self.epoch else 'features at initialization'} (training broke down, e.g. dead ReLUs), so there is no geometry to measure") from None


@contextlib.contextmanager
def _flush_denormal():
    """Flush denormal floats to zero while training: tiny gradients late in the terminal phase are otherwise
    denormal and slow CPU arithmetic many times over. Restored on exit."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)  # torch's default


def _row(epoch: int, seed: int, loss: float, m: dict[str, Any], seconds: float) -> dict[str, Any]:
    pen = m["layers"]["penultimate"]
    row = {"epoch": epoch, "seed": seed, "train_loss": loss, "train_error": 1.0 - pen["accuracy"]}
    row.update({k: pen.get(k, float("nan")) for k in TRACKED})
    row["seconds"] = seconds
    return row


@signals_from_start
def run_network(config: NetworkConfig | None = None, out: Path | str | None = None, *, resume: Path | str | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the network experiment; returns the summary (also in ``summary.json``)."""
    # precheck: fail on bad data before creating the folder
    folder, c, finished = open_run_folder("network", NetworkConfig, config, out, resume, precheck=prepare_data)
    if finished is not None:
        return finished
    device = resolve_device(c.device)
    data = prepare_data(c)
    seeds = list(range(c.first_seed, c.first_seed + c.seeds))
    state = read_torch(folder / "checkpoint.pt") if (folder / "checkpoint.pt").exists() else None
    history: list[dict[str, Any]] = state["history"] if state else []
    finals: list[dict[str, Any]] = state["finals"] if state else []
    seconds = state["seconds"] if state else 0.0
    start_seed = state["seed_index"] if state else 0
    centers = state.get("centers") if state else None  # penultimate means of the last measurement (one-pass NC4)
    total = c.seeds * c.epochs
    bar = progress_bar(total, "network", progress, initial=start_seed * c.epochs + (state["trainer"]["epoch"] if state else 0))
    bar.unit = "epoch"
    with interruptible() as stop, bar, _flush_denormal():
        for si in range(start_seed, c.seeds):
            trainer = NetworkTrainer(c, data, seeds[si], device)
            if state and si == start_seed:
                trainer.load_state_dict(state["trainer"])
            if trainer.epoch == 0 and not any(r["seed"] == seeds[si] and r["epoch"] == 0 for r in history):
                t0 = time.perf_counter()
                m = trainer.measure(layers=EPOCH_LAYERS)
                centers = m["means"]["penultimate"]
                history.append(_row(0, seeds[si], float("nan"), m, seconds))
                seconds += time.perf_counter() - t0
            last_save = time.perf_counter()

            def save(si=si, trainer=trainer) -> None:
                write_torch(folder / "checkpoint.pt", {"trainer": trainer.state_dict(), "history": history, "finals": finals,
                                                       "seconds": seconds, "seed_index": si, "centers": centers})

            while trainer.epoch < c.epochs:
                t0 = time.perf_counter()
                done = trainer.run_epoch(lambda: stop.requested or time.perf_counter() - last_save > c.checkpoint_seconds)
                seconds += time.perf_counter() - t0
                if not done:
                    save()
                    last_save = time.perf_counter()
                    if stop.requested:
                        raise Interrupted(folder, trainer.epoch, "finished epoch")
                    continue
                loss = trainer.end_epoch()
                check_not_diverged(loss, f"in epoch {trainer.epoch} (seed {seeds[si]})")
                bar.update(1)
                if trainer.epoch % c.measure_every == 0 or trainer.epoch == c.epochs:
                    t0 = time.perf_counter()
                    # one pass, NC4 against the previous measurement's means; only the layer the history tracks (the
                    # alignment of penultimate and logits, a second D x D scatter, is measured once at the end)
                    m = trainer.measure(centers=centers, layers=EPOCH_LAYERS)
                    centers = m["means"]["penultimate"]
                    history.append(_row(trainer.epoch, seeds[si], loss, m, seconds))
                    seconds += time.perf_counter() - t0
            final = trainer.measure(permutations=c.permutations, layers=_final_layers(trainer.model, c))
            finals.append(_jsonable_final(final, seeds[si]))
            state = None
            if si + 1 < c.seeds:
                write_torch(folder / "checkpoint.pt", {"trainer": NetworkTrainer(c, data, seeds[si + 1], device).state_dict(),
                                                       "history": history, "finals": finals, "seconds": seconds, "seed_index": si + 1, "centers": None})
    with finishing():
        summary = _finish(folder, c, data, history, finals, seconds)
    summary["folder"] = str(folder)
    return summary


def _final_layers(model: torch.nn.Module, c: NetworkConfig) -> list[str]:
    if c.model == "mlp":
        names = [f"head.{i}" for i in range(1, 2 * c.depth, 2)]
        return names[:-1] + ["penultimate", "logits"]
    return ["layer1", "layer2", "layer3", "penultimate", "logits"]


def _jsonable_final(final: dict[str, Any], seed: int) -> dict[str, Any]:
    return {"seed": seed, "layers": final["layers"], "alignment": final["alignment"], "counts": final["counts"],
            "mean_logits": final["mean_logits"], "W": final["W"], "means": final["means"]["penultimate"]}


def _finish(folder: Path, c: NetworkConfig, data, history, finals, seconds) -> dict[str, Any]:
    from implicit_geometry.geometry.targets import seli_geometry

    write_csv(folder / "history.csv", history)
    f0 = finals[0]
    counts = np.asarray(f0["counts"])
    seli = seli_geometry(counts)
    W, means, Z = np.asarray(f0["W"]), np.asarray(f0["means"]), np.asarray(f0["mean_logits"])
    Wc = W - W.mean(0)
    Mc = means - means.mean(0)
    Zc = Z - Z.mean(0)
    write_npz(folder / "final.npz", W=W, class_means=means, mean_logits=Z, counts=counts, seli_W_gram=seli.W_gram,
              seli_mean_gram=seli.mean_gram, seli_logits=seli.class_logits)
    pen = {k: float(np.mean([f["layers"]["penultimate"].get(k, np.nan) for f in finals])) for k in f0["layers"]["penultimate"]}
    own = [r for r in history if r["seed"] == f0["seed"]]
    zero = [r for r in own if r["train_error"] == 0.0]
    nc1_first_zero = zero[0]["nc1"] if zero else None
    nc1_final = own[-1]["nc1"]
    # the lowest NC1 from the first zero-error epoch on: reported beside the bar (judged at the end, conservatively)
    lowest = min((r for r in own if r["epoch"] >= zero[0]["epoch"]), key=lambda r: r["nc1"]) if zero else None
    summary: dict[str, Any] = {
        "experiment": "network", "dataset": data.name, "model": c.model, "N": int(counts.sum()), "k": int(counts.size),
        "counts": counts.tolist(), "epochs": c.epochs, "seconds": round(seconds, 2), "seeds": [f["seed"] for f in finals],
        "penultimate": pen, "layers": f0["layers"], "alignment": f0["alignment"],
        "first_zero_error_epoch": zero[0]["epoch"] if zero else None,
        "nc1_at_first_zero_error": nc1_first_zero, "nc1_final": nc1_final,
        "nc1_reduction_since_zero_error": (nc1_first_zero / nc1_final) if zero and nc1_final > 0 else None,
        "seconds_to_first_zero_error": zero[0]["seconds"] if zero else None,
        "nc1_lowest_since_zero_error": lowest["nc1"] if lowest else None, "nc1_lowest_epoch": lowest["epoch"] if lowest else None,
    }
    summary["terminal_phase_bar"] = terminal_phase_bar(summary["first_zero_error_epoch"], summary["nc1_reduction_since_zero_error"])
    summary["verdict"] = _verdict(summary, counts)
    _figures(folder, c, history, counts, seli, Wc, Mc, Zc, f0["seed"])
    write_json(folder / "summary.json", summary)
    (folder / "checkpoint.pt").unlink(missing_ok=True)
    return summary


NC1_BAR_FACTOR = 10.0  # the bar: NC1 falls at least 10x after the first epoch with zero training error


def terminal_phase_bar(first_zero_error_epoch: int | None, nc1_reduction: float | None, factor: float = NC1_BAR_FACTOR) -> bool:
    """The issue's terminal-phase bar: training error reached zero at a measured epoch and NC1 then fell by at
    least ``factor`` (NC1 there / NC1 at the end).

    >>> terminal_phase_bar(12, 14.2), terminal_phase_bar(12, 3.0), terminal_phase_bar(None, None)
    (True, False, False)
    """
    return first_zero_error_epoch is not None and nc1_reduction is not None and nc1_reduction >= factor


def _verdict(s: dict[str, Any], counts: np.ndarray) -> list[str]:
    p = s["penultimate"]
    lines = [f"{s['model']} on {s['dataset']} (N = {s['N']}, k = {s['k']}), {s['epochs']} epochs in {s['seconds']:.0f} s: "
             f"train error {1 - p['accuracy']:.4f}, NC1 {p['nc1']:.3g}, CDNV {p['cdnv']:.3g}, NC3 {p.get('nc3', float('nan')):.3g}, NC4 {p['nc4']:.3g}"]
    verdict = "PASS" if s["terminal_phase_bar"] else "FAIL"
    if s["first_zero_error_epoch"] is None:
        lines.append(f"terminal phase {verdict}: training error never reached zero at a measured epoch (train longer); "
                     f"wall time {s['seconds']:.0f} s")
    else:
        lines.append(f"terminal phase {verdict} (zero training error, then NC1 down >= {NC1_BAR_FACTOR:g}x): first zero training error "
                     f"at epoch {s['first_zero_error_epoch']} ({s['seconds_to_first_zero_error']:.0f} s), NC1 fell "
                     f"{s['nc1_reduction_since_zero_error']:.2f}x since (from {s['nc1_at_first_zero_error']:.3g} to {s['nc1_final']:.3g} "
                     f"at epoch {s['epochs']}; lowest {s['nc1_lowest_since_zero_error']:.3g} at epoch {s['nc1_lowest_epoch']}, "
                     f"{s['nc1_at_first_zero_error'] / s['nc1_lowest_since_zero_error']:.2f}x); wall time {s['seconds']:.0f} s")
    balanced = len(set(map(int, counts))) == 1
    lines.append(f"distance to the {'ETF (= SELI, balanced)' if balanced else 'SELI prediction'}: class means {p['seli_dist_means']:.3f}, "
                 f"classifiers {p['seli_dist_W']:.3f}, mean logits {p['seli_dist_logits']:.3f}"
                 + ("" if balanced else f"; to the ETF: means {p['etf_dist_means']:.3f}, classifiers {p['etf_dist_W']:.3f}"))
    lines.append(f"effective rank of the mean logit matrix {p['effective_rank_mean_logits']:.2f} (k-1 = {s['k'] - 1} for the ETF)")
    return lines


def _figures(folder: Path, c: NetworkConfig, history, counts, seli, Wc, Mc, Zc, seed) -> None:
    from implicit_geometry.report.figures import plot_curves, plot_matrix_pairs

    figs = folder / "figures"
    rows = [r for r in history if r["seed"] == seed]
    x = np.array([r["epoch"] for r in rows], float)
    get = lambda k: np.array([np.nan if r.get(k) is None else r[k] for r in rows], float)  # noqa: E731
    pos = lambda a: np.where(a > 0, a, np.nan)  # noqa: E731
    plot_curves(figs / "collapse.png", x, {k: pos(get(k)) for k in ("nc1", "cdnv", "nc3", "nc4", "train_error", "train_loss")},
                xlabel="epoch", ylabel="value", title=f"{c.model} on {c.dataset}: neural collapse", logx=False)
    plot_curves(figs / "distances.png", x, {k: get(k) for k in ("etf_dist_means", "seli_dist_means", "etf_dist_W", "seli_dist_W", "seli_dist_logits")},
                xlabel="epoch", ylabel="normalized distance", title="distance to the predicted geometry", logx=False, logy=False)
    plot_curves(figs / "ranks.png", x, {k: get(k) for k in ("effective_rank_mean_logits", "stable_rank_mean_logits", "effective_rank_means")},
                xlabel="epoch", ylabel="rank", title="effective / stable rank", logx=False, logy=False)
    plot_matrix_pairs(figs / "grams.png", [
        ("W W^T", seli.W_gram, Wc @ Wc.T), ("class-mean Gram", seli.mean_gram, Mc @ Mc.T), ("mean logits", seli.class_logits, Zc),
    ], title=f"SELI predicted vs learned ({c.model}, seed {seed})")
