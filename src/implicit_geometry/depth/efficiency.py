"""Norm efficiency: the margin a logit geometry reaches at a fixed total parameter norm, for depth L.

For a deep UFM with L+1 factors, the cheapest factorization of logits Z (balanced factors built from its SVD)
costs ``min sum_l ||F_l||_F^2 = (L+1) sum_i sigma_i^{2/(L+1)}`` (the Schatten-2/(L+1) quasi-norm). Scaling
``Z -> c Z`` scales that cost by ``c^{2/(L+1)}``, so at a budget ``B = sum_l ||F_l||^2`` a geometry Z0 reaches

    margin(B) = margin(Z0) * (B / ((L+1) sum_i sigma_i(Z0)^{2/(L+1)}))^{(L+1)/2}.

With n samples per class the sample-level singular values are ``sqrt(n)`` times the class-level ones. Candidates:
the ETF (logits ``I - 11^T/K``, margin 1) and, for each rank r = 2..K-1, the softmax code's logits
``Z0 = C Hc`` with class features ``h_k`` the unit separating directions of the code (margin of class k = its
one-vs-rest distance). All candidates scale with the same power of B, so their ratio does not depend on B.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from implicit_geometry._validation import check_float, check_int, check_matrix
from implicit_geometry.depth.codes import min_norm_point, softmax_code


def class_margin(Z: Any) -> float:
    """Smallest ``z_kk - max_{j != k} z_jk`` over the columns of a K x K class-level logit matrix."""
    Z = check_matrix("Z", Z)
    off = Z.copy()
    np.fill_diagonal(off, -np.inf)
    return float((np.diag(Z) - off.max(axis=0)).min())


def factorization_cost(Z: Any, depth: int, samples_per_class: int = 1) -> float:
    """``min sum_l ||F_l||_F^2`` over factorizations of the sample-level logits into ``depth + 1`` factors."""
    L = check_int("depth", depth, minimum=1)
    n = check_int("samples_per_class", samples_per_class, minimum=1)
    s = np.linalg.svd(check_matrix("Z", Z), compute_uv=False) * np.sqrt(n)
    # Round-off singular values (~1e-16 of the largest) would add (1e-16)^(2/(L+1)) each: not part of the geometry.
    s = s[s > s[0] * 1e-12]
    return float((L + 1) * (s ** (2.0 / (L + 1))).sum())


def margin_at_norm(Z: Any, depth: int, budget: float = 1.0, samples_per_class: int = 1) -> float:
    """Margin the geometry of Z reaches when its cheapest (L+1)-factorization has total squared norm ``budget``.

    >>> K = 4; S = np.eye(K) - 1 / K
    >>> round(margin_at_norm(S, depth=1, budget=2 * (K - 1)), 12)  # nuclear norm K-1 -> margin 1
    1.0
    """
    B = check_float("budget", budget, minimum=0.0, strict_min=True)
    L = check_int("depth", depth, minimum=1)
    cost = factorization_cost(Z, L, samples_per_class)
    return class_margin(Z) * (B / cost) ** ((L + 1) / 2)


def balanced_factors(Z: Any, depth: int) -> list[np.ndarray]:
    """Factors ``[H, W_1, ..., W_L]`` (bottom-up, as in DeepUFM) whose product is Z and whose total squared norm
    is :func:`factorization_cost` (each factor carries ``Sigma^{1/(L+1)}``)."""
    L = check_int("depth", depth, minimum=1)
    U, s, Vt = np.linalg.svd(check_matrix("Z", Z), full_matrices=False)
    r = max(int((s > s[0] * 1e-12).sum()), 1)
    U, s, Vt = U[:, :r], s[:r], Vt[:r]
    root = s ** (1.0 / (L + 1))
    return [root[:, None] * Vt] + [np.diag(root)] * (L - 1) + [U * root]


def code_logits(points: Any) -> np.ndarray:
    """Class-level logits ``Z0 = C Hc`` of a code C (K x r): class k's feature is the unit direction from the
    nearest point of ``conv{c_j: j != k}`` to ``c_k``, so its margin is exactly the one-vs-rest distance."""
    C = check_matrix("points", points)
    K = C.shape[0]
    Hc = np.empty((C.shape[1], K))
    for k in range(K):
        x, _ = min_norm_point((np.delete(C, k, axis=0) - C[k]).T)
        Hc[:, k] = -x / np.linalg.norm(x)
    return C @ Hc


@dataclass(frozen=True)
class EfficiencyTable:
    """Margins at unit budget: ``etf`` and ``codes[r]`` for each rank r; ``best_rank`` the winner (K-1 = ETF)."""

    K: int
    depth: int
    etf: float
    codes: dict[int, float]

    @property
    def best_rank(self) -> int:
        r, v = max(self.codes.items(), key=lambda kv: kv[1])
        return self.K - 1 if v <= self.etf * (1 + 1e-9) else r

    def to_dict(self) -> dict[str, Any]:
        return {"K": self.K, "depth": self.depth, "etf": self.etf, "codes": {str(r): v for r, v in self.codes.items()}, "best_rank": self.best_rank}


def compare_geometries(K: int, depth: int, *, ranks: Any = None, samples_per_class: int = 1, restarts: int = 4,
                       code_cache: dict[tuple[int, int], np.ndarray] | None = None) -> EfficiencyTable:
    """Margin at unit total squared norm of the ETF and of the softmax code of each rank (default 2..K-2; rank
    K-1 is the simplex, i.e. the ETF itself).

    >>> t = compare_geometries(6, 1, restarts=2)
    >>> t.best_rank  # depth 1: neural collapse wins (the nuclear-norm program's solution)
    5
    """
    K = check_int("K", K, minimum=3)
    L = check_int("depth", depth, minimum=1)
    ranks = list(range(2, K - 1)) if ranks is None else [check_int("rank", r, minimum=1, maximum=K - 1) for r in ranks]
    etf = margin_at_norm(np.eye(K) - 1.0 / K, L, 1.0, samples_per_class)
    cache = {} if code_cache is None else code_cache
    codes = {}
    for r in ranks:
        if (K, r) not in cache:
            cache[(K, r)] = softmax_code(K, r, restarts=restarts).points
        codes[r] = margin_at_norm(code_logits(cache[(K, r)]), L, 1.0, samples_per_class)
    return EfficiencyTable(K=K, depth=L, etf=etf, codes=codes)


def overtaking_depth(K: int, *, max_depth: int = 30, ranks: Any = None, restarts: int = 4) -> tuple[int | None, list[EfficiencyTable]]:
    """Smallest depth L at which some low-rank code reaches a larger margin than the ETF at equal norm (None if
    none up to ``max_depth``), and the tables for L = 1..that depth.

    >>> L, _ = overtaking_depth(4, ranks=[2], restarts=2)
    >>> L
    3
    """
    K = check_int("K", K, minimum=3)
    max_depth = check_int("max_depth", max_depth, minimum=1)
    cache: dict[tuple[int, int], np.ndarray] = {}
    tables = []
    for L in range(1, max_depth + 1):
        t = compare_geometries(K, L, ranks=ranks, restarts=restarts, code_cache=cache)
        tables.append(t)
        if t.codes and max(t.codes.values()) > t.etf * (1 + 1e-9):
            return L, tables
    return None, tables
