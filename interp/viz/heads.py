"""Per-head scores over training: layer x head grids and per-head traces."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from interp.viz.curves import new_figure, plot_steps

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _panel_steps(n_steps: int, n_panels: int) -> list[int]:
    """Indices of `n_panels` checkpoints spread log-evenly over training."""
    if n_steps <= n_panels:
        return list(range(n_steps))
    picks = np.unique(np.round(np.geomspace(1, n_steps, n_panels)).astype(int) - 1)
    return sorted({0, *picks.tolist(), n_steps - 1})


def plot_head_grids(
    grid: np.ndarray,
    steps: np.ndarray,
    *,
    title: str = "",
    n_panels: int = 6,
    vmin: float = 0.0,
    vmax: float = 1.0,
    titles: list[str] | None = None,
    cmap: str = "viridis",
) -> Figure:
    """Small multiples of a `[step, layer, head]` score at checkpoints spread over
    training, on one colour scale. With `titles` (one per entry of `steps`) every
    entry is drawn, under its own title."""
    if titles is not None and len(titles) != len(steps):
        raise ValueError(f"titles: expected one per step ({len(steps)}), got {len(titles)}")
    picks = list(range(len(steps))) if titles is not None else _panel_steps(len(steps), n_panels)
    n_layers, n_heads = grid.shape[1:]
    fig = new_figure(figsize=(2.2 * len(picks) + 0.8, 0.55 * n_layers + 1.4))
    axes = fig.subplots(1, len(picks), squeeze=False)[0]
    image = None
    for ax, i in zip(axes, picks, strict=True):
        image = ax.imshow(grid[i], vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
        ax.set_title(titles[i] if titles is not None else f"step {int(steps[i])}", fontsize=9)
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(n_layers))
        ax.set_xlabel("head", fontsize=8)
    axes[0].set_ylabel("layer")
    fig.colorbar(image, ax=axes.tolist(), shrink=0.9)
    fig.suptitle(title, y=1.04)
    return fig


def plot_head_curves(
    grid: np.ndarray,
    steps: np.ndarray,
    *,
    title: str = "",
    ylabel: str = "score",
    logx: bool = False,
) -> Figure:
    """Every head's score over training, one panel per layer."""
    n_layers, n_heads = grid.shape[1:]
    fig = new_figure(figsize=(4.2 * n_layers, 3.4))
    axes = fig.subplots(1, n_layers, squeeze=False, sharey=True)[0]
    x = plot_steps(steps, logx)
    for layer, ax in enumerate(axes):
        for head in range(n_heads):
            ax.plot(x, grid[:, layer, head], label=f"H{head}", lw=1.3)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("training step")
        if logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[-1].legend(fontsize=7, ncol=2)
    fig.suptitle(title, y=1.04)
    return fig
