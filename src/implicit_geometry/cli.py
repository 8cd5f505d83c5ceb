"""The ``igeom`` command line. Errors in what the user typed end in one line on stderr and exit status 2."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

import click

from implicit_geometry._validation import InvalidParameterError


def _load_command(spec: str) -> click.Command:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr or "command")


class RegistryGroup(click.Group):
    """A click group whose subcommands also come from a registry (name -> "module[:attribute]", attribute
    ``command`` by default), imported only when used so that ``igeom --help`` stays fast."""

    def __init__(self, *args: Any, registry: Callable[[], dict[str, str]] = dict, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.registry = registry

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.registry()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        spec = self.registry().get(name)
        return _load_command(spec) if spec else super().get_command(ctx, name)


# Top-level commands contributed by the faces of the toolkit: name -> "module:attribute".
COMMANDS: dict[str, str] = {
    "sweep": "implicit_geometry.sweep.cli:command",
    "report": "implicit_geometry.report.html_cli:command",
    "ntp": "implicit_geometry.ntp.cli:ntp",
    "measure": "implicit_geometry.measure.cli:command",
}

# Subcommands of ``igeom predict``: name -> "module:attribute".
PREDICTIONS: dict[str, str] = {
    "imbalance": "implicit_geometry.experiments.imbalance_cli:predict_command",
    "codes": "implicit_geometry.experiments.depth_cli:predict_codes",
    "efficiency": "implicit_geometry.experiments.depth_cli:predict_efficiency",
}


def _experiments() -> dict[str, str]:
    from implicit_geometry.experiments import EXPERIMENTS

    return EXPERIMENTS


@click.group(cls=RegistryGroup, registry=lambda: COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="implicit-geometry")
def main() -> None:
    """implicit-geometry: predict, simulate and measure the geometry that training gives to representations."""


@main.group(cls=RegistryGroup, registry=_experiments)
def run() -> None:
    """Run an experiment (writes a run folder with config, history, summary, final factors and figures)."""


@main.command()
@click.option("--out", type=click.Path(), default=None, help="Run folder (default runs/demo-<time>).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def demo(out: str | None, quiet: bool) -> None:
    """The default SELI experiment: 3 majority classes of 20 and 7 minorities of 2, d = 20 (about 10 s)."""
    from pathlib import Path

    from implicit_geometry.experiments.base import default_out
    from implicit_geometry.experiments.seli import SeliConfig, run_seli

    folder = Path(out) if out else default_out("demo")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "a file" if not folder.is_dir() else "not empty"
        raise InvalidParameterError(f"--out must be a new or empty folder (got {str(folder)!r}, which is {what}); the demo always starts a new run")
    config = SeliConfig(steps=30000, seeds=4, device="cpu")
    click.echo(f"SELI demo: counts 3x20 + 7x2 (k = 10), d = 20, {config.seeds} seeds, {config.steps} steps of normalized GD", err=True)
    summary = run_seli(config, folder, progress=not quiet)
    click.echo(f"figures: {folder / 'figures'}  (distances.png, grams.png, loss.png); summary: {folder / 'summary.json'}")
    for line in summary["verdict"]:
        click.echo(line)


@main.group(cls=RegistryGroup, registry=lambda: PREDICTIONS)
def predict() -> None:
    """Closed-form predictions from data statistics (no training)."""


@predict.command("seli")
@click.option("--counts", required=True, help="Comma-separated class counts, e.g. 20,20,2,2.")
@click.option("--json", "as_json", is_flag=True, help="Print the prediction as JSON.")
def predict_seli(counts: str, as_json: bool) -> None:
    """The SELI geometry for the given class counts: Grams, norms and angles."""
    from implicit_geometry.geometry.targets import seli_geometry
    from implicit_geometry.io import dumps_json

    g = seli_geometry(counts)
    out = {
        "counts": g.counts,
        "W_gram": g.W_gram,
        "mean_gram": g.mean_gram,
        "class_logits": g.class_logits,
        "classifier_norms": g.classifier_norms,
        "feature_norms": g.feature_norms,
        "classifier_cosines": g.classifier_cosines,
        "feature_cosines": g.feature_cosines,
    }
    if as_json:
        click.echo(dumps_json(out))
        return
    echo_geometry(out)


def echo_geometry(out: dict[str, Any]) -> None:
    """Print a predicted geometry's norms and cosines (NumPy print options changed only inside)."""
    import numpy as np

    with np.printoptions(precision=4, suppress=True, linewidth=140):
        for key in ("classifier_norms", "feature_norms", "classifier_cosines", "feature_cosines"):
            click.echo(f"{key}:\n{np.asarray(out[key])}")


def cli(argv: list[str] | None = None) -> Any:
    """Entry point: click in non-standalone mode so every user error becomes one line and exit status 2."""
    from implicit_geometry.experiments.base import Interrupted

    try:
        return main.main(args=argv, prog_name="igeom", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("igeom: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        where = f" (igeom {exc.ctx.command_path.split(' ', 1)[1]})" if exc.ctx and " " in exc.ctx.command_path else ""
        click.echo(f"igeom: error: {exc.format_message()}{where}; see --help", err=True)
        sys.exit(2)
    except InvalidParameterError as exc:
        from implicit_geometry.experiments.base import discard_unstarted_runs

        discard_unstarted_runs()  # a run that failed before writing anything leaves no folder behind
        click.echo(f"igeom: error: {exc}", err=True)
        sys.exit(2)
    except Interrupted as exc:
        click.echo(f"igeom: {exc}", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)


if __name__ == "__main__":
    cli()
