"""What every experiment shares: run folders, interruption handling, checkpoints, devices, progress bars.

A run folder holds ``config.json`` (everything needed to rerun or resume), ``checkpoint.pt`` (while a run is
unfinished), ``history.csv``, ``summary.json``, ``final.npz`` and ``figures/``. All files are written atomically.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from implicit_geometry._validation import InvalidParameterError, check_choice, check_float, check_int
from implicit_geometry.io import read_json, write_json, write_text
from implicit_geometry.train.threads import threads_for  # noqa: F401  (re-exported for the experiments)


DEVICES = ("auto", "cpu", "cuda")


class Interrupted(Exception):
    """A run stopped on SIGINT/SIGTERM after saving a checkpoint; ``folder`` can be resumed."""

    def __init__(self, folder: Path, step: int, unit: str = "step") -> None:
        # unit: what ``step`` counts (optimizer steps, epochs, finished configurations), so the message reads right
        super().__init__(f"interrupted after {step} {unit}{'' if step == 1 else 's'}; checkpoint saved, resume with --resume {folder}")
        self.folder = folder
        self.step = step


class StopFlag:
    """Set by SIGINT/SIGTERM while installed; the training loop polls it between whole updates."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested


def check_not_diverged(loss: float, where: str) -> None:
    """Stop with the one-line error of a too-large step once the training loss is no longer finite (the NaN would
    otherwise surface later as a linear-algebra traceback, or in a results file)."""
    if not math.isfinite(loss):
        raise InvalidParameterError(f"lr must be smaller for this problem: training diverged (non-finite loss) {where}")


_active_flag: StopFlag | None = None  # the outermost interruptible()'s flag while its handlers are installed


@contextlib.contextmanager
def interruptible() -> Iterator[StopFlag]:
    """SIGINT/SIGTERM set the yielded flag instead of killing the process. Nested uses share the outermost flag, so
    a signal that arrives while a run is still opening its folder or loading data is seen by the training loop,
    which then checkpoints and stops, instead of killing the process half-way."""
    global _active_flag
    if _active_flag is not None:
        yield _active_flag
        return
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:  # noqa: ARG001
        flag.requested = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    _active_flag = flag
    try:
        yield flag
    finally:
        _active_flag = None
        for sig, old in previous.items():
            signal.signal(sig, old)


def signals_from_start(run: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a ``run_*`` function so SIGINT/SIGTERM are caught from its first line: a signal that arrives while
    the run opens its folder or loads data is seen by the training loop's first check (checkpoint, then stop)."""

    @functools.wraps(run)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with interruptible():
            return run(*args, **kwargs)

    return wrapped


@contextlib.contextmanager
def finishing() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back while a finished run writes its tables, summary and figures (a few seconds):
    a signal there would otherwise surface as a traceback from whatever import or write it hit, leaving a
    folder that must recompute its last stretch."""
    with interruptible():
        yield


def resolve_device(device: str) -> torch.device:
    device = check_choice("device", device, DEVICES)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError("device must be auto or cpu on this machine (got 'cuda': no CUDA device is available)")
    return torch.device(device)


def default_out(experiment: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path("runs") / f"{experiment}-{stamp}"


CONFIG_DIGEST = ".config.sha256"  # digest of the config a run started with: a resume refuses an edited config.json
# fields that do not change a run's numbers: a resume may change them
_DIGEST_EXEMPT = frozenset({"device", "checkpoint_seconds"})


def config_digest(config: Any) -> str:
    import hashlib

    d = {k: v for k, v in config.to_dict().items() if k not in _DIGEST_EXEMPT}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


# run folders this process created and has not yet filled: the CLI removes them when a run fails before its first
# file beyond config.json (a stray config-only folder would otherwise block reusing --out)
_NEW_FOLDERS: list[Path] = []


def _never_started(folder: Path) -> bool:
    return folder.is_dir() and {p.name for p in folder.iterdir()} <= {"config.json", CONFIG_DIGEST}


def discard_unstarted_runs() -> None:
    """Remove the run folders this process created that still hold nothing but ``config.json``."""
    while _NEW_FOLDERS:
        folder = _NEW_FOLDERS.pop()
        if _never_started(folder):
            for name in ("config.json", CONFIG_DIGEST):
                (folder / name).unlink(missing_ok=True)
            folder.rmdir()


def prepare_out(out: Path | None, experiment: str) -> Path:
    out = Path(out) if out is not None else default_out(experiment)
    if out.exists() and not out.is_dir():
        raise InvalidParameterError(f"--out must be a new or empty folder (got {str(out)!r}, which is a file)")
    if (out / "config.json").exists() and not _never_started(out):
        raise InvalidParameterError(
            f"--out must be a new or empty folder (got {str(out)!r}, which holds a run: use --resume to continue it)"
        )
    if (out / "checkpoint.pt").exists():  # a new run must never pick up another run's state
        raise InvalidParameterError(f"--out must be a new or empty folder (got {str(out)!r}, which holds a checkpoint.pt but no config.json)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidParameterError(f"cannot create the run folder {str(out)!r}: {exc.strerror or exc}") from None
    _NEW_FOLDERS.append(out)
    return out


def check_resume_folder(folder: Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidParameterError(f"--resume must name an existing run folder (got {str(folder)!r}: no such folder)")
    if not (folder / "config.json").exists():
        raise InvalidParameterError(f"--resume must name a run folder with config.json (got {str(folder)!r})")
    return folder


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, file=sys.stderr, smoothing=0.05, mininterval=0.5, unit="step")


class ExperimentConfig:
    """Mixin for the experiments' config dataclasses: ``to_dict``/``from_dict`` (unknown keys refused, then
    ``validate``), with the fields named in ``INF_FIELDS`` stored as JSON null when infinite."""

    INF_FIELDS: ClassVar[tuple[str, ...]] = ()

    def validate(self) -> Any:
        return self

    def validate_run_fields(self) -> None:
        """Checks of the fields every experiment has (``first_seed``, ``device``, ``checkpoint_seconds``)."""
        self.first_seed = check_int("first_seed", self.first_seed, minimum=0)  # type: ignore[attr-defined]
        check_choice("device", self.device, DEVICES)  # type: ignore[attr-defined]
        self.checkpoint_seconds = check_float(  # type: ignore[attr-defined]
            "checkpoint_seconds", self.checkpoint_seconds, minimum=0.0, strict_min=True  # type: ignore[attr-defined]
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        for name in self.INF_FIELDS:
            if d.get(name) == math.inf:
                d[name] = None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - known
        if unknown:
            experiment = cls.__name__.removesuffix("Config").lower()
            raise InvalidParameterError(f"this config is not a {experiment} config: keys {sorted(unknown)[:4]} are unknown to it "
                                        f"(a folder from another experiment? resume it with that experiment's command)")
        d = dict(d)
        for name in cls.INF_FIELDS:
            if name in d and d[name] is None:
                d[name] = math.inf
        return cls(**d).validate()


def open_run_folder(
    experiment: str,
    config_cls: type,
    config: Any | None,
    out: Path | str | None,
    resume: Path | str | None,
    *,
    precheck: Callable[[Any], None] | None = None,
) -> tuple[Path, Any, dict[str, Any] | None]:
    """Where a run lives and with which config: ``(folder, config, finished_summary)``.

    Resuming reads the config from the folder, and returns the folder's summary as ``finished_summary`` when the
    run had already finished (resuming it is then a no-op). A new run validates ``config`` (default
    ``config_cls()``), runs ``precheck(config)`` (e.g. loading the data) before creating anything, creates ``out``
    (default ``runs/<experiment>-<time>``) and writes ``config.json``.
    """
    if resume is not None:
        folder = check_resume_folder(Path(resume))
        config = config_cls.from_dict(read_json(folder / "config.json"))
        digest = folder / CONFIG_DIGEST
        if digest.exists() and digest.read_text().strip() != config_digest(config):
            raise InvalidParameterError(
                f"config.json in {str(folder)!r} was changed after the run started: a resumed run keeps the config it "
                "started with (only device and checkpoint_seconds may change); start a new run with --out to change it")
        finished = (folder / "summary.json").exists() and not (folder / "checkpoint.pt").exists()
        # marked, so the command can say there was nothing left to resume
        return folder, config, {**read_json(folder / "summary.json"), "already_finished": True} if finished else None
    config = (config or config_cls()).validate()
    if precheck is not None:
        precheck(config)
    folder = prepare_out(Path(out) if out is not None else None, experiment)
    write_json(folder / "config.json", config.to_dict())
    write_text(folder / CONFIG_DIGEST, config_digest(config) + "\n")
    return folder, config, None


@signals_from_start
def run_experiment(
    experiment: str,
    config_cls: type,
    run_cls: Callable[[Any, Path], Any],
    config: Any | None,
    out: Path | str | None,
    resume: Path | str | None,
    *,
    work: Callable[[Any, Any], None],
    finish: Callable[[Any], dict[str, Any]],
) -> dict[str, Any]:
    """The driver of the experiments whose state is one run object: open (or resume) the run folder, build
    ``run_cls(config, folder)``, restore its checkpoint if there is one, ``work(run, restored)`` (``restored``: what
    ``load_checkpoint`` returned, None for a new run), then ``finish(run)`` with signals held back, so an interrupt
    cannot leave a half-finished folder. Returns the summary with the run's ``folder``. Signals are caught from the
    start (:func:`signals_from_start`)."""
    folder, config, finished = open_run_folder(experiment, config_cls, config, out, resume)
    if finished is not None:
        return finished
    run = run_cls(config, folder)
    restored = run.load_checkpoint() if (folder / "checkpoint.pt").exists() else None
    work(run, restored)
    with finishing():
        summary = finish(run)
    summary["folder"] = str(folder)
    return summary
