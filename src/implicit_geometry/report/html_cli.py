"""``igeom report FOLDER``: one self-contained HTML page for a run folder or a sweep folder."""

from __future__ import annotations

import click


@click.command("report")
@click.argument("folder", type=click.Path())
@click.option("--out", type=click.Path(), default=None, help="HTML file to write (default FOLDER/report.html).")
def command(folder: str, out: str | None) -> None:
    """Write FOLDER/report.html: config, predicted vs learned Grams, metric curves, sweep plots, tables (works offline)."""
    from implicit_geometry.report.html import write_report

    click.echo(str(write_report(folder, out)))
