"""``igeom sweep EXPERIMENT --grid key=v1,v2 ... --seeds N`` (or ``--file sweep.yaml``)."""

from __future__ import annotations

import click


@click.command("sweep")
@click.argument("experiment", required=False)
@click.option("--grid", "grid", multiple=True, help="KEY=V1,V2,... over a config field (lists as a:b:c); repeat for a product.")
@click.option("--set", "fixed", multiple=True, help="KEY=VALUE: a config field fixed for every point (lists as a,b,c or a:b:c).")
@click.option("--file", "spec_file", type=click.Path(), default=None, help="YAML sweep file (experiment, grid, set, seeds, first_seed); options add to it.")
@click.option("--seeds", type=int, default=None, help="Seeds per point (batched into one simulation where the experiment allows) [default 1].")
@click.option("--first-seed", type=int, default=None, help="Seeds are first-seed .. first-seed+seeds-1 [default 0].")
@click.option("--executor", type=str, default="local", show_default=True, help="local (processes, one torch thread each), serial, or dask.")
@click.option("--jobs", type=int, default=None, help="Worker processes (local, local Dask cluster) [default: CPU cores].")
@click.option("--scheduler", type=str, default=None, help="Dask scheduler address (tcp://host:8786); without it a local Dask cluster.")
@click.option("--batch", type=int, default=32, show_default=True, help="At most this many points of equal shape run as one simulation, where the experiment allows it (seli); 1: each point alone.")
@click.option("--out", type=click.Path(), default=None, help="Sweep folder (default runs/sweep-<experiment>-<hash of the spec>, so a rerun continues).")
@click.option("--figures", is_flag=True, help="Let every point write its matplotlib figures (slow; off by default).")
@click.option("--report", "make_report", is_flag=True, help="Also write report.html into the sweep folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(experiment, grid, fixed, spec_file, seeds, first_seed, executor, jobs, scheduler, batch, out, figures, make_report, as_json, quiet) -> None:
    """Run EXPERIMENT over a grid of config values; rerun the same command to continue an interrupted sweep."""
    from implicit_geometry._validation import InvalidParameterError
    from implicit_geometry.io import dumps_json
    from implicit_geometry.sweep.contract import sweepable_experiments
    from implicit_geometry.sweep.runner import run_sweep
    from implicit_geometry.sweep.spec import SweepSpec, parse_assignments, parse_settings

    spec = SweepSpec.from_yaml(spec_file) if spec_file else SweepSpec(experiment or "")
    if experiment:
        if spec_file and spec.experiment and spec.experiment != experiment:
            raise InvalidParameterError(f"experiment must match the sweep file's {spec.experiment!r} (got {experiment!r})")
        spec.experiment = experiment
    if not spec.experiment:
        if spec_file:
            raise InvalidParameterError(f"sweep file {spec_file} names no experiment: add experiment: NAME to it or give EXPERIMENT "
                                        f"(one of {', '.join(sweepable_experiments())})")
        raise click.UsageError("give EXPERIMENT or --file")
    # Each key once: a key in --grid twice, or in both --grid and --set (here or in the file), would lose a value.
    grid_cli = parse_assignments(grid, "--grid")
    fixed_cli = parse_settings(fixed, "--set")
    sources = [("--grid", grid_cli), ("--set", fixed_cli)]
    if spec_file:
        sources += [("the sweep file's grid", spec.grid), ("the sweep file's set", spec.fixed)]
    for i, (name_a, keys_a) in enumerate(sources):
        for name_b, keys_b in sources[i + 1:]:
            both = [k for k in keys_a if k in keys_b]
            if both:
                raise InvalidParameterError(f"sweep keys must be given once, in --grid or --set or the sweep file (got {', '.join(both)} in both {name_a} and {name_b})")
    spec.grid.update(grid_cli)
    spec.fixed.update(fixed_cli)
    if seeds is not None:
        spec.seeds = seeds
    if first_seed is not None:
        spec.first_seed = first_seed
    result = run_sweep(spec, out, executor=executor, jobs=jobs, scheduler=scheduler, progress=not quiet, figures=figures, batch=batch)
    report = None
    if make_report:
        from implicit_geometry.report.html import write_report

        report = write_report(result.folder)
    if as_json:
        click.echo(dumps_json({**result.to_dict(), "report": report}))
        return
    click.echo(f"sweep folder: {result.folder}  ({result.done} of {result.total} points done, {result.failed} failed)")
    click.echo(f"table: {result.table}")
    for pid, error in list(result.errors.items())[:10]:
        click.echo(f"failed {pid}: {error}")
    if report:
        click.echo(f"report: {report}")
