"""One self-contained HTML page for a run folder or a sweep folder (``igeom report FOLDER``).

The page works offline from disk: its CSS, its plotting code (``plot.js``, small SVG plots written for this
report) and its data are inline, and figures/*.png are embedded as data URIs. It reads whatever a folder holds:

- a run folder (any experiment): config.json, summary.json (verdict, scalars, ``per_seed``), history.csv (one
  curve per numeric column, one line per seed), final.npz (predicted beside learned Grams: ``pred_X`` /
  ``learned_X`` pairs, ``<name>W_gram`` / ``<name>mean_gram`` against the Grams of ``W`` and of the class means of
  ``H``, other square matrices alone), figures/*.png;
- a sweep folder (``sweep.json``, ``table.csv``): each result against each swept parameter (mean and standard
  deviation over seeds, one line per combination of the other swept parameters), failures, and the table.

Every string from a folder is escaped (``html.escape`` in markup; JSON in the page escapes ``<``, ``>`` and ``&``).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from implicit_geometry._validation import InvalidParameterError, one_line
from implicit_geometry.io import read_csv, read_json, to_jsonable, write_text

MAX_HEATMAP = 150  # rows/columns above this are left out of the page (a 150x150 map is 22,500 SVG cells)
MAX_TABLE_ROWS = 5000

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#1d3557;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}header .sub{opacity:.8;font-size:12px}
main{padding:12px 24px 40px}section{background:#fff;border:1px solid #e1e4e8;border-radius:6px;margin:14px 0;padding:10px 16px}
h2{font-size:16px;margin:6px 0 10px}.verdict li{margin:3px 0}.grid{display:flex;flex-wrap:wrap;gap:14px}
.ig-plot{position:relative}.ig-title{font-weight:600;font-size:13px;margin-bottom:2px;max-width:470px}
.ig-wrap{position:relative;display:inline-block}.ig-svg{display:block;user-select:none}
.ig-tick{font-size:10px;fill:#555}.ig-label{font-size:11px;fill:#333}
.ig-tip{position:absolute;z-index:5;background:rgba(255,255,255,.95);border:1px solid #888;border-radius:4px;padding:3px 6px;font-size:11px;pointer-events:none;white-space:nowrap}
.ig-legend{font-size:11px;max-width:470px}.ig-leg{display:inline-block;margin:1px 8px 1px 0;cursor:pointer}.ig-leg.ig-off{opacity:.35}
.ig-swatch{display:inline-block;width:10px;height:10px;margin-right:3px;border-radius:2px;vertical-align:middle}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #e1e4e8;padding:2px 6px;text-align:left;vertical-align:top}
td{white-space:nowrap;max-width:24em;overflow:hidden;text-overflow:ellipsis}
th{background:#f0f2f5;position:sticky;top:0}table.ig-sortable th{cursor:pointer}th[data-sort=asc]:after{content:" \\25B2"}th[data-sort=desc]:after{content:" \\25BC"}
.scroll{max-height:520px;overflow:auto}.pair{display:flex;gap:6px;align-items:flex-start;border:1px solid #eee;padding:6px;border-radius:4px}
.note{color:#666;font-size:12px}img.fig{max-width:100%;width:560px;border:1px solid #eee}figure{margin:0}.failed{color:#b00020}
h3{font-size:14px;margin:14px 0 6px}.kv{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:2px 18px;font-size:13px}
.kv>div{border-bottom:1px dotted #e1e4e8;padding:1px 0;overflow-wrap:anywhere}.kv>div.wide{grid-column:1/-1}.kv b{font-weight:600;color:#1d3557;margin-right:4px}
"""


def _esc(value: Any) -> str:
    if isinstance(value, float):
        return html.escape(_fmt(value))
    if isinstance(value, (list, tuple, dict)):
        return html.escape(json.dumps(to_jsonable(value)))
    return html.escape("" if value is None else str(value))


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    a = abs(v)
    return f"{v:.4e}" if a and (a < 1e-3 or a >= 1e5) else f"{v:.6g}"


def _json_for_script(obj: Any) -> str:
    """JSON that cannot close its ``<script>`` element."""
    text = json.dumps(to_jsonable(obj), allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class _Page:
    def __init__(self, title: str, subtitle: str) -> None:
        self.title = title
        self.subtitle = subtitle
        self.sections: list[str] = []
        self.specs: dict[str, Any] = {}

    def plot(self, kind: str, spec: dict[str, Any]) -> str:
        key = f"p{len(self.specs)}"
        self.specs[key] = spec
        return f'<div class="ig-plot" data-kind="{kind}" data-spec="{key}"></div>'

    def section(self, title: str, body: str, note: str = "") -> None:
        note_html = f'<p class="note">{_esc(note)}</p>' if note else ""
        self.sections.append(f"<section><h2>{_esc(title)}</h2>{note_html}{body}</section>")

    def render(self) -> str:
        js = (Path(__file__).parent / "plot.js").read_text()
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{_esc(self.title)}</title>"
            f"<style>{CSS}</style></head><body><header><h1>{_esc(self.title)}</h1><div class=\"sub\">{_esc(self.subtitle)}</div></header>"
            f"<main>{''.join(self.sections)}</main>"
            f"<script type=\"application/json\" id=\"ig-data\">{_json_for_script(self.specs)}</script>"
            f"<script>{js}</script></body></html>\n"
        )


def _kv_table(d: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in d.items())
    return f"<table>{rows}</table>"


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], sortable: bool = True, css: str = "") -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    def cell(v: Any) -> str:  # long text is cut to one line by the CSS; the whole of it shows on hover
        text = _esc(v)
        return f'<td title="{text}">{text}</td>' if len(text) > 40 else f"<td>{text}</td>"

    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    cls = ' class="ig-sortable"' if sortable else ""
    return f'<div class="scroll {css}"><table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v) if math.isfinite(float(v)) else None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _log_scale(values: Sequence[float]) -> bool:
    """Log axis when every value is positive and they span more than two decades."""
    vals = [v for v in values if v is not None]
    return bool(vals) and min(vals) > 0 and max(vals) / min(vals) > 100


# -- reading a folder's files: a damaged or foreign file is named in one line ----------------------------------
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false", type(None): "null"}


def _read_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object (config.json, summary.json, sweep.json)."""
    value = read_json(path)
    if not isinstance(value, dict):
        kind = _JSON_KINDS.get(type(value), type(value).__name__)
        raise InvalidParameterError(f"{path} must hold a JSON object written by igeom (got {kind})")
    return value


def _read_object_if(path: Path) -> dict[str, Any]:
    return _read_object(path) if path.exists() else {}


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The numeric arrays of final.npz (text arrays are left out; pickled objects are never loaded)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # noqa: BLE001 - garbage, a truncated zip, pickled objects: say which file, in one line
        raise InvalidParameterError(
            f"{path} must be a NumPy .npz file of numeric arrays written by igeom (it does not load: {type(exc).__name__}: {one_line(exc, 160)})"
        ) from None
    bad = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]  # NpzFile gives a non-.npy member as bytes
    if bad:
        raise InvalidParameterError(f"{path} must be a NumPy .npz file of numeric arrays written by igeom (its member {bad[0]!r} is not a NumPy array)")
    return {k: np.asarray(v, dtype=float) for k, v in arrays.items() if v.dtype.kind in "fiu"}


def _read_rows(path: Path, read: Callable[[], list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """The rows of a CSV file (history.csv; table.csv through ``read``)."""
    try:
        return read() if read is not None else read_csv(path)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidParameterError(f"{path} must be a CSV file written by igeom (it does not parse: {type(exc).__name__}: {one_line(exc, 160)})") from None


# -- run folders ------------------------------------------------------------------------------------------
PRED_PREFIXES = ("pred_", "predicted_")
MAX_PAIR = 60  # larger predicted/learned pairs are shown as their leading 60x60 block (e.g. context Grams)
MAX_STACK = 12  # heatmaps drawn from one stack of matrices (final.npz arrays of shape (runs, n, n))
MAX_SERIES = 10  # past this many (group, seed) lines, a plot shows the mean over seeds per group
MAX_GROUP_PLOTS = 6  # a family of columns (sv1, sv2, ...) gets one plot per group, up to this many
X_NAMES = ("step", "t", "epoch", "iteration", "time")


def _natural(key: str) -> list[Any]:
    """Sort key that puts ``R2`` before ``R10``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def _gram_pairs(npz: dict[str, np.ndarray]) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """(predicted, learned) Gram pairs and lone square matrices found in final.npz."""
    pairs: list[tuple[str, np.ndarray, np.ndarray]] = []
    used: set[str] = set()
    for key in sorted(npz, key=_natural):
        for prefix in PRED_PREFIXES:
            name = key[len(prefix):]
            if key.startswith(prefix) and "learned_" + name in npz:
                pairs.append((name, npz[key], npz["learned_" + name]))
                used |= {key, "learned_" + name}
    W = npz.get("W")
    if W is not None and W.ndim in (2, 3):
        W0 = W[0] if W.ndim == 3 else W
        for key in sorted(npz):
            if key.endswith("W_gram") and key not in used and W0.shape[0] == npz[key].shape[0]:
                pairs.append(("W W^T", npz[key], W0 @ W0.T))
                used.add(key)
    H, labels = npz.get("H"), npz.get("labels")
    if H is not None and labels is not None and H.ndim in (2, 3):
        H0 = H[0] if H.ndim == 3 else H
        labels = np.asarray(labels, dtype=int)
        if H0.shape[-1] == labels.size:
            k = int(labels.max()) + 1
            onehot = np.eye(k)[labels]
            means = (H0 @ onehot) / np.maximum(onehot.sum(0), 1)
            for key in sorted(npz):
                if key.endswith("mean_gram") and key not in used:
                    pairs.append(("class-mean Gram", npz[key], means.T @ means))
                    used.add(key)
            for key in sorted(npz):
                if key.endswith("H_gram") and key not in used and labels.size <= MAX_HEATMAP:
                    pairs.append(("H^T H", npz[key], H0.T @ H0))
                    used.add(key)
    # Alone: the other Grams (symmetric) and predictions; a square array of another kind (a contexts x words table
    # that happens to be square) is no geometry to look at.
    lone = [(k, v) for k, v in sorted(npz.items(), key=lambda kv: _natural(kv[0]))
            if k not in used and v.ndim == 2 and v.shape[0] == v.shape[1] and 1 < v.shape[0] <= MAX_HEATMAP
            and (k.startswith(PRED_PREFIXES) or np.allclose(v, v.T))]
    return pairs, lone


def _stacks(npz: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """Heatmaps from stacks of square matrices (shape ``(runs, n, n)``), titled by the 1-D arrays indexing them.

    depth's final.npz holds ``mean_logits`` (one K x K matrix per run) beside ``dims``, ``depths``, ``seeds``: one
    map per (dim, depth) is shown, for its first seed, up to ``MAX_STACK``.
    """
    out: list[tuple[str, np.ndarray]] = []
    for key, arr in sorted(npz.items(), key=lambda kv: _natural(kv[0])):
        if arr.ndim != 3 or arr.shape[1] != arr.shape[2] or not 1 < arr.shape[1] <= MAX_HEATMAP:
            continue
        n = arr.shape[0]
        # the arrays labelling the runs: 1-D, one integer per run (dims, depths, seeds; not per-run results)
        index = {k: v for k, v in npz.items() if v.ndim == 1 and v.size == n and k != key and np.all(v == np.round(v))}
        if not index:
            continue
        others = [k for k in index if not k.startswith("seed")]
        seen: set[tuple[Any, ...]] = set()
        for i in range(n):
            combo = tuple(index[k][i].item() for k in others)
            if combo in seen and len(seen) < n:
                continue
            seen.add(combo)
            label = ", ".join(f"{k}={_short(index[k][i].item())}" for k in index)
            out.append((f"{key} [{label}]" if label else f"{key} [{i}]", arr[i]))
            if len([o for o in out if o[0].startswith(key + " [")]) >= MAX_STACK:
                break
    return out


def _short(v: Any) -> str:
    return _fmt(float(v)) if isinstance(v, float) else str(v)


def _unit(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a)
    return a / n if n > 0 else a


def _geometry_section(page: _Page, folder: Path) -> None:
    npz = _read_npz(folder / "final.npz")
    pairs, lone = _gram_pairs(npz)
    blocks = []
    for name, pred, learned in pairs:
        if pred.ndim != 2 or pred.shape != learned.shape:
            continue
        crop = ""
        if pred.shape[0] > MAX_PAIR:
            pred, learned = pred[:MAX_PAIR, :MAX_PAIR], learned[:MAX_PAIR, :MAX_PAIR]
            crop = f" (first {MAX_PAIR})"
        p, q = _unit(pred), _unit(learned)
        vmax = float(max(np.abs(p).max(), np.abs(q).max()))
        dist = float(np.linalg.norm(p - q))
        blocks.append(
            f'<div class="pair">{page.plot("heatmap", {"title": f"{name}{crop}: predicted", "z": p, "vmax": vmax})}'
            f'{page.plot("heatmap", {"title": f"{name}{crop}: learned (distance {dist:.2e})", "z": q, "vmax": vmax})}</div>'
        )
    for name, mat in lone + _stacks(npz):
        blocks.append(page.plot("heatmap", {"title": name, "z": _unit(mat)}))
    if blocks:
        title = "Geometry: predicted beside learned" if pairs else "Geometry (final.npz)"
        page.section(title, f'<div class="grid">{"".join(blocks)}</div>',
                     "Each matrix divided by its Frobenius norm (learned Grams grow without bound under cross-entropy); "
                     "distance = Frobenius norm of the difference; learned = first seed. Hover for values.")


def _run_sections(page: _Page, folder: Path) -> None:
    config = _read_object_if(folder / "config.json")
    summary = _read_object_if(folder / "summary.json")
    if summary.get("verdict"):
        verdict = summary["verdict"] if isinstance(summary["verdict"], list) else [summary["verdict"]]  # hand-edited: one line
        items = "".join(f"<li>{_esc(line)}</li>" for line in verdict)
        page.section("Verdict", f'<ul class="verdict">{items}</ul>')
    if (folder / "final.npz").exists():
        _geometry_section(page, folder)
    if (folder / "history.csv").exists():
        _history_section(page, _read_rows(folder / "history.csv"))
    figs = sorted((folder / "figures").glob("*.png")) if (folder / "figures").is_dir() else []
    if figs:
        imgs = "".join(
            f'<figure><img class="fig" alt="{_esc(f.name)}" src="data:image/png;base64,{base64.b64encode(f.read_bytes()).decode()}">'
            f"<figcaption class=\"note\">{_esc(f.name)}</figcaption></figure>" for f in figs
        )
        page.section("Figures (figures/*.png)", f'<div class="grid">{imgs}</div>')
    if summary:
        _summary_section(page, summary)
    if config:
        page.section("Configuration (config.json)", _render(config))


# Summary values of any shape: scalars in a compact grid, records (lists of dicts, dicts of dicts) as tables.
def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _render(value: Any, depth: int = 0) -> str:
    """HTML for a JSON value: a key/value grid for dicts, a table for records, compact text for lists.

    >>> _render({"a": 1, "b": [1.5, 2]})
    '<div class="kv"><div><b>a</b> 1</div><div><b>b</b> [1.5, 2]</div></div>'
    """
    if _is_scalar(value):
        return _esc(value)
    if not value:
        return '<span class="note">(empty)</span>'
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value) and depth < 3:
            return _records(None, value)
        return _esc(_compact(value))
    if isinstance(value, dict):
        if value and all(isinstance(v, dict) and all(_is_scalar(x) or _flat_list(x) for x in v.values()) for v in value.values()) and depth < 3:
            return _records("", [{"": k, **v} for k, v in value.items()])
        if depth >= 2:
            return _esc(_compact(value))
        items = []
        for k, v in value.items():
            inner = _render(v, depth + 1)
            tag = "div class=\"wide\"" if not _is_scalar(v) and not _flat_list(v) else "div"
            items.append(f"<{tag}><b>{_esc(k)}</b> {inner}</div>")
        return f'<div class="kv">{"".join(items)}</div>'
    return _esc(str(value))


def _flat_list(v: Any) -> bool:
    return isinstance(v, list) and all(_is_scalar(x) for x in v)


def _compact(value: Any, limit: int = 12) -> str:
    """Short text for a list or dict: numbers to 4 significant digits, long lists cut with a count."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        head = ", ".join(_compact(v, limit) for v in value[:limit])
        return f"[{head}{f', ... ({len(value)} in all)' if len(value) > limit else ''}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_compact(v, limit)}" for k, v in list(value.items())[:limit]) + (", ..." if len(value) > limit else "") + "}"
    return "null" if value is None else str(value)


def _records(first: str | None, rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[r.get(c) if _is_scalar(r.get(c)) else _compact(r.get(c)) for c in columns] for r in rows[:MAX_TABLE_ROWS]]
    return _table(columns, cells)


def _summary_section(page: _Page, summary: dict[str, Any]) -> None:
    skip = {"verdict", "per_seed"}
    flat = {k: v for k, v in summary.items() if k not in skip and (_is_scalar(v) or _flat_list(v))}
    body = _render(flat) if flat else ""
    per_seed = summary.get("per_seed")
    if isinstance(per_seed, dict) and per_seed:
        keys = [k for k, v in per_seed.items() if isinstance(v, list)]
        n = max(len(per_seed[k]) for k in keys) if keys else 0
        seeds = summary.get("seeds") if isinstance(summary.get("seeds"), list) and len(summary["seeds"]) == n else list(range(n))
        rows = [[seeds[i]] + [per_seed[k][i] if i < len(per_seed[k]) else None for k in keys] for i in range(n)]
        body += "<h3>Per seed</h3>" + _table(["seed", *keys], rows)
    for key, value in summary.items():
        if key in skip or key in flat:
            continue
        body += f"<h3>{_esc(key)}</h3>" + _render(value, 1)
    page.section("Summary (summary.json)", body)


# history.csv: curves against the step (or time) column, split by the columns that identify a run.
def _numeric_column(rows: list[dict[str, str]], col: str) -> bool:
    vals = [r.get(col) for r in rows if r.get(col) not in (None, "")]
    return bool(vals) and all(_number(v) is not None or str(v).lower() in ("nan", "inf", "-inf") for v in vals)


def _determined(rows: list[dict[str, str]], col: str, by: list[str]) -> bool:
    """Whether ``col`` is a function of the columns ``by`` over ``rows`` (then it adds nothing to a legend)."""
    if not by:
        return False
    seen: dict[tuple[Any, ...], Any] = {}
    for r in rows:
        key = tuple(r.get(b) for b in by)
        if seen.setdefault(key, r.get(col)) != r.get(col):
            return False
    return True


def _history_section(page: _Page, rows: list[dict[str, str]]) -> None:
    """One plot per metric column of history.csv.

    Generic rules, so that every experiment's history reads well: text columns (hadamard's ``analysis``) split the
    rows into blocks plotted apart; the x axis is the first of ``step``/``t``/``epoch``/...; numeric columns left of
    it (without one: the leading integer columns), and ``seed``, identify a run (imbalance's ``ratio``, depth's ``dim``, ``depth``) and give one line each
    (constant or redundant ones left out of the legend); in a block where the x column is constant (a table such
    as hadamard's rank against depth), the identifying column with most values becomes the x axis. Columns
    ``name1, name2, ...`` (depth's singular values ``sv1..svK``) are drawn together as one plot per run group.
    """
    if not rows:
        return
    columns = list(dict.fromkeys(k for r in rows for k in r))
    numeric = {c: _numeric_column(rows, c) for c in columns}
    text_cols = [c for c in columns if not numeric[c] and any(r.get(c) for r in rows)]
    xkey = next((c for c in X_NAMES if c in columns and numeric[c]), None)
    id_cols = [c for c in (columns[: columns.index(xkey)] if xkey else []) if numeric[c] and c != "seed"]
    if xkey is None:  # a table of settings (head-depth: depth, width, results): its leading integer columns
        for c in columns:
            vals = [_number(r.get(c)) for r in rows if r.get(c) not in (None, "")]
            if c == "seed" or not numeric[c] or not all(v is not None and float(v).is_integer() for v in vals):
                break
            id_cols.append(c)
    blocks: dict[tuple[Any, ...], list[dict[str, str]]] = {}
    for r in rows:
        blocks.setdefault(tuple(r.get(c) for c in text_cols), []).append(r)
    plots = []
    for bkey, brows in blocks.items():
        blabel = ", ".join(f"{c}={v}" for c, v in zip(text_cols, bkey) if v)
        present = [c for c in columns if any(r.get(c) not in (None, "") for r in brows)]
        ids = [c for c in id_cols if c in present]
        x = xkey
        if x is None or len({r.get(x) for r in brows}) == 1:
            varying = [c for c in ids if len({r.get(c) for r in brows}) > 1]
            if varying:
                x = max(varying, key=lambda c: len({r.get(c) for r in brows}))
            elif x is not None and len({r.get(x) for r in brows}) == 1:
                x = None
        keys = [c for c in ids if c != x and len({r.get(c) for r in brows}) > 1]
        keys = _drop_redundant(brows, keys)
        has_seed = "seed" in present and len({r.get("seed") for r in brows}) > 1
        metrics = [c for c in present if numeric[c] and c not in (*id_cols, x, xkey, "seed", "seconds")]
        families: dict[str, list[str]] = {}
        for c in metrics:
            m = re.fullmatch(r"(.*?[A-Za-z])_?(\d+)", c)
            if m:
                families.setdefault(m.group(1), []).append(c)
        families = {f: cs for f, cs in families.items() if len(cs) >= 3}
        in_family = {c for cs in families.values() for c in cs}
        xs_all = [_number(r.get(x)) if x else float(i) for i, r in enumerate(brows)]
        shift = 1.0 if x in ("step", "epoch", "iteration") and xs_all and min(v for v in xs_all if v is not None) == 0 and _log_scale([v + 1 for v in xs_all if v is not None]) else 0.0
        xs_all = [None if v is None else v + shift for v in xs_all]
        # a continuous time axis on a log grid starting at t = 0 (hadamard) is drawn on a log axis without t = 0
        xlog = _log_scale([v for v in xs_all if v is not None and (v > 0 or x not in X_NAMES)])
        xlabel = (x or "row") + (" + 1" if shift else "")
        groups = list(dict.fromkeys(tuple(r.get(k) for k in keys) for r in brows))
        seeds = list(dict.fromkeys(r.get("seed") for r in brows)) if has_seed else [None]
        average = has_seed and len(groups) * len(seeds) > MAX_SERIES
        suffix = f" ({blabel})" if blabel else ""

        def series_for(col: str, group_filter: tuple[Any, ...] | None = None, name_by_col: bool = False) -> list[dict[str, Any]]:
            out = []
            for g in groups:
                if group_filter is not None and g != group_filter:
                    continue
                gname = ", ".join(f"{k}={v}" for k, v in zip(keys, g))
                for s in ([None] if average or not has_seed else seeds):
                    idx = [i for i, r in enumerate(brows) if tuple(r.get(k) for k in keys) == g and (s is None or r.get("seed") == s)]
                    pts: dict[float, list[float]] = {}
                    for i in idx:
                        xv, yv = xs_all[i], _number(brows[i].get(col))
                        if xv is not None and yv is not None:
                            pts.setdefault(xv, []).append(yv)
                    if not pts:
                        continue
                    xv = sorted(pts)
                    parts = [col] if name_by_col else []
                    parts += [gname] if gname and not name_by_col else []
                    if s is not None:
                        parts.append(f"seed {s}")
                    elif average and len(seeds) > 1 and not name_by_col:
                        parts.append(f"mean of {len(seeds)} seeds")
                    out.append({"name": ", ".join(p for p in parts if p) or col, "x": xv, "y": [float(np.mean(pts[v])) for v in xv]})
            return out

        for col in metrics:
            if col in in_family:
                continue
            series = series_for(col)
            if series:
                ys = [y for s in series for y in s["y"]]
                plots.append(page.plot("line", {"title": col + suffix, "xlabel": xlabel, "ylabel": col, "xlog": xlog, "ylog": _log_scale(ys), "series": series}))
        for fam, cols in families.items():
            for g in groups[:MAX_GROUP_PLOTS]:
                series = []
                for col in cols:  # one line per member, the mean over seeds: keeps a family plot readable
                    series.extend(_mean_over_seeds(series_for(col, g, name_by_col=True)))
                if series:
                    gname = ", ".join(f"{k}={v}" for k, v in zip(keys, g))
                    title = f"{fam}* ({gname})" if gname else f"{fam}*"
                    ys = [y for s in series for y in s["y"]]
                    plots.append(page.plot("line", {"title": title + suffix, "xlabel": xlabel, "ylabel": fam, "xlog": xlog, "ylog": _log_scale(ys), "series": series}))
    if plots:
        page.section("Metric curves (history.csv)", f'<div class="grid">{"".join(plots)}</div>',
                     "One line per run (seed, and the columns that identify a run); past 10 lines, the mean over seeds. "
                     "Hover for values, drag across a plot to zoom in, double-click to zoom out, click a legend entry to hide it.")


def _drop_redundant(rows: list[dict[str, str]], keys: list[str]) -> list[str]:
    """Leave out of the legend, left to right, key columns that the remaining ones determine (imbalance's
    ``point`` index, given ``ratio`` and ``minority_fraction``)."""
    keys = list(keys)
    for c in list(keys):
        rest = [k for k in keys if k != c]
        if rest and _determined(rows, c, rest):
            keys.remove(c)
    return keys


def _mean_over_seeds(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One series per name: the pointwise mean of the series (one per seed) that share it."""
    merged: dict[str, dict[float, list[float]]] = {}
    for s in series:
        name = s["name"].split(", seed ")[0]
        for xv, yv in zip(s["x"], s["y"]):
            merged.setdefault(name, {}).setdefault(xv, []).append(yv)
    return [{"name": n, "x": sorted(p), "y": [float(np.mean(p[v])) for v in sorted(p)]} for n, p in merged.items()]


# -- sweep folders ----------------------------------------------------------------------------------------
def _sweep_sections(page: _Page, folder: Path) -> None:
    from implicit_geometry.sweep.table import read_table

    meta = _read_object(folder / "sweep.json")
    for key, kind, name in (("grid", dict, "an object"), ("points", list, "an array")):
        if meta.get(key) is not None and not isinstance(meta[key], kind):
            raise InvalidParameterError(f"{folder / 'sweep.json'} must hold {key} as {name}, as igeom writes it (got {_JSON_KINDS.get(type(meta[key]), type(meta[key]).__name__)})")
    rows = _read_rows(folder / "table.csv", lambda: read_table(folder)) if (folder / "table.csv").exists() else []
    spec = {k: meta.get(k) for k in ("experiment", "grid", "fixed", "seeds", "first_seed")}
    statuses: dict[str, str] = {}
    for r in rows:
        statuses[str(r.get("point"))] = str(r.get("status"))
    counts = {s: sum(v == s for v in statuses.values()) for s in ("done", "failed", "pending")}
    page.section("Sweep", _kv_table({**spec, "points": len(meta.get("points", [])), **counts}))
    columns = list(rows[0]) if rows else []
    if not rows:
        return
    cut = columns.index("seed") if "seed" in columns else 2
    config_cols = columns[2:cut]
    result_cols = [c for c in columns[cut + 1:] if c != "error"]
    done = [r for r in rows if r.get("status") == "done"]
    numeric = [c for c in result_cols if any(_number(r.get(c)) is not None for r in done)]
    # results that vary across the sweep (constants such as the number of classes say nothing against a parameter)
    metrics = [c for c in numeric if len({_number(r.get(c)) for r in done} - {None}) > 1] or numeric
    swept = [k for k in (meta.get("grid") or {}) if k in config_cols and len({str(r.get(k)) for r in rows}) > 1]
    if metrics and swept and done:
        default = next((m for m in metrics if m.split(".")[-1].startswith("dist")), metrics[0])  # points.dist_W too
        options = "".join(f'<option value="{_esc(m)}"{" selected" if m == default else ""}>{_esc(m)}</option>' for m in metrics)
        plots = [page.plot("sweep", _sweep_plot_spec(done, param, [k for k in swept if k != param], metrics)) for param in swept]
        picker = f'<p><label>result: <select id="ig-metric">{options}</select></label></p>'
        page.section("Results against swept parameters", picker + f'<div class="grid">{"".join(plots)}</div>',
                     "Mean over seeds, bars = standard deviation over seeds; one line per combination of the other swept parameters. "
                     "Past 8 lines, the parameters with most values are averaged over too (said in the legend; bars then also span them).")
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        seen: dict[str, Any] = {}
        for r in failed:
            seen.setdefault(str(r["point"]), [r["point"], *(r.get(k) for k in swept), r.get("error")])
        page.section("Failed points", f'<div class="failed">{_table(["point", *swept, "error"], list(seen.values()))}</div>')
    shown = rows[:MAX_TABLE_ROWS]
    note = f"{len(rows)} rows (one per point and seed); click a header to sort." + (f" First {MAX_TABLE_ROWS} shown." if len(rows) > MAX_TABLE_ROWS else "")
    page.section("Table (table.csv)", _table(columns, [[r.get(c) for c in columns] for r in shown]), note)


def _sweep_plot_spec(rows: list[dict[str, Any]], param: str, others: list[str], metrics: list[str]) -> dict[str, Any]:
    values = list(dict.fromkeys(r.get(param) for r in rows))
    numeric = all(_number(v) is not None for v in values)
    if numeric:
        values = sorted(values, key=lambda v: float(v))
    xcats = None if numeric else [str(v) for v in values]
    xpos = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
    # One line per combination of the other swept parameters while there are at most 8; past that, lines for the
    # parameters with fewest values (as many as fit in 8 lines) and the mean over the rest.
    sizes = {k: len({str(r.get(k)) for r in rows}) for k in others}
    kept: list[str] = []
    for k in sorted(others, key=lambda k: sizes[k]):
        if math.prod(sizes[j] for j in kept + [k]) <= 8:
            kept.append(k)
    averaged = [k for k in others if k not in kept]
    others = [k for k in others if k in kept]
    combos = list(dict.fromkeys(tuple(r.get(k) for k in others) for r in rows))
    out: dict[str, list[dict[str, Any]]] = {}
    ylog: dict[str, bool] = {}
    for m in metrics:
        series = []
        for combo in combos:
            xs, ys, es = [], [], []
            for v in values:
                sel = [r for r in rows if r.get(param) == v and tuple(r.get(k) for k in others) == combo]
                vals = [x for x in (_number(r.get(m)) for r in sel) if x is not None]
                if not vals:
                    continue
                xs.append(xpos[v])
                ys.append(float(np.mean(vals)))
                es.append(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)
            name = ", ".join(f"{k}={c}" for k, c in zip(others, combo))
            if averaged:
                name = (name + "; " if name else "") + "mean over " + ", ".join(averaged)
            series.append({"name": name or m, "x": xs, "y": ys, "err": es})
        out[m] = series
        ylog[m] = _log_scale([y for s in series for y in s["y"]])
    return {"param": param, "xlog": bool(numeric and _log_scale([xpos[v] for v in values])), "xcats": xcats, "metrics": out, "ylog": ylog}


# -- entry points -----------------------------------------------------------------------------------------
def build_report(folder: Path | str) -> str:
    """The HTML text of the report of a run folder or a sweep folder."""
    folder = Path(folder)
    if (folder / "sweep.json").exists():
        meta = _read_object(folder / "sweep.json")
        page = _Page(f"Sweep of {meta.get('experiment', '?')}", str(folder.resolve()))
        _sweep_sections(page, folder)
    elif (folder / "config.json").exists() or (folder / "summary.json").exists():
        summary = _read_object_if(folder / "summary.json")
        page = _Page(f"Run of {summary.get('experiment', folder.name)}", str(folder.resolve()))
        _run_sections(page, folder)
    else:
        raise InvalidParameterError(f"folder must be a run folder (config.json) or a sweep folder (sweep.json) (got {str(folder)!r})")
    return page.render()


def write_report(folder: Path | str, out: Path | str | None = None) -> Path:
    """Write the report (default ``FOLDER/report.html``) and return its path.

    >>> import tempfile, json, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "config.json").write_text(json.dumps({"note": "<script>alert(1)</script>"}))
    >>> "<script>alert" in write_report(d).read_text()
    False
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidParameterError(f"folder must be an existing run or sweep folder (got {str(folder)!r})")
    text = build_report(folder)
    path = Path(out) if out is not None else folder / "report.html"
    write_text(path, text)
    return path
