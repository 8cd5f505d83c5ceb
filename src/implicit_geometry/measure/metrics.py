"""Geometry metrics of a layer from streamed statistics, and kernel alignment between representations.

Everything here is a pure function. Class-level metrics take the output of
:meth:`~implicit_geometry.measure.accumulators.ClassStats.compute` (counts, means, sigma_w, class_var), so they
never see individual rows; alignment metrics take row matrices (N x p, N x q: a :class:`RowSample`) or
streamed cross-moments. Reuses :mod:`implicit_geometry.geometry.metrics` (NC1 from statistics, ranks,
normalized distance).

Centring for the SELI/ETF comparison: the SELI and ETF Grams have the all-ones vector in their null space, and
softmax is unchanged when a common vector is added to every classifier (or to every class-mean feature when
classifiers are centred), so class means and classifier rows are centred by their *unweighted* average before
they are compared with a target. NC1-NC3 use the sample-weighted global mean (Papyan et al.).

>>> import numpy as np
>>> from implicit_geometry.geometry.targets import simplex_etf
>>> M = simplex_etf(4)                       # collapsed features on an ETF, tiny within-class spread
>>> stats = {"counts": np.full(4, 10.0), "means": M.T, "sigma_w": 1e-6 * np.eye(4), "class_var": np.full(4, 4e-6)}
>>> m = class_metrics(stats, W=M.T)
>>> round(m["nc1"], 12), round(m["seli_dist_means"], 8), round(m["nc3"], 8)  # NC1 = 1e-6 (k-1)^2 / k
(2.25e-06, 0.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from implicit_geometry._validation import InvalidParameterError, check_int
from implicit_geometry.geometry.metrics import as_float64, effective_rank, nc1_from_stats, normalized_distance, stable_rank
from implicit_geometry.geometry.targets import etf_geometry, seli_geometry


def _dist(A: np.ndarray, B: np.ndarray) -> float:
    """normalized_distance, or NaN (written as null) when a learned matrix is zero (e.g. dead ReLU features)."""
    if not np.linalg.norm(A) > 0:
        return float("nan")
    return normalized_distance(A, B)


def _offdiag(A: np.ndarray) -> np.ndarray:
    return A[~np.eye(A.shape[0], dtype=bool)]


def cdnv(means: Any, class_var: Any) -> float:
    """Class-distance normalized variance ``mean_{c != c'} (var_c + var_c') / (2 ||mu_c - mu_c'||^2)``
    (Galanti et al.); ``means`` is K x D, ``class_var[c]`` the mean squared distance of class c to its mean.

    >>> cdnv(np.array([[0.0, 0.0], [2.0, 0.0]]), np.array([1.0, 3.0]))
    0.5
    """
    mu, v = as_float64(means), as_float64(class_var)
    sq = (mu * mu).sum(1)
    d2 = np.clip(sq[:, None] + sq[None, :] - 2 * mu @ mu.T, 0, None)
    num = v[:, None] + v[None, :]
    off = ~np.eye(mu.shape[0], dtype=bool)
    return float(np.mean(num[off] / (2 * np.maximum(d2[off], 1e-300))))


def _nc2_parts(V: np.ndarray, prefix: str) -> dict[str, float]:
    """Equinorm, equiangularity, maximal-angle of the columns of V (d x k)."""
    k = V.shape[1]
    n = np.linalg.norm(V, axis=0)
    cos = _offdiag((V.T @ V) / np.outer(n, n).clip(1e-300))
    return {
        f"equinorm_{prefix}": float(n.std() / n.mean()) if n.mean() > 0 else float("nan"),
        f"equiangular_{prefix}": float(cos.std()),
        f"maxangle_{prefix}": float(np.abs(cos + 1.0 / (k - 1)).mean()),
    }


class DegenerateLayerError(InvalidParameterError):
    """A layer whose class means all coincide: there is no class geometry to measure."""


def class_metrics(
    stats: dict[str, Any],
    W: Any | None = None,
    mean_logits: Any | None = None,
    *,
    target_counts: Any | None = None,
) -> dict[str, float]:
    """Every class-level metric of one layer.

    Args:
        stats: ``counts`` (K), ``means`` (K x D), ``sigma_w`` (D x D, optional: NC1 is skipped without it) and
            ``class_var`` (K) from :class:`ClassStats`.
        W: classifier (K x D) reading this layer, if any (NC2 classifier parts, NC3, W-Gram distances).
        mean_logits: K x K matrix whose column c is the mean logit vector of class c (ranks, logit distances).
        target_counts: class counts for the SELI prediction (default: the streamed counts).

    Returns NC1, CDNV, NC2 parts, ETF distances (``etf_dist_*``), SELI distances (``seli_dist_*``), NC3, the
    effective and stable rank of the centred class-mean matrix and of the mean logit matrix.
    """
    counts = as_float64(stats["counts"])
    means = as_float64(stats["means"]).T  # D x K
    K = counts.size
    if K < 2 or np.any(counts <= 0):
        raise InvalidParameterError(f"stats must hold at least 2 classes, each seen at least once (got counts {counts.astype(int).tolist()})")
    tc = counts if target_counts is None else as_float64(target_counts)
    seli = seli_geometry(np.round(tc).astype(np.int64))
    etf = etf_geometry(np.round(tc).astype(np.int64))
    gm = means @ counts / counts.sum()
    Mg = means - gm[:, None]  # sample-weighted centring (Papyan)
    if np.linalg.norm(Mg) <= 1e-12 * np.abs(means).max(initial=0.0):
        # every ratio below divides by the spread of the class means: with none, NC1 would read 0 ("collapsed")
        raise DegenerateLayerError("the class means of this layer coincide (a constant layer, e.g. dead ReLUs): its class geometry is undefined")
    Mu = means - means.mean(1, keepdims=True)  # unweighted centring (targets)
    out: dict[str, float] = {}
    if stats.get("sigma_w") is not None:
        out["nc1"] = nc1_from_stats(means, counts, as_float64(stats["sigma_w"]))
        out["trace_sigma_w"] = float(np.trace(as_float64(stats["sigma_w"])))
    out["cdnv"] = cdnv(means.T, stats["class_var"])
    out.update(_nc2_parts(Mg, "means"))
    G = Mu.T @ Mu
    out["etf_dist_means"] = _dist(G, etf.mean_gram)
    out["seli_dist_means"] = _dist(G, seli.mean_gram)
    out["effective_rank_means"] = effective_rank(Mu)
    out["stable_rank_means"] = stable_rank(Mu)
    if W is not None:
        W = as_float64(W)
        if W.shape != (K, means.shape[0]):
            raise InvalidParameterError(f"W must have shape ({K}, {means.shape[0]}) (got {W.shape})")
        Wc = W - W.mean(0, keepdims=True)
        out.update(_nc2_parts(Wc.T, "classifiers"))
        nm = np.linalg.norm(Mg)
        out["nc3"] = float(np.linalg.norm(W.T / np.linalg.norm(W) - Mg / nm) ** 2) if nm > 0 else float("nan")
        out["etf_dist_W"] = _dist(Wc @ Wc.T, etf.W_gram)
        out["seli_dist_W"] = _dist(Wc @ Wc.T, seli.W_gram)
    if mean_logits is not None:
        Z = as_float64(mean_logits)
        Zc = Z - Z.mean(0, keepdims=True)  # softmax ignores a common shift of a column's logits
        out["seli_dist_logits"] = _dist(Zc, seli.class_logits)
        out["effective_rank_mean_logits"] = effective_rank(Zc)
        out["stable_rank_mean_logits"] = stable_rank(Zc)
    return out


def class_kernel(means: Any, *, center: bool = True) -> np.ndarray:
    """Representation kernel over classes ``K = R^T R`` with ``R`` the (unweighted-centred) class means (D x K)."""
    R = as_float64(means).T
    if center:
        R = R - R.mean(1, keepdims=True)
    return R.T @ R


# ----------------------------------------------------------------------------------------------------------
# Kernel alignment between two representations of the same rows
# ----------------------------------------------------------------------------------------------------------
def _rows(X: Any) -> np.ndarray:
    X = as_float64(X)
    return X[:, None] if X.ndim == 1 else X


def linear_cka(X: Any, Y: Any) -> float:
    """Linear CKA ``||X_c^T Y_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)`` of rows X (N x p) and Y (N x q).

    >>> X = np.random.default_rng(0).normal(size=(50, 4))
    >>> round(linear_cka(X, 3 * X @ np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))[0]), 12)
    1.0
    """
    X, Y = _rows(X), _rows(Y)
    X, Y = X - X.mean(0), Y - Y.mean(0)
    return linear_cka_from_moments(X.T @ X, Y.T @ Y, X.T @ Y)


def linear_cka_from_moments(Cxx: Any, Cyy: Any, Cxy: Any) -> float:
    """Linear CKA from centred (co)scatter matrices, e.g. :class:`CrossMoments` (all rows, streamed)."""
    Cxx, Cyy, Cxy = as_float64(Cxx), as_float64(Cyy), as_float64(Cxy)
    den = np.linalg.norm(Cxx) * np.linalg.norm(Cyy)
    return float((Cxy**2).sum() / den) if den > 0 else 0.0


def _unbiased_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al.'s unbiased HSIC estimator of two N x N kernels (N >= 4)."""
    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    k1, l1 = K.sum(0), L.sum(0)
    return float(((K * L).sum() + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2 * (k1 @ l1) / (n - 2)) / (n * (n - 3)))


def debiased_cka(X: Any, Y: Any) -> float:
    """Debiased linear CKA (unbiased HSIC in place of the plug-in one; Nguyen et al. / Kornblith et al.).
    Needs N >= 4 rows; forms N x N Grams, so use it on a row sample."""
    X, Y = _rows(X), _rows(Y)
    if X.shape[0] < 4 or X.shape[0] != Y.shape[0]:
        raise InvalidParameterError(f"debiased_cka needs the same number (>= 4) of rows in X and Y (got {X.shape[0]} and {Y.shape[0]})")
    K, L = X @ X.T, Y @ Y.T
    hxy, hxx, hyy = _unbiased_hsic(K, L), _unbiased_hsic(K, K), _unbiased_hsic(L, L)
    den = np.sqrt(max(hxx, 0.0) * max(hyy, 0.0))
    return float(hxy / den) if den > 0 else 0.0


def mutual_knn(X: Any, Y: Any, k: int = 10) -> float:
    """Mean overlap ``|N_k^X(i) & N_k^Y(i)| / k`` of each row's k nearest neighbours (Euclidean, self excluded)
    in the two representations (Huh et al.'s mutual k-NN alignment); chance is about ``k / (N - 1)``."""
    X, Y = _rows(X), _rows(Y)
    n = X.shape[0]
    k = check_int("k", k, minimum=1, maximum=max(n - 2, 1))

    def knn(A: np.ndarray) -> np.ndarray:
        sq = (A * A).sum(1)
        D = sq[:, None] + sq[None, :] - 2 * A @ A.T
        np.fill_diagonal(D, np.inf)
        return np.argpartition(D, k, axis=1)[:, :k]

    nx, ny = knn(X), knn(Y)
    hits = [np.intersect1d(nx[i], ny[i], assume_unique=True).size for i in range(n)]
    return float(np.mean(hits) / k)


ALIGNMENTS: dict[str, Callable[..., float]] = {"linear_cka": linear_cka, "debiased_cka": debiased_cka, "mutual_knn": mutual_knn}


def permutation_null(score: Callable[[np.ndarray, np.ndarray], float], X: Any, Y: Any, *, permutations: int = 20, seed: int = 0) -> dict[str, float]:
    """A score together with its chance level: the score of X against row-permuted copies of Y (pairings
    broken). Returns ``score``, ``null_mean``, ``null_std`` and a one-sided permutation ``p_value``.

    >>> X = np.random.default_rng(0).normal(size=(40, 3))
    >>> r = permutation_null(linear_cka, X, X, permutations=10)
    >>> r["score"] > r["null_mean"] + 5 * r["null_std"], r["p_value"] < 0.1
    (True, True)
    """
    X, Y = _rows(X), _rows(Y)
    permutations = check_int("permutations", permutations, minimum=1)
    rng = np.random.default_rng(seed)
    s = score(X, Y)
    null = np.array([score(X, Y[rng.permutation(Y.shape[0])]) for _ in range(permutations)])
    return {"score": float(s), "null_mean": float(null.mean()), "null_std": float(null.std()),
            "p_value": float((1 + (null >= s).sum()) / (1 + permutations))}


def alignment(X: Any, Y: Any, *, methods: tuple[str, ...] = ("linear_cka", "debiased_cka", "mutual_knn"), permutations: int = 20,
              seed: int = 0, knn: int = 10) -> dict[str, float]:
    """Every alignment score between two representations of the same rows, each with its permutation null
    (keys ``<method>``, ``<method>_null_mean``, ``<method>_null_std``, ``<method>_p``)."""
    out: dict[str, float] = {}
    for m in methods:
        if m not in ALIGNMENTS:
            raise InvalidParameterError(f"alignment method must be one of {', '.join(ALIGNMENTS)} (got {m!r})")
        fn = ALIGNMENTS[m] if m != "mutual_knn" else (lambda A, B: mutual_knn(A, B, knn))
        r = permutation_null(fn, X, Y, permutations=permutations, seed=seed)
        out[m], out[f"{m}_null_mean"], out[f"{m}_null_std"], out[f"{m}_p"] = r["score"], r["null_mean"], r["null_std"], r["p_value"]
    return out
