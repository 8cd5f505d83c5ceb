"""Predicted UFM geometry under label imbalance: the cost-sensitive max-margin program (unregularized GD) and
the ridge-regularized global minimizer, both solved at the class level (cost independent of N).

**Max margin (separable limit).** Gradient descent on ``sum_i omega_y CE(z'_i, y_i)`` in the UFM (d >= k) converges
in direction to the solution of ``min ||Z||_*`` subject to ``Delta_y z_{y,i} - Delta_c z_{c,i} >= 1`` (CDT, VS) or
``Delta_y (z_{y,i} - z_{c,i}) >= 1`` (LDT); additive offsets (LA) and loss weights do not change it (theory.md
section 3). All samples of a class share one logit column, so with class logits M (k x k, column y = class y)
and ``X = M diag(sqrt(n))`` the program is ``min ||X||_*`` subject to column-wise linear constraints
``X_yy - r_cy X_cy >= s_y`` (``r_cy = Delta_c/Delta_y``, ``s_y = sqrt(n_y)/Delta_y`` for CDT; ``r_cy = 1`` for LDT).

Solution (derived here, verified against the sample-level cvxpy program): if every margin constraint is active,
``M = (I - a a^T/||a||^2) diag(a)`` with ``a = 1/Delta`` (CDT; ``a = 1`` gives SELI's ``S``), or
``M = S diag(1/Delta)`` (LDT, i.e. SELI for counts ``n/Delta^2``). These logits do not depend on the counts;
they are optimal iff the KKT multipliers read off the subgradient ``U V^T`` of ``||X||_*`` are non-negative
(checked on every call). When the check fails, a general ADMM solver (singular value thresholding on k x k,
exact projection onto each column's constraint polyhedron) takes over, warm-started from the candidate.

**Ridge.** With weight decay ``wd`` on both factors (the simulator's ``gd`` convention: penalty
``wd/2 (||W||^2 + ||H||^2)``), the global minimizer has ``Z`` minimizing ``L(Z) + wd ||Z||_*`` (theory.md writes
``2 lambda`` for a penalty ``lambda (||W||^2+||H||^2)``). Class-level: ``L`` sums ``n_y`` copies of column y.
Solved by accelerated proximal gradient (FISTA with restarts) on X.

Sum-CE throughout (mean-CE divides the loss by N: the ridge minimizer then corresponds to ``wd * N``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from implicit_geometry._admm import balance_penalty
from implicit_geometry._validation import check_counts, check_float, check_int
from implicit_geometry.geometry.targets import ClassGeometry
from implicit_geometry.imbalance.losses import LossParameters, check_temperatures, loss_parameters


@dataclass(frozen=True)
class SolveInfo:
    """How a class-level program was solved: ``method`` ("closed-form", "admm", "fista"), iterations, seconds,
    objective (``||M diag(sqrt n)||_*``, plus the loss for ridge), the smallest KKT multiplier (max margin) or
    the prox-gradient residual (ridge), and the worst constraint violation."""

    method: str
    iterations: int
    seconds: float
    objective: float
    kkt: float
    violation: float
    extra: dict[str, Any] = field(default_factory=dict)


def _constraint_data(counts: np.ndarray, Delta: np.ndarray, label_dependent: bool) -> tuple[np.ndarray, np.ndarray]:
    """``r`` (k x k, r[c, y] multiplies X_cy) and ``s`` (k,) with constraints ``X_yy - r_cy X_cy >= s_y``."""
    sq = np.sqrt(counts.astype(float))
    if label_dependent:
        r = np.ones((Delta.size, Delta.size))
    else:
        r = Delta[:, None] / Delta[None, :]
    return r, sq / Delta


def margins_matrix(M: np.ndarray, Delta: np.ndarray, label_dependent: bool) -> np.ndarray:
    """Cost-sensitive margins of class logits M: entry (c, y) is ``Delta_y M_yy - Delta_c M_cy`` (CDT) or
    ``Delta_y (M_yy - M_cy)`` (LDT); the diagonal is set to +inf."""
    d = np.diag(M)
    if label_dependent:
        out = Delta[None, :] * (d[None, :] - M)
    else:
        out = (Delta * d)[None, :] - Delta[:, None] * M
    np.fill_diagonal(out, np.inf)
    return out


def _svd_rank(X: np.ndarray, rtol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    U, s, Vt = np.linalg.svd(X)
    r = int(np.sum(s > rtol * s[0])) if s.size and s[0] > 0 else 0
    return U[:, :r], s[:r], Vt[:r]


def _multipliers(X: np.ndarray, counts: np.ndarray, r: np.ndarray, s: np.ndarray) -> np.ndarray:
    """KKT multipliers of the margin constraints implied by the subgradient ``G = U V^T`` (valid when X has
    rank k-1 and the subgradient's null-space part must vanish, as for the all-active candidates)."""
    U, _, Vt = _svd_rank(X)
    G = U @ Vt
    # Column y of A^*(lambda) has entry -lambda_yc r_cy at row c: lambda_yc = -G_cy / r_cy.
    lam = -G / r
    np.fill_diagonal(lam, np.inf)
    return lam


def candidate_logits(Delta: np.ndarray, label_dependent: bool) -> np.ndarray:
    """The all-margins-active solution of the class-level max-margin program (independent of the counts).

    >>> bool(np.allclose(candidate_logits(np.ones(3), False), np.eye(3) - 1/3))
    True
    """
    k = Delta.size
    if label_dependent:
        return (np.eye(k) - 1.0 / k) / Delta[None, :]
    a = 1.0 / Delta
    return (np.eye(k) - np.outer(a, a) / (a @ a)) * a[None, :]


def _project_columns(V: np.ndarray, r: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Euclidean projection of each column v of V onto ``{x: x_y - r_cy x_c >= s_y, c != y}`` (exact).

    For a fixed ``t = x_y`` the best ``x_c`` is ``min(v_c, (t - s_y)/r_cy)``; the remaining 1-D problem in t is
    a piecewise quadratic whose derivative is increasing, with breakpoints ``r_cy v_c + s_y``: sort them and
    pick the segment that contains the root.
    """
    k = V.shape[0]
    off = ~np.eye(k, dtype=bool)
    out = V.copy()
    # Columns as rows: entries c != y of column y.
    vc = V.T[off.T].reshape(k, k - 1)
    rc = r.T[off.T].reshape(k, k - 1)
    vy = np.diag(V)
    bp = rc * vc + s[:, None]
    order = np.argsort(-bp, axis=1)
    bp_s = np.take_along_axis(bp, order, 1)
    vs = np.take_along_axis(vc, order, 1)
    rs = np.take_along_axis(rc, order, 1)
    num = vy[:, None] + np.cumsum(vs / rs + s[:, None] / rs**2, axis=1)
    den = 1.0 + np.cumsum(1.0 / rs**2, axis=1)
    t_all = np.concatenate([vy[:, None], num / den], axis=1)  # j = 0..k-1 active breakpoints
    upper = np.concatenate([np.full((k, 1), np.inf), bp_s], axis=1)
    lower = np.concatenate([bp_s, np.full((k, 1), -np.inf)], axis=1)
    ok = (t_all <= upper * (1 + 1e-15) + 1e-300) & (t_all >= lower - np.abs(lower) * 1e-15)
    j = np.argmax(ok, axis=1)
    t = t_all[np.arange(k), j]
    xc = np.minimum(vc, (t[:, None] - s[:, None]) / rc)
    cols = out.T
    cols[off.T] = xc.reshape(-1)
    cols[np.arange(k), np.arange(k)] = t
    return cols.T.copy()


def _svt(X: np.ndarray, thresh: float) -> np.ndarray:
    U, s, Vt = np.linalg.svd(X, full_matrices=False)
    s = np.maximum(s - thresh, 0.0)
    return (U * s) @ Vt


def _admm(X0: np.ndarray, r: np.ndarray, s: np.ndarray, tol: float, max_iter: int) -> tuple[np.ndarray, int]:
    """ADMM for ``min ||X||_* + I_C(Y), X = Y`` with residual balancing of the penalty."""
    Y = _project_columns(X0, r, s)
    Uu = np.zeros_like(Y)
    rho = 1.0 / max(np.linalg.norm(Y, 2), 1e-12)
    it = 0
    for it in range(1, max_iter + 1):
        X = _svt(Y - Uu, 1.0 / rho)
        Y_old = Y
        Y = _project_columns(X + Uu, r, s)
        Uu += X - Y
        prim = np.linalg.norm(X - Y)
        dual = rho * np.linalg.norm(Y - Y_old)
        scale = max(np.linalg.norm(Y), 1e-300)
        if prim < tol * scale and dual < tol * max(rho * np.linalg.norm(Uu), 1e-300):
            break
        rho = balance_penalty(rho, Uu, prim, dual)
    return Y, it


def _resolve_params(counts: np.ndarray, loss: str | LossParameters, hyper: dict[str, Any]) -> LossParameters:
    if isinstance(loss, LossParameters):
        return loss
    return loss_parameters(counts, loss, **hyper)


def geometry_from_class_logits(counts: Any, M: Any, name: str = "geometry") -> ClassGeometry:
    """Balanced-factor geometry of class logits M: ``W W^T = (Z Z^T)^{1/2}``, class-mean Gram
    ``M^T (Z Z^T)^{+1/2} M`` (so that ``H^T H = (Z^T Z)^{1/2}``), with ``Z Z^T = X X^T``, ``X = M diag(sqrt n)``.
    Keeps the scale of M (meaningful for ridge, arbitrary for max margin)."""
    counts = check_counts(counts)
    M = np.asarray(M, dtype=float)
    X = M * np.sqrt(counts.astype(float))[None, :]
    U, sv, _ = _svd_rank(X, rtol=1e-12)
    W_gram = (U * sv) @ U.T
    P = U.T @ M
    mean_gram = (P.T / sv) @ P
    return ClassGeometry(counts=counts, W_gram=W_gram, mean_gram=mean_gram, class_logits=M, name=name)


def max_margin_logits(
    counts: Any,
    Delta: Any | None = None,
    *,
    label_dependent: bool = False,
    tol: float = 1e-10,
    max_iter: int = 20000,
    force_general: bool = False,
) -> tuple[np.ndarray, SolveInfo]:
    """Class logits M (k x k, column y shared by the samples of class y) solving the cost-sensitive max-margin
    program, normalized so that the smallest margin is exactly 1, and how they were obtained.

    ``force_general`` skips the closed-form candidate and runs ADMM from a cold start (SELI's logits ``S``),
    an independent route to the same optimum (used by the tests).

    >>> M, info = max_margin_logits([20, 20, 2])
    >>> bool(np.allclose(M, np.eye(3) - 1/3)), info.method
    (True, 'closed-form')
    """
    counts = check_counts(counts)
    k = counts.size
    Delta = np.ones(k) if Delta is None else check_temperatures(Delta, k)
    t0 = time.perf_counter()
    r, s = _constraint_data(counts, Delta, label_dependent)
    sq = np.sqrt(counts.astype(float))
    M = candidate_logits(Delta, label_dependent)
    method, iters = "closed-form", 0
    lam = _multipliers(M * sq[None, :], counts, r, s)
    if force_general or lam.min() < -1e-9 * np.abs(lam[np.isfinite(lam)]).max():
        start = (np.eye(k) - 1.0 / k) if force_general else M
        X, iters = _admm(start * sq[None, :], r, s, tol, max_iter)
        M = X / sq[None, :]
        method = "admm"
    mg = margins_matrix(M, Delta, label_dependent)
    M = M / mg.min()  # exact feasibility: smallest margin 1
    mg = margins_matrix(M, Delta, label_dependent)
    obj = float(np.linalg.svd(M * sq[None, :], compute_uv=False).sum())
    kkt = float(lam.min()) if method == "closed-form" else float("nan")
    info = SolveInfo(method, iters, time.perf_counter() - t0, obj, kkt, float(max(0.0, 1 - mg.min())))
    return M, info


def imbalance_geometry(
    counts: Any,
    loss: str | LossParameters = "ce",
    *,
    gamma: float | None = None,
    tau: float | None = None,
    beta: float | None = None,
    Delta: Any | None = None,
    label_dependent: bool | None = None,
    return_info: bool = False,
) -> ClassGeometry | tuple[ClassGeometry, SolveInfo]:
    """The geometry unregularized GD converges to in the UFM (d >= k) for ``loss`` and these class counts,
    returned like :func:`~implicit_geometry.geometry.targets.seli_geometry` (scale: smallest margin 1).

    ``Delta`` (explicit positive temperatures, one per class) overrides the loss's; ``label_dependent`` picks
    LDT (True) or CDT (False) for an explicit Delta. Cost O(k^3), independent of N.

    >>> g = imbalance_geometry([20, 20, 2, 2], "ldt", gamma=0.5)  # ETF classifiers whatever R
    >>> bool(np.allclose(g.classifier_cosines[0, 1:], -1/3))
    True
    """
    counts = check_counts(counts)
    if Delta is not None:
        D = check_temperatures(Delta, counts.size)
        ld = bool(label_dependent)
        name = "max-margin (Delta)"
    else:
        params = _resolve_params(counts, loss, {"gamma": gamma, "tau": tau, "beta": beta})
        D, ld = params.multiplicative, params.label_dependent
        name = f"max-margin {params.name}"
    M, info = max_margin_logits(counts, D, label_dependent=ld)
    g = geometry_from_class_logits(counts, M, name=name)
    return (g, info) if return_info else g


# ---------------------------------------------------------------------------------------------------------
# Ridge
# ---------------------------------------------------------------------------------------------------------


def _ridge_loss_grad(X: np.ndarray, sq: np.ndarray, counts: np.ndarray, p: LossParameters) -> tuple[float, np.ndarray]:
    k = X.shape[0]
    M = X / sq[None, :]
    Delta = p.multiplicative
    J = np.broadcast_to(Delta[None, :], (k, k)) if p.label_dependent else np.broadcast_to(Delta[:, None], (k, k))
    Zp = M * J + p.additive[:, None]
    m = Zp.max(axis=0, keepdims=True)
    lse = m[0] + np.log(np.exp(Zp - m).sum(axis=0))
    idx = np.arange(k)
    ce = lse - Zp[idx, idx]
    w = counts * p.weights  # sum-CE: n_y copies of column y, each weighted omega_y
    P = np.exp(Zp - lse[None, :])
    P[idx, idx] -= 1.0
    grad = (P * J) * (w / sq)[None, :]
    return float(w @ ce), grad


def _ridge_warm_start(counts: np.ndarray, wd: float, p: LossParameters, sq: np.ndarray) -> np.ndarray:
    """The best multiple of the max-margin solution (1-D convex problem, bisection on the derivative): for small
    wd the minimizer is close to it in direction, with a norm growing like log(1/wd), which FISTA alone reaches
    slowly (the loss is nearly flat there)."""
    M, _ = max_margin_logits(counts, p.multiplicative, label_dependent=p.label_dependent)
    X1 = M * sq[None, :]
    nuc = float(np.linalg.svd(X1, compute_uv=False).sum())

    def slope(t: float) -> float:
        _, g = _ridge_loss_grad(t * X1, sq, counts, p)
        return float(np.sum(g * X1)) + wd * nuc

    lo, hi = 0.0, 1.0
    while slope(hi) < 0 and hi < 1e6:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return ((lo + hi) / 2) * X1


def ridge_logits(
    counts: Any,
    weight_decay: float,
    loss: str | LossParameters = "ce",
    *,
    tol: float = 1e-10,
    max_iter: int = 200000,
    X0: np.ndarray | None = None,
    **hyper: Any,
) -> tuple[np.ndarray, SolveInfo]:
    """Class logits of the ridge-regularized UFM's global minimizer: ``argmin sum_i omega CE(z'_i) + wd ||Z||_*``
    (sum-CE, penalty ``wd/2`` on each factor's squared norm, d >= k). FISTA with adaptive restart on
    ``X = M diag(sqrt n)`` (step grown adaptively, backtracking), warm-started at the best multiple of the max-margin
    solution; stops when the prox-gradient step at step 1/L is below ``tol`` relative to ``||X||``. For
    ``wd >= ||grad L(0)||_2`` (reported as ``info.extra["wd_zero"]``) the minimizer is exactly 0 (method "zero")."""
    counts = check_counts(counts)
    wd = check_float("weight_decay", weight_decay, minimum=0.0, strict_min=True)
    check_float("tol", tol, minimum=0.0, strict_min=True)
    max_iter = check_int("max_iter", max_iter, minimum=1)
    p = _resolve_params(counts, loss, hyper)
    t0 = time.perf_counter()
    k = counts.size
    sq = np.sqrt(counts.astype(float))
    # Column Hessian is omega_y J diag-softmax-Hessian J with norm <= omega_y max(J)^2 / 2.
    L = float(np.max(p.weights) * np.max(p.multiplicative) ** 2 / 2.0)
    step = 1.0 / L
    # 0 is the minimizer iff ||grad L(0)||_2 <= wd (the subdifferential of ||.||_* at 0 is the spectral unit ball):
    # beyond this weight decay everything collapses, the geometry is undefined.
    l0, g0 = _ridge_loss_grad(np.zeros((k, k)), sq, counts, p)
    wd_zero = float(np.linalg.norm(g0, 2))
    if wd >= wd_zero * (1 - 1e-9):  # (at the threshold itself the minimizer is 0 too)
        info = SolveInfo("zero", 0, time.perf_counter() - t0, l0, 0.0, 0.0, {"loss": l0, "nuclear": 0.0, "wd_zero": wd_zero})
        return np.zeros((k, k)), info
    if X0 is None:
        X = _ridge_warm_start(counts, wd, p, sq)
    else:
        X = np.asarray(X0, float).copy()
    Yv, t = X.copy(), 1.0
    f_old = math.inf
    it = 0
    res = math.inf
    # The global bound L is very pessimistic near the solution (the softmax Hessian there is ~ e^{-margin}):
    # let the step grow by 1.5x per iteration and backtrack on the sufficient-decrease test.
    step_max = 1e12 / L
    stalled = 0
    f_best = math.inf
    for it in range(1, max_iter + 1):
        fy, g = _ridge_loss_grad(Yv, sq, counts, p)
        step = min(step * 1.5, step_max)
        while True:
            X_new = _svt(Yv - step * g, step * wd)
            D = X_new - Yv
            lv, _ = _ridge_loss_grad(X_new, sq, counts, p)
            if lv <= fy + float(np.sum(g * D)) + float(np.sum(D * D)) / (2 * step) + 1e-15 * abs(fy) or step <= 1.0 / L:
                break
            step /= 2.0
        f_new = lv + wd * float(np.linalg.svd(X_new, compute_uv=False).sum())
        # Stall counter on the best objective seen: rounding-level oscillations (which trigger restarts) must not
        # reset it, or a problem whose residual has a floor above tol never stops.
        if f_new < f_best - 1e-14 * abs(f_best):
            f_best, stalled = f_new, 0
        else:
            stalled += 1
        if f_new > f_old:  # adaptive restart (O'Donoghue & Candes): drop the momentum
            t = 1.0
            Yv = X.copy()
            f_old = math.inf
            continue
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        Yv = X_new + ((t - 1) / t_new) * (X_new - X)
        X, t, f_old = X_new, t_new, f_new
        if it % 10 == 0 or stalled >= 100:
            # Optimality measure: the prox-gradient step at the global step 1/L (zero exactly at the minimizer).
            _, gx = _ridge_loss_grad(X, sq, counts, p)
            res = float(np.linalg.norm(_svt(X - gx / L, wd / L) - X) / max(np.linalg.norm(X), 1e-300))
            if res < tol or stalled >= 100:  # converged, or at the limit of double precision
                break
        elif stalled >= 100:
            break
    lv, _ = _ridge_loss_grad(X, sq, counts, p)
    nuc = float(np.linalg.svd(X, compute_uv=False).sum())
    info = SolveInfo("fista", it, time.perf_counter() - t0, lv + wd * nuc, res, 0.0, {"loss": lv, "nuclear": nuc, "wd_zero": wd_zero})
    return X / sq[None, :], info


def ridge_geometry(
    counts: Any,
    weight_decay: float,
    loss: str | LossParameters = "ce",
    *,
    return_info: bool = False,
    **hyper: Any,
) -> ClassGeometry | tuple[ClassGeometry, SolveInfo]:
    """The ridge-regularized UFM's global minimizer (scale meaningful: the balanced factors themselves).

    >>> g = ridge_geometry([20, 20, 2, 2], 0.1)
    >>> float(g.classifier_cosines[2, 3]) > -1/3   # minority classifiers closer than in SELI
    True
    """
    M, info = ridge_logits(counts, weight_decay, loss, **hyper)
    name = f"ridge {loss if isinstance(loss, str) else loss.name} (wd={weight_decay:g})"
    g = geometry_from_class_logits(counts, M, name=name)
    return (g, info) if return_info else g


