"""``igeom run head-depth``."""

from __future__ import annotations

import click

from implicit_geometry.experiments.cli_common import common_run_options, emit_summary


@click.command("head-depth")
@click.option("--dataset", default="digits", show_default=True, help="digits, mnist1d, fashion-mnist, idx:FOLDER or cifar10:FOLDER.")
@click.option("--depths", default="1,2,3,4,5,6", show_default=True, help="ReLU head depths L, e.g. 1..6 or 1,3,5.")
@click.option("--widths", default="128", show_default=True, help="Comma-separated head widths d.")
@click.option("--per-class", type=int, default=0, show_default=True, help="Rows per class (0: all).")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=0.05, show_default=True)
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@common_run_options
def command(dataset, depths, widths, per_class, epochs, batch_size, lr, weight_decay, seeds, first_seed, device, out, resume, as_json, quiet) -> None:
    """Train the same MLP with ReLU heads of several depths (and widths); effective rank of the mean logits."""
    from implicit_geometry._validation import InvalidParameterError, parse_int_list
    from implicit_geometry.experiments.head_depth import HeadDepthConfig, run_head_depth

    if resume is not None:
        emit_summary(run_head_depth(resume=resume, progress=not quiet), as_json)
        return
    if seeds != 1:
        raise InvalidParameterError(f"seeds must be 1 for head-depth (one network per depth and width; got {seeds}); use --first-seed")

    config = HeadDepthConfig(depths=parse_int_list("depths", depths), widths=parse_int_list("widths", widths), network={
        "dataset": dataset, "per_class": per_class, "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "first_seed": first_seed, "device": device, "permutations": 0})
    emit_summary(run_head_depth(config, out, progress=not quiet), as_json)
