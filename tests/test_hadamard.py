"""Hadamard initialization and the exact reduced dynamics (issue 4): construction, exactness against the full
simulation, the ODE against independent integrations, the Lyapunov function, faces, and the experiment."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import scipy.special
from click.testing import CliRunner

from implicit_geometry._validation import InvalidParameterError
from implicit_geometry.dynamics import (
    effective_rank_of_spectrum,
    endpoint_classification,
    exactness_check,
    gd_reduced,
    hadamard_basis,
    hadamard_init,
    log_time_grid,
    lyapunov,
    reduced_rate,
    sample_singular_values,
    solve_reduced,
    walsh_characters,
)
from implicit_geometry.dynamics.hadamard import class_logits
from implicit_geometry.dynamics.reduced import crossing_times, predicted_runaway_times
from implicit_geometry.geometry.metrics import effective_rank


# -- construction ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 4, 8, 16, 32])
def test_walsh_basis_is_sylvester_hadamard(k):
    chi = walsh_characters(k)
    np.testing.assert_array_equal(chi, scipy.linalg.hadamard(k))  # independent construction (Sylvester)
    Q = hadamard_basis(k)
    np.testing.assert_allclose(Q @ Q.T, np.eye(k), atol=1e-14)
    np.testing.assert_allclose(Q[:, 0], 1 / np.sqrt(k))


@pytest.mark.parametrize("bad", [3, 6, 12, 24, 100])
def test_non_power_of_two_is_refused_with_reason(bad):
    with pytest.raises(InvalidParameterError, match=r"power of two \(2, 4, 8, 16, 32, \.\.\.\) \(got %d\).*diagonalizes" % bad):
        hadamard_init(np.ones(bad))
    with pytest.raises(InvalidParameterError, match="power of two"):
        sample_singular_values(bad)


def test_bad_spectra_and_width_are_refused():
    with pytest.raises(InvalidParameterError, match=">= 0"):
        hadamard_init([0.0, -1.0, 1.0, 1.0])
    with pytest.raises(InvalidParameterError, match="dim must be an integer >= 4"):
        hadamard_init([0.0, 1.0, 1.0, 1.0], dim=3)


def test_softmax_is_diagonal_in_the_walsh_basis():
    k = 8
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 3, k)
    Q, chi = hadamard_basis(k), walsh_characters(k)
    Z = Q @ np.diag(a) @ Q.T
    P = scipy.special.softmax(Z, axis=0)
    b = chi @ scipy.special.softmax(chi @ a / k)
    np.testing.assert_allclose(Q.T @ P @ Q, np.diag(b), atol=1e-14)
    # a generic orthogonal basis with first column 1/sqrt(k) does not diagonalize the softmax
    R = np.linalg.qr(np.column_stack([np.ones(k), rng.standard_normal((k, k - 1))]))[0]
    off = R.T @ scipy.special.softmax(R @ np.diag(a) @ R.T, axis=0) @ R
    assert np.abs(off - np.diag(np.diag(off))).max() > 1e-3


def test_paley_hadamard_k12_does_not_diagonalize_the_softmax():
    # Paley construction I, q = 11: a genuine Hadamard matrix of order 12, which the tool refuses; this is why.
    q = 11
    residues = {(x * x) % q for x in range(1, q)}
    leg = np.array([[0 if i == j else (1 if (j - i) % q in residues else -1) for j in range(q)] for i in range(q)])
    S = np.zeros((12, 12))
    S[0, 1:], S[1:, 0], S[1:, 1:] = 1, -1, leg
    H = np.eye(12) + S
    np.testing.assert_allclose(H @ H.T, 12 * np.eye(12))
    Q = H / np.sqrt(12)
    a = np.random.default_rng(1).uniform(0, 3, 12)
    off = Q.T @ scipy.special.softmax(Q @ np.diag(a) @ Q.T, axis=0) @ Q
    assert np.abs(off - np.diag(np.diag(off))).max() > 1e-3


@pytest.mark.parametrize("depth,n,d", [(1, 1, 8), (2, 3, 11), (3, 2, 8)])
def test_construction_spectrum_balance_and_repeated_columns(depth, n, d):
    a = sample_singular_values(8, 2, l1_norm=3.0, seed=4)
    init = hadamard_init(a, depth=depth, dim=d, samples_per_class=n, seed=1)
    F = [f.numpy() for f in init.model.factors]
    assert F[0].shape == (2, d, 8 * n) and F[-1].shape == (2, 8, d) and len(F) == depth + 1
    Z = init.model.logits()
    Zbar = class_logits(Z, n).numpy()
    for b in range(2):
        np.testing.assert_allclose(init.Q.T @ Zbar[b] @ init.Q, np.diag(a[b]), atol=1e-12)
        # full K x N logits have singular values sqrt(n) a (sorted)
        np.testing.assert_allclose(np.linalg.svd(Z[b].numpy(), compute_uv=False), np.sort(np.sqrt(n) * a[b])[::-1], atol=1e-12)
        # balanced: W_l^T W_l = W_{l-1} W_{l-1}^T, and W_1^T W_1 = H H^T
        for lo, hi in zip(F[:-1], F[1:]):
            np.testing.assert_allclose(hi[b].T @ hi[b], lo[b] @ lo[b].T, atol=1e-12)
        # H has n identical columns per class
        H = F[0][b].reshape(d, 8, n)
        np.testing.assert_allclose(H - H[:, :, :1], 0.0, atol=1e-14)


def test_sampled_spectra():
    a = sample_singular_values(16, 50, low=0.5, high=2.0, l1_norm=7.0, zero_modes=3, seed=2)
    np.testing.assert_allclose(a.sum(1), 7.0)
    assert np.all(a[:, 0] == 0) and np.all((a[:, 1:] == 0).sum(1) == 3)
    pos = a[:, 1:][a[:, 1:] > 0] / 7.0 * a.sum(1).mean()
    assert pos.min() > 0
    np.testing.assert_array_equal(a, sample_singular_values(16, 50, low=0.5, high=2.0, l1_norm=7.0, zero_modes=3, seed=2))


# -- exactness against the full simulation ---------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("k", [4, 8, 16])
def test_full_simulation_matches_reduced_dynamics(depth, k):
    a0 = sample_singular_values(k, 2, l1_norm=1.0, seed=k + depth)
    r1 = exactness_check(a0, depth=depth, dim=k + 3, lr=1e-2, t_end=1.5, records=15)
    r2 = exactness_check(a0, depth=depth, dim=k + 3, lr=5e-3, t_end=1.5, records=15)
    assert r1.max_offdiag < 1e-12 and r2.max_offdiag < 1e-12  # singular vectors frozen
    assert r1.max_gap_gd < 1e-12 and r2.max_gap_gd < 1e-12  # the reduced GD map is the full GD, to rounding
    # gradient flow: the gap is GD's O(lr) discretization error, halving with lr
    assert r2.max_gap_ode < 0.6 * r1.max_gap_ode and r1.max_gap_ode < 0.1
    assert 1.7 < r1.gap_ode[-1].max() / r2.gap_ode[-1].max() < 2.3
    assert np.all(np.diff(r1.a_sim[:, :, 1:], axis=0) > 0)  # and the spectrum did move


@pytest.mark.parametrize("n,reduction", [(3, "sum"), (2, "mean")])
def test_several_samples_per_class_and_mean_ce(n, reduction):
    a0 = sample_singular_values(8, 2, l1_norm=2.0, seed=5)
    r = exactness_check(a0, depth=2, samples_per_class=n, reduction=reduction, lr=1e-2, t_end=2.0, records=10)
    assert r.max_offdiag < 1e-12 and r.max_gap_gd < 1e-12 and r.max_gap_ode < 2e-2


def test_faces_are_invariant_in_the_full_simulation():
    a0 = np.array([[0.0, 0.3, 0.0, 0.2, 0.1, 0.0, 0.25, 0.15]])
    r = exactness_check(a0, depth=2, lr=1e-2, t_end=3.0, records=10)
    assert np.abs(r.a_sim[:, 0, [2, 5]]).max() < 1e-13 and r.max_offdiag < 1e-12
    sol = solve_reduced(a0, [0.0, 1e6], depth=2)
    assert np.all(sol.a[-1, 0, [0, 2, 5]] == 0)
    cls = endpoint_classification(sol.a[-1], depth=2, a0=a0)
    assert cls["on_face"][0] and not cls["nc"][0]


# -- the ODE solver ------------------------------------------------------------------------------------------------
def test_ode_against_direct_integration_in_a():
    from scipy.integrate import solve_ivp

    a0 = sample_singular_values(8, 1, l1_norm=1.5, seed=9)
    for depth in (1, 3):
        ref = solve_ivp(lambda t, a: reduced_rate(a, depth=depth)[0], (0, 20), a0[0], method="LSODA", rtol=1e-11, atol=1e-12,
                        t_eval=[0.5, 5, 20]).y.T
        got = solve_reduced(a0, [0.5, 5, 20], depth=depth, rtol=1e-10, atol=1e-12).a[:, 0]
        np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-12)


def test_batch_equals_individual_solves_and_long_horizon():
    a0 = sample_singular_values(16, 5, l1_norm=0.5, seed=3)
    t = log_time_grid(1e6, 60)
    batch = solve_reduced(a0, t, depth=2).a
    assert np.all(np.isfinite(batch)) and np.all(np.diff(batch[:, :, 1:], axis=0) >= 0)
    for b in (0, 3):
        np.testing.assert_allclose(batch[:, b], solve_reduced(a0[b], t, depth=2).a[:, 0], rtol=1e-6)
    # sum-CE in the logit domain: margins grow like log t for L = 1
    a1 = solve_reduced(a0, [1e4, 1e6], depth=1).a
    growth = a1[1, :, 1:].sum(1) / a1[0, :, 1:].sum(1)
    assert np.all(growth > 1.1) and np.all(growth < 3)


def test_mean_ce_rescales_time_by_n():
    a0 = sample_singular_values(8, 2, seed=1)
    for depth, n in ((1, 1), (2, 3)):
        N = 8 * n
        s = solve_reduced(a0, [0.0, 3.0], depth=depth, samples_per_class=n, rtol=1e-11, atol=1e-13).a[-1]
        m = solve_reduced(a0, [0.0, 3.0 * N], depth=depth, samples_per_class=n, reduction="mean", rtol=1e-11, atol=1e-13).a[-1]
        np.testing.assert_allclose(m, s, rtol=1e-8)


def test_gd_map_converges_to_flow():
    a0 = sample_singular_values(4, 1, seed=0)
    flow = solve_reduced(a0, [2.0], depth=2, rtol=1e-11).a[-1]
    gaps = [np.abs(gd_reduced(a0, lr, [round(2.0 / lr)], depth=2)[-1] - flow).max() for lr in (1e-2, 5e-3)]
    assert 1.8 < gaps[0] / gaps[1] < 2.2


# -- Lyapunov, rank, classification, repulsion ---------------------------------------------------------------------
def test_lyapunov_monotone_for_depth_one_only():
    a0 = sample_singular_values(16, 100, l1_norm=1.0, seed=7)
    t = log_time_grid(1e4, 200)
    V1 = lyapunov(solve_reduced(a0, t, depth=1).a)
    assert np.diff(V1, axis=0).max() <= 1e-9 and np.all(V1[-1] < V1[0])
    V3 = lyapunov(solve_reduced(a0, t, depth=3).a)
    assert np.diff(V3, axis=0).max() > 1e-2  # the check can fail: depth breaks monotonicity
    assert lyapunov(np.array([0.0, 1.0, 1.0, 1.0])) == 0 and lyapunov(np.array([0.0, 1.0, 0.0, 1.0])) == np.inf


def test_effective_rank_of_spectrum_matches_matrix_metric():
    Q = hadamard_basis(8)
    for a in (np.array([0, 1, 2, 3, 4, 5, 6, 7.0]), np.array([0, 1, 0, 0, 1, 0, 0, 1.0]), np.r_[0, np.ones(7)]):
        assert effective_rank_of_spectrum(a) == pytest.approx(effective_rank(Q @ np.diag(a) @ Q.T), rel=1e-12)
    assert effective_rank_of_spectrum(np.r_[0, np.ones(7)]) == pytest.approx(7.0)


def test_classification_of_end_points():
    nc = np.r_[0.0, np.full(7, 50.0)] * np.r_[1, 1 + 1e-3 * np.arange(7)]
    cls = endpoint_classification(nc[None], depth=2)
    assert cls["nc"].tolist() == [True] and cls["effective_rank"][0] > 6.9
    # depth 1 from random ICs: always heading to NC (the Lyapunov theorem); depth 3 at K = 16: never
    a0 = sample_singular_values(16, 50, seed=2)
    for depth, want in ((1, 1.0), (3, 0.0)):
        a = solve_reduced(a0, [0.0, 1e4], depth=depth).a[-1]
        assert endpoint_classification(a, depth=depth, a0=a0)["nc"].mean() == want


def test_runaway_times_match_small_a_prediction():
    a0 = sample_singular_values(16, 20, l1_norm=1e-2, seed=3)
    t = log_time_grid(1e5, 800, 1e-2)
    for depth in (1, 2, 4):
        sol = solve_reduced(a0, t, depth=depth)
        level = 1e-2  # still small: 1 - b ~ 1 holds
        meas = crossing_times(t, sol.a, level)[:, 1:]
        pred = predicted_runaway_times(a0, level, depth=depth)[:, 1:]
        # the small-a picture holds until the first modes saturate (a ~ 1); later runaways are delayed: repulsion
        saturated = crossing_times(t, sol.a.max(-1, keepdims=True), 0.3)
        ok = np.isfinite(meas) & (meas > 0.05) & (meas < 0.8 * saturated)
        assert ok.sum() > 20
        np.testing.assert_allclose(meas[ok], pred[ok], rtol=0.1)


# -- the experiment ---------------------------------------------------------------------------------------------------
def _cli(args):
    from implicit_geometry.cli import main

    return CliRunner().invoke(main, ["run", "hadamard", *args])


SMALL = ["--classes", "8", "--depths", "1,3", "--rank-depths", "1,2,4", "--basin-depths", "1,2", "--basin-classes", "4,8",
         "--ics", "12", "--horizon", "1e3", "--points", "30", "--quiet"]


def test_experiment_cli_end_to_end(tmp_path):
    res = _cli([*SMALL, "--out", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert s["trajectories"]["1"]["lyapunov_monotone"] is True
    for L in ("1", "3"):
        ex = s["exactness"][L]
        assert ex["max_offdiag"] < 1e-12 and ex["max_rel_gap_gd"] < 1e-12 and ex["max_rel_gap_ode"] < 0.1
    assert s["basin_fraction_nc"]["4"]["1"] == 1.0 and s["basin_fraction_nc"]["8"]["2"] < 1.0
    ranks = [r["effective_rank_mean"] for r in s["rank_vs_depth"]]
    assert ranks[0] > ranks[1] > ranks[2]
    assert s["repulsion"]["3"]["order_agreement"] > 0.9 and s["faces"] == []
    for f in ("config.json", "history.csv", "summary.json", "final.npz", "figures/basin.png", "figures/trajectories.png",
              "figures/lyapunov.png", "figures/rank_vs_depth.png", "figures/repulsion.png", "figures/exactness.png"):
        assert (tmp_path / "r" / f).exists(), f
    assert "NaN" not in (tmp_path / "r" / "summary.json").read_text()


def test_experiment_reports_faces_instead_of_nc(tmp_path):
    res = _cli(["--classes", "8", "--analyses", "trajectories,basin", "--depths", "1", "--basin-depths", "1",
                "--basin-classes", "8", "--ics", "5", "--zero-modes", "2", "--horizon", "100", "--points", "20",
                "--quiet", "--no-figures", "--out", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    assert "start on a face a_i = 0 and all stay on it" in res.output and "NOT at neural collapse" in res.output
    s = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert s["basin_fraction_nc"]["8"]["1"] is None and all(f["stayed_on_face"] for f in s["faces"])


@pytest.mark.parametrize("args,msg", [
    (["--classes", "12"], "classes must be a power of two"),
    (["--basin-classes", "4,6"], "basin_classes must be a power of two"),
    (["--analyses", "foo"], "analyses must be one of"),
    (["--init", "0,1,x"], "init must be comma-separated numbers"),
    (["--classes", "4", "--init", "0,1,2"], "init must have classes = 4 values"),
    (["--depths", "0..2"], "depths must be an integer >= 1 (got 0)"),
    (["--rank-depths", "3..1"], "rank_depths must be comma-separated integers or ranges a..b with a <= b"),
    (["--basin-depths", "1,two"], "basin_depths must be comma-separated integers or ranges like 1..10"),
])
def test_experiment_bad_input_exits_2(args, msg, capsys):
    from implicit_geometry.cli import cli

    with pytest.raises(SystemExit) as exc:
        cli(["run", "hadamard", *args, "--quiet"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("igeom: error: ") and msg in err and err.count("\n") == 1


def test_depth_lists_take_ranges_like_run_depth():
    """``--depths 1..3`` means the same in ``run hadamard`` as in ``run depth`` (one parser for both)."""
    from implicit_geometry.experiments.hadamard import HadamardConfig

    cfg = HadamardConfig(classes=8, depths="1..3", rank_depths="2,4..5", basin_classes="4..4").validate()
    assert cfg.depths == [1, 2, 3] and cfg.rank_depths == [2, 4, 5] and cfg.basin_classes == [4]


def test_experiment_resume_gives_same_numbers(tmp_path):
    from implicit_geometry.experiments.hadamard import HadamardConfig, HadamardRun, run_hadamard
    from implicit_geometry.io import write_json

    cfg = dict(classes=8, depths=[2], basin_depths=[1, 2], basin_classes=[4], ics=10, horizon=100.0, points=20,
               analyses=["trajectories", "basin"], figures=False)
    full = run_hadamard(HadamardConfig(**cfg), tmp_path / "a", progress=False)
    config = HadamardConfig(**cfg).validate()
    folder = tmp_path / "b"
    folder.mkdir()
    write_json(folder / "config.json", config.to_dict())
    part = HadamardRun(config, folder)
    for unit in part.units[:2]:  # as if interrupted after two of the three units
        part.results[part.key(*unit)] = part.run_unit(*unit)
    part.save_checkpoint()
    resumed = run_hadamard(resume=folder, progress=False)
    for key in ("trajectories", "basin_fraction_nc"):
        assert resumed[key] == full[key]
    assert not (folder / "checkpoint.pt").exists()


def test_repulsion_order_agreement_is_none_without_pairs_to_compare():
    """Equal (or zero) initial modes give no pair to judge: the summary says so instead of reporting 0%."""
    from implicit_geometry.experiments.hadamard import repulsion_summary

    runaway = np.array([[1.0, 2.0, np.inf]])
    tied = repulsion_summary(np.array([[0.5, 0.5, 0.0]]), runaway, np.ones((1, 3)))
    assert tied["order_agreement"] is None
    assert repulsion_summary(np.array([[0.7, 0.5, 0.1]]), runaway, np.ones((1, 3)))["order_agreement"] == 1.0
    # mode 1 runs away before the larger mode 0: one of the three pairs out of order
    swapped = repulsion_summary(np.array([[0.7, 0.5, 0.1]]), runaway[:, [1, 0, 2]], np.ones((1, 3)))
    assert swapped["order_agreement"] == pytest.approx(2 / 3)
