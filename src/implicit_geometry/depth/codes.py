"""Softmax codes: K points in r dimensions that maximize the smallest one-vs-rest distance.

Normalization (stated everywhere): ``max_k ||w_k|| <= 1``. The value of a code ``W`` (K x r, row k is ``w_k``) is

    rho(W) = min_k dist(w_k, conv{w_j : j != k}),

and :func:`softmax_code` maximizes it. Known optima (used as tests): the simplex for ``K <= r + 1``
(``rho = K/(K-1)``), the regular K-gon for ``r = 2`` (``rho = 1 - cos(2 pi / K)``), the cross-polytope for
``K = 2r`` (``rho = 1``; ``rho = 2`` for r = 1).

The distance of a point to a convex hull is a small quadratic program, solved exactly (finitely many steps) by
Wolfe's minimum-norm-point algorithm. The maximization uses the separating-hyperplane form: ``dist(w_k, conv)
= max_{||u|| <= 1} min_{j != k} u^T (w_k - w_j)`` (for a point outside the hull), so the code problem is the smooth
program ``max t  s.t.  u_k^T (w_k - w_j) >= t,  ||w_k|| <= 1,  ||u_k|| <= 1``, solved by SLSQP from several
random starts; the reported value is always recomputed exactly with :func:`one_vs_rest_distances`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from implicit_geometry._validation import InvalidParameterError, check_int, check_matrix


def min_norm_point(P: np.ndarray, tol: float = 1e-13, max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Point of smallest norm in the convex hull of the columns of P (r x m), with its convex weights (Wolfe 1976).

    >>> x, lam = min_norm_point(np.array([[1.0, -1.0], [1.0, 1.0]]))
    >>> (np.round(x, 12) + 0.0).tolist(), np.round(lam, 12).tolist()
    ([0.0, 1.0], [0.5, 0.5])
    """
    P = np.asarray(P, dtype=np.float64)
    m = P.shape[1]
    # work at unit scale: the minor cycle's affine system pairs the Gram matrix with ones, and at the scale of learned
    # logits (1e4 and beyond) lstsq would drop the Gram block as negligible (every distance came out 0)
    unit = math.sqrt(max(float((P**2).sum(0).max()), 1e-300))
    P = P / unit
    sq = (P**2).sum(0)
    scale = max(sq.max(), 1e-300)
    S = [int(np.argmin(sq))]
    lam = np.array([1.0])
    for _ in range(max_iter):
        x = P[:, S] @ lam
        j = int(np.argmin(P.T @ x))
        if x @ x - x @ P[:, j] <= tol * scale or j in S:
            break
        S.append(j)
        lam = np.append(lam, 0.0)
        while True:  # minor cycle: affine minimizer on S, step back into the simplex if needed
            Q = P[:, S]
            n = len(S)
            A = np.zeros((n + 1, n + 1))
            A[:n, :n] = Q.T @ Q
            A[:n, n] = A[n, :n] = 1.0
            rhs = np.zeros(n + 1)
            rhs[n] = 1.0
            mu = np.linalg.lstsq(A, rhs, rcond=None)[0][:n]
            if np.all(mu > 1e-15):
                lam = mu
                break
            neg = mu <= 1e-15
            theta = np.min(lam[neg] / (lam[neg] - mu[neg]))
            lam = lam + theta * (mu - lam)
            keep = lam > 1e-15
            S = [s for s, k in zip(S, keep) if k]
            lam = lam[keep] / lam[keep].sum()
    weights = np.zeros(m)
    weights[S] = lam
    return (P[:, S] @ lam) * unit, weights


def one_vs_rest_distances(W) -> np.ndarray:
    """``dist(w_k, conv{w_j: j != k})`` for every row k of W (K x r), exactly.

    >>> np.round(one_vs_rest_distances(np.array([[1.0, 0.0], [-1.0, 0.0]])), 12).tolist()
    [2.0, 2.0]
    """
    W = check_matrix("W", W)
    K = W.shape[0]
    if K < 2:
        raise InvalidParameterError(f"W must have at least 2 rows, one per class (got {K})")
    out = np.empty(K)
    for k in range(K):
        others = np.delete(W, k, axis=0)
        x, _ = min_norm_point((others - W[k]).T)
        out[k] = np.linalg.norm(x)
    return out


def code_value(W) -> float:
    """The code's value ``min_k dist(w_k, conv others) / max_k ||w_k||`` (scale-free form of rho)."""
    W = check_matrix("W", W)
    return float(one_vs_rest_distances(W).min() / np.linalg.norm(W, axis=1).max())


def known_optimum_name(K: int, r: int) -> str | None:
    """Which known optimal code K points in r dimensions have, in the order checked: the simplex (K <= r+1), the
    regular K-gon (r = 2), the cross-polytope (K = 2r); None where no closed form is known.

    >>> known_optimum_name(3, 2), known_optimum_name(6, 2), known_optimum_name(6, 3), known_optimum_name(7, 3)
    ('simplex', 'regular 6-gon', 'cross-polytope', None)
    """
    K = check_int("K", K, minimum=2)
    r = check_int("r", r, minimum=1)
    if K <= r + 1:
        return "simplex"
    if r == 2:
        return f"regular {K}-gon"
    if K == 2 * r:
        return "cross-polytope"
    return None


def known_optimum(K: int, r: int) -> float | None:
    """The optimal value where it is known (:func:`known_optimum_name`): simplex ``K/(K-1)``, regular K-gon
    ``1 - cos(2 pi/K)``, cross-polytope 1.

    >>> known_optimum(3, 2), round(known_optimum(6, 2), 12), known_optimum(6, 3)
    (1.5, 0.5, 1.0)
    """
    name = known_optimum_name(K, r)
    if name is None:
        return None
    if name == "simplex":
        return K / (K - 1)
    if name == "cross-polytope":
        return 1.0
    return 1.0 - math.cos(2 * math.pi / K)  # the regular K-gon


def regular_polygon(K: int) -> np.ndarray:
    """The regular K-gon on the unit circle (K x 2), first vertex at angle 0."""
    K = check_int("K", K, minimum=2)
    a = 2 * np.pi * np.arange(K) / K
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def simplex_code(K: int) -> np.ndarray:
    """The unit-norm regular simplex (K x K, rank K-1): rows of the ETF ``sqrt(K/(K-1)) (I - 11^T/K)``."""
    from implicit_geometry.geometry.targets import simplex_etf

    return simplex_etf(K)


@dataclass(frozen=True)
class SoftmaxCode:
    """A max-margin code: ``points`` (K x r, max row norm 1), its exact ``distance`` (rho), the per-restart values,
    and the known optimum where there is one."""

    points: np.ndarray
    distance: float
    restarts: tuple[float, ...]
    known: float | None

    @property
    def K(self) -> int:
        return int(self.points.shape[0])

    @property
    def r(self) -> int:
        return int(self.points.shape[1])


def _solve_once(W0: np.ndarray, maxiter: int) -> np.ndarray:
    from scipy.optimize import minimize

    K, r = W0.shape
    nW = K * r
    # Initial separating directions: from w_k towards its nearest hull point, reversed.
    U0 = np.empty_like(W0)
    for k in range(K):
        x, _ = min_norm_point((np.delete(W0, k, axis=0) - W0[k]).T)
        n = np.linalg.norm(x)
        U0[k] = -x / n if n > 1e-12 else W0[k] / max(np.linalg.norm(W0[k]), 1e-12)
    t0 = min(float(U0[k] @ (W0[k] - W0[j])) for k in range(K) for j in range(K) if j != k)
    z0 = np.concatenate([W0.ravel(), U0.ravel(), [t0]])
    I, J = np.where(~np.eye(K, dtype=bool))

    def split(z):
        return z[:nW].reshape(K, r), z[nW : 2 * nW].reshape(K, r), z[-1]

    def cons(z):
        W, U, t = split(z)
        sep = (U[I] * (W[I] - W[J])).sum(1) - t
        return np.concatenate([sep, 1 - (W**2).sum(1), 1 - (U**2).sum(1)])

    def cons_jac(z):
        W, U, _ = split(z)
        m = len(I)
        Jm = np.zeros((m + 2 * K, z.size))
        rows = np.arange(m)
        for a in range(r):
            np.add.at(Jm, (rows, I * r + a), U[I, a])
            np.add.at(Jm, (rows, J * r + a), -U[I, a])
            Jm[rows, nW + I * r + a] = W[I, a] - W[J, a]
        Jm[:m, -1] = -1.0
        for k in range(K):
            Jm[m + k, k * r : (k + 1) * r] = -2 * W[k]
            Jm[m + K + k, nW + k * r : nW + (k + 1) * r] = -2 * U[k]
        return Jm

    grad = np.zeros(z0.size)
    grad[-1] = -1.0
    res = minimize(lambda z: -z[-1], z0, jac=lambda z: grad, method="SLSQP",
                   constraints=[{"type": "ineq", "fun": cons, "jac": cons_jac}],
                   options={"maxiter": maxiter, "ftol": 1e-15})
    W, _, _ = split(res.x)
    return W / np.linalg.norm(W, axis=1).max()


def softmax_code(K: int, r: int, *, restarts: int = 8, seed: int = 0, maxiter: int = 500,
                 progress: bool = False) -> SoftmaxCode:
    """The max-margin (softmax) code of K points in r dimensions under ``max_k ||w_k|| <= 1``.

    Several random restarts (Gaussian points normalized to the unit sphere); the best exact value is kept.
    For ``K <= r + 1`` the simplex is returned directly (it is optimal and spans K-1 <= r dimensions).
    ``progress`` shows a bar over the restarts (each takes seconds to a minute from K ~ 20 on).

    >>> code = softmax_code(5, 2, restarts=4)
    >>> bool(abs(code.distance - (1 - np.cos(2 * np.pi / 5))) < 1e-6)
    True
    """
    K = check_int("K", K, minimum=2)
    r = check_int("r", r, minimum=1)
    restarts = check_int("restarts", restarts, minimum=1)
    known = known_optimum(K, r)
    if K <= r + 1:
        # The simplex, written in its own K-1 dimensions and padded to r.
        U, s, _ = np.linalg.svd(simplex_code(K))
        pts = np.zeros((K, r))
        pts[:, : K - 1] = (U * s)[:, : K - 1]
        return SoftmaxCode(points=pts, distance=float(one_vs_rest_distances(pts).min()), restarts=(known,), known=known)
    rng = np.random.default_rng(seed)
    best, values = None, []
    from tqdm.auto import tqdm

    for _ in tqdm(range(restarts), desc=f"softmax code K={K} r={r}", unit="restart", disable=not progress, leave=False):
        W0 = rng.standard_normal((K, r))
        W0 /= np.linalg.norm(W0, axis=1, keepdims=True)
        W = _solve_once(W0, maxiter)
        v = float(one_vs_rest_distances(W).min())
        values.append(v)
        if best is None or v > best[0]:
            best = (v, W)
    return SoftmaxCode(points=best[1], distance=best[0], restarts=tuple(values), known=known)
