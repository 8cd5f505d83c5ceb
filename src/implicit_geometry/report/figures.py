"""Matplotlib figures shared by the experiments (headless backend, files written atomically)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from implicit_geometry.io import save_figure


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    path: Path,
    x: Sequence[float],
    series: Mapping[str, Sequence[float] | np.ndarray],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = True,
    logy: bool = True,
    styles: Mapping[str, str] | None = None,
) -> None:
    """Lines of ``series[name]`` against x; a 2-D series (seeds x points) is drawn as its mean with a min-max band."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    x = np.asarray(x, dtype=float)
    xs = np.where(x <= 0, np.nan, x) if logx else x
    for name, ys in series.items():
        ys = np.asarray(ys, dtype=float)
        style = (styles or {}).get(name, "-")
        if ys.ndim == 2:
            mean = ys.mean(0)
            (line,) = ax.plot(xs, mean, style, label=name)
            if ys.shape[0] > 1:
                ax.fill_between(xs, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2)
        else:
            ax.plot(xs, ys, style, label=name)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(path, fig, dpi=120)
    plt.close(fig)


def plot_matrix_pairs(path: Path, pairs: Sequence[tuple[str, np.ndarray, np.ndarray]], *, title: str = "") -> None:
    """One row per (name, predicted, learned): the two matrices side by side, each scaled to unit Frobenius norm,
    on a shared symmetric color scale, with their normalized distance in the row title."""
    plt = _plt()
    from implicit_geometry.geometry.metrics import normalized_distance

    fig, axes = plt.subplots(len(pairs), 2, figsize=(7.2, 3.3 * len(pairs)), constrained_layout=True, squeeze=False)
    for row, (name, pred, learned) in enumerate(pairs):
        P = np.asarray(pred, float) / np.linalg.norm(pred)
        Lm = np.asarray(learned, float) / np.linalg.norm(learned)
        vmax = max(np.abs(P).max(), np.abs(Lm).max())
        for col, (label, M) in enumerate((("predicted", P), ("learned", Lm))):
            ax = axes[row, col]
            im = ax.imshow(M, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest", aspect="auto")
            ax.set_title(f"{name}: {label}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=axes[row, :].tolist(), shrink=0.8)
        axes[row, 0].set_ylabel(f"distance {normalized_distance(pred, learned):.2e}", fontsize=8)
    if title:
        fig.suptitle(title)
    save_figure(path, fig, dpi=110)
    plt.close(fig)
