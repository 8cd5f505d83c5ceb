"""Run folders and result files under bad input: one-line errors (exit 2), no stray folders, no edited resumes."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from conftest import run_cli

from implicit_geometry._validation import InvalidParameterError
from implicit_geometry.io import write_json

SELI = ["run", "seli", "--steps", "10", "--seeds", "1", "--quiet", "--device", "cpu"]




def _one_line_error(code, err, *needles):
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def test_out_is_a_file_or_below_one(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    _one_line_error(*run_cli([*SELI, "--out", f], capsys), "which is a file")
    _one_line_error(*run_cli(["demo", "--out", f], capsys), "which is a file")
    _one_line_error(*run_cli(["demo", "--out", tmp_path], capsys), "not empty", "the demo always starts a new run")
    _one_line_error(*run_cli([*SELI, "--out", f / "run"], capsys), "cannot create the run folder")


def test_report_out_is_a_folder_or_below_a_file(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli([*SELI, "--out", run], capsys)[0] == 0
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    _one_line_error(*run_cli(["report", run, "--out", tmp_path / "adir"], capsys), "it is a folder")
    _one_line_error(*run_cli(["report", run, "--out", tmp_path / "afile" / "x" / "r.html"], capsys), "is a file, not a folder")


def test_results_are_written_with_the_users_umask(tmp_path):
    write_json(tmp_path / "a.json", {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~mask


def test_a_run_that_fails_before_writing_leaves_no_folder_and_out_can_be_reused(tmp_path, capsys, monkeypatch):
    from implicit_geometry.experiments import base

    out = tmp_path / "run"

    def fail(*a, **k):
        raise InvalidParameterError("planted failure after the folder was created")

    monkeypatch.setattr("implicit_geometry.experiments.seli.DeepUFM.random", fail)
    _one_line_error(*run_cli([*SELI, "--out", out], capsys), "planted failure")
    assert not out.exists()
    monkeypatch.undo()
    # a folder holding only config.json (a run that never started, e.g. killed at once) is reused as well
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert run_cli([*SELI, "--out", out], capsys)[0] == 0
    assert (out / "summary.json").exists()
    # a folder with results is never reused, and never removed
    _one_line_error(*run_cli([*SELI, "--out", out], capsys), "holds a run")
    base.discard_unstarted_runs()
    assert (out / "summary.json").exists()


def test_resume_refuses_an_edited_config(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli([*SELI, "--out", run], capsys)[0] == 0
    text = (run / "config.json").read_text()
    (run / "config.json").write_text(text.replace('"device": "cpu"', '"device": "auto"'))
    assert run_cli(["run", "seli", "--resume", run, "--quiet"], capsys)[0] == 0  # device may change
    (run / "config.json").write_text(text.replace('"dim": 20', '"dim": 30'))
    _one_line_error(*run_cli(["run", "seli", "--resume", run, "--quiet"], capsys), "was changed after the run started")


def test_dead_network_is_reported_not_measured_as_collapsed(tmp_path, capsys):
    args = ["run", "network", "--dataset", "digits", "--per-class", "20", "--width", "16", "--epochs", "3", "--lr", "100",
            "--permutations", "0", "--quiet", "--device", "cpu", "--out", tmp_path / "net"]
    _one_line_error(*run_cli(args, capsys), "lr must be smaller", "every class has the same penultimate features")


def test_class_metrics_refuse_coinciding_class_means():
    from implicit_geometry.measure.metrics import DegenerateLayerError, class_metrics

    stats = {"counts": np.array([3.0, 4.0, 5.0]), "means": np.ones((3, 6)), "sigma_w": np.eye(6), "class_var": np.ones(3)}
    with pytest.raises(DegenerateLayerError, match="coincide"):
        class_metrics(stats)
    stats["means"][0, 0] += 1e-3  # any spread at all is measured
    assert class_metrics(stats)["nc1"] > 0


def test_resuming_a_finished_run_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli([*SELI, "--out", run], capsys)[0] == 0
    code, err = run_cli(["run", "seli", "--resume", run, "--quiet"], capsys)
    assert code == 0 and "already finished: nothing to resume" in err
