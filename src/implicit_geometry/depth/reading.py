"""Reading a learned geometry from a class-mean logit matrix: ranks, the Gram factor's points, their angles,
the best-matching softmax code and the distances to it and to the ETF.

With mean logits ``Z = U Sigma V^T`` (K x K, column c = mean logit vector of class c), the Gram factor
``X = Sigma_r^{1/2} V_r^T`` (r x K) puts one point per class in the top-r singular directions; ``X^T X = V_r
Sigma_r V_r^T``. For a self-dual code (``Z = C C^T``, C the code's K x r points) ``X`` is the code up to rotation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from implicit_geometry._validation import check_float, check_int, check_matrix
from implicit_geometry.depth.codes import SoftmaxCode, code_value, softmax_code
from implicit_geometry.geometry.metrics import effective_rank, normalized_distance, stable_rank


def numerical_rank(Z: Any, tol: float = 0.05) -> int:
    """Number of singular values above ``tol * sigma_max`` (relative cut-off, stated because learned low-rank
    solutions keep small residual modes that decay only as the norm grows).

    >>> numerical_rank(np.diag([1.0, 0.5, 1e-3]))
    2
    """
    s = np.linalg.svd(check_matrix("Z", Z), compute_uv=False)
    tol = check_float("tol", tol, minimum=0.0, maximum=1.0, strict_min=True)
    return int((s > tol * s[0]).sum()) if s[0] > 0 else 0


def gram_factor(Z: Any, r: int) -> np.ndarray:
    """``Sigma_r^{1/2} V_r^T`` (r x K): column c is class c's point in the top-r singular directions of Z."""
    Z = check_matrix("Z", Z)
    r = check_int("r", r, minimum=1, maximum=min(Z.shape))
    _, s, Vt = np.linalg.svd(Z)
    return np.sqrt(s[:r])[:, None] * Vt[:r]


def adjacent_angles(X: Any) -> np.ndarray:
    """Angles (degrees) between angularly adjacent columns of a 2 x K point set, in angular order (they sum to 360).

    >>> from implicit_geometry.depth.codes import regular_polygon
    >>> np.round(adjacent_angles(regular_polygon(6).T), 9).tolist()
    [60.0, 60.0, 60.0, 60.0, 60.0, 60.0]
    """
    X = check_matrix("X", X, shape=(2, None))
    a = np.sort(np.mod(np.degrees(np.arctan2(X[1], X[0])), 360.0))
    return np.diff(np.append(a, a[0] + 360.0))


def _procrustes(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Orthogonal R minimizing ||A - R B||_F (A, B: r x K)."""
    U, _, Vt = np.linalg.svd(A @ B.T)
    return U @ Vt


def code_distance(X: Any, C: Any, *, starts: int = 16, seed: int = 0) -> float:
    """Normalized distance between point sets X (r x K, columns) and C (K x r, rows) up to rotation/reflection and
    relabeling: ``min_{R, P} || X/||X|| - R C^T P/||C|| ||_F``. Exact cyclic search in the plane (r = 2, points in
    angular order); otherwise alternating Procrustes and assignment (Hungarian) from several rotations.

    >>> from implicit_geometry.depth.codes import regular_polygon
    >>> P = regular_polygon(5)
    >>> code_distance(3 * P[[2, 0, 4, 1, 3]].T, P) < 1e-12
    True
    """
    from scipy.optimize import linear_sum_assignment

    X = check_matrix("X", X)
    C = check_matrix("C", C, shape=(X.shape[1], X.shape[0]))
    A = X / np.linalg.norm(X)
    B = C.T / np.linalg.norm(C)
    r, K = A.shape
    best = np.inf
    if r == 2:
        oa = np.argsort(np.arctan2(A[1], A[0]))
        ob = np.argsort(np.arctan2(B[1], B[0]))
        for flip in (False, True):
            obb = ob[::-1] if flip else ob
            for shift in range(K):
                Bp = np.empty_like(B)
                Bp[:, oa] = B[:, np.roll(obb, shift)]
                R = _procrustes(A, Bp)
                best = min(best, float(np.linalg.norm(A - R @ Bp)))
        return best
    rng = np.random.default_rng(seed)
    for s in range(starts):
        R = np.eye(r) if s == 0 else np.linalg.qr(rng.standard_normal((r, r)))[0]
        prev = np.inf
        for _ in range(50):
            RB = R @ B
            _, col = linear_sum_assignment(-(A.T @ RB))  # A column i <-> RB column col[i]
            Bp = B[:, col]
            R = _procrustes(A, Bp)
            d = float(np.linalg.norm(A - R @ Bp))
            if d >= prev - 1e-14:
                break
            prev = d
        best = min(best, prev)
    return best


@dataclass(frozen=True)
class GeometryReading:
    """What :func:`read_geometry` finds (all scale-invariant; angles in degrees)."""

    effective_rank: float
    stable_rank: float
    numerical_rank: int
    gram_factor: np.ndarray
    adjacent_angles: np.ndarray
    code: SoftmaxCode | None
    code_distance: float | None
    code_value_ratio: float | None
    etf_distance: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "effective_rank": self.effective_rank,
            "stable_rank": self.stable_rank,
            "numerical_rank": self.numerical_rank,
            "gram_factor": self.gram_factor.tolist(),
            "adjacent_angles_deg": self.adjacent_angles.tolist(),
            "code_rank": None if self.code is None else self.code.r,
            "code_optimum": None if self.code is None else self.code.distance,
            "code_distance": self.code_distance,
            "code_value_ratio": self.code_value_ratio,
            "etf_distance": self.etf_distance,
        }


def read_geometry(Z: Any, *, tol: float = 0.05, rank: int | None = None, restarts: int = 4, fit_code: bool = True,
                  code_cache: dict | None = None) -> GeometryReading:
    """Read the geometry of a K x K class-mean logit matrix (column c = mean logits of class c).

    ``rank`` (default: the numerical rank at relative cut-off ``tol``) sets how many singular directions the Gram
    factor keeps and which softmax code (K points in ``rank`` dimensions) it is compared with. ``code_value_ratio``
    is the learned points' one-vs-rest value (max norm scaled to 1) over the code's optimum: 1 for an optimal code.
    Adjacent angles are taken in the top-2 singular plane (meaningful for rank-2 solutions). ``code_cache`` (a dict)
    keeps solved codes across calls.

    >>> from implicit_geometry.depth.codes import regular_polygon
    >>> P = regular_polygon(6)
    >>> g = read_geometry(P @ P.T)
    >>> g.numerical_rank, round(g.effective_rank, 6), bool(g.code_distance < 1e-7), round(g.code_value_ratio, 9)
    (2, 2.0, True, 1.0)
    """
    Z = check_matrix("Z", Z)
    K = Z.shape[0]
    if Z.shape != (K, K):
        from implicit_geometry._validation import InvalidParameterError

        raise InvalidParameterError(f"Z must be a square K x K class-mean logit matrix (got shape {Z.shape})")
    r = numerical_rank(Z, tol) if rank is None else check_int("rank", rank, minimum=1, maximum=K)
    X = gram_factor(Z, max(r, 2) if K >= 2 else r)
    angles = adjacent_angles(X[:2])
    X = X[:r]
    etf = np.eye(K) - 1.0 / K
    code = cdist = ratio = None
    if fit_code and r >= 1 and K >= 2:
        cache = {} if code_cache is None else code_cache
        if (K, r) not in cache:
            cache[(K, r)] = softmax_code(K, r, restarts=restarts)
        code = cache[(K, r)]
        cdist = code_distance(X, code.points)
        ratio = code_value(X.T) / code.distance if code.distance > 0 else None
    return GeometryReading(
        effective_rank=effective_rank(Z),
        stable_rank=stable_rank(Z),
        numerical_rank=r,
        gram_factor=X,
        adjacent_angles=angles,
        code=code,
        code_distance=cdist,
        code_value_ratio=ratio,
        etf_distance=normalized_distance(Z, etf),
    )
