"""``igeom report`` on damaged or foreign files: one line naming the file, exit status 2, no traceback."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli

from implicit_geometry.cli import cli


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A real run folder (igeom run seli, a few steps)."""
    from implicit_geometry.experiments.seli import SeliConfig, run_seli

    folder = tmp_path_factory.mktemp("run") / "seli"
    run_seli(SeliConfig(counts=[3, 3, 1], dim=3, steps=10, seeds=1, records=3, device="cpu"), folder, progress=False, figures=False)
    return folder


@pytest.fixture
def damaged(run_folder, tmp_path):
    """A copy of the run folder, to damage."""
    folder = tmp_path / "run"
    shutil.copytree(run_folder, folder)
    return folder


def test_intact_run_folder_reports(run_folder, tmp_path, capsys):
    cli(["report", str(run_folder), "--out", str(tmp_path / "r.html")])
    assert capsys.readouterr().err == ""
    assert "Geometry" in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize("content", [b"junk\n", b"", b"PK\x03\x04 truncated zip"], ids=["text", "empty", "truncated"])
def test_garbage_final_npz_is_named(damaged, content, capsys):
    (damaged / "final.npz").write_bytes(content)
    code, err = run_cli(["report", str(damaged)], capsys)
    assert_one_line_error(code, err, str(damaged / "final.npz"), "must be a NumPy .npz file")
    assert not (damaged / "report.html").exists()


def test_pickled_object_final_npz_is_named_and_not_loaded(damaged, capsys):
    np.savez(damaged / "final.npz", W=np.eye(3), evil=np.array([{"x": 1}], dtype=object))
    code, err = run_cli(["report", str(damaged)], capsys)
    assert_one_line_error(code, err, str(damaged / "final.npz"), "must be a NumPy .npz file", "allow_pickle")


def test_final_npz_with_a_damaged_member_is_named(damaged, capsys):
    with zipfile.ZipFile(damaged / "final.npz", "w") as zf:
        zf.writestr("W.npy", b"not an npy array")
    code, err = run_cli(["report", str(damaged)], capsys)
    assert_one_line_error(code, err, str(damaged / "final.npz"), "'W' is not a NumPy array")


@pytest.mark.parametrize("name", ["summary.json", "config.json"])
@pytest.mark.parametrize("content, kind", [("[]", "an array"), ('"text"', "a string"), ("3", "a number"), ("null", "null")])
def test_json_that_is_not_an_object_is_named(damaged, name, content, kind, capsys):
    (damaged / name).write_text(content)
    code, err = run_cli(["report", str(damaged)], capsys)
    assert_one_line_error(code, err, str(damaged / name), "must hold a JSON object", f"(got {kind})")


def test_undecodable_history_csv_is_named(damaged, capsys):
    (damaged / "history.csv").write_bytes(b"\xff\xfe\x00\x01binary")
    code, err = run_cli(["report", str(damaged)], capsys)
    assert_one_line_error(code, err, str(damaged / "history.csv"), "must be a CSV file")


def test_hand_edited_verdict_still_reports(damaged, capsys):
    summary = json.loads((damaged / "summary.json").read_text())
    (damaged / "summary.json").write_text(json.dumps({**summary, "verdict": "one line of text"}))
    cli(["report", str(damaged)])
    assert "<li>one line of text</li>" in (damaged / "report.html").read_text()


@pytest.mark.parametrize("meta, needle", [
    ([], "must hold a JSON object written by igeom (got an array)"),
    ({"experiment": "seli", "grid": 5}, "must hold grid as an object"),
    ({"experiment": "seli", "grid": {}, "points": 5}, "must hold points as an array"),
])
def test_damaged_sweep_json_is_named(tmp_path, meta, needle, capsys):
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps(meta))
    code, err = run_cli(["report", str(folder)], capsys)
    assert_one_line_error(code, err, str(folder / "sweep.json"), needle)


def test_undecodable_sweep_table_is_named(tmp_path, capsys):
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps({"experiment": "seli", "grid": {"lr": [1]}, "points": []}))
    (folder / "table.csv").write_bytes(b"\xff\xfe\x00\x01")
    code, err = run_cli(["report", str(folder)], capsys)
    assert_one_line_error(code, err, str(folder / "table.csv"), "must be a CSV file")
