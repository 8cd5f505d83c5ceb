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
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from implicit_geometry._validation import InvalidParameterError
from implicit_geometry.io import _atomic_write_bytes, read_csv, read_json, to_jsonable

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
th{background:#f0f2f5;position:sticky;top:0}table.ig-sortable th{cursor:pointer}th[data-sort=asc]:after{content:" \\25B2"}th[data-sort=desc]:after{content:" \\25BC"}
.scroll{max-height:520px;overflow:auto}.pair{display:flex;gap:6px;align-items:flex-start;border:1px solid #eee;padding:6px;border-radius:4px}
.note{color:#666;font-size:12px}img.fig{max-width:100%;border:1px solid #eee}.failed{color:#b00020}
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
    body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in r) + "</tr>" for r in rows)
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


# -- run folders ------------------------------------------------------------------------------------------
def _gram_pairs(npz: dict[str, np.ndarray]) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """(predicted, learned) Gram pairs and lone square matrices found in final.npz."""
    pairs: list[tuple[str, np.ndarray, np.ndarray]] = []
    used: set[str] = set()
    for key in sorted(npz):
        if key.startswith("pred_") and "learned_" + key[5:] in npz:
            pairs.append((key[5:], npz[key], npz["learned_" + key[5:]]))
            used |= {key, "learned_" + key[5:]}
    W = npz.get("W")
    if W is not None and W.ndim in (2, 3):
        W0 = W[0] if W.ndim == 3 else W
        for key in sorted(npz):
            if key.endswith("W_gram") and key not in used:
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
    lone = [(k, v) for k, v in sorted(npz.items()) if k not in used and v.ndim == 2 and v.shape[0] == v.shape[1] and 1 < v.shape[0] <= MAX_HEATMAP]
    return pairs, lone


def _unit(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a)
    return a / n if n > 0 else a


def _run_sections(page: _Page, folder: Path) -> None:
    config = read_json(folder / "config.json") if (folder / "config.json").exists() else {}
    summary = read_json(folder / "summary.json") if (folder / "summary.json").exists() else {}
    if summary.get("verdict"):
        items = "".join(f"<li>{_esc(line)}</li>" for line in summary["verdict"])
        page.section("Verdict", f'<ul class="verdict">{items}</ul>')
    if config:
        page.section("Configuration", _kv_table(config))
    if (folder / "final.npz").exists():
        with np.load(folder / "final.npz", allow_pickle=False) as data:
            npz = {k: np.asarray(data[k], dtype=float) if data[k].dtype.kind in "fiub" else data[k] for k in data.files}
        npz = {k: v for k, v in npz.items() if v.dtype.kind == "f"}
        pairs, lone = _gram_pairs(npz)
        blocks = []
        for name, pred, learned in pairs:
            if pred.shape != learned.shape or pred.shape[0] > MAX_HEATMAP:
                continue
            p, q = _unit(pred), _unit(learned)
            vmax = float(max(np.abs(p).max(), np.abs(q).max()))
            dist = float(np.linalg.norm(p - q))
            blocks.append(
                f'<div class="pair">{page.plot("heatmap", {"title": f"{name}: predicted", "z": p, "vmax": vmax})}'
                f'{page.plot("heatmap", {"title": f"{name}: learned (distance {dist:.2e})", "z": q, "vmax": vmax})}</div>'
            )
        for name, mat in lone:
            blocks.append(page.plot("heatmap", {"title": name, "z": _unit(mat)}))
        if blocks:
            page.section("Geometry: predicted beside learned", f'<div class="grid">{"".join(blocks)}</div>',
                         "Each matrix divided by its Frobenius norm (learned Grams grow without bound under cross-entropy); "
                         "distance = Frobenius norm of the difference; learned = first seed. Hover for values.")
    if (folder / "history.csv").exists():
        _history_section(page, read_csv(folder / "history.csv"))
    figs = sorted((folder / "figures").glob("*.png")) if (folder / "figures").is_dir() else []
    if figs:
        imgs = "".join(
            f'<figure><img class="fig" alt="{_esc(f.name)}" src="data:image/png;base64,{base64.b64encode(f.read_bytes()).decode()}">'
            f"<figcaption class=\"note\">{_esc(f.name)}</figcaption></figure>" for f in figs
        )
        page.section("Figures (figures/*.png)", f'<div class="grid">{imgs}</div>')
    if summary:
        scalars = {k: v for k, v in summary.items() if k not in ("verdict", "per_seed") and not isinstance(v, dict)}
        body = _kv_table(scalars)
        per_seed = summary.get("per_seed")
        if isinstance(per_seed, dict) and per_seed:
            keys = [k for k, v in per_seed.items() if isinstance(v, list)]
            n = max(len(per_seed[k]) for k in keys) if keys else 0
            seeds = summary.get("seeds") if isinstance(summary.get("seeds"), list) and len(summary["seeds"]) == n else list(range(n))
            rows = [[seeds[i]] + [per_seed[k][i] if i < len(per_seed[k]) else None for k in keys] for i in range(n)]
            body += "<h2>Per seed</h2>" + _table(["seed", *keys], rows)
        page.section("Summary", body)


def _history_section(page: _Page, rows: list[dict[str, str]]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    xkey = "step" if "step" in columns else None
    seeds = [r.get("seed") for r in rows] if "seed" in columns else ["" for _ in rows]
    order = list(dict.fromkeys(seeds))
    xs = [(_number(r[xkey]) if xkey else float(i)) for i, r in enumerate(rows)]
    shift = 1.0 if xkey and min(x for x in xs if x is not None) == 0 else 0.0
    xs = [None if x is None else x + shift for x in xs]
    xlog = _log_scale(xs)
    xlabel = (xkey or "row") + (" + 1" if shift else "")
    plots = []
    for col in columns:
        if col in (xkey, "seed", "seconds"):
            continue
        vals = [_number(r[col]) for r in rows]
        if not any(v is not None for v in vals):
            continue
        series = []
        for s in order:
            idx = [i for i, seed in enumerate(seeds) if seed == s]
            series.append({"name": f"seed {s}" if s != "" else col, "x": [xs[i] for i in idx], "y": [vals[i] for i in idx]})
        plots.append(page.plot("line", {"title": col, "xlabel": xlabel, "ylabel": col, "xlog": xlog, "ylog": _log_scale(vals), "series": series}))
    if plots:
        page.section("Metric curves (history.csv)", f'<div class="grid">{"".join(plots)}</div>',
                     "Hover for values, drag across a plot to zoom in, double-click to zoom out, click a legend entry to hide it.")


# -- sweep folders ----------------------------------------------------------------------------------------
def _sweep_sections(page: _Page, folder: Path) -> None:
    from implicit_geometry.sweep.table import read_table

    meta = read_json(folder / "sweep.json")
    rows = read_table(folder) if (folder / "table.csv").exists() else []
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
        default = next((m for m in metrics if m.startswith("dist")), metrics[0])
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
        meta = read_json(folder / "sweep.json")
        page = _Page(f"Sweep of {meta.get('experiment', '?')}", str(folder.resolve()))
        _sweep_sections(page, folder)
    elif (folder / "config.json").exists() or (folder / "summary.json").exists():
        summary = read_json(folder / "summary.json") if (folder / "summary.json").exists() else {}
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
    _atomic_write_bytes(path, text.encode())
    return path
