"""Square matrices (similarity, pairwise effects) and low-dimensional trajectories."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from interp.viz.curves import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_matrix(
    matrix: np.ndarray,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    cmap: str = "viridis",
    symmetric: bool = False,
    gridlines: Sequence[float] = (),
    start: int = 0,
    colorbar_label: str = "",
    figsize: tuple[float, float] = (5.4, 4.6),
) -> Figure:
    """A heatmap with integer ticks numbered from `start` (e.g. the first
    episode shown); `symmetric` centres a diverging scale on 0, `gridlines`
    mark boundaries (e.g. epochs, in tick units) on both axes. NaN cells are
    left blank."""
    matrix = np.asarray(matrix, dtype=float)
    fig = new_figure(figsize=figsize)
    ax = fig.add_subplot()
    limits = {}
    if symmetric:
        bound = float(np.nanmax(np.abs(matrix))) if np.isfinite(matrix).any() else 1.0
        limits = {"vmin": -bound, "vmax": bound}
    rows, cols = matrix.shape
    extent = (start - 0.5, start + cols - 0.5, start + rows - 0.5, start - 0.5)
    image = ax.imshow(matrix, cmap=cmap, aspect="auto", interpolation="nearest", extent=extent, **limits)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for position in gridlines:
        ax.axhline(position - 0.5, color="white", lw=0.6)
        ax.axvline(position - 0.5, color="white", lw=0.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    return fig


def plot_trajectory(
    coords: np.ndarray,
    *,
    colour_by: np.ndarray | None = None,
    colour_label: str = "",
    title: str = "",
    axis_labels: Sequence[str] = (),
    figsize: tuple[float, float] = (5.4, 4.6),
) -> Figure:
    """A path through 2-D or 3-D coordinates `[n, 2|3]`, points coloured by
    `colour_by` (default: their order)."""
    coords = np.asarray(coords, dtype=float)
    if coords.ndim != 2 or coords.shape[1] not in (2, 3):
        raise ValueError(f"coords: expected shape [n, 2] or [n, 3], got {coords.shape}")
    colours = np.arange(len(coords)) if colour_by is None else np.asarray(colour_by)
    fig = new_figure(figsize=figsize)
    three_d = coords.shape[1] == 3
    ax = fig.add_subplot(projection="3d" if three_d else None)
    ax.plot(*coords.T, color="0.6", lw=0.7)
    points = ax.scatter(*coords.T, c=colours, cmap="viridis", s=12)
    labels = list(axis_labels) or [f"PC{i + 1}" for i in range(coords.shape[1])]
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    if three_d:
        ax.set_zlabel(labels[2])
    ax.set_title(title)
    fig.colorbar(points, ax=ax, label=colour_label or "order", shrink=0.8)
    return fig
