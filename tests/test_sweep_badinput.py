"""``igeom sweep`` on bad input: one line saying what was wrong and what is accepted, exit status 2, no traceback."""

from __future__ import annotations

import sys

import pytest

from conftest import assert_one_line_error, run_cli

from implicit_geometry.cli import cli

TINY = ["--set", "steps=10", "--set", "counts=3,3,1", "--set", "dim=3", "--set", "records=3", "--set", "device=cpu", "--quiet"]

def _sweepable() -> str:
    from implicit_geometry.sweep.contract import sweepable_experiments

    return ", ".join(sweepable_experiments())


# -- the sweep file ---------------------------------------------------------------------------------------
def test_invalid_yaml_names_the_file_and_the_position(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("a: [1, 2")
    code, err = run_cli(["sweep", "--file", str(path)], capsys)
    assert_one_line_error(code, err, f"sweep file {path} is not valid YAML", "expected ',' or ']'", "(line 1, column 9)",
                    "keys among experiment, grid, set, seeds, first_seed")


def test_yaml_with_a_tab_or_binary_is_one_line(tmp_path, capsys):
    (tmp_path / "tab.yaml").write_text("experiment: seli\ngrid:\n\t lr: [1]\n")
    code, err = run_cli(["sweep", "--file", str(tmp_path / "tab.yaml")], capsys)
    assert_one_line_error(code, err, "is not valid YAML", "line 3, column 1")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00\x01\x02")
    code, err = run_cli(["sweep", "--file", str(tmp_path / "bin.yaml")], capsys)
    assert_one_line_error(code, err, "is not valid YAML")


@pytest.mark.parametrize("content", ["", "# only a comment\n", "\n\n"], ids=["empty", "comment", "blank"])
def test_empty_sweep_file_says_so(tmp_path, content, capsys):
    path = tmp_path / "empty.yaml"
    path.write_text(content)
    code, err = run_cli(["sweep", "--file", str(path)], capsys)
    assert_one_line_error(code, err, f"sweep file {path} is empty", "experiment: seli")
    assert "give EXPERIMENT or --file" not in err


def test_sweep_file_without_experiment_says_so(tmp_path, capsys):
    path = tmp_path / "noexp.yaml"
    path.write_text("grid: {lr: [0.5, 1]}\n")
    code, err = run_cli(["sweep", "--file", str(path)], capsys)
    assert_one_line_error(code, err, f"sweep file {path} names no experiment", _sweepable())


@pytest.mark.parametrize("content, needle", [
    ("experiment: seli\ngrid: {lr: [1]}\ngrid: {lr: [2]}\n", "must give each key once (got 'grid' again at line 3, column 1)"),
    ("experiment: seli\ngrid:\n  lr: [1]\n  lr: [2]\n", "must give each key once (got 'lr' again at line 4, column 3)"),
    ("experiment: seli\ngrid: {lr: [1, 2]}\nset: {lr: 3}\n", "must give each field in grid or in set, not both (got lr in both)"),
    ("experiment: seli\nset: [1, 2]\n", "set must map fields to values"),
    ("experiment: [seli]\n", "experiment must be a name such as seli"),
    ("- seli\n", "must hold a YAML mapping with keys among experiment, grid, set, seeds, first_seed (got a list)"),
])
def test_sweep_file_contents_are_checked(tmp_path, content, needle, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(content)
    code, err = run_cli(["sweep", "--file", str(path)], capsys)
    assert_one_line_error(code, err, str(path), needle)


def test_yaml_merge_keys_still_work(tmp_path):
    from implicit_geometry.sweep import SweepSpec

    path = tmp_path / "s.yaml"
    path.write_text("experiment: seli\nset:\n  <<: {steps: 10, dim: 3}\n  dim: 4\ngrid: {lr: [0.5, 1]}\n")
    spec = SweepSpec.from_yaml(path)
    assert spec.fixed == {"steps": 10, "dim": 4} and spec.grid == {"lr": [0.5, 1]}


# -- keys given twice -------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["--grid", "lr=1", "--grid", "lr=2"], "--grid must give each key once, as one lr=V1,V2,... (got 'lr=1' and 'lr=2')"),
    (["--set", "counts=20,20,2,2", "--grid", "counts=3:3,4:4"], "(got counts in both --grid and --set)"),
    (["--set", "lr=1", "--set", "lr=2"], "--set must give each key once, as one lr=VALUE (got 'lr=1' and 'lr=2')"),
])
def test_key_given_twice_is_an_error(args, needle, tmp_path, capsys):
    code, err = run_cli(["sweep", "seli", *args, "--set", "steps=10", "--quiet", "--out", str(tmp_path / "s")], capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "s").exists()


def test_command_line_key_also_in_the_file_is_an_error(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("experiment: seli\ngrid: {lr: [0.5, 1]}\nset: {steps: 10}\n")
    for args, needle in ((["--grid", "lr=2"], "lr in both --grid and the sweep file's grid"),
                         (["--set", "lr=2"], "lr in both --set and the sweep file's grid"),
                         (["--grid", "steps=5,6"], "steps in both --grid and the sweep file's set")):
        code, err = run_cli(["sweep", "--file", str(path), *args, "--quiet", "--out", str(tmp_path / "s")], capsys)
        assert_one_line_error(code, err, needle)


def test_distinct_keys_still_combine(tmp_path):
    from implicit_geometry.sweep.spec import parse_assignments, parse_settings

    assert parse_assignments(["lr=0.5,1", "dim=3"], "--grid") == {"lr": ["0.5", "1"], "dim": ["3"]}
    assert parse_settings(["steps=10", "counts=3,3,1"]) == {"steps": "10", "counts": "3,3,1"}


# -- which experiments can be swept -----------------------------------------------------------------------
def test_sweepable_experiments_are_those_with_a_sweep():
    from implicit_geometry.experiments import EXPERIMENTS

    names = _sweepable().split(", ")
    assert "seli" in names and "network" not in names and set(names) < set(EXPERIMENTS)


def test_unsweepable_experiment_lists_the_sweepable_ones(capsys):
    code, err = run_cli(["sweep", "network", "--grid", "lr=0.1,0.2"], capsys)
    assert_one_line_error(code, err, f"experiment must be one that igeom sweep can run: {_sweepable()} (got 'network'", "igeom run network")
    assert "SWEEP" not in err and "Sweepable" not in err and "docs/" not in err


def test_unknown_experiment_lists_only_sweepable_ones(capsys):
    from implicit_geometry.experiments import EXPERIMENTS

    code, err = run_cli(["sweep", "foo"], capsys)
    assert_one_line_error(code, err, f"experiment must be one of {_sweepable()} (got 'foo')")
    for name in set(EXPERIMENTS) - set(_sweepable().split(", ")):  # network, hadamard, head-depth: igeom run only
        assert f" {name}," not in err and f" {name} " not in err


# -- Dask -------------------------------------------------------------------------------------------------
def test_unreachable_dask_scheduler_is_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("dask.distributed")
    from implicit_geometry.sweep import runner

    monkeypatch.setattr(runner, "SCHEDULER_TIMEOUT", 1)  # the real wait is 30 s
    code, err = run_cli(["sweep", "seli", "--grid", "lr=1", *TINY, "--executor", "dask", "--scheduler", "tcp://127.0.0.1:1",
                        "--out", str(tmp_path / "s")], capsys)
    assert_one_line_error(code, err, "could not connect to the dask scheduler tcp://127.0.0.1:1: ", "--scheduler must be the address")


def test_malformed_dask_scheduler_address_is_one_line(tmp_path, capsys):
    pytest.importorskip("dask.distributed")
    code, err = run_cli(["sweep", "seli", "--grid", "lr=1", *TINY, "--executor", "dask", "--scheduler", "nohost",
                        "--out", str(tmp_path / "s")], capsys)
    assert_one_line_error(code, err, "could not connect to the dask scheduler nohost: ", "missing port number")


def test_dask_error_clears_the_progress_bar(tmp_path, monkeypatch, capsys):
    """Also: a failure inside Dask's client start-up with no message (its event-loop thread did not start within its
    10 s on a loaded CI machine: a bare AssertionError) is one line that names the exception."""
    distributed = pytest.importorskip("dask.distributed")

    def client_that_cannot_start(*args, **kwargs):
        raise AssertionError()

    monkeypatch.setattr(distributed, "Client", client_that_cannot_start)
    args = ["sweep", "seli", "--grid", "lr=1", *[a for a in TINY if a != "--quiet"], "--executor", "dask", "--scheduler", "nohost",
            "--out", str(tmp_path / "s")]
    code, err = run_cli(args, capsys)
    assert code == 2 and "\n" not in err and "Traceback" not in err  # run_cli strips the final newline
    assert err.rsplit("\r", 1)[-1].startswith("igeom: error: could not connect to the dask scheduler nohost: AssertionError (")  # the bar was wiped


def test_without_dask_the_dask_executor_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # as if Dask were not installed
    code, err = run_cli(["sweep", "seli", "--grid", "lr=1", *TINY, "--executor", "dask", "--out", str(tmp_path / "s")], capsys)
    assert_one_line_error(code, err, "executor must be local or serial without Dask", "pip install")


# -- a damaged point folder -------------------------------------------------------------------------------
def test_point_summary_that_is_not_an_object_is_named(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from implicit_geometry import experiments

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setitem(experiments.EXPERIMENTS, "fake", "sweep_fake")
    args = ["sweep", "fake", "--grid", "x=1,2", "--executor", "serial", "--quiet", "--out", str(tmp_path / "s")]
    cli(args)
    summary = next((tmp_path / "s" / "points").glob("*/summary.json"))
    summary.write_text("[]")
    code, err = run_cli(args, capsys)
    assert_one_line_error(code, err, str(summary), "must hold a JSON object")
