"""The geometry predicted from the support pattern: ``L*``, the NTP-SVM ``L_mm``, Grams and subspace collapse.

Implicit bias of next-token prediction (theory.md section 6): the logits go as ``L(t) ~ L* + rho(t) L_mm`` with

- ``L*`` (in F): on each support, the log-odds ``log p_jz - mean_{z' in S_j} log p_jz'``; 0 off the support;
- ``L_mm = argmin ||L||_*`` s.t. ``L[j,z] = L[j,z']`` (z, z' in S_j), ``L[j,z] - L[j,v] >= 1`` (v not in S_j).

The NTP-SVM solver (:func:`ntp_svm`) uses three facts, each checked in the tests against cvxpy:

1. Rows of contexts with equal supports can be taken equal (average a solution over permutations of such rows:
   feasible, no larger norm), and ``L = P X`` with P the m x g group indicator gives
   ``||L||_* = ||diag(sqrt(mult)) X||_*``: the problem lives on the g distinct supports, rows weighted by sqrt of
   their multiplicity. Likewise words contained in exactly the same support sets (equal columns) are
   interchangeable: their columns can be taken equal, and with n the class sizes ``||D X E^T||_* =
   ||D X diag(sqrt(n))||_*`` (rows centered in the full word space): the problem lives on g x k.
2. Centering rows (``X -> X (I - 11^T/V)``) keeps feasibility and does not increase the nuclear norm, so every
   centered feasible X is ``(S - Sigma)(I - 11^T/V)`` for a slack ``Sigma >= 0`` supported off the support.
   ``Sigma = 0`` is the centered support matrix (always feasible); the problem is a non-negative program in Sigma.
3. Optimality of ``Sigma = 0`` has a certificate: with ``Q = U V^T`` the polar factor of ``D S_c``, it is optimal
   iff ``Q <= 0`` off the support (KKT). Otherwise ADMM on ``Y = D (S - Sigma) P`` solves it, with singular value
   thresholding through the g x g or V x V Gram (whichever is smaller) and an exact per-row projection.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from implicit_geometry._admm import balance_penalty
from implicit_geometry._validation import InvalidParameterError, check_float, check_int
from implicit_geometry.ntp.corpus import CorpusStats, support_groups


def sparse_logits(stats: CorpusStats) -> sp.csr_matrix:
    """The min-norm finite component ``L*`` (m x V sparse): centered log-probabilities on each support.

    >>> from implicit_geometry.ntp.corpus import stats_from_distributions
    >>> L = sparse_logits(stats_from_distributions([[0.5, 0.25, 0.25, 0.0]])).toarray()
    >>> bool(abs(L[0, 0] - L[0, 1] - np.log(2)) < 1e-12), float(L[0, 3])
    (True, 0.0)
    """
    P = stats.probabilities
    L = P.copy()
    logp = np.log(P.data)
    rows = np.repeat(np.arange(P.shape[0]), np.diff(P.indptr))
    sums = np.bincount(rows, weights=logp, minlength=P.shape[0])
    sizes = np.diff(P.indptr)
    L.data = logp - (sums / sizes)[rows]
    return L


def _dense01(S: Any) -> np.ndarray:
    S = S.toarray() if sp.issparse(S) else np.asarray(S)
    S = (np.asarray(S, dtype=np.float64) != 0).astype(np.float64)
    return S


def centered(A: np.ndarray) -> np.ndarray:
    """Rows centered: ``A (I - 11^T/V)``."""
    return A - A.mean(axis=1, keepdims=True)


def _check_support(S: np.ndarray) -> None:
    sizes = S.sum(axis=1)
    if S.ndim != 2 or S.shape[0] == 0 or S.shape[1] < 2:
        raise InvalidParameterError(f"support must be a non-empty m x V matrix with V >= 2 (got shape {S.shape})")
    if np.any(sizes == 0):
        raise InvalidParameterError("support must have at least one token in every row (got an empty row)")


def _svd_via_gram(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD ``M = U diag(s) Vt`` of a tall or wide matrix through the eigendecomposition of the smaller Gram
    (its cost is that of two matrix products plus a small eigh). Singular values below ~1e-7 relative are
    dropped: their singular vectors are not resolved by the Gram, and they are zero in every use here."""
    tall = M.shape[0] >= M.shape[1]
    G = M.T @ M if tall else M @ M.T
    evals, evecs = np.linalg.eigh(G)
    keep = evals > max(evals[-1], 0.0) * 1e-14
    evals, evecs = evals[keep][::-1], evecs[:, keep][:, ::-1]
    s = np.sqrt(evals)
    if tall:
        return (M @ evecs) / s, s, evecs.T
    return evecs, s, (evecs.T @ M) / s[:, None]


def _svd(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if min(M.shape) >= 150 or max(M.shape) >= 2000:  # LAPACK SVD is ~10x slower than Gram + eigh here (and loses more to threads)
        return _svd_via_gram(M)
    U, s, Vt = np.linalg.svd(M, full_matrices=False)
    keep = s > (s[0] if s.size else 0) * 1e-12
    return U[:, keep], s[keep], Vt[keep]


def nuclear_norm(A: np.ndarray) -> float:
    return float(np.linalg.svd(A, compute_uv=False).sum())


def _project_rows(C: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Per row, ``argmin_{sigma >= 0, sigma = 0 on the support} ||P sigma - c||^2`` with c centered:
    ``sigma_v = max(0, c_v + mu)`` off the support with ``V mu = sum_v sigma_v`` (unique, found by sorting)."""
    m, V = C.shape
    c = np.where(off, C, -np.inf)
    srt = -np.sort(-c, axis=1)  # descending; support entries (-inf) last
    finite = np.isfinite(srt)
    csum = np.cumsum(np.where(finite, srt, 0.0), axis=1)
    k = np.arange(1, V + 1)
    # mu_k when the k largest are active: sum of them / (V - k); the first k whose next entry stays inactive.
    mu_k = np.concatenate([np.zeros((m, 1)), csum[:, :-1] / (V - k[:-1])], axis=1)  # mu for k = 0..V-1 active
    nxt = srt  # entry k (0-based) is the (k+1)-th largest
    ok = ~(nxt + mu_k > 0)  # inactive next entry (also true for -inf)
    first = ok.argmax(axis=1)
    mu = mu_k[np.arange(m), first]
    return np.where(off, np.maximum(0.0, C + mu[:, None]), 0.0)


def _wcenter(A: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Rows centered in the full word space when column k stands for ``n_k`` identical words."""
    return A - ((A @ n) / n.sum())[:, None]


def _weighted_root(W: np.ndarray, off: np.ndarray, n: np.ndarray, c0: np.ndarray | None = None) -> np.ndarray:
    """Per row, the root c of ``h(c) = sum_sup n (c - w) + sum_off n min(0, c - w)`` (see
    :func:`_project_rows_weighted`). h is increasing, piecewise linear and concave, so Newton's method (c = the
    weighted mean of the support entries and the off-support entries above c) reaches the root's piece and stops
    there exactly, after a few steps from a warm start ``c0`` (the previous ADMM iterate's roots)."""
    on = ~off
    WS = np.where(on, W, 0.0) @ n
    NS = on @ n
    c = WS / NS if c0 is None else np.array(c0, dtype=np.float64)
    rows = np.arange(W.shape[0])
    prev: np.ndarray | None = None
    for _ in range(W.shape[1] + 2):  # at most one step per piece
        Wr, offr = W[rows], off[rows]
        act = offr & (Wr > c[rows, None])
        c[rows] = (WS[rows] + np.where(act, Wr, 0.0) @ n) / (NS[rows] + act @ n)
        moving = np.ones(rows.size, bool) if prev is None else ~(act == prev).all(axis=1)
        rows, prev = rows[moving], act[moving]
        if rows.size == 0:
            break
    return c


def _project_rows_weighted(W: np.ndarray, off: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The per-row projection of :func:`_project_rows` when column k stands for ``n_k`` words: per row,
    ``argmin_{sigma >= 0 off the support, c} sum_k n_k (c - sigma_k - w_k)^2`` (sigma = 0 on the support). For fixed c,
    ``sigma_k = max(0, c - w_k)``; c solves ``sum_sup n (c - w) + sum_off n min(0, c - w) = 0`` (:func:`_weighted_root`)."""
    return np.where(off, np.maximum(0.0, _weighted_root(W, off, n)[:, None] - W), 0.0)


@dataclass
class SVMResult:
    """Solution of the NTP-SVM on the distinct supports.

    Attributes:
        X: g x V solution rows (one per distinct support, rows centered); ``L_mm = X[group]``.
        supports: g x V 0/1 distinct supports; ``multiplicity`` (g,) how many contexts share each.
        objective: ``||diag(sqrt(mult)) X||_*`` = ``||L_mm||_*`` over all contexts.
        centered_objective: the same for the centered support matrix.
        centered_distance: normalized distance between L_mm and the centered support matrix.
        certified: True when optimality was certified by the KKT check (then the solution is exact).
        max_certificate_violation: largest positive off-support entry of the polar factor at the solution (0 at an
            exact optimum that is the centered support matrix).
    """

    X: np.ndarray
    supports: np.ndarray
    multiplicity: np.ndarray
    group: np.ndarray
    objective: float
    centered_objective: float
    centered_distance: float
    certified: bool
    iterations: int
    seconds: float
    residual: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def L(self) -> np.ndarray:
        """L_mm over all contexts (m x V)."""
        return self.X[self.group]


@contextlib.contextmanager
def _blas_threads(g: int, V: int) -> Iterator[None]:
    """One BLAS thread when the Grams are small (k x k with k < 512): measured 4x less CPU and 3x less wall time on
    a loaded 2-core machine (V = 2000, 1328 supports x 220 word classes); the default otherwise. Needs threadpoolctl
    (a dependency of scikit-learn); without it nothing changes."""
    if min(g, V) >= 512:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def ntp_svm(
    support: Any,
    multiplicity: Any | None = None,
    *,
    tol: float = 1e-9,
    max_iter: int = 20000,
    time_limit: float | None = None,
    method: str = "auto",
    merge_words: bool = True,
    gap_tol: float | None = None,
) -> SVMResult:
    """Solve the NTP-SVM ``min ||L||_*`` s.t. equal logits on each support and margin 1 to every other token.

    Args:
        support: m x V 0/1 support matrix (dense or sparse). Rows with equal supports are merged.
        multiplicity: optional per-row positive integer weights (a row standing for that many contexts).
        tol: stopping tolerance (ADMM: relative primal and dual residuals; active set: KKT residual).
        time_limit: seconds after which the best iterate so far is returned.
        method: ``"admm"``, ``"active-set"`` (majorize-minimize on a sparse slack through the V x V Gram; needs
            ``D S_c`` of full rank V - 1, else ADMM is used) or ``"auto"`` (active set when g * V >= 10^6).
        merge_words: also merge words with equal columns in the distinct supports (words that follow exactly the
            same support sets are interchangeable, so their columns are equal at an optimum): the program is solved
            on the word classes with column weights and expanded back (exact; ``info["word_classes"]``).
        gap_tol: also stop as soon as the certified relative duality gap ``(objective - dual bound) / objective`` is
            at most this (ADMM checks it every 10 iterations; ``info["gap_history"]``).

    >>> res = ntp_svm(np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]]))
    >>> res.certified, round(res.objective, 6), res.multiplicity.tolist()
    (True, 1.906041, [2.0, 1.0])
    """
    t0 = time.perf_counter()
    tol = check_float("tol", tol, minimum=0.0, strict_min=True)
    max_iter = check_int("max_iter", max_iter, minimum=1)
    Sfull = sp.csr_matrix(support)
    Sfull.data[:] = 1.0
    Sfull.eliminate_zeros()
    group, mult = support_groups(Sfull)
    if multiplicity is not None:
        w = np.asarray(multiplicity, dtype=np.float64).reshape(-1)
        if w.size != Sfull.shape[0] or np.any(w <= 0):
            raise InvalidParameterError(f"multiplicity must be {Sfull.shape[0]} positive numbers (got {w.size})")
        mult_w = np.bincount(group, weights=w, minlength=mult.size)
    else:
        mult_w = mult.astype(np.float64)
    first = np.zeros(mult.size, dtype=np.int64)
    first[group[::-1]] = np.arange(group.size)[::-1]
    Sg = sp.csr_matrix(Sfull[first])
    _check_support(_dense01(Sg) if Sg.shape[0] * Sg.shape[1] <= 4_000_000 else np.ones((1, Sg.shape[1])))
    if np.any(np.diff(Sg.indptr) == 0):
        raise InvalidParameterError("support must have at least one token in every row (got an empty row)")
    if method not in ("auto", "admm", "active-set"):
        raise InvalidParameterError(f"method must be one of 'auto', 'admm', 'active-set' (got {method!r})")
    # Words with equal columns (the same set of supports contains them) are interchangeable: averaging an optimum
    # over their permutations keeps it feasible and optimal, so their columns can be taken equal, and with E the
    # V x k class indicator ||D X E^T||_* = ||D X diag(sqrt(n))||_* (n = class sizes): the program lives on k columns.
    cls, ncls = support_groups(Sg.T) if merge_words else (np.arange(Sg.shape[1]), np.ones(Sg.shape[1], np.int64))
    if ncls.size < 2:
        cls, ncls = np.arange(Sg.shape[1]), np.ones(Sg.shape[1], np.int64)
    firstc = np.zeros(ncls.size, dtype=np.int64)
    firstc[cls[::-1]] = np.arange(cls.size)[::-1]
    n = ncls.astype(np.float64)
    S = _dense01(Sg[:, firstc])
    g, V = S.shape
    with _blas_threads(g, V):  # small Grams: one BLAS thread (a second only spins on a shared machine)
        info: dict[str, Any] = {"word_classes": int(V)}

        def expand(X: np.ndarray) -> np.ndarray:
            return X[:, cls] if V < cls.size else X

        Sx = expand(S)
        Scx = centered(Sx)
        d = np.sqrt(mult_w)[:, None]
        sqn = np.sqrt(n)
        # The active set needs D S_c of rank V - 1, impossible with fewer than V - 1 rows: go straight to ADMM then.
        if g >= V - 1 and (method == "active-set" or (method == "auto" and g * V >= 1_000_000)):
            out = _active_set_mm(sp.csr_matrix(S), mult_w, n, tol=tol, max_iter=max_iter, time_limit=time_limit, t0=t0)
            if out is not None:
                er, ec, sig, obj, it, ainfo = out
                info.update(ainfo)
                certified = it == 1 and info["centered_certificate_violation"] <= 1e-10
                X = S.copy()
                X[er, ec] -= sig
                X = expand(_wcenter(X, n))
                info["method"] = "active-set"
                info["certificate_violation"] = info["kkt_residual"]
                info["slack_entries"] = int((n[ec] * (sig > 1e-9)).sum())
                return SVMResult(X, Sx, mult_w, group, obj, info["objective_history"][0], 0.0 if certified else _weighted_distance(X, Scx, mult_w),
                                 certified, it, time.perf_counter() - t0, info["kkt_residual"], info)
        off = S == 0
        U, s, Vt = _svd(d * _wcenter(S, n) * sqn)
        centered_obj = float(s.sum())
        Q = U @ Vt  # polar factor in the weighted column space; its signs are those of the full one
        viol = float(np.max(np.where(off, Q / sqn, -np.inf), initial=-np.inf))
        info.update({"centered_certificate_violation": max(viol, 0.0), "rank_centered": int(s.size), "method": "admm"})
        if viol <= 1e-10 * max(1.0, float(np.abs(Q).max())):
            info.update({"dual_bound": centered_obj, "duality_gap": 0.0, "kkt_residual": 0.0})
            return SVMResult(Scx, Sx, mult_w, group, centered_obj, centered_obj, 0.0, True, 0, time.perf_counter() - t0, 0.0, info)

        # ADMM on  min ||Y||_*  s.t.  Y = D (S - Sigma) P sqrt(n),  Sigma >= 0 off the support (scaled form, residual
        # balancing); P centers rows in the full word space.
        def A(Sig: np.ndarray) -> np.ndarray:
            return d * _wcenter(S - Sig, n) * sqn

        Sig = np.zeros_like(S)
        AS = A(Sig)
        Uu = np.zeros_like(S)
        rho = 1.0 / max(1.0, float(s[0]))
        it, r_norm = 0, math.inf
        best = (centered_obj, Sig.copy())
        croot = None
        S_sp = sp.csr_matrix(S)
        gaps: list[tuple[int, float]] = []
        for it in range(1, max_iter + 1):
            Mk = AS - Uu
            Uk, sk, Vk = _svd(Mk)
            shrink = np.maximum(sk - 1.0 / rho, 0.0)
            nz = shrink > 0
            Y = (Uk[:, nz] * shrink[nz]) @ Vk[nz]
            T = (Y + Uu) / d
            Wt = T / sqn - S
            croot = _weighted_root(Wt, off, n, croot)  # warm start: the roots move little between iterations
            Sig = np.where(off, np.maximum(0.0, croot[:, None] - Wt), 0.0)
            AS_new = A(Sig)
            r = Y - AS_new
            Uu += r
            r_norm = float(np.linalg.norm(r))
            s_norm = rho * float(np.linalg.norm(AS_new - AS))
            AS = AS_new
            scale = max(float(np.linalg.norm(Y)), float(np.linalg.norm(AS)), 1.0)
            if it % 10 == 0 or it == max_iter:
                Ua, sa, Va = _svd(AS)
                obj = float(sa.sum())
                if obj < best[0]:
                    best = (obj, Sig.copy())
                if gap_tol is not None:  # AS is feasible, so obj is an upper bound; its polar factor gives a lower one
                    gap = (obj - _dual_bound(S_sp, d[:, 0], (Ua @ Va) / sqn, n)) / obj
                    gaps.append((it, gap))
                    if gap <= gap_tol:
                        best = (obj, Sig.copy())
                        break
            if r_norm <= tol * scale and s_norm <= tol * max(float(np.linalg.norm(rho * Uu)), 1.0):
                break
            if time_limit is not None and time.perf_counter() - t0 > time_limit:
                break
            rho = balance_penalty(rho, Uu, r_norm, s_norm)
        Ux, sx, Vx = _svd(AS)  # AS = d * X * sqn for the last Sig: one SVD gives the objective and the certificate
        obj = float(sx.sum())
        if best[0] < obj:
            obj, Sig = best
            Ux, sx, Vx = _svd(A(Sig))
        X = _wcenter(S - Sig, n)
        Qc = (Ux @ Vx) / sqn  # the full polar factor, per word class
        info["certificate_violation"] = float(max(0.0, np.max(np.where(off & (Sig <= 1e-12), Qc, -np.inf), initial=0.0)))
        R = Qc / d  # the gradient over -d^2 per word, as in the active-set solver: <= 0 where the slack is 0, 0 where it is not
        info["kkt_residual"] = max(float(np.max(np.where(off & (Sig <= 1e-9), R, 0.0))), float(np.max(np.where(Sig > 1e-9, np.abs(R), 0.0))))
        info["slack_entries"] = int((n * (Sig > 1e-9)).sum())
        info["rank"] = int(sx.size)
        bound = _dual_bound(S_sp, d[:, 0], Qc, n)
        info.update({"dual_bound": bound, "duality_gap": (obj - bound) / obj, "gap_history": gaps})
        X = expand(X)
        return SVMResult(X, Sx, mult_w, group, obj, centered_obj, _weighted_distance(X, Scx, mult_w), False, it, time.perf_counter() - t0, r_norm, info)


def _sparse_polar(S: sp.csr_matrix, w: np.ndarray, n: np.ndarray, rows: np.ndarray, cols: np.ndarray, sig: np.ndarray):
    """``f = ||D (S - Sigma) P N^{1/2}||_*`` and ``K~ = N^{1/2} G^{+1/2} N^{1/2}`` with
    ``G = P N^{1/2} (S - Sigma)^T D^2 (S - Sigma) N^{1/2} P`` (k x k; P centers in the full word space, N = diag of the
    word-class sizes, all 1 without merged words), for a sparse slack: the Gram is a sparse product, so the cost is
    one k x k eigh instead of a g x k SVD. ``R = (S - Sigma) K~`` is the gradient per class entry over ``-d^2``."""
    g, V = S.shape
    X = (S - sp.csr_matrix((sig, (rows, cols)), shape=(g, V))).tocsr()
    B = (X.T @ sp.csr_matrix(X.multiply(w[:, None]))).toarray()
    sqn = np.sqrt(n)
    u = sqn / math.sqrt(n.sum())
    B = sqn[:, None] * B * sqn[None, :]
    Bu = B @ u
    G = B - np.outer(u, Bu) - np.outer(Bu, u) + float(u @ Bu) * np.outer(u, u)
    lam, U = np.linalg.eigh(G)
    keep = lam > max(lam[-1], 0.0) * 1e-12
    lam, U = lam[keep], U[:, keep]
    K = sqn[:, None] * ((U / np.sqrt(lam)) @ U.T) * sqn[None, :]
    return X, float(np.sqrt(lam).sum()), K, int(lam.size), float(lam[0])


def _dual_bound(S: sp.csr_matrix, d: np.ndarray, Qc: np.ndarray, n: np.ndarray) -> float:
    """A dual lower bound on the NTP-SVM from ``Qc``, the polar factor of the full ``D X`` per word class.

    The dual is ``max <Lam, D S>`` s.t. ``||Lam||_2 <= 1``, rows summing to 0, ``Lam <= 0`` off the support. Q is
    made feasible by clipping its positive off-support entries and giving that mass back evenly to the row's
    support words (Z); ``Z / ||Z||_2`` is feasible (``||Z||_2`` from the k x k Gram of ``Z N^{1/2}``)."""
    on = S.toarray() > 0
    Z = Qc.copy()
    pos = np.where(on, 0.0, np.maximum(Z, 0.0))
    Z -= pos
    Z += on * ((pos @ n) / (on @ n))[:, None]
    val = float((np.where(on, Z, 0.0) @ n) @ d)
    Zs = Z * np.sqrt(n)
    norm = math.sqrt(float(np.linalg.eigvalsh(Zs.T @ Zs)[-1]))
    return val / norm


def _active_set_mm(
    S: sp.csr_matrix, w: np.ndarray, n: np.ndarray, *, tol: float, max_iter: int, time_limit: float | None, t0: float, add_per_row: int = 20, inner: int = 100
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int, dict[str, Any]] | None:
    """Majorize-minimize on the slack over a growing working set (used when ``D S_c`` has full rank V - 1, where
    the nuclear norm is smooth on the feasible set).

    With ``K = G^{+1/2}`` at the current slack, ``||M||_* <= (tr(M K M^T) + tr G^{1/2}) / 2`` with equality at the
    current point (the variational form of the nuclear norm), so minimizing the bound decreases the objective. The
    bound separates over rows: ``min_{sigma >= 0} (s_j - sigma) K~ (s_j - sigma)^T`` (independent of the weight),
    solved by FISTA on the working set; the working set grows by each row's largest KKT violators ``(x_j K~)_v > 0``.
    Every step needs one V x V eigh and sparse products, never a g x V SVD. KKT residuals are per word (a class
    entry's gradient divided by its size)."""
    g, V = S.shape
    er = np.zeros(0, np.int64)
    ec = np.zeros(0, np.int64)
    sig = np.zeros(0)
    on = S.toarray() > 0
    history: list[float] = []
    it, kkt, f, first_kkt = 0, math.inf, math.inf, math.inf
    t_prev, last = time.perf_counter(), 0.0
    for it in range(1, max_iter + 1):
        X, f, K, rank, lam_min = _sparse_polar(S, w, n, er, ec, sig)
        if rank < V - 1:  # the nuclear norm is not smooth there: the caller falls back to ADMM
            return None
        history.append(f)
        R = np.asarray(X @ K) / n  # per word
        act = R[er, ec]
        Roff = np.where(on, -np.inf, R)
        Roff[er, ec] = -np.inf
        kkt = max(float(Roff.max()), float(np.abs(act[sig > 0]).max(initial=0.0)), float(act[sig == 0].max(initial=0.0)))
        if it == 1:
            first_kkt = float(np.max(np.sqrt(w)[:, None] * Roff))  # in units of Q = D R
        now = time.perf_counter()
        last, t_prev = max(last, now - t_prev), now
        # Steps get dearer as the working set grows: stop when the next one would likely overrun the time limit.
        if kkt <= tol or (time_limit is not None and now - t0 + 2.0 * last > time_limit) or it == max_iter:
            break
        k = min(add_per_row, V - 1)
        idx = np.argpartition(-Roff, k, axis=1)[:, :k]
        vals = np.take_along_axis(Roff, idx, 1)
        mask = (vals > tol).ravel()
        del Roff
        er = np.concatenate([er, np.repeat(np.arange(g), k)[mask]])
        ec = np.concatenate([ec, idx.ravel()[mask]])
        sig = np.concatenate([sig, np.zeros(int(mask.sum()))])
        order = np.lexsort((ec, er))
        er, ec, sig = er[order], ec[order], sig[order]
        # All pairs of working-set entries in one row: the row blocks of K, as flat index lists.
        cnt = np.bincount(er, minlength=g)
        sizes = cnt[er]
        target = np.repeat(np.arange(er.size), sizes)
        row_start = np.concatenate([[0], np.cumsum(cnt)[:-1]])[er]
        source = np.repeat(row_start, sizes) + (np.arange(target.size) - np.repeat(np.cumsum(sizes) - sizes, sizes))
        Kp = K[ec[target], ec[source]]
        sk = n[ec] * R[er, ec] + np.bincount(target, weights=sig[source] * Kp, minlength=er.size)  # (s_j K~)_v
        step = math.sqrt(lam_min) if np.all(n == 1) else 1.0 / float(np.linalg.eigvalsh(K)[-1])  # 1 / largest eigenvalue of K~
        y, x_old, tk = sig.copy(), sig.copy(), 1.0
        timed_out = False
        for _ in range(inner):
            if time_limit is not None and time.perf_counter() - t0 > time_limit:
                timed_out = True  # keep the last evaluated point (sig, with the new entries at 0): f, R, kkt are its
                break
            grad = np.bincount(target, weights=y[source] * Kp, minlength=er.size) - sk
            x_new = np.maximum(y - step * grad, 0.0)
            t_new = (1.0 + math.sqrt(1.0 + 4.0 * tk * tk)) / 2.0
            y = x_new + (tk - 1.0) / t_new * (x_new - x_old)
            x_old, tk = x_new, t_new
        if timed_out:
            break
        sig = x_old
    bound = _dual_bound(S, np.sqrt(w), np.sqrt(w)[:, None] * R, n)
    info = {"centered_certificate_violation": max(first_kkt, 0.0), "kkt_residual": kkt, "dual_bound": bound, "duality_gap": (f - bound) / f, "working_set": int(er.size),
            "objective_history": history}
    return er, ec, sig, f, it, info


def _weighted_distance(X: np.ndarray, Y: np.ndarray, mult: np.ndarray) -> float:
    """Normalized distance between the expanded matrices ``X[group]`` and ``Y[group]`` without expanding them."""
    w = mult[:, None]
    nx, ny = math.sqrt(float((w * X**2).sum())), math.sqrt(float((w * Y**2).sum()))
    return math.sqrt(float((w * (X / nx - Y / ny) ** 2).sum()))


def ntp_svm_cvxpy(support: Any, solver: str | None = None) -> tuple[np.ndarray, float]:
    """Reference: the NTP-SVM over all m contexts as written (no reduction), solved by cvxpy. Returns (L, objective)."""
    import cvxpy as cp

    S = _dense01(support)
    _check_support(S)
    m, V = S.shape
    L = cp.Variable((m, V))
    cons = []
    for j in range(m):
        sup = np.flatnonzero(S[j])
        out = np.flatnonzero(S[j] == 0)
        if sup.size > 1:
            cons.append(L[j, sup[1:]] == L[j, sup[0]])
        if out.size:
            cons.append(L[j, sup[0]] - L[j, out] >= 1)
    prob = cp.Problem(cp.Minimize(cp.normNuc(L)), cons)
    kwargs = {"solver": solver} if solver else {}
    prob.solve(**kwargs)
    return np.asarray(L.value), float(prob.value)


# -- predicted geometry ----------------------------------------------------------------------------------------------


def _psd_sqrt_from_svd(U: np.ndarray, s: np.ndarray) -> np.ndarray:
    return (U * s) @ U.T


@dataclass
class NTPGeometry:
    """The predicted geometry of a corpus.

    ``W_gram = (L_mm^T L_mm)^{1/2}`` (V x V) is the predicted word-embedding Gram; ``context_gram(rows)`` gives
    ``(L_mm L_mm^T)^{1/2}`` on chosen contexts; contexts of one support group collapse to one direction.
    """

    L_star: sp.csr_matrix
    svm: SVMResult
    W_gram: np.ndarray
    group: np.ndarray
    _U: np.ndarray
    _s: np.ndarray

    @property
    def L_mm(self) -> np.ndarray:
        return self.svm.L

    def context_gram(self, rows: Any | None = None) -> np.ndarray:
        """``(L_mm L_mm^T)^{1/2}`` restricted to the given contexts (all by default)."""
        rows = np.arange(self.group.size) if rows is None else np.asarray(rows)
        g = self.group[rows]
        d = np.sqrt(self.svm.multiplicity)[g]
        Ug = self._U[g] / d[:, None]
        return (Ug * self._s) @ Ug.T

    def context_embeddings(self) -> np.ndarray:
        """One predicted embedding per distinct support (g x r), normalized so that ``E[group] E[group]^T`` is the
        context Gram: contexts of a group share it (subspace collapse)."""
        d = np.sqrt(self.svm.multiplicity)
        return self._U * np.sqrt(self._s) / d[:, None]

    def summary(self) -> dict[str, Any]:
        svm = self.svm
        return {
            "distinct_supports": int(svm.X.shape[0]),
            "svm_objective": svm.objective,
            "centered_support_objective": svm.centered_objective,
            "centered_support_objective_gap": svm.centered_objective / svm.objective - 1.0,
            "centered_support_distance": svm.centered_distance,
            "centered_support_optimal": svm.certified,
            "svm_iterations": svm.iterations,
            "svm_seconds": svm.seconds,
            "rank_L_mm": int(self._s.size),
            "effective_rank_L_mm": float(np.exp(-(p := self._s / self._s.sum()) @ np.log(p))),
            "rank_L_star": int(np.linalg.matrix_rank(self.L_star.toarray())) if self.L_star.shape[0] * self.L_star.shape[1] <= 4_000_000 else None,
        }


def predict_geometry(stats: CorpusStats, **svm_options: Any) -> NTPGeometry:
    """``L*``, ``L_mm`` (NTP-SVM over the distinct supports) and the predicted Grams of a corpus."""
    svm = ntp_svm(stats.support, **svm_options)
    d = np.sqrt(svm.multiplicity)[:, None]
    U, s, Vt = _svd(d * svm.X)
    W_gram = (Vt.T * s) @ Vt
    return NTPGeometry(sparse_logits(stats), svm, W_gram, svm.group, U, s)


def orthant_clusters(support: Any, k: int = 2) -> np.ndarray:
    """Cluster words by the sign pattern of their entries in the top-k right singular vectors of the centered
    support matrix (orthant-based clustering); returns a cluster id per word (ids in order of first word).

    >>> S = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]])
    >>> orthant_clusters(S, 1).tolist()
    [0, 0, 1, 1]
    """
    S = _dense01(support)
    k = check_int("k", k, minimum=1, maximum=min(S.shape))
    _, s, Vt = np.linalg.svd(centered(S), full_matrices=False)
    signs = Vt[:k] > 1e-12 * np.abs(Vt[:k]).max()
    keys = [signs[:, v].tobytes() for v in range(S.shape[1])]
    index: dict[bytes, int] = {}
    return np.fromiter((index.setdefault(key, len(index)) for key in keys), dtype=np.int64, count=len(keys))


def separability(stats: CorpusStats, dim: int, geometry: NTPGeometry | None = None) -> dict[str, Any]:
    """NTP-compatibility and NTP-separability of free embeddings of dimension ``dim``: both hold when
    ``dim >= m`` (theory); more sharply, compatibility holds when ``dim >= rank(L*)`` and separability together with
    compatibility when ``dim >= rank([L*, L_mm])`` (a W matching both exists)."""
    dim = check_int("dim", dim, minimum=1)
    geo = geometry or predict_geometry(stats)
    m = stats.num_contexts
    Ls = geo.L_star.toarray() if m * stats.vocab_size <= 4_000_000 else None
    r_star = int(np.linalg.matrix_rank(Ls)) if Ls is not None else None
    r_mm = int(geo._s.size)
    r_both = int(np.linalg.matrix_rank(np.hstack([Ls, geo.L_mm]))) if Ls is not None else None
    return {
        "dim": dim,
        "contexts": m,
        "rank_L_star": r_star,
        "rank_L_mm": r_mm,
        "rank_L_star_and_L_mm": r_both,
        "compatible": bool(dim >= m or (r_star is not None and dim >= r_star)),
        "separable": bool(dim >= m or dim >= r_mm),
        "compatible_and_separable": bool(dim >= m or (r_both is not None and dim >= r_both)),
    }
