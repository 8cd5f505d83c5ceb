"""implicit-geometry: predict, simulate and measure the geometry that training implicitly gives to learned
representations (log-bilinear softmax models, unconstrained features, neural collapse, SELI).

>>> import implicit_geometry as ig
>>> g = ig.seli_geometry([20, 20, 2])
>>> round(ig.normalized_distance(g.class_logits, ig.etf_geometry([1, 1, 1]).class_logits), 12)
0.0
"""

from implicit_geometry._validation import InvalidParameterError
from implicit_geometry.geometry import (
    ClassGeometry,
    effective_rank,
    etf_geometry,
    margins,
    nc1,
    nc2,
    nc3,
    nc4,
    neural_collapse_metrics,
    normalized_distance,
    sel_matrix,
    seli_geometry,
    simplex_etf,
    stable_rank,
    step_imbalance_counts,
)

__version__ = "0.1.0"

__all__ = [
    "ClassGeometry",
    "InvalidParameterError",
    "effective_rank",
    "etf_geometry",
    "margins",
    "nc1",
    "nc2",
    "nc3",
    "nc4",
    "neural_collapse_metrics",
    "normalized_distance",
    "sel_matrix",
    "seli_geometry",
    "simplex_etf",
    "stable_rank",
    "step_imbalance_counts",
]
