"""Every experiment's run folder can be reported: tiny runs of each, their reports checked against the files they
come from (curves against history.csv row by row, heatmaps against final.npz, every summary entry shown), and
rendered in headless Chromium (skipped where it is missing)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
from report_cases import CASES

from implicit_geometry.io import read_csv, read_json
from implicit_geometry.report.html import build_report, write_report

# Columns of each history.csv that identify a run or are its time axis (everything else is a metric to plot).
IDS = {
    "seli": {"step", "seed", "seconds"},
    "imbalance": {"point", "ratio", "minority_fraction", "step", "seed"},
    "hadamard": {"analysis", "depth", "classes", "t"},
    "depth": {"dim", "depth", "seed", "step"},
    "ntp": {"step"},
    "network": {"epoch", "seed", "seconds"},
    "head-depth": {"depth", "width", "seconds"},
}


def _specs(text: str) -> dict:
    m = re.search(r'<script type="application/json" id="ig-data">(.*?)</script>', text, re.S)
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            CASES[name](root / name)
            cache[name] = root / name
        return cache[name]

    return get


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _check_series(spec: dict, rows: list[dict], block: dict) -> int:
    """Every point of every line equals the mean of the history rows it names (its keys, seed, x); returns points."""
    xcol = spec["xlabel"].removesuffix(" + 1")
    shift = 1.0 if spec["xlabel"].endswith(" + 1") else 0.0
    base = spec["title"].split(" (")[0]
    checked = 0
    for s in spec["series"]:
        parts = s["name"].split(", ")
        metric = base if base in rows[0] else parts[0]
        sel = [r for r in rows if all(r.get(k) == v for k, v in block.items())]
        for p in parts:
            if "=" in p:
                k, v = p.split("=", 1)
                sel = [r for r in sel if r.get(k) == v]
            elif p.startswith("seed "):
                sel = [r for r in sel if r.get("seed") == p[5:]]
        for x, y in zip(s["x"], s["y"]):
            vals = [_num(r[metric]) for r in sel if _num(r[xcol]) is not None and _num(r[xcol]) + shift == x]
            vals = [v for v in vals if v is not None]
            assert vals and y == pytest.approx(np.mean(vals), rel=1e-9, abs=1e-12), (spec["title"], s["name"], x)
            checked += 1
        assert all(b > a for a, b in zip(s["x"], s["x"][1:])), f"{spec['title']} / {s['name']} mixes runs"
    return checked


@pytest.mark.parametrize("name", list(CASES))
def test_report_of_every_experiment(name, runs):
    folder = runs(name)
    text = build_report(folder)
    specs = _specs(text)
    summary = read_json(folder / "summary.json")

    # every summary entry and verdict line is shown, and records (lists of dicts) are tables, not JSON text
    for key in summary:
        if key not in ("per_seed", "folder"):
            assert f"<b>{html.escape(key)}</b>" in text or f"<h3>{html.escape(key)}</h3>" in text or key == "verdict", key
    for line in summary["verdict"]:
        assert html.escape(line) in text
    assert "{&quot;" not in text

    # curves: one per metric column of history.csv, each point the mean of the rows its legend names
    rows = read_csv(folder / "history.csv")
    lines = [s for s in specs.values() if "series" in s]
    plotted = {s["title"].split(" (")[0] for s in lines} | {n["name"].split(", ")[0] for s in lines for n in s["series"]}
    metrics = {c for c in rows[0] if c not in IDS[name] and any(_num(r[c]) is not None for r in rows)}
    assert metrics <= plotted, metrics - plotted
    checked = 0
    for spec in lines:
        # filters named in the title: a text column's block (analysis=basin), a family plot's group (depth=3)
        block = dict(kv.split("=", 1) for kv in re.findall(r"(\w+=[^,() ]+)", spec["title"]))
        checked += _check_series(spec, rows, block)
    assert checked > (4 if name == "head-depth" else 10)

    # heatmaps: predicted and learned equal the final.npz arrays, each divided by its norm
    npz = np.load(folder / "final.npz")
    heat = {s["title"]: np.array(s["z"]) for s in specs.values() if "z" in s}
    for title, z in heat.items():
        m = re.fullmatch(r"(.+?)(?: \(first (\d+)\))?: (predicted|learned).*", title)
        pred = next((f"{p}{m.group(1)}" for p in ("pred_", "predicted_") if f"{p}{m.group(1)}" in npz.files), None) if m else None
        if pred is None:  # seli's W W^T and class-mean Gram pairs: checked in test_report.py
            continue
        key = pred if m.group(3) == "predicted" else f"learned_{m.group(1)}"
        a = npz[key][: int(m.group(2) or 10**9), : int(m.group(2) or 10**9)]
        assert np.allclose(z, a / np.linalg.norm(a)), title
    if name == "imbalance":  # the learned Grams it stores are those of the first seed's W and class means
        W = npz["W_R5_rho0.5"][0]
        assert np.allclose(npz["learned_W_gram_R5_rho0.5"], W @ W.T)
        assert any(t.startswith("W_gram_R5_rho0.5: learned") for t in heat) and any(t.startswith("mean_gram_R1_rho0.5: pred") for t in heat)
    if name == "ntp":  # independent: centered W, h projected on the row space of W
        from implicit_geometry.ntp.measure import learned_grams

        GW, _ = learned_grams(npz["W"], npz["H"])
        assert np.allclose(heat[next(t for t in heat if t.startswith("W_gram: learned"))], GW / np.linalg.norm(GW))
    if name == "depth":  # one class-mean logit matrix per (d, L), for its first seed
        maps = {t: z for t, z in heat.items() if t.startswith("mean_logits [")}
        assert len(maps) == 2
        for i in (0, 2):
            M = npz["mean_logits"][i]
            t = f"mean_logits [dims={npz['dims'][i]}, depths={npz['depths'][i]}, seeds={npz['seeds'][i]}]"
            assert np.allclose(maps[t], M / np.linalg.norm(M))
    if name == "hadamard":  # no Grams there: the (times x ICs x K) spectra are not drawn as matrices
        assert not heat

    figures = sorted((folder / "figures").glob("*.png"))
    assert text.count('src="data:image/png;base64,') == len(figures)
    assert figures or name in ("hadamard", "ntp")  # those two run without figures here (time)


@pytest.mark.parametrize("name", list(CASES))
def test_report_of_every_experiment_renders(name, runs, tmp_path):
    from implicit_geometry.report.browser import find_chromium

    pytest.importorskip("websocket")
    if find_chromium() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from implicit_geometry.report.browser import check_page

    page = write_report(runs(name), tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    result = check_page(page, shot)
    if not result["hover"]:  # the hover probe can run before layout settles on a loaded machine: once more
        result = check_page(page, shot)
    assert result["loaded"] and result["rendered"] and result["errors"] == [], result
    assert result["plots"] and all(p["drawn"] > 0 and p["svg"] >= 1 for p in result["plots"]), result["plots"]
    assert all(result["images"]) and result["hover"]
    assert len(result["images"]) == len(list((runs(name) / "figures").glob("*.png")))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_imbalance_sweep_table_and_report(tmp_path):
    """imbalance is sweepable: one point per R (seeds batched), its nested results flattened into the table."""
    from implicit_geometry.sweep import SweepSpec, read_table, run_sweep

    spec = SweepSpec("imbalance", grid={"ratios": ["2", "6"]}, fixed={"classes": 4, "steps": 40, "records": 3, "device": "cpu"}, seeds=2)
    result = run_sweep(spec, tmp_path / "s", executor="serial", progress=False)
    rows = read_table(result.folder)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"} and [r["seed"] for r in rows] == [0, 1, 0, 1]
    for r in rows:
        point = tmp_path / "s" / "points" / r["point"]
        s = read_json(point / "summary.json")
        assert s["seeds"] == [0, 1] and not (point / "figures").exists()  # seeds batched in one run; figures skipped
        assert r["ratios"] == s["points"][0]["ratio"]
        assert r["points.learned_w_norm_ratio"] == pytest.approx(s["points"][0]["learned_w_norm_ratio"])
        assert r["worst_distance"] == pytest.approx(s["worst_distance"]) and "points.solver_seconds" not in r  # wall time
    specs = _specs(build_report(result.folder))
    plot = next(s for s in specs.values() if s.get("param") == "ratios")
    series = plot["metrics"]["points.predicted_w_norm_ratio"][0]
    assert series["x"] == [2.0, 6.0] and series["y"][1] > series["y"][0] > 1  # majority classifiers grow with R
