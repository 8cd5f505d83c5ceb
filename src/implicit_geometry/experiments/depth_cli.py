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
              help="path: implicit steps on saddle plateaus (--no-plateau: explicit steps throughout).")
@click.option("--plateau-budget", type=int, default=1200, show_default=True,
              help="path: at most this many implicit plateau steps per run (each costs tens to hundreds of explicit steps).")
@click.option("--slow-steps/--no-slow-steps", default=True, show_default=True,
              help="path: plateau steps on the slow manifold (stiff directions held at equilibrium) where they apply, "
                   "BDF2 elsewhere (--no-slow-steps: BDF2 throughout).")
@click.option("--root-spectrum/--no-root-spectrum", default=True, show_default=True,
              help="path: late on deep saddles take the stiff directions from the logit kernel's square root, where the formed "
                   "kernel's rounding hides them (--no-root-spectrum: always the formed kernel; L = 10 seed 0 then stalls).")
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
def command(classes, samples_per_class, dims, depths, init_std, optimizer, eta, plateau, plateau_budget, slow_steps, root_spectrum, lr,
            max_steps, target_margin, code, code_step, code_max_steps, norm_factor, rank_tol, seeds, first_seed, device, out, resume, as_json, quiet) -> None:
    """Sweep depth and width of the deep UFM from random init: effective rank, learned softmax code, ETF distances."""
    from implicit_geometry._validation import parse_int_list
    from implicit_geometry.experiments.depth import DepthConfig, run_depth

    if resume is not None:
        emit_summary(run_depth(resume=resume, progress=not quiet), as_json)
        return
    config = DepthConfig(
        classes=classes, samples_per_class=samples_per_class, dims=parse_int_list("dims", dims), depths=parse_int_list("depths", depths),
        init_std=init_std, seeds=seeds, first_seed=first_seed, optimizer=optimizer, eta=eta, plateau=plateau,
        plateau_budget=plateau_budget, slow_steps=slow_steps, root_spectrum=root_spectrum, lr=lr, max_steps=max_steps,
        target_margin=target_margin, code=code, code_step=code_step, code_max_steps=code_max_steps, norm_factor=norm_factor, rank_tol=rank_tol, device=device,
    )
    emit_summary(run_depth(config, out, progress=not quiet), as_json)


@click.command("codes")
@click.option("--classes", type=int, required=True, help="Number of points (classes) K.")
@click.option("--rank", type=int, required=True, help="Dimension r of the code (the rank of its logits).")
@click.option("--restarts", type=int, default=8, show_default=True, help="Random starts of the solver; the best is kept.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random starts.")
@click.option("--json", "as_json", is_flag=True, help="Print the code as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict_codes(classes, rank, restarts, seed, as_json, quiet) -> None:
    """The softmax (max-margin) code of K points in r dimensions: its one-vs-rest distance, the known optimum
    where there is one (simplex, regular K-gon, cross-polytope), and the points."""
    import numpy as np

    from implicit_geometry._validation import check_int
    from implicit_geometry.depth.codes import known_optimum_name, softmax_code
    from implicit_geometry.depth.reading import adjacent_angles
    from implicit_geometry.io import dumps_json

    K = check_int("classes", classes, minimum=2)
    r = check_int("rank", rank, minimum=1)
    check_int("restarts", restarts, minimum=1)
    check_int("seed", seed, minimum=0)
    code = softmax_code(K, r, restarts=restarts, seed=seed, progress=not quiet and not as_json)
    angles = adjacent_angles(code.points.T) if r == 2 else None
    out = {"classes": K, "rank": r, "distance": code.distance, "known_optimum": code.known, "known_name": known_optimum_name(K, r),
           "restart_distances": list(code.restarts), "points": code.points,
           "adjacent_angles_deg": angles}
    if as_json:
        click.echo(dumps_json(out))
        return
    click.echo(f"softmax code of K = {K} points in r = {r} dimensions (largest point norm 1)")
    line = f"one-vs-rest distance rho = {code.distance:.12f}"
    if code.known is not None:
        line += f"; known optimum ({out['known_name']}) {code.known:.12f}, gap {code.known - code.distance:.1e}"
    else:
        values = sorted(code.restarts)
        line += f"; no closed form known: best of {len(values)} starts (worst {values[0]:.12f})"
    click.echo(line)
    if angles is not None:
        click.echo(f"adjacent angles (deg): {np.array2string(angles, precision=4, max_line_width=140)} (regular: {360 / K:g})")
    with np.printoptions(precision=6, suppress=True, linewidth=140):
        click.echo(f"points (one row per class):\n{code.points}")


@click.command("efficiency")
@click.option("--classes", type=int, default=10, show_default=True, help="Number of classes K (at least 3).")
@click.option("--depths", type=str, default="1..10", show_default=True, help="Depths L (weight matrices), e.g. 1..10 or 1,3,5.")
@click.option("--n", "samples_per_class", type=int, default=1, show_default=True, help="Samples per class.")
@click.option("--restarts", type=int, default=4, show_default=True, help="Random starts of each code's solver.")
@click.option("--json", "as_json", is_flag=True, help="Print the tables as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict_efficiency(classes, depths, samples_per_class, restarts, as_json, quiet) -> None:
    """Margin at equal total parameter norm of the ETF and of the softmax code of each rank 2..K-2, per depth L of
    the deep UFM, and the depth from which a low-rank code beats neural collapse."""
    from tqdm.auto import tqdm

    from implicit_geometry._validation import check_int, parse_int_list
    from implicit_geometry.depth.codes import softmax_code
    from implicit_geometry.depth.efficiency import compare_geometries
    from implicit_geometry.io import dumps_json

    K = check_int("classes", classes, minimum=3)
    Ls = [check_int("depth", L, minimum=1) for L in parse_int_list("depths", depths)]
    if not Ls:
        from implicit_geometry._validation import InvalidParameterError

        raise InvalidParameterError(f"depths must list at least one depth, such as 1..10 (got {depths!r})")
    n = check_int("n", samples_per_class, minimum=1)
    check_int("restarts", restarts, minimum=1)
    ranks = list(range(2, K - 1))
    cache: dict[tuple[int, int], object] = {}
    for r in tqdm(ranks, desc=f"softmax codes K={K}", unit="rank", disable=quiet or as_json, leave=False):
        cache[(K, r)] = softmax_code(K, r, restarts=restarts).points
    tables = [compare_geometries(K, L, samples_per_class=n, code_cache=cache) for L in Ls]
    first = next((t.depth for t in tables if t.best_rank != K - 1), None)
    if as_json:
        click.echo(dumps_json({"classes": K, "samples_per_class": n, "tables": [t.to_dict() for t in tables],
                               "first_low_rank_depth": first}))
        return
    click.echo(f"K = {K}, n = {n}: margin at unit total squared parameter norm; codes as a fraction of the ETF's margin "
               "(> 1: the rank-r code is the more norm-efficient)")
    click.echo(f"{'L':>3}  {'ETF margin':>11}  " + "  ".join(f"{'r=' + str(r):>6}" for r in ranks) + "  best")
    for t in tables:
        best = "ETF" if t.best_rank == K - 1 else f"r={t.best_rank}"
        click.echo(f"{t.depth:>3}  {t.etf:>11.4e}  " + "  ".join(f"{t.codes[r] / t.etf:>6.3f}" for r in ranks) + f"  {best}")
    if first is None:
        click.echo(f"the ETF is the most norm-efficient geometry at every listed depth (L = {Ls[0]}..{Ls[-1]})" if len(Ls) > 1
                   else f"the ETF is the most norm-efficient geometry at L = {Ls[0]}")
    else:
        t = next(t for t in tables if t.depth == first)
        click.echo(f"a low-rank code beats the ETF from L = {first} on among the listed depths (there: rank {t.best_rank})")
