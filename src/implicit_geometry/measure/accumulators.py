"""One-pass, mergeable statistics of representations (torchmetrics-like: ``update`` / ``merge`` / ``compute``).

Every accumulator keeps float64 state whose size never depends on the number of rows streamed, and obeys

* ``update(batch)`` for any batch split gives the statistics of the whole data (to rounding, ~1e-14 relative);
* ``a.merge(b)`` equals one accumulator that saw a's rows and b's rows (shards, processes);
* ``all_reduce()`` merges the accumulators of every ``torch.distributed`` process (any backend, gloo on CPU);
* ``state_dict()`` / ``load_state_dict()`` resume a long collection.

The algebra lives once, in the pure functions :func:`chan_merge` and :func:`shifted_to_central`.

Class statistics use a per-class *shift* (the first row seen of that class): the running
state is ``n_c``, ``s_c``, ``S_c = sum (h - s_c)`` and ``A = sum (h - s_y)(h - s_y)^T``, so one batch costs one
``D x D`` product of the shifted rows plus a sparse one-hot product for the class sums, with no per-batch
``K x D x D`` correction. The
pooled within-class scatter is ``A - sum_c n_c d_c d_c^T`` with ``d_c = S_c / n_c`` (formed once, in
``compute``); because ``s_c`` is close to the class mean the subtraction loses almost nothing. Merging two
states converts both to central form (counts, means, scatter) and applies Chan's parallel update
``M2 = M2_a + M2_b + sum_c n_a n_b / n (mu_a - mu_b)(mu_a - mu_b)^T``.

>>> import torch
>>> h, y = torch.randn(100, 3, dtype=torch.float64), torch.arange(100) % 4
>>> a, b = ClassStats(3, 4), ClassStats(3, 4)
>>> _ = a.update(h[:30], y[:30]); _ = b.update(h[30:], y[30:])
>>> full = ClassStats(3, 4).update(h, y).compute()
>>> bool(torch.allclose(a.merge(b).compute()["within_scatter"], full["within_scatter"], rtol=0, atol=1e-12))
True
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from implicit_geometry._validation import InvalidParameterError, check_int

_F64 = torch.float64


# ----------------------------------------------------------------------------------------------------------
# Pure functions: the only place where the statistics' algebra is written.
# ----------------------------------------------------------------------------------------------------------
def shifted_to_central(
    counts: torch.Tensor, shift: torch.Tensor, sums: torch.Tensor, scatter: torch.Tensor | None, sq: torch.Tensor,
    per_class: torch.Tensor | None = None,
) -> dict[str, torch.Tensor | None]:
    """Central statistics from shifted sums.

    ``sums[c] = sum_i (h_i - shift_c)`` (K x D), ``scatter = sum_i (h_i - shift_{y_i})(...)^T`` (D x D, pooled),
    ``sq[c] = sum_i ||h_i - shift_c||^2``, ``per_class[c] = sum_{i in c} (h_i - shift_c)(...)^T`` (K x D x D).
    Returns means (K x D; rows of empty classes are the shift), pooled within-class scatter (D x D),
    per-class scatter traces (K) and per-class scatters (K x D x D or None).
    """
    n = counts.clamp_min(1.0)
    d = sums / n[:, None]
    means = shift + d
    within = None if scatter is None else scatter - (d * counts[:, None]).T @ d
    traces = sq - counts * (d * d).sum(1)
    pc = None if per_class is None else per_class - counts[:, None, None] * d[:, :, None] * d[:, None, :]
    return {"means": means, "within_scatter": within, "class_scatter_trace": traces.clamp_min(0.0), "class_scatter": pc}


def chan_merge(
    na: torch.Tensor, ma: torch.Tensor, Wa: torch.Tensor | None, ta: torch.Tensor, Pa: torch.Tensor | None,
    nb: torch.Tensor, mb: torch.Tensor, Wb: torch.Tensor | None, tb: torch.Tensor, Pb: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Chan et al.'s parallel merge of per-class central statistics (counts, means, pooled scatter, per-class
    scatter traces, per-class scatters). Classes absent from one side take the other side's values."""
    n = na + nb
    w = torch.where(n > 0, nb / n.clamp_min(1.0), torch.zeros_like(n))  # weight of b in the new mean
    delta = mb - ma
    means = ma + w[:, None] * delta
    gain = torch.where(n > 0, na * nb / n.clamp_min(1.0), torch.zeros_like(n))  # n_a n_b / n
    W = None if Wa is None else Wa + Wb + (delta * gain[:, None]).T @ delta
    t = ta + tb + gain * (delta * delta).sum(1)
    P = None if Pa is None else Pa + Pb + gain[:, None, None] * delta[:, :, None] * delta[:, None, :]
    return n, means, W, t, P


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """Features as float64 rows (N x D); conv maps should be pooled before (see hooks)."""
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise InvalidParameterError(f"features must be a 2-D (rows x features) tensor (got shape {tuple(x.shape)})")
    return x.detach().to(_F64)


def _dist():
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise InvalidParameterError("all_reduce needs torch.distributed initialised (got no process group)")
    return dist


def _gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every process's copy of ``tensor`` (same shape everywhere), in rank order."""
    dist = _dist()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return parts


# ----------------------------------------------------------------------------------------------------------
# Accumulators
# ----------------------------------------------------------------------------------------------------------
class Accumulator:
    """Base: ``update``, ``merge``, ``compute``, ``state_dict``/``load_state_dict``, ``all_reduce``, ``reset``.

    Subclasses list their tensor state in ``_state`` and implement ``update``, ``merge``, ``compute``; the default
    ``all_reduce`` gathers each process's state and merges them in rank order, so every process ends with the
    same, deterministic result.
    """

    _state: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).clone() if isinstance(getattr(self, name), torch.Tensor) else getattr(self, name) for name in self._state}

    def load_state_dict(self, state: dict[str, Any]) -> Accumulator:
        for name in self._state:
            value = state[name]
            setattr(self, name, value.clone().to(getattr(self, name).device) if isinstance(value, torch.Tensor) else value)
        return self

    def _empty_like(self) -> Accumulator:
        raise NotImplementedError

    def merge(self, other: Accumulator) -> Accumulator:
        raise NotImplementedError

    def all_reduce(self) -> Accumulator:
        state = self.state_dict()
        names = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.numel() > 0]
        gathered = {k: _gather(state[k]) for k in names}
        first = True
        for rank in range(_dist().get_world_size()):
            part = self._empty_like().load_state_dict({**state, **{k: gathered[k][rank] for k in names}})
            if first:
                self.load_state_dict(part.state_dict())
                first = False
            else:
                self.merge(part)
        return self


class ClassStats(Accumulator):
    """Per-class counts, means, pooled within-class scatter and per-class scatter traces of D-dim features.

    Args:
        dim: feature dimension D.
        classes: number of classes K.
        scatter: keep the pooled D x D within-class scatter (needed for NC1; off for vocabulary-sized logits).
        per_class: also keep one D x D scatter per class (K x D x D memory: only when asked).
        device: where the state lives (statistics are float64 whatever the input dtype).

    ``compute()`` returns counts (K), means (K x D), ``within_scatter`` (D x D, ``N Sigma_W``),
    ``sigma_w = within_scatter / N``, ``class_var`` (K: mean squared distance to the class mean, for CDNV),
    ``global_mean`` (D) and ``class_scatter`` (K x D x D) when ``per_class``.
    """

    _state = ("counts", "shift", "sums", "scatter", "sq", "per_class_scatter")

    def __init__(self, dim: int, classes: int, *, scatter: bool = True, per_class: bool = False, device: Any = "cpu") -> None:
        self.dim = check_int("dim", dim, minimum=1)
        self.classes = check_int("classes", classes, minimum=1)
        self.keep_scatter, self.keep_per_class = bool(scatter), bool(per_class)
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> ClassStats:
        K, D, dev = self.classes, self.dim, self.device
        self.counts = torch.zeros(K, dtype=_F64, device=dev)
        self.shift = torch.zeros(K, D, dtype=_F64, device=dev)
        self.sums = torch.zeros(K, D, dtype=_F64, device=dev)
        self.sq = torch.zeros(K, dtype=_F64, device=dev)
        self.scatter = torch.zeros(D, D, dtype=_F64, device=dev) if self.keep_scatter else torch.zeros(0, dtype=_F64, device=dev)
        self.per_class_scatter = torch.zeros(K, D, D, dtype=_F64, device=dev) if self.keep_per_class else torch.zeros(0, dtype=_F64, device=dev)
        return self

    def _empty_like(self) -> ClassStats:
        return ClassStats(self.dim, self.classes, scatter=self.keep_scatter, per_class=self.keep_per_class, device=self.device)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> ClassStats:
        """Add a batch: features (B x D, any float dtype and device) with integer labels (B)."""
        h = _as_rows(features).to(self.device)
        y = torch.as_tensor(labels, device=self.device).long().reshape(-1)
        if h.shape[1] != self.dim or y.numel() != h.shape[0]:
            raise InvalidParameterError(f"features must have shape (B, {self.dim}) with B labels (got {tuple(h.shape)} and {y.numel()} labels)")
        if y.numel() == 0:
            return self
        if int(y.min()) < 0 or int(y.max()) >= self.classes:
            raise InvalidParameterError(f"labels must be class indices in [0, {self.classes}) (got range [{int(y.min())}, {int(y.max())}])")
        K, B = self.classes, y.numel()
        cnt = torch.bincount(y, minlength=K).to(_F64)
        new = (cnt > 0) & (self.counts == 0)
        if bool(new.any()):
            # A class's shift is its first row ever seen (fixed from then on): close to the class mean on the scale of
            # the class's spread, which is all the one-pass form needs to stay accurate.
            first = torch.full((K,), B, dtype=torch.long, device=self.device).scatter_reduce_(
                0, y, torch.arange(B, device=self.device), reduce="amin")
            self.shift[new] = h[first[new]]
        r = h - self.shift[y]
        self.counts += cnt
        # Class sums as a sparse one-hot product (several times faster than index_add_ for float64 on CPU).
        with warnings.catch_warnings():  # some torch builds warn that invariant checks are off, which is what we ask
            warnings.filterwarnings("ignore", message="Sparse invariant checks", category=UserWarning)
            onehot = torch.sparse_coo_tensor(torch.stack([y, torch.arange(B, device=self.device)]), torch.ones(B, dtype=_F64, device=self.device),
                                             (K, B), check_invariants=False)
        self.sums += torch.sparse.mm(onehot, r)
        self.sq += torch.bincount(y, weights=(r * r).sum(1), minlength=K)
        if self.keep_scatter:
            self.scatter += r.T @ r
        if self.keep_per_class:
            for c in torch.unique(y).tolist():
                rc = r[y == c]
                self.per_class_scatter[c] += rc.T @ rc
        return self

    def central(self) -> dict[str, torch.Tensor | None]:
        return shifted_to_central(
            self.counts, self.shift, self.sums, self.scatter if self.keep_scatter else None, self.sq,
            self.per_class_scatter if self.keep_per_class else None,
        )

    def _set_central(self, counts, means, W, t, P) -> None:
        self.counts, self.shift = counts, means
        self.sums = torch.zeros_like(means)
        self.sq = t
        if self.keep_scatter:
            self.scatter = W
        if self.keep_per_class:
            self.per_class_scatter = P

    def merge(self, other: ClassStats) -> ClassStats:
        """Add another accumulator's rows (same dim, classes and options): Chan's parallel merge."""
        if (other.dim, other.classes, other.keep_scatter, other.keep_per_class) != (self.dim, self.classes, self.keep_scatter, self.keep_per_class):
            raise InvalidParameterError("merge needs accumulators with equal dim, classes and options (got different ones)")
        a, b = self.central(), other.central()
        self._set_central(*chan_merge(
            self.counts, a["means"], a["within_scatter"], a["class_scatter_trace"], a["class_scatter"],
            other.counts.to(self.device), b["means"].to(self.device),
            None if b["within_scatter"] is None else b["within_scatter"].to(self.device),
            b["class_scatter_trace"].to(self.device), None if b["class_scatter"] is None else b["class_scatter"].to(self.device),
        ))
        return self

    def compute(self) -> dict[str, torch.Tensor]:
        c = self.central()
        N = float(self.counts.sum())
        n = self.counts.clamp_min(1.0)
        out = {
            "counts": self.counts.clone(),
            "means": c["means"],
            "global_mean": (self.counts @ c["means"]) / max(N, 1.0),
            "class_var": c["class_scatter_trace"] / n,
            "N": torch.tensor(N, dtype=_F64),
        }
        if self.keep_scatter:
            out["within_scatter"] = c["within_scatter"]
            out["sigma_w"] = c["within_scatter"] / max(N, 1.0)
        if self.keep_per_class:
            out["class_scatter"] = c["class_scatter"]
        return out


class CrossMoments(Accumulator):
    """Joint central moments of two representations of the same rows, X (N x p) and Y (N x q): means and the
    covariance blocks ``C_xx``, ``C_yy``, ``C_xy``, enough for linear CKA on all rows without any N x N Gram.
    It is a one-class :class:`ClassStats` of the stacked rows ``[x, y]``, so it shares its algebra and its merge.
    Memory ``O((p + q)^2)``.
    """

    _state = ("joint",)

    def __init__(self, p: int, q: int, *, device: Any = "cpu") -> None:
        self.p, self.q = check_int("p", p, minimum=1), check_int("q", q, minimum=1)
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> CrossMoments:
        self._stats = ClassStats(self.p + self.q, 1, device=self.device)
        return self

    @property
    def joint(self) -> dict[str, Any]:
        return self._stats.state_dict()

    @joint.setter
    def joint(self, state: dict[str, Any]) -> None:
        self._stats.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        return {"joint": self._stats.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> CrossMoments:
        self._stats.load_state_dict(state["joint"])
        return self

    def _empty_like(self) -> CrossMoments:
        return CrossMoments(self.p, self.q, device=self.device)

    def all_reduce(self) -> CrossMoments:
        self._stats.all_reduce()
        return self

    def update(self, X: torch.Tensor, Y: torch.Tensor) -> CrossMoments:
        x, y = _as_rows(X), _as_rows(Y).to(X.device)
        if x.shape[1] != self.p or y.shape[1] != self.q or x.shape[0] != y.shape[0]:
            raise InvalidParameterError(f"X and Y must have shapes (B, {self.p}) and (B, {self.q}) (got {tuple(x.shape)} and {tuple(y.shape)})")
        self._stats.update(torch.cat([x, y], 1), torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
        return self

    def merge(self, other: CrossMoments) -> CrossMoments:
        self._stats.merge(other._stats)
        return self

    def compute(self) -> dict[str, torch.Tensor]:
        c = self._stats.compute()
        C, p = c["within_scatter"], self.p
        return {"n": c["N"], "mean_x": c["means"][0, :p], "mean_y": c["means"][0, p:],
                "Cxx": C[:p, :p], "Cyy": C[p:, p:], "Cxy": C[:p, p:]}


class Agreement(Accumulator):
    """NC4 and accuracy counts: how often the classifier's decision ``argmax(W h + b)`` differs from the nearest
    class centre ``argmin_c ||h - mu_c||``, and how often it equals the label.

    The centres must be known before the rows are streamed: in a single pass use the means of a previous pass or
    epoch (the network experiment does), or stream twice (``measure(..., nc4="two-pass")``). Counts are per class
    (length K), merged by addition.
    """

    _state = ("total", "disagree", "correct")

    def __init__(self, centers: torch.Tensor, *, device: Any = "cpu") -> None:
        self.device = torch.device(device)
        self.centers = torch.as_tensor(centers).detach().to(self.device, _F64)  # K x D
        self.classes = self.centers.shape[0]
        self._c2 = (self.centers * self.centers).sum(1)
        self.reset()

    def reset(self) -> Agreement:
        K = self.classes
        self.total = torch.zeros(K, dtype=_F64, device=self.device)
        self.disagree = torch.zeros(K, dtype=_F64, device=self.device)
        self.correct = torch.zeros(K, dtype=_F64, device=self.device)
        return self

    def _empty_like(self) -> Agreement:
        return Agreement(self.centers, device=self.device)

    def update(self, features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> Agreement:
        h = _as_rows(features).to(self.device)
        z = _as_rows(logits).to(self.device)
        y = torch.as_tensor(labels, device=self.device).long().reshape(-1)
        # ||h - mu||^2 up to the row constant ||h||^2
        nearest = (self._c2[None, :] - 2 * h @ self.centers.T).argmin(1)
        decided = z.argmax(1)
        K = self.classes
        ones = torch.ones_like(y, dtype=_F64)
        self.total += torch.bincount(y, minlength=K).to(_F64)
        self.disagree.index_add_(0, y, (decided != nearest).to(_F64) * ones)
        self.correct.index_add_(0, y, (decided == y).to(_F64) * ones)
        return self

    def merge(self, other: Agreement) -> Agreement:
        self.total += other.total.to(self.device)
        self.disagree += other.disagree.to(self.device)
        self.correct += other.correct.to(self.device)
        return self

    def compute(self) -> dict[str, torch.Tensor]:
        N = self.total.sum().clamp_min(1.0)
        return {"nc4": self.disagree.sum() / N, "accuracy": self.correct.sum() / N,
                "class_accuracy": self.correct / self.total.clamp_min(1.0)}


class RowSample(Accumulator):
    """A uniform random sample of at most ``size`` rows (with their labels), for the metrics that need individual
    rows (debiased CKA, mutual k-NN, permutation nulls). Each row gets a random key; the sample is the rows with
    the smallest keys, so merging two samples (keep the smallest keys of the union) is exact. Memory
    ``O(size x D)``, independent of the number of rows streamed.
    """

    _state = ("keys", "rows", "labels")

    def __init__(self, dim: int, size: int = 1000, *, seed: int = 0, device: Any = "cpu") -> None:
        self.dim, self.size = check_int("dim", dim, minimum=1), check_int("size", size, minimum=1)
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.reset()

    def reset(self) -> RowSample:
        self.keys = torch.zeros(0, dtype=_F64, device=self.device)
        self.rows = torch.zeros(0, self.dim, dtype=_F64, device=self.device)
        self.labels = torch.zeros(0, dtype=torch.long, device=self.device)
        return self

    def _empty_like(self) -> RowSample:
        return RowSample(self.dim, self.size, device=self.device)

    def _keep(self, keys, rows, labels) -> None:
        order = torch.argsort(keys)[: self.size]
        self.keys, self.rows, self.labels = keys[order], rows[order], labels[order]

    def update(self, features: torch.Tensor, labels: torch.Tensor | None = None, *, keys: torch.Tensor | None = None) -> RowSample:
        """Add rows; pass the same ``keys`` to the samples of several layers to keep the same rows in each."""
        h = _as_rows(features).to(self.device)
        y = torch.zeros(h.shape[0], dtype=torch.long) if labels is None else torch.as_tensor(labels).long().reshape(-1)
        if keys is None:
            keys = torch.rand(h.shape[0], generator=self.generator, dtype=_F64)
        keys = torch.as_tensor(keys, dtype=_F64).to(self.device)
        self._keep(torch.cat([self.keys, keys]), torch.cat([self.rows, h]), torch.cat([self.labels, y.to(self.device)]))
        return self

    def merge(self, other: RowSample) -> RowSample:
        self._keep(torch.cat([self.keys, other.keys.to(self.device)]), torch.cat([self.rows, other.rows.to(self.device)]),
                   torch.cat([self.labels, other.labels.to(self.device)]))
        return self

    def all_reduce(self) -> RowSample:
        # Samples may differ in length between processes: pad to ``size`` with key +inf, gather, merge.
        pad = self.size - self.keys.numel()
        keys = torch.cat([self.keys, torch.full((pad,), float("inf"), dtype=_F64, device=self.device)])
        rows = torch.cat([self.rows, torch.zeros(pad, self.dim, dtype=_F64, device=self.device)])
        labels = torch.cat([self.labels, torch.zeros(pad, dtype=torch.long, device=self.device)])
        K, R, L = _gather(keys), _gather(rows), _gather(labels)
        keys, rows, labels = torch.cat(K), torch.cat(R), torch.cat(L)
        finite = torch.isfinite(keys)
        self._keep(keys[finite], rows[finite], labels[finite])
        return self

    def compute(self) -> dict[str, torch.Tensor]:
        return {"rows": self.rows, "labels": self.labels}
