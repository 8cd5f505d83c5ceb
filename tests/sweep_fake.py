"""A tiny experiment without seed batching, for the sweep and report tests (imported by name in-process)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from implicit_geometry._validation import InvalidParameterError, check_float
from implicit_geometry.io import write_csv, write_json
from implicit_geometry.sweep.contract import Sweepable

CALLS: list[float] = []


@dataclass
class FakeConfig:
    x: float = 1.0
    label: str = "plain"
    first_seed: int = 0

    def validate(self) -> FakeConfig:
        self.x = check_float("x", self.x)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FakeConfig:
        unknown = set(d) - {"x", "label", "first_seed"}
        if unknown:
            raise InvalidParameterError(f"config keys must be among x, label, first_seed (got unknown {sorted(unknown)})")
        return cls(**d).validate()


def run_fake(config: FakeConfig, out: Path, *, resume: Any = None, progress: bool = True) -> dict[str, Any]:
    CALLS.append(config.x)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config.to_dict())
    if config.x < 0:
        raise ValueError(f"x must be >= 0 (got {config.x})")
    write_csv(out / "history.csv", [{"step": s, "loss": config.x / (s + 1) + config.first_seed} for s in range(5)])
    summary = {"experiment": "fake", "y": config.x ** 2 + config.first_seed, "seconds": 0.123, "verdict": [f"y is {config.x ** 2}"]}
    write_json(out / "summary.json", summary)
    return summary


SWEEP = Sweepable(config=FakeConfig, run=run_fake, seeds_field=None, first_seed_field="first_seed")
