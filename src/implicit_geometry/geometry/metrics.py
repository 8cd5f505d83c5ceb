"""Geometry metrics as pure functions of matrices (float64 NumPy; torch tensors are accepted).

Conventions: ``H`` is d x N (columns are features), ``W`` is k x d (rows are classifiers), ``labels`` has length N.
Neural collapse metrics follow Papyan, Han & Donoho (2020), with the global mean taken over samples.
Every metric is invariant to relabeling the classes, to a common rotation of the feature space
(``H -> Q H``, ``W -> W Q^T``) and to rescaling ``W`` and ``H``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from implicit_geometry._validation import InvalidParameterError, check_labels, check_matrix


def as_float64(x: Any) -> np.ndarray:
    """A float64 NumPy copy of an array-like or torch tensor (on any device, any dtype)."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu")
        x = x.double().numpy() if x.is_floating_point() else x.numpy()
    return np.asarray(x, dtype=np.float64)


def normalized_distance(A: Any, B: Any) -> float:
    """Scale-invariant distance ``|| A/||A||_F - B/||B||_F ||_F`` (0 iff A is a positive multiple of B; at most 2).

    >>> round(normalized_distance(np.eye(2), 3 * np.eye(2)), 12)
    0.0
    """
    A, B = as_float64(A), as_float64(B)
    if A.shape != B.shape:
        raise InvalidParameterError(f"normalized_distance needs matrices of equal shape (got {A.shape} and {B.shape})")
    if not (np.isfinite(A).all() and np.isfinite(B).all()):
        raise InvalidParameterError("normalized_distance needs finite matrices (got NaN or inf entries)")
    na, nb = np.linalg.norm(A), np.linalg.norm(B)
    if na == 0 or nb == 0:
        raise InvalidParameterError("normalized_distance needs non-zero matrices (got a zero matrix)")
    return float(np.linalg.norm(A / na - B / nb))


def _singular_values(A: Any) -> np.ndarray:
    return np.linalg.svd(as_float64(A), compute_uv=False)


def effective_rank(A: Any) -> float:
    """``exp(-sum p_i log p_i)`` with ``p_i = sigma_i / sum sigma`` (Roy & Vetterli); k-1 for a k-class ETF."""
    s = _singular_values(A)
    if s.sum() == 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def stable_rank(A: Any) -> float:
    """``||A||_F^2 / ||A||_2^2``."""
    s = _singular_values(A)
    return float((s**2).sum() / s[0] ** 2) if s[0] > 0 else 0.0


def margins(Z: Any, labels: Any) -> np.ndarray:
    """Per-sample margin ``z_{y_i} - max_{c != y_i} z_c`` of logits Z (k x N)."""
    Z = as_float64(Z)
    y = check_labels(labels, Z.shape[0])
    idx = np.arange(Z.shape[1])
    zy = Z[y, idx]
    other = Z.copy()
    other[y, idx] = -np.inf
    return zy - other.max(axis=0)


def class_means(H: Any, labels: Any, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Class means (d x k) and counts (k) of features H (d x N)."""
    H = as_float64(H)
    y = check_labels(labels)
    k = int(y.max()) + 1 if k is None else k
    counts = np.bincount(y, minlength=k).astype(float)
    if np.any(counts == 0):
        raise InvalidParameterError(f"labels must contain every class 0..{k - 1} at least once (got counts {counts.astype(int).tolist()})")
    sums = np.zeros((H.shape[0], k))
    np.add.at(sums.T, y, H.T)
    return sums / counts, counts


def _centered_means(means: np.ndarray, counts: np.ndarray) -> np.ndarray:
    global_mean = means @ counts / counts.sum()
    M = means - global_mean[:, None]
    # M @ counts = 0 in exact arithmetic; rounding leaves eps * |global mean| there, which is large against M when
    # the class means are close relative to their norm (random or low-precision features). Remove it exactly.
    return M - np.outer(M @ counts, counts) / (counts @ counts)


def _pinv_centered(M: np.ndarray) -> np.ndarray:
    """Pseudo-inverse of centred class means, cutting singular values below numpy's rank tolerance
    (``max(d, k) * eps * s_max``): the removed null direction must not come back as a huge inverse."""
    return np.linalg.pinv(M, rcond=max(M.shape) * np.finfo(np.float64).eps)


def nc1_from_stats(means: np.ndarray, counts: np.ndarray, sigma_w: np.ndarray) -> float:
    """NC1 ``tr(Sigma_W Sigma_B^+)/k`` from class statistics.

    Stable form: with centered means ``M`` (d x k), ``Sigma_B^+ = k (M^+)^T M^+``, so
    ``NC1 = tr(M^+ Sigma_W (M^+)^T)``. ``M^+`` comes from one SVD of the d x k matrix with the default
    relative cut-off, so the rank (k-1 for an ETF) is detected, never assumed.
    """
    M = _centered_means(means, counts)
    P = _pinv_centered(M)  # k x d
    return float(np.trace(P @ sigma_w @ P.T))


def within_class_covariance(H: np.ndarray, labels: np.ndarray, means: np.ndarray) -> np.ndarray:
    """``Sigma_W = 1/N sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T`` (d x d)."""
    R = H - means[:, labels]
    return R @ R.T / H.shape[1]


def nc1(H: Any, labels: Any) -> float:
    """Within-class variability collapse ``tr(Sigma_W Sigma_B^+)/k`` (0 when features equal their class means)."""
    H = as_float64(H)
    y = check_labels(labels)
    means, counts = class_means(H, y)
    M = _centered_means(means, counts)
    P = _pinv_centered(M)
    # tr(P Sigma_W P^T) = ||P (H - mu_y)||_F^2 / N without forming the d x d covariance.
    R = P @ (H - means[:, y])
    return float((R**2).sum() / H.shape[1])


def _offdiag(A: np.ndarray) -> np.ndarray:
    return A[~np.eye(A.shape[0], dtype=bool)]


def _norm_cv(vectors: np.ndarray) -> float:
    n = np.linalg.norm(vectors, axis=0)
    return float(n.std() / n.mean())


def _cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(vectors, axis=0)
    return (vectors.T @ vectors) / np.outer(n, n)


def nc2(H: Any, labels: Any, W: Any | None = None) -> dict[str, float]:
    """Convergence to a simplex ETF: equinorm (coefficient of variation), equiangularity (std of cosines),
    maximal angle (mean ``|cos + 1/(k-1)|``), normalized distance of the centered-mean Gram (and of ``W W^T``)
    to the ETF Gram ``I - 11^T/k``."""
    H = as_float64(H)
    y = check_labels(labels)
    means, counts = class_means(H, y)
    M = _centered_means(means, counts)
    k = M.shape[1]
    etf = np.eye(k) - 1.0 / k
    cos = _offdiag(_cosine_matrix(M))
    out = {
        "equinorm_means": _norm_cv(M),
        "equiangular_means": float(cos.std()),
        "maxangle_means": float(np.abs(cos + 1.0 / (k - 1)).mean()),
        "etf_distance_means": normalized_distance(M.T @ M, etf),
    }
    if W is not None:
        W = as_float64(W)
        wcos = _offdiag(_cosine_matrix(W.T))
        out.update(
            equinorm_classifiers=_norm_cv(W.T),
            equiangular_classifiers=float(wcos.std()),
            maxangle_classifiers=float(np.abs(wcos + 1.0 / (k - 1)).mean()),
            etf_distance_classifiers=normalized_distance(W @ W.T, etf),
        )
    return out


def nc3(H: Any, labels: Any, W: Any) -> float:
    """Self-duality ``|| W^T/||W||_F - M/||M||_F ||_F^2`` with centered class means M (d x k)."""
    H, W = as_float64(H), as_float64(W)
    means, counts = class_means(H, labels)
    M = _centered_means(means, counts)
    return float(np.linalg.norm(W.T / np.linalg.norm(W) - M / np.linalg.norm(M)) ** 2)


def nc4(H: Any, labels: Any, W: Any, b: Any | None = None) -> float:
    """Fraction of samples where the classifier's decision differs from the nearest class center."""
    H, W = as_float64(H), as_float64(W)
    y = check_labels(labels)
    means, _ = class_means(H, y)
    Z = W @ H + (0.0 if b is None else as_float64(b)[:, None])
    sq = (H**2).sum(0)[None, :] - 2 * means.T @ H + (means**2).sum(0)[:, None]
    return float(np.mean(Z.argmax(0) != sq.argmin(0)))


def neural_collapse_metrics(H: Any, labels: Any, W: Any, b: Any | None = None) -> dict[str, float]:
    """All NC metrics at once (NC1, NC2 parts, NC3, NC4) plus effective and stable rank of the mean logits.

    ``H`` is d x N (one column per sample), ``labels`` N integers in 0..K-1 with every class present, ``W`` K x d,
    ``b`` (optional) K.
    """
    H = check_matrix("H", H)
    W = check_matrix("W", W, shape=(None, H.shape[0]))
    y = check_labels(labels, W.shape[0])
    if y.size != H.shape[1]:
        raise InvalidParameterError(f"labels must have one entry per column of H ({H.shape[1]}; got {y.size})")
    present = np.bincount(y, minlength=W.shape[0])
    if W.shape[0] < 2 or np.any(present == 0):
        raise InvalidParameterError(f"labels must cover every class 0..K-1 of W, K >= 2 (got counts {present.tolist()})")
    if b is not None:
        b = as_float64(b)
        if b.shape != (W.shape[0],) or not np.isfinite(b).all():
            raise InvalidParameterError(f"b must be a finite vector of {W.shape[0]} biases (got shape {b.shape})")
    means, _ = class_means(H, y)
    mean_logits = W @ means
    return {
        "nc1": nc1(H, y),
        **nc2(H, y, W),
        "nc3": nc3(H, y, W),
        "nc4": nc4(H, y, W, b),
        "effective_rank_mean_logits": effective_rank(mean_logits),
        "stable_rank_mean_logits": stable_rank(mean_logits),
        "min_margin": float(margins(W @ H + (0.0 if b is None else as_float64(b)[:, None]), y).min()),
    }
