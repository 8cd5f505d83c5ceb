"""``igeom run network``."""

from __future__ import annotations

import click

from implicit_geometry.experiments.cli_common import common_run_options, emit_summary


@click.command("network")
@click.option("--dataset", default="fashion-mnist", show_default=True, help="digits, mnist1d, fashion-mnist, idx:FOLDER or cifar10:FOLDER.")
@click.option("--data-dir", default=None, help="Folder with the Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist).")
@click.option("--model", "model_name", default="mlp", show_default=True, help="mlp (ReLU head) or resnet20.")
@click.option("--width", type=int, default=512, show_default=True, help="Head width d (mlp) or base width (resnet20: 16 in He et al.; the Fashion-MNIST runs in docs/measure.md use 32).")
@click.option("--depth", type=int, default=2, show_default=True, help="mlp: number L of ReLU head layers.")
@click.option("--trunk", type=int, default=0, show_default=True, help="mlp: width of one input layer before the head (0: none).")
@click.option("--batch-norm/--no-batch-norm", default=False, show_default=True, help="mlp: BatchNorm1d before every hidden ReLU.")
@click.option("--per-class", type=int, default=100, show_default=True, help="Rows per class of the training subset (0: all).")
@click.option("--imbalance", default="none", show_default=True, help="none, step or exp (majorities first).")
@click.option("--ratio", type=float, default=10.0, show_default=True, help="Imbalance ratio (largest/smallest class).")
@click.option("--minority-fraction", type=float, default=0.5, show_default=True, help="step: fraction of minority classes.")
@click.option("--epochs", type=int, default=80, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=0.05, show_default=True, help="SGD learning rate (see --lr-drops).")
@click.option("--lr-drops", default="0.5,0.75", show_default=True, help="Fractions of the epochs where the learning rate is divided by 10 (empty: none).")
@click.option("--lr-schedule", default="step", show_default=True, help="step (/10 at --lr-drops) or cosine (lr (1 + cos(pi epoch/epochs))/2; --lr-drops unused).")
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--weight-decay-normalized", type=float, default=None,
              help="Weight decay on the weights that feed a batch norm (default: --weight-decay); their decay only raises their effective step.")
@click.option("--measure-every", type=int, default=5, show_default=True, help="Measure the geometry every this many epochs.")
@click.option("--permutations", type=int, default=10, show_default=True, help="Permutations for the alignment nulls at the end.")
@click.option("--cuda-graphs/--no-cuda-graphs", default=False, show_default=True,
              help="On CUDA, replay each mini-batch's training step from a captured graph (same numbers, far fewer kernel launches); ignored on CPU.")
@common_run_options
def command(dataset, data_dir, model_name, width, depth, trunk, batch_norm, per_class, imbalance, ratio, minority_fraction, epochs, batch_size, lr,
            lr_drops, lr_schedule, momentum, weight_decay, weight_decay_normalized, measure_every, permutations, cuda_graphs, seeds, first_seed, device, out, resume,
            as_json, quiet) -> None:
    """Train a real network into the terminal phase and track its geometry against the ETF/SELI predictions."""
    from implicit_geometry.experiments.network import NetworkConfig, run_network

    if resume is not None:
        emit_summary(run_network(resume=resume, progress=not quiet), as_json)
        return
    from implicit_geometry._validation import InvalidParameterError

    try:
        drops = [float(p) for p in lr_drops.split(",") if p.strip()]
    except ValueError:
        raise InvalidParameterError(f"lr-drops must be comma-separated fractions such as 0.5,0.75 (got {lr_drops!r})") from None
    config = NetworkConfig(lr_drops=drops, lr_schedule=lr_schedule,
        dataset=dataset, data_dir=data_dir, model=model_name, width=width, depth=depth, trunk=trunk, batch_norm=batch_norm, per_class=per_class,
        imbalance=imbalance, ratio=ratio, minority_fraction=minority_fraction, epochs=epochs, batch_size=batch_size, lr=lr,
        momentum=momentum, weight_decay=weight_decay, weight_decay_normalized=weight_decay_normalized, measure_every=measure_every, permutations=permutations, cuda_graphs=cuda_graphs, seeds=seeds,
        first_seed=first_seed, device=device,
    )
    emit_summary(run_network(config, out, progress=not quiet), as_json)
