"""Measuring a trained language model against the predicted NTP geometry.

Learned word embeddings are the unembedding rows W (V x d), centered over words (adding one vector to every
``w_v`` shifts all logits of a context equally, which softmax ignores); learned context embeddings h_j are
projected on the row space of the centered W (the only part that reaches the logits). Both are then compared with
the prediction by the scale-free normalized distance of Grams.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from implicit_geometry.geometry.metrics import as_float64, normalized_distance
from implicit_geometry.ntp.corpus import CorpusStats
from implicit_geometry.ntp.predict import NTPGeometry, predict_geometry


def shuffled_support_stats(stats: CorpusStats, seed: int = 0) -> CorpusStats:
    """Control: every context keeps its frequency and support size but gets a random support set (uniform
    probabilities on it)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    S = stats.support
    sizes = np.diff(S.indptr)
    V = stats.vocab_size
    cols = np.concatenate([rng.choice(V, s, replace=False) for s in sizes])
    rows = np.repeat(np.arange(S.shape[0]), sizes)
    vals = np.repeat(stats.counts / sizes, sizes)
    nxt = sp.csr_matrix((vals, (rows, cols)), shape=S.shape)
    return CorpusStats(stats.contexts, stats.counts.copy(), nxt, V, stats.vocab)


def learned_grams(W: Any, H: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(W_c W_c^T, H_p^T H_p)`` from unembedding W (V x d) and context embeddings H (d x n)."""
    W = as_float64(W)
    H = as_float64(H)
    Wc = W - W.mean(axis=0, keepdims=True)
    U, s, Vt = np.linalg.svd(Wc, full_matrices=False)
    keep = s > s[0] * 1e-8
    Hp = Vt[keep] @ H  # coordinates of h in the row space of W_c
    return Wc @ Wc.T, Hp.T @ Hp


def collapse_ratio(H: Any, group: Any) -> float:
    """Subspace collapse of contexts with equal supports: mean cosine between normalized embeddings of the same
    group minus the mean cosine across groups (1 for perfect collapse onto orthogonal directions, ~0 without)."""
    H = as_float64(H)
    g = np.asarray(group)
    Hn = H / np.linalg.norm(H, axis=0, keepdims=True).clip(1e-300)
    C = Hn.T @ Hn
    same = g[:, None] == g[None, :]
    off = ~np.eye(len(g), dtype=bool)
    if not np.any(same & off) or not np.any(~same):
        return float("nan")
    return float(C[same & off].mean() - C[~same].mean())


def compare_to_prediction(W: Any, H: Any, rows: np.ndarray, geometry: NTPGeometry, control: NTPGeometry | None = None) -> dict[str, float]:
    """Normalized Gram distances of learned (W, H on contexts ``rows``) to the prediction (and to a control)."""
    GW, GH = learned_grams(W, H)
    out = {
        "dist_W_gram": normalized_distance(GW, geometry.W_gram),
        "dist_context_gram": normalized_distance(GH, geometry.context_gram(rows)),
    }
    if control is not None:
        out["control_dist_W_gram"] = normalized_distance(GW, control.W_gram)
        out["control_dist_context_gram"] = normalized_distance(GH, control.context_gram(rows))
    group = geometry.group[rows]
    Hp = as_float64(H)
    out["collapse_ratio"] = collapse_ratio(Hp, group)
    return out


def direction_alignment(W: Any, directions: np.ndarray) -> np.ndarray:
    """Share of ``||W_c||_F^2`` along each word-space direction (rows of ``directions``, unit vectors): how far
    each singular direction of the prediction has been learned."""
    W = as_float64(W)
    Wc = W - W.mean(axis=0, keepdims=True)
    return ((directions @ Wc) ** 2).sum(axis=1) / (Wc**2).sum()


def prediction_with_control(stats: CorpusStats, seed: int = 0, **svm_options: Any) -> tuple[NTPGeometry, NTPGeometry]:
    """The prediction for a corpus and for its shuffled-support control (``svm_options`` go to ``ntp_svm``)."""
    return predict_geometry(stats, **svm_options), predict_geometry(shuffled_support_stats(stats, seed), **svm_options)
