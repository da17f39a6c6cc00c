"""Per-head scores over training: layer x head grids and per-head traces."""

from __future__ import annotations

import numpy as np
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
) -> Figure:
    """Small multiples of a `[step, layer, head]` score at checkpoints spread over
    training, on one colour scale."""
    picks = _panel_steps(len(steps), n_panels)
    n_layers, n_heads = grid.shape[1:]
    fig = Figure(figsize=(2.2 * len(picks) + 0.8, 0.55 * n_layers + 1.4))
    axes = fig.subplots(1, len(picks), squeeze=False)[0]
    image = None
    for ax, i in zip(axes, picks, strict=True):
        image = ax.imshow(grid[i], vmin=vmin, vmax=vmax, cmap="viridis", aspect="auto")
        ax.set_title(f"step {int(steps[i])}", fontsize=9)
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
    fig = Figure(figsize=(4.2 * n_layers, 3.4))
    axes = fig.subplots(1, n_layers, squeeze=False, sharey=True)[0]
    x = np.asarray(steps, dtype=float)
    if logx and len(x) > 1:
        x = np.where(x <= 0, x[x > 0].min() / 2, x)
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
