"""The exact next-token (soft-label) cross-entropy, with the interface of :class:`train.losses.CrossEntropy`.

Logits Z are B x V x m (column j = context j, as the UFM's ``Z = W H``). The loss is the expected NTP loss
``CE(Z) = -sum_j pi_j sum_z p_jz log softmax(z_j)_z``; its infimum is the empirical entropy, never reached. Its
gradient ``pi_j (softmax(z_j) - p_j)`` vanishes only as the in-support log-odds reach ``L*`` (the F part) and the
out-of-support mass goes to 0 (the F-perp part): it decays polynomially, not exponentially, so nothing underflows,
but the two parts decay at different rates, which is what :mod:`implicit_geometry.ntp.simulate` has to handle.

>>> import torch
>>> loss = SoftLabelCrossEntropy(np.array([[0.5, 1.0], [0.5, 0.0]]))
>>> Z = torch.zeros(1, 2, 2, dtype=torch.float64)
>>> round(float(loss.excess(Z)[0]), 6)  # KL(p || uniform) of the second context, weight 1/2
0.346574
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from implicit_geometry._validation import InvalidParameterError


class SoftLabelCrossEntropy:
    """Soft-label CE over logits Z (B x V x m) with targets P (V x m, columns sum to 1) and context weights pi.

    Args:
        targets: V x m next-token distributions (columns), dense array.
        weights: pi (m,), positive; normalized to sum 1 (default uniform).
    """

    def __init__(self, targets: Any, weights: Any | None = None, *, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> None:
        P = np.asarray(targets, dtype=np.float64)
        if P.ndim != 2 or np.any(P < 0) or not np.allclose(P.sum(axis=0), 1.0, atol=1e-9):
            raise InvalidParameterError("targets must be a V x m matrix of distributions (columns summing to 1)")
        V, m = P.shape
        w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.size != m or np.any(w <= 0):
            raise InvalidParameterError(f"weights must be {m} positive numbers (got {w.size})")
        w = w / w.sum()
        self.num_classes, self.num_samples = V, m
        self.P = torch.as_tensor(P, dtype=dtype, device=device)
        self.pi = torch.as_tensor(w, dtype=dtype, device=device)
        self.support = self.P > 0
        logp = torch.where(self.support, torch.log(torch.where(self.support, self.P, torch.ones_like(self.P))), torch.zeros_like(self.P))
        self.logP = logp
        self.entropy = float(-(self.pi * (self.P * logp).sum(0)).sum())

    def log_softmax(self, Z: torch.Tensor) -> torch.Tensor:
        return Z - torch.logsumexp(Z, dim=-2, keepdim=True)

    def gradient(self, Z: torch.Tensor) -> torch.Tensor:
        """``dCE/dZ = pi_j (softmax(z_j) - p_j)`` (B x V x m)."""
        return (torch.exp(self.log_softmax(Z)) - self.P) * self.pi

    def scaled_gradient(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G_scaled, log_scale)`` with ``dCE/dZ = exp(log_scale)[:, None, None] * G_scaled``, ``max|G_scaled| = 1``."""
        G = self.gradient(Z)
        mx = G.abs().amax(dim=(-2, -1)).clamp_min(1e-300)
        return G / mx[:, None, None], torch.log(mx)

    def loss(self, Z: torch.Tensor) -> torch.Tensor:
        """CE per run (B,)."""
        return -(self.pi * (self.P * self.log_softmax(Z)).sum(-2)).sum(-1)

    def log_loss(self, Z: torch.Tensor) -> torch.Tensor:
        """Natural log of the CE per run (B,)."""
        return torch.log(self.loss(Z))

    def excess(self, Z: torch.Tensor) -> torch.Tensor:
        """``CE - entropy = sum_j pi_j KL(p_j || softmax(z_j))`` per run, as a sum of two non-negative terms with no
        cancellation against the entropy: the KL to the softmax restricted to the support, plus
        ``log(1 + out/in)`` for the out-of-support mass."""
        neg = torch.tensor(-torch.inf, dtype=Z.dtype, device=Z.device)
        lse_in = torch.logsumexp(torch.where(self.support, Z, neg), dim=-2)
        lse_out = torch.logsumexp(torch.where(self.support, neg, Z), dim=-2)
        lqS = Z - lse_in[..., None, :]
        kl_in = torch.where(self.support, self.P * (self.logP - lqS), torch.zeros_like(Z)).sum(-2).clamp_min(0.0)
        spill = torch.nn.functional.softplus(lse_out - lse_in)  # log(1 + out/in); softplus(-inf) = 0
        return (self.pi * (kl_in + spill)).sum(-1)
