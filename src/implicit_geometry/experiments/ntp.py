"""Experiment ``ntp``: from a corpus to the predicted NTP geometry, checked on a trained causal transformer, plus
the log-bilinear model on a planted synthetic corpus (the F / F-perp decomposition of its logits).

Conventions: the loss is the expected NTP loss (mean over positions, i.e. contexts weighted by frequency); Grams
are compared by normalized distance; learned W is centered over words and h projected on its row space
(:mod:`implicit_geometry.ntp.measure`). The transformer is measured on the ``measure_contexts`` most frequent
contexts; the control is the same corpus with every support replaced by a random set of equal size.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from implicit_geometry._validation import InvalidParameterError, check_choice, check_float, check_int
from implicit_geometry.experiments.base import (
    ExperimentConfig,
    Interrupted,
    check_not_diverged,
    interruptible,
    progress_bar,
    resolve_device,
    run_experiment,
)
from implicit_geometry.io import read_torch, write_csv, write_json, write_npz, write_torch
from implicit_geometry.sweep.contract import Sweepable
from implicit_geometry.train.simulator import record_steps


@dataclass
class NtpConfig(ExperimentConfig):
    corpus: str = "synthetic"  # synthetic | shakespeare | path of a text file
    data_dir: str = "data/shakespeare"
    tokenizer: str = "char"
    context: int = 0  # 0: 3 for text, 2 for the synthetic corpus
    max_chars: int = 200000
    synthetic_length: int = 30000
    dim: int = 64
    layers: int = 2
    heads: int = 4
    steps: int = 1200
    batch_size: int = 128
    lr: float = 3e-3
    measure_contexts: int = 300
    bilinear_steps: int = 6000
    bilinear_direction_steps: int = 5800
    seeds: int = 1
    first_seed: int = 0
    records: int = 30
    device: str = "auto"
    checkpoint_seconds: float = 30.0

    def validate(self) -> NtpConfig:
        if self.corpus not in ("synthetic", "shakespeare") and not Path(self.corpus).is_file():
            raise InvalidParameterError(f"corpus must be synthetic, shakespeare or an existing text file (got {self.corpus!r})")
        check_choice("tokenizer", self.tokenizer, ["char", "word"])
        self.context = check_int("context", self.context, minimum=0, maximum=64)
        self.max_chars = check_int("max_chars", self.max_chars, minimum=100)
        self.synthetic_length = check_int("synthetic_length", self.synthetic_length, minimum=100)
        self.dim = check_int("dim", self.dim, minimum=2)
        self.layers = check_int("layers", self.layers, minimum=1)
        self.heads = check_int("heads", self.heads, minimum=1)
        if self.dim % self.heads:
            raise InvalidParameterError(f"dim must be a multiple of heads={self.heads} (got {self.dim})")
        self.steps = check_int("steps", self.steps, minimum=1)
        self.batch_size = check_int("batch_size", self.batch_size, minimum=1)
        self.lr = check_float("lr", self.lr, minimum=0.0, strict_min=True)
        self.measure_contexts = check_int("measure_contexts", self.measure_contexts, minimum=4)
        self.bilinear_steps = check_int("bilinear_steps", self.bilinear_steps, minimum=0)
        self.bilinear_direction_steps = check_int("bilinear_direction_steps", self.bilinear_direction_steps, minimum=0)
        self.seeds = check_int("seeds", self.seeds, minimum=1, maximum=1)
        self.validate_run_fields()
        self.records = check_int("records", self.records, minimum=2)
        return self

    @property
    def context_length(self) -> int:
        return self.context or (2 if self.corpus == "synthetic" else 3)




def load_corpus(config: NtpConfig) -> tuple[Any, np.ndarray]:
    """(stats, token ids) of the configured corpus."""
    from implicit_geometry.ntp.corpus import context_statistics, markov_sequence, read_text, tokenize
    from implicit_geometry.ntp.data import shakespeare_files

    T = config.context_length
    if config.corpus == "synthetic":
        planted = markov_sequence(config.synthetic_length, vocab_size=12, context=T, num_groups=6, support_size=3, seed=config.first_seed)
        return planted.stats, planted.sequence
    files = shakespeare_files(config.data_dir) if config.corpus == "shakespeare" else [Path(config.corpus)]
    text = read_text(files, max_chars=config.max_chars)
    ids, vocab = tokenize(text, config.tokenizer)
    return context_statistics(ids, T, len(vocab), vocab=vocab), ids


class NtpRun:
    def __init__(self, config: NtpConfig, folder: Path) -> None:
        from implicit_geometry.models.transformer import CausalTransformer
        from implicit_geometry.ntp.measure import prediction_with_control

        self.config = c = config
        self.folder = folder
        self.device = resolve_device(c.device)
        self.stats, ids = load_corpus(c)
        self.ids = torch.as_tensor(ids.astype(np.int64))
        self.T = c.context_length
        t0 = time.perf_counter()
        # ADMM to 1e-7 relative residuals, at most a minute: Gram distances are compared at the 1e-2 level.
        self.geometry, self.control = prediction_with_control(self.stats, seed=c.first_seed, tol=1e-7, time_limit=60.0)
        self.predict_seconds = time.perf_counter() - t0
        order = np.argsort(-self.stats.counts, kind="stable")
        self.rows = np.sort(order[: min(c.measure_contexts, self.stats.num_contexts)])
        self.measure_x = torch.as_tensor(self.stats.contexts[self.rows].astype(np.int64), device=self.device)
        # Top singular directions of the predicted word Gram: the order in which they are learned is tracked.
        evals, evecs = np.linalg.eigh(self.geometry.W_gram)
        self.directions = evecs[:, ::-1][:, :5].T.copy()
        torch.manual_seed(c.first_seed)
        self.net = CausalTransformer(self.stats.vocab_size, self.T, c.dim, c.layers, c.heads).to(self.device)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=c.lr, weight_decay=0.0)
        self.gen = torch.Generator().manual_seed(c.first_seed + 1)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.bilinear: dict[str, Any] | None = None
        self.seconds = 0.0

    # -- transformer --------------------------------------------------------------------------------------------
    def measure(self) -> dict[str, Any]:
        from implicit_geometry.ntp.measure import compare_to_prediction, direction_alignment

        with torch.no_grad():
            H = self.net.context_embeddings(self.measure_x).T
        W = self.net.unembedding.weight.detach()
        if not (bool(torch.isfinite(H).all()) and bool(torch.isfinite(W).all())):
            # the last loss came before its step's update: a too-large step shows first in the embeddings
            check_not_diverged(math.nan, f"at transformer step {self.step}")
        out = compare_to_prediction(W, H, self.rows, self.geometry, self.control)
        align = direction_alignment(W, self.directions)
        out.update({f"align_{i}": float(a) for i, a in enumerate(align)})
        return out

    def train_step(self) -> float:
        n = self.ids.numel() - self.T
        pos = torch.randint(0, n, (self.config.batch_size,), generator=self.gen)
        x = torch.stack([self.ids[p : p + self.T] for p in pos.tolist()]).to(self.device)
        y = self.ids[pos + self.T].to(self.device)
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        return float(loss.detach())

    def full_loss(self) -> float:
        """Expected NTP loss over all distinct contexts (exact, in chunks)."""
        P = self.stats.probabilities
        pi = self.stats.pi
        total = 0.0
        with torch.no_grad():
            for a in range(0, self.stats.num_contexts, 4096):
                x = torch.as_tensor(self.stats.contexts[a : a + 4096].astype(np.int64), device=self.device)
                lq = torch.log_softmax(self.net(x), dim=-1).cpu().numpy()
                Pa = P[a : a + 4096]
                rows = np.repeat(np.arange(Pa.shape[0]), np.diff(Pa.indptr))
                total -= float((pi[a + rows] * Pa.data * lq[rows, Pa.indices]).sum())
        return total

    def _record(self, batch_loss: float) -> None:
        row: dict[str, Any] = {"step": self.step, "batch_loss": batch_loss}
        row.update(self.measure())
        self.history.append(row)

    def train(self, progress: bool) -> None:
        c = self.config
        marks = set(record_steps(c.steps, c.records))
        bar = progress_bar(c.steps, "ntp transformer", progress, initial=self.step)
        with interruptible() as stop, bar:
            t0 = time.perf_counter()
            last_ckpt = t0
            if self.step == 0 and not self.history:
                self._record(float("nan"))
            while self.step < c.steps:
                if stop.requested:
                    self.seconds += time.perf_counter() - t0
                    self.save_checkpoint()
                    raise Interrupted(self.folder, self.step)
                self.net.train()
                loss = self.train_step()
                check_not_diverged(loss, f"at transformer step {self.step}")
                self.net.eval()
                if self.step in marks:
                    self._record(loss)
                bar.update(1)
                if time.perf_counter() - last_ckpt > c.checkpoint_seconds:
                    self.seconds += time.perf_counter() - t0
                    t0 = last_ckpt = time.perf_counter()
                    self.save_checkpoint()
            self.seconds += time.perf_counter() - t0

    # -- log-bilinear -------------------------------------------------------------------------------------------
    def run_bilinear(self) -> dict[str, Any]:
        return simulate_log_bilinear(self.config.bilinear_steps, self.config.bilinear_direction_steps, seed=self.config.first_seed)

    # -- checkpoints --------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        write_torch(self.folder / "checkpoint.pt", {
            "net": self.net.state_dict(), "opt": self.opt.state_dict(), "gen": self.gen.get_state(),
            "step": self.step, "history": self.history, "bilinear": self.bilinear, "seconds": self.seconds,
        })

    def load_checkpoint(self) -> None:
        state = read_torch(self.folder / "checkpoint.pt")
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.step = int(state["step"])
        self.history = state["history"]
        self.bilinear = state["bilinear"]
        self.seconds = float(state["seconds"])

    # -- results ------------------------------------------------------------------------------------------------
    def finish(self, figures: bool = True) -> dict[str, Any]:
        c = self.config
        write_csv(self.folder / "history.csv", [{k: v for k, v in r.items()} for r in self.history])
        final = self.history[-1]
        full = self.full_loss()
        entropy = self.stats.entropy
        summary: dict[str, Any] = {
            "experiment": "ntp",
            "corpus": c.corpus,
            "context_length": self.T,
            "corpus_stats": self.stats.summary(),
            "prediction": self.geometry.summary(),
            "prediction_seconds": round(self.predict_seconds, 3),
            "transformer": {"dim": c.dim, "layers": c.layers, "heads": c.heads, "steps": self.step, "seconds": round(self.seconds, 2)},
            "final_loss": full,
            "excess_loss": full - entropy,
            **{k: final[k] for k in ("dist_W_gram", "dist_context_gram", "control_dist_W_gram", "control_dist_context_gram", "collapse_ratio")},
            "direction_half_steps": self._half_steps(),
            "bilinear": {k: v for k, v in (self.bilinear or {}).items() if k != "history"},
        }
        summary["verdict"] = verdict(summary)
        if figures:
            self._figures()
        with torch.no_grad():
            H = self.net.context_embeddings(self.measure_x).cpu().numpy()
        from implicit_geometry.ntp.measure import learned_grams

        W = self.net.unembedding.weight.detach().cpu().numpy()
        GW, GH = learned_grams(W, H.T)  # as measured: W centered over words, h projected on its row space
        write_npz(self.folder / "final.npz", W=W, H=H.T,
                  measured_contexts=self.rows, predicted_W_gram=self.geometry.W_gram,
                  predicted_context_gram=self.geometry.context_gram(self.rows), learned_W_gram=GW, learned_context_gram=GH,
                  L_mm_distinct=self.geometry.svm.X,
                  supports_distinct=self.geometry.svm.supports, multiplicity=self.geometry.svm.multiplicity)
        write_json(self.folder / "summary.json", summary)
        (self.folder / "checkpoint.pt").unlink(missing_ok=True)
        return summary

    def _half_steps(self) -> list[int | None]:
        """Per tracked direction, the first recorded step where its alignment reached half of its final value."""
        out: list[int | None] = []
        for i in range(self.directions.shape[0]):
            vals = np.array([r[f"align_{i}"] for r in self.history])
            steps = [r["step"] for r in self.history]
            base, end = vals[0], vals[-1]
            if end <= base:
                out.append(None)
                continue
            hit = np.flatnonzero(vals - base >= 0.5 * (end - base))
            out.append(int(steps[hit[0]]) if hit.size else None)
        return out

    def _figures(self) -> None:
        from implicit_geometry.report.figures import plot_curves, plot_matrix_pairs

        figs = self.folder / "figures"
        steps = np.array([r["step"] for r in self.history], float) + 1
        col = lambda k: np.array([r[k] for r in self.history], float)  # noqa: E731
        plot_curves(figs / "transformer_distances.png", steps, {
            "W Gram vs prediction": col("dist_W_gram"), "W Gram vs shuffled control": col("control_dist_W_gram"),
            "context Gram vs prediction": col("dist_context_gram"), "context Gram vs shuffled control": col("control_dist_context_gram"),
        }, xlabel="step + 1", ylabel="normalized distance", title=f"transformer on {Path(self.config.corpus).name} (T={self.T})",
            styles={"W Gram vs shuffled control": "--", "context Gram vs shuffled control": "--"}, logy=False)
        plot_curves(figs / "direction_order.png", steps, {f"direction {i + 1}": col(f"align_{i}") for i in range(self.directions.shape[0])},
                    xlabel="step + 1", ylabel="share of ||W_c||^2", title="predicted singular directions learned over training", logy=False)
        with torch.no_grad():
            H = self.net.context_embeddings(self.measure_x).T
        from implicit_geometry.ntp.measure import learned_grams

        GW, GH = learned_grams(self.net.unembedding.weight.detach(), H)
        k = min(60, len(self.rows))
        plot_matrix_pairs(figs / "grams.png", [("word Gram", self.geometry.W_gram, GW),
                                               ("context Gram (first 60)", self.geometry.context_gram(self.rows)[:k, :k], GH[:k, :k])],
                          title="predicted (L_mm) vs learned")
        if self.bilinear and self.bilinear.get("history"):
            h = self.bilinear["history"]
            x = np.array([r["step"] for r in h], float) + 1
            plot_curves(figs / "bilinear_loss.png", x, {"loss - entropy": np.array([max(r["excess"], 1e-300) for r in h])},
                        xlabel="step + 1", ylabel="CE - entropy", title="log-bilinear model (planted corpus)")
            plot_curves(figs / "bilinear_decomposition.png", x, {
                "max |F part - L*|": np.array([r["finite_error"] for r in h]),
                "dist(F-perp part, L_mm)": np.array([r["direction_distance"] for r in h]),
            }, xlabel="step + 1", ylabel="error", title="logits = F part (-> L*) + F-perp part (direction -> L_mm)")


def simulate_log_bilinear(steps: int, direction_steps: int, *, seed: int = 0, dim: int = 20, records: int = 40,
                          corpus: Any | None = None) -> dict[str, Any]:
    """Train the log-bilinear model on a planted corpus (default: 4 groups of 3 contexts, V=10, supports of 2-4
    words); returns the final errors and a history."""
    from implicit_geometry.geometry.metrics import normalized_distance
    from implicit_geometry.ntp.corpus import planted_supports
    from implicit_geometry.ntp.loss import SoftLabelCrossEntropy
    from implicit_geometry.ntp.predict import predict_geometry
    from implicit_geometry.ntp.simulate import LogBilinearNTP, SplitStepConfig, split_logits

    if steps == 0:
        return {}
    t0 = time.perf_counter()
    corpus = corpus or planted_supports(4, 3, 10, [2, 3, 3, 4], seed=seed).stats
    geo = predict_geometry(corpus)
    P = corpus.probabilities.toarray()
    S = corpus.support.toarray()
    Lstar = geo.L_star.toarray()
    loss = SoftLabelCrossEntropy(P.T, corpus.counts)
    sim = LogBilinearNTP(loss, dim, seeds=[seed], config=SplitStepConfig(direction_steps=direction_steps))
    history = []
    for s in record_steps(steps, records):
        sim.run(s)
        L = sim.logits()[0]
        F, O = split_logits(L, S)
        Z = torch.as_tensor(L.T[None])
        history.append({"step": s, "excess": float(loss.excess(Z)[0]), "finite_error": float(np.abs(F - Lstar).max()),
                        "direction_distance": normalized_distance(O, geo.L_mm)})
    last = history[-1]
    return {"steps": steps, "seconds": round(time.perf_counter() - t0, 2), "excess": last["excess"],
            "finite_error": last["finite_error"], "direction_distance": last["direction_distance"], "history": history}


def verdict(s: dict[str, Any]) -> list[str]:
    lines = [
        f"corpus {s['corpus']} (T={s['context_length']}): {s['corpus_stats']['distinct_contexts']} contexts, "
        f"{s['corpus_stats']['distinct_supports']} distinct supports, entropy {s['corpus_stats']['entropy_nats']:.4f} nats; "
        f"NTP-SVM {'= centered support matrix (certified)' if s['prediction']['centered_support_optimal'] else 'solved'} "
        f"(centered support at distance {s['prediction']['centered_support_distance']:.3f})",
        f"transformer: loss - entropy {s['excess_loss']:.3f} nats; Gram distances to the prediction W {s['dist_W_gram']:.3f}, "
        f"contexts {s['dist_context_gram']:.3f} vs shuffled-support control W {s['control_dist_W_gram']:.3f}, contexts {s['control_dist_context_gram']:.3f}",
    ]
    closer = s["dist_W_gram"] < s["control_dist_W_gram"] and s["dist_context_gram"] < s["control_dist_context_gram"]
    lines.append("the prediction is closer than the control for both Grams" if closer else "the prediction is NOT closer than the control for both Grams")
    b = s.get("bilinear") or {}
    if b:
        lines.append(f"log-bilinear ({b['steps']} steps, {b['seconds']} s): F part within {b['finite_error']:.1e} of L*, "
                     f"F-perp direction at distance {b['direction_distance']:.1e} from L_mm, loss - entropy {b['excess']:.1e}")
    return lines


def run_ntp(config: NtpConfig | None = None, out: Path | str | None = None, *, resume: Path | str | None = None, progress: bool = True,
            figures: bool = True) -> dict[str, Any]:
    """Run (or resume) the ntp experiment; returns the summary (also written to ``summary.json``).
    ``figures=False`` skips the matplotlib figures (``igeom sweep`` does, unless ``--figures``)."""
    def work(run: NtpRun, _: Any) -> None:
        if run.bilinear is None:  # the log-bilinear reference first, checkpointed before the embedding training
            run.bilinear = run.run_bilinear()
            run.save_checkpoint()
        run.train(progress)

    return run_experiment("ntp", NtpConfig, NtpRun, config, out, resume, work=work, finish=lambda run: run.finish(figures=figures))


# ``igeom sweep ntp``: one transformer per point and seed (``seeds`` is 1 here, so the sweep's seeds go through
# ``first_seed``, which also seeds the planted corpus).
SWEEP = Sweepable(config=NtpConfig, run=run_ntp, seeds_field=None, first_seed_field="first_seed", figures_option="figures",
                  volatile=("seconds", "folder", "prediction_seconds"))
