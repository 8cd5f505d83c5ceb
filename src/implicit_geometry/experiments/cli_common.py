"""Options and output shared by every ``igeom run`` command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def common_run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--seeds --first-seed --device --out --resume --json --quiet``."""
    options = [
        click.option("--seeds", type=int, default=1, show_default=True, help="Number of independent runs (batched)."),
        click.option("--first-seed", type=int, default=0, show_default=True, help="Seeds are first-seed .. first-seed+seeds-1."),
        click.option("--device", type=str, default="auto", show_default=True, help="auto (CUDA when present), cpu or cuda."),
        click.option("--out", type=click.Path(), default=None, help="Run folder to create (default runs/<experiment>-<time>)."),
        click.option("--resume", type=click.Path(), default=None, help="Continue an interrupted run folder (other options are ignored)."),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def emit_summary(summary: dict[str, Any], as_json: bool) -> None:
    from implicit_geometry.io import dumps_json

    if as_json:
        click.echo(dumps_json(summary))
        return
    if summary.get("already_finished"):
        click.echo("this run had already finished: nothing to resume (its summary follows)", err=True)
    folder = summary.get("folder")
    if folder:
        figures = Path(folder) / "figures"
        click.echo(f"run folder: {folder}" + (f"  (figures in {figures})" if figures.is_dir() else ""))
    for line in summary.get("verdict", []):
        click.echo(line)
