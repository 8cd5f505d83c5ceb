"""Measurement of real networks: accumulators (one shared harness), hooks, metrics, data, models, experiments."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from implicit_geometry._validation import InvalidParameterError
from implicit_geometry.geometry.metrics import nc1, nc2, nc3, nc4
from implicit_geometry.geometry.targets import seli_geometry, simplex_etf
from implicit_geometry.measure.accumulators import Agreement, ClassStats, CrossMoments, RowSample

RTOL = 1e-10


# ----------------------------------------------------------------------------------------------------------
# Independent full-batch references (direct two-pass NumPy)
# ----------------------------------------------------------------------------------------------------------
def ref_class_stats(H: np.ndarray, y: np.ndarray, K: int) -> dict[str, np.ndarray]:
    counts = np.bincount(y, minlength=K).astype(float)
    means = np.stack([H[y == c].mean(0) for c in range(K)])
    R = H - means[y]
    return {
        "counts": counts, "means": means, "within_scatter": R.T @ R,
        "class_var": np.array([(R[y == c] ** 2).sum() / counts[c] for c in range(K)]),
        "class_scatter": np.stack([R[y == c].T @ R[y == c] for c in range(K)]),
    }


def ref_cross(X: np.ndarray, Y: np.ndarray) -> dict[str, np.ndarray]:
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    return {"mean_x": X.mean(0), "mean_y": Y.mean(0), "Cxx": Xc.T @ Xc, "Cyy": Yc.T @ Yc, "Cxy": Xc.T @ Yc}


def ref_agreement(H, Z, y, centers):
    d = ((H[:, None, :] - centers[None]) ** 2).sum(2)
    return {"nc4": np.mean(Z.argmax(1) != d.argmin(1)), "accuracy": np.mean(Z.argmax(1) == y)}


def _close(got: dict, want: dict) -> None:
    for key, w in want.items():
        g = got[key].cpu().numpy() if hasattr(got[key], "cpu") else np.asarray(got[key])
        scale = max(np.abs(w).max(), 1.0)
        assert np.abs(g - w).max() <= RTOL * scale, (key, np.abs(g - w).max(), scale)


def _data(seed=0, n=600, d=7, K=5, offset=1e3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    y[:K] = np.arange(K)
    centers = rng.normal(size=(K, d)) * 3
    H = offset + centers[y] + rng.normal(size=(n, d))  # a large offset tests the stability of the one-pass form
    return H, y, K


# Each case: make an empty accumulator, feed it rows [i:j], and the reference on all rows.
def _cases():
    H, y, K = _data()
    Z = H[:, :K] @ np.random.default_rng(1).normal(size=(K, K))
    centers = ref_class_stats(H, y, K)["means"]
    X2 = np.random.default_rng(2).normal(size=(len(y), 3)) + H[:, :3] ** 2 / 1e3
    return {
        "class_stats": (lambda: ClassStats(H.shape[1], K, per_class=True), lambda a, i, j: a.update(torch.tensor(H[i:j]), torch.tensor(y[i:j])),
                        ref_class_stats(H, y, K)),
        "class_means_only": (lambda: ClassStats(H.shape[1], K, scatter=False), lambda a, i, j: a.update(torch.tensor(H[i:j]), torch.tensor(y[i:j])),
                             {k: v for k, v in ref_class_stats(H, y, K).items() if k in ("counts", "means", "class_var")}),
        "cross_moments": (lambda: CrossMoments(H.shape[1], 3), lambda a, i, j: a.update(torch.tensor(H[i:j]), torch.tensor(X2[i:j])),
                          ref_cross(H, X2)),
        "agreement": (lambda: Agreement(torch.tensor(centers)), lambda a, i, j: a.update(torch.tensor(H[i:j]), torch.tensor(Z[i:j]), torch.tensor(y[i:j])),
                      ref_agreement(H, Z, y, centers)),
    }


CASES = _cases()
N_ROWS = 600


@pytest.mark.parametrize("name", list(CASES))
def test_accumulator_equals_full_batch_for_any_split(name):
    make, feed, want = CASES[name]
    rng = np.random.default_rng(3)
    # one full batch
    _close(feed(make(), 0, N_ROWS).compute(), want)
    # random batch splits (including batches of one row and batches missing classes)
    for _ in range(3):
        cuts = np.sort(rng.choice(np.arange(1, N_ROWS), size=rng.integers(1, 40), replace=False))
        acc = make()
        for i, j in zip([0, *cuts], [*cuts, N_ROWS]):
            feed(acc, i, j)
        _close(acc.compute(), want)
    # shards merged (in a tree), and a state_dict round-trip in the middle of a stream
    shards = [feed(make(), i, j) for i, j in ((0, 1), (1, 250), (250, 251), (251, 600))]
    left, right = shards[0].merge(shards[1]), shards[2].merge(shards[3])
    _close(left.merge(right).compute(), want)
    a = feed(make(), 0, 333)
    b = make().load_state_dict(a.state_dict())
    _close(feed(b, 333, N_ROWS).compute(), want)


def _gloo_worker(rank: int, world: int, path: str, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    out = {}
    for name, (make, feed, _) in CASES.items():
        bounds = (0, 217) if rank == 0 else (217, N_ROWS)
        out[name] = {k: v.numpy() for k, v in feed(make(), *bounds).all_reduce().compute().items()}
    H, y, K = _data()
    rs = RowSample(H.shape[1], size=50, seed=rank).update(torch.tensor(H[rank::2]), torch.tensor(y[rank::2])).all_reduce()
    out["rowsample"] = rs.rows.numpy()
    dist.destroy_process_group()
    torch.save(out, f"{path}.{rank}")


def test_all_reduce_two_gloo_processes_equals_full_batch(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_gloo_worker, args=(2, str(tmp_path / "r"), port), nprocs=2, join=True, start_method="fork")
    r0, r1 = torch.load(tmp_path / "r.0", weights_only=False), torch.load(tmp_path / "r.1", weights_only=False)
    for name, (_, _, want) in CASES.items():
        _close(r0[name], want)
        _close(r1[name], want)
    np.testing.assert_array_equal(r0["rowsample"], r1["rowsample"])  # every process holds the same merged sample
    assert r0["rowsample"].shape[0] == 50


def test_class_stats_float32_bf16_inputs_and_memory_independent_of_rows():
    H, y, K = _data(offset=0.0)
    want = ref_class_stats(H.astype(np.float32).astype(np.float64), y, K)
    got = ClassStats(H.shape[1], K).update(torch.tensor(H, dtype=torch.float32), torch.tensor(y)).compute()
    _close(got, {k: want[k] for k in ("counts", "means", "within_scatter")})
    hb = torch.tensor(H, dtype=torch.bfloat16)
    got = ClassStats(H.shape[1], K).update(hb, torch.tensor(y)).compute()
    assert got["means"].dtype == torch.float64
    _close(got, {"means": ref_class_stats(hb.double().numpy(), y, K)["means"]})
    acc = ClassStats(H.shape[1], K)
    sizes = []
    for rep in range(3):
        acc.update(torch.tensor(H), torch.tensor(y))
        sizes.append(sum(v.numel() for v in acc.state_dict().values()))
    assert len(set(sizes)) == 1


def test_accumulator_bad_input():
    acc = ClassStats(3, 2)
    with pytest.raises(InvalidParameterError, match="labels must be class indices"):
        acc.update(torch.zeros(2, 3), torch.tensor([0, 5]))
    with pytest.raises(InvalidParameterError, match=r"features must have shape \(B, 3\)"):
        acc.update(torch.zeros(2, 4), torch.tensor([0, 1]))


def test_rowsample_merge_keeps_smallest_keys():
    H, y, K = _data()
    keys = torch.rand(len(y), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full = RowSample(H.shape[1], 40).update(torch.tensor(H), torch.tensor(y), keys=keys)
    a = RowSample(H.shape[1], 40).update(torch.tensor(H[:100]), torch.tensor(y[:100]), keys=keys[:100])
    b = RowSample(H.shape[1], 40).update(torch.tensor(H[100:]), torch.tensor(y[100:]), keys=keys[100:])
    np.testing.assert_array_equal(a.merge(b).rows.numpy(), full.rows.numpy())
    np.testing.assert_array_equal(full.rows.numpy(), H[np.argsort(keys.numpy())[:40]])
