"""Measurement of real networks: accumulators (one shared harness), hooks, metrics, data, models, experiments."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import stop_after
from implicit_geometry._validation import InvalidParameterError
from implicit_geometry.geometry.metrics import nc1, nc2, nc3, nc4
from implicit_geometry.geometry.targets import seli_geometry
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


# ----------------------------------------------------------------------------------------------------------
# Metrics against exact geometries, sample-level formulas and invariances
# ----------------------------------------------------------------------------------------------------------
from implicit_geometry.measure.metrics import (  # noqa: E402
    class_metrics, debiased_cka, linear_cka, linear_cka_from_moments, mutual_knn, permutation_null,
)


def _psd_root(G):
    vals, vecs = np.linalg.eigh(G)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T  # symmetric root: rows are vectors with Gram G


def test_class_metrics_zero_on_exact_seli_and_not_on_etf():
    counts = np.array([50, 50, 5, 5, 5])
    g = seli_geometry(counts)
    M = _psd_root(g.mean_gram) + 7.0  # class means (K x K) with a common offset, which softmax-level targets ignore
    W = _psd_root(g.W_gram)
    # Symmetric roots: W = U L^1/2 U^T and M = U L^-1/2 U^T, so W M^T = U U^T = S, SELI's logits.
    Z = W @ M.T  # K x K: column c = mean logit of class c
    stats = {"counts": counts, "means": M, "sigma_w": 1e-8 * np.eye(5), "class_var": np.full(5, 5e-8)}
    m = class_metrics(stats, W=W, mean_logits=Z)
    for key in ("seli_dist_means", "seli_dist_W", "seli_dist_logits"):
        assert m[key] < 1e-8, (key, m[key])
    assert m["etf_dist_means"] > 0.1 and m["etf_dist_W"] > 0.1
    assert abs(m["effective_rank_mean_logits"] - np.exp(-np.sum(np.full(4, 0.25) * np.log(0.25)))) < 1e-6  # S has 4 equal singular values


def test_class_metrics_match_sample_level_metrics_and_invariances():
    rng = np.random.default_rng(5)
    H, y, K = _data(seed=5, n=400, d=6, K=4, offset=3.0)
    W = rng.normal(size=(K, 6))
    st = {k: v.numpy() for k, v in ClassStats(6, K).update(torch.tensor(H), torch.tensor(y)).compute().items()}
    m = class_metrics(st, W=W)
    assert abs(m["nc1"] - nc1(H.T, y)) < 1e-9 * nc1(H.T, y)
    assert abs(m["nc3"] - nc3(H.T, y, W)) < 1e-12
    ref2 = nc2(H.T, y, W)
    for key in ("equinorm_means", "equiangular_means", "maxangle_means"):
        assert abs(m[key] - ref2[key]) < 1e-10
    # CDNV against the definition, pair by pair
    mu = np.stack([H[y == c].mean(0) for c in range(K)])
    var = np.array([((H[y == c] - mu[c]) ** 2).sum(1).mean() for c in range(K)])
    pairs = [(var[a] + var[b]) / (2 * np.sum((mu[a] - mu[b]) ** 2)) for a in range(K) for b in range(K) if a != b]
    assert abs(m["cdnv"] - np.mean(pairs)) < 1e-10
    # invariant to a rotation of the feature space (with W), to relabeling, and to scale
    Q = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    perm = np.array([2, 0, 3, 1])
    st2 = {k: v.numpy() for k, v in ClassStats(6, K).update(torch.tensor(2.5 * H @ Q.T), torch.tensor(perm[y])).compute().items()}
    W2 = np.empty_like(W)
    W2[perm] = W @ Q.T
    m2 = class_metrics(st2, W=W2)
    for key in ("nc1", "cdnv", "nc3", "equinorm_means", "seli_dist_means", "etf_dist_W", "effective_rank_means"):
        assert abs(m[key] - m2[key]) < 1e-8 * max(1, abs(m[key])), key


def _hsic_u_bruteforce(K, L):
    from itertools import permutations

    n = K.shape[0]
    total = 0.0
    for i, j, q, r in permutations(range(n), 4):
        total += K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2 * K[i, j] * L[i, q]
    return total / (n * (n - 1) * (n - 2) * (n - 3))


def test_alignment_metrics():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(7, 3))
    Y = X @ rng.normal(size=(3, 2)) + 0.3 * rng.normal(size=(7, 2))
    Kx, Ly = X @ X.T, Y @ Y.T
    want = _hsic_u_bruteforce(Kx, Ly) / np.sqrt(_hsic_u_bruteforce(Kx, Kx) * _hsic_u_bruteforce(Ly, Ly))
    assert abs(debiased_cka(X, Y) - want) < 1e-10
    # linear CKA: invariant to rotations, isotropic scaling and translation; streamed moments give the same number
    X = rng.normal(size=(200, 5))
    Y = np.tanh(X @ rng.normal(size=(5, 4)))
    Q = np.linalg.qr(rng.normal(size=(5, 5)))[0]
    assert abs(linear_cka(X, Y) - linear_cka(3 * X @ Q + 1.0, Y)) < 1e-12
    c = CrossMoments(5, 4).update(torch.tensor(X[:77]), torch.tensor(Y[:77])).merge(CrossMoments(5, 4).update(torch.tensor(X[77:]), torch.tensor(Y[77:]))).compute()
    assert abs(linear_cka_from_moments(c["Cxx"], c["Cyy"], c["Cxy"]) - linear_cka(X, Y)) < 1e-12
    assert mutual_knn(X, 2 * X @ Q, k=5) == 1.0
    r = permutation_null(lambda a, b: mutual_knn(a, b, 5), X, rng.normal(size=(200, 5)), permutations=5)
    assert abs(r["null_mean"] - 5 / 199) < 0.02 and r["p_value"] > 0.05  # unrelated data: at chance
    r = permutation_null(debiased_cka, X, Y, permutations=5)
    assert r["score"] > 0.3 and abs(r["null_mean"]) < 0.05 and r["p_value"] < 0.2


# ----------------------------------------------------------------------------------------------------------
# Hooks, the measure() API, models
# ----------------------------------------------------------------------------------------------------------
from implicit_geometry.measure.api import measure  # noqa: E402
from implicit_geometry.measure.hooks import LayerTaps  # noqa: E402
from implicit_geometry.models.networks import build, load_model, save_model  # noqa: E402


def _tiny_data(n=240, K=4):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % K
    x = torch.randn(K, 1, 6, 6, generator=g)[y] + 0.5 * torch.randn(n, 1, 6, 6, generator=g)
    return x, y


def test_measure_matches_direct_full_batch_metrics():
    from implicit_geometry.measure.data import TensorBatches

    x, y = _tiny_data()
    torch.manual_seed(0)
    net = build("mlp", in_shape=(1, 6, 6), num_classes=4, width=16, depth=2).double()
    r = measure(net, TensorBatches(x.double(), y, 50), 4, ["head.1", "penultimate", "logits"], permutations=3, sample_rows=100)
    with torch.no_grad():
        Hd = net.head(net.trunk(x.double())).numpy()
        Zd = net(x.double()).numpy()
    W, b = net.classifier.weight.detach().numpy(), net.classifier.bias.detach().numpy()
    pen = r["layers"]["penultimate"]
    assert abs(pen["nc1"] - nc1(Hd.T, y.numpy())) < 1e-9 * nc1(Hd.T, y.numpy())
    assert abs(pen["nc4"] - nc4(Hd.T, y.numpy(), W, b)) < 1e-12
    assert abs(pen["accuracy"] - np.mean(Zd.argmax(1) == y.numpy())) < 1e-12
    np.testing.assert_allclose(r["mean_logits"], np.stack([Zd[y.numpy() == c].mean(0) for c in range(4)]).T, atol=1e-12)
    a = r["alignment"]["head.1|penultimate"]
    assert a["linear_cka_all_rows"] == pytest.approx(linear_cka(net.head[:2](net.trunk(x.double())).detach().numpy(), Hd), abs=1e-10)
    assert a["linear_cka"] > a["linear_cka_null_mean"]


def test_hooks_pool_conv_bf16_and_are_removed():
    x, y = _tiny_data(n=64)
    torch.manual_seed(0)
    net = build("resnet20", in_shape=(1, 6, 6), num_classes=4, width=4).eval()
    with LayerTaps(net, ["layer1", "layer3", "penultimate", "logits"]) as taps:
        net(x)
    assert {k: tuple(v.shape) for k, v in taps.captured.items()} == {"layer1": (64, 4), "layer3": (64, 16), "penultimate": (64, 16), "logits": (64, 4)}
    assert torch.allclose(taps.captured["layer3"], taps.captured["penultimate"])  # penultimate = pooled last stage
    assert all(len(m._forward_hooks) == 0 and len(m._forward_pre_hooks) == 0 for m in net.modules())
    from implicit_geometry.measure.data import TensorBatches

    r32 = measure(net, TensorBatches(x, y, 16), 4, permutations=0)
    r16 = measure(net.to(torch.bfloat16), TensorBatches(x, y, 16), 4, permutations=0)
    assert abs(r16["layers"]["penultimate"]["nc1"] - r32["layers"]["penultimate"]["nc1"]) < 0.1 * r32["layers"]["penultimate"]["nc1"]
    with pytest.raises(InvalidParameterError, match="layers must be module names"):
        LayerTaps(net, ["nope"])


def _cli(args):
    from implicit_geometry.cli import cli

    try:
        cli(args)
    except SystemExit as e:
        return e.code or 0
    return 0


def test_save_load_model_and_measure_cli(tmp_path, capsys):
    import json

    torch.manual_seed(0)
    net = build("mlp", in_shape=(1, 8, 8), num_classes=10, width=16, depth=1)
    save_model(tmp_path / "m.pt", net, "mlp", in_shape=(1, 8, 8), num_classes=10, width=16, depth=1)
    back = load_model(tmp_path / "m.pt")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), back.state_dict().values()))
    assert _cli(["measure", "--model", str(tmp_path / "m.pt"), "--data", "digits", "--max-rows", "300", "--permutations", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == 300 and 0 <= out["layers"]["penultimate"]["nc4"] <= 1
    g = out["logit_geometry"]  # the depth face's reading of the mean logits, centred as for the logit metrics
    assert 1 <= g["numerical_rank"] <= 9 and g["effective_rank"] == pytest.approx(out["layers"]["logits"]["effective_rank_mean_logits"])
    torch.jit.script(net).save(str(tmp_path / "ts.pt"))
    assert _cli(["measure", "--model", str(tmp_path / "ts.pt"), "--data", "digits", "--layers", "logits", "--max-rows", "100", "--permutations", "0"]) == 0
    assert _cli(["measure", "--model", str(tmp_path / "missing.pt"), "--data", "digits"]) == 2
    assert "model must be an existing file" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_text("not a model")
    save_model(tmp_path / "wide.pt", net, "mlp", in_shape=(1, 8, 8), num_classes=10, width=32, depth=1)
    for name, message in (("junk.pt", "model must be TorchScript or a file from"), ("wide.pt", "does not match its architecture 'mlp'")):
        assert _cli(["measure", "--model", str(tmp_path / name), "--data", "digits"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # a model for 28 x 28 images on the 8 x 8 digits, and a negative permutation count: one line each
    save_model(tmp_path / "m28.pt", build("mlp", in_shape=(1, 28, 28), num_classes=10, width=16, depth=1), "mlp",
               in_shape=(1, 28, 28), num_classes=10, width=16, depth=1)
    for args, message in ((["--model", str(tmp_path / "m28.pt")], "model and data do not fit: the model failed on a batch of shape"),
                          (["--model", str(tmp_path / "m.pt"), "--permutations", "-1"], "permutations must be an integer >= 0")):
        assert _cli(["measure", *args, "--data", "digits"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    # a batch-normalized MLP: its running statistics travel with the state dict, and eval outputs agree
    bn = build("mlp", in_shape=(1, 8, 8), num_classes=10, width=16, depth=2, batch_norm=True)
    bn(torch.randn(32, 1, 8, 8))  # train mode: moves the running statistics off their initial values
    save_model(tmp_path / "bn.pt", bn, "mlp", in_shape=(1, 8, 8), num_classes=10, width=16, depth=2, batch_norm=True)
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(bn.eval()(x), load_model(tmp_path / "bn.pt").eval()(x))


@pytest.mark.parametrize("name, kwargs", [("resnet20", dict(in_shape=(1, 8, 8), width=4)),
                                          ("mlp", dict(in_shape=(1, 8, 8), width=16, depth=2, trunk=12, batch_norm=True))])
def test_normalized_weights_are_exactly_the_scale_invariant_ones(name, kwargs):
    from implicit_geometry.models.networks import normalized_weights

    torch.manual_seed(0)
    net = build(name, num_classes=5, **kwargs).double().train()  # train mode: batch statistics, where invariance is exact
    with torch.no_grad():  # off the initial gammas = 1, betas = 0, where scaling a gamma alone is invariant too
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    ref = net(x)
    normed = {id(p) for p in normalized_weights(net)}
    for pname, p in net.named_parameters():
        with torch.no_grad():
            p.mul_(3.0)
            out = net(x)
            p.div_(3.0)
        # up to BatchNorm's eps (1e-5 against unit-scale variances): invariant, or clearly not
        assert (torch.allclose(out, ref, atol=1e-4) if id(p) in normed else not torch.allclose(out, ref, atol=1e-2)), pname
    weights = [p for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for p in [m.weight]]
    assert len(normed) == len(weights) - 1  # every weight but the classifier's


def test_network_weight_decay_normalized(capsys):
    from implicit_geometry.experiments.network import NetworkTrainer, prepare_data
    from implicit_geometry.models.networks import normalized_weights

    cfg = dict(dataset="digits", per_class=8, width=12, depth=2, batch_norm=True, epochs=1, batch_size=16, lr=0.1,
               weight_decay=0.5, device="cpu")
    c = NetworkConfig(**cfg, weight_decay_normalized=0.0).validate()
    trainer = NetworkTrainer(c, prepare_data(c), 0, torch.device("cpu"))
    normed = normalized_weights(trainer.model)
    before = [p.detach().clone() for p in normed]
    w = trainer.model.classifier.weight.detach().clone()
    # a step on a zero loss: only weight decay moves the parameters, so the normalized weights stay put and the rest shrink
    trainer.opt.zero_grad()
    sum(0.0 * p.sum() for p in trainer.model.parameters()).backward()
    trainer.opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, normed))
    assert torch.allclose(trainer.model.classifier.weight, w * (1 - 0.1 * 0.5))  # lr x weight_decay
    with pytest.raises(InvalidParameterError, match="applies to batch-normalized networks only"):
        NetworkConfig(**{**cfg, "batch_norm": False}, weight_decay_normalized=0.0).validate()
    with pytest.raises(InvalidParameterError, match="weight_decay_normalized must be"):
        NetworkConfig(**cfg, weight_decay_normalized=-1.0).validate()
    assert _cli(["run", "network", "--weight-decay-normalized", "0", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "applies to batch-normalized networks only" in err and len(err.strip().splitlines()) == 1


def test_epoch_measurement_streams_one_layer_with_the_same_numbers():
    """The per-epoch measurements stream only the penultimate layer (no second D x D scatter for the alignment):
    every tracked number must equal the one of the full two-layer pass, to the last bit."""
    from implicit_geometry.experiments.network import EPOCH_LAYERS, TRACKED, NetworkTrainer, prepare_data

    c = NetworkConfig(dataset="digits", per_class=12, width=16, depth=2, batch_norm=True, epochs=1, batch_size=16,
                      device="cpu").validate()
    trainer = NetworkTrainer(c, prepare_data(c), 0, torch.device("cpu"))
    trainer.run_epoch(lambda: False)
    full = trainer.measure()
    centers = full["means"]["penultimate"]
    one, both = trainer.measure(centers=centers, layers=EPOCH_LAYERS), trainer.measure(centers=centers)
    assert list(one["layers"]) == ["penultimate"] and "logits" in both["layers"]
    for k in (*TRACKED, "accuracy"):
        a, b = one["layers"]["penultimate"][k], both["layers"]["penultimate"][k]
        assert a == b or (np.isnan(a) and np.isnan(b)), k
    assert np.array_equal(one["mean_logits"], both["mean_logits"])


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------
from implicit_geometry.measure.data import FASHION_MNIST_DIR, imbalanced_indices, load, profile_counts  # noqa: E402


def _write_idx(path, arr):
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_idx_and_cifar_folders(tmp_path):
    rng = np.random.default_rng(0)
    imgs, labs = rng.integers(0, 256, (30, 28, 28)), np.arange(30) % 10
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labs)
    d = load(f"idx:{tmp_path}")
    assert d.x.shape == (30, 1, 28, 28) and d.y.tolist() == labs.tolist()
    raw = (d.x * 0 + torch.tensor(imgs[:, None], dtype=torch.float32))
    assert torch.corrcoef(torch.stack([d.x.flatten(), raw.flatten()]))[0, 1] > 0.999  # same pixels, standardized
    cdir = tmp_path / "cifar"
    cdir.mkdir()
    for i in range(1, 6):
        with open(cdir / f"data_batch_{i}", "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8), b"labels": [0, 1, 2, i % 10]}, fh)
    c = load(f"cifar10:{cdir}")
    assert c.x.shape == (20, 3, 32, 32) and c.num_classes == 10
    with pytest.raises(InvalidParameterError, match="data folder must hold"):
        load(f"idx:{cdir}")


def test_imbalance_profiles_and_bundled_data():
    assert profile_counts(4, 100, profile="step", ratio=10, minority_fraction=0.5).tolist() == [100, 100, 10, 10]
    assert profile_counts(3, 100, profile="exp", ratio=100).tolist() == [100, 10, 1]
    d = load("digits")
    idx = imbalanced_indices(d.y, profile="exp", ratio=20, n_max=150, seed=1)
    assert np.bincount(d.y[idx].numpy()).tolist() == profile_counts(10, 150, profile="exp", ratio=20).tolist()
    assert len(set(idx.tolist())) == len(idx)
    with pytest.raises(InvalidParameterError, match="n_max must be at most"):
        imbalanced_indices(d.y, n_max=10_000)


def test_mnist1d_generated_offline():
    pytest.importorskip("mnist1d")
    d = load("mnist1d", mnist1d_samples=200)
    assert d.x.shape == (200, 40) and d.num_classes == 10


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install -y dataset-fashion-mnist")
def test_fashion_mnist_from_debian_package():
    d = load("fashion-mnist", split="test")
    assert d.x.shape == (10000, 1, 28, 28) and d.counts().tolist() == [1000] * 10


# ----------------------------------------------------------------------------------------------------------
# Experiments
# ----------------------------------------------------------------------------------------------------------
from implicit_geometry.experiments import network as network_mod  # noqa: E402
from implicit_geometry.experiments.network import NetworkConfig, run_network  # noqa: E402


@pytest.mark.parametrize("batch_norm", [False, True])
def test_network_experiment_and_resume(tmp_path, monkeypatch, batch_norm):
    from implicit_geometry.experiments.base import Interrupted
    from implicit_geometry.io import read_csv

    # with batch norm the running statistics are state too, and the optimizer has two parameter groups (the
    # normalized weights' own decay): the resumed run must still give the same bits
    cfg = dict(dataset="digits", per_class=12, imbalance="step", ratio=4, width=24, depth=1, epochs=4, batch_size=16,
               measure_every=2, permutations=2, device="cpu", batch_norm=batch_norm, weight_decay_normalized=0.0 if batch_norm else None)
    full = run_network(NetworkConfig(**cfg), tmp_path / "a", progress=False)
    for f in ("config.json", "history.csv", "summary.json", "final.npz", "figures/collapse.png", "figures/grams.png"):
        assert (tmp_path / "a" / f).exists(), f
    assert full["counts"] == [12] * 5 + [3] * 5
    assert "seli_dist_means" in full["penultimate"] and len(full["verdict"]) == 4
    # the terminal-phase bar is judged from the history: first measured epoch with zero training error, NC1 there / at the end
    hist = [{k: float(v) if v else None for k, v in r.items()} for r in read_csv(tmp_path / "a" / "history.csv")]
    zero = [r for r in hist if r["train_error"] == 0.0]
    assert full["first_zero_error_epoch"] == (int(zero[0]["epoch"]) if zero else None)
    if zero:
        assert full["nc1_reduction_since_zero_error"] == pytest.approx(zero[0]["nc1"] / hist[-1]["nc1"])
        after = [r for r in hist if r["epoch"] >= zero[0]["epoch"]]
        assert full["nc1_lowest_since_zero_error"] == pytest.approx(min(r["nc1"] for r in after))
    else:
        assert full["nc1_lowest_since_zero_error"] is None and full["nc1_lowest_epoch"] is None
    assert full["terminal_phase_bar"] == network_mod.terminal_phase_bar(full["first_zero_error_epoch"], full["nc1_reduction_since_zero_error"])
    assert any(line.startswith("terminal phase " + ("PASS" if full["terminal_phase_bar"] else "FAIL")) for line in full["verdict"])

    stop_after(monkeypatch, network_mod, 9)  # SIGINT arriving after a few mini-batches
    with pytest.raises(Interrupted):
        run_network(NetworkConfig(**cfg), tmp_path / "b", progress=False)
    monkeypatch.undo()
    resumed = run_network(resume=tmp_path / "b", progress=False)
    ha, hb = read_csv(tmp_path / "a" / "history.csv"), read_csv(tmp_path / "b" / "history.csv")
    assert [r["nc1"] for r in ha] == [r["nc1"] for r in hb]
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]  # the loss summed across the interruption: same bits
    assert resumed["penultimate"]["nc1"] == full["penultimate"]["nc1"]


def test_network_terminal_phase_numbers_come_from_the_history(tmp_path):
    from implicit_geometry.io import read_csv

    # a run that does reach zero training error (epoch 7 here): the bar's numbers are read back from history.csv
    s = run_network(NetworkConfig(dataset="digits", per_class=10, width=64, depth=1, epochs=10, batch_size=10, measure_every=1,
                                  permutations=0, device="cpu", lr_drops=[]), tmp_path / "z", progress=False)
    hist = [{k: float(v) if v else None for k, v in r.items()} for r in read_csv(tmp_path / "z" / "history.csv")]
    zero = [r for r in hist if r["train_error"] == 0.0]
    assert zero and s["first_zero_error_epoch"] == int(zero[0]["epoch"]) and s["nc1_at_first_zero_error"] == zero[0]["nc1"]
    after = [r for r in hist if r["epoch"] >= zero[0]["epoch"]]
    best = min(after, key=lambda r: r["nc1"])
    assert (s["nc1_lowest_since_zero_error"], s["nc1_lowest_epoch"]) == (best["nc1"], int(best["epoch"]))
    assert s["nc1_reduction_since_zero_error"] == pytest.approx(zero[0]["nc1"] / hist[-1]["nc1"])
    assert f"lowest {best['nc1']:.3g} at epoch {int(best['epoch'])}" in s["verdict"][1]


def test_run_commands_bad_input_and_head_depth(tmp_path, capsys):
    assert _cli(["run", "network", "--dataset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "dataset must be one of" in capsys.readouterr().err
    assert _cli(["run", "network", "--model", "resnet20", "--batch-norm", "--out", str(tmp_path / "x")]) == 2
    assert "batch_norm applies to model mlp only" in capsys.readouterr().err
    for cmd in (["network", "--dataset", "digits", "--per-class", "10", "--epochs", "2"],
                ["head-depth", "--depths", "1", "--per-class", "10", "--epochs", "2"]):  # a step far too large
        assert _cli(["run", *cmd, "--lr", "1e8", "--device", "cpu", "--quiet", "--out", str(tmp_path / f"div-{cmd[0]}")]) == 2
        err = capsys.readouterr().err
        assert "training diverged (non-finite loss)" in err and len(err.strip().splitlines()) == 1
    assert _cli(["run", "head-depth", "--depths", "1,x"]) == 2
    capsys.readouterr()
    assert _cli(["run", "head-depth", "--depths", "1,4", "--per-class", "10", "--epochs", "2", "--out", str(tmp_path / "hd"), "--quiet", "--json"]) == 0
    assert (tmp_path / "hd" / "figures" / "effective_rank.png").exists()
    import json

    rows = json.loads(capsys.readouterr().out)["rows"]
    assert all(1 <= r["numerical_rank_mean_logits"] <= 9 and r["etf_distance_logits"] >= 0 for r in rows)
    assert all((r["max_angle_error_deg"] is None) == (r["numerical_rank_mean_logits"] != 2) for r in rows)


# ----------------------------------------------------------------------------------------------------------
# Language-model geometry beside the NTP prediction (pure part; the GGUF model itself is not loaded in tests)
# ----------------------------------------------------------------------------------------------------------
from implicit_geometry.measure.lm import compare_ntp_geometry, context_statistics, ntp_grams, support_proxy  # noqa: E402


def test_compare_ntp_geometry_exact_and_shuffled_control():
    rng = np.random.default_rng(0)
    S = (rng.random((12, 9)) < 0.35).astype(float)
    S[np.arange(12), rng.integers(0, 9, 12)] = 1
    L = support_proxy(S)
    U, s, Vt = np.linalg.svd(L, full_matrices=False)
    H, W = U * np.sqrt(s), Vt.T * np.sqrt(s)  # balanced factors of L: the NTP geometry exactly
    Q = np.linalg.qr(rng.normal(size=(len(s), len(s))))[0]
    r = compare_ntp_geometry(3 * H @ Q, W @ Q / 3, S, shuffles=20, target="support_proxy")
    assert max(r["dist_H"], r["dist_W"], r["dist_logits"]) < 1e-8 and r["target"] == "support_proxy"
    assert min(r["control_dist_H_mean"], r["control_dist_W_mean"], r["control_dist_logits_mean"]) > 0.2
    tH, tW = ntp_grams(L)
    assert np.allclose(tH @ tH, L @ L.T) and np.allclose(tW @ tW, L.T @ L)
    r2 = compare_ntp_geometry(rng.normal(size=H.shape), rng.normal(size=W.shape), S, target_logits=L, shuffles=5)
    assert r2["target"] == "given" and r2["dist_logits"] > 0.5
    # Default target: the NTP-SVM solution L_mm; a model with exactly that geometry is at distance 0 from it.
    from implicit_geometry.ntp.predict import ntp_svm

    Lmm = ntp_svm(S).L
    U, s, Vt = np.linalg.svd(Lmm, full_matrices=False)
    keep = s > 1e-9 * s[0]
    r3 = compare_ntp_geometry(U[:, keep] * np.sqrt(s[keep]), Vt[keep].T * np.sqrt(s[keep]), S, shuffles=5)
    assert r3["target"] == "ntp_svm" and max(r3["dist_H"], r3["dist_W"], r3["dist_logits"]) < 1e-6


def test_context_statistics_with_a_tiny_causal_lm():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    rng = np.random.default_rng(0)
    ids = [[1, 2] + rng.integers(3, 8, 6).tolist() for _ in range(15)]
    st = context_statistics(model, ids, order=1, min_count=3)
    m = len(st["contexts"])
    # the mean hidden state of a context, computed directly
    j = 0
    ctx = st["contexts"][j]
    rows = []
    with torch.no_grad():
        for seq in ids:
            h = model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states[-1][0].double()
            rows += [h[t - 1] for t in range(1, len(seq)) if tuple(seq[t - 1 : t]) == ctx]
    assert np.allclose(st["embeddings"][j], torch.stack(rows).mean(0).numpy(), atol=1e-10)
    assert st["support"].shape == (m, len(st["vocab"])) and st["support"].sum() == st["positions"]
    r = compare_ntp_geometry(st["embeddings"], st["unembedding"], st["support"], shuffles=5)
    assert 0 <= r["dist_H"] <= 2


def test_signal_while_finishing_lets_the_run_complete(tmp_path, monkeypatch):
    """SIGINT/SIGTERM arriving while a finished run writes its figures is held back: the run completes."""
    import os
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    real = network_mod._figures

    def figures_then_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(network_mod, "_figures", figures_then_signal)
    cfg = dict(dataset="digits", per_class=8, width=16, depth=1, epochs=2, batch_size=16, measure_every=1, permutations=0, device="cpu")
    summary = run_network(NetworkConfig(**cfg), tmp_path / "a", progress=False)
    assert (tmp_path / "a" / "summary.json").exists() and not (tmp_path / "a" / "checkpoint.pt").exists()
    assert summary["epochs"] == 2


def test_benchmark_network_recipes_are_what_their_comments_say(tmp_path, monkeypatch):
    """The full-60k recipes of benchmarks/bench_measure.py go through `igeom run network` as written: the configs they
    build drop the learning rate at the epochs the docs quote (a repeated option: the later one wins)."""
    import importlib.util

    from implicit_geometry.experiments import network

    spec = importlib.util.spec_from_file_location("bench_measure", Path(__file__).parent.parent / "benchmarks" / "bench_measure.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    configs = {}

    class Built(Exception):
        pass

    def capture(config, out, progress=True):
        configs[name] = config
        raise Built

    monkeypatch.setattr(network, "run_network", capture)
    for name, recipe in bench.NETWORK_RECIPES.items():
        with pytest.raises(Built):
            _cli(["run", "network", *recipe, "--out", str(tmp_path / name)])

    def drop_epochs(c):
        return [e for e in range(1, c.epochs) if network.scheduled_lr(c, e) < network.scheduled_lr(c, e - 1)]

    cpu, gpu = configs["cpu"], configs["gpu"]
    assert (cpu.model, cpu.width, cpu.depth, cpu.batch_norm, cpu.per_class, cpu.batch_size) == ("mlp", 512, 3, True, 0, 128)
    assert (cpu.weight_decay, cpu.weight_decay_normalized, cpu.epochs, cpu.measure_every) == (2e-3, 0.0, 1600, 2)
    assert drop_epochs(cpu) == [10, 950, 1500]
    assert (gpu.model, gpu.width, gpu.epochs, gpu.measure_every) == ("resnet20", 32, 110, 1) and drop_epochs(gpu) == [24]


def _code_network(M: np.ndarray) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A network whose class-mean logits are exactly M (K x K, column c = class c): one-hot inputs through a
    bias-free linear layer with weight M."""
    K = M.shape[0]
    net = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(K, K, bias=False)).double()
    with torch.no_grad():
        net[1].weight.copy_(torch.as_tensor(M))
    y = torch.arange(4 * K) % K
    return net, torch.eye(K, dtype=torch.float64)[y], y


def test_logit_geometry_of_a_network_reads_closed_form_codes():
    from implicit_geometry.depth.codes import regular_polygon
    from implicit_geometry.measure.api import logit_geometry
    from implicit_geometry.measure.data import TensorBatches

    # a regular hexagon code, relabelled, scaled and shifted per column: rank 2, the code itself, 60-degree angles
    P = regular_polygon(6)[[3, 0, 5, 1, 4, 2]]
    M = 7.5 * P @ P.T + np.arange(6.0)[None, :]
    net, x, y = _code_network(M)
    r = measure(net, TensorBatches(x, y, 5), 6, permutations=0)
    assert np.allclose(r["mean_logits"], M)
    g = r["logit_geometry"]
    assert g["numerical_rank"] == 2 and g["code_rank"] == 2 and g["code_distance"] < 1e-9
    assert g["code_value_ratio"] == pytest.approx(1.0, abs=1e-9) and np.allclose(g["adjacent_angles_deg"], 60.0)
    assert g["effective_rank"] == pytest.approx(r["layers"]["logits"]["effective_rank_mean_logits"], abs=1e-12)
    # the ETF logits: rank K-1, ETF distance 0, the simplex code
    K = 12
    g = logit_geometry(3.0 * (np.eye(K) - 1.0 / K))
    assert g["numerical_rank"] == K - 1 and g["etf_distance"] < 1e-12 and g["code_distance"] < 1e-9
    assert g["code_value_ratio"] == pytest.approx(1.0, abs=1e-9) and g["adjacent_angles_deg"] is None and g["code_skipped"] is None
    # rotating the logit space about the all-ones direction (which softmax ignores) changes nothing
    B = np.linalg.svd(np.eye(6) - 1.0 / 6)[0][:, :5]
    Q = np.full((6, 6), 1.0 / 6) + B @ np.linalg.qr(np.random.default_rng(0).normal(size=(5, 5)))[0] @ B.T
    h = logit_geometry(Q @ M)
    assert h["numerical_rank"] == 2 and h["code_distance"] < 1e-9 and np.allclose(h["adjacent_angles_deg"], 60.0)
    assert h["effective_rank"] == pytest.approx(r["logit_geometry"]["effective_rank"], abs=1e-12)
    # middle ranks of many classes are not solved on the way (minutes); the reading says so
    A = np.random.default_rng(1).normal(size=(30, 3))
    g = logit_geometry(A @ A.T, code_max_classes=20)
    assert g["numerical_rank"] == 3 and g["code_distance"] is None and "K = 30 > 20 classes" in g["code_skipped"]
    g = logit_geometry(np.eye(30) - 1.0 / 30)  # many classes at rank K-1: skipped too, the ETF distance reads it
    assert g["code_distance"] is None and g["code_skipped"] and g["etf_distance"] < 1e-12
    assert logit_geometry(np.ones((4, 4))) is None  # constant columns: no geometry
