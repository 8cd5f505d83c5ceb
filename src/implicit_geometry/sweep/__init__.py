"""Sweeps: expand a grid over an experiment's config, run the points resumably on local processes or Dask, and
collect one tidy table (see docs/sweeps.md).

>>> from implicit_geometry.sweep import SweepSpec
>>> len(SweepSpec("seli", grid={"lr": [0.5, 1.0], "depth": [1, 2]}).points())
4
"""

from implicit_geometry.sweep.contract import Sweepable, load_sweepable
from implicit_geometry.sweep.runner import EXECUTORS, SweepInterrupted, SweepResult, load_sweep, run_sweep
from implicit_geometry.sweep.spec import Point, SweepSpec
from implicit_geometry.sweep.table import read_table

__all__ = ["EXECUTORS", "Point", "SweepInterrupted", "SweepResult", "SweepSpec", "Sweepable", "load_sweep", "load_sweepable", "read_table", "run_sweep"]
