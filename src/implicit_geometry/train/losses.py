"""Cross-entropy and its logit-adjusted parameterizations, computed in the log domain.

Without regularization the UFM's loss tends to 0 and its gradient underflows double precision long before the
geometry has converged. Every loss here therefore returns its gradient with respect to the logits as
``(G_scaled, log_scale)``: ``dLoss/dZ = exp(log_scale) * G_scaled``, with ``max |G_scaled| = 1`` per run. Both parts
are finite for any logits, however large the margins: a normalized optimizer uses ``G_scaled`` alone (its
direction is exact even when the loss is 1e-100000), and the loss itself is reported as its natural log.

General form (per sample i with label y): adjusted logits ``z'_c = Delta_c z_c + iota_c`` (or ``Delta_y z_c + iota_c``
with ``label_dependent=True``), loss ``omega_y * CE(z', y)``. Plain CE has ``Delta = 1, iota = 0, omega = 1``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from implicit_geometry._validation import InvalidParameterError, check_choice, check_labels


# torch's vectorized log1p / logaddexp / softplus round the elements of a tensor's tail differently from the rest,
# so a run's numbers would depend on the other runs batched with it. These use only IEEE arithmetic, exp and log,
# which round every element alike: a run gives the same bits alone or in any batch (tests/test_train.py).


def log1p(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + x)`` to a few ulp for ``x > -1`` (Goldberg's correction of ``log(1 + x)`` by ``x / ((1 + x) - 1)``).

    >>> float(log1p(torch.tensor(1e-20, dtype=torch.float64)))
    1e-20
    """
    u = 1.0 + x
    return torch.where(u == 1.0, x, torch.log(u) * (x / (u - 1.0)))


def logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``log(e^a + e^b)`` for finite a, b."""
    return torch.maximum(a, b) + log1p(torch.exp(-(a - b).abs()))


def softplus(u: torch.Tensor) -> torch.Tensor:
    """``log(1 + e^u)`` for finite u."""
    return u.clamp_min(0.0) + log1p(torch.exp(-u.abs()))


def log_softplus(u: torch.Tensor) -> torch.Tensor:
    """``log(log(1 + e^u))`` without underflow: for u << 0 it is ``u`` (relative error below e^u)."""
    safe = torch.clamp(u, min=-30.0)
    return torch.where(u > -30.0, torch.log(softplus(safe)), u)


class CrossEntropy:
    """Cross-entropy over logits Z (B x k x N) with fixed labels, summed (default) or averaged over samples.

    Args:
        labels: class of each column of Z (length N).
        num_classes: k.
        reduction: "sum" (the convention of the dynamics papers) or "mean"; they differ by a factor N in time.
        multiplicative: Delta (k,), positive; None for 1.
        additive: iota (k,); None for 0.
        weights: omega (k,), positive per-class loss weights; None for 1.
        label_dependent: scale all logits of sample i by ``Delta_{y_i}`` (LDT) instead of class-wise (CDT).
    """

    def __init__(
        self,
        labels: Any,
        num_classes: int,
        *,
        reduction: str = "sum",
        multiplicative: Any | None = None,
        additive: Any | None = None,
        weights: Any | None = None,
        label_dependent: bool = False,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> None:
        y = check_labels(labels, num_classes)
        self.num_classes = int(num_classes)
        self.reduction = check_choice("reduction", reduction, ["sum", "mean"])
        self.label_dependent = bool(label_dependent)
        self.labels = torch.as_tensor(y, device=device)
        n = len(y)
        self.num_samples = n
        self.mask = torch.zeros((num_classes, n), dtype=torch.bool, device=device)
        self.mask[self.labels, torch.arange(n, device=device)] = True
        self._neg_inf = torch.tensor(-math.inf, dtype=dtype, device=device)

        def vec(name: str, v: Any, positive: bool) -> torch.Tensor | None:
            if v is None:
                return None
            arr = np.asarray(v, dtype=np.float64).reshape(-1)
            if arr.size != num_classes or not np.all(np.isfinite(arr)) or (positive and np.any(arr <= 0)):
                what = "positive" if positive else "finite"
                raise InvalidParameterError(f"{name} must be {num_classes} {what} numbers, one per class (got {v!r})")
            return torch.as_tensor(arr, dtype=dtype, device=device)

        self.multiplicative = vec("multiplicative", multiplicative, True)
        self.additive = vec("additive", additive, False)
        self.weights = vec("weights", weights, True)
        log_n = math.log(n) if self.reduction == "mean" else 0.0
        # Per-sample log of (omega_y) minus the reduction's log N, and log of the chain-rule factor on each entry.
        self._log_sample = torch.full((n,), -log_n, dtype=dtype, device=device)
        if self.weights is not None:
            self._log_sample = self._log_sample + torch.log(self.weights)[self.labels]
        # Chain-rule factor d z'/d z on each entry (Delta_c, or Delta_y for LDT).
        self._jac: torch.Tensor | None = None
        if self.multiplicative is not None:
            d = self.multiplicative
            self._jac = d[self.labels][None, :].expand(num_classes, n).contiguous() if label_dependent else d[:, None]

    def adjusted_logits(self, Z: torch.Tensor) -> torch.Tensor:
        if self.multiplicative is not None:
            scale = self.multiplicative[self.labels][None, :] if self.label_dependent else self.multiplicative[:, None]
            Z = Z * scale
        if self.additive is not None:
            Z = Z + self.additive[:, None]
        return Z

    def scaled_gradient(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G_scaled, log_scale)`` with ``dLoss/dZ = exp(log_scale)[:, None, None] * G_scaled`` and ``max|G_scaled|``
        of order 1 (exactly 1 for plain CE).

        Per column i, with ``m_i = max_{c != y} z'_c``, ``E = exp(z' - m)`` off the label (entries in (0, 1]),
        ``s_i = sum_{c != y} E_ci >= 1`` and margin ``a_i = z'_y - m_i``: ``p_c = E_ci exp(-c_i)`` with
        ``c_i = logaddexp(a_i, log s_i)``, and ``1 - p_y = s_i exp(-c_i)`` exactly (no cancellation). Only per-column
        scalars are handled in the log domain, so nothing underflows that matters and the cost is a few passes.
        """
        Zp = self.adjusted_logits(Z)
        idx = self._label_index(Zp)
        off = Zp.scatter(-2, idx, -math.inf)
        m = off.amax(dim=-2, keepdim=True)
        E = off.sub_(m).exp_()
        s = E.sum(dim=-2)
        a = Zp.gather(-2, idx).squeeze(-2) - m.squeeze(-2)
        log_s = torch.log(s)
        log_col = log_s - logaddexp(a, log_s) + self._log_sample  # log of |dLoss/dz_y| per column
        log_scale = log_col.amax(dim=-1)
        f = torch.exp(log_col - log_scale[..., None]) / s  # column factor: p_c / max
        G = E.mul_(f.unsqueeze(-2)).scatter_(-2, idx, -(s * f).unsqueeze(-2))
        if self._jac is not None:
            G = G * self._jac
        return G, log_scale

    def _label_index(self, Zp: torch.Tensor) -> torch.Tensor:
        return self.labels.expand(*Zp.shape[:-2], 1, -1)

    def log_loss(self, Z: torch.Tensor) -> torch.Tensor:
        """Natural log of the loss per run (B,); finite far below the smallest double (loss 1e-100000 is -230258)."""
        Zp = self.adjusted_logits(Z)
        zy = Zp.gather(-2, self._label_index(Zp)).squeeze(-2)
        u = torch.logsumexp(torch.where(self.mask, self._neg_inf, Zp), dim=-2) - zy
        return torch.logsumexp(log_softplus(u) + self._log_sample, dim=-1)
