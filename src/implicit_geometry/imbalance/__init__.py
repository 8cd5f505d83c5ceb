"""Label imbalance: imbalance-aware CE parameterizations, their predicted UFM geometry (max margin, closed forms
for step imbalance, ridge), and the cvxpy references that check them."""

from implicit_geometry.imbalance.closed_form import StepGeometry, step_closed_form, step_summary
from implicit_geometry.imbalance.losses import (
    LOSSES,
    PUBLISHED,
    ImbalancedCrossEntropy,
    LossParameters,
    loss_parameters,
    simulator_loss,
)
from implicit_geometry.imbalance.predict import (
    SolveInfo,
    geometry_from_class_logits,
    imbalance_geometry,
    max_margin_logits,
    ridge_geometry,
    ridge_logits,
)

__all__ = [
    "LOSSES",
    "PUBLISHED",
    "ImbalancedCrossEntropy",
    "LossParameters",
    "SolveInfo",
    "StepGeometry",
    "geometry_from_class_logits",
    "imbalance_geometry",
    "loss_parameters",
    "max_margin_logits",
    "ridge_geometry",
    "ridge_logits",
    "simulator_loss",
    "step_closed_form",
    "step_summary",
]
