"""Figures of the ``depth`` experiment: effective rank against depth and width, singular values against time,
rank-2 codes against the regular K-gon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from implicit_geometry.io import save_figure


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _reported(r: dict) -> bool:
    """A run whose geometry is reported: terminal, and its code phase (if any) converged."""
    return bool(r["terminal"]) and r.get("code_converged") is not False


def _rank_stats(results, key_fixed, fixed, key_x):
    xs, means, stds = [], [], []
    for x in sorted({r[key_x] for r in results if r[key_fixed] == fixed}):
        er = [r["effective_rank"] for r in results if r[key_fixed] == fixed and r[key_x] == x and _reported(r)]
        if er:
            xs.append(x)
            means.append(np.mean(er))
            stds.append(np.std(er))
    return xs, means, stds


def _polygon_frame(X: np.ndarray) -> tuple[np.ndarray, float, float]:
    """A rank-2 Gram factor (2 x K) drawn against the regular K-gon: the points scaled to mean radius 1, the polygon's
    rotation that best fits them (circular mean of each point's angle less its vertex's, in angular order; taken in
    [0, 2 pi / K)), and the relative spread of the radii (std / mean), which the adjacent angles do not show.

    >>> import numpy as np
    >>> t = 0.3 + 2 * np.pi * np.arange(5) / 5
    >>> X, a0, spread = _polygon_frame(3 * np.stack([np.cos(t), np.sin(t)]))
    >>> round(a0, 12), round(spread, 12), round(float(np.linalg.norm(X, axis=0).mean()), 12)
    (0.3, 0.0, 1.0)
    """
    radii = np.linalg.norm(X, axis=0)
    angles = np.sort(np.arctan2(X[1], X[0]))
    offsets = angles - 2 * np.pi * np.arange(X.shape[1]) / X.shape[1]
    a0 = float(np.angle(np.exp(1j * offsets).mean()) % (2 * np.pi / X.shape[1]))  # the K-gon repeats every 2 pi / K
    return X / radii.mean(), a0, float(radii.std() / radii.mean())


def plot_depth_figures(folder: Path, config: Any, results: list[dict], histories: list[dict], K: int) -> None:
    plt = _plt()
    folder = Path(folder)
    # Effective rank against depth (one line per width) and against width (one line per depth).
    for key_x, key_line, name, xlabel in (("depth", "dim", "rank_vs_depth.png", "depth L (weight matrices)"),
                                          ("dim", "depth", "rank_vs_width.png", "width d")):
        lines = sorted({r[key_line] for r in results})
        if name == "rank_vs_width.png" and len({r["dim"] for r in results}) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6.0, 4.0), constrained_layout=True)
        for v in lines:
            xs, m, s = _rank_stats(results, key_line, v, key_x)
            ax.errorbar(xs, m, yerr=s, marker="o", capsize=3, label=f"{key_line}={v}")
        ax.axhline(K - 1, color="gray", ls="--", lw=1, label="ETF (K-1)")
        widths = sorted({r["dim"] for r in results})
        if key_x == "dim" and widths[-1] >= 10 * widths[0]:  # widths usually span decades (10, 30, 100, 300)
            ax.set_xscale("log")
            ax.set_xticks(widths, [str(w) for w in widths])
            ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel("effective rank of mean logits")
        ax.set_title(f"K={K}, init std {config.init_std}: mean +- std over terminal runs")
        ax.legend(fontsize=7)
        save_figure(folder / name, fig, dpi=110)
        plt.close(fig)
    # Singular values (normalized by the largest) against step, first seed, one panel per depth (first width).
    d0, seed0 = config.dims[0], config.first_seed
    depths = config.depths
    cols = min(5, len(depths))
    rows = int(np.ceil(len(depths) / cols))
    # at least ~6 inches wide, so that the title fits over one or two panels
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.0 * cols, 6.5), 2.4 * rows + 0.3), constrained_layout=True,
                             squeeze=False)
    for ax, L in zip(axes.ravel(), depths):
        h = [r for r in histories if r["dim"] == d0 and r["depth"] == L and r["seed"] == seed0]
        if h:
            steps = np.array([r["step"] for r in h]) + 1
            for i in range(K):
                ax.plot(steps, [r[f"sv{i + 1}"] for r in h], lw=1)
            ax.set_xscale("log")
        ax.set_title(f"L={L}", fontsize=9)
        ax.set_ylim(-0.05, 1.05)
    for ax in axes.ravel()[len(depths):]:
        ax.axis("off")
    fig.suptitle(f"singular values of mean logits / largest vs step+1 (d={d0}, seed {seed0})")
    save_figure(folder / "singular_values.png", fig, dpi=100)
    plt.close(fig)
    # Rank-2 codes against the regular K-gon.
    two = [r for r in results if _reported(r) and r["numerical_rank"] == 2][-6:]
    if two:
        fig, axes = plt.subplots(1, len(two), figsize=(2.6 * len(two), 2.8), constrained_layout=True, squeeze=False)
        poly = 2 * np.pi * np.arange(K + 1) / K
        for ax, r in zip(axes.ravel(), two):
            X, a0, spread = _polygon_frame(np.asarray(r["gram_factor"]))
            ax.plot(np.cos(poly + a0), np.sin(poly + a0), "-", color="gray", lw=1)
            ax.scatter(X[0], X[1], s=18, zorder=3)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"d={r['dim']} L={r['depth']} s={r['seed']}\nmax angle err {r['max_angle_error_deg']:.2f} deg, "
                         f"radii +-{100 * spread:.0f}%", fontsize=7)
        fig.suptitle(f"rank-2 Gram-factor points vs the regular {K}-gon")
        save_figure(folder / "polygons.png", fig, dpi=110)
        plt.close(fig)
