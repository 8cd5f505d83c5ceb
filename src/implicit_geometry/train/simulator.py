"""Full-batch training of the (deep) UFM, batched over runs, that keeps converging after the loss underflows.

Optimizers (``OptimizerConfig.name``):

- ``"gd"``: plain gradient descent ``F <- F - lr * (dLoss/dF + weight_decay * F)``. Faithful, and the reference
  for what a textbook loop does: without weight decay it slows down logarithmically and its gradient eventually
  underflows to exactly 0.
- ``"ngd"`` (default): normalized gradient descent, scale-free. The step direction is the gradient computed from
  ``G_scaled`` (the loss gradient divided by its largest entry, exact in the log domain, see
  :mod:`implicit_geometry.train.losses`), so it never underflows; its length is
  ``lr * ||theta|| * min(1, (norm_ref / ||theta||)^(L+1))`` where ``||theta||`` is the run's total parameter norm
  and L the depth. So the *relative* step is ``lr`` while ``||theta|| < norm_ref`` (scale-free early phase), then
  decays like ``||theta||^-(L+1)``, the inverse of the growing sharpness of the soft-max margin landscape (the
  logits scale like ``||theta||^(L+1)``). With a fixed relative step the iterates oscillate chaotically around the
  max-margin direction instead of converging to it; with this schedule the tail constant ``lr * norm_ref^(L+1)``
  sets speed against stability. The defaults (lr 0.02, norm_ref 40: tail constant 32) are stable on the SELI
  benchmark (a batched run and a separate run agree to round-off) and reach 1e-3 in about 10^4 steps;
  ``norm_ref = inf`` gives plain normalized GD with relative step ``lr``.

Each run in the batch has its own step length, and may have its own ``lr`` and ``norm_ref`` (pass one
``OptimizerConfig`` per run: a sweep batches points that differ only in these into one simulation). Every quantity is deterministic given the factors, so a run
that is stopped and resumed from a checkpoint retraces the uninterrupted run bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from implicit_geometry._validation import InvalidParameterError, check_choice, check_float
from implicit_geometry.models.ufm import DeepUFM
from implicit_geometry.train.losses import CrossEntropy

OPTIMIZERS = ("ngd", "gd")


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "ngd"
    lr: float = 0.02
    norm_ref: float = 40.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        check_choice("optimizer", self.name, OPTIMIZERS)
        check_float("lr", self.lr, minimum=0.0, strict_min=True)
        if not (isinstance(self.norm_ref, (int, float)) and self.norm_ref > 0):
            raise InvalidParameterError(f"norm_ref must be a positive number or inf (got {self.norm_ref!r})")
        check_float("weight_decay", self.weight_decay, minimum=0.0)
        if self.name == "ngd" and self.weight_decay > 0:
            raise InvalidParameterError(
                "weight_decay > 0 needs optimizer gd (normalized steps of fixed length cannot settle on the regularized minimizer)"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_steps(total: int, num: int = 200, first: int = 0) -> list[int]:
    """About ``num`` steps between ``first`` and ``total`` (both included), spaced evenly on a log axis."""
    if total <= first:
        return [first]
    pts = np.unique(np.round(np.geomspace(1, total - first + 1, num)).astype(int) - 1 + first)
    return sorted(set(pts.tolist()) | {first, total})


class Simulator:
    """Trains a :class:`DeepUFM` on a loss; ``step`` counts the updates done so far."""

    def __init__(
        self, model: DeepUFM, loss: CrossEntropy, optimizer: OptimizerConfig | Sequence[OptimizerConfig] | None = None
    ) -> None:
        self.model = model
        self.loss = loss
        self.step = 0
        if isinstance(optimizer, Sequence):
            # One config per run: runs differ only in lr / norm_ref, which become per-run factors of the step.
            configs = list(optimizer)
            if len(configs) != model.batch:
                raise InvalidParameterError(f"optimizer must be one config or one per run ({model.batch}) (got {len(configs)})")
            shared = {(c.name, c.weight_decay) for c in configs}
            if len(shared) != 1:
                raise InvalidParameterError(f"optimizer name and weight_decay must be equal across runs of one simulation (got {sorted(shared)})")
            self.optimizer = configs[0]
            factor = model.factors[0]
            self._lr: float | torch.Tensor = torch.tensor([c.lr for c in configs], dtype=factor.dtype, device=factor.device)
            self._norm_ref: float | torch.Tensor = torch.tensor([c.norm_ref for c in configs], dtype=factor.dtype, device=factor.device)
        else:
            self.optimizer = optimizer or OptimizerConfig()
            self._lr, self._norm_ref = self.optimizer.lr, self.optimizer.norm_ref

    def update(self) -> None:
        """One full-batch update of every run in the batch."""
        opt = self.optimizer
        model = self.model
        chain = model.chain()
        G, log_scale = self.loss.scaled_gradient(chain.logits)
        if opt.name == "gd":
            # exp(log_scale) underflows to 0 once the loss does: that is the faithful textbook behaviour.
            G = G * torch.exp(log_scale)[:, None, None]
        grads = chain.pullback(G)
        lr, norm_ref = self._lr, self._norm_ref
        if opt.name == "gd":
            lr_run = lr[:, None, None] if isinstance(lr, torch.Tensor) else lr
            for F, g in zip(model.factors, grads):
                if opt.weight_decay:
                    g = g + opt.weight_decay * F
                F.sub_(lr_run * g)
            self.step += 1
            return
        gnorm = torch.sqrt(sum(torch.linalg.vector_norm(g, dim=(1, 2)) ** 2 for g in grads))
        tnorm = torch.sqrt(model.squared_norm())
        length = lr * tnorm
        if isinstance(norm_ref, torch.Tensor) or math.isfinite(norm_ref):  # an infinite norm_ref gives the factor 1
            # reciprocal() * norm_ref is how torch evaluates `float / tensor`: per-run values give the same bits
            length = length * torch.clamp((tnorm.reciprocal() * norm_ref) ** (model.depth + 1), max=1.0)
        scale = (length / gnorm.clamp_min(1e-300))[:, None, None]  # a zero gradient gives a zero update
        for F, g in zip(model.factors, grads):
            F.addcmul_(g, scale, value=-1.0)
        self.step += 1

    def run(
        self,
        until: int,
        *,
        record_at: Iterable[int] = (),
        on_record: Callable[[Simulator], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: Any | None = None,
    ) -> bool:
        """Update until ``step == until``; call ``on_record`` whenever ``step`` is in ``record_at`` (before updating
        further). Returns False if ``should_stop()`` became true first (the state is consistent: a whole number of
        updates has been done), True when ``until`` was reached."""
        marks = sorted(s for s in set(record_at) if s >= self.step)
        mi = 0
        with torch.no_grad():
            while True:
                while mi < len(marks) and marks[mi] < self.step:
                    mi += 1
                if mi < len(marks) and marks[mi] == self.step and on_record is not None:
                    on_record(self)
                    mi += 1
                if self.step >= until:
                    return True
                if should_stop is not None and should_stop():
                    return False
                self.update()
                if progress is not None:
                    progress.update(1)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "factors": [F.detach().cpu().clone() for F in self.model.factors]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device, dtype = self.model.factors[0].device, self.model.factors[0].dtype
        self.model.factors = [F.to(device=device, dtype=dtype).clone() for F in state["factors"]]
        self.step = int(state["step"])
