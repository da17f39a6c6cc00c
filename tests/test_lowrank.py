"""interp.metrics.lowrank on matrices of known structure, against closed-form answers."""

from __future__ import annotations

import numpy as np
import pytest

from interp.metrics import lowrank as lr

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
    assert fits["r2_multiplicative"] == pytest.approx(1.0)
    assert fits["r2_by_rank"] == pytest.approx([1.0] * 5)
    s = lr.singular_values(RANK1)
    assert s[0] == pytest.approx(np.linalg.norm(A) * np.linalg.norm(B))
    assert np.allclose(s[1:], 0.0, atol=1e-10)


def test_additive_matrix_is_fitted_exactly_and_has_rank_two():
    fits = lr.fit_summary(ADDITIVE)
    assert fits["r2_additive"] == pytest.approx(1.0)
    assert fits["r2_by_rank"][1] == pytest.approx(1.0)
    assert fits["r2_by_rank"][0] < 1.0 - 1e-3
    # closed form: the row-only fit explains the variance of the t_i, the column-only that of the e_j
    total = ADDITIVE.var()
    assert fits["r2_row_only"] == pytest.approx(T.var() / total)
    assert fits["r2_column_only"] == pytest.approx(E.var() / total)


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
