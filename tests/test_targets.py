import numpy as np
import pytest

import implicit_geometry as ig
from implicit_geometry.geometry.targets import labels_from_counts, one_hot, sel_matrix, step_imbalance_counts

COUNT_CASES = [[3, 3], [7, 1], [5, 5, 5, 5], [20, 20, 20, 2, 2, 2, 2, 2, 2, 2], [1000, 1], [1000, 1, 1], [4, 9, 1, 17, 2]]


@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_simplex_etf_is_equiangular_and_unit_norm(k):
    M = ig.simplex_etf(k)
    G = M.T @ M
    assert np.allclose(np.diag(G), 1.0, atol=1e-14)
    off = G[~np.eye(k, dtype=bool)]
    assert np.allclose(off, -1.0 / (k - 1), atol=1e-14)
    assert np.allclose(M.sum(axis=1), 0.0, atol=1e-14)


def _seli_by_sample_svd(counts):
    """Independent computation: SVD of the sample-level SEL matrix S Y (k x N)."""
    Z = sel_matrix(counts)
    U, lam, Vt = np.linalg.svd(Z, full_matrices=False)
    r = len(counts) - 1
    U, lam, Vt = U[:, :r], lam[:r], Vt[:r]
    return (U * lam) @ U.T, (Vt.T * lam) @ Vt, Z


@pytest.mark.parametrize("counts", COUNT_CASES)
def test_seli_matches_sample_level_svd(counts):
    g = ig.seli_geometry(counts)
    W_gram, H_gram, Z = _seli_by_sample_svd(counts)
    assert np.allclose(g.W_gram, W_gram, atol=1e-10 * np.abs(W_gram).max())
    assert np.allclose(g.H_gram, H_gram, atol=1e-10 * np.abs(H_gram).max())
    assert np.allclose(g.logits, Z, atol=1e-14)
    # The factors W = U Lambda^1/2, H = Lambda^1/2 V^T reproduce the logits: the Grams are those of one balanced pair.
    vals, vecs = np.linalg.eigh(g.W_gram)
    assert np.all(vals > -1e-10)


@pytest.mark.parametrize("counts", COUNT_CASES[:5])
def test_seli_factors_reproduce_logits(counts):
    g = ig.seli_geometry(counts)
    y = labels_from_counts(counts)
    # Build W (k x k) and class features from the Grams; then W @ h_c must equal the class logits.
    vals, vecs = np.linalg.eigh(g.W_gram)
    keep = vals > 1e-12 * vals.max()
    W = vecs[:, keep] * np.sqrt(vals[keep])  # W W^T = W_gram
    # Features: h_c = W^+T z_c for SELI (Z = W H with H in the row space of W).
    H = np.linalg.pinv(W) @ g.logits
    assert np.allclose(W @ H, g.logits, atol=1e-12)
    assert np.allclose(H.T @ H, g.mean_gram[np.ix_(y, y)], atol=1e-10)


def test_seli_is_the_nuclear_norm_minimizer():
    """Independent check with a convex solver: argmin ||Z||_* s.t. z_y - z_c >= 1 is the SEL matrix."""
    cp = pytest.importorskip("cvxpy")
    counts = [4, 2, 1]
    y = labels_from_counts(counts)
    k, N = len(counts), len(y)
    Z = cp.Variable((k, N))
    cons = [Z[y[i], i] - Z[c, i] >= 1 for i in range(N) for c in range(k) if c != y[i]]
    cp.Problem(cp.Minimize(cp.normNuc(Z)), cons).solve(solver=cp.SCS, eps=1e-9, max_iters=200000)
    assert ig.normalized_distance(Z.value, ig.seli_geometry(counts).logits) < 1e-4


@pytest.mark.parametrize("k", [2, 3, 10])
def test_balanced_seli_is_the_etf(k):
    counts = [7] * k
    s, e = ig.seli_geometry(counts), ig.etf_geometry(counts)
    assert ig.normalized_distance(s.W_gram, e.W_gram) < 1e-12
    assert ig.normalized_distance(s.mean_gram, e.mean_gram) < 1e-12
    assert ig.normalized_distance(s.H_gram, e.H_gram) < 1e-12


def test_extreme_ratio_is_finite_and_distinct_from_etf():
    g = ig.seli_geometry([1000, 1])
    assert np.all(np.isfinite(g.W_gram)) and np.all(np.isfinite(g.mean_gram))
    # k = 2: the classifiers are antipodal whatever the counts; the feature norms differ by (n1/n2)^(1/4)... check
    # instead the exact k = 2 values: W W^T ∝ [[1, -1], [-1, 1]], class features ∝ e_c - 1/2 scaled by 1/sqrt(N).
    assert np.allclose(g.classifier_cosines[0, 1], -1.0)
    assert np.allclose(g.feature_cosines[0, 1], -1.0)
    g3 = ig.seli_geometry([1000, 1, 1])
    # Minority classifiers are closer to each other than ETF's -1/2.
    assert g3.classifier_cosines[1, 2] > -0.5 + 0.1


@pytest.mark.parametrize("bad", [[5, 0, 3], [3, -1], [4], "a,b", [], [[1, 2], [3, 4]], [1.5, 2]])
def test_bad_counts_are_refused(bad):
    with pytest.raises(ig.InvalidParameterError, match="counts must be"):
        ig.seli_geometry(bad)


def test_step_imbalance_counts_convention():
    assert step_imbalance_counts(10, 10, 0.7, 2).tolist() == [20] * 3 + [2] * 7
    assert step_imbalance_counts(4, 1, 0.5, 3).tolist() == [3, 3, 3, 3]
    with pytest.raises(ig.InvalidParameterError, match="classes must be an integer >= 2"):
        step_imbalance_counts(1, 10, 0.5, 2)
    with pytest.raises(ig.InvalidParameterError, match="minority_fraction"):
        step_imbalance_counts(4, 10, 1.5, 2)


def test_one_hot_and_labels():
    y = labels_from_counts([2, 1])
    assert y.tolist() == [0, 0, 1]
    assert one_hot(y, 2).tolist() == [[1, 1, 0], [0, 0, 1]]
