"""analyses.toys: the linear toy model of anticipatory recovery and the coopetition toy."""

from __future__ import annotations

import numpy as np
import pytest

from analyses.toys import (
    CoopetitionSummary,
    CoopetitionToyConfig,
    CyclicToyConfig,
    coopetition_toy,
    cyclic_toy,
    rank1_error,
)
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


# --- strategy coopetition --------------------------------------------------------------------------


def test_rank1_error_matches_the_explicit_tensor_and_autograd():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    target = [rng.standard_normal(n) for n in (2, 3, 4)]
    factors = [rng.standard_normal(n) for n in (2, 3, 4)]
    loss, grads = rank1_error(target, factors)
    tensors = [torch.tensor(f, requires_grad=True) for f in factors]
    explicit = 0.5 * ((torch.einsum("i,j,k->ijk", *map(torch.tensor, target))
                       - torch.einsum("i,j,k->ijk", *tensors)) ** 2).mean()
    explicit.backward()
    assert loss == pytest.approx(float(explicit))
    for grad, tensor in zip(grads, tensors, strict=True):
        np.testing.assert_allclose(grad, tensor.grad.numpy(), rtol=1e-10)
    assert rank1_error(target, target)[0] == pytest.approx(0.0, abs=1e-12)


def test_coopetition_first_mechanism_is_learned_then_lost():
    result = coopetition_toy(CoopetitionToyConfig(steps=8000, record_every=100))
    best = int(np.argmin(result.loss1))
    assert result.loss1[best] < 0.02 and result.loss1[-1] > 0.15
    assert result.loss2[-1] < 1e-3
    assert result.norms[-1, 0] < 0.05 * result.norms[best, 0]
    assert result.steps[0] == 0 and result.steps[-1] == 8000


def test_coopetition_summary_description_and_figure():
    cfg = CoopetitionToyConfig(dims=(3, 3, 3, 6), steps=40, record_every=10)
    result = coopetition_toy(cfg)
    summary = result.summary()
    best = int(np.argmin(result.loss1))
    assert summary == CoopetitionSummary(loss1_min=result.loss1[best], loss1_min_step=int(result.steps[best]),
                                         loss1_final=result.loss1[-1], loss2_final=result.loss2[-1],
                                         a_norm_final=result.norms[-1, 0], d_norm_final=result.norms[-1, 3])
    text = result.describe(cfg)
    assert text.startswith("Coopetition toy (dims (3, 3, 3, 6), alpha 0.1") and f"{summary.loss1_min:.4f}" in text
    assert len(result.figure().axes) == 2  # the losses, and the factor norms on a second axis


@pytest.mark.parametrize("field, value", [("dims", (3, 3, 3)), ("alpha", -1.0), ("steps", 0), ("lr", 0.0)])
def test_bad_coopetition_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        CoopetitionToyConfig(**{field: value})


def test_cyclic_toy_recovery_by_epoch_and_figures():
    result = cyclic_toy(CyclicToyConfig(n_tasks=5, input_dim=8, output_dim=8, epochs=4))
    assert result.recovery_by_epoch.shape == (3,)
    assert (result.recovery_by_epoch > 0).all()  # the toy recovers before each re-encounter
    for figure in (result.loss_figure(), result.recovery_figure(), result.pca_figure()):
        assert figure.axes
