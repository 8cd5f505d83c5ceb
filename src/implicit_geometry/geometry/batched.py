"""Distances of a batch of learned UFM geometries to a class-level target, in torch (one call for B runs).

The reference implementation of the distance is :func:`implicit_geometry.geometry.metrics.normalized_distance`;
these batched forms agree with it (tested) and never form an N x N matrix: the feature Gram ``H^T H`` is compared
with a block-constant target ``Y^T F Y`` through ``||A - B||^2 = ||A - P(A)||^2 + ||P(A) - B||^2``, where P
averages over class blocks, so the cost is O(d N + d^2 + k^2) per run (absolute accuracy about 1e-8).
"""

from __future__ import annotations

import torch

from implicit_geometry.geometry.targets import ClassGeometry


def _unit(X: torch.Tensor) -> torch.Tensor:
    return X / torch.linalg.matrix_norm(X).clamp_min(1e-300)[..., None, None]


def batched_distance(X: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Normalized distance between each ``X[b]`` and ``T`` (B,)."""
    return torch.linalg.matrix_norm(_unit(X) - _unit(T))


class GeometryDistances:
    """Distances of (W, H) batches to a target :class:`ClassGeometry` with the same labels.

    ``__call__(W, H)`` with W (B x k x d) the end-to-end classifier and H (B x d x N) returns per-run
    distances of the classifier Gram, the feature Gram, the class-mean Gram and the logits.
    """

    def __init__(self, target: ClassGeometry, *, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> None:
        self.target = target
        counts = torch.as_tensor(target.counts, dtype=dtype, device=device)
        self.labels = torch.as_tensor(target.labels, device=device)
        k = target.k
        self.onehot = torch.zeros((target.counts.sum(), k), dtype=dtype, device=device)
        self.onehot[torch.arange(len(self.labels), device=device), self.labels] = 1.0
        self.counts = counts
        self.W_gram = torch.as_tensor(target.W_gram, dtype=dtype, device=device)
        self.mean_gram = torch.as_tensor(target.mean_gram, dtype=dtype, device=device)
        self.logits = torch.as_tensor(target.logits, dtype=dtype, device=device)
        nn = torch.outer(counts, counts)
        self._weights = nn
        self._target_H_norm = torch.sqrt((nn * self.mean_gram**2).sum())

    def __call__(self, W: torch.Tensor, H: torch.Tensor) -> dict[str, torch.Tensor]:
        means = (H @ self.onehot) / self.counts  # B x d x k
        mean_gram = means.transpose(1, 2) @ means
        # Feature Gram: split ||A - B||^2 into the within-block part and the block-mean part.
        hh = H @ H.transpose(1, 2)
        a = torch.linalg.matrix_norm(hh)  # ||H^T H||_F = ||H H^T||_F
        block_sq = (self._weights * mean_gram**2).sum(dim=(1, 2))
        within = (a**2 - block_sq).clamp_min(0.0) / a**2
        diff = mean_gram / a[:, None, None] - self.mean_gram / self._target_H_norm
        across = (self._weights * diff**2).sum(dim=(1, 2))
        return {
            "dist_W": batched_distance(W @ W.transpose(1, 2), self.W_gram),
            "dist_H": torch.sqrt(within + across),
            "dist_means": batched_distance(mean_gram, self.mean_gram),
            "dist_Z": batched_distance(W @ H, self.logits),
        }
