"""Independent reference solutions with cvxpy (optional dependency, extra ``convex``): the SAMPLE-level programs,
one logit column per sample (no class-level reduction), to check the class-level solvers of :mod:`.predict`.
Small sizes only: the nuclear norm becomes an SDP of size k + N.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from implicit_geometry._validation import check_counts
from implicit_geometry.geometry.targets import labels_from_counts, one_hot
from implicit_geometry.imbalance.losses import LossParameters, loss_parameters


def _cvxpy() -> Any:
    try:
        import cvxpy as cp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the cvxpy reference needs the 'convex' extra: pip install 'implicit-geometry[convex]'") from exc
    return cp


def _solve(problem: Any, solver: str) -> None:
    cp = _cvxpy()
    name = {"clarabel": cp.CLARABEL, "scs": cp.SCS}[solver.lower()]
    kwargs = {"eps": 1e-9, "max_iters": 200000} if name == cp.SCS else {}
    problem.solve(solver=name, **kwargs)


def _nuclear(cp: Any, Z: Any, formulation: str) -> tuple[Any, list[Any]]:
    """``||Z||_*`` for a k x N variable. ``"sdp"``: cvxpy's ``normNuc`` (one PSD cone of size k + N, slow beyond
    N ~ 50). ``"variational"``: ``min_A 1/2 (tr A + sum_i z_i^T A^{-1} z_i)`` over A (k x k, PSD), minimized at
    ``A = (Z Z^T)^{1/2}``: N small cones of size k + 1 (each sample keeps its own column)."""
    if formulation == "sdp":
        return cp.normNuc(Z), []
    k, N = Z.shape
    A = cp.Variable((k, k), PSD=True)
    return 0.5 * (cp.trace(A) + sum(cp.matrix_frac(Z[:, i], A) for i in range(N))), []


def cvxpy_max_margin(counts: Any, params: LossParameters | None = None, *, solver: str = "clarabel",
                     formulation: str = "variational") -> dict[str, Any]:
    """``min ||Z||_*`` over k x N logits subject to every sample's cost-sensitive margins ``>= 1``.

    Returns ``{"Z": k x N, "objective": float, "seconds": float, "status": str}``.
    """
    cp = _cvxpy()
    counts = check_counts(counts)
    k = counts.size
    p = params or loss_parameters(counts, "ce")
    y = labels_from_counts(counts)
    N = y.size
    Y = one_hot(y, k)
    Z = cp.Variable((k, N))
    zy = cp.sum(cp.multiply(Y, Z), axis=0)  # z_{y_i, i}
    Dy = p.multiplicative[y]
    if p.label_dependent:
        lhs = cp.multiply(np.tile(Dy, (k, 1)), np.ones((k, 1)) @ cp.reshape(zy, (1, N), order="C") - Z)
    else:
        lhs = np.ones((k, 1)) @ cp.reshape(cp.multiply(Dy, zy), (1, N), order="C") - cp.multiply(np.tile(p.multiplicative[:, None], (1, N)), Z)
    # Label entries of lhs vanish identically; adding Y there makes them trivially satisfied.
    cons = [cp.multiply(1.0 - Y, lhs) + Y >= 1]
    nuc, extra = _nuclear(cp, Z, formulation)
    prob = cp.Problem(cp.Minimize(nuc), cons + extra)
    t0 = time.perf_counter()
    _solve(prob, solver)
    return {"Z": np.asarray(Z.value), "objective": float(prob.value), "seconds": time.perf_counter() - t0, "status": prob.status}


def cvxpy_ridge(counts: Any, weight_decay: float, params: LossParameters | None = None, *, solver: str = "clarabel") -> dict[str, Any]:
    """``min sum_i omega_y CE(z'_i, y_i) + wd ||Z||_*`` over sample-level logits (sum-CE)."""
    cp = _cvxpy()
    counts = check_counts(counts)
    k = counts.size
    p = params or loss_parameters(counts, "ce")
    y = labels_from_counts(counts)
    N = y.size
    Y = one_hot(y, k)
    Z = cp.Variable((k, N))
    J = np.tile(p.multiplicative[y], (k, 1)) if p.label_dependent else np.tile(p.multiplicative[:, None], (1, N))
    Zp = cp.multiply(J, Z) + np.tile(p.additive[:, None], (1, N))
    ce = cp.log_sum_exp(Zp, axis=0) - cp.sum(cp.multiply(Y, Zp), axis=0)
    obj = cp.sum(cp.multiply(p.weights[y], ce)) + weight_decay * cp.normNuc(Z)
    prob = cp.Problem(cp.Minimize(obj))
    t0 = time.perf_counter()
    _solve(prob, solver)
    return {"Z": np.asarray(Z.value), "objective": float(prob.value), "seconds": time.perf_counter() - t0, "status": prob.status}
