"""The exact reduced dynamics of Hadamard-initialized (deep) UFMs: an ODE on the K logit singular values.

With the construction of :mod:`implicit_geometry.dynamics.hadamard` (depth L, n samples per class, class-logit
spectrum ``a``), gradient flow on cross-entropy keeps the singular vectors frozen and moves only ``a``::

    z = chi a / K,   p = softmax(z),   b = chi p,   1 - b_i = 2 sum_{m: chi[m,i] = -1} p_m   (>= 0)
    da_i/dt = kappa (L + 1) (1 - b_i) a_i^(2L/(L+1)),
    kappa = n^(L/(L+1))  (sum-CE, the default)   or   n^(L/(L+1)) / (nK)  (mean-CE)

(n = 1, L = 1: ``da/dt = 2 a (1 - b)``.) ``1 - b`` is computed as the sum over the negative characters, not as a
difference, so it stays accurate when the loss is tiny. Mode 0 (all ones) has ``b_0 = 1`` and never moves; faces
``{a_i = 0}`` are invariant. Derivation: every factor has the same singular values ``sigma`` (balanced), the
gradient of each factor in the frozen bases is ``g (1 - b) sigma^L`` with ``g = sqrt n`` (sum) or ``sqrt n / (nK)``
(mean), and ``a = sigma^(L+1) / sqrt n``.

Discrete gradient descent with learning rate eta is the exact map ``sigma <- sigma + eta g (1 - b) sigma^L``
(:func:`gd_reduced`): it reproduces the full simulation to rounding error, and the ODE to O(eta).

The ODE is integrated in ``y = log a`` and ``tau = log(1 + t)`` (``dy/dtau = (1 + t) da/dt / a``), where it is
smooth from t = 0 to t = 1e6 and beyond, by one adaptive SciPy solver call for a whole batch of initial
conditions (the right-hand side is two (B x K) @ (K x K) products).

>>> import numpy as np
>>> sol = solve_reduced([[0.0, 0.1, 0.2, 0.3]], [0.0, 1.0, 1e6], depth=1)
>>> bool(np.all(np.diff(sol.a[:, 0, 1:], axis=0) > 0)), float(sol.a[-1, 0, 0])
(True, 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from implicit_geometry._validation import InvalidParameterError, check_choice, check_float, check_int
from implicit_geometry.dynamics.hadamard import REDUCTIONS, check_spectrum, walsh_characters


def _negative_characters(k: int) -> tuple[np.ndarray, np.ndarray]:
    chi = walsh_characters(k).astype(np.float64)
    return chi, (chi < 0).astype(np.float64)


def one_minus_b(a: np.ndarray) -> np.ndarray:
    """``1 - b`` (B, K) for spectra a (B, K): ``b = chi softmax(chi a / K)`` is the softmax's spectrum.

    >>> one_minus_b(np.array([[0.0, 0.0]]))  # uniform softmax: b = (1, 0)
    array([[0., 1.]])
    """
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    chi, neg = _negative_characters(a.shape[1])
    z = a @ chi / a.shape[1]
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return 2.0 * (p @ neg)


def rate_constant(num_classes: int, depth: int, samples_per_class: int = 1, reduction: str = "sum") -> float:
    """kappa in ``da/dt = kappa (L+1) (1-b) a^(2L/(L+1))``: ``n^(L/(L+1))``, divided by N = nK for mean-CE."""
    L, n = depth, samples_per_class
    kappa = n ** (L / (L + 1))
    return kappa / (n * num_classes) if check_choice("reduction", reduction, REDUCTIONS) == "mean" else kappa


def gd_constant(num_classes: int, samples_per_class: int = 1, reduction: str = "sum") -> float:
    """g in the factor update ``sigma <- sigma + eta g (1 - b) sigma^L``: ``sqrt n`` (sum) or ``sqrt n / (nK)``."""
    g = np.sqrt(samples_per_class)
    return g / (samples_per_class * num_classes) if reduction == "mean" else float(g)


def reduced_rate(a: Any, *, depth: int = 1, samples_per_class: int = 1, reduction: str = "sum") -> np.ndarray:
    """``da/dt`` (B, K) of gradient flow at spectra a.

    >>> reduced_rate([0.0, 1.0], depth=1)  # K = 2: b = (1, tanh(1/2)), da_1/dt = 2 (1 - tanh(1/2))
    array([[0.        , 1.07576569]])
    """
    a = check_spectrum(a)
    L = check_int("depth", depth, minimum=1)
    kappa = rate_constant(a.shape[1], L, samples_per_class, reduction)
    return kappa * (L + 1) * one_minus_b(a) * a ** (2 * L / (L + 1))


@dataclass
class ReducedSolution:
    """``a[j, b, i]``: spectrum i of initial condition b at time ``t[j]``; ``nfev`` right-hand-side calls."""

    t: np.ndarray
    a: np.ndarray
    depth: int
    samples_per_class: int
    reduction: str
    nfev: int

    @property
    def a_hat(self) -> np.ndarray:
        """Normalized informative spectrum ``a_{1:K}/||a_{1:K}||_1`` (T, B, K-1)."""
        return normalized_spectrum(self.a)


def log_time_grid(t_end: float, num: int = 200, t_first: float = 1e-3) -> np.ndarray:
    """``[0, t_first, ..., t_end]`` evenly spaced on a log axis (num + 1 points).

    >>> log_time_grid(100.0, 3, 1.0).tolist()
    [0.0, 1.0, 10.0, 100.0]
    """
    t_end = check_float("t_end", t_end, minimum=0.0, strict_min=True)
    num = check_int("num", num, minimum=1)
    t_first = min(check_float("t_first", t_first, minimum=0.0, strict_min=True), t_end)
    return np.concatenate([[0.0], np.geomspace(t_first, t_end, num)]) if num > 1 else np.array([0.0, t_end])


def solve_reduced(
    a0: Any,
    times: Any,
    *,
    depth: int = 1,
    samples_per_class: int = 1,
    reduction: str = "sum",
    rtol: float = 1e-9,
    atol: float = 1e-11,
    method: str = "DOP853",
) -> ReducedSolution:
    """Integrate the reduced gradient flow for a batch of initial spectra a0 (B, K), reporting at ``times``
    (sorted, >= 0; include 0 to get a0 back). One adaptive solver call for the whole batch; zero entries stay
    exactly zero (invariant faces). ``rtol``/``atol`` act on ``log a``, i.e. they are relative errors of a."""
    from scipy.integrate import solve_ivp

    a0 = check_spectrum(a0, name="a0")
    L = check_int("depth", depth, minimum=1)
    n = check_int("samples_per_class", samples_per_class, minimum=1)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("method", method, ["RK45", "DOP853", "Radau", "BDF", "LSODA"])
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if t.size == 0 or not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(np.diff(t) < 0):
        raise InvalidParameterError(f"times must be a non-empty sorted list of numbers >= 0 (got {times!r})")
    B, k = a0.shape
    chi, neg = _negative_characters(k)
    kappa = rate_constant(k, L, n, reduction) * (L + 1)
    expo = (L - 1) / (L + 1)
    live = a0 > 0  # zero entries sit on an invariant face: keep them out of the state, exactly 0
    y0 = np.log(np.where(live, a0, 1.0))
    mask = live.astype(np.float64)
    chi_k, neg2 = chi / k, 2.0 * neg

    def rhs(tau: float, y: np.ndarray) -> np.ndarray:
        y = y.reshape(B, k)
        a = np.exp(y) * mask
        z = a @ chi_k
        # z_0 = sum(a)/K is the largest logit (a >= 0), a cheaper shift than a row-wise max.
        p = np.exp(z - z[:, :1])
        p /= p.sum(axis=1, keepdims=True)
        g = p @ neg2
        if expo:
            g *= a ** expo
        return (np.expm1(tau) + 1.0) * kappa * (g * mask).ravel()

    taus = np.log1p(t)
    if taus[-1] == 0.0:
        ys = np.repeat(y0.ravel()[None], t.size, 0)
        nfev = 0
    else:
        sol = solve_ivp(rhs, (0.0, taus[-1]), y0.ravel(), method=method, t_eval=taus, rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"reduced ODE solver failed: {sol.message}")
        ys, nfev = sol.y.T, int(sol.nfev)
    a = np.exp(ys.reshape(t.size, B, k)) * mask
    return ReducedSolution(t=t, a=a, depth=L, samples_per_class=n, reduction=reduction, nfev=nfev)


def gd_reduced(
    a0: Any,
    lr: float,
    steps: Any,
    *,
    depth: int = 1,
    samples_per_class: int = 1,
    reduction: str = "sum",
) -> np.ndarray:
    """Discrete gradient descent on the factors, reduced exactly: ``sigma <- sigma + lr g (1-b) sigma^L`` with
    ``a = sigma^(L+1)/sqrt n``. Returns a at the requested step counts (len(steps), B, K); step s is time s*lr.

    >>> a = gd_reduced([[0.0, 1.0]], 1e-4, [0, 10000], depth=1)[-1, 0, 1]
    >>> round(float(a), 4) == round(float(solve_reduced([[0.0, 1.0]], [0.0, 1.0]).a[-1, 0, 1]), 4)
    True
    """
    a0 = check_spectrum(a0, name="a0")
    L = check_int("depth", depth, minimum=1)
    n = check_int("samples_per_class", samples_per_class, minimum=1)
    lr = check_float("lr", lr, minimum=0.0, strict_min=True)
    check_choice("reduction", reduction, REDUCTIONS)
    marks = np.asarray(steps, dtype=np.int64).reshape(-1)
    if marks.size == 0 or np.any(marks < 0) or np.any(np.diff(marks) < 0):
        raise InvalidParameterError(f"steps must be a non-empty sorted list of integers >= 0 (got {steps!r})")
    step_size = lr * gd_constant(a0.shape[1], n, reduction)
    sigma = (np.sqrt(n) * a0) ** (1.0 / (L + 1))
    out = np.empty((marks.size, *a0.shape))
    s = 0
    for j, m in enumerate(marks):
        while s < m:
            a = sigma ** (L + 1) / np.sqrt(n)
            sigma = sigma + step_size * one_minus_b(a) * sigma**L
            s += 1
        out[j] = sigma ** (L + 1) / np.sqrt(n)
    return out


# -- functions of the spectrum ---------------------------------------------------------------------------------
def normalized_spectrum(a: np.ndarray) -> np.ndarray:
    """``a_{1:K}/||a_{1:K}||_1`` along the last axis (mode 0, the all-ones direction, is left out)."""
    inf = np.asarray(a, dtype=np.float64)[..., 1:]
    total = inf.sum(-1, keepdims=True)
    return np.divide(inf, total, out=np.zeros_like(inf), where=total > 0)


def lyapunov(a: np.ndarray) -> np.ndarray:
    """``V = KL(uniform || a_hat) = -log(K-1) - mean_i log a_hat_i`` over the K-1 informative modes: 0 exactly at
    neural collapse (all equal), +inf on a face ``{a_i = 0}``.

    >>> float(lyapunov(np.array([0.0, 2.0, 2.0, 2.0])))
    0.0
    """
    ah = normalized_spectrum(a)
    with np.errstate(divide="ignore"):
        return -np.log(ah.shape[-1]) - np.log(ah).mean(-1)


def effective_rank_of_spectrum(a: np.ndarray) -> np.ndarray:
    """Effective rank ``exp(-sum p log p)``, ``p = |a|/sum|a|``, of ``Q diag(a) Q^T`` (whose singular values are |a|):
    K-1 at neural collapse (a_0 = 0, the rest equal).

    >>> round(float(effective_rank_of_spectrum(np.array([0.0, 1.0, 1.0, 1.0]))), 12)
    3.0
    """
    s = np.abs(np.asarray(a, dtype=np.float64))
    total = s.sum(-1, keepdims=True)
    p = np.divide(s, total, out=np.zeros_like(s), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(-1)
    return np.where(total[..., 0] > 0, np.exp(ent), 0.0)


def crossing_times(t: np.ndarray, a: np.ndarray, level: float) -> np.ndarray:
    """First time each a[:, b, i] reaches ``level`` (log-log interpolation between grid points; +inf if never,
    0 if it starts there). a: (T, B, K) on the grid t (T,)."""
    a = np.asarray(a, dtype=np.float64)
    above = a >= level
    first = np.where(above.any(0), above.argmax(0), -1)
    out = np.full(a.shape[1:], np.inf)
    out[first == 0] = 0.0
    idx = np.nonzero(first > 0)
    j = first[idx]
    lo_a, hi_a = a[(j - 1, *idx)], a[(j, *idx)]
    lo_t, hi_t = t[j - 1], t[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.log(level / lo_a) / np.log(hi_a / lo_a)
        lt0 = np.log(np.where(lo_t > 0, lo_t, hi_t * 1e-6))
        est = np.exp(lt0 + frac * (np.log(hi_t) - lt0))
    out[idx] = np.where(np.isfinite(est), est, hi_t)
    return out


def predicted_runaway_times(
    a0: np.ndarray, level: float, *, depth: int, samples_per_class: int = 1, reduction: str = "sum"
) -> np.ndarray:
    """Early-time (small-a) prediction of when each mode reaches ``level``, from ``da/dt ~ kappa (L+1) a^p``
    (``1 - b ~ 1``, p = 2L/(L+1)): ``log(level/a0) / (2 kappa)`` for L = 1, else
    ``(a0^(1-p) - level^(1-p)) / ((p-1)(L+1) kappa)`` -- finite-time blow-up, so larger modes run away first.
    Zero modes never run away (+inf)."""
    a0 = np.asarray(a0, dtype=np.float64)
    L = depth
    kappa = rate_constant(a0.shape[-1], L, samples_per_class, reduction)
    with np.errstate(divide="ignore"):
        if L == 1:
            t = np.log(level / a0) / (2 * kappa)
        else:
            p = 2 * L / (L + 1)
            t = (a0 ** (1 - p) - level ** (1 - p)) / ((p - 1) * (L + 1) * kappa)
    return np.where(a0 > 0, np.maximum(t, 0.0), np.inf)


def endpoint_classification(
    a: np.ndarray, *, depth: int, a0: np.ndarray | None = None, samples_per_class: int = 1, reduction: str = "sum"
) -> dict[str, np.ndarray]:
    """Where each trajectory is heading, judged at its last point a (B, K).

    - ``on_face``: some informative mode is exactly 0 (in a0 if given, else in a). Faces are invariant, so such a
      run converges at best to a spurious critical point, never to neural collapse.
    - ``nc``: not on a face and the smallest informative mode grows at least as fast (relatively,
      ``d log a_i/dt``) as the largest: the spectrum is evening out, towards neural collapse (full rank K-1).
      Otherwise the small modes are being left behind: a lower-rank end point.
    - ``spread``: ``min a_hat / max a_hat`` (1 at neural collapse); ``effective_rank`` of the logits.
    """
    a = check_spectrum(a, name="a")
    zero = (a0 if a0 is not None else a)
    on_face = np.any(np.atleast_2d(zero)[:, 1:] == 0, axis=1)
    inf = a[:, 1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        growth = np.where(inf > 0, reduced_rate(a, depth=depth, samples_per_class=samples_per_class, reduction=reduction)[:, 1:] / inf, 0.0)
    rows = np.arange(len(a))
    live = np.where(inf > 0, inf, np.inf)
    lo = live.argmin(1)
    hi = inf.argmax(1)
    catching_up = growth[rows, lo] >= growth[rows, hi] * (1 - 1e-9)
    spread = np.divide(inf.min(1), inf.max(1), out=np.zeros(len(a)), where=inf.max(1) > 0)
    return {"on_face": on_face, "nc": catching_up & ~on_face, "spread": spread, "effective_rank": effective_rank_of_spectrum(a)}
