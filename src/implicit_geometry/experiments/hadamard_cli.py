"""``igeom run hadamard``."""

from __future__ import annotations

import click

from implicit_geometry.experiments.cli_common import common_run_options, emit_summary


@click.command("hadamard")
@click.option("--classes", type=int, default=16, show_default=True, help="K, a power of two (2, 4, 8, 16, ...).")
@click.option("--depths", default="1,2,3", show_default=True, help="Depths L for trajectories and repulsion (L+1 factors), e.g. 1..3 or 1,3.")
@click.option("--rank-depths", default="1,2,3,4,5,6,7,8,9,10", show_default=True, help="Depths for effective rank vs depth (values or ranges, e.g. 1..10).")
@click.option("--basin-depths", default="1,2,3,4,5", show_default=True, help="Depths for the basin of attraction.")
@click.option("--basin-classes", default="4,8,16,32", show_default=True, help="Numbers of classes K for the basin.")
@click.option("--analyses", default="exactness,trajectories,rank,basin,repulsion", show_default=True, help="Which analyses to run.")
@click.option("--ics", type=int, default=200, show_default=True, help="Random initial conditions per setting and seed.")
@click.option("--horizon", type=float, default=1e4, show_default=True, help="Gradient-flow time t to integrate to (up to 1e12).")
@click.option("--points", type=int, default=150, show_default=True, help="Points of the log-time grid.")
@click.option("--init-norm", type=float, default=1.0, show_default=True, help="L1 norm of the random initial spectra.")
@click.option("--low", type=float, default=0.0, show_default=True, help="Random spectra: uniform in [low, high] before rescaling.")
@click.option("--high", type=float, default=1.0, show_default=True)
@click.option("--zero-modes", type=int, default=0, show_default=True, help="Informative modes set to exactly 0 (start on a face).")
@click.option("--init", "init_values", default=None, help="Explicit spectrum a_0,...,a_{K-1} for trajectories/repulsion, e.g. 0,1,0.5,0.")
@click.option("--samples-per-class", type=int, default=1, show_default=True, help="n: H has n identical columns per class.")
@click.option("--reduction", type=str, default="sum", show_default=True, help="CE summed (sum) or averaged (mean) over samples.")
@click.option("--runaway-level", type=float, default=1.0, show_default=True, help="A mode has run away once a_i reaches this.")
@click.option("--rtol", type=float, default=1e-8, show_default=True, help="Relative tolerance of the ODE solver.")
@click.option("--exact-lr", type=float, default=1e-2, show_default=True, help="exactness: learning rate of the full GD.")
@click.option("--exact-t", type=float, default=5.0, show_default=True, help="exactness: time t = steps * lr to simulate to.")
@click.option("--no-figures", is_flag=True, help="Skip the figures (faster; summary and files only).")
@common_run_options
def command(classes, depths, rank_depths, basin_depths, basin_classes, analyses, ics, horizon, points, init_norm, low, high,
            zero_modes, init_values, samples_per_class, reduction, runaway_level, rtol, exact_lr, exact_t, no_figures, seeds, first_seed, device, out,
            resume, as_json, quiet) -> None:
    """Exact reduced dynamics of Hadamard-initialized (deep) UFMs: trajectories, rank vs depth, basin, repulsion."""
    from implicit_geometry.experiments.hadamard import HadamardConfig, run_hadamard

    if resume is not None:
        emit_summary(run_hadamard(resume=resume, progress=not quiet), as_json)
        return
    config = HadamardConfig(
        classes=classes, depths=depths, rank_depths=rank_depths, basin_depths=basin_depths, basin_classes=basin_classes,
        analyses=analyses, ics=ics, horizon=horizon, points=points, init_norm=init_norm, low=low, high=high,
        zero_modes=zero_modes, init=init_values, samples_per_class=samples_per_class, reduction=reduction,
        runaway_level=runaway_level, rtol=rtol, exact_lr=exact_lr, exact_t=exact_t, figures=not no_figures, seeds=seeds, first_seed=first_seed, device=device,
    )
    emit_summary(run_hadamard(config, out, progress=not quiet), as_json)
