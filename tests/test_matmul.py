"""The deep UFM's matrix products through NumPy's BLAS (``implicit_geometry._matmul``): the same products as torch's
to rounding for every kind of operand the toolkit passes (views, broadcasts, expanded tensors), torch's own route
wherever NumPy's does not apply (small, autograd, torch.func, mixed dtypes, bad shapes), and whole computations of
the depth plateau steps that agree between the two routes."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from implicit_geometry import _matmul
from implicit_geometry._matmul import MIN_ROUTED_MACS, baddbmm, matmul, torch_products
from implicit_geometry.models.ufm import DeepUFM


def _close(x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype = torch.float64) -> bool:
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    return x.shape == y.shape and x.dtype == y.dtype and bool(torch.allclose(x, y, rtol=tol, atol=tol * float(y.abs().max())))


def _operands(dtype: torch.dtype):
    """(a, b) pairs of every form the depth code multiplies: batched, transposed views, broadcast 4-D and 5-D,
    expanded (zero-stride) identities, 2-D."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    C, C_tall = r(3, 4, 100, 90), r(3, 4, 400, 90)
    return [
        (r(3, 100, 100), r(3, 100, 10)),
        (r(3, 100, 10).transpose(1, 2), r(3, 100, 100)),  # A^T G: a transposed view
        (r(3, 100, 100), r(3, 10, 100).transpose(1, 2)),
        (C_tall.transpose(-1, -2), r(3, 400, 4).transpose(1, 2)[..., None]),  # matrix times vector, per sample
        (C.transpose(-1, -2), r(3, 100, 60)[:, None]),  # broadcast over samples (4-D)
        (r(3, 2, 4, 90, 100), C[:, None]),  # 5-D against a broadcast 4-D
        (torch.eye(100, dtype=dtype).expand(3, 100, 100), r(3, 100, 10)),  # zero strides
        (r(100, 100), r(100, 50)),
        (r(3, 100, 100), r(100, 10)),  # batch against 2-D
    ]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_routed_products_agree_with_torch(dtype):
    for a, b in _operands(dtype):
        per_run = a.numel() // a.shape[0] if a.dim() > 2 else a.numel()
        assert per_run * b.shape[-1] >= MIN_ROUTED_MACS  # these take NumPy's route
        assert _close(matmul(a, b), a @ b, dtype)
        c = torch.randn((a @ b).shape[-2:], dtype=dtype)  # broadcast over the batch
        assert _close(baddbmm(c, a, b), c + a @ b, dtype)
        with torch_products():
            assert torch.equal(matmul(a, b), a @ b)
    a, b = _operands(torch.float64)[0]
    c = torch.randn(3, 100, 10, dtype=torch.float64)
    with torch_products():
        assert torch.equal(baddbmm(c, a, b), torch.baddbmm(c, a, b))


def test_results_are_fresh_tensors_that_can_be_written():
    a, b = torch.randn(2, 100, 100, dtype=torch.float64), torch.randn(2, 100, 10, dtype=torch.float64)
    out = matmul(a, b)
    before_a, before_b = a.clone(), b.clone()
    out[..., :5] += 1.0  # in-place on the result (hessian_vector_product's Q += v R) leaves the operands alone
    assert torch.equal(a, before_a) and torch.equal(b, before_b)
    assert out.is_contiguous() or out.stride()[-1] == 1


def test_torch_products_nests_and_restores():
    assert _matmul._NUMPY
    with torch_products():
        with torch_products():
            assert not _matmul._NUMPY
        assert not _matmul._NUMPY
    assert _matmul._NUMPY
    with pytest.raises(KeyError), torch_products():
        raise KeyError("restored on the way out")
    assert _matmul._NUMPY


def test_small_products_keep_torchs_route_bit_for_bit():
    a, b = torch.randn(64, 10, 20, dtype=torch.float64), torch.randn(64, 20, 100, dtype=torch.float64)
    assert 10 * 20 * 100 < MIN_ROUTED_MACS <= a.numel() * 100  # small for each run, however many runs
    assert torch.equal(matmul(a, b), a @ b)
    x, y = torch.randn(3, 10, 40, dtype=torch.float64)[..., :20], torch.randn(3, 100, 20, dtype=torch.float64).transpose(1, 2)
    assert torch.equal(matmul(x, y), x @ y)  # views too


@pytest.mark.parametrize("shape", [(10, 20, 100), (100, 100, 10), (10, 100, 50), (40, 9, 10, 9), (50, 50, 9, 10, 9)])
def test_a_runs_bits_do_not_depend_on_its_batch(shape):
    """Sweeps batch runs, and a run's numbers must not depend on what else is in its batch: each run of a stack gives
    the bits it gives alone, on either side of the size rule (which looks at one run, not the batch), also where a
    run is itself a stack of tiny matrices (the logit kernel's blocks: NumPy's route)."""
    *outer, m, k, n = shape
    a, b = torch.randn(7, *outer, m, k, dtype=torch.float64), torch.randn(7, *outer, k, n, dtype=torch.float64)
    stacked = matmul(a, b)
    for i in range(7):
        assert torch.equal(stacked[i : i + 1], matmul(a[i : i + 1], b[i : i + 1]))


def test_autograd_and_torch_func_take_torchs_route():
    a = torch.randn(2, 100, 100, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 100, 10, dtype=torch.float64)
    matmul(a, b).sum().backward()
    assert torch.allclose(a.grad, b.sum(-1, keepdim=True).transpose(1, 2).expand(2, 100, 100), rtol=1e-12)
    da = torch.randn_like(a)
    _, tangent = torch.func.jvp(lambda x: matmul(x, b), (a.detach(),), (da,))
    assert torch.allclose(tangent, da @ b, rtol=1e-12)


def test_bad_operands_raise_torchs_errors():
    a = torch.randn(3, 100, 100, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        matmul(a, torch.randn(3, 99, 10, dtype=torch.float64))  # inner sizes differ
    with pytest.raises(RuntimeError):
        matmul(a, torch.randn(3, 100, 10, dtype=torch.float32))  # mixed dtypes: torch refuses, so do we
    ints = torch.ones(2, 100, 100, dtype=torch.int64)
    assert torch.equal(matmul(ints, ints), ints @ ints)  # other dtypes: torch's product


def test_overflow_gives_inf_without_a_warning():
    a = torch.full((2, 100, 100), 1e300, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = matmul(a, a[..., :10])
    assert bool(torch.isinf(out).all())


def test_depth_chain_and_curvature_agree_between_the_routes():
    """Gradients, Hessian-vector products and the scaled logit kernel of a depth-6 chain at d = 100: the same to
    rounding whichever library multiplies."""
    import numpy as np

    from implicit_geometry.depth.curvature import hessian_vector_product, scaled_logit_kernel, softmax_root
    from implicit_geometry.train.losses import CrossEntropy

    labels = np.repeat(np.arange(10), 5)
    loss = CrossEntropy(labels, 10)
    model = DeepUFM.random(num_classes=10, num_samples=50, dim=100, depth=6, batch=2, init_std=0.3, seeds=[0, 1])
    g = torch.Generator().manual_seed(3)
    v = [torch.randn(F.shape, generator=g, dtype=F.dtype) for F in model.factors]
    dt = torch.full((2,), 0.5, dtype=torch.float64)

    def compute():
        chain = model.chain()
        G, _ = loss.scaled_gradient(chain.logits)
        C = softmax_root(loss, chain.logits)
        _, system = scaled_logit_kernel(loss, chain, dt)
        return [chain.logits, *chain.pullback(G), *hessian_vector_product(chain, G, C, v), system]

    routed = compute()
    with torch_products():
        reference = compute()
    for x, y in zip(routed, reference):
        assert _close(x, y)


def test_sweep_workers_run_blas_on_one_thread():
    code = ("from implicit_geometry.sweep.runner import _set_threads; from threadpoolctl import threadpool_info; "
            "import torch; _set_threads(1); "
            "print(torch.get_num_threads(), sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(maxsplit=1)
    assert out == ["1", "[1]\n"]
