"""interp.metrics.drift on trajectories with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.hooks import hook_name
from interp.metrics.drift import (
    activation_cosine,
    cosine_matrix,
    flatten_state,
    gradient_cosines,
    lag_means,
    pca,
    residual_cosine,
    weight_trajectory,
    window_residuals,
)
from interp.probing import collect_activations


def test_flatten_state_concatenates_in_key_order_or_as_asked():
    state = {"b": torch.tensor([3.0, 4.0]), "a": torch.tensor([[1.0], [2.0]])}
    assert flatten_state(state).tolist() == [1.0, 2.0, 3.0, 4.0]
    assert flatten_state(state, ["b"]).tolist() == [3.0, 4.0]
    with pytest.raises(KeyError, match="'c'"):
        flatten_state(state, ["c"])


def test_cosine_matrix_known_values():
    rows = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]])
    cos = cosine_matrix(rows)
    assert cos[0, 1] == pytest.approx(0.0)
    assert cos[0, 2] == pytest.approx(-1.0)
    assert cos[0, 3] == pytest.approx(2**-0.5)
    assert np.allclose(np.diag(cos), 1.0)
    assert np.isnan(cosine_matrix(np.array([[0.0, 0.0], [1.0, 0.0]]))[0, 1])
    assert cosine_matrix(rows.astype(np.float32)).dtype == np.float64


def test_window_residuals_remove_a_linear_drift_and_keep_a_periodic_signal():
    period, n = 6, 40
    t = np.arange(n)
    periodic = np.stack([np.cos(2 * np.pi * t / period), np.sin(2 * np.pi * t / period)], axis=1)
    drift = np.outer(t, [0.5, -2.0])
    # A centred window averages a linear drift to its centre value, so the drift
    # cancels. A 7-wide window over a 6-periodic signal sums one full period (0)
    # plus x_{t+3} = x_{t-3}, so the residual is x_t - x_{t-3} / 7.
    expected = periodic[3:-3] - periodic[:-6] / 7
    assert np.allclose(window_residuals(drift, 3), 0.0)
    residuals = window_residuals(drift + periodic, half_window=3)
    assert residuals.shape == (n - 6, 2)
    assert np.allclose(residuals, expected)


def test_window_residuals_show_stripes_at_the_period():
    period = 8
    t = np.arange(64)
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(period, 50))
    rows = basis[t % period] + 0.01 * rng.normal(size=(64, 50)) + np.outer(t, rng.normal(size=50))
    cos = cosine_matrix(window_residuals(rows, period // 2))
    lag = lambda k: np.mean(np.diagonal(cos, k))  # noqa: E731
    assert lag(period) > 0.9
    assert lag(period // 2) < lag(period) - 0.5


def test_window_residuals_bad_window():
    with pytest.raises(ValueError, match="half_window"):
        window_residuals(np.zeros((4, 2)), 2)
    with pytest.raises(ValueError, match="half_window"):
        window_residuals(np.zeros((9, 2)), 0)


def test_pca_recovers_a_planar_circle():
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    rng = np.random.default_rng(1)
    frame, _ = np.linalg.qr(rng.normal(size=(30, 2)))  # an orthonormal plane in R^30
    rows = 5.0 + np.stack([3 * np.cos(angles), 3 * np.sin(angles)], axis=1) @ frame.T
    coords, explained = pca(rows, 3)
    assert explained[:2].sum() == pytest.approx(1.0)
    assert explained[2] == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(np.linalg.norm(coords[:, :2], axis=1), 3.0)


def test_pca_bad_components():
    with pytest.raises(ValueError, match="n_components"):
        pca(np.zeros((3, 5)), 4)


def test_lag_means_known_values():
    matrix = np.arange(9, dtype=float).reshape(3, 3)
    assert lag_means(matrix).tolist() == [4.0, 3.0, 2.0]


def test_weight_trajectory_stacks_flattened_checkpoints(trained_run):
    run = trained_run.run
    rows = weight_trajectory(run, [0, 4, 8])
    assert rows.dtype == np.float32 and rows.shape[0] == 3
    np.testing.assert_array_equal(rows[1], flatten_state(run.load_state_dict(4)))
    unembed = weight_trajectory(run, [2, 6], ["unembed.weight"])
    np.testing.assert_array_equal(unembed[1], flatten_state(run.load_state_dict(6), ["unembed.weight"]))
    with pytest.raises(ValueError, match="steps"):
        weight_trajectory(run, [])


def test_gradient_cosines_of_repeated_and_distinct_batches(trained_run):
    model = trained_run.run.load(8, device="cpu")
    tokens = trained_run.tokens
    batches = [{"tokens": tokens[:1]}, {"tokens": tokens[:1]}, {"tokens": tokens[1:2]}]
    params = list(model.blocks[0].attn.parameters())
    cos = gradient_cosines(model, batches, params)
    assert cos.shape == (3, 3)
    np.testing.assert_allclose(np.diag(cos), 1.0, atol=1e-6)
    assert cos[0, 1] == pytest.approx(1.0, abs=1e-6)  # the same batch twice
    assert cos[0, 2] < 1 - 1e-3
    np.testing.assert_allclose(cos, cos.T)


def test_residual_and_activation_cosines_of_a_run(trained_run):
    run, steps = trained_run.run, [0, 2, 4, 6, 8]
    residual = residual_cosine(run, steps, 1)
    np.testing.assert_allclose(residual, cosine_matrix(window_residuals(weight_trajectory(run, steps), 1)))
    assert residual.shape == (3, 3)
    batch = {"tokens": trained_run.tokens}
    acts = activation_cosine(run, hook_name("normalized"), batch, steps, device="cpu")
    expected = collect_activations(run, hook_name("normalized"), batch, steps, device="cpu").reshape(len(steps), -1)
    np.testing.assert_allclose(acts, cosine_matrix(expected))
    np.testing.assert_allclose(np.diag(acts), 1.0, atol=1e-6)
