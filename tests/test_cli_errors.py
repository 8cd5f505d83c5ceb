"""Bad input found by a new-user audit: each is one line naming the option and what is accepted (exit 2)."""

from __future__ import annotations

import pytest

from conftest import run_cli

from implicit_geometry.ntp.corpus import read_text




@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from implicit_geometry.models.networks import build, save_model

    path = tmp_path_factory.mktemp("model") / "m.pt"
    kw = dict(in_shape=(1, 8, 8), num_classes=10, width=16, depth=2)
    save_model(path, build("mlp", **kw), "mlp", **kw)
    return path


@pytest.mark.parametrize("args, needle", [
    (["--max-rows", "5"], "max_rows must keep every class: the first 5 rows hold 5 of the 10 classes"),
    (["--sample-rows", "0"], "sample_rows must be an integer >= 1"),
    (["--split", "val"], "split must be train for digits"),
])
def test_measure_options(model_file, capsys, args, needle):
    code, err = run_cli(["measure", "--model", model_file, "--data", "digits", *args], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err


@pytest.mark.parametrize("args, needle", [
    (["measure", "--model", "m.pt", "--data", "foo"], "idx:FOLDER, cifar10:FOLDER"),
    (["run", "network", "--dataset", "digits", "--per-class", "1000", "--quiet"], "per_class must be at most 174"),
    (["run", "hadamard", "--analyses", "", "--quiet"], "analyses must name at least one of"),
    (["run", "hadamard", "--classes", "8", "--init", "0,1,0,-0.5,1,1,1,1", "--quiet"], "(got min -0.5)"),
])
def test_option_messages(capsys, args, needle):
    code, err = run_cli(args, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err


def test_ntp_stats_options(tmp_path, capsys):
    f = tmp_path / "a.txt"
    f.write_text("to be or not to be " * 20)
    for args, needle in ((["--max-chars", "-5"], "max_chars must be an integer >= 1"), (["--clusters", "0"], "clusters must be an integer >= 1")):
        code, err = run_cli(["ntp", "stats", f, *args], capsys)
        assert code == 2 and needle in err, err


def test_resume_with_another_experiments_command(tmp_path, capsys):
    run = tmp_path / "imb"
    assert run_cli(["run", "imbalance", "--steps", "10", "--quiet", "--device", "cpu", "--out", run], capsys)[0] == 0
    code, err = run_cli(["run", "seli", "--resume", run, "--quiet"], capsys)
    assert code == 2 and "this config is not a seli config" in err and len(err) < 250, err


def test_read_text_max_chars_counts_the_joining_newlines(tmp_path):
    (tmp_path / "a.txt").write_text("abc\n")
    (tmp_path / "b.txt").write_text("def\n")
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    assert read_text(files) == "abc\n\ndef\n"
    for n in range(1, 12):
        assert read_text(files, n) == "abc\n\ndef\n"[:n]
