"""Sweeps: grid expansion, resumability (skip finished, rerun failed, survive a kill), executors agree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from implicit_geometry._validation import InvalidParameterError
from implicit_geometry.sweep import SweepSpec, read_table, run_sweep

TINY = {"steps": "40", "counts": "3:3:1", "dim": "3", "records": "4", "device": "cpu"}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake(monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent))
    import sweep_fake

    from implicit_geometry import experiments

    monkeypatch.setitem(experiments.EXPERIMENTS, "fake", "sweep_fake")
    sweep_fake.CALLS.clear()
    yield sweep_fake
    sys.path.remove(str(Path(__file__).parent))


def test_grid_expansion_batches_seeds_and_validates():
    spec = SweepSpec("seli", grid={"lr": ["0.5", "1"], "depth": ["1", "2"], "counts": ["4:4:1", "2:2"]}, fixed=TINY, seeds=3)
    points = spec.points()
    assert len(points) == 8  # 2 x 2 x 2; the 3 seeds of a point are one batched simulation
    assert all(p.config["seeds"] == 3 and p.config["first_seed"] == 0 for p in points)
    assert points[0].config["counts"] == [4, 4, 1] and points[0].config["lr"] == 0.5
    assert len({p.id for p in points}) == 8
    # ids depend on the config only: reordering the grid keeps them
    again = SweepSpec("seli", grid={"counts": ["4:4:1", "2:2"], "depth": ["1", "2"], "lr": ["0.5", "1.0"]}, fixed=TINY, seeds=3)
    assert {p.id for p in again.points()} == {p.id for p in points}
    with pytest.raises(InvalidParameterError, match="sweep keys must be config fields of seli .* \\(got 'width'\\)"):
        SweepSpec("seli", grid={"width": ["1"]}).points()
    with pytest.raises(InvalidParameterError, match="lr must be a number > 0"):
        SweepSpec("seli", grid={"lr": ["-1"]}).points()
    with pytest.raises(InvalidParameterError, match="must not be the seed fields"):
        SweepSpec("seli", grid={"seeds": ["2"]}).points()
    with pytest.raises(InvalidParameterError, match="experiment must be one of"):
        SweepSpec("nope").points()


def test_yaml_file_equals_command_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("experiment: seli\nseeds: 2\nset: {steps: 40, counts: [3, 3, 1], dim: 3}\ngrid:\n  lr: [0.5, 1.0]\n  depth: [1, 2]\n")
    from_file = SweepSpec.from_yaml(path).points()
    from_cli = SweepSpec("seli", grid={"lr": ["0.5", "1"], "depth": ["1", "2"]}, fixed={"steps": "40", "counts": "3:3:1", "dim": "3"}, seeds=2).points()
    assert [p.id for p in from_file] == [p.id for p in from_cli]


def test_failing_point_is_recorded_and_rerun_without_redoing_finished(fake, tmp_path):
    spec = SweepSpec("fake", grid={"x": [-1.0, 2.0, 3.0]}, fixed={"label": "<script>alert(1)</script>"}, seeds=2, first_seed=5)
    res = run_sweep(spec, tmp_path / "s", executor="serial", progress=False)
    assert (res.total, res.done, res.failed) == (6, 4, 2)  # no seed batching: one point per seed
    assert all("x must be >= 0" in e for e in res.errors.values())
    rows = read_table(tmp_path / "s")
    assert [r["status"] for r in rows] == ["failed", "failed", "done", "done", "done", "done"]
    ok = [r for r in rows if r["status"] == "done"]
    assert [(r["x"], r["seed"], r["y"]) for r in ok] == [(2.0, 5, 9.0), (2.0, 6, 10.0), (3.0, 5, 14.0), (3.0, 6, 15.0)]
    assert all("seconds" not in r for r in rows)  # wall time is volatile: kept out of the table
    assert rows[0]["error"].startswith("ValueError: x must be >= 0")
    calls = len(fake.CALLS)
    res2 = run_sweep(spec, tmp_path / "s", executor="serial", progress=False)
    assert len(fake.CALLS) - calls == 2 and res2.failed == 2  # only the failed points ran again
    # a larger grid reuses every finished point
    bigger = SweepSpec("fake", grid={"x": [-1.0, 2.0, 3.0, 4.0]}, fixed=spec.fixed, seeds=2, first_seed=5)
    calls = len(fake.CALLS)
    run_sweep(bigger, tmp_path / "s", executor="serial", progress=False)
    assert sorted(fake.CALLS[calls:]) == [-1.0, -1.0, 4.0, 4.0]


def _tiny_seli(points_per_lr: int = 3) -> SweepSpec:
    lrs = ",".join(str(0.3 + 0.1 * i) for i in range(4))
    return SweepSpec("seli", grid={"lr": lrs.split(","), "init_std": ["0.05", "0.1", "0.2"][:points_per_lr]}, fixed={**TINY, "steps": "300"}, seeds=2)


def test_killed_sweep_resumes_without_redoing_and_equals_uninterrupted(tmp_path):
    spec = _tiny_seli()
    ref = run_sweep(spec, tmp_path / "ref", executor="serial", progress=False)
    assert ref.done == 12
    # the same sweep on the default executor, killed once a few points are finished
    cmd = [sys.executable, "-m", "implicit_geometry.cli", "sweep", "seli", "--grid", "lr=" + ",".join(map(str, spec.grid["lr"])),
           "--grid", "init_std=" + ",".join(spec.grid["init_std"]), "--seeds", "2", "--jobs", "2", "--quiet", "--out", str(tmp_path / "k"),
           "--batch", "2"]  # batches of 2 points: the kill lands between batches (the reference ran one batch of 12)
    for k, v in {**TINY, "steps": "300"}.items():
        cmd += ["--set", f"{k}={v}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    summaries = lambda: {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "k" / "points").glob("*/summary.json")}  # noqa: E731
    deadline = time.monotonic() + 120
    while len(summaries()) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    before = summaries()
    assert proc.returncode == 130, err
    assert "sweep interrupted" in err and 3 <= len(before) < 12, (len(before), err)
    partial = read_table(tmp_path / "k")
    assert sum(r["status"] == "done" for r in partial) == 2 * len(before)
    done = run_sweep(spec, tmp_path / "k", executor="serial", progress=False)  # in-process: no second worker start-up
    assert (done.done, done.failed) == (12, 0)
    after = summaries()
    assert all(after[k] == v for k, v in before.items())  # finished points were not redone
    assert (tmp_path / "k" / "table.csv").read_bytes() == (tmp_path / "ref" / "table.csv").read_bytes()
    assert (tmp_path / "k" / "table.parquet").exists()


def test_batches_give_the_bits_of_separate_runs_and_keep_failures_apart(tmp_path):
    from implicit_geometry.sweep.runner import plan_batches

    # gd with lr 1e30 diverges: its batch falls back to one run per point, and only that point fails
    spec = SweepSpec("seli", grid={"dim": ["3", "4"], "lr": ["0.05", "0.2", "1e30"], "init_std": ["0.1", "0.3"]},
                     fixed={**TINY, "optimizer": "gd"}, seeds=2)
    points = spec.points()
    batches = plan_batches("seli", points, 4)
    assert [len(b) for b in batches] == [3, 3, 3, 3]  # two shapes (dim) of 6 points, cut into equal halves
    assert all(len({p.config["dim"] for p in b}) == 1 for b in batches)
    assert plan_batches("seli", points, 1) == [[p] for p in points]
    one = run_sweep(spec, tmp_path / "one", executor="serial", progress=False, batch=1)
    many = run_sweep(spec, tmp_path / "many", executor="serial", progress=False, batch=4)
    assert (many.done, many.failed) == (one.done, one.failed) == (8, 4)
    assert all("training diverged" in e for e in many.errors.values())
    assert (tmp_path / "many" / "table.csv").read_bytes() == (tmp_path / "one" / "table.csv").read_bytes()
    with pytest.raises(InvalidParameterError, match="batch must be an integer >= 1"):
        run_sweep(spec, tmp_path / "x", batch=0)


def test_dask_executor_matches_serial(tmp_path):
    pytest.importorskip("distributed")
    from dask.distributed import LocalCluster

    spec = SweepSpec("seli", grid={"lr": ["0.5", "1"], "depth": ["1", "2"]}, fixed=TINY, seeds=2)
    run_sweep(spec, tmp_path / "serial", executor="serial", progress=False)
    # threads keep this test fast; the benchmark runs a 2-process local cluster through --executor dask
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        res = run_sweep(spec, tmp_path / "dask", executor="dask", scheduler=cluster.scheduler_address, progress=False)
    assert (res.done, res.failed) == (4, 0)
    assert (tmp_path / "dask" / "table.csv").read_bytes() == (tmp_path / "serial" / "table.csv").read_bytes()
    with pytest.raises(InvalidParameterError, match="scheduler must be given only with executor dask"):
        run_sweep(spec, tmp_path / "x", executor="local", scheduler="tcp://nowhere:1")


def test_cli_errors_are_one_line(capsys):
    from implicit_geometry.cli import cli

    for argv, message in [
        (["sweep", "seli", "--grid", "widht=1,2"], "igeom: error: sweep keys must be config fields of seli"),
        (["sweep", "seli", "--grid", "lr"], "igeom: error: --grid must be KEY=V1,V2,... (got 'lr')"),
        (["report", "/nonexistent/folder"], "igeom: error: folder must be an existing run or sweep folder"),
    ]:
        with pytest.raises(SystemExit) as exc:
            cli(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith(message) and err.count("\n") == 1, err


def test_cli_sweep_from_file_with_set_and_report(tmp_path, capsys):
    import json

    from implicit_geometry.cli import cli

    spec_file = tmp_path / "s.yaml"
    spec_file.write_text("experiment: seli\nseeds: 2\ngrid:\n  lr: [0.5, 1.0]\n")
    argv = ["sweep", "--file", str(spec_file), "--set", "counts=3,3,1", "--set", "steps=30", "--set", "dim=3", "--set", "records=3",
            "--set", "device=cpu", "--executor", "serial", "--quiet", "--json", "--report", "--out", str(tmp_path / "s")]
    cli(argv)
    out = json.loads(capsys.readouterr().out)
    assert (out["total"], out["done"], out["failed"]) == (2, 2, 0) and out["report"].endswith("report.html")
    rows = read_table(tmp_path / "s")
    assert [(r["lr"], r["seed"], r["counts"]) for r in rows] == [(0.5, 0, "3:3:1"), (0.5, 1, "3:3:1"), (1.0, 0, "3:3:1"), (1.0, 1, "3:3:1")]
