"""Matplotlib figures for training dynamics and circuits.

Functions return a `matplotlib.figure.Figure` (built without pyplot, so no
global state or display backend is touched); `save_figure` writes it.
"""

from interp.viz.attention import plot_attention
from interp.viz.circuit import plot_circuit, plot_circuit_diff
from interp.viz.curves import plot_bars, plot_curves, save_figure
from interp.viz.heads import plot_head_curves, plot_head_grids
from interp.viz.matrices import plot_matrix, plot_trajectory

__all__ = ["plot_attention", "plot_bars", "plot_circuit", "plot_circuit_diff", "plot_curves", "plot_head_curves",
           "plot_head_grids", "plot_matrix", "plot_trajectory", "save_figure"]
