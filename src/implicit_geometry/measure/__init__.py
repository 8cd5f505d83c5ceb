"""Measure the geometry of real networks: one-pass mergeable statistics, hooks, per-layer metrics, alignment.

Python API: :func:`measure` (any module, any data loader); CLI: ``igeom measure``.
"""

from implicit_geometry.measure.accumulators import Agreement, ClassStats, CrossMoments, RowSample, chan_merge, shifted_to_central
from implicit_geometry.measure.api import collect, measure, summarize
from implicit_geometry.measure.hooks import LayerTaps
from implicit_geometry.measure.metrics import alignment, cdnv, class_metrics, debiased_cka, linear_cka, mutual_knn, permutation_null

__all__ = [
    "Agreement", "ClassStats", "CrossMoments", "LayerTaps", "RowSample", "alignment", "cdnv", "chan_merge", "class_metrics",
    "collect", "debiased_cka", "linear_cka", "measure", "mutual_knn", "permutation_null", "shifted_to_central", "summarize",
]
