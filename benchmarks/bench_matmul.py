"""The deep UFM's products through NumPy's BLAS against torch's (oneMKL in the CPU wheel), in the same run.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_matmul.py [--depth 10] [--rounds 3] [--cell-depth 6]

The depth sweep's plateau steps are made of skinny float64 products of d x d factors with d x k ones (d = 100,
k = 10, N = 50 samples at the paper's setting). ``implicit_geometry._matmul`` routes them through NumPy; inside
``torch_products()`` they go through torch. For each kernel of a plateau step (the chain's left products, the
pull-back, the Hessian-vector product, the scaled logit kernel) and for a whole run of ``igeom run depth`` (one seed
at ``--cell-depth``, through its saddle plateau), the two routes are timed alternately, ``--rounds`` times, and the
median of the per-round ratios torch/NumPy is printed (above 1: NumPy's route is faster). Single-threaded, like the
sweep's workers.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from implicit_geometry import _matmul
from implicit_geometry._matmul import torch_products
from implicit_geometry.depth.curvature import hessian_vector_product, scaled_logit_kernel, softmax_root
from implicit_geometry.experiments.depth import DepthConfig, run_depth
from implicit_geometry.models.ufm import DeepUFM
from implicit_geometry.train.losses import CrossEntropy


def seconds_per_call(fn: Callable[[], object], min_time: float = 0.2) -> float:
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
        if t >= min_time:
            return t / n
        n *= 2


def compare(name: str, fn: Callable[[], object], rounds: int, min_time: float = 0.2) -> float:
    fn()  # warm-up
    ratios, numpy_t, torch_t = [], [], []
    for _ in range(rounds):
        tn = seconds_per_call(fn, min_time)
        with torch_products():
            tt = seconds_per_call(fn, min_time)
        numpy_t.append(tn)
        torch_t.append(tt)
        ratios.append(tt / tn)
    ratio = statistics.median(ratios)
    print(f"{name:<42} torch {statistics.median(torch_t) * 1e3:9.3f} ms   numpy {statistics.median(numpy_t) * 1e3:9.3f} ms"
          f"   torch/numpy {ratio:5.2f}x  (rounds {', '.join(f'{r:.2f}' for r in ratios)})")
    return ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--dim", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cell-depth", type=int, default=6)
    a = p.parse_args()
    torch.set_num_threads(1)
    K, n = 10, 5
    labels = np.repeat(np.arange(K), n)
    loss = CrossEntropy(labels, K)
    print(f"K = {K}, n = {n}, d = {a.dim}, L = {a.depth}, float64, 1 thread; {a.rounds} alternating rounds")
    ratios = []
    for batch in (1, 5):
        model = DeepUFM.random(num_classes=K, num_samples=K * n, dim=a.dim, depth=a.depth, batch=batch, init_std=0.3,
                               seeds=list(range(batch)))
        chain = model.chain()
        G, _ = loss.scaled_gradient(chain.logits)
        C = softmax_root(loss, chain.logits)
        g = torch.Generator().manual_seed(1)
        v = [torch.randn(F.shape, generator=g, dtype=F.dtype) for F in model.factors]
        dt = torch.full((batch,), 0.5, dtype=torch.float64)
        ratios.append(compare(f"B={batch}: chain (left products, logits)", model.chain, a.rounds))
        kernels = {
            "pull-back (gradients)": partial(chain.pullback, G),
            "Hessian-vector product": partial(hessian_vector_product, chain, G, C, v),
            "scaled logit kernel": partial(scaled_logit_kernel, loss, chain, dt),
        }
        for name, kernel in kernels.items():
            ratios.append(compare(f"B={batch}: {name}", kernel, a.rounds))
    # a whole run of the depth experiment (explicit steps, plateau steps, code phase): seed 1 at --cell-depth
    with tempfile.TemporaryDirectory() as tmp:
        outcome: dict[str, tuple[int, float]] = {}
        folders = (Path(tmp) / f"run{i}" for i in itertools.count())
        config = DepthConfig(depths=[a.cell_depth], seeds=1, first_seed=1, dims=[a.dim], max_steps=20000)

        def cell() -> None:
            row = run_depth(config, next(folders), progress=False, figures=False)["runs"][0]
            outcome["numpy" if _matmul._NUMPY else "torch"] = (row["plateau_steps"], row["effective_rank"])

        ratios.append(compare(f"B=1: igeom run depth, L = {a.cell_depth}, seed 1", cell, a.rounds, min_time=0.0))
    print("  plateau steps and effective rank, per route: "
          + ", ".join(f"{route} {steps} / {rank:.3f}" for route, (steps, rank) in sorted(outcome.items())))
    print(f"median ratio over the kernels and the run: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
