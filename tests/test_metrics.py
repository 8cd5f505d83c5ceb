import numpy as np
import pytest

import implicit_geometry as ig
from implicit_geometry.geometry.metrics import class_means, nc1_from_stats, within_class_covariance
from implicit_geometry.geometry.targets import labels_from_counts

from conftest import random_rotation


def etf_features(k, n, d, rng, noise=0.0):
    """Exact neural collapse in R^d: class means a simplex ETF (rotated), classifiers equal to the means."""
    M = np.zeros((d, k))
    M[:k, :] = ig.simplex_etf(k)
    M = random_rotation(d, rng) @ M
    y = np.repeat(np.arange(k), n)
    H = M[:, y] + noise * rng.standard_normal((d, k * n))
    return H, y, M.T.copy()


def test_normalized_distance_properties(rng):
    A = rng.standard_normal((4, 5))
    assert ig.normalized_distance(A, 3.7 * A) == pytest.approx(0.0, abs=1e-15)
    assert ig.normalized_distance(A, -A) == pytest.approx(2.0)
    B = rng.standard_normal((4, 5))
    assert ig.normalized_distance(A, B) == pytest.approx(ig.normalized_distance(B, A))
    with pytest.raises(ig.InvalidParameterError, match="equal shape"):
        ig.normalized_distance(A, B.T)
    with pytest.raises(ig.InvalidParameterError, match="non-zero"):
        ig.normalized_distance(A, 0 * A)


@pytest.mark.parametrize("k", [3, 5, 10])
def test_exact_etf_has_zero_nc_metrics(k, rng):
    H, y, W = etf_features(k, 4, k + 3, rng)
    m = ig.neural_collapse_metrics(H, y, W)
    for key in ("nc1", "equinorm_means", "equiangular_means", "maxangle_means", "etf_distance_means",
                "equinorm_classifiers", "equiangular_classifiers", "maxangle_classifiers", "etf_distance_classifiers", "nc3", "nc4"):
        assert abs(m[key]) < 1e-7, key
    assert m["effective_rank_mean_logits"] == pytest.approx(k - 1, abs=1e-8)
    assert m["stable_rank_mean_logits"] == pytest.approx(k - 1, abs=1e-8)


def test_orthogonal_frame_known_values(rng):
    k = 6
    W = random_rotation(k, rng)  # rows orthonormal: cosines 0
    H = W.T @ (np.eye(k) - 1.0 / k)  # centered means of an orthonormal frame: a simplex ETF
    y = np.arange(k)
    out = ig.nc2(H, y, W)
    assert out["maxangle_classifiers"] == pytest.approx(1.0 / (k - 1))
    assert out["equiangular_classifiers"] == pytest.approx(0.0, abs=1e-14)
    assert out["etf_distance_classifiers"] == pytest.approx(np.sqrt(2 - 2 * np.sqrt((k - 1) / k)))
    assert out["etf_distance_means"] == pytest.approx(0.0, abs=1e-12)
    assert ig.effective_rank(W) == pytest.approx(k)
    assert ig.stable_rank(W) == pytest.approx(k)


def test_nc1_against_direct_pseudo_inverse(rng):
    k, n, d = 4, 30, 7
    H, y, _ = etf_features(k, n, d, rng, noise=0.3)
    means, counts = class_means(H, y)
    mu = H.mean(axis=1)
    Sw = within_class_covariance(H, y, means)
    Sb = (means - mu[:, None]) @ (means - mu[:, None]).T / k
    # Direct (textbook) computation with an explicit rank-(k-1) pseudo-inverse of the d x d Sigma_B.
    vals, vecs = np.linalg.eigh(Sb)
    top = vecs[:, -(k - 1):]
    Sb_pinv = top @ np.diag(1 / vals[-(k - 1):]) @ top.T
    direct = np.trace(Sw @ Sb_pinv) / k
    assert ig.nc1(H, y) == pytest.approx(direct, rel=1e-10)
    assert nc1_from_stats(means, counts, Sw) == pytest.approx(direct, rel=1e-10)


def test_nc_metrics_invariances(rng):
    k, n, d = 5, 6, 9
    H, y, W = etf_features(k, n, d, rng, noise=0.2)
    W = W + 0.1 * rng.standard_normal(W.shape)
    base = ig.neural_collapse_metrics(H, y, W)
    perm = rng.permutation(k)
    relabeled = ig.neural_collapse_metrics(H, perm[y], W[np.argsort(perm)])
    Q = random_rotation(d, rng)
    rotated = ig.neural_collapse_metrics(Q @ H, y, W @ Q.T)
    scaled = ig.neural_collapse_metrics(3.0 * H, y, 0.2 * W)
    for key, value in base.items():
        if key == "min_margin":
            continue  # margins scale with the logits by design
        for other in (relabeled, rotated, scaled):
            assert other[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_seli_metrics_are_zero_against_seli_and_not_etf():
    counts = [20, 20, 2, 2, 2]
    g = ig.seli_geometry(counts)
    y = labels_from_counts(counts)
    vals, vecs = np.linalg.eigh(g.W_gram)
    keep = vals > 1e-12
    W = vecs[:, keep] * np.sqrt(vals[keep])
    H = np.linalg.pinv(W) @ g.logits
    assert ig.normalized_distance(W @ W.T, g.W_gram) < 1e-12
    assert ig.normalized_distance(H.T @ H, g.H_gram) < 1e-12
    m = ig.neural_collapse_metrics(H, y, W)
    assert m["nc1"] < 1e-20
    assert m["etf_distance_classifiers"] > 0.1
    assert m["nc4"] == 0.0


def test_margins():
    Z = np.array([[3.0, 0.0], [1.0, 2.0], [0.0, 5.0]])
    assert ig.margins(Z, [0, 2]).tolist() == [2.0, 3.0]


def test_metrics_accept_torch_tensors(rng):
    torch = pytest.importorskip("torch")
    H, y, W = etf_features(3, 2, 4, rng, noise=0.1)
    a = ig.nc1(H, y)
    b = ig.nc1(torch.tensor(H, dtype=torch.float32), torch.tensor(y))
    assert b == pytest.approx(a, rel=1e-5)


def test_missing_class_is_refused():
    with pytest.raises(ig.InvalidParameterError, match="every class"):
        class_means(np.ones((2, 3)), np.array([0, 0, 2]))


def test_nc1_ignores_a_large_common_offset(rng):
    """Centring must annihilate the count vector exactly: features far from the origin (class means close
    relative to their norm, as in random or bfloat16 networks) once gave NC1 ~ 1e30 from a rounding residue."""
    from implicit_geometry.geometry.metrics import nc1

    k, d, n = 5, 32, 40
    y = np.repeat(np.arange(k), n)
    H = rng.standard_normal((d, k))[:, y] * 0.05 + rng.standard_normal((d, k * n))
    ref = nc1(H, y)
    for offset in (1e2, 1e4, 1e6):
        assert nc1(H + offset * rng.standard_normal((d, 1)), y) == pytest.approx(ref, rel=1e-4)


def test_neural_collapse_metrics_refuse_bad_input():
    import implicit_geometry as ig
    from implicit_geometry._validation import InvalidParameterError

    rng = np.random.default_rng(0)
    H, y, W = rng.normal(size=(5, 12)), np.arange(12) % 3, rng.normal(size=(3, 5))
    assert np.isfinite(ig.neural_collapse_metrics(H, y, W)["nc1"])
    bad = [((H, y[:5], W), "one entry per column of H"), ((H, y % 2, W), "cover every class"),
           ((np.where(H > 1, np.nan, H), y, W), "H must be finite"), ((H, y, None), "W must be a 2-D matrix"),
           ((H, y, W[:, :4]), "W must be a matrix with 5 columns"), ((H, y, W, np.ones(2)), "b must be a finite vector of 3")]
    for args, needle in bad:
        with pytest.raises(InvalidParameterError, match=needle):
            ig.neural_collapse_metrics(*args)
    with pytest.raises(InvalidParameterError, match="finite"):
        ig.normalized_distance(np.array([[np.nan]]), np.eye(1))
