import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from implicit_geometry.cli import cli
from implicit_geometry.experiments.seli import SeliConfig, run_seli

SMALL = dict(counts=[6, 3, 1, 1], dim=5, steps=3000, records=15, device="cpu")


def test_run_folder_contents(tmp_path):
    summary = run_seli(SeliConfig(**SMALL, seeds=2), tmp_path / "run", progress=False)
    folder = tmp_path / "run"
    for name in ("config.json", "history.csv", "summary.json", "final.npz", "figures/distances.png", "figures/grams.png", "figures/loss.png"):
        assert (folder / name).exists(), name
    assert not (folder / "checkpoint.pt").exists()
    on_disk = json.loads((folder / "summary.json").read_text())
    for key in ("dist_W", "dist_H", "dist_Z", "dist_means", "steps", "seconds"):
        assert isinstance(on_disk[key], (int, float)) and math.isfinite(on_disk[key])
    assert on_disk["steps"] == 3000 and len(on_disk["per_seed"]["dist_W"]) == 2
    assert summary["dist_Z"] < 1e-2
    data = np.load(folder / "final.npz")
    assert data["H"].shape == (2, 5, 11) and data["W"].shape == (2, 4, 5)
    rows = list(csv.DictReader(open(folder / "history.csv")))
    assert {r["seed"] for r in rows} == {"0", "1"}
    assert "nan" not in (folder / "history.csv").read_text().lower()


def test_deep_run_saves_factors(tmp_path):
    run_seli(SeliConfig(**{**SMALL, "steps": 200}, depth=3), tmp_path / "deep", progress=False)
    data = np.load(tmp_path / "deep" / "final.npz")
    W = data["W3"] @ data["W2"] @ data["W1"]
    assert np.allclose(W, data["W"], rtol=1e-12)
    assert data["W1"].shape == (5, 5) and data["W3"].shape == (4, 5)


def test_cli_json_summary(tmp_path, capsys):
    cli(["run", "seli", "--counts", "4,2,1", "--dim", "4", "--steps", "500", "--out", str(tmp_path / "r"), "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    for key in ("dist_W", "dist_H", "dist_Z", "dist_means", "steps", "seconds"):
        assert key in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--counts", "5,0,3"], "counts must be positive integers"),
        (["--counts", "a,b"], "counts must be comma-separated positive integers"),
        (["--dim", "0"], "dim must be an integer >= 1"),
        (["--classes", "1"], "classes must be an integer >= 2"),
        (["--resume", "/no/such/folder"], "--resume must name an existing run folder"),
        (["--optimizer", "adam"], "optimizer must be one of ngd, gd"),
        (["--weight-decay", "0.1"], "weight_decay > 0 needs optimizer gd"),
        (["--steps", "x"], "Invalid value for '--steps'"),
        (["--lr", "-1"], "lr must be a number > 0"),
        (["--optimizer", "gd", "--lr", "20", "--steps", "200", "--counts", "5,3,1", "--quiet"], "training diverged"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli(["run", "seli", "--out", str(tmp_path / "x"), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("igeom: error:") and message in err


def test_out_folder_holding_a_run_is_refused(tmp_path, capsys):
    run_seli(SeliConfig(**{**SMALL, "steps": 10}), tmp_path / "r", progress=False)
    with pytest.raises(SystemExit) as exc:
        cli(["run", "seli", "--steps", "10", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2 and "use --resume" in capsys.readouterr().err
    # a stray checkpoint without its config (a half-deleted run) must not be picked up by a new run
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "checkpoint.pt").write_bytes(b"not ours")
    with pytest.raises(SystemExit) as exc:
        cli(["run", "seli", "--steps", "10", "--out", str(tmp_path / "stray")])
    assert exc.value.code == 2 and "holds a checkpoint.pt but no config.json" in capsys.readouterr().err


def test_signal_before_training_checkpoints_instead_of_killing(tmp_path, monkeypatch):
    """A SIGTERM that lands after the run folder exists but before training has started (loading, building) used to
    kill the process with a config-only folder; now the training loop's first check sees it and checkpoints."""
    from implicit_geometry.experiments import base

    def unhandled(signum, frame):
        pytest.fail("SIGTERM reached the default handler: the run would have been killed")

    opened, handler_before = base.open_run_folder, signal.signal(signal.SIGTERM, unhandled)

    def open_then_signal(*args, **kwargs):
        result = opened(*args, **kwargs)
        signal.raise_signal(signal.SIGTERM)
        return result

    monkeypatch.setattr(base, "open_run_folder", open_then_signal)
    cfg = SeliConfig(counts=[6, 3, 1, 1], dim=5, steps=200, records=5, device="cpu")
    try:
        with pytest.raises(base.Interrupted):
            run_seli(cfg, tmp_path / "a", progress=False)
        assert signal.getsignal(signal.SIGTERM) is unhandled  # the run's handler is gone again
    finally:
        signal.signal(signal.SIGTERM, handler_before)
    assert (tmp_path / "a" / "checkpoint.pt").exists() and not (tmp_path / "a" / "summary.json").exists()
    monkeypatch.setattr(base, "open_run_folder", opened)
    resumed = run_seli(resume=tmp_path / "a", progress=False)
    straight = run_seli(cfg, tmp_path / "b", progress=False)
    assert resumed["dist_W"] == straight["dist_W"] and resumed["log10_loss"] == straight["log10_loss"]


def test_sigterm_checkpoint_and_resume_give_the_same_numbers(tmp_path):
    args = ["--counts", "6,3,1,1", "--dim", "5", "--steps", "10000", "--records", "20", "--device", "cpu", "--quiet"]
    folder = tmp_path / "interrupted"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "implicit_geometry.cli", "run", "seli", *args, "--out", str(folder)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while not (folder / "config.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.15)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume with --resume" in err and err.strip().count("\n") == 0
    assert (folder / "checkpoint.pt").exists() and not (folder / "summary.json").exists()

    resumed = run_seli(resume=folder, progress=False)
    straight = run_seli(SeliConfig(counts=[6, 3, 1, 1], dim=5, steps=10000, records=20, device="cpu"), tmp_path / "straight", progress=False)
    for key in ("dist_W", "dist_H", "dist_Z", "dist_means", "log10_loss", "min_margin"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-12), key
    rows_a = list(csv.DictReader(open(folder / "history.csv")))
    rows_b = list(csv.DictReader(open(tmp_path / "straight" / "history.csv")))
    assert len(rows_a) == len(rows_b)
    for a, b in zip(rows_a, rows_b):
        a.pop("seconds"), b.pop("seconds")
        assert a == b
    assert not (folder / "checkpoint.pt").exists()
    # Resuming a finished run is a no-op that returns its summary.
    assert run_seli(resume=folder, progress=False)["dist_W"] == resumed["dist_W"]
