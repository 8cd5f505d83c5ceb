"""Atomic file output: every file is written to a temporary sibling and renamed into place, so a reader (or a
run killed mid-write) never sees a half-written file."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from implicit_geometry._validation import InvalidParameterError, one_line


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; results are meant to be shared like any file the user writes
_FILE_MODE = 0o666 & ~_umask()


def _cannot_write(path: Path, exc: OSError) -> InvalidParameterError:
    return InvalidParameterError(f"cannot write {str(path)!r}: {exc.strerror or one_line(exc)}")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "it is a folder; give a file name")
        blocking = next((p for p in path.parents if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise NotADirectoryError(20, f"{str(blocking)!r} is a file, not a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # a file where a folder is needed, no permission, no space: one line, not a traceback
        raise _cannot_write(path, exc) from None
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _cannot_write(path, exc) from None
        raise


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become None (a results file never holds NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return to_jsonable(obj.item())
    return obj


def dumps_json(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), indent=2, sort_keys=False, allow_nan=False)


def write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (dumps_json(obj) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # a hand-edited or foreign file: say which, in one line
        raise InvalidParameterError(f"{path} must be a JSON file written by igeom (it does not parse: {exc})") from None


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    rows = list(rows)
    buf = io.StringIO()
    if rows:
        fields = list(rows[0].keys())
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else repr(float(v)) if isinstance(v, (float, np.floating)) else v) for k, v in to_jsonable(row).items()})
    _atomic_write_bytes(path, buf.getvalue().encode())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_npz(path: Path, **arrays: Any) -> None:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    _atomic_write_bytes(path, buf.getvalue())


def write_torch(path: Path, obj: Any) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write_bytes(path, buf.getvalue())


def read_torch(path: Path) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise InvalidParameterError(f"{path} must be a checkpoint written by igeom (it does not load: {type(exc).__name__}: {one_line(exc, 160)})") from None


def save_figure(path: Path, fig: Any, **kwargs: Any) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    _atomic_write_bytes(path, buf.getvalue())
