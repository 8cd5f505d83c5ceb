"""Label imbalance: losses, class-level predictors (against cvxpy, ADMM, closed forms, simulations), ridge,
the ``imbalance`` experiment and its CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from implicit_geometry import InvalidParameterError, normalized_distance, seli_geometry, step_imbalance_counts
from implicit_geometry.imbalance import (
    ImbalancedCrossEntropy,
    imbalance_geometry,
    loss_parameters,
    max_margin_logits,
    ridge_geometry,
    ridge_logits,
    simulator_loss,
    step_closed_form,
    step_summary,
)
from implicit_geometry.imbalance.predict import _constraint_data, _project_columns, candidate_logits, margins_matrix

LOSS_CASES = [("ce", {}), ("wce", {}), ("la", {"tau": 1.0}), ("cdt", {"gamma": 0.3}), ("ldt", {"gamma": 0.7}), ("vs", {"gamma": 0.2, "tau": 1.0})]


# -- losses -----------------------------------------------------------------------------------------------
def test_loss_parameter_conventions():
    c = [30, 30, 3, 3, 3]
    p = loss_parameters(c, "cdt", gamma=0.5)
    assert p.multiplicative.mean() == pytest.approx(1.0)
    assert p.multiplicative[0] / p.multiplicative[-1] == pytest.approx(10**0.5)
    la = loss_parameters(c, "la", tau=2.0)
    assert np.allclose(la.additive, 2.0 * np.log(np.array(c) / 69))
    assert not la.changes_geometry and p.changes_geometry
    w = loss_parameters(c, "wce")
    assert w.weights.mean() == pytest.approx(1.0) and w.weights[-1] / w.weights[0] == pytest.approx(10.0)
    assert loss_parameters(c, "ldt").label_dependent


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda: loss_parameters([3, 1], "focal"), "loss must be one of"),
        (lambda: loss_parameters([3, 0], "ce"), "counts must be positive"),
        (lambda: loss_parameters([3, 1], "ce", gamma=1.0), "gamma must be unset"),
        (lambda: loss_parameters([3, 1], "wce", beta=-1.0), "beta must be"),
        (lambda: imbalance_geometry([3, 1], Delta=[1.0, -0.5]), "Delta must be 2 positive temperatures"),
        (lambda: ridge_geometry([3, 1], 0.0), "weight_decay must be"),
        (lambda: step_closed_form(4, 10, 0.0), "minority_fraction must"),
    ],
)
def test_bad_hyperparameters_one_line(call, needle):
    with pytest.raises(InvalidParameterError, match=needle) as err:
        call()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("loss, hyper", LOSS_CASES)
def test_torch_loss_matches_simulator_loss(loss, hyper):
    counts = np.array([5, 5, 2, 1])
    k = counts.size
    y = np.repeat(np.arange(k), counts)
    Z = torch.randn(1, k, y.size, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    crit = ImbalancedCrossEntropy(counts, loss, reduction="sum", **hyper)
    Zt = Z[0].T.clone().requires_grad_(True)
    val = crit(Zt, torch.as_tensor(y))
    val.backward()
    sim = simulator_loss(counts, crit.params)
    assert float(sim.log_loss(Z)[0]) == pytest.approx(float(torch.log(val.detach())), rel=1e-12)
    G, log_scale = sim.scaled_gradient(Z)
    assert torch.allclose(G[0] * torch.exp(log_scale[0]), Zt.grad.T, atol=1e-12)


# -- max-margin predictor ---------------------------------------------------------------------------------
@pytest.mark.parametrize("loss, hyper, counts", [
    ("ce", {}, [6, 3, 1, 2]),
    ("cdt", {"gamma": 1.0}, [9, 2, 5]),
    ("ldt", {"gamma": 0.3}, [4, 4, 1, 1, 2]),
    ("vs", {"gamma": -0.5, "tau": 1.0}, [7, 1, 3]),
])
def test_max_margin_matches_sample_level_cvxpy(loss, hyper, counts):
    from implicit_geometry.imbalance.reference import cvxpy_max_margin

    p = loss_parameters(counts, loss, **hyper)
    g, info = imbalance_geometry(counts, p, return_info=True)
    ref = cvxpy_max_margin(counts, p)
    assert ref["status"] == "optimal"
    assert normalized_distance(g.logits, ref["Z"]) < 1e-6
    assert info.objective == pytest.approx(ref["objective"], rel=1e-7)


def test_admm_from_cold_start_finds_the_closed_form():
    rng = np.random.default_rng(3)
    for _ in range(4):
        counts = rng.integers(1, 50, size=int(rng.integers(3, 8)))
        for ld in (False, True):
            Delta = rng.uniform(0.3, 3.0, size=counts.size)
            M1, i1 = max_margin_logits(counts, Delta, label_dependent=ld)
            M2, i2 = max_margin_logits(counts, Delta, label_dependent=ld, force_general=True)
            assert (i1.method, i2.method) == ("closed-form", "admm")
            assert normalized_distance(M1, M2) < 1e-7
            assert i2.objective == pytest.approx(i1.objective, rel=1e-8)
            assert i1.kkt >= 0 and i1.violation < 1e-12


def test_column_projection_is_a_projection():
    rng = np.random.default_rng(0)
    counts, Delta = np.array([5, 2, 7, 1]), np.array([1.5, 0.5, 1.0, 2.0])
    r, s = _constraint_data(counts, Delta, False)
    V = rng.normal(size=(4, 4)) * 3
    X = _project_columns(V, r, s)
    feas = lambda A: (np.diag(A)[None, :] - r * A - s[None, :])[~np.eye(4, dtype=bool)]  # noqa: E731
    assert np.all(feas(X) >= -1e-12)
    for _ in range(200):  # variational inequality <V - X, U - X> <= 0 for every feasible U
        U = _project_columns(rng.normal(size=(4, 4)) * 5, r, s)
        assert np.sum((V - X) * (U - X)) <= 1e-9


def test_ce_la_wce_are_seli_and_ldt_is_seli_with_effective_ratio():
    counts = step_imbalance_counts(6, 10, 0.5, 2)
    seli = seli_geometry(counts)
    for loss in ("ce", "la", "wce"):
        g = imbalance_geometry(counts, loss)
        assert normalized_distance(g.W_gram, seli.W_gram) < 1e-12
        assert normalized_distance(g.mean_gram, seli.mean_gram) < 1e-12
    for gamma in (0.25, 1.0):  # classifier Gram = SELI for the ratio R^(1 - 2 gamma)
        g = imbalance_geometry(counts, "ldt", gamma=gamma)
        eff = counts / loss_parameters(counts, "ldt", gamma=gamma).multiplicative ** 2
        X = (np.eye(6) - 1 / 6) * np.sqrt(eff)[None, :]
        U, lam, _ = np.linalg.svd(X)
        assert normalized_distance(g.W_gram, (U[:, :5] * lam[:5]) @ U[:, :5].T) < 1e-12
    etf = imbalance_geometry(counts, "ldt", gamma=0.5)
    assert normalized_distance(etf.W_gram, np.eye(6) - 1 / 6) < 1e-12


def test_predictor_is_independent_of_n_scale():
    # Multiplying every count by 1000 leaves the logits unchanged and scales the W-Gram by sqrt(1000).
    c = np.array([40, 40, 40, 4, 4])
    g1, g2 = imbalance_geometry(c, "cdt", gamma=1.0), imbalance_geometry(c * 1000, "cdt", gamma=1.0)
    assert np.allclose(g1.class_logits, g2.class_logits, atol=1e-12)
    assert np.allclose(g2.W_gram, g1.W_gram * np.sqrt(1000), rtol=1e-10)


def test_candidate_has_unit_margins():
    Delta = np.array([2.0, 1.0, 0.5, 0.25])
    for ld in (False, True):
        mg = margins_matrix(candidate_logits(Delta, ld), Delta, ld)
        assert np.allclose(mg[~np.eye(4, dtype=bool)], 1.0)


# -- closed forms -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss, hyper", LOSS_CASES)
def test_closed_form_matches_general_predictor(loss, hyper):
    for k, R, rho in [(10, 10, 0.5), (7, 3, 0.3), (5, 100, 0.8), (2, 4, 0.5)]:
        counts = step_imbalance_counts(k, R, rho, 3)
        cf = step_closed_form(k, R, rho, loss, n_min=3, **hyper).to_dict()
        gen = step_summary(imbalance_geometry(counts, loss, **hyper), k - round(rho * k))
        for key, val in gen.items():
            assert cf[key] == pytest.approx(val, rel=1e-9, abs=1e-12), (key, k, R, rho)


# -- ridge ------------------------------------------------------------------------------------------------
def test_ridge_matches_sample_level_cvxpy():
    from implicit_geometry.imbalance.reference import cvxpy_ridge

    counts = [4, 4, 1, 2]
    p = loss_parameters(counts, "vs", gamma=0.3, tau=0.5)
    M, info = ridge_logits(counts, 0.7, p)
    ref = cvxpy_ridge(counts, 0.7, p)
    Z = M[:, np.repeat(np.arange(4), counts)]
    assert normalized_distance(Z, ref["Z"]) < 1e-4
    assert info.objective == pytest.approx(ref["objective"], rel=1e-6)
    assert info.objective <= ref["objective"] * (1 + 1e-9)


def test_ridge_matches_gd_with_weight_decay():
    from implicit_geometry.models.ufm import DeepUFM
    from implicit_geometry.train.simulator import OptimizerConfig, Simulator

    counts = np.array([8, 8, 2, 2])
    p = loss_parameters(counts, "cdt", gamma=0.5)
    g = ridge_geometry(counts, 0.5, p)
    model = DeepUFM.random(num_classes=4, num_samples=20, dim=6, init_std=0.5)
    sim = Simulator(model, simulator_loss(counts, p), OptimizerConfig(name="gd", lr=0.05, weight_decay=0.5))
    sim.run(3000)
    W, H = model.classifier()[0].numpy(), model.H[0].numpy()
    assert np.abs(W @ H - g.logits).max() < 1e-6
    assert np.abs(W @ W.T - g.W_gram).max() < 1e-6  # the scale is the minimizer's, not arbitrary


def test_ridge_collapses_to_zero_exactly_beyond_the_threshold():
    counts = [5, 5, 1]
    _, info = ridge_logits(counts, 0.1)
    thr = info.extra["wd_zero"]
    M, info = ridge_logits(counts, thr * 1.01)
    assert info.method == "zero" and not M.any()
    M, info = ridge_logits(counts, thr * 0.9)
    assert info.method == "fista" and np.abs(M).max() > 1e-3
    # subgradient check of the zero solution from the definition: L(t D) + wd t ||D||_* >= L(0) along random D
    rng = np.random.default_rng(0)
    from implicit_geometry.imbalance.predict import _ridge_loss_grad

    p = loss_parameters(counts, "ce")
    sq = np.sqrt(np.array(counts, float))
    l0, _ = _ridge_loss_grad(np.zeros((3, 3)), sq, np.array(counts), p)
    for _ in range(20):
        D = rng.normal(size=(3, 3)) * 1e-3
        lv, _ = _ridge_loss_grad(D, sq, np.array(counts), p)
        assert lv + thr * 1.01 * np.linalg.svd(D, compute_uv=False).sum() >= l0


def test_ridge_tends_to_max_margin_and_shows_minority_collapse():
    counts = step_imbalance_counts(6, 20, 0.5, 1)
    mm = imbalance_geometry(counts, "ce")
    # The approach to the max-margin geometry is slow (logarithmic in 1/wd): check it is monotone.
    dist = [normalized_distance(ridge_geometry(counts, wd).W_gram, mm.W_gram) for wd in (1e-1, 1e-2, 1e-3)]
    assert dist[0] > dist[1] > dist[2]
    cos = [ridge_geometry(counts, wd).classifier_cosines[-1, -2] for wd in (1e-3, 0.1, 1.0)]
    assert cos[0] < cos[1] < cos[2] and cos[2] > 0.5  # minority classifiers fold onto one direction
    assert mm.classifier_cosines[-1, -2] < cos[0]


# -- experiment and CLI -----------------------------------------------------------------------------------
def _cli(args, capsys):
    from implicit_geometry.cli import cli

    code = 0
    try:
        cli(args)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr()


def test_ratio_too_large_for_memory_is_one_line(tmp_path, capsys):
    code, out = _cli(["run", "imbalance", "--ratios", "1e9", "--steps", "10", "--quiet", "--device", "cpu", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "the UFM is too large for this machine" in out.err and len(out.err.strip().splitlines()) == 1


def test_experiment_run_and_resume(tmp_path, monkeypatch, capsys):
    from implicit_geometry.experiments import imbalance as exp

    args = ["run", "imbalance", "--classes", "4", "--ratios", "1,5", "--steps", "300", "--loss", "vs", "--seeds", "2",
            "--quiet", "--json", "--device", "cpu"]
    code, out = _cli(args + ["--out", str(tmp_path / "a")], capsys)
    assert code in (0, None), out.err
    full = json.loads(out.out)
    assert full["verdict"] and len(full["points"]) == 2
    for name in ("config.json", "history.csv", "points.csv", "summary.json", "final.npz", "figures/norm_ratios.png", "figures/angles.png"):
        assert (tmp_path / "a" / name).exists(), name
    p = full["points"][1]
    assert p["learned_w_norm_ratio"] == pytest.approx(p["predicted_w_norm_ratio"], rel=0.2)

    # Interrupt after some updates, then resume: same numbers as the uninterrupted run.
    class Flag:
        calls = 0

        @property
        def requested(self):
            Flag.calls += 1
            return Flag.calls > 450

    import contextlib

    monkeypatch.setattr(exp, "interruptible", lambda: contextlib.nullcontext(Flag()))
    code, out = _cli(args + ["--out", str(tmp_path / "b")], capsys)
    assert code == 130 and "resume" in out.err
    monkeypatch.undo()
    code, out = _cli(["run", "imbalance", "--resume", str(tmp_path / "b"), "--json", "--quiet"], capsys)
    resumed = json.loads(out.out)
    for a, b in zip(full["points"], resumed["points"]):
        assert a["dist_W"] == b["dist_W"] and a["learned_w_cos_min"] == b["learned_w_cos_min"]


def test_predict_cli(capsys):
    code, out = _cli(["predict", "imbalance", "--classes", "10", "--ratio", "10", "--loss", "cdt", "--gamma", "1", "--json"], capsys)
    assert code in (0, None)
    d = json.loads(out.out)
    assert d["closed_form"]["w_norm_ratio"] == pytest.approx(d["classifier_norms"][0] / d["classifier_norms"][-1], rel=1e-9)
    code, out = _cli(["predict", "seli", "--counts", "3,1,1"], capsys)  # the core subcommand still works
    assert code in (0, None) and "classifier_norms" in out.out
    for bad in (["--counts", "3,0"], ["--counts", "3,1", "--loss", "nope"], ["--counts", "3,1", "--loss", "la", "--tau", "inf"],
                ["--counts", "3,1", "--temperatures", "1,-2"]):
        code, out = _cli(["predict", "imbalance", *bad], capsys)
        assert code == 2 and out.err.count("\n") == 1 and out.err.startswith("igeom: error:")
