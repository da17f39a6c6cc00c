"""interp.metrics.lowrank on matrices of known structure, against closed-form answers, and its model measurements."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_model_config

from interp.hooks import hook_name
from interp.metrics import lowrank as lr
from interp.model import build_model
from interp.replay import softmax_weights

RNG = np.random.default_rng(0)
A, B = RNG.uniform(0.5, 2.0, 12), RNG.normal(size=80)
RANK1 = np.outer(A, B)
MU, T, E = 0.3, RNG.normal(size=12), RNG.normal(size=80)
ADDITIVE = MU + T[:, None] + E[None, :]


def test_forgetting_matrix_is_after_minus_before():
    before, after = np.array([1.0, 2.0]), np.array([[1.5, 2.0], [0.5, 3.0]])
    assert lr.forgetting_matrix(before, after).tolist() == [[0.5, 0.0], [-0.5, 1.0]]
    with pytest.raises(ValueError, match="before"):
        lr.forgetting_matrix(np.zeros(3), after)


def test_exact_rank_one_matrix():
    fits = lr.fit_summary(RANK1)
    assert fits.r2_multiplicative == pytest.approx(1.0)
    assert fits.r2_by_rank == pytest.approx([1.0] * 5)
    s = lr.singular_values(RANK1)
    assert s[0] == pytest.approx(np.linalg.norm(A) * np.linalg.norm(B))
    assert np.allclose(s[1:], 0.0, atol=1e-10)


def test_additive_matrix_is_fitted_exactly_and_has_rank_two():
    fits = lr.fit_summary(ADDITIVE)
    assert fits.r2_additive == pytest.approx(1.0)
    assert fits.r2_by_rank[1] == pytest.approx(1.0)
    assert fits.r2_by_rank[0] < 1.0 - 1e-3
    # closed form: the row-only fit explains the variance of the t_i, the column-only that of the e_j
    total = ADDITIVE.var()
    assert fits.r2_row_only == pytest.approx(T.var() / total)
    assert fits.r2_column_only == pytest.approx(E.var() / total)


def test_row_only_and_column_only_matrices():
    rows = np.repeat(T[:, None], 80, axis=1)
    assert lr.r2(rows, lr.row_only_fit(rows)) == pytest.approx(1.0)
    assert lr.r2(rows, lr.column_only_fit(rows)) == pytest.approx(0.0)
    cols = np.repeat(E[None, :], 12, axis=0)
    assert lr.r2(cols, lr.column_only_fit(cols)) == pytest.approx(1.0)


def test_noise_has_no_low_rank_structure_and_shuffling_breaks_rank_one():
    noise = np.random.default_rng(1).normal(size=(40, 400))
    assert lr.r2_by_rank(noise, [1])[0] < 0.05
    shuffled = lr.shuffle_rows_independently(RANK1, np.random.default_rng(2))
    assert np.allclose(np.sort(shuffled, axis=1), np.sort(RANK1, axis=1))
    assert lr.r2(shuffled, lr.row_only_fit(shuffled)) == pytest.approx(lr.r2(RANK1, lr.row_only_fit(RANK1)))
    assert lr.r2_by_rank(shuffled, [1])[0] < 0.5


def test_r2_and_rank_bad_input():
    with pytest.raises(ValueError, match="rank"):
        lr.svd_fit(RANK1, 13)
    with pytest.raises(ValueError, match="fit"):
        lr.r2(RANK1, RANK1[:3])
    with pytest.raises(ValueError, match="Z"):
        lr.r2(np.zeros(3), np.zeros(3))


def hide(z: np.ndarray, rows: list[int], keep: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    mask = np.ones_like(z, dtype=bool)
    mask[rows] = lr.reveal_mask(len(rows), z.shape[1], keep, np.random.default_rng(seed))
    return np.where(mask, z, np.nan), mask


def test_additive_completion_recovers_an_additive_matrix():
    observed, mask = hide(ADDITIVE, [0, 5], keep=10)
    np.testing.assert_allclose(lr.complete_additive(observed), ADDITIVE, atol=1e-8)


def test_mf_completion_recovers_biased_low_rank_matrix():
    rng = np.random.default_rng(3)
    z = ADDITIVE + rng.normal(size=(12, 2)) @ rng.normal(size=(2, 80))
    observed, mask = hide(z, [0, 1, 2], keep=30)
    completed = lr.complete_mf(observed, rank=2, reg=1e-6, sweeps=200)
    assert np.abs(completed - z)[~mask].max() < 1e-3
    assert np.array_equal(completed[mask], z[mask])


def test_knn_completion_copies_the_residual_of_an_identical_row():
    rng = np.random.default_rng(4)
    residuals = rng.normal(size=(12, 80))
    residuals -= residuals.mean(axis=1, keepdims=True)
    residuals -= residuals.mean(axis=0, keepdims=True)
    z = ADDITIVE + residuals
    z[11] = z[3] + 0.7  # row 11 = row 3 shifted: same residual
    observed, mask = hide(z, [11], keep=40)
    completed = lr.complete_knn(observed, k=1)
    additive = lr.complete_additive(observed)
    assert np.corrcoef((completed - additive)[11, ~mask[11]], residuals[3, ~mask[11]])[0, 1] > 0.99
    with pytest.raises(ValueError, match="k"):
        lr.complete_knn(observed, k=0)


def test_completion_refuses_unobservable_rows_and_columns():
    z = np.ones((3, 4))
    z[1] = np.nan
    with pytest.raises(ValueError, match="row"):
        lr.complete_additive(z)
    z = np.ones((3, 4))
    z[:, 2] = np.nan
    with pytest.raises(ValueError, match="column"):
        lr.complete_mf(z)


def test_top_fraction_f1_and_spearman_known_values():
    true = np.arange(10.0)
    assert lr.top_fraction_f1(true, true, 0.2) == 1.0
    assert lr.top_fraction_f1(true, -true, 0.2) == 0.0
    assert lr.top_fraction_f1(true, np.array([0, 1, 2, 3, 4, 5, 6, 7, 9, -1.0]), 0.2) == 0.5  # {8,9} vs {8,7}
    assert lr.spearman(true, true**3) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="fraction"):
        lr.top_fraction_f1(true, true, 1.0)


def test_reveal_mask_draws_without_replacement():
    mask = lr.reveal_mask(5, 20, 7, np.random.default_rng(0))
    assert mask.sum(axis=1).tolist() == [7] * 5
    with pytest.raises(ValueError, match="revealed"):
        lr.reveal_mask(2, 5, 5, np.random.default_rng(0))


def test_evaluate_completion_scores_known_predictors():
    cols = np.repeat(E[None, :], 12, axis=0)
    perfect = lambda observed, rows: cols  # noqa: E731
    scores = lr.evaluate_completion(cols + 0.0, [0, 4], revealed=10, seeds=[0, 1],
                                    predictors={"perfect": perfect, "column mean": lr.column_mean_predictor,
                                                "additive": lr.as_predictor(lr.complete_additive)})
    for name in scores:
        assert scores[name]["rmse"] == pytest.approx(0.0, abs=1e-9)
        assert scores[name]["f1"] == pytest.approx(1.0)
        assert scores[name]["spearman"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="test_rows"):
        lr.evaluate_completion(cols, [0, 0], 10, {"perfect": perfect})


def test_similarity_predictor_fits_a_linear_map_and_row_offsets():
    similarity = np.random.default_rng(5).uniform(size=(12, 80))
    z = 2.0 + 3.0 * similarity
    z[[2, 7]] += np.array([[0.5], [-1.0]])  # test rows carry their own offsets, learned from revealed entries
    scores = lr.evaluate_completion(z, [2, 7], revealed=5, predictors={"sim": lr.similarity_predictor(similarity)})
    assert scores["sim"]["rmse"] == pytest.approx(0.0, abs=1e-9)


def test_example_losses_average_each_sequences_token_losses_in_batches():
    model = build_model(tiny_model_config(), device="cpu")
    tokens = torch.randint(0, 11, (5, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(tokens)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    assert lr.example_losses(model, tokens, batch_size=2) == pytest.approx(expected.mean(1).numpy(), abs=1e-5)


def test_pooled_representations_are_one_position_averaged_row_per_sequence():
    model = build_model(tiny_model_config(), device="cpu")
    tokens = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(1))
    pooled = lr.pooled_representations(model, tokens)
    _, cache = model.run_with_cache(tokens[:1], names_filter=[hook_name("normalized")])
    assert pooled.shape == (3, model.cfg.d_model)
    assert pooled[0] == pytest.approx(cache[hook_name("normalized")][0].mean(0).detach().numpy(), abs=1e-5)


def test_row_cosines_known_values():
    a, b = np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0]])
    assert lr.row_cosines(a, b) == pytest.approx(np.array([[1, 0, -0.5**0.5], [0.5**0.5, 0.5**0.5, -1]]))


def test_mean_ci_is_the_t_interval_and_zero_for_one_value():
    mean, half = lr.mean_ci(np.array([1.0, 2.0, 3.0]))
    assert (mean, half) == pytest.approx((2.0, 4.302653 / 3**0.5), rel=1e-6)  # t(0.975, 2) x sd 1 / sqrt(3)
    assert lr.mean_ci([4.0]) == (4.0, 0.0)


def test_completion_predictors_include_the_similarity_baseline_only_when_given():
    assert set(lr.completion_predictors()) == {"additive", "knn", "mf", "example mean"}
    with_similarity = lr.completion_predictors(similarity=np.ones((3, 4)))
    assert "representation similarity" in with_similarity


def test_complete_row_is_the_last_row_of_mf_completion():
    row = np.where(np.arange(80) % 4 == 0, ADDITIVE[0], np.nan)
    predicted = lr.complete_row(ADDITIVE[1:], row, rank=2, reg=0.01)
    assert predicted == pytest.approx(lr.complete_mf(np.vstack([ADDITIVE[1:], row]), rank=2, reg=0.01)[-1])
    assert np.sqrt(np.mean((predicted - ADDITIVE[0]) ** 2)) < 0.05


def test_first_factor_order_sorts_a_rank_one_matrix_by_its_factors():
    rows, cols = lr.first_factor_order(-RANK1)  # -A x B = A x -B: the row factor is made positive
    assert rows.tolist() == np.argsort(-A).tolist() and cols.tolist() == np.argsort(B).tolist()


def test_paired_tests_are_skipped_for_identical_or_single_pairs():
    a, b = np.array([1.0, 2.0, 3.0, 4.5]), np.array([0.5, 1.0, 2.5, 3.0])
    t_test, wilcoxon = lr.paired_tests(a, b)
    assert 0 < t_test < 0.05 and 0 < wilcoxon <= 1
    assert lr.paired_tests(a, a) == (None, None) and lr.paired_tests(a[:1], b[:1]) == (None, None)


def test_scaled_softmax_sets_the_temperature_by_the_spread():
    scores = np.array([0.0, 1.0, 2.0])
    assert lr.scaled_softmax(scores, 2.0) == pytest.approx(softmax_weights(scores, 2.0 * scores.std()))
    assert lr.scaled_softmax(np.zeros(4)) == pytest.approx(np.full(4, 0.25))


def test_matrix_summary_of_a_rank_one_matrix():
    summary = lr.matrix_summary(RANK1, shuffle_controls=2)
    assert summary.z_mean == pytest.approx(RANK1.mean()) and summary.fits.r2_multiplicative == pytest.approx(1.0)
    assert summary.z_row_mean_std == pytest.approx(RANK1.mean(axis=1).std())
    assert summary.r2_shuffled_rank1 < 0.9 and len(summary.singular_values) == 10
    assert lr.rounded(summary).z_mean == round(summary.z_mean, 4)  # a dataclass's numbers, rounded


def test_replay_summary_reduction_is_relative_to_the_baseline():
    increase = {"none": np.array([1.0, 1.0]), "random": np.array([0.5, 0.7]), "predicted": np.array([0.4, 0.5]),
                "oracle": np.array([0.25, 0.25])}
    summary = lr.replay_summary(increase)
    assert summary["none"] == {"mean_heldout_nll_increase": 1.0, "ci95": 0.0}
    assert summary["oracle"]["reduced_forgetting"] == 0.75 and summary["random"]["reduced_forgetting"] == 0.4
    assert summary["pairs"] == 2 and summary["p_value_predicted_vs_random"] is not None
    negative = lr.replay_summary({**increase, "none": np.array([-1.0, -1.0])})
    assert negative["oracle"]["reduced_forgetting"] is None


def test_rounded_rounds_nested_numbers():
    assert lr.rounded({"a": [1.23456, np.float64(2.0)], "b": {"c": 0.99999}}) == {"a": [1.2346, 2.0], "b": {"c": 1.0}}
