"""The tidy table of a sweep: one row per (point, seed), config columns then scalar results.

Built from the point folders alone, so an interrupted-and-resumed sweep gives the same table as an uninterrupted
one; wall times (the experiment's ``volatile`` keys) stay out of it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from implicit_geometry._validation import InvalidParameterError
from implicit_geometry.io import read_json, write_csv
from implicit_geometry.sweep.contract import load_sweepable
from implicit_geometry.sweep.spec import LIST_SEPARATOR, Point, SweepSpec


def _cell(value: Any) -> Any:
    """Lists become ``a:b:c`` strings so every cell is a scalar."""
    if isinstance(value, (list, tuple)):
        return LIST_SEPARATOR.join(str(v) for v in value)
    return value


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _nested_scalars(value: Any, seed: Any, seeds: Sequence[Any]) -> dict[str, Any]:
    """The scalars of a nested summary value that belong in a row of ``seed``: a dict of scalars
    (``loss_parameters``), a list of one record (imbalance's ``points`` at one R), or a list of one record per seed
    (depth's ``runs`` for one (d, L) cell). Other shapes (tables over several settings) stay in the point folder.

    >>> _nested_scalars([{"seed": 0, "rank": 2.0}, {"seed": 1, "rank": 3.0}], 1, [0, 1])
    {'seed': 1, 'rank': 3.0}
    >>> _nested_scalars({"gamma": 0.3, "grid": [1, 2]}, 0, [0])
    {'gamma': 0.3}
    """
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if _is_scalar(v)}
    if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        if len(value) == 1:
            return {k: v for k, v in value[0].items() if _is_scalar(v)}
        if [r.get("seed") for r in value] == list(seeds) and seed is not None:
            return {k: v for k, v in value[list(seeds).index(seed)].items() if _is_scalar(v)}
    return {}


def _read_object(path: Path) -> dict[str, Any]:
    """A point's summary.json or error.json: a JSON object (a hand-edited file is named in one line)."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise InvalidParameterError(f"{path} must hold a JSON object written by igeom (got {type(value).__name__}); delete the point folder to rerun it")
    return value


def point_rows(point: Point, folder: Path, spec: SweepSpec) -> list[dict[str, Any]]:
    """The rows of one point (one per seed)."""
    from implicit_geometry.sweep.runner import point_status

    sweep = load_sweepable(spec.experiment)
    status = point_status(folder)
    status = "pending" if status == "partial" else status
    cfg = point.config
    seed_keys = {sweep.seeds_field, sweep.first_seed_field} - {None}
    config_cols = {k: _cell(cfg[k]) for k in list(point.params) + [k for k in cfg if k not in point.params] if k not in seed_keys}
    if sweep.seeds_field is not None:
        first = cfg.get(sweep.first_seed_field, 0) if sweep.first_seed_field else 0
        seeds = list(range(first, first + int(cfg[sweep.seeds_field])))
    elif sweep.first_seed_field is not None:
        seeds = [cfg[sweep.first_seed_field]]
    else:
        seeds = [None]
    summary: dict[str, Any] = _read_object(folder / "summary.json") if status == "done" else {}
    error = _read_object(folder / "error.json").get("error", "") if status == "failed" else None
    per_seed = summary.get("per_seed") if isinstance(summary.get("per_seed"), dict) else {}
    skip = set(sweep.volatile) | {"verdict", "experiment", "per_seed"} | set(config_cols) | seed_keys
    rows = []
    for i, seed in enumerate(seeds):
        row: dict[str, Any] = {"point": point.id, "status": status, **config_cols, "seed": seed}
        for key, value in summary.items():
            if key in skip:
                continue
            vals = per_seed.get(key)
            if isinstance(vals, list) and len(vals) == len(seeds) and _is_scalar(vals[i]):
                row[key] = vals[i]
            elif _is_scalar(value):
                row[key] = value
        for key, vals in per_seed.items():  # per-seed results without a mean in the summary
            if key not in row and key not in skip and isinstance(vals, list) and len(vals) == len(seeds) and _is_scalar(vals[i]):
                row[key] = vals[i]
        for key, value in summary.items():  # nested results, flattened as key.field
            if key in skip:
                continue
            for field, v in _nested_scalars(value, seed, seeds).items():
                if field not in set(sweep.volatile) | {"seed"} and f"{key}.{field}" not in row:
                    row[f"{key}.{field}"] = v
        row["error"] = error
        rows.append(row)
    return rows


def sweep_rows(folder: Path, spec: SweepSpec, points: Sequence[Point]) -> list[dict[str, Any]]:
    rows = [r for p in points for r in point_rows(p, folder / "points" / p.id, spec)]
    columns: dict[str, None] = {}
    for r in rows:
        columns.update(dict.fromkeys(r))
    if "error" in columns:  # last, where a reader looks for it
        columns.pop("error")
        columns["error"] = None
    return [{c: r.get(c) for c in columns} for r in rows]


def write_table(folder: Path, spec: SweepSpec, points: Sequence[Point]) -> Path:
    """Write ``table.csv`` (and ``table.parquet`` when pyarrow is installed); returns the CSV path."""
    rows = sweep_rows(folder, spec, points)
    path = folder / "table.csv"
    write_csv(path, rows)
    _write_parquet(folder / "table.parquet", rows)
    return path


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return
    import io as _io

    from implicit_geometry.io import _atomic_write_bytes, to_jsonable

    try:
        table = pa.Table.from_pylist([to_jsonable(r) for r in rows])
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Mixed types in a column (a result that is a number for one point and text for another): as text.
        table = pa.Table.from_pylist([{k: (None if v is None else str(v)) for k, v in to_jsonable(r).items()} for r in rows])
    buf = _io.BytesIO()
    pq.write_table(table, buf)
    _atomic_write_bytes(path, buf.getvalue())


def read_table(folder: Path | str) -> list[dict[str, Any]]:
    """The sweep table with numbers parsed (empty cells are None)."""
    from implicit_geometry.io import read_csv

    def parse(v: str) -> Any:
        if v == "":
            return None
        try:
            f = float(v)
        except ValueError:
            return {"True": True, "False": False}.get(v, v)
        if not math.isfinite(f):  # the table never holds non-finite numbers: this is text such as "inf" or "1e999"
            return v
        return int(v) if re.fullmatch(r"[+-]?\d+", v) else f

    text_columns = {"point", "status", "error"}  # point ids are hex digests: "123456789012" or "12e456789012" stay text
    return [{k: ((v or None) if k in text_columns else parse(v)) for k, v in r.items()} for r in read_csv(Path(folder) / "table.csv")]
