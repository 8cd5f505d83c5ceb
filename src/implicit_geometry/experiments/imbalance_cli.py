"""``igeom run imbalance`` and ``igeom predict imbalance``."""

from __future__ import annotations

import math
from typing import Any

import click

from implicit_geometry._validation import InvalidParameterError, check_float
from implicit_geometry.experiments.cli_common import common_run_options, emit_summary


def _floats(name: str, text: str) -> list[float]:
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise InvalidParameterError(f"{name} must be comma-separated numbers such as 1,2,5,10 (got {text!r})")
    return [check_float(name, p) for p in parts]


def _loss_options(f: Any) -> Any:
    options = [
        click.option("--loss", type=str, default="ce", show_default=True, help="ce, wce, la, cdt, ldt or vs."),
        click.option("--gamma", type=float, default=None, help="Temperature exponent (cdt, ldt, vs): Delta_c = (n_c/n_min)^gamma, mean 1. Default: a published setting."),
        click.option("--tau", type=float, default=None, help="Logit adjustment (la, vs): iota_c = tau log pi_c. Default 1."),
        click.option("--beta", type=float, default=None, help="Weighted CE (wce): omega_c = pi_c^-beta. Default 1."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.command("imbalance")
@click.option("--classes", type=int, default=10, show_default=True, help="Number of classes k.")
@click.option("--ratios", type=str, default="1,2,5,10,20", show_default=True, help="Imbalance ratios R to sweep (comma-separated).")
@click.option("--minority-fractions", type=str, default="0.5", show_default=True, help="Fractions rho of minority classes to sweep (majorities come first).")
@click.option("--n-min", type=int, default=1, show_default=True, help="Samples per minority class.")
@_loss_options
@click.option("--dim", type=int, default=None, help="Feature dimension d (default 4k; the prediction is exact for d >= k, extra width converges faster).")
@click.option("--steps", type=int, default=20000, show_default=True, help="Normalized-GD steps per point.")
@click.option("--lr", type=float, default=1.0, show_default=True)
@click.option("--norm-ref", type=float, default=100.0, show_default=True, help="ngd step cap (see igeom run seli --help).")
@click.option("--init-std", type=float, default=0.1, show_default=True)
@click.option("--reduction", type=str, default="sum", show_default=True, help="CE summed (sum) or averaged (mean) over samples.")
@click.option("--records", type=int, default=40, show_default=True, help="History points per sweep point (log-spaced steps).")
@common_run_options
def command(classes, ratios, minority_fractions, n_min, loss, gamma, tau, beta, dim, steps, lr, norm_ref, init_std,
            reduction, records, seeds, first_seed, device, out, resume, as_json, quiet) -> None:
    """Sweep R (and rho) for one CE parameterization: train the UFM at each point and compare its norms and
    angles with the predicted max-margin geometry."""
    from implicit_geometry.experiments.imbalance import ImbalanceConfig, run_imbalance

    if resume is not None:
        emit_summary(run_imbalance(resume=resume, progress=not quiet), as_json)
        return
    config = ImbalanceConfig(
        classes=classes, ratios=_floats("ratios", ratios), minority_fractions=_floats("minority_fractions", minority_fractions),
        n_min=n_min, loss=loss, gamma=gamma, tau=tau, beta=beta, dim=dim, steps=steps, lr=lr,
        norm_ref=math.inf if norm_ref == math.inf else norm_ref, init_std=init_std, seeds=seeds, first_seed=first_seed,
        reduction=reduction, records=records, device=device,
    )
    emit_summary(run_imbalance(config, out, progress=not quiet), as_json)


@click.command("imbalance")
@click.option("--counts", default=None, help="Comma-separated class counts, e.g. 20,20,2,2.")
@click.option("--classes", type=int, default=None, help="Step imbalance: number of classes k (with --ratio, --minority-fraction, --n-min).")
@click.option("--ratio", type=float, default=10.0, show_default=True, help="Step imbalance: majority/minority ratio R.")
@click.option("--minority-fraction", type=float, default=0.5, show_default=True, help="Step imbalance: fraction rho of minority classes.")
@click.option("--n-min", type=int, default=1, show_default=True, help="Step imbalance: samples per minority class.")
@_loss_options
@click.option("--temperatures", type=str, default=None, help="Explicit positive temperatures Delta, one per class (comma-separated); class-dependent unless --loss ldt.")
@click.option("--weight-decay", type=float, default=None, help="Ridge: the global minimizer with this weight decay (penalty wd/2 per factor, sum-CE) instead of the max-margin limit.")
@click.option("--json", "as_json", is_flag=True, help="Print the prediction as JSON.")
def predict_command(counts, classes, ratio, minority_fraction, n_min, loss, gamma, tau, beta, temperatures, weight_decay, as_json) -> None:
    """Predicted UFM geometry under imbalance for a loss (no training): Grams, norms, angles; with step
    imbalance also the closed-form norm ratios and cosines."""

    from implicit_geometry._validation import check_counts
    from implicit_geometry.geometry.targets import step_imbalance_counts
    from implicit_geometry.imbalance.closed_form import step_closed_form
    from implicit_geometry.imbalance.losses import loss_parameters
    from implicit_geometry.imbalance.predict import imbalance_geometry, ridge_geometry
    from implicit_geometry.io import dumps_json

    if counts is not None and classes is not None:
        raise InvalidParameterError("counts must be given either as --counts or as --classes/--ratio/--minority-fraction/--n-min, not both (got both)")
    if counts is None and classes is None:
        raise InvalidParameterError("counts must be given as --counts or --classes (got neither)")
    c = check_counts(counts) if counts is not None else step_imbalance_counts(classes, ratio, minority_fraction, n_min)
    params = loss_parameters(c, loss, gamma=gamma, tau=tau, beta=beta)
    if temperatures is not None:
        from dataclasses import replace

        from implicit_geometry.imbalance.losses import check_temperatures

        Delta = check_temperatures(_floats("temperatures", temperatures), c.size)
        params = replace(params, multiplicative=Delta, hyper={"temperatures": Delta.tolist()})
        classes = None  # the closed form is for the parameterized losses only
    if weight_decay is not None:
        g, info = ridge_geometry(c, weight_decay, params, return_info=True)
    else:
        g, info = imbalance_geometry(c, params, return_info=True)
    out: dict[str, Any] = {
        "geometry": g.name, **params.to_dict(), "counts": g.counts, "solver": info.method,
        "solver_seconds": info.seconds, "objective": info.objective,
        "W_gram": g.W_gram, "mean_gram": g.mean_gram, "class_logits": g.class_logits,
        "classifier_norms": g.classifier_norms, "feature_norms": g.feature_norms,
        "classifier_cosines": g.classifier_cosines, "feature_cosines": g.feature_cosines,
    }
    if classes is not None and weight_decay is None:
        out["closed_form"] = step_closed_form(classes, ratio, minority_fraction, loss, gamma=gamma, tau=tau, beta=beta, n_min=n_min).to_dict()
    if as_json:
        click.echo(dumps_json(out))
        return
    from implicit_geometry.cli import echo_geometry

    hyper = ", ".join(f"{k} {v:g}" for k, v in params.hyper.items())
    click.echo(f"{g.name}" + (f" ({hyper})" if hyper else "") + f", solver {info.method} ({info.seconds * 1e3:.1f} ms)")
    echo_geometry(out)
    if "closed_form" in out:
        cf = out["closed_form"]
        click.echo("closed form (step imbalance): " + ", ".join(f"{k} {v:.4f}" for k, v in cf.items() if isinstance(v, float)))
