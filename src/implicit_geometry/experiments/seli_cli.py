"""``igeom run seli``."""

from __future__ import annotations

import math

import click

from implicit_geometry._validation import InvalidParameterError
from implicit_geometry.experiments.cli_common import common_run_options, emit_summary


@click.command("seli")
@click.option("--counts", default=None, help="Comma-separated class counts, e.g. 20,20,20,2,2,2,2,2,2,2 (the default).")
@click.option("--classes", type=int, default=None, help="Step imbalance: number of classes K (with --ratio, --minority-fraction, --n-min).")
@click.option("--ratio", type=float, default=10.0, show_default=True, help="Step imbalance: majority/minority ratio R.")
@click.option("--minority-fraction", type=float, default=0.5, show_default=True, help="Step imbalance: fraction rho of minority classes (majorities come first).")
@click.option("--n-min", type=int, default=2, show_default=True, help="Step imbalance: samples per minority class.")
@click.option("--dim", type=int, default=20, show_default=True, help="Feature dimension d (SELI is exact for d >= k-1).")
@click.option("--depth", type=int, default=1, show_default=True, help="Number of weight matrices L (L+1 factors; 1 = plain UFM).")
@click.option("--steps", type=int, default=20000, show_default=True)
@click.option("--optimizer", type=str, default="ngd", show_default=True, help="ngd (normalized, scale-free) or gd (plain).")
@click.option("--lr", type=float, default=0.02, show_default=True, help="ngd: relative step length; gd: learning rate.")
@click.option("--norm-ref", type=float, default=40.0, show_default=True, help="ngd: relative step lr*min(1,(norm_ref/||theta||)^(L+1)); inf = plain NGD.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True, help="Ridge on every factor (needs --optimizer gd).")
@click.option("--init-std", type=float, default=0.1, show_default=True)
@click.option("--reduction", type=str, default="sum", show_default=True, help="CE summed (sum) or averaged (mean) over samples.")
@click.option("--records", type=int, default=120, show_default=True, help="History points (log-spaced steps).")
@common_run_options
def command(counts, classes, ratio, minority_fraction, n_min, dim, depth, steps, optimizer, lr, norm_ref,
            weight_decay, init_std, reduction, records, seeds, first_seed, device, out, resume, as_json, quiet) -> None:
    """Train the UFM on cross-entropy and compare its geometry with the SELI prediction."""
    from implicit_geometry.experiments.seli import SeliConfig, run_seli
    from implicit_geometry.geometry.targets import step_imbalance_counts

    if resume is not None:
        summary = run_seli(resume=resume, progress=not quiet)
        emit_summary(summary, as_json)
        return
    if counts is not None and classes is not None:
        raise InvalidParameterError("counts must be given either as --counts or as --classes/--ratio/--minority-fraction/--n-min, not both (got both)")
    if classes is not None:
        counts_list = step_imbalance_counts(classes, ratio, minority_fraction, n_min).tolist()
    elif counts is not None:
        from implicit_geometry._validation import check_counts

        counts_list = check_counts(counts).tolist()
    else:
        counts_list = SeliConfig().counts
    config = SeliConfig(
        counts=counts_list, dim=dim, depth=depth, steps=steps, optimizer=optimizer, lr=lr,
        norm_ref=math.inf if norm_ref == math.inf else norm_ref, weight_decay=weight_decay, init_std=init_std,
        seeds=seeds, first_seed=first_seed, reduction=reduction, records=records, device=device,
    )
    summary = run_seli(config, out, progress=not quiet)
    emit_summary(summary, as_json)
