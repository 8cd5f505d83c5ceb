"""The log-bilinear NTP model: free context embeddings H (d x m) and word embeddings W (V x d), logits ``Z = W H``,
trained on the exact soft-label loss, batched over seeds.

Why not the core simulator's normalized GD alone: the NTP gradient has two parts that want opposite step rules.
Its F part (in-support log-odds error) is a strongly convex problem with a finite minimizer ``L*``: a normalized
step of fixed length makes it oscillate at that length forever (measured: the log-odds error stalls at ~0.7).
Its F-perp part pushes the out-of-support logits to -inf like a separable problem: plain GD grows that component
like log t, so its direction approaches ``L_mm`` only like 1/log t. The ``split`` rule treats them separately, in
logit units (each context's error divided by its weight pi_j, the step divided by ``||W||_2^2 + ||H||_2^2``, the
largest gain of the bilinear map, so the induced logit change has the intended size at any scale):

- F part: gradient descent with step ``lr`` (converges linearly to ``L*``);
- F-perp part: a normalized step of logit length ``perp_lr`` during the first ``direction_steps`` steps (so the
  max-margin component grows linearly and its direction converges like 1/t), then 0: once the margin is large, the
  direction no longer moves.
- After ``direction_steps``, the F part is finished by Gauss-Newton steps in log-odds (``finite_lr`` times the
  centered in-support error ``log q - log p``, realized as an exact logit change through least squares on H, then
  W): gradient steps crawl there, because at a large margin the bilinear map is badly conditioned in the F
  directions (measured: log-odds error still 9e-3 after 20000 further gradient steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from implicit_geometry._validation import check_float, check_int
from implicit_geometry.models.ufm import DeepUFM
from implicit_geometry.ntp.loss import SoftLabelCrossEntropy


def split_logits(L: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decompose logits L (m x V) into the F component (centered on each support, 0 elsewhere) and the orthogonal
    component with rows centered (softmax ignores a constant per row), which converges in direction to ``L_mm``.

    >>> F, O = split_logits(np.array([[3.0, 1.0, -1.0]]), np.array([[1, 1, 0]]))
    >>> F.tolist(), O.tolist()
    ([[1.0, -1.0, 0.0]], [[1.0, 1.0, -2.0]])
    """
    S = np.asarray(support) != 0
    L = np.asarray(L, dtype=np.float64)
    mean_on = (L * S).sum(1, keepdims=True) / S.sum(1, keepdims=True)
    F = np.where(S, L - mean_on, 0.0)
    O = L - F
    return F, O - O.mean(axis=1, keepdims=True)


@dataclass
class SplitStepConfig:
    lr: float = 0.5
    perp_lr: float = 1.0
    direction_steps: int = 6000
    finite_lr: float = 1.0

    def __post_init__(self) -> None:
        check_float("lr", self.lr, minimum=0.0, strict_min=True)
        check_float("perp_lr", self.perp_lr, minimum=0.0)
        check_int("direction_steps", self.direction_steps, minimum=0)
        check_float("finite_lr", self.finite_lr, minimum=0.0, strict_min=True)


class LogBilinearNTP:
    """``Z = W H`` on a soft-label loss with the ``split`` step rule (module docstring); ``model.factors = [H, W]``."""

    def __init__(self, loss: SoftLabelCrossEntropy, dim: int, *, seeds: list[int] | None = None, init_std: float = 0.1,
                 config: SplitStepConfig | None = None, device: str | torch.device = "cpu") -> None:
        self.loss = loss
        self.config = config or SplitStepConfig()
        self.model = DeepUFM.random(num_classes=loss.num_classes, num_samples=loss.num_samples, dim=dim,
                                    batch=len(seeds or [0]), init_std=init_std, seeds=seeds or [0], device=device)
        self.step = 0
        self._gain: torch.Tensor | None = None
        self._S = loss.support.to(loss.P.dtype)
        self._size = self._S.sum(0)

    def parts(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-context error ``softmax(z_j) - p_j`` split into its F part ``EF`` and its F-perp part, the latter as
        ``(Ep_scaled, log_scale)`` with ``Ep = exp(log_scale) Ep_scaled``: the out-of-support mass is far below
        double precision's 1e-16 relative to 1 long before the direction has converged, so it is carried in the
        log domain (``1 - q(S)`` would round to 0 and lose the on-support half of the F-perp gradient)."""
        S = self._S > 0
        neg = torch.tensor(-torch.inf, dtype=Z.dtype, device=Z.device)
        lse_in = torch.logsumexp(torch.where(S, Z, neg), dim=-2, keepdim=True)
        lse_out = torch.logsumexp(torch.where(S, neg, Z), dim=-2, keepdim=True)
        lse = torch.logaddexp(lse_in, lse_out)
        log_out = lse_out - lse  # log of the out-of-support mass per context (B x 1 x m)
        qS = torch.where(S, torch.exp(Z - lse_in), torch.zeros_like(Z))  # softmax restricted to the support
        r = qS - self.loss.P
        out = torch.exp(log_out)
        on = r - qS * out
        EF = self._S * (on - on.sum(-2, keepdim=True) / self._size)
        # F-perp part: q_v off the support, -out_j/|S_j| on it (the support mean of the error, exactly).
        logE = torch.where(S, log_out - torch.log(self._size), Z - lse)
        log_scale = logE.amax(dim=(-2, -1))
        Ep = torch.exp(logE - log_scale[:, None, None]) * torch.where(S, -1.0, 1.0).to(Z.dtype)
        return EF, Ep, log_scale

    def update(self) -> None:
        c = self.config
        H, W = self.model.factors
        Z = W @ H
        EF, Ep, _ = self.parts(Z)
        perp = c.perp_lr if self.step < c.direction_steps else 0.0
        if perp == 0 or c.perp_lr == 0:
            # Second phase: Gauss-Newton in log-odds. The F error measured as log q - log p on each support is
            # realized as an exact logit change (least squares through H, then the unreachable rest through W).
            S = self._S > 0
            lq = torch.where(S, Z - torch.logsumexp(torch.where(S, Z, -torch.inf), dim=-2, keepdim=True), 0.0)
            r = self._S * (lq - self.loss.logP)
            D = c.finite_lr * self._S * (r - r.sum(-2, keepdim=True) / self._size)
            dH = torch.linalg.pinv(W, rtol=1e-12) @ D
            H.sub_(dH)
            R = D - W @ dH
            W.sub_(R @ torch.linalg.pinv(H, rtol=1e-12))
            self.step += 1
            return
        D = c.lr * EF
        if perp > 0:
            n = torch.linalg.vector_norm(Ep, dim=(-2, -1)).clamp_min(1e-300)
            D = D + perp * Ep / n[:, None, None]
        if self.step % 16 == 0 or self._gain is None:  # the gain drifts slowly; an SVD every step would dominate
            self._gain = torch.linalg.matrix_norm(W, ord=2) ** 2 + torch.linalg.matrix_norm(H, ord=2) ** 2
        eta = (1.0 / (1.1 * self._gain))[:, None, None]
        gW = D @ H.transpose(1, 2)
        gH = W.transpose(1, 2) @ D
        W.sub_(eta * gW)
        H.sub_(eta * gH)
        self.step += 1

    def run(self, until: int, should_stop: Any | None = None, progress: Any | None = None) -> bool:
        with torch.no_grad():
            while self.step < until:
                if should_stop is not None and should_stop():
                    return False
                self.update()
                if progress is not None:
                    progress.update(1)
        return True

    def logits(self) -> np.ndarray:
        """Learned logits, m x V per run (B x m x V)."""
        return (self.model.factors[1] @ self.model.factors[0]).transpose(1, 2).cpu().numpy()
