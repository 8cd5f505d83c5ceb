"""Closed-form geometry targets: the simplex ETF (neural collapse) and SELI (any class counts).

Conventions: k classes, ``counts[c]`` samples of class c, samples ordered by class; ``Y`` is the k x N one-hot
label matrix; ``S = I - 11^T/k``. A geometry is described at the class level (every target here has all samples
of a class share one feature and one logit column), so nothing scales with N unless a sample-level matrix is
asked for explicitly (``ClassGeometry.H_gram``, ``ClassGeometry.logits``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from implicit_geometry._validation import check_counts, check_int


def simplex_etf(k: int) -> np.ndarray:
    """The k x k matrix whose columns are a unit-norm simplex equiangular tight frame in R^k.

    Columns have norm 1 and pairwise cosine ``-1/(k-1)``; the Gram is ``k/(k-1) (I - 11^T/k)``.

    >>> M = simplex_etf(4)
    >>> bool(np.allclose(M.T @ M, [[1, -1/3, -1/3, -1/3], [-1/3, 1, -1/3, -1/3], [-1/3, -1/3, 1, -1/3], [-1/3, -1/3, -1/3, 1]]))
    True
    """
    k = check_int("k", k, minimum=2)
    return np.sqrt(k / (k - 1)) * (np.eye(k) - np.full((k, k), 1.0 / k))


def labels_from_counts(counts) -> np.ndarray:
    """Class index of each sample, samples ordered by class: ``[0]*counts[0] + [1]*counts[1] + ...``."""
    counts = check_counts(counts)
    return np.repeat(np.arange(counts.size), counts)


def one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    """The k x N one-hot label matrix ``Y`` (column i is ``e_{labels[i]}``)."""
    Y = np.zeros((k, len(labels)))
    Y[labels, np.arange(len(labels))] = 1.0
    return Y


def sel_matrix(counts) -> np.ndarray:
    """The simplex-encoded label matrix ``Z_hat = (I - 11^T/k) Y`` (k x N); column i is ``e_{y_i} - 1/k``."""
    counts = check_counts(counts)
    k = counts.size
    return (np.eye(k) - 1.0 / k) @ one_hot(labels_from_counts(counts), k)


def _psd_sqrt(A: np.ndarray, inverse: bool = False) -> np.ndarray:
    """Square root (or pseudo-inverse square root) of a symmetric PSD matrix, by eigendecomposition."""
    vals, vecs = np.linalg.eigh((A + A.T) / 2)
    tol = vals.max(initial=0.0) * A.shape[0] * np.finfo(float).eps * 10
    keep = vals > tol
    root = np.sqrt(vals[keep])
    if inverse:
        root = 1.0 / root
    return (vecs[:, keep] * root) @ vecs[:, keep].T


@dataclass(frozen=True)
class ClassGeometry:
    """A predicted geometry at the class level.

    Attributes:
        counts: samples per class (length k).
        W_gram: classifier Gram ``W W^T`` (k x k).
        mean_gram: Gram of the class-mean features ``M^T M`` (k x k); features are collapsed, so
            ``H^T H[i, j] = mean_gram[y_i, y_j]``.
        class_logits: k x k; column c is the logit vector shared by every sample of class c.
        name: what this geometry is ("seli", "etf", ...).

    Scale is arbitrary (every comparison is scale-invariant); the factors are balanced, ``W_gram`` and
    ``mean_gram`` come from the same scale as ``class_logits``.
    """

    counts: np.ndarray
    W_gram: np.ndarray
    mean_gram: np.ndarray
    class_logits: np.ndarray
    name: str = "geometry"

    @property
    def k(self) -> int:
        return int(self.counts.size)

    @property
    def labels(self) -> np.ndarray:
        return np.repeat(np.arange(self.k), self.counts)

    @property
    def H_gram(self) -> np.ndarray:
        """Sample-level feature Gram ``H^T H`` (N x N). Forms an N x N matrix: use ``mean_gram`` when N is large."""
        y = self.labels
        return self.mean_gram[np.ix_(y, y)]

    @property
    def logits(self) -> np.ndarray:
        """Sample-level logits ``Z = W H`` (k x N)."""
        return self.class_logits[:, self.labels]

    @property
    def classifier_norms(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.W_gram), 0, None))

    @property
    def feature_norms(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.mean_gram), 0, None))

    @staticmethod
    def _cosines(G: np.ndarray) -> np.ndarray:
        n = np.sqrt(np.clip(np.diag(G), 1e-300, None))
        return G / np.outer(n, n)

    @property
    def classifier_cosines(self) -> np.ndarray:
        return self._cosines(self.W_gram)

    @property
    def feature_cosines(self) -> np.ndarray:
        return self._cosines(self.mean_gram)


def seli_geometry(counts) -> ClassGeometry:
    """The SELI geometry for any positive class counts (Thrampoulidis et al., NeurIPS 2022).

    With ``Z_hat = S Y = U Lambda V^T``: ``W W^T = U Lambda U^T``, ``H^T H = V Lambda V^T``, ``W H = Z_hat``.
    Computed at the class level: ``S diag(sqrt(counts))`` has the same left singular vectors ``U`` and singular
    values ``Lambda`` as ``Z_hat``, and ``V = Z_hat^T U Lambda^{-1}`` gives the class-level feature Gram
    ``U Lambda^{-1} U^T``. Cost O(k^3), independent of N.

    >>> g = seli_geometry([5, 5, 5])
    >>> bool(np.allclose(g.W_gram / g.W_gram[0, 0], [[1, -.5, -.5], [-.5, 1, -.5], [-.5, -.5, 1]]))
    True
    """
    counts = check_counts(counts)
    k = counts.size
    S = np.eye(k) - 1.0 / k
    U, lam, _ = np.linalg.svd(S * np.sqrt(counts.astype(float))[None, :])
    r = k - 1  # S has rank k-1 and diag(sqrt(counts)) is invertible
    U, lam = U[:, :r], lam[:r]
    W_gram = (U * lam) @ U.T
    mean_gram = (U / lam) @ U.T
    return ClassGeometry(counts=counts, W_gram=W_gram, mean_gram=mean_gram, class_logits=S.copy(), name="seli")


def etf_geometry(counts) -> ClassGeometry:
    """Neural collapse for the given counts: classifiers and class means a simplex ETF, logits ``S Y``.

    For balanced counts this equals :func:`seli_geometry` up to scale.
    """
    counts = check_counts(counts)
    k = counts.size
    S = np.eye(k) - 1.0 / k
    return ClassGeometry(counts=counts, W_gram=S.copy(), mean_gram=S.copy(), class_logits=S.copy(), name="etf")


def step_imbalance_counts(num_classes: int, ratio: float, minority_fraction: float, n_min: int) -> np.ndarray:
    """Counts for step imbalance: ``round(minority_fraction * k)`` minority classes with ``n_min`` samples, the
    others majorities with ``round(ratio * n_min)`` samples. Convention: majorities come first (classes
    ``0 .. k_maj-1``), and ``minority_fraction`` (rho) counts the minorities.

    >>> step_imbalance_counts(10, 10, 0.7, 2).tolist()
    [20, 20, 20, 2, 2, 2, 2, 2, 2, 2]
    """
    from implicit_geometry._validation import check_float

    k = check_int("classes", num_classes, minimum=2)
    R = check_float("ratio", ratio, minimum=1.0)
    rho = check_float("minority_fraction", minority_fraction, minimum=0.0, maximum=1.0)
    n_min = check_int("n_min", n_min, minimum=1)
    k_min = int(round(rho * k))
    n_maj = int(round(R * n_min))
    return np.array([n_maj] * (k - k_min) + [n_min] * k_min, dtype=np.int64)
