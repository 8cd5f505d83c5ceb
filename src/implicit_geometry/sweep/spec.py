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

from implicit_geometry._validation import InvalidParameterError, check_int, one_line
from implicit_geometry.sweep.contract import load_sweepable

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
        """A YAML file with keys ``experiment``, ``grid`` (field: [values]), ``set`` (field: value), ``seeds``, ``first_seed``.

        Every problem with the file is an :class:`InvalidParameterError` naming it: not YAML (with the parser's
        line and column), empty, not a mapping, unknown keys, a key given twice, a field both in grid and set.
        """
        path = Path(path)
        if not path.is_file():
            raise InvalidParameterError(f"sweep file must be an existing YAML file (got {str(path)!r})")
        d = _load_yaml(path)
        if d is None:
            raise InvalidParameterError(f"sweep file {path} is empty: it must be a YAML mapping with keys among {FILE_KEYS} (such as experiment: seli)")
        if not isinstance(d, dict):
            raise InvalidParameterError(f"sweep file {path} must hold a YAML mapping with keys among {FILE_KEYS} (got {_yaml_kind(d)})")
        unknown = set(map(str, d)) - set(FILE_KEYS.split(", "))
        if unknown:
            raise InvalidParameterError(f"sweep file {path} keys must be among {FILE_KEYS} (got {sorted(unknown)})")
        experiment = d.get("experiment")
        if experiment is not None and not isinstance(experiment, str):
            raise InvalidParameterError(f"sweep file {path} experiment must be a name such as seli (got {experiment!r})")
        grid = d.get("grid") or {}
        if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
            raise InvalidParameterError(f"sweep file {path} grid must map fields to lists of values (got {grid!r})")
        fixed = d.get("set") or {}
        if not isinstance(fixed, dict):
            raise InvalidParameterError(f"sweep file {path} set must map fields to values (got {fixed!r})")
        both = sorted(set(map(str, grid)) & set(map(str, fixed)))
        if both:
            raise InvalidParameterError(f"sweep file {path} must give each field in grid or in set, not both (got {', '.join(both)} in both)")
        return cls(
            experiment=experiment or "", grid={str(k): list(v) for k, v in grid.items()},
            fixed={str(k): v for k, v in fixed.items()}, seeds=d.get("seeds", 1), first_seed=d.get("first_seed", 0),
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


def _key_values(items: tuple[str, ...] | list[str], option: str, form: str) -> list[tuple[str, str]]:
    """``key=value`` items -> [(key, value)], each key once (a repeated key would silently lose a value)."""
    pairs: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidParameterError(f"{option} must be {form} (got {item!r})")
        if key in seen:
            raise InvalidParameterError(f"{option} must give each key once, as one {key}={form.split('=', 1)[1]} (got {seen[key]!r} and {item!r})")
        seen[key] = item
        pairs.append((key, value))
    return pairs


def parse_assignments(items: tuple[str, ...] | list[str], option: str) -> dict[str, list[str]]:
    """``key=v1,v2`` items -> {key: [v1, v2]}; a key given twice is an error (one of them would be lost).

    >>> parse_assignments(["lr=0.5,1", "dim=4"], "--grid")
    {'lr': ['0.5', '1'], 'dim': ['4']}
    """
    return {key: [v.strip() for v in values.split(",") if v.strip() != ""]
            for key, values in _key_values(items, option, "KEY=V1,V2,...")}


def parse_settings(items: tuple[str, ...] | list[str], option: str = "--set") -> dict[str, str]:
    """``key=value`` items -> {key: value}, one value each (commas stay: ``counts=20,20,2`` is one list).

    >>> parse_settings(["steps=10", "counts=20,20,2"])
    {'steps': '10', 'counts': '20,20,2'}
    """
    return {key: value.strip() for key, value in _key_values(items, option, "KEY=VALUE")}


FILE_KEYS = "experiment, grid, set, seeds, first_seed"


def _yaml_kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true or false"}.get(type(value), type(value).__name__)


def _load_yaml(path: Path) -> Any:
    """The YAML document of ``path``; a parse error, or a mapping key given twice, is one line naming the file."""
    import yaml

    class Loader(yaml.SafeLoader):  # PyYAML keeps the last of repeated keys silently: refuse them
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *defaults": keys given after it override, as meant
                continue
            key = loader.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key fails in construct_mapping, with its position
            if key in seen:
                mark = key_node.start_mark
                raise InvalidParameterError(
                    f"sweep file {path} must give each key once (got {key!r} again at line {mark.line + 1}, column {mark.column + 1})"
                )
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        with open(path, "rb") as fh:
            return yaml.load(fh, Loader=Loader)  # a SafeLoader, refusing repeated keys
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        reason = " ".join(str(exc.problem or exc.context or "parse error").split())
        raise InvalidParameterError(f"sweep file {path} is not valid YAML: {reason}{where}; it must be a YAML mapping with keys among {FILE_KEYS}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidParameterError(f"sweep file {path} is not valid YAML: {one_line(exc, 160)}; it must be a YAML mapping with keys among {FILE_KEYS}") from None
