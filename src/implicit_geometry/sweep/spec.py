"""Sweep specifications: a grid over an experiment's config fields, fixed overrides and seeds, expanded into
points, each point a validated config whose id is a hash of that config (so a rerun finds its finished points).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from implicit_geometry._validation import InvalidParameterError, check_int
from implicit_geometry.sweep.contract import Sweepable, load_sweepable

LIST_SEPARATOR = ":"


@dataclass
class SweepSpec:
    """What to sweep: ``grid`` (field -> values, their Cartesian product), ``fixed`` (field -> value) and seeds.

    >>> spec = SweepSpec("seli", grid={"lr": [0.5, 1.0], "dim": [4, 8]}, fixed={"steps": 10}, seeds=3)
    >>> [p.params for p in spec.points()][:2]
    [{'lr': 0.5, 'dim': 4}, {'lr': 0.5, 'dim': 8}]
    >>> spec.points()[0].config["seeds"], spec.points()[0].config["steps"]
    (3, 10)
    """

    experiment: str
    grid: dict[str, list[Any]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    seeds: int = 1
    first_seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "grid": self.grid, "fixed": self.fixed, "seeds": self.seeds, "first_seed": self.first_seed}

    @classmethod
    def from_yaml(cls, path: Path | str) -> SweepSpec:
        """A YAML file with keys ``experiment``, ``grid`` (field: [values]), ``set`` (field: value), ``seeds``, ``first_seed``."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise InvalidParameterError(f"sweep file must be an existing YAML file (got {str(path)!r})")
        with open(path) as fh:
            d = yaml.safe_load(fh) or {}
        if not isinstance(d, dict):
            raise InvalidParameterError(f"sweep file must hold a mapping (got {type(d).__name__})")
        unknown = set(d) - {"experiment", "grid", "set", "seeds", "first_seed"}
        if unknown:
            raise InvalidParameterError(f"sweep file keys must be among experiment, grid, set, seeds, first_seed (got {sorted(unknown)})")
        grid = d.get("grid") or {}
        if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
            raise InvalidParameterError(f"sweep file grid must map fields to lists of values (got {grid!r})")
        return cls(
            experiment=str(d.get("experiment", "")), grid={str(k): list(v) for k, v in grid.items()},
            fixed=dict(d.get("set") or {}), seeds=d.get("seeds", 1), first_seed=d.get("first_seed", 0),
        )

    def normalized(self) -> SweepSpec:
        """The same spec with command-line strings turned into the config fields' types.

        >>> SweepSpec("seli", grid={"lr": ["0.5", "1"]}).normalized().grid
        {'lr': [0.5, 1.0]}
        """
        hints = field_types(load_sweepable(self.experiment).config)
        conv = lambda k, v: parse_value(k, v, hints[k]) if k in hints else v  # noqa: E731
        return SweepSpec(self.experiment, grid={k: [conv(k, v) for v in vals] for k, vals in self.grid.items()},
                         fixed={k: conv(k, v) for k, v in self.fixed.items()}, seeds=self.seeds, first_seed=self.first_seed)

    def points(self) -> list[Point]:
        """Expand and validate; raises :class:`InvalidParameterError` on an unknown field or a bad value."""
        sweep = load_sweepable(self.experiment)
        seeds = check_int("seeds", self.seeds, minimum=1)
        first_seed = check_int("first_seed", self.first_seed, minimum=0)
        hints = field_types(sweep.config)
        for key in list(self.grid) + list(self.fixed):
            if key not in hints:
                raise InvalidParameterError(f"sweep keys must be config fields of {self.experiment} ({', '.join(hints)}) (got {key!r})")
            if key in (sweep.seeds_field, sweep.first_seed_field):
                raise InvalidParameterError(f"sweep keys must not be the seed fields (got {key!r}: use --seeds/--first-seed)")
        grid = {k: [parse_value(k, v, hints[k]) for v in vals] for k, vals in self.grid.items()}
        fixed = {k: parse_value(k, v, hints[k]) for k, v in self.fixed.items()}
        for k, vals in grid.items():
            if not vals:
                raise InvalidParameterError(f"grid {k} must have at least one value (got none)")
        out = []
        seed_blocks: list[dict[str, int]]
        if sweep.seeds_field is not None:
            seed_blocks = [{sweep.seeds_field: seeds, **({sweep.first_seed_field: first_seed} if sweep.first_seed_field else {})}]
        elif sweep.first_seed_field is not None:
            seed_blocks = [{sweep.first_seed_field: s} for s in range(first_seed, first_seed + seeds)]
        else:
            seed_blocks = [{}]
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            params = dict(zip(keys, combo))
            for block in seed_blocks:
                raw = {**fixed, **params, **block}
                config = sweep.config.from_dict(raw).to_dict()
                out.append(Point(id=point_id(self.experiment, config), params=params, config=config))
        ids = [p.id for p in out]
        if len(set(ids)) != len(ids):
            raise InvalidParameterError("grid values must be distinct (got repeated values that give identical configs)")
        return out


@dataclass(frozen=True)
class Point:
    """One run of the sweep: ``params`` are the swept values, ``config`` the full validated config."""

    id: str
    params: dict[str, Any]
    config: dict[str, Any]


def point_id(experiment: str, config: dict[str, Any]) -> str:
    """A short stable hash of the experiment and its config.

    >>> point_id("seli", {"lr": 1.0}) == point_id("seli", {"lr": 1.0}) != point_id("seli", {"lr": 2.0})
    True
    """
    blob = json.dumps({"experiment": experiment, "config": config}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def field_types(config_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints.get(f.name, Any) for f in fields(config_cls)}


def parse_value(name: str, value: Any, kind: Any) -> Any:
    """Turn a command-line string into the field's type (lists are separated by ``:``); other values pass through.

    >>> parse_value("lr", "1e-3", float), parse_value("counts", "20:20:2", list[int]), parse_value("x", "ngd", str)
    (0.001, [20, 20, 2], 'ngd')
    """
    if not isinstance(value, str):
        return value
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            low = value.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return low in ("true", "1", "yes")
        if kind is int:
            f = float(value)
            return int(f) if f.is_integer() else f
        if kind is float:
            return float(value)
        if origin in (list, tuple):
            (inner,) = typing.get_args(kind) or (str,)
            # ":" inside a grid value (whose values are split on ","); "," too in a single --set value
            return [parse_value(name, part, inner) for part in value.replace(",", LIST_SEPARATOR).split(LIST_SEPARATOR) if part != ""]
    except ValueError:
        raise InvalidParameterError(f"{name} must be a value of type {getattr(kind, '__name__', kind)} (got {value!r})") from None
    if kind is str or kind is Any:
        return value
    import yaml

    return yaml.safe_load(value)


def parse_assignments(items: tuple[str, ...] | list[str], option: str) -> dict[str, list[str]]:
    """``key=v1,v2`` items -> {key: [v1, v2]}.

    >>> parse_assignments(["lr=0.5,1", "dim=4"], "--grid")
    {'lr': ['0.5', '1'], 'dim': ['4']}
    """
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip():
            raise InvalidParameterError(f"{option} must be KEY=V1,V2,... (got {item!r})")
        out[key.strip()] = [v.strip() for v in values.split(",") if v.strip() != ""]
    return out
