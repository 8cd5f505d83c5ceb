"""Imbalance-aware parameterizations of cross-entropy (Behnia et al., AISTATS 2023; theory.md section 3).

Every loss is ``omega_y * CE(z', y)`` with adjusted logits ``z'_c = Delta_c z_c + iota_c`` (class-dependent, CDT/VS)
or ``z'_c = Delta_y z_c + iota_c`` (label-dependent, LDT). Conventions (also in every result file):

- ``pi_c = n_c / N`` (class priors from the counts) and ``delta_c = n_c / min(n)`` (so ``delta_c = R`` for the
  majorities and 1 for the minorities of a step imbalance).
- ``Delta_c = delta_c ** gamma``, normalized to mean 1 over classes (only the ratios matter for the geometry);
  majorities get the larger multiplier for ``gamma > 0``.
- ``iota_c = tau * log(pi_c)`` (logit adjustment, Menon et al. 2021).
- Weighted CE: ``omega_c = pi_c ** (-beta)``, normalized to mean 1 (``beta = 1``: inverse frequency).

Losses and their hyperparameters: ``ce`` (none), ``wce`` (beta), ``la`` (tau), ``cdt`` (gamma), ``ldt`` (gamma),
``vs`` (gamma and tau). ``PUBLISHED`` holds one literature setting per loss.

>>> p = loss_parameters([20, 20, 2, 2], "cdt", gamma=1.0)
>>> p.multiplicative.round(4).tolist(), p.label_dependent
([1.8182, 1.8182, 0.1818, 0.1818], False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from implicit_geometry._validation import InvalidParameterError, check_choice, check_counts, check_float

LOSSES = ("ce", "wce", "la", "cdt", "ldt", "vs")

# One published setting per loss (used by the benchmark and as defaults when a hyperparameter is omitted);
# PUBLISHED_NOTES says where each comes from.
PUBLISHED: dict[str, dict[str, float]] = {
    "ce": {},
    "wce": {"beta": 1.0},
    "la": {"tau": 1.0},
    "cdt": {"gamma": 0.3},
    "ldt": {"gamma": 0.5},
    "vs": {"gamma": 0.2, "tau": 1.0},
}
PUBLISHED_NOTES = {
    "wce": "inverse-frequency weights (beta = 1)",
    "la": "tau = 1, the Bayes-consistent choice of Menon et al. (ICLR 2021)",
    "cdt": "gamma = 0.3, in the range tuned by Ye et al. (2020) for CDT",
    "ldt": "gamma = 1/2, where the classifiers form an ETF whatever R (Behnia et al. 2023)",
    "vs": "gamma = 0.2, tau = 1 (the CIFAR setting of Kini et al., NeurIPS 2021)",
}


@dataclass(frozen=True)
class LossParameters:
    """Per-class parameters of one loss for given counts (arrays of length k)."""

    name: str
    multiplicative: np.ndarray  # Delta
    additive: np.ndarray  # iota
    weights: np.ndarray  # omega
    label_dependent: bool
    hyper: dict[str, float]

    @property
    def changes_geometry(self) -> bool:
        """Whether the separable-limit (implicit) geometry differs from SELI: only multiplicative terms do."""
        return not np.allclose(self.multiplicative, self.multiplicative[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": self.name,
            **self.hyper,
            "Delta": self.multiplicative.tolist(),
            "iota": self.additive.tolist(),
            "omega": self.weights.tolist(),
            "label_dependent": self.label_dependent,
        }


def check_loss(name: Any) -> str:
    return check_choice("loss", str(name).lower() if isinstance(name, str) else name, LOSSES)


def loss_parameters(
    counts: Any,
    loss: str = "ce",
    *,
    gamma: float | None = None,
    tau: float | None = None,
    beta: float | None = None,
) -> LossParameters:
    """Delta, iota, omega for ``loss`` and the given counts; a hyperparameter left as None takes its
    ``PUBLISHED`` value. A hyperparameter that the loss does not use must be None.

    >>> loss_parameters([10, 1], "la", tau=1.0).additive.round(4).tolist()
    [-0.0953, -2.3979]
    """
    counts = check_counts(counts)
    name = check_loss(loss)
    given = {"gamma": gamma, "tau": tau, "beta": beta}
    used = PUBLISHED[name]
    for key, val in given.items():
        if val is not None and key not in used:
            accepted = ", ".join(used) if used else "no hyperparameter"
            raise InvalidParameterError(f"{key} must be unset for loss {name} (it takes {accepted}) (got {val!r})")
    hyper = {key: (used[key] if given[key] is None else given[key]) for key in used}
    # Temperatures must keep their sign: a negative Delta flips logits (the loss is no longer a classifier).
    if "gamma" in hyper:
        hyper["gamma"] = check_float("gamma", hyper["gamma"])
    if "tau" in hyper:
        hyper["tau"] = check_float("tau", hyper["tau"])
    if "beta" in hyper:
        hyper["beta"] = check_float("beta", hyper["beta"], minimum=0.0)
    n = counts.astype(float)
    pi = n / n.sum()
    k = n.size
    Delta = np.ones(k)
    iota = np.zeros(k)
    omega = np.ones(k)
    if name in ("cdt", "ldt", "vs"):
        Delta = (n / n.min()) ** hyper["gamma"]
        Delta = Delta / Delta.mean()
    if name in ("la", "vs"):
        iota = hyper["tau"] * np.log(pi)
    if name == "wce":
        omega = pi ** (-hyper["beta"])
        omega = omega / omega.mean()
    return LossParameters(name, Delta, iota, omega, name == "ldt", hyper)


def check_temperatures(Delta: Any, k: int) -> np.ndarray:
    """Explicit multiplicative temperatures: k positive finite numbers."""
    arr = np.asarray(Delta, dtype=float).reshape(-1)
    if arr.size != k or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InvalidParameterError(f"Delta must be {k} positive temperatures, one per class (got {np.asarray(Delta).tolist()!r})")
    return arr


def simulator_loss(counts: Any, params: LossParameters, *, reduction: str = "sum", device: Any = "cpu") -> Any:
    """The core :class:`~implicit_geometry.train.losses.CrossEntropy` (log domain, batched) for ``params``,
    with samples ordered by class (as ``ClassGeometry.labels``)."""
    from implicit_geometry.train.losses import CrossEntropy

    counts = check_counts(counts)
    labels = np.repeat(np.arange(counts.size), counts)
    return CrossEntropy(
        labels, counts.size, reduction=reduction, multiplicative=params.multiplicative, additive=params.additive,
        weights=params.weights, label_dependent=params.label_dependent, device=device,
    )


def _torch_module_base() -> type:
    import torch

    return torch.nn.Module


class ImbalancedCrossEntropy(_torch_module_base()):  # type: ignore[misc]
    """Plain PyTorch loss (``nn.Module``) for any model: ``forward(logits (N x k), targets (N,))``.

    ``reduction="mean"`` averages ``omega_y * CE(z', y)`` over the N samples (not over the weights, unlike
    ``torch.nn.CrossEntropyLoss(weight=...)``); ``"sum"`` sums; ``"none"`` returns per-sample losses.

    >>> import torch
    >>> crit = ImbalancedCrossEntropy([50, 5], "vs", gamma=0.2, tau=1.0)
    >>> crit(torch.zeros(3, 2), torch.tensor([0, 1, 1])).shape
    torch.Size([])
    """

    def __init__(self, counts: Any, loss: str = "ce", *, gamma: float | None = None, tau: float | None = None,
                 beta: float | None = None, reduction: str = "mean") -> None:
        import torch

        super().__init__()
        self.params = loss_parameters(counts, loss, gamma=gamma, tau=tau, beta=beta)
        self.reduction = check_choice("reduction", reduction, ["mean", "sum", "none"])
        self.register_buffer("Delta", torch.as_tensor(self.params.multiplicative, dtype=torch.float64))  # cast to the logits dtype in forward
        self.register_buffer("iota", torch.as_tensor(self.params.additive, dtype=torch.float64))  # cast to the logits dtype in forward
        self.register_buffer("omega", torch.as_tensor(self.params.weights, dtype=torch.float64))  # cast to the logits dtype in forward

    def adjusted_logits(self, logits: Any, targets: Any) -> Any:
        Delta = self.Delta.to(logits.dtype)
        scale = Delta[targets][:, None] if self.params.label_dependent else Delta[None, :]
        return logits * scale + self.iota.to(logits.dtype)[None, :]

    def forward(self, logits: Any, targets: Any) -> Any:
        import torch.nn.functional as F

        if logits.ndim != 2 or logits.shape[1] != self.Delta.numel():
            raise InvalidParameterError(f"logits must be an N x {self.Delta.numel()} matrix (got shape {tuple(logits.shape)})")
        per = F.cross_entropy(self.adjusted_logits(logits, targets), targets, reduction="none")
        per = per * self.omega.to(logits.dtype)[targets]
        if self.reduction == "none":
            return per
        return per.sum() if self.reduction == "sum" else per.mean()
