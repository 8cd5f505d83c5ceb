"""Geometry targets (closed-form predictions) and the metrics that compare learned geometry with them."""

from implicit_geometry.geometry.metrics import (
    class_means,
    effective_rank,
    margins,
    nc1,
    nc2,
    nc3,
    nc4,
    neural_collapse_metrics,
    normalized_distance,
    stable_rank,
)
from implicit_geometry.geometry.targets import (
    ClassGeometry,
    etf_geometry,
    labels_from_counts,
    one_hot,
    sel_matrix,
    seli_geometry,
    simplex_etf,
    step_imbalance_counts,
)

__all__ = [
    "ClassGeometry",
    "class_means",
    "effective_rank",
    "etf_geometry",
    "labels_from_counts",
    "margins",
    "nc1",
    "nc2",
    "nc3",
    "nc4",
    "neural_collapse_metrics",
    "normalized_distance",
    "one_hot",
    "sel_matrix",
    "seli_geometry",
    "simplex_etf",
    "stable_rank",
    "step_imbalance_counts",
]
