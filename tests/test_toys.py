"""analyses.toys: the linear toy model of anticipatory recovery."""

from __future__ import annotations

import numpy as np
import pytest

from analyses.toys import CyclicToyConfig, cyclic_toy
from interp.configs import ConfigError


def test_the_task_just_trained_is_solved_exactly():
    cfg = CyclicToyConfig(n_tasks=5, input_dim=6, output_dim=4, epochs=3, seed=1)
    result = cyclic_toy(cfg)
    assert result.losses.shape == (16, 5)
    assert result.w_trajectory.shape == (15, 4)
    assert result.schedule.tolist() == list(range(5)) * 3
    trained = result.losses[np.arange(1, 16), result.schedule]
    np.testing.assert_allclose(trained, 0.0, atol=1e-20)
    assert (result.losses[1:, :] >= 0).all()


def test_same_seed_same_trajectory():
    cfg = CyclicToyConfig(n_tasks=4, input_dim=5, output_dim=5, epochs=2)
    np.testing.assert_array_equal(cyclic_toy(cfg).losses, cyclic_toy(cfg).losses)


@pytest.mark.parametrize("field, value", [("n_tasks", 0), ("epochs", -1), ("lr", 0.0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        CyclicToyConfig(**{field: value})
