"""Depth and width: the implicit low-rank bias of deep UFMs and softmax codes.

- :mod:`~implicit_geometry.depth.codes`: max-margin (softmax) codes, exact one-vs-rest distances.
- :mod:`~implicit_geometry.depth.reading`: ranks, Gram factor, angles, best code and ETF distance of mean logits.
- :mod:`~implicit_geometry.depth.efficiency`: margin at equal parameter norm, depth at which low rank wins.
- :mod:`~implicit_geometry.depth.curvature`: directional logits, softmax Hessian, Gauss-Newton system, Hessian-vector products.
- :mod:`~implicit_geometry.depth.stepping`: path-following steps for any depth from small initialization, with
  backward-Euler steps on saddle plateaus.
"""

from implicit_geometry.depth.codes import SoftmaxCode, known_optimum, one_vs_rest_distances, softmax_code
from implicit_geometry.depth.efficiency import compare_geometries, margin_at_norm, overtaking_depth
from implicit_geometry.depth.reading import GeometryReading, read_geometry

__all__ = [
    "GeometryReading",
    "SoftmaxCode",
    "compare_geometries",
    "known_optimum",
    "margin_at_norm",
    "one_vs_rest_distances",
    "overtaking_depth",
    "read_geometry",
    "softmax_code",
]
