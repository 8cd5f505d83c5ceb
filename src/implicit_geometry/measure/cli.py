"""``igeom measure``: every geometry metric of a user's saved model on a data set, per layer."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("measure")
@click.option("--model", "model_path", required=True, type=click.Path(), help="TorchScript file, or a file from implicit_geometry.models.save_model.")
@click.option("--data", "dataset", required=True, help="digits, mnist1d, fashion-mnist, idx:FOLDER or cifar10:FOLDER.")
@click.option("--split", default="train", show_default=True, help="train or test (IDX and CIFAR-10 folders).")
@click.option("--layers", default="penultimate,logits", show_default=True,
              help="Comma-separated module names (or penultimate, logits). TorchScript: logits, or penultimate if it returns (features, logits).")
@click.option("--batch-size", type=int, default=512, show_default=True)
@click.option("--max-rows", type=int, default=0, show_default=True, help="Measure only the first rows (0: all).")
@click.option("--permutations", type=int, default=20, show_default=True, help="Permutations for the alignment nulls (0: none).")
@click.option("--sample-rows", type=int, default=1000, show_default=True, help="Rows kept for debiased CKA / mutual k-NN.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--out", type=click.Path(), default=None, help="Also write the result as JSON to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(model_path, dataset, split, layers, batch_size, max_rows, permutations, sample_rows, device, out, as_json) -> None:
    """Stream a data set through a saved model once and print NC1-NC4, CDNV, ETF/SELI distances, ranks and
    layer-to-layer alignment (with permutation nulls)."""
    import numpy as np

    from implicit_geometry._validation import InvalidParameterError, check_int
    from implicit_geometry.experiments.base import resolve_device
    from implicit_geometry.io import dumps_json, write_json
    from implicit_geometry.measure.api import measure
    from implicit_geometry.measure.data import load
    from implicit_geometry.models.networks import load_model

    dev = resolve_device(device)
    check_int("max_rows", max_rows, minimum=0)
    check_int("sample_rows", sample_rows, minimum=1)
    data = load(dataset, split=split)
    if max_rows:
        K = data.num_classes
        data = data.subset(list(range(min(max_rows, data.x.shape[0]))))
        data.classes = K  # the model's classes, even where the first rows miss some
        seen = int((data.counts() > 0).sum())
        if seen < K:
            raise InvalidParameterError(f"max_rows must keep every class: the first {max_rows} rows hold {seen} of the "
                                        f"{K} classes (got {max_rows}; 0 measures all rows)")
    net = load_model(model_path).to(dev)
    names = [s.strip() for s in layers.split(",") if s.strip()]
    if not names:
        raise InvalidParameterError(f"layers must name at least one layer (got {layers!r})")
    result = measure(net, data.loader(batch_size), data.num_classes, names, device=dev, permutations=permutations, sample_rows=sample_rows)
    report = {"model": str(model_path), "data": data.name, "rows": int(data.x.shape[0]), "counts": result["counts"],
              "layers": result["layers"], "alignment": result["alignment"], "logit_geometry": result["logit_geometry"]}
    if out:
        write_json(Path(out), report)
    if as_json:
        click.echo(dumps_json(report))
        return
    click.echo(f"{data.name}: {report['rows']} rows, {data.num_classes} classes")
    for name, m in result["layers"].items():
        keys = [k for k in ("accuracy", "nc1", "cdnv", "nc3", "nc4", "seli_dist_means", "seli_dist_W", "seli_dist_logits", "effective_rank_mean_logits") if k in m]
        click.echo(f"  {name}: " + ", ".join(f"{k} {m[k]:.4g}" for k in keys))
    g = result["logit_geometry"]
    if g is not None:
        line = (f"  mean logits: numerical rank {g['numerical_rank']} (of {data.num_classes - 1} for the ETF), effective rank "
                f"{g['effective_rank']:.3g}, ETF distance {g['etf_distance']:.3g}")
        if g["code_distance"] is not None:
            line += (f", distance to the rank-{g['code_rank']} softmax code {g['code_distance']:.3g} "
                     f"(value ratio {g['code_value_ratio']:.3g}; 1 = an optimal code)")
        if g["adjacent_angles_deg"] is not None:
            angles = np.asarray(g["adjacent_angles_deg"])
            line += f", adjacent angles {angles.min():.1f}-{angles.max():.1f} deg (regular: {360 / data.num_classes:.1f})"
        click.echo(line)
    for pair, a in result["alignment"].items():
        parts = [f"{k} {a[k]:.3f} (chance {a[k + '_null_mean']:.3f})" for k in ("linear_cka", "debiased_cka", "mutual_knn") if k in a]
        if "linear_cka_all_rows" in a:
            parts.append(f"linear CKA on all rows {a['linear_cka_all_rows']:.3f}")
        click.echo(f"  {pair}: " + ", ".join(parts))
