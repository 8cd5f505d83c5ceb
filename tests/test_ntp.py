"""Tests of the next-token-prediction face: every prediction against an independent computation."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from conftest import stop_after
from implicit_geometry._validation import InvalidParameterError
from implicit_geometry.geometry.metrics import normalized_distance
from implicit_geometry.ntp.corpus import (
    context_statistics,
    hierarchical_corpus,
    planted_hierarchy,
    planted_supports,
    support_groups,
    tokenize,
)
from implicit_geometry.ntp.loss import SoftLabelCrossEntropy
from implicit_geometry.ntp.predict import (
    _project_rows,
    _project_rows_weighted,
    centered,
    ntp_svm,
    ntp_svm_cvxpy,
    orthant_clusters,
    predict_geometry,
    sparse_logits,
)


def random_support(rng, m, V, groups):
    base = (rng.random((groups, V)) < rng.uniform(0.15, 0.6)).astype(float)
    for r in base:
        if r.sum() == 0:
            r[rng.integers(V)] = 1
        if r.sum() == V:
            r[rng.integers(V)] = 0
    return base[rng.integers(0, groups, m)]


def test_context_statistics_match_brute_force_and_streaming():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 5, 3000)
    T = 3
    st = context_statistics(ids, T, 5)
    small = context_statistics(ids, T, 5, chunk=50)  # many chunks merged
    pairs = Counter((tuple(ids[t - T : t]), int(ids[t])) for t in range(T, ids.size))
    assert st.num_tokens == ids.size - T
    assert (st.next_counts != small.next_counts).nnz == 0 and np.array_equal(st.contexts, small.contexts)
    for j, ctx in enumerate(map(tuple, st.contexts)):
        row = st.next_counts[j].toarray().ravel()
        for z in range(5):
            assert row[z] == pairs.get((ctx, z), 0)
    # entropy against its definition from the raw counts
    ctx_tot = Counter()
    for (c, _), n in pairs.items():
        ctx_tot[c] += n
    N = sum(pairs.values())
    H = -sum(n / N * np.log(n / ctx_tot[c]) for (c, _), n in pairs.items())
    assert st.entropy == pytest.approx(H, rel=1e-12)


def test_tokenizer_and_validation():
    ids, vocab = tokenize("to be or not to be", "word")
    assert vocab.decode(ids, " ") == "to be or not to be"
    with pytest.raises(InvalidParameterError, match="context must be"):
        context_statistics([0, 1, 2], 0)
    with pytest.raises(InvalidParameterError, match="longer than the context"):
        context_statistics([0, 1], 3)


def test_sparse_logits_are_in_support_log_odds():
    c = planted_supports(3, 2, 8, [2, 3, 4], seed=2)
    P = c.stats.probabilities.toarray()
    L = sparse_logits(c.stats).toarray()
    for j in range(P.shape[0]):
        sup = np.flatnonzero(P[j])
        for a in sup:
            for b in sup:
                assert L[j, a] - L[j, b] == pytest.approx(np.log(P[j, a] / P[j, b]), abs=1e-12)
        assert abs(L[j, sup].sum()) < 1e-12 and np.all(L[j, P[j] == 0] == 0)


def test_nuclear_norm_reduction_to_distinct_supports():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 6))
    mult = np.array([1, 3, 2, 5])
    full = np.repeat(X, mult, axis=0)
    assert np.linalg.svd(full, compute_uv=False).sum() == pytest.approx(
        np.linalg.svd(np.sqrt(mult)[:, None] * X, compute_uv=False).sum(), rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_ntp_svm_matches_cvxpy(seed):
    rng = np.random.default_rng(100 + seed)
    m, V = int(rng.integers(6, 30)), int(rng.integers(4, 14))
    S = random_support(rng, m, V, int(rng.integers(2, m)))
    res = ntp_svm(S)
    L_ref, obj_ref = ntp_svm_cvxpy(S, solver="CLARABEL")
    assert res.objective == pytest.approx(obj_ref, rel=1e-6)
    assert normalized_distance(res.L, L_ref) < 1e-4
    # feasibility of the returned L_mm, checked directly on every context
    L = res.L
    for j in range(m):
        sup, out = S[j] > 0, S[j] == 0
        assert np.ptp(L[j, sup]) < 1e-8
        if out.any():
            assert L[j, sup][0] - L[j, out].max() >= 1 - 1e-7
    # the centered support matrix is feasible, never better, and the reported distance is right
    assert res.centered_objective >= res.objective - 1e-9
    assert res.centered_distance == pytest.approx(normalized_distance(L, centered(S)), abs=1e-9)


def test_reduction_to_distinct_supports_and_word_classes_is_exact():
    # 6 distinct supports repeated (1, 4, 1, 3, 1, 2) times over 6 word classes of sizes (1, 3, 1, 2, 1, 1): the
    # reduced 6 x 6 weighted program, expanded back, must be cvxpy's solution of the full 12 x 9 program.
    rng = np.random.default_rng(2)
    base = np.zeros((6, 6))
    for j in range(6):
        base[j, rng.choice(6, int(rng.integers(1, 3)), replace=False)] = 1
    rmult, cmult = np.array([1, 4, 1, 3, 1, 2]), np.array([1, 3, 1, 2, 1, 1])
    S = np.repeat(np.repeat(base, rmult, axis=0), cmult, axis=1)
    L_ref, obj_ref = ntp_svm_cvxpy(S, solver="CLARABEL")
    res = ntp_svm(S)
    assert not res.certified and res.info["word_classes"] == 6 and res.multiplicity.tolist() == rmult.tolist()
    assert res.objective == pytest.approx(obj_ref, rel=1e-6)
    assert normalized_distance(res.L, L_ref) < 1e-4
    assert res.info["dual_bound"] <= obj_ref * (1 + 1e-9) and res.info["duality_gap"] < 1e-6
    act = ntp_svm(S, method="active-set", tol=1e-11, max_iter=5000)
    assert act.info["method"] == "active-set" and normalized_distance(act.L, L_ref) < 1e-4
    assert ntp_svm(S, merge_words=False).objective == pytest.approx(obj_ref, rel=1e-6)
    # The test has teeth: dropping the row weights or the column weights gives a clearly different solution.
    no_row_weights = ntp_svm(np.repeat(base, cmult, axis=1)).X
    assert normalized_distance(np.repeat(no_row_weights, rmult, axis=0), L_ref) > 1e-2
    no_col_weights = ntp_svm(np.repeat(base, rmult, axis=0), merge_words=False).L
    assert normalized_distance(centered(np.repeat(no_col_weights, cmult, axis=1)), L_ref) > 1e-2


def test_weighted_row_projection_is_the_projection_with_repeated_words():
    rng = np.random.default_rng(0)
    for _ in range(10):
        S = (rng.random((7, 9)) < 0.3).astype(float)
        S[:, 0], S[:, -1] = 1.0, 0.0
        off = S == 0
        T = centered(rng.normal(size=(7, 9)))
        assert np.allclose(_project_rows_weighted(T - S, off, np.ones(9)), _project_rows(centered(S) - T, off))
        n = rng.integers(1, 4, 9)
        W = rng.normal(size=(7, 9))
        cls = np.repeat(np.arange(9), n)
        full = _project_rows_weighted(W[:, cls], off[:, cls], np.ones(cls.size))
        assert np.allclose(full, _project_rows_weighted(W, off, n.astype(float))[:, cls])


def test_planted_hierarchy_structure():
    c = planted_hierarchy(200, 2000, topics=4, classes_per_topic=5, max_classes=2, max_support=20, seed=3)
    S = c.stats.support
    sizes = np.diff(S.indptr)
    assert c.stats.num_contexts == 2000 and S.shape[1] == 200 and sizes.max() <= 20
    group, mult = support_groups(S)
    # contexts of a planted group share their support; every support is a union of at most 2 classes of one topic
    assert np.array_equal(support_groups(np.eye(c.context_group.max() + 1)[c.context_group])[0], group)
    for j in np.unique(group, return_index=True)[1]:
        classes = np.unique(c.word_concept[S.indices[S.indptr[j]:S.indptr[j + 1]]])
        assert classes.size <= 2 and np.unique(classes // 5).size == 1
        assert sizes[j] == np.isin(c.word_concept, classes).sum()
    assert np.allclose(np.asarray(c.stats.probabilities.sum(axis=1)).ravel(), 1.0)
    # words of a class are interchangeable: the solver works on (at most) the classes
    res = ntp_svm(S)
    assert res.info["word_classes"] <= 21 and res.info.get("duality_gap", 0.0) < 1e-6
    with pytest.raises(InvalidParameterError):
        planted_hierarchy(10, 100, topics=4, classes_per_topic=5)


def _random_sparse_supports(rng, m, V, max_size):
    S = np.zeros((m, V))
    for j in range(m):
        S[j, rng.choice(V, int(rng.integers(1, max_size + 1)), replace=False)] = 1
    return S


@pytest.mark.parametrize("seed", range(3))
def test_active_set_solver_matches_cvxpy_and_admm(seed):
    # Many random small supports: D S_c has full rank V - 1 and the centered support matrix is not optimal.
    rng = np.random.default_rng(300 + seed)
    m, V = int(rng.integers(30, 50)), int(rng.integers(8, 14))
    S = _random_sparse_supports(rng, m, V, V // 3)
    res = ntp_svm(S, method="active-set", tol=1e-11, max_iter=5000)
    assert res.info["method"] == "active-set" and not res.certified
    L_ref, obj_ref = ntp_svm_cvxpy(S, solver="CLARABEL")
    assert res.objective == pytest.approx(obj_ref, rel=1e-6)
    assert normalized_distance(res.L, L_ref) < 1e-4
    # the dual bound is a lower bound and tight at the solution
    assert res.info["dual_bound"] <= obj_ref * (1 + 1e-9)
    assert res.info["duality_gap"] < 1e-6
    admm = ntp_svm(S, method="admm")
    assert admm.objective == pytest.approx(res.objective, rel=1e-6)
    with pytest.raises(InvalidParameterError):
        ntp_svm(S, method="newton")


def test_centered_support_is_not_always_optimal_and_certificate_is_sound():
    rng = np.random.default_rng(7)
    found_gap = found_cert = False
    for _ in range(12):
        S = random_support(rng, 20, 8, 6)
        res = ntp_svm(S)
        if res.certified:
            _, obj = ntp_svm_cvxpy(S, solver="CLARABEL")
            assert res.objective == pytest.approx(obj, rel=1e-6)
            found_cert = True
        elif res.centered_distance > 1e-3:
            found_gap = True
    assert found_gap and found_cert


def test_predicted_grams_and_subspace_collapse():
    c = planted_supports(3, 4, 9, [2, 3, 2], seed=1)
    geo = predict_geometry(c.stats)
    L = geo.L_mm
    U, s, Vt = np.linalg.svd(L, full_matrices=False)
    assert np.allclose(geo.W_gram, (Vt.T * s) @ Vt, atol=1e-8)
    assert np.allclose(geo.context_gram(), (U * s) @ U.T, atol=1e-8)
    # contexts of one support group have identical rows (collapse to one direction)
    for g in np.unique(c.context_group):
        rows = L[c.context_group == g]
        assert np.allclose(rows, rows[0], atol=1e-8)


def test_orthant_clusters_recover_planted_concepts():
    c = planted_supports(3, 3, 9, [3, 3, 3], seed=0, disjoint=True)
    labels = orthant_clusters(c.stats.support, 2)
    for concept in range(3):
        assert len(set(labels[c.word_concept == concept])) == 1
    assert len(set(labels)) == 3
    h = hierarchical_corpus(3, 4, 4, seed=0)
    lab = orthant_clusters(h.stats.support, 2)
    # every concept's words fall in one orthant
    for concept in range(3):
        assert len(set(lab[h.word_concept == concept])) == 1


def test_soft_label_loss_gradient_and_excess():
    rng = np.random.default_rng(0)
    P = rng.dirichlet(np.ones(5), size=4).T
    P[0, 0] = 0
    P[:, 0] /= P[:, 0].sum()
    w = rng.random(4) + 0.1
    loss = SoftLabelCrossEntropy(P, w)
    Z = torch.tensor(rng.normal(size=(2, 5, 4)), requires_grad=True)
    loss.loss(Z).sum().backward()
    G, log_scale = loss.scaled_gradient(Z.detach())
    assert torch.allclose(G * torch.exp(log_scale)[:, None, None], Z.grad, atol=1e-12)
    assert torch.allclose(loss.excess(Z.detach()), loss.loss(Z.detach()) - loss.entropy, atol=1e-12)
    # at the exact log-probabilities (padding -60 off support) the excess is ~0
    Zs = torch.tensor(np.where(P > 0, np.log(np.where(P > 0, P, 1)), -60.0))[None]
    assert float(loss.excess(Zs)) < 1e-14


def test_log_bilinear_converges_to_prediction():
    from implicit_geometry.experiments.ntp import simulate_log_bilinear

    torch.set_num_threads(1)
    r = simulate_log_bilinear(3200, 3000, records=5)
    assert r["direction_distance"] < 3e-2
    assert r["finite_error"] < 1e-6
    hist = r["history"]
    assert hist[-1]["excess"] < hist[0]["excess"] * 1e-6


def test_transformer_is_causal():
    from implicit_geometry.models.transformer import CausalTransformer

    torch.manual_seed(0)
    net = CausalTransformer(7, 5, dim=16, layers=2, heads=2)
    x = torch.randint(0, 7, (3, 5))
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 7
    h1, h2 = net.hidden(x), net.hidden(y)
    assert torch.allclose(h1[:, :-1], h2[:, :-1])
    assert not torch.allclose(h1[:, -1], h2[:, -1])
    assert torch.allclose(net(x), h1[:, -1] @ net.unembedding.weight.T)


def test_experiment_smoke(tmp_path):
    from implicit_geometry.experiments.ntp import NtpConfig, run_ntp
    from implicit_geometry.io import read_json

    cfg = NtpConfig(steps=60, bilinear_steps=300, bilinear_direction_steps=250, dim=16, layers=1, heads=2, synthetic_length=3000,
                    records=4, device="cpu", batch_size=64)
    s = run_ntp(cfg, tmp_path / "run", progress=False)
    for name in ("config.json", "summary.json", "history.csv", "final.npz", "figures/grams.png", "figures/bilinear_decomposition.png"):
        assert (tmp_path / "run" / name).exists()
    assert read_json(tmp_path / "run" / "summary.json")["verdict"] == s["verdict"]
    assert s["control_dist_context_gram"] > s["dist_context_gram"]


def _cli(capsys, *args):
    from implicit_geometry.cli import cli

    try:
        cli(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_stats_and_errors(tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text("abcabcabdabcabd" * 20)
    code, out, err = _cli(capsys, "ntp", "stats", str(f), "--context", "2", "--json")
    assert code == 0, err
    assert '"distinct_contexts"' in out
    code, out, err = _cli(capsys, "ntp", "stats", str(tmp_path / "missing.txt"))
    assert code == 2 and err.startswith("igeom: error:") and "Traceback" not in err
    code, out, err = _cli(capsys, "run", "ntp", "--corpus", str(tmp_path / "missing.txt"), "--quiet")
    assert code == 2 and "corpus must be" in err
    # a step far too large: one line saying so, not a linear-algebra traceback from the NaN weights
    code, out, err = _cli(capsys, "run", "ntp", "--lr", "1e8", "--steps", "20", "--bilinear-steps", "0", "--dim", "8", "--layers", "1",
                          "--heads", "2", "--device", "cpu", "--quiet", "--out", str(tmp_path / "div"))
    assert code == 2 and "training diverged (non-finite loss)" in err and len(err.strip().splitlines()) == 1


def test_experiment_interrupt_and_resume_give_same_numbers(tmp_path, monkeypatch):
    import implicit_geometry.experiments.ntp as ntp_exp
    from implicit_geometry.experiments.base import Interrupted
    from implicit_geometry.experiments.ntp import NtpConfig, run_ntp

    cfg = dict(steps=30, bilinear_steps=0, dim=8, layers=1, heads=2, synthetic_length=2000, records=4, device="cpu", batch_size=32)
    full = run_ntp(NtpConfig(**cfg), tmp_path / "a", progress=False)

    stop_after(monkeypatch, ntp_exp, 12)
    with pytest.raises(Interrupted):
        run_ntp(NtpConfig(**cfg), tmp_path / "b", progress=False)
    monkeypatch.undo()
    resumed = run_ntp(resume=tmp_path / "b", progress=False)
    for key in ("dist_W_gram", "dist_context_gram", "final_loss"):
        assert resumed[key] == pytest.approx(full[key], rel=1e-6, abs=1e-9)


def test_separability_checks():
    from implicit_geometry.ntp.predict import separability

    st = planted_supports(3, 2, 8, [2, 3, 2], seed=4).stats
    big = separability(st, 50)
    assert big["compatible"] and big["separable"] and big["compatible_and_separable"]
    small = separability(st, 1)
    assert not small["compatible_and_separable"] and small["rank_L_mm"] > 1
