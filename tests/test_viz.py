"""interp.viz: figures carry the data they are given; bad shapes are refused."""

from __future__ import annotations

import numpy as np
import pytest

from interp.viz import plot_curves, plot_head_grids, plot_matrix, plot_trajectory, save_figure


def test_plot_matrix_numbers_cells_from_start(tmp_path):
    fig = plot_matrix(np.arange(12.0).reshape(3, 4), start=20, gridlines=[22], symmetric=True)
    ax = fig.axes[0]
    assert ax.get_xlim() == (19.5, 23.5)
    assert ax.get_ylim() == (22.5, 19.5)  # row 0 on top
    assert ax.images[0].get_clim() == (-11.0, 11.0)
    assert save_figure(fig, tmp_path / "m.png").stat().st_size > 0


def test_plot_trajectory_2d_and_3d_and_bad_shape():
    assert plot_trajectory(np.zeros((5, 2))).axes[0].name == "rectilinear"
    assert plot_trajectory(np.zeros((5, 3))).axes[0].name == "3d"
    with pytest.raises(ValueError, match="coords"):
        plot_trajectory(np.zeros((5, 4)))


def test_plot_curves_band_surrounds_the_line():
    fig = plot_curves({"a": (np.arange(3), np.array([1.0, 2.0, 3.0]))}, bands={"a": np.array([0.5, 0.5, 0.5])})
    band = fig.axes[0].collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(0.5) and band[:, 1].max() == pytest.approx(3.5)


def test_plot_curves_log_axes():
    ax = plot_curves({"a": (np.array([1.0, 10.0]), np.array([2.0, 20.0]))}, logx=True, logy=True).axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert plot_curves({"a": (np.arange(2), np.arange(2.0))}).axes[0].get_yscale() == "linear"


def test_plot_curves_secondary_axis_shares_the_legend():
    steps = np.arange(5)
    fig = plot_curves({"accuracy": (steps, steps / 4)}, secondary={"loss": (steps, 5 - steps)},
                      secondary_label="loss")
    left, right = fig.axes
    assert right.get_ylabel() == "loss"
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["accuracy", "loss"]


def test_plot_head_grids_with_titles_draws_every_entry():
    grid = np.random.default_rng(0).random((3, 2, 4))
    fig = plot_head_grids(grid, np.array([0, 5, 5]), titles=["a", "b", "c"])
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="titles"):
        plot_head_grids(grid, np.array([0, 5, 5]), titles=["a"])
