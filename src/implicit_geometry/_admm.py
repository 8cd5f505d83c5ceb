"""What the package's ADMM solvers share (imbalance.predict, ntp.predict)."""

from __future__ import annotations

import numpy as np


def balance_penalty(rho: float, scaled_dual: np.ndarray, primal_residual: float, dual_residual: float) -> float:
    """Residual balancing (Boyd et al. 2011, section 3.4.1): double the penalty when the primal residual is more
    than 10x the dual one, halve it in the opposite case, so that both keep shrinking together. The scaled dual
    variable ``u = y / rho`` is rescaled in place; returns the new penalty (factors of 2: exact in floating point).

    >>> u = np.ones(2)
    >>> balance_penalty(1.0, u, 20.0, 1.0), u.tolist()
    (2.0, [0.5, 0.5])
    """
    if primal_residual > 10 * dual_residual:
        scaled_dual /= 2.0
        return rho * 2.0
    if dual_residual > 10 * primal_residual:
        scaled_dual *= 2.0
        return rho / 2.0
    return rho
