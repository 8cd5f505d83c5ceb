"""``igeom run depth``."""

from __future__ import annotations

import click

from implicit_geometry.experiments.cli_common import common_run_options, emit_summary


@click.command("depth")
@click.option("--classes", type=int, default=10, show_default=True, help="Number of classes K.")
@click.option("--n", "samples_per_class", type=int, default=5, show_default=True, help="Samples per class.")
@click.option("--dims", type=str, default="100", show_default=True, help="Widths d, e.g. 20,50,100.")
@click.option("--depths", type=str, default="1..10", show_default=True, help="Depths L (weight matrices), e.g. 1..10 or 1,3,5.")
@click.option("--init-std", type=float, default=0.03, show_default=True, help="Std of the Gaussian initialization.")
@click.option("--optimizer", type=str, default="path", show_default=True, help="path (adaptive, any depth), ngd or gd (use --lr).")
@click.option("--eta", type=float, default=0.01, show_default=True, help="path: relative step length (halving it must not change results).")
@click.option("--plateau/--no-plateau", default=True, show_default=True,
              help="path: backward-Euler (Newton) steps on saddle plateaus (--no-plateau: explicit steps throughout).")
@click.option("--plateau-budget", type=int, default=300, show_default=True,
              help="path: at most this many backward-Euler plateau steps per run (each costs tens to hundreds of explicit steps).")
@click.option("--lr", type=float, default=1.0, show_default=True, help="ngd/gd step (not used by path).")
@click.option("--max-steps", type=int, default=3000, show_default=True, help="Cap per run; runs not terminal by then are flagged.")
@click.option("--target-margin", type=float, default=10.0, show_default=True, help="Terminal phase: smallest margin at least this.")
@click.option("--code/--no-code", default=True, show_default=True,
              help="After the terminal phase, normalized steps until the direction converges; the geometry is read there "
                   "(--no-code: read at --target-margin).")
@click.option("--code-step", type=float, default=0.01, show_default=True,
              help="Code phase: relative step length (the reading is accurate to O(code-step)).")
@click.option("--code-max-steps", type=int, default=20000, show_default=True,
              help="Code phase: at most this many steps per run; runs not converged by then are flagged and left out.")
@click.option("--norm-factor", type=float, default=10.0, show_default=True, help="Record Z's ETF distance when ||Z|| has grown by this factor.")
@click.option("--rank-tol", type=float, default=0.05, show_default=True, help="Numerical rank: singular values above rank_tol * largest.")
@common_run_options
def command(classes, samples_per_class, dims, depths, init_std, optimizer, eta, plateau, plateau_budget, lr, max_steps,
            target_margin, code, code_step, code_max_steps, norm_factor, rank_tol, seeds, first_seed, device, out, resume, as_json, quiet) -> None:
    """Sweep depth and width of the deep UFM from random init: effective rank, learned softmax code, ETF distances."""
    from implicit_geometry._validation import parse_int_list
    from implicit_geometry.experiments.depth import DepthConfig, run_depth

    if resume is not None:
        emit_summary(run_depth(resume=resume, progress=not quiet), as_json)
        return
    config = DepthConfig(
        classes=classes, samples_per_class=samples_per_class, dims=parse_int_list("dims", dims), depths=parse_int_list("depths", depths),
        init_std=init_std, seeds=seeds, first_seed=first_seed, optimizer=optimizer, eta=eta, plateau=plateau,
        plateau_budget=plateau_budget, lr=lr, max_steps=max_steps,
        target_margin=target_margin, code=code, code_step=code_step, code_max_steps=code_max_steps, norm_factor=norm_factor, rank_tol=rank_tol, device=device,
    )
    emit_summary(run_depth(config, out, progress=not quiet), as_json)
