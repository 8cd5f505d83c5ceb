import math

import numpy as np
import pytest
import torch

import implicit_geometry as ig
from implicit_geometry.geometry.batched import GeometryDistances
from implicit_geometry.geometry.targets import labels_from_counts
from implicit_geometry.models.ufm import DeepUFM
from implicit_geometry.train import CrossEntropy, OptimizerConfig, Simulator, record_steps



@pytest.fixture(autouse=True)
def float64_default():
    """float64 tensors in this module only (a global default would leak into other tests in the same worker)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def reference_loss(Z, y, mult=None, add=None, weights=None, label_dependent=False, reduction="sum"):
    """Textbook formula with autograd, for moderate logits."""
    y = torch.as_tensor(y)
    if mult is not None:
        mult = torch.as_tensor(mult)
        Z = Z * (mult[y][None, :] if label_dependent else mult[:, None])
    if add is not None:
        Z = Z + torch.as_tensor(add)[:, None]
    logp = torch.log_softmax(Z, dim=-2)
    per = -logp.gather(-2, y.expand(*Z.shape[:-2], 1, -1)).squeeze(-2)
    if weights is not None:
        per = per * torch.as_tensor(weights)[y]
    return per.sum(-1) if reduction == "sum" else per.mean(-1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"reduction": "mean"},
        {"multiplicative": [1.0, 2.0, 0.5]},
        {"multiplicative": [1.0, 2.0, 0.5], "label_dependent": True},
        {"additive": [0.3, -1.0, 0.2]},
        {"weights": [1.0, 3.0, 0.5]},
        {"multiplicative": [0.7, 1.5, 1.0], "additive": [0.1, 0.0, -0.4], "weights": [2.0, 1.0, 1.0]},
    ],
)
def test_scaled_gradient_and_log_loss_match_autograd(kwargs):
    y = np.array([0, 0, 1, 2, 2])
    g = torch.Generator().manual_seed(0)
    Z = (3 * torch.randn(2, 3, 5, generator=g)).requires_grad_(True)
    loss_fn = CrossEntropy(y, 3, **kwargs)
    ref = reference_loss(Z, y, kwargs.get("multiplicative"), kwargs.get("additive"), kwargs.get("weights"),
                         kwargs.get("label_dependent", False), kwargs.get("reduction", "sum"))
    (grad,) = torch.autograd.grad(ref.sum(), Z)
    G, log_scale = loss_fn.scaled_gradient(Z.detach())
    assert torch.allclose(torch.exp(log_scale)[:, None, None] * G, grad, rtol=1e-12, atol=1e-14)
    assert torch.allclose(loss_fn.log_loss(Z.detach()), torch.log(ref.detach()), rtol=1e-12)


def test_log_domain_survives_margins_far_beyond_double_precision():
    y = np.array([0, 1])
    loss_fn = CrossEntropy(y, 2)
    Z = torch.tensor([[[1e6, 0.0], [0.0, 2e6]]])  # margins 1e6 and 2e6: the loss is about e^-1e6
    assert loss_fn.log_loss(Z).item() == pytest.approx(-1e6, rel=1e-12)
    G, log_scale = loss_fn.scaled_gradient(Z)
    assert torch.isfinite(G).all() and torch.isfinite(log_scale).all()
    assert log_scale.item() == pytest.approx(-1e6, rel=1e-12)
    # Only the smallest-margin sample survives in the direction: exactly (-1, +1) on column 0.
    assert torch.equal(G[0, :, 0], torch.tensor([-1.0, 1.0]))
    assert torch.all(G[0, :, 1] == 0)


def test_bad_loss_parameters_are_refused():
    with pytest.raises(ig.InvalidParameterError, match="multiplicative must be 3 positive numbers"):
        CrossEntropy([0, 1, 2], 3, multiplicative=[1.0, -1.0, 1.0])
    with pytest.raises(ig.InvalidParameterError, match="reduction must be one of sum, mean"):
        CrossEntropy([0, 1, 2], 3, reduction="max")
    with pytest.raises(ig.InvalidParameterError, match="labels must be"):
        CrossEntropy([0, 3], 3)


def test_deep_ufm_too_large_for_memory_is_refused_before_allocating(monkeypatch):
    from implicit_geometry.models import ufm

    # 1e11 samples: petabytes, refused on any machine, and before a single factor exists
    with pytest.raises(ig.InvalidParameterError, match="the UFM is too large for this machine"):
        DeepUFM.random(num_classes=3, num_samples=10**11, dim=4)
    monkeypatch.setattr(ufm, "available_memory", lambda device: 1000.0)  # a machine with 1000 bytes free
    with pytest.raises(ig.InvalidParameterError, match=r"need about .* GiB, 0.0 GiB is free"):
        DeepUFM.random(num_classes=3, num_samples=10, dim=4)
    monkeypatch.setattr(ufm, "available_memory", lambda device: None)  # unknown: not refused
    assert DeepUFM.random(num_classes=3, num_samples=10, dim=4).H.shape == (1, 4, 10)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_deep_ufm_backward_matches_autograd(depth):
    model = DeepUFM.random(num_classes=4, num_samples=6, dim=5, depth=depth, batch=2, init_std=0.5)
    G = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(1))
    factors = [F.clone().requires_grad_(True) for F in model.factors]
    Z = DeepUFM(factors).logits()
    auto = torch.autograd.grad((G * Z).sum(), factors)
    chain = model.chain()
    manual = chain.pullback(G)
    for a, m in zip(auto, manual):
        assert torch.allclose(a, m, rtol=1e-12, atol=1e-13)
    assert torch.allclose(model.classifier() @ model.H, model.logits(), rtol=1e-12)
    assert torch.equal(chain.logits, model.logits())


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("shape", [(4, 6, 5), (7, 3, 5)])  # (k, N, d): more samples than classes, and fewer
def test_chain_push_and_right_products(depth, shape):
    """``Chain.push`` is the Jacobian-vector product of the logits (against autograd's forward mode), and the right
    products are the partial products ``F_l ... F_1 H``."""
    k, n, d = shape
    model = DeepUFM.random(num_classes=k, num_samples=n, dim=d, depth=depth, batch=2, init_std=0.6)
    v = [torch.randn(F.shape, dtype=F.dtype, generator=torch.Generator().manual_seed(i)) for i, F in enumerate(model.factors)]
    _, auto = torch.func.jvp(lambda *fs: DeepUFM(list(fs)).logits(), tuple(model.factors), tuple(v))
    chain = model.chain()
    assert torch.allclose(chain.push(v), auto, rtol=1e-12, atol=1e-13)
    P = model.H
    for l, R in enumerate(chain.right()):
        assert torch.allclose(R, P, rtol=1e-12, atol=1e-14)
        P = model.factors[l + 1] @ P
    assert len(chain.right()) == depth


PER_RUN = {
    "ngd": [OptimizerConfig(), OptimizerConfig(lr=0.3, norm_ref=math.inf), OptimizerConfig(lr=0.05, norm_ref=7.0)],
    "gd": [OptimizerConfig(name="gd", lr=0.1), OptimizerConfig(name="gd", lr=0.1), OptimizerConfig(name="gd", lr=0.2)],
}


@pytest.mark.parametrize("name", ["ngd", "gd"])
@pytest.mark.parametrize("depth", [1, 3])
def test_batched_runs_give_the_bits_of_separate_runs(name, depth):
    # a run's numbers must not depend on what else is in its batch (sweeps batch points): same bits, not just close
    configs = PER_RUN[name]
    y = labels_from_counts([6, 3, 1])
    ufm = lambda seeds: DeepUFM.random(num_classes=3, num_samples=10, dim=4, depth=depth, batch=len(seeds), seeds=seeds)  # noqa: E731
    shared = Simulator(ufm([5, 6, 7]), CrossEntropy(y, 3), configs[0])
    shared.run(200)
    per_run = Simulator(ufm([5, 6, 7]), CrossEntropy(y, 3), configs)
    per_run.run(200)
    for i, (seed, opt) in enumerate(zip([5, 6, 7], configs)):
        single = Simulator(ufm([seed]), CrossEntropy(y, 3), opt)
        single.run(200)
        for Fb, Fp, Fs in zip(shared.model.factors, per_run.model.factors, single.model.factors):
            assert torch.isfinite(Fs).all() and torch.equal(Fp[i], Fs[0])
            if opt == configs[0]:
                assert torch.equal(Fb[i], Fs[0])
    with pytest.raises(ig.InvalidParameterError, match="optimizer must be one config or one per run \\(3\\) \\(got 2\\)"):
        Simulator(ufm([5, 6, 7]), CrossEntropy(y, 3), configs[:2])
    with pytest.raises(ig.InvalidParameterError, match="optimizer name and weight_decay must be equal"):
        Simulator(ufm([5, 6, 7]), CrossEntropy(y, 3), [PER_RUN["ngd"][0], PER_RUN["gd"][0], PER_RUN["gd"][1]])


def _seli_run(counts, steps, opt, dim=None, seeds=(0,)):
    k = len(counts)
    y = labels_from_counts(counts)
    model = DeepUFM.random(num_classes=k, num_samples=len(y), dim=dim or 2 * k, batch=len(seeds), seeds=list(seeds))
    sim = Simulator(model, CrossEntropy(y, k), opt)
    sim.run(steps)
    dist = GeometryDistances(ig.seli_geometry(counts))(model.classifier(), model.H)
    return sim, {k_: v.numpy() for k_, v in dist.items()}


def test_ngd_keeps_converging_after_the_loss_underflows():
    counts = [20, 20, 20, 2, 2, 2, 2, 2, 2, 2]
    sim, dist = _seli_run(counts, 4000, OptimizerConfig())
    log10_loss = sim.loss.log_loss(sim.model.logits()).item() / math.log(10)
    assert log10_loss < -300  # far below the smallest double
    for key in ("dist_W", "dist_H", "dist_Z", "dist_means"):
        assert dist[key][0] < 3e-3, key
    assert np.isfinite(sim.model.H).all()


def test_plain_gd_stalls_where_ngd_converges():
    counts = [20, 20, 20, 2, 2, 2, 2, 2, 2, 2]
    _, gd = _seli_run(counts, 4000, OptimizerConfig(name="gd", lr=0.5))
    assert gd["dist_W"][0] > 0.1


def test_balanced_counts_reach_the_etf():
    counts = [10] * 10
    sim, _ = _seli_run(counts, 6000, OptimizerConfig(), dim=20)
    dist = GeometryDistances(ig.etf_geometry(counts))(sim.model.classifier(), sim.model.H)
    assert max(v.item() for v in dist.values()) < 1e-3


def test_weight_decay_needs_gd():
    with pytest.raises(ig.InvalidParameterError, match="weight_decay > 0 needs optimizer gd"):
        OptimizerConfig(name="ngd", weight_decay=1e-3)
    with pytest.raises(ig.InvalidParameterError, match="optimizer must be one of ngd, gd"):
        OptimizerConfig(name="adam")


def test_batched_distances_match_reference(rng):
    counts = [5, 3, 2]
    target = ig.seli_geometry(counts)
    W = torch.tensor(rng.standard_normal((2, 3, 4)))
    H = torch.tensor(rng.standard_normal((2, 4, 10)))
    out = GeometryDistances(target)(W, H)
    for b in range(2):
        Wb, Hb = W[b].numpy(), H[b].numpy()
        means = Hb @ np.eye(3)[target.labels] / np.asarray(counts)
        assert out["dist_W"][b].item() == pytest.approx(ig.normalized_distance(Wb @ Wb.T, target.W_gram), rel=1e-12)
        assert out["dist_H"][b].item() == pytest.approx(ig.normalized_distance(Hb.T @ Hb, target.H_gram), rel=1e-7)
        assert out["dist_means"][b].item() == pytest.approx(ig.normalized_distance(means.T @ means, target.mean_gram), rel=1e-12)
        assert out["dist_Z"][b].item() == pytest.approx(ig.normalized_distance(Wb @ Hb, target.logits), rel=1e-12)


def test_record_steps_are_log_spaced_and_include_ends():
    steps = record_steps(10000, 50)
    assert steps[0] == 0 and steps[-1] == 10000
    assert steps == sorted(set(steps))
    assert 30 <= len(steps) <= 52
    assert record_steps(0) == [0]


def test_resume_from_state_dict_is_bitwise_identical():
    y = labels_from_counts([4, 2, 1])
    make = lambda: Simulator(DeepUFM.random(num_classes=3, num_samples=7, dim=3, depth=2, batch=2), CrossEntropy(y, 3))  # noqa: E731
    straight = make()
    straight.run(300)
    first = make()
    first.run(120)
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    resumed.run(300)
    for a, b in zip(straight.model.factors, resumed.model.factors):
        assert torch.equal(a, b)
