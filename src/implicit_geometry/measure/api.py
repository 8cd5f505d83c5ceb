"""Measure the geometry of any model on any data: stream the data once, get every metric per layer.

>>> import torch
>>> from torch.utils.data import DataLoader, TensorDataset
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<...>
>>> x, y = torch.randn(200, 6), torch.arange(200) % 4
>>> net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
>>> r = measure(net, DataLoader(TensorDataset(x, y), batch_size=64), num_classes=4, permutations=2)
>>> sorted(r["layers"])
['logits', 'penultimate']
>>> 0 <= r["layers"]["penultimate"]["nc4"] <= 1
True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from implicit_geometry._validation import InvalidParameterError, check_choice, check_int, one_line
from implicit_geometry.measure.accumulators import Agreement, ClassStats, CrossMoments, RowSample
from implicit_geometry.measure.hooks import LayerTaps, last_linear
from implicit_geometry.measure.metrics import alignment, class_metrics, linear_cka_from_moments


def _batches(loader: Iterable, device: torch.device, dtype: torch.dtype | None, max_batches: int | None):
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        x, y = batch[0], batch[1]
        x = x.to(device)
        if dtype is not None and x.is_floating_point():
            x = x.to(dtype)
        yield x, torch.as_tensor(y).long()


def _model_dtype(model: torch.nn.Module) -> torch.dtype | None:
    for p in model.parameters():
        return p.dtype if p.is_floating_point() else None
    return None


@torch.no_grad()
def collect(
    model: torch.nn.Module,
    loader: Iterable,
    num_classes: int,
    layers: Sequence[str] = ("penultimate", "logits"),
    *,
    device: Any = None,
    sample_rows: int = 1000,
    cross_moments: bool = True,
    max_batches: int | None = None,
    seed: int = 0,
    centers: Any | None = None,
) -> dict[str, Any]:
    """One pass over ``loader`` (batches ``(x, y, ...)``): a :class:`ClassStats` per layer (the pooled scatter is
    skipped for layers wider than 4096 features), a :class:`RowSample` per layer (the same rows in every layer),
    mean logits per class, and :class:`CrossMoments` for each pair of consecutive layers. The model is put in
    eval mode for the pass and restored afterwards. With ``centers`` (K x D penultimate means of a previous pass
    or epoch) the same pass also counts NC4 and accuracy (an :class:`Agreement`)."""
    K = check_int("num_classes", num_classes, minimum=2)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = _model_dtype(model)
    was_training = model.training
    model.eval()
    stats: dict[str, ClassStats] = {}
    samples: dict[str, RowSample] = {}
    cross: dict[tuple[str, str], CrossMoments] = {}
    logit_means = ClassStats(K, K, scatter=False, device=dev)
    keygen = torch.Generator().manual_seed(seed)
    agree = None if centers is None else Agreement(torch.as_tensor(np.asarray(centers)), device=dev)
    tap_names = list(dict.fromkeys([*layers, *(["penultimate"] if agree is not None else [])]))
    try:
        with LayerTaps(model, tap_names) as taps:
            for i, (x, y) in enumerate(_batches(loader, dev, dtype, max_batches)):
                out = _first_forward(taps, x) if i == 0 else taps.forward(x)
                z = taps.captured.get("logits")
                if z is None:
                    from implicit_geometry.measure.hooks import pool

                    z = pool(out)
                if z.shape[1] == K:
                    logit_means.update(z, y.to(dev))
                if agree is not None:
                    agree.update(taps.captured["penultimate"], z, y.to(dev))
                keys = torch.rand(y.numel(), generator=keygen, dtype=torch.float64)
                feats = {name: taps.captured[name] for name in layers}
                for name, h in feats.items():
                    if name not in stats:
                        stats[name] = ClassStats(h.shape[1], K, scatter=h.shape[1] <= 4096, device=dev)
                        samples[name] = RowSample(h.shape[1], sample_rows, device="cpu")
                    stats[name].update(h, y.to(dev))
                    samples[name].update(h.cpu(), y.cpu(), keys=keys)
                if cross_moments:
                    for a, b in zip(layers[:-1], layers[1:]):
                        if feats[a].shape[1] + feats[b].shape[1] <= 4096:
                            if (a, b) not in cross:
                                cross[(a, b)] = CrossMoments(feats[a].shape[1], feats[b].shape[1], device=dev)
                            cross[(a, b)].update(feats[a], feats[b])
    finally:
        model.train(was_training)
    if not stats:
        raise InvalidParameterError("loader must yield at least one batch (got none)")
    return {"stats": stats, "samples": samples, "cross": cross, "logit_means": logit_means, "num_classes": K, "agreement": agree}


def _first_forward(taps: Any, x: torch.Tensor) -> torch.Tensor:
    """The model on the first batch: a model that does not take this data (another input size, channels or
    dtype) fails here, and the user gets one line saying so instead of the traceback from inside the model."""
    try:
        return taps.forward(x)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InvalidParameterError(f"model and data do not fit: the model failed on a batch of shape {tuple(x.shape)} "
                                    f"({type(exc).__name__}: {one_line(exc)})") from None


@torch.no_grad()
def agreement_pass(model: torch.nn.Module, loader: Iterable, centers: torch.Tensor, *, device: Any = None,
                   max_batches: int | None = None) -> Agreement:
    """NC4 and accuracy in a second pass: the classifier (last ``nn.Linear``) against the nearest class centre
    of its input features (``centers``, K x D, e.g. the penultimate means of :func:`collect`)."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    acc = Agreement(centers, device=dev)
    was_training = model.training
    model.eval()
    try:
        with LayerTaps(model, ["penultimate", "logits"]) as taps:
            for x, y in _batches(loader, dev, _model_dtype(model), max_batches):
                taps.forward(x)
                acc.update(taps.captured["penultimate"], taps.captured["logits"], y.to(dev))
    finally:
        model.train(was_training)
    return acc


def summarize(collected: dict[str, Any], *, classifier: torch.nn.Linear | None = None, agreement: Agreement | None = None,
              target_counts: Any | None = None, permutations: int = 20, knn: int = 10, seed: int = 0) -> dict[str, Any]:
    """Metrics of every collected layer (``class_metrics``), alignment of consecutive layers on the row sample
    (linear CKA, debiased CKA, mutual k-NN, each with a permutation null) and streamed linear CKA on all rows."""
    K = collected["num_classes"]
    lm = collected["logit_means"]
    mean_logits = lm.compute()["means"].T.cpu().numpy() if float(lm.counts.min()) > 0 else None
    layers: dict[str, dict[str, float]] = {}
    for name, st in collected["stats"].items():
        s = {k: v.cpu().numpy() for k, v in st.compute().items()}
        W = None
        if name == "penultimate" and classifier is not None:
            W = classifier.weight.detach().double().cpu().numpy()
        m = class_metrics(s, W=W, mean_logits=mean_logits if name in ("penultimate", "logits") else None, target_counts=target_counts)
        if name == "penultimate" and agreement is not None:
            a = agreement.compute()
            m["nc4"] = float(a["nc4"])
            m["accuracy"] = float(a["accuracy"])
        layers[name] = m
    names = list(collected["stats"])
    pairs: dict[str, dict[str, float]] = {}
    for a, b in zip(names[:-1], names[1:]):
        sa, sb = collected["samples"][a].compute()["rows"].numpy(), collected["samples"][b].compute()["rows"].numpy()
        r = {}
        if permutations > 0 and sa.shape[0] >= 4:  # permutations = 0: no row-sample alignment (the cheap mode)
            r = alignment(sa, sb, permutations=permutations, seed=seed, knn=min(knn, max(sa.shape[0] - 2, 1)))
        if (a, b) in collected["cross"]:
            c = collected["cross"][(a, b)].compute()
            r["linear_cka_all_rows"] = linear_cka_from_moments(c["Cxx"].cpu(), c["Cyy"].cpu(), c["Cxy"].cpu())
        pairs[f"{a}|{b}"] = r
    return {"layers": layers, "alignment": pairs, "counts": collected["stats"][names[0]].counts.cpu().numpy().astype(int).tolist(), "num_classes": K}


CODE_MAX_CLASSES = 20  # beyond, a softmax code of middle rank takes minutes to solve (many restarts of a K r-dimensional program)
# solved codes by (K, r), kept for the process: a training run measures every epoch, and the solver is deterministic
_CODES: dict = {}


def logit_geometry(mean_logits: Any, *, tol: float = 0.05, code_max_classes: int = CODE_MAX_CLASSES,
                   code_cache: dict | None = None) -> dict[str, Any] | None:
    """The depth face's reading of a network's class-mean logits (``depth.read_geometry``, column c = mean logits of
    class c, each column centred first: softmax ignores a common shift): ranks, the Gram factor's points, their
    adjacent angles (meaningful at numerical rank 2), the distance to the softmax code of the same rank and to the
    ETF. The code is fitted for at most ``code_max_classes`` classes (beyond, even the simplex's one-vs-rest
    distances take seconds at K = 100 and grow fast, too slow for a reading taken every epoch); otherwise its fields
    are None and ``code_skipped`` says why (the ETF distance still reads a rank K-1 geometry). None for a matrix
    whose centred columns are all zero.

    >>> from implicit_geometry.depth.codes import regular_polygon
    >>> P = regular_polygon(8)
    >>> g = logit_geometry(P @ P.T + 5.0)  # a shifted regular-octagon code
    >>> g["numerical_rank"], bool(g["code_distance"] < 1e-9), [round(a, 9) for a in g["adjacent_angles_deg"][:2]]
    (2, True, [45.0, 45.0])
    """
    from implicit_geometry._validation import check_matrix
    from implicit_geometry.depth.reading import read_geometry

    Z = check_matrix("mean_logits", mean_logits)
    Z = Z - Z.mean(0, keepdims=True)
    if not np.any(Z):
        return None
    K = Z.shape[0]
    fit = K <= code_max_classes
    g = read_geometry(Z, tol=tol, fit_code=fit, code_cache=_CODES if code_cache is None else code_cache)
    out = g.to_dict()
    if g.numerical_rank != 2:
        out["adjacent_angles_deg"] = None  # angles in the top-2 plane describe a rank-2 code only
    out["code_skipped"] = None if fit else (f"K = {K} > {code_max_classes} classes (rank {g.numerical_rank}): solve the code with "
                                            "implicit_geometry.depth.read_geometry (seconds to minutes)")
    return out


def measure(
    model: torch.nn.Module,
    loader: Iterable,
    num_classes: int,
    layers: Sequence[str] = ("penultimate", "logits"),
    *,
    device: Any = None,
    nc4: str = "two-pass",
    centers: Any | None = None,
    sample_rows: int = 1000,
    permutations: int = 20,
    target_counts: Any | None = None,
    max_batches: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every geometry metric of ``layers`` of ``model`` on the data of ``loader`` (the Python API of
    ``igeom measure``). ``nc4``: ``"two-pass"`` streams the data a second time against the first pass's
    penultimate means, ``"centers"`` counts NC4 in the single pass against the given ``centers`` (e.g. the
    penultimate means of a previous epoch), ``"none"`` skips NC4. Returns ``{"layers": {name: metrics}, "alignment": {...},
    "counts": [...], "means": {name: K x D}, "mean_logits": K x K, "W": ..., "logit_geometry": {...}}``
    (``logit_geometry``: :func:`logit_geometry` of the mean logits)."""
    nc4 = check_choice("nc4", nc4, ["two-pass", "centers", "none"])
    permutations = check_int("permutations", permutations, minimum=0)
    if isinstance(model, torch.jit.ScriptModule) and list(layers) == ["logits"]:
        nc4 = "none"
    if "penultimate" not in layers and nc4 != "none":
        layers = ["penultimate", *layers]
    if nc4 == "centers" and centers is None:
        raise InvalidParameterError("centers must be given when nc4='centers' (got None)")
    c = collect(model, loader, num_classes, layers, device=device, sample_rows=sample_rows, max_batches=max_batches, seed=seed,
                centers=centers if nc4 == "centers" else None)
    agree = c["agreement"]
    if nc4 == "two-pass":
        mu = c["stats"]["penultimate"].compute()["means"]
        agree = agreement_pass(model, loader, mu, device=device, max_batches=max_batches)
    _, lin = last_linear(model)
    out = summarize(c, classifier=lin, agreement=agree, target_counts=target_counts, permutations=permutations, seed=seed)
    out["means"] = {name: st.compute()["means"].cpu().numpy() for name, st in c["stats"].items()}
    mean_logits = c["logit_means"].compute()["means"]
    out["mean_logits"] = mean_logits.T.cpu().numpy()
    out["logit_geometry"] = logit_geometry(out["mean_logits"]) if float(c["logit_means"].counts.min()) > 0 else None
    out["W"] = lin.weight.detach().double().cpu().numpy()
    return out
