"""Attention pattern of one head on one input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from interp.viz.curves import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_attention(
    pattern: np.ndarray,
    *,
    labels: Sequence[str] | None = None,
    title: str = "",
) -> Figure:
    """Heatmap of a `[query, key]` pattern; `labels` name the positions."""
    pattern = np.asarray(pattern)
    if pattern.ndim != 2 or pattern.shape[0] != pattern.shape[1]:
        raise ValueError(f"pattern: expected a square [query, key] array, got shape {pattern.shape}")
    n = pattern.shape[0]
    size = min(9.0, 2.5 + 0.12 * n)
    fig = new_figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot()
    image = ax.imshow(pattern, cmap="Blues", vmin=0.0, vmax=1.0)
    if labels is not None:
        if len(labels) != n:
            raise ValueError(f"labels: expected {n} labels, got {len(labels)}")
        ax.set_xticks(range(n), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(n), labels, fontsize=6)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig
