"""What an experiment exposes so that ``igeom sweep`` can run it (see docs/sweeps.md).

An experiment module defines ``SWEEP = Sweepable(config=MyConfig, run=run_my_experiment)`` where

- ``config`` is a dataclass with ``from_dict(dict) -> config`` (validating) and ``to_dict() -> dict``;
- ``run(config, out, *, resume=None, progress=True) -> summary`` writes a run folder (config.json,
  summary.json with scalar results and a ``verdict`` list, ...) and may raise on bad input or interruption;
- ``seeds_field`` / ``first_seed_field`` name the config fields that batch seeds into one simulation (None when
  the experiment has no seed batching: the sweep then runs one point per seed through ``first_seed_field``);
- ``figures_option`` names a boolean keyword of ``run`` that turns matplotlib figures off (sweeps skip them by
  default: they take most of the time of a short run, and the HTML report draws its own plots);
- ``run_batch(configs, outs, *, progress=True) -> summaries`` (optional) runs configs of equal ``batch_key(config)``
  as one simulation, each into its own folder (``None``: simulate without writing); the sweep groups points by
  ``batch_key`` in spec order into fixed batches, so a point's numbers do not depend on the executor or on
  which points were already finished;
- ``volatile`` lists summary keys that vary between identical runs (wall times) and stay out of the sweep table.

Nothing here imports torch: experiment modules import this cheaply.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from implicit_geometry._validation import InvalidParameterError


@dataclass(frozen=True)
class Sweepable:
    """The sweep contract of one experiment.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     lr: float = 1.0
    >>> Sweepable(config=C, run=lambda c, out, resume=None, progress=True: {}).seeds_field
    'seeds'
    """

    config: type
    run: Callable[..., dict[str, Any]]
    seeds_field: str | None = "seeds"
    first_seed_field: str | None = "first_seed"
    volatile: tuple[str, ...] = ("seconds", "folder")
    figures_option: str | None = None
    run_batch: Callable[..., list[dict[str, Any] | None]] | None = None
    batch_key: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if (self.run_batch is None) != (self.batch_key is None):
            raise ValueError("run_batch and batch_key go together")

    def run_kwargs(self, figures: bool) -> dict[str, Any]:
        return {} if figures or self.figures_option is None else {self.figures_option: False}


def _find_sweepable(module_name: str) -> Sweepable | None:
    """The ``SWEEP`` of a registered experiment's CLI module, or of that module minus ``_cli``; None without one."""
    candidates = [module_name] + ([module_name[: -len("_cli")]] if module_name.endswith("_cli") else [])
    for name in candidates:
        try:
            module: ModuleType = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        sweep = getattr(module, "SWEEP", None)
        if isinstance(sweep, Sweepable):
            return sweep
    return None


def sweepable_experiments() -> list[str]:
    """The registered experiments that ``igeom sweep`` can run (imports each experiment module: for error messages).

    >>> "seli" in sweepable_experiments()
    True
    """
    from implicit_geometry.experiments import EXPERIMENTS

    return sorted(name for name, module in EXPERIMENTS.items() if _find_sweepable(module) is not None)


def load_sweepable(experiment: str) -> Sweepable:
    """The ``SWEEP`` of a registered experiment: looked up in its CLI module, then in that module minus ``_cli``.

    >>> load_sweepable("seli").config.__name__
    'SeliConfig'
    """
    from implicit_geometry.experiments import EXPERIMENTS

    sweep = _find_sweepable(EXPERIMENTS[experiment]) if experiment in EXPERIMENTS else None
    if sweep is not None:
        return sweep
    choices = ", ".join(sweepable_experiments())
    if experiment in EXPERIMENTS:  # a registered experiment without SWEEP: it runs with igeom run only
        raise InvalidParameterError(
            f"experiment must be one that igeom sweep can run: {choices} (got {experiment!r}, which runs only with: igeom run {experiment})"
        )
    raise InvalidParameterError(f"experiment must be one of {choices} (got {experiment!r})")
