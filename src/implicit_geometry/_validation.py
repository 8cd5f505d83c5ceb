"""Parameter validation in one place, with uniform one-line messages.

Every public entry point validates its inputs through these helpers, so a bad value always produces
``InvalidParameterError: <name> must be <what is accepted> (got <value>)``. The CLI turns this error into a
one-line message and exit status 2.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


class InvalidParameterError(ValueError):
    """A user-supplied parameter is out of its accepted range; the message names it and says what is accepted."""


def _fail(name: str, accepted: str, got: Any) -> None:
    raise InvalidParameterError(f"{name} must be {accepted} (got {got!r})")


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line (torch's span several), cut at ``limit`` characters, for the one-line
    errors that wrap a library's failure."""
    return " ".join(str(exc).split())[:limit]


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            _fail(name, "an integer", value)
    value = int(value)
    if minimum is not None and value < minimum:
        _fail(name, f"an integer >= {minimum}", value)
    if maximum is not None and value > maximum:
        _fail(name, f"an integer <= {maximum}", value)
    return value


_INT_OR_RANGE = re.compile(r"\s*([+-]?\d+)\s*(?:\.\.\s*([+-]?\d+)\s*)?")


def parse_int_list(name: str, text: str) -> list[int]:
    """A command-line list of integers: comma-separated values and inclusive ranges ``a..b``, in the order given
    (empty items are skipped). Range checks are the caller's (``check_int``).

    >>> parse_int_list("depths", "1..3,5")
    [1, 2, 3, 5]
    >>> parse_int_list("depths", "1,x")
    Traceback (most recent call last):
    ...
    implicit_geometry._validation.InvalidParameterError: depths must be comma-separated integers or ranges like 1..10 (got '1,x')
    """
    out: list[int] = []
    for part in str(text).split(","):
        if not part.strip():
            continue
        match = _INT_OR_RANGE.fullmatch(part)
        if match is None:
            _fail(name, "comma-separated integers or ranges like 1..10", text)
        first, last = int(match.group(1)), int(match.group(2) if match.group(2) is not None else match.group(1))
        if last < first:
            _fail(name, "comma-separated integers or ranges a..b with a <= b", text)
        out.extend(range(first, last + 1))
    return out


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        _fail(name, "true or false", value)
    return bool(value)


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_min: bool = False,
) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        _fail(name, "a number", value)
    if not math.isfinite(out):
        _fail(name, "a finite number", value)
    if minimum is not None and (out <= minimum if strict_min else out < minimum):
        _fail(name, f"a number {'>' if strict_min else '>='} {minimum:g}", value)
    if maximum is not None and out > maximum:
        _fail(name, f"a number <= {maximum:g}", value)
    return out


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        _fail(name, "one of " + ", ".join(choices), value)
    return value


def check_counts(counts: Any, *, name: str = "counts", min_classes: int = 2) -> np.ndarray:
    """Class counts: a sequence of at least ``min_classes`` positive integers (or a comma-separated string)."""
    raw = counts
    if isinstance(counts, str):
        parts = [p.strip() for p in counts.split(",") if p.strip()]
        try:
            counts = [int(p) for p in parts]
        except ValueError:
            _fail(name, "comma-separated positive integers such as 20,20,2", raw)
    try:
        arr = np.asarray(counts)
    except Exception:  # noqa: BLE001 - anything unconvertible is a bad parameter
        _fail(name, "a sequence of positive integers", raw)
    if arr.ndim != 1 or arr.size == 0:
        _fail(name, "a flat sequence of positive integers", raw)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        _fail(name, "a sequence of positive integers", raw)
    if np.any(arr <= 0):
        _fail(name, "positive integers (every class needs at least one sample)", raw if isinstance(raw, str) else arr.tolist())
    if arr.size < min_classes:
        _fail(name, f"at least {min_classes} classes", raw if isinstance(raw, str) else arr.tolist())
    return arr.astype(np.int64)


def check_labels(labels: Any, num_classes: int | None = None, *, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "iu":
        _fail(name, "a non-empty 1-D array of integer class indices", getattr(arr, "shape", labels))
    if arr.min() < 0 or (num_classes is not None and arr.max() >= num_classes):
        _fail(name, f"class indices in [0, {num_classes})" if num_classes else "non-negative class indices", (int(arr.min()), int(arr.max())))
    return arr.astype(np.int64)


def check_matrix(name: str, value: Any, *, shape: Sequence[int | None] | None = None) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64) if not hasattr(value, "detach") else value.detach().cpu().double().numpy()
    if arr.ndim != 2:
        _fail(name, "a 2-D matrix", f"array of shape {arr.shape}")
    if shape is not None:
        for axis, want in enumerate(shape):
            if want is not None and arr.shape[axis] != want:
                _fail(name, f"a matrix with {want} {'rows' if axis == 0 else 'columns'}", f"shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        _fail(name, "finite (no NaN or inf entries)", "non-finite entries")
    return arr
