"""Matrix products of the deep UFM's small factors, on CPU through NumPy's BLAS.

torch's CPU wheel multiplies through oneMKL. On the AMD EPYC machines this toolkit is developed and benchmarked on,
MKL runs the skinny double-precision products of a deep UFM (d x d by d x k, d = 100, k = 10) at ~12 GFLOP/s: 17 us
where NumPy's OpenBLAS takes 5 us, and the pull-back of a depth-10 chain takes 1.5-2x as long
(``benchmarks/bench_matmul.py`` measures both routes in the same run). The implicit plateau steps of ``igeom run
depth`` are made of such products, one run at a time, so the depth sweep takes ~20% longer through MKL.

:func:`matmul` and :func:`baddbmm` take NumPy's route for CPU tensors of one floating dtype that need no gradient,
sharing memory both ways (no copies), where one run's product (the leading dimension of a batched operand counts
runs) has at least :data:`MIN_ROUTED_MACS` multiply-adds; torch's everywhere else (small products, CUDA, autograd,
torch.func, other or mixed dtypes). Where they apply, results agree with torch's to rounding (the two libraries order
their sums differently), each library is deterministic on its own, and a run's route, so its bits, does not depend
on what else is in its batch.

>>> import torch
>>> a, b = torch.randn(3, 100, 100, dtype=torch.float64), torch.randn(3, 100, 10, dtype=torch.float64)
>>> bool(torch.allclose(matmul(a, b), a @ b, rtol=1e-12, atol=1e-12))
True
>>> c = torch.randn(3, 100, 10, dtype=torch.float64)
>>> bool(torch.allclose(baddbmm(c, a, b), torch.baddbmm(c, a, b), rtol=1e-12, atol=1e-12))
True
>>> with torch_products():  # torch's route, bit for bit
...     bool(torch.equal(matmul(a, b), a @ b))
True
>>> matmul(a.requires_grad_(), b).requires_grad  # autograd: torch's product
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

_ROUTED = (torch.float64, torch.float32)
_NUMPY = True  # False inside torch_products()
# multiply-adds of one run's product (a's elements but its leading, run dimension, times b's columns) below which
# torch's product is kept: there the call itself dominates, ~1-2 us more through NumPy (a 10 x 20 by 20 x 100
# product: 3.4 us in torch, 5.9 us routed). From ~10^5 on NumPy's is 1.3-3.6x faster, and on stacks of many tiny
# matrices (the logit kernel's 50 x 50 blocks of 9 x 10 by 10 x 9) 2.6x (benchmarks/bench_matmul.py)
MIN_ROUTED_MACS = 1 << 15


@contextlib.contextmanager
def torch_products() -> Iterator[None]:
    """Every product through torch while inside (``benchmarks/bench_matmul.py`` times both routes in one run)."""
    global _NUMPY
    previous, _NUMPY = _NUMPY, False
    try:
        yield
    finally:
        _NUMPY = previous


@np.errstate(all="ignore")  # overflow to inf/nan without a warning, as torch's products do (callers flag divergence)
def _numpy_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.matmul(a.numpy(), b.numpy()))


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (with ``torch.matmul``'s broadcasting), through NumPy's BLAS where that applies (module docstring)."""
    # one inline test: this runs ~10^6 times a sweep, each product ~5-20 us
    # (is_cpu, not device.type: 50 ns against 300; the size early, so that small products lose little). The size is
    # one run's (the leading dimension of a batched operand counts runs), never the batch's: a run's product takes the
    # same route, and gives the same bits, whatever else is in its batch (both libraries multiply a stack matrix by
    # matrix, each matrix as it would alone)
    if (_NUMPY and a.is_cpu and b.is_cpu and (dim := a.dim()) >= 2 and b.dim() >= 2
            and (a.numel() // max(a.shape[0], 1) if dim > 2 else a.numel()) * b.shape[-1] >= MIN_ROUTED_MACS
            and a.dtype in _ROUTED and b.dtype == a.dtype and not (a.requires_grad or b.requires_grad)):
        try:
            return _numpy_product(a, b)
        except (RuntimeError, ValueError):  # no storage (torch.func's wrappers) or shapes that do not match: torch's
            pass  # route, with torch's own error
    return a @ b


def baddbmm(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``c + a @ b`` (``torch.baddbmm`` with unit weights; c broadcasts), through NumPy's BLAS where that applies."""
    if _NUMPY and c.is_cpu and not (a.requires_grad or b.requires_grad or c.requires_grad):
        return matmul(a, b).add_(c)
    return torch.baddbmm(c, a, b)
