import os

import numpy as np
import pytest
import torch

# One thread per test process: the suite runs under pytest-xdist on 2 cores.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def random_rotation(d: int, rng) -> np.ndarray:
    Q, R = np.linalg.qr(rng.standard_normal((d, d)))
    return Q * np.sign(np.diag(R))


def stop_after(monkeypatch, module, checks: int) -> None:
    """Make ``module.interruptible`` report a stop request (as SIGINT would) from its ``checks + 1``-th check on;
    ``monkeypatch.undo()`` restores it."""
    import contextlib

    class Flag:
        calls = 0

        @property
        def requested(self):
            Flag.calls += 1
            return Flag.calls > checks

        @requested.setter
        def requested(self, value):
            pass

    @contextlib.contextmanager
    def fake():
        yield Flag()

    monkeypatch.setattr(module, "interruptible", fake)


def run_cli(args, capsys) -> tuple[int, str]:
    """``igeom ARGS`` in-process: (exit status, stripped stderr)."""
    from implicit_geometry.cli import cli

    capsys.readouterr()  # drop earlier output
    code = 0
    try:
        cli([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err.strip()


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """A user error: exit status 2 and one ``igeom: error:`` line (no traceback) holding every needle."""
    assert code == 2, err
    assert "Traceback" not in err, err
    assert err.startswith("igeom: error: ") and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
