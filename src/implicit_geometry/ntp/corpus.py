"""Corpus statistics for next-token prediction (theory.md section 6).

From a token sequence and a context length T: the m distinct contexts (the last T tokens before a position),
their frequencies ``pi_j``, the sparse next-token distributions ``p_j`` (an m x V ``scipy.sparse.csr_matrix``), the
support matrix ``S`` (0/1, same pattern) and the empirical entropy, the lower bound of the NTP loss.
Counting is streamed over chunks of the sequence, so a few million tokens need only a few hundred MB.

>>> stats = context_statistics([0, 1, 0, 2, 0, 1, 0, 2], context=1, vocab_size=3)
>>> stats.num_contexts, stats.support.toarray().astype(int).tolist()
(3, [[0, 1, 1], [1, 0, 0], [1, 0, 0]])
>>> round(stats.entropy, 6)  # context "0" is followed by 1 or 2 with equal odds, 4 of 7 times
0.396084
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from implicit_geometry._validation import InvalidParameterError, check_choice, check_int

TOKENIZERS = ("char", "word")


@dataclass
class Vocabulary:
    """Token strings in id order; ``ids`` maps a token to its id."""

    tokens: list[str]
    ids: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.ids:
            self.ids = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def decode(self, ids: Iterable[int], sep: str = "") -> str:
        return sep.join(self.tokens[i] for i in ids)


def split_tokens(text: str, level: str = "char") -> list[str]:
    """Characters, or words and punctuation marks (``level="word"``, lower-cased).

    >>> split_tokens("To be, or not.", "word")
    ['to', 'be', ',', 'or', 'not', '.']
    """
    check_choice("tokenizer", level, TOKENIZERS)
    if level == "char":
        return list(text)
    return re.findall(r"[a-z0-9']+|[^\sa-z0-9']", text.lower())


def tokenize(text: str, level: str = "char", vocab: Vocabulary | None = None) -> tuple[np.ndarray, Vocabulary]:
    """Token ids (int32) and the vocabulary (sorted tokens, so ids do not depend on the order of the text).

    >>> ids, vocab = tokenize("abba")
    >>> ids.tolist(), vocab.tokens
    ([0, 1, 1, 0], ['a', 'b'])
    """
    toks = split_tokens(text, level)
    if vocab is None:
        vocab = Vocabulary(sorted(set(toks)))
    try:
        ids = np.fromiter((vocab.ids[t] for t in toks), dtype=np.int32, count=len(toks))
    except KeyError as exc:
        raise InvalidParameterError(f"text must only hold tokens of the vocabulary (got {exc.args[0]!r})") from None
    return ids, vocab


def read_text(paths: str | Path | Sequence[str | Path], max_chars: int | None = None) -> str:
    """Concatenated text of one or more files (UTF-8, undecodable bytes replaced), at most ``max_chars``."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    parts: list[str] = []
    total = 0
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise InvalidParameterError(f"text file must exist (got {str(p)!r})")
        t = ("\n" if parts else "") + p.read_text(encoding="utf-8", errors="replace")  # files joined by newlines
        if max_chars is not None:
            t = t[: max(0, max_chars - total)]
        parts.append(t)
        total += len(t)
        if max_chars is not None and total >= max_chars:
            break
    return "".join(parts)


@dataclass
class CorpusStats:
    """Next-token statistics of a corpus for context length T.

    Attributes:
        contexts: m x T token ids of the distinct contexts (rows sorted lexicographically).
        counts: occurrences of each context (m,); ``pi = counts / counts.sum()``.
        next_counts: m x V sparse counts of the next token after each context.
        vocab_size: V.
        vocab: token strings, when the corpus came from text.
    """

    contexts: np.ndarray
    counts: np.ndarray
    next_counts: sp.csr_matrix
    vocab_size: int
    vocab: Vocabulary | None = None

    @property
    def num_contexts(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_tokens(self) -> int:
        """Number of (context, next token) pairs counted."""
        return int(self.counts.sum())

    @property
    def pi(self) -> np.ndarray:
        return self.counts / self.counts.sum()

    @property
    def probabilities(self) -> sp.csr_matrix:
        """Sparse m x V next-token distributions ``p_j`` (rows sum to 1)."""
        return sp.csr_matrix(sp.diags(1.0 / self.counts) @ self.next_counts)

    @property
    def support(self) -> sp.csr_matrix:
        """The 0/1 support matrix S (m x V, float64)."""
        S = self.next_counts.copy().astype(np.float64)
        S.data[:] = 1.0
        return S

    @property
    def entropy(self) -> float:
        """Empirical entropy ``-sum_j pi_j sum_z p_jz log p_jz`` (nats): the infimum of the NTP loss."""
        P = self.probabilities
        rows = np.repeat(np.arange(P.shape[0]), np.diff(P.indptr))
        return float(-(self.pi[rows] * P.data * np.log(P.data)).sum()) + 0.0  # + 0.0: a deterministic corpus gives 0, not -0

    def support_groups(self) -> tuple[np.ndarray, np.ndarray]:
        """``(group, multiplicity)``: contexts with equal support sets share a group id (in order of first
        appearance); ``multiplicity[g]`` counts the contexts of group g."""
        return support_groups(self.support)

    def summary(self) -> dict[str, Any]:
        S = self.support
        sizes = np.diff(S.indptr)
        group, mult = self.support_groups()
        return {
            "tokens": self.num_tokens,
            "vocab_size": self.vocab_size,
            "context_length": int(self.contexts.shape[1]),
            "distinct_contexts": self.num_contexts,
            "distinct_supports": int(mult.size),
            "support_size_mean": float(sizes.mean()),
            "support_size_max": int(sizes.max()),
            "singleton_support_fraction": float(np.mean(sizes == 1)),
            "entropy_nats": self.entropy,
        }


def support_groups(S: Any) -> tuple[np.ndarray, np.ndarray]:
    """Group rows of a 0/1 (sparse or dense) matrix with equal patterns: ``(group per row, multiplicity)``.

    >>> g, mult = support_groups(np.array([[1, 0], [0, 1], [1, 0]]))
    >>> g.tolist(), mult.tolist()
    ([0, 1, 0], [2, 1])
    """
    S = sp.csr_matrix(S)
    S.sort_indices()
    keys = [S.indices[S.indptr[j] : S.indptr[j + 1]].tobytes() for j in range(S.shape[0])]
    index: dict[bytes, int] = {}
    group = np.fromiter((index.setdefault(k, len(index)) for k in keys), dtype=np.int64, count=len(keys))
    return group, np.bincount(group, minlength=len(index))


def _window_pairs(ids: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique (context, next) rows of one chunk with counts; contexts as a void view for cheap hashing."""
    win = np.lib.stride_tricks.sliding_window_view(ids, T + 1)
    rows, cnt = np.unique(np.ascontiguousarray(win), axis=0, return_counts=True)
    return rows, cnt


def context_statistics(
    ids: Any,
    context: int,
    vocab_size: int | None = None,
    *,
    vocab: Vocabulary | None = None,
    chunk: int = 1_000_000,
) -> CorpusStats:
    """Count the distinct contexts of length ``context`` and their next tokens, streaming over chunks.

    Every position t >= T of the sequence contributes the pair (ids[t-T:t], ids[t]).
    """
    T = check_int("context", context, minimum=1)
    chunk = check_int("chunk", chunk, minimum=T + 2)
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu" or (ids.size and ids.min() < 0):
        raise InvalidParameterError(f"token ids must be a 1-D array of non-negative integers (got shape {ids.shape}, dtype {ids.dtype})")
    if ids.size <= T:
        raise InvalidParameterError(f"token sequence must be longer than the context length {T} (got {ids.size} tokens)")
    V = int(ids.max()) + 1 if vocab_size is None else check_int("vocab_size", vocab_size, minimum=int(ids.max()) + 1)
    dtype = np.int32 if V < 2**31 else np.int64
    ids = ids.astype(dtype, copy=False)
    acc_rows: list[np.ndarray] = []
    acc_cnt: list[np.ndarray] = []
    for start in range(0, ids.size - T, chunk):
        part = ids[start : min(ids.size, start + chunk + T)]
        if part.size <= T:
            break
        rows, cnt = _window_pairs(part, T)
        acc_rows.append(rows)
        acc_cnt.append(cnt)
        if len(acc_rows) >= 8:  # merge as we go: memory stays proportional to the distinct pairs
            acc_rows, acc_cnt = _merge(acc_rows, acc_cnt)
    rows, cnt = _merge(acc_rows, acc_cnt)
    rows, cnt = rows[0], cnt[0]
    ctx, inverse = np.unique(rows[:, :T], axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    nxt = sp.csr_matrix((cnt.astype(np.float64), (inverse, rows[:, T].astype(np.int64))), shape=(ctx.shape[0], V))
    nxt.sum_duplicates()
    counts = np.asarray(nxt.sum(axis=1)).reshape(-1)
    return CorpusStats(contexts=ctx, counts=counts, next_counts=nxt, vocab_size=V, vocab=vocab)


def _merge(rows: list[np.ndarray], cnt: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    allr = np.concatenate(rows)
    allc = np.concatenate(cnt)
    u, inv = np.unique(allr, axis=0, return_inverse=True)
    return [u], [np.bincount(inv.reshape(-1), weights=allc).astype(np.int64)]


def stats_from_distributions(P: Any, counts: Any | None = None) -> CorpusStats:
    """Statistics given directly: next-token distributions P (m x V, rows sum to 1) and context counts (default
    all 1, any positive numbers allowed). Contexts are numbered 0..m-1 (a context of length 1)."""
    P = sp.csr_matrix(P, dtype=np.float64)
    P.eliminate_zeros()
    m, V = P.shape
    if np.any(P.data < 0) or not np.allclose(np.asarray(P.sum(axis=1)).reshape(-1), 1.0, atol=1e-9):
        raise InvalidParameterError("P must have non-negative rows summing to 1 (got other rows)")
    counts = np.ones(m) if counts is None else np.asarray(counts, dtype=np.float64).reshape(-1)
    if counts.size != m or np.any(counts <= 0):
        raise InvalidParameterError(f"counts must be {m} positive numbers (got {counts.size} values)")
    nxt = sp.csr_matrix(sp.diags(counts) @ P)
    return CorpusStats(contexts=np.arange(m)[:, None], counts=counts, next_counts=nxt, vocab_size=V)


# -- synthetic corpora with planted structure ------------------------------------------------------------------


@dataclass
class PlantedCorpus:
    """A synthetic corpus and the structure planted in it."""

    stats: CorpusStats
    context_group: np.ndarray  # support group of each context (contexts of a group share their support set)
    word_concept: np.ndarray  # latent concept of each word (-1: none)
    sequence: np.ndarray | None = None


def planted_supports(
    num_groups: int = 4,
    contexts_per_group: int = 3,
    vocab_size: int = 12,
    support_size: int | Sequence[int] = 3,
    *,
    seed: int = 0,
    disjoint: bool = False,
) -> PlantedCorpus:
    """Contexts in groups that share a support set; probabilities inside a support are random (Dirichlet),
    context counts random in 1..5. ``disjoint=True`` draws non-overlapping supports (needs enough words).

    >>> c = planted_supports(2, 3, 8, 2, seed=1)
    >>> c.stats.num_contexts, len(c.stats.support_groups()[1])
    (6, 2)
    """
    G = check_int("num_groups", num_groups, minimum=1)
    r = check_int("contexts_per_group", contexts_per_group, minimum=1)
    V = check_int("vocab_size", vocab_size, minimum=2)
    sizes = [support_size] * G if np.isscalar(support_size) else list(support_size)
    if len(sizes) != G or any(not (1 <= int(s) < V) for s in sizes):
        raise InvalidParameterError(f"support_size must be in 1..{V - 1}, one per group or a single number (got {support_size!r})")
    if disjoint and sum(map(int, sizes)) > V:
        raise InvalidParameterError(f"vocab_size must be at least the total support size {sum(map(int, sizes))} for disjoint supports (got {V})")
    rng = np.random.default_rng(seed)
    supports: list[np.ndarray] = []
    perm = rng.permutation(V)
    used = 0
    seen: set[bytes] = set()
    for s in map(int, sizes):
        while True:
            sup = np.sort(perm[used : used + s]) if disjoint else np.sort(rng.choice(V, s, replace=False))
            if disjoint or sup.tobytes() not in seen:
                break
        used += s
        seen.add(sup.tobytes())
        supports.append(sup)
    m = G * r
    P = np.zeros((m, V))
    group = np.repeat(np.arange(G), r)
    for j in range(m):
        sup = supports[group[j]]
        P[j, sup] = rng.dirichlet(np.full(len(sup), 2.0))
    counts = rng.integers(1, 6, size=m).astype(np.float64)
    concept = -np.ones(V, dtype=np.int64)
    if disjoint:
        for g, sup in enumerate(supports):
            concept[sup] = g
    return PlantedCorpus(stats_from_distributions(P, counts), group, concept)


def hierarchical_corpus(
    num_concepts: int = 3,
    words_per_concept: int = 4,
    contexts_per_concept: int = 4,
    *,
    seed: int = 0,
) -> PlantedCorpus:
    """A two-level hierarchy of latent concepts: words belong to concepts; a context of concept c is followed by
    words of c (its support is a random half of them or all of them, so contexts of one concept share a few
    support sets) and, for "generic" contexts, by words of two concepts. The known word groups (``word_concept``)
    are what orthant-based clustering should recover.
    """
    C = check_int("num_concepts", num_concepts, minimum=2)
    k = check_int("words_per_concept", words_per_concept, minimum=2)
    r = check_int("contexts_per_concept", contexts_per_concept, minimum=1)
    rng = np.random.default_rng(seed)
    V = C * k
    rows: list[np.ndarray] = []
    for c in range(C):
        words = np.arange(c * k, (c + 1) * k)
        for i in range(r):
            p = np.zeros(V)
            sup = words if i % 2 == 0 else words[: max(1, k // 2)]
            p[sup] = rng.dirichlet(np.full(len(sup), 2.0))
            rows.append(p)
    for c in range(C):  # generic contexts spanning two neighbouring concepts
        p = np.zeros(V)
        sup = np.concatenate([np.arange(c * k, (c + 1) * k), np.arange(((c + 1) % C) * k, ((c + 1) % C + 1) * k)])
        p[sup] = rng.dirichlet(np.full(len(sup), 2.0))
        rows.append(p)
    P = np.array(rows)
    counts = rng.integers(1, 6, size=P.shape[0]).astype(np.float64)
    stats = stats_from_distributions(P, counts)
    group, _ = stats.support_groups()
    return PlantedCorpus(stats, group, np.repeat(np.arange(C), k))


def markov_sequence(
    length: int = 20000,
    vocab_size: int = 12,
    context: int = 2,
    num_groups: int = 6,
    support_size: int = 3,
    *,
    seed: int = 0,
) -> PlantedCorpus:
    """A token sequence from an order-T Markov chain with planted supports: each context (last T tokens) is
    assigned one of ``num_groups`` support sets (a fixed random map), and the next token is drawn from a
    context-specific distribution on that set. Every context of a group therefore shares its support; the
    returned ``stats`` are the empirical statistics of the drawn sequence (supports can be smaller when rare)."""
    n = check_int("length", length, minimum=context + 2)
    V = check_int("vocab_size", vocab_size, minimum=2)
    T = check_int("context", context, minimum=1)
    G = check_int("num_groups", num_groups, minimum=1)
    s = check_int("support_size", support_size, minimum=1, maximum=V - 1)
    rng = np.random.default_rng(seed)
    supports = np.stack([np.sort(rng.choice(V, s, replace=False)) for _ in range(G)])
    n_ctx = V**T
    ctx_group = rng.integers(0, G, size=n_ctx)
    probs = rng.dirichlet(np.full(s, 1.0), size=n_ctx)
    cum = np.cumsum(probs, axis=1)
    seq = np.empty(n, dtype=np.int32)
    seq[:T] = rng.integers(0, V, size=T)
    u = rng.random(n)
    code = 0
    for t in range(T):
        code = code * V + int(seq[t])
    mod = V ** (T - 1)
    for t in range(T, n):
        k = int(np.searchsorted(cum[code], u[t] * cum[code, -1]))
        tok = int(supports[ctx_group[code], min(k, s - 1)])
        seq[t] = tok
        code = (code % mod) * V + tok if T > 1 else tok
    stats = context_statistics(seq, T, V)
    codes = np.zeros(stats.num_contexts, dtype=np.int64)
    for t in range(T):
        codes = codes * V + stats.contexts[:, t]
    return PlantedCorpus(stats, ctx_group[codes], -np.ones(V, dtype=np.int64), seq)


def planted_hierarchy(
    vocab_size: int = 2000,
    num_contexts: int = 20000,
    topics: int = 20,
    classes_per_topic: int = 11,
    *,
    max_classes: int = 3,
    max_support: int = 20,
    seed: int = 0,
) -> PlantedCorpus:
    """A hierarchy of latent concepts at scale: words -> word classes (random sizes, ~V / classes words each) ->
    topics. A support set is a union of 1..``max_classes`` classes of one topic with at most ``max_support`` words,
    and every such set occurs (their number is set by the hierarchy); each of the ``num_contexts`` contexts follows
    one of them (every set at least once, the rest uniformly), with Dirichlet(2) probabilities and counts in 1..5.
    ``context_group`` is the support set of a context, ``word_concept`` the class of a word. Stored sparse, so
    V = 2000 and m = 20000 take a tenth of a second. The defaults (20 topics x 11 classes of ~9 words, unions of up
    to 3 classes within 20 words) admit about 1300 support sets (1328 at seed 0): about 15 contexts share each.

    >>> c = planted_hierarchy(60, 300, topics=2, classes_per_topic=3, max_support=25)
    >>> c.stats.num_contexts, c.stats.vocab_size, int(c.word_concept.max()) + 1
    (300, 60, 6)
    """
    V = check_int("vocab_size", vocab_size, minimum=2)
    T = check_int("topics", topics, minimum=1)
    k = check_int("classes_per_topic", classes_per_topic, minimum=1)
    C = T * k
    if C > V:
        raise InvalidParameterError(f"vocab_size must be at least topics * classes_per_topic = {C} (got {V})")
    r = check_int("max_classes", max_classes, minimum=1, maximum=k)
    smax = check_int("max_support", max_support, minimum=1, maximum=V - 1)
    rng = np.random.default_rng(seed)
    for _ in range(100):  # class sizes 1 + multinomial, redrawn until every class fits in a support
        sizes = 1 + rng.multinomial(V - C, np.full(C, 1.0 / C))
        if sizes.max() <= smax:
            break
    word_class = np.repeat(np.arange(C), sizes)[rng.permutation(V)]
    members = [np.flatnonzero(word_class == c) for c in range(C)]
    from itertools import combinations

    supports = [np.sort(np.concatenate([members[c] for c in combo]))
                for t in range(T) for q in range(1, r + 1) for combo in combinations(range(t * k, (t + 1) * k), q)
                if sizes[list(combo)].sum() <= smax]
    G = len(supports)
    if G == 0:
        raise InvalidParameterError(f"max_support must admit at least one class (got {smax}, smallest class {int(sizes.min())})")
    m = check_int("num_contexts", num_contexts, minimum=G)
    group = np.concatenate([np.arange(G), rng.integers(0, G, m - G)])[rng.permutation(m)]
    lens = np.array([s.size for s in supports])[group]
    rows = np.repeat(np.arange(m), lens)
    cols = np.concatenate([supports[j] for j in group])
    vals = rng.gamma(2.0, size=cols.size)  # Dirichlet(2) per context: normalized gammas
    vals /= np.bincount(rows, weights=vals, minlength=m)[rows]
    counts = rng.integers(1, 6, size=m).astype(np.float64)
    P = sp.csr_matrix((vals, (rows, cols)), shape=(m, V))
    return PlantedCorpus(stats_from_distributions(P, counts), group, word_class)
