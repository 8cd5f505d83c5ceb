"""HTML reports: content checked against independent computations, escaping, and rendering in headless Chromium."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from implicit_geometry.report.html import build_report, write_report

TINY = {"steps": "60", "counts": "4:4:1", "dim": "4", "records": "6", "device": "cpu"}


def _specs(text: str) -> dict:
    m = re.search(r'<script type="application/json" id="ig-data">(.*?)</script>', text, re.S)
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def seli_run(tmp_path_factory):
    from implicit_geometry.experiments.seli import SeliConfig, run_seli

    folder = tmp_path_factory.mktemp("run") / "seli"
    run_seli(SeliConfig(counts=[4, 4, 1], dim=4, steps=200, seeds=2, records=12, device="cpu"), folder, progress=False)
    return folder


@pytest.fixture(scope="module")
def seli_sweep(tmp_path_factory):
    from implicit_geometry.sweep import SweepSpec, run_sweep

    folder = tmp_path_factory.mktemp("sweep") / "s"
    spec = SweepSpec("seli", grid={"lr": ["0.5", "1", "2"], "depth": ["1", "2"]}, fixed=TINY, seeds=3)
    run_sweep(spec, folder, executor="serial", progress=False)
    return folder


def test_run_report_shows_prediction_beside_learned(seli_run):
    from implicit_geometry.geometry.targets import seli_geometry

    text = build_report(seli_run)
    specs = _specs(text)
    heat = {s["title"]: np.array(s["z"]) for s in specs.values() if "z" in s}
    pred = heat["W W^T: predicted"]
    target = seli_geometry([4, 4, 1]).W_gram  # independent: the closed form, normalized here
    assert np.allclose(pred, target / np.linalg.norm(target))
    learned = next(v for k, v in heat.items() if k.startswith("W W^T: learned"))
    W = np.load(seli_run / "final.npz")["W"][0]
    assert np.allclose(learned, W @ W.T / np.linalg.norm(W @ W.T))
    lines = {s["title"]: s for s in specs.values() if "series" in s}
    assert {"dist_W", "log10_loss", "min_margin"} <= set(lines) and "seconds" not in lines
    assert [s["name"] for s in lines["dist_W"]["series"]] == ["seed 0", "seed 1"]
    assert len(lines["dist_W"]["series"][0]["x"]) == 12 and lines["dist_W"]["xlog"]
    assert text.count('src="data:image/png;base64,') == 3  # figures/*.png embedded
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text) and "@import" not in text  # nothing fetched: works offline


def test_sweep_report_error_bars_are_std_over_seeds(seli_sweep):
    from implicit_geometry.sweep import read_table

    specs = _specs(build_report(seli_sweep))
    plots = {s["param"]: s for s in specs.values() if "param" in s}
    assert set(plots) == {"lr", "depth"}
    lr = plots["lr"]
    assert lr["xlog"] is False and lr["xcats"] is None
    series = {s["name"]: s for s in lr["metrics"]["dist_W"]}
    assert set(series) == {"depth=1", "depth=2"}
    rows = [r for r in read_table(seli_sweep) if r["depth"] == 2 and r["lr"] == 2.0]
    vals = [r["dist_W"] for r in rows]
    assert len(vals) == 3
    s = series["depth=2"]
    assert s["x"] == [0.5, 1.0, 2.0]
    assert s["y"][2] == pytest.approx(np.mean(vals)) and s["err"][2] == pytest.approx(np.std(vals, ddof=1))


def test_strings_from_configs_are_escaped(tmp_path):
    evil = '</script><script>alert("x")</script><img src=x onerror=alert(1)>'
    (tmp_path / "config.json").write_text(json.dumps({"label": evil, "n": 3}))
    (tmp_path / "summary.json").write_text(json.dumps({"experiment": evil, "verdict": [evil], "per_seed": {"y": [1.0, 2.0]}}))
    (tmp_path / "history.csv").write_text(f"step,{evil.replace(',', ' ')}\n0,1\n1,2\n")
    text = write_report(tmp_path).read_text()
    assert "<script>alert" not in text and "<img src=x" not in text
    assert text.count("<script") == 2  # the data block and the plotting code, nothing else
    assert "&lt;/script&gt;&lt;script&gt;alert" in text


# -- headless Chromium ----------------------------------------------------------------------------------
def _chromium_or_skip():
    from implicit_geometry.report.browser import find_chromium

    pytest.importorskip("websocket")
    if find_chromium() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")


def _assert_rendered(result: dict, screenshot: Path) -> None:
    assert result["loaded"] and result["rendered"], result
    assert result["errors"] == [], result["errors"]
    assert result["plots"] and all(p["drawn"] > 0 and p["svg"] >= 1 for p in result["plots"]), result["plots"]
    assert all(result["images"]), result["images"]
    assert result["hover"], "hovering a plot shows no value"
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000


def test_reports_render_in_headless_chromium(seli_run, seli_sweep, tmp_path):
    _chromium_or_skip()
    from implicit_geometry.report.browser import check_page

    for name, folder in [("run", seli_run), ("sweep", seli_sweep)]:
        shot = tmp_path / f"{name}.png"
        result = check_page(write_report(folder, tmp_path / f"{name}.html"), shot)
        _assert_rendered(result, shot)
    kinds = {p["kind"] for p in result["plots"]}
    assert kinds == {"sweep"} and len(result["plots"]) == 2


def test_escaped_report_runs_no_injected_script(tmp_path):
    _chromium_or_skip()
    from implicit_geometry.report.browser import check_page

    evil = '</script><script>console.error("injected")</script>'
    (tmp_path / "config.json").write_text(json.dumps({"label": evil}))
    (tmp_path / "summary.json").write_text(json.dumps({"experiment": evil, "verdict": [evil]}))
    (tmp_path / "history.csv").write_text("step,loss\n0,1\n1,0.5\n2,0.25\n")
    result = check_page(write_report(tmp_path), tmp_path / "shot.png")
    assert result["errors"] == [] and result["scripts"] == 2
    assert result["title"] == f"Run of {evil}"  # shown as text


def test_checker_sees_script_errors(tmp_path):
    """The browser check can fail: a page that throws, and a plot that draws nothing, are both reported."""
    _chromium_or_skip()
    from implicit_geometry.report.browser import check_page

    page = tmp_path / "bad.html"
    page.write_text('<html><body><div class="ig-plot" data-kind="line" data-drawn="0"></div>'
                    '<script>console.error("boom"); undefinedFunction();</script></body></html>')
    result = check_page(page)
    assert any("boom" in e for e in result["errors"]) and any("undefinedFunction" in e for e in result["errors"])
    assert result["plots"][0]["drawn"] == 0


def test_damaged_run_files_are_one_line_errors(tmp_path):
    """A hand-edited or truncated config/summary (JSON) or checkpoint (torch) is named in one line, exit 2."""
    import subprocess

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text("{not json")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps({"depths": [1]}))
    (tmp_path / "b" / "checkpoint.pt").write_bytes(b"truncated")
    for args, message in ((["report", str(tmp_path / "a")], "config.json must be a JSON file written by igeom"),
                          (["run", "depth", "--resume", str(tmp_path / "a")], "config.json must be a JSON file written by igeom"),
                          (["run", "depth", "--resume", str(tmp_path / "b")], "checkpoint.pt must be a checkpoint written by igeom")):
        r = subprocess.run([sys.executable, "-m", "implicit_geometry.cli", *args], capture_output=True, text=True)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
