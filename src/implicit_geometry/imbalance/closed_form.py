"""Closed-form norms and angles of the max-margin UFM geometry under step imbalance, for every loss.

Conventions: k classes; ``k_min = round(rho k)`` minority classes with ``n_min`` samples and ``k_maj = k - k_min``
majority classes with ``R n_min`` samples (majorities first, rho counts minorities; ``0 < k_min < k``).
Scale: every cost-sensitive margin equals 1 (as :func:`~implicit_geometry.imbalance.predict.imbalance_geometry`).

Derivation (ours: the published formulas of Behnia et al. (AISTATS 2023) were not available to us; these are
derived from the class-level solution in :mod:`.predict` and hold for any rho, not only 1/2). The class logits are
``M = (I - a a^T/||a||^2) diag(a)`` with ``a = 1/Delta`` (CDT, VS; ``a = 1`` for CE, wCE, LA) or ``M = S diag(1/Delta)``
(LDT, ``a = 1``). With ``e_c = n_c / Delta_c^2`` and ``B = P_a diag(e) P_a`` (``P_a`` the projector orthogonal to a):
``W W^T = B^{1/2}`` and the class-mean Gram is ``diag(1/Delta) B^{+1/2} diag(1/Delta)``. B splits into three
invariant pieces: zero-sum vectors on the majorities (eigenvalue ``e_maj``), on the minorities (``e_min``), and
``q = (a_min k_min) 1_maj - (a_maj k_maj) 1_min`` with eigenvalue ``mu = (k_maj q_maj^2 e_maj + k_min q_min^2 e_min)/||q||^2``.
Hence, with ``f_maj = q_maj^2/||q||^2``, ``f_min = q_min^2/||q||^2`` and ``f_x = q_maj q_min/||q||^2``:

- ``||w_maj||^2 = sqrt(e_maj)(1 - 1/k_maj) + sqrt(mu) f_maj``,  ``<w_maj, w'_maj> = -sqrt(e_maj)/k_maj + sqrt(mu) f_maj``
- ``||w_min||^2 = sqrt(e_min)(1 - 1/k_min) + sqrt(mu) f_min``,  ``<w_min, w'_min> = -sqrt(e_min)/k_min + sqrt(mu) f_min``
- ``<w_maj, w_min> = sqrt(mu) f_x``
- class means: the same with ``sqrt(e)`` -> ``1/sqrt(e)``, ``sqrt(mu)`` -> ``1/sqrt(mu)``, then times
  ``1/(Delta_i Delta_j)``.

>>> g = step_closed_form(4, 1.0, 0.5, "ce")  # balanced: simplex ETF
>>> round(g.w_cos_maj, 12), round(g.w_cos_across, 12)
(-0.333333333333, -0.333333333333)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from implicit_geometry._validation import InvalidParameterError, check_float, check_int
from implicit_geometry.geometry.targets import step_imbalance_counts
from implicit_geometry.imbalance.losses import loss_parameters


@dataclass(frozen=True)
class StepGeometry:
    """Norms and cosines of classifiers (w_) and class means (h_): majority (maj), minority (min), across."""

    k_maj: int
    k_min: int
    w_norm_maj: float
    w_norm_min: float
    h_norm_maj: float
    h_norm_min: float
    w_cos_maj: float
    w_cos_min: float
    w_cos_across: float
    h_cos_maj: float
    h_cos_min: float
    h_cos_across: float

    @property
    def w_norm_ratio(self) -> float:
        """Classifier norm ratio majority / minority."""
        return self.w_norm_maj / self.w_norm_min

    @property
    def h_norm_ratio(self) -> float:
        """Class-mean (embedding) norm ratio majority / minority."""
        return self.h_norm_maj / self.h_norm_min

    def to_dict(self) -> dict[str, float]:
        d = asdict(self)
        d.update(w_norm_ratio=self.w_norm_ratio, h_norm_ratio=self.h_norm_ratio)
        return d


def step_closed_form(
    num_classes: int,
    ratio: float,
    minority_fraction: float,
    loss: str = "ce",
    *,
    gamma: float | None = None,
    tau: float | None = None,
    beta: float | None = None,
    n_min: int = 1,
) -> StepGeometry:
    """Closed-form max-margin geometry for step imbalance (see the module docstring for the formulas).

    ``ratio`` may be any real R >= 1 here (counts enter only through ``R n_min``); ``n_min`` only sets the scale.
    """
    k = check_int("classes", num_classes, minimum=2)
    R = check_float("ratio", ratio, minimum=1.0)
    rho = check_float("minority_fraction", minority_fraction, minimum=0.0, maximum=1.0)
    n_min = check_int("n_min", n_min, minimum=1)
    k_min = int(round(rho * k))
    k_maj = k - k_min
    if not 0 < k_min < k:
        raise InvalidParameterError(f"minority_fraction must leave at least one majority and one minority class (got {rho!r} for k = {k})")
    # Delta and loss validation through the same code path as the general predictor (exact R via 2-class counts
    # would round; build Delta from R directly instead).
    probe = loss_parameters(step_imbalance_counts(k, 1.0, rho, 1), loss, gamma=gamma, tau=tau, beta=beta)
    name, label_dependent = probe.name, probe.label_dependent
    g = probe.hyper.get("gamma", 0.0) if name in ("cdt", "ldt", "vs") else 0.0
    d_maj, d_min = R**g, 1.0
    mean = (k_maj * d_maj + k_min * d_min) / k
    D_maj, D_min = d_maj / mean, d_min / mean
    n_maj_, n_min_ = R * n_min, float(n_min)
    a_maj, a_min = (1.0, 1.0) if label_dependent else (1 / D_maj, 1 / D_min)
    e_maj, e_min = n_maj_ / D_maj**2, n_min_ / D_min**2
    q_maj, q_min = a_min * k_min, -a_maj * k_maj
    qq = k_maj * q_maj**2 + k_min * q_min**2
    mu = (k_maj * q_maj**2 * e_maj + k_min * q_min**2 * e_min) / qq
    f_maj, f_min, f_x = q_maj**2 / qq, q_min**2 / qq, q_maj * q_min / qq

    def gram(p_maj: float, p_min: float, p_mu: float) -> tuple[float, float, float, float, float]:
        dm = p_maj * (1 - 1 / k_maj) + p_mu * f_maj
        dn = p_min * (1 - 1 / k_min) + p_mu * f_min
        om = -p_maj / k_maj + p_mu * f_maj
        on = -p_min / k_min + p_mu * f_min
        x = p_mu * f_x
        return dm, dn, om, on, x

    wm, wn, wom, won, wx = gram(math.sqrt(e_maj), math.sqrt(e_min), math.sqrt(mu))
    hm, hn, hom, hon, hx = gram(1 / math.sqrt(e_maj), 1 / math.sqrt(e_min), 1 / math.sqrt(mu))
    # Feature scaling diag(1/Delta) on both sides; cosines are unaffected within a group.
    hm, hom = hm / D_maj**2, hom / D_maj**2
    hn, hon = hn / D_min**2, hon / D_min**2
    hx = hx / (D_maj * D_min)
    return StepGeometry(
        k_maj=k_maj, k_min=k_min,
        w_norm_maj=math.sqrt(wm), w_norm_min=math.sqrt(wn), h_norm_maj=math.sqrt(hm), h_norm_min=math.sqrt(hn),
        w_cos_maj=wom / wm if k_maj > 1 else 1.0, w_cos_min=won / wn if k_min > 1 else 1.0,
        w_cos_across=wx / math.sqrt(wm * wn),
        h_cos_maj=hom / hm if k_maj > 1 else 1.0, h_cos_min=hon / hn if k_min > 1 else 1.0,
        h_cos_across=hx / math.sqrt(hm * hn),
    )


def step_summary(geometry: object, k_maj: int) -> dict[str, float]:
    """The same ten numbers read off any :class:`ClassGeometry` with majorities first (for comparisons).

    Takes classes 0 and 1 (majorities) and the last two (minorities); with a single majority or minority the
    within-group cosine is reported as 1.
    """
    import numpy as np

    Wg, Hg = geometry.W_gram, geometry.mean_gram  # type: ignore[attr-defined]
    k = Wg.shape[0]
    i, j = 0, (1 if k_maj > 1 else 0)
    m, n = k - 1, (k - 2 if k - k_maj > 1 else k - 1)

    def cos(G: np.ndarray, a: int, b: int) -> float:
        return float(G[a, b] / math.sqrt(G[a, a] * G[b, b]))

    out = {
        "w_norm_maj": math.sqrt(Wg[0, 0]), "w_norm_min": math.sqrt(Wg[m, m]),
        "h_norm_maj": math.sqrt(Hg[0, 0]), "h_norm_min": math.sqrt(Hg[m, m]),
        "w_cos_maj": cos(Wg, i, j), "w_cos_min": cos(Wg, m, n), "w_cos_across": cos(Wg, 0, m),
        "h_cos_maj": cos(Hg, i, j), "h_cos_min": cos(Hg, m, n), "h_cos_across": cos(Hg, 0, m),
    }
    out["w_norm_ratio"] = out["w_norm_maj"] / out["w_norm_min"]
    out["h_norm_ratio"] = out["h_norm_maj"] / out["h_norm_min"]
    return out
