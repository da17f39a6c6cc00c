"""interp.metrics.recovery on hand-built loss matrices with known answers, and pairwise recovery on a real run."""

from __future__ import annotations

import numpy as np
import pytest

from interp.metrics.recovery import (
    ForgettingSummary,
    circular_offset_means,
    forgetting_summary,
    gap_losses,
    pairwise_recovery,
    prequential_loss,
    recovery_ratio,
    recovery_scores,
    recovery_stats,
    shift_averaged_curve,
    training_episodes,
)
from interp.model import forward, token_losses
from interp.train import TrainConfig, take_steps

CYCLIC_3x2 = np.array([0, 1, 2, 0, 1, 2])  # T=3 items, 2 epochs


def matrix_with(item: int, column: list[float], n_items: int = 3) -> np.ndarray:
    losses = np.full((len(column), n_items), 5.0)
    losses[:, item] = column
    return losses


def test_half_recovered_gap():
    # item 0: trained in episodes 0 and 3; rows 1..3 are after, peak, before.
    losses = matrix_with(0, [5.0, 1.0, 4.0, 2.5, 1.0, 1.5, 2.0])
    assert recovery_scores(losses, CYCLIC_3x2)[0, 0] == pytest.approx((4.0 - 2.5) / (4.0 - 1.0))


def test_no_recovery_and_full_recovery():
    rising = matrix_with(0, [5.0, 1.0, 2.0, 3.0, 1.0, 1.0, 1.0])
    assert recovery_scores(rising, CYCLIC_3x2)[0, 0] == pytest.approx(0.0)
    back = matrix_with(0, [5.0, 1.0, 3.0, 1.0, 1.0, 1.0, 1.0])
    assert recovery_scores(back, CYCLIC_3x2)[0, 0] == pytest.approx(1.0)


def test_no_forgetting_is_nan_not_a_division_by_zero():
    flat = matrix_with(0, [5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert np.isnan(recovery_scores(flat, CYCLIC_3x2)[0, 0])


def test_one_column_per_gap():
    schedule = np.tile(np.arange(4), 5)  # 5 epochs -> 4 gaps
    rng = np.random.default_rng(0)
    scores = recovery_scores(rng.random((len(schedule) + 1, 4)), schedule)
    assert scores.shape == (4, 4)


def test_shift_averaged_curve_aligns_first_trainings():
    schedule = np.array([0, 1, 0, 1])
    # item 0 first trained at episode 0, item 1 at episode 1: rows from there on
    losses = np.array([[3.0, 9.0], [1.0, 3.0], [2.0, 1.0], [0.5, 2.0], [0.4, 0.5]])
    x, curve = shift_averaged_curve(losses, schedule)
    np.testing.assert_array_equal(x, np.arange(4))
    np.testing.assert_allclose(curve, [(3.0 + 3.0) / 2, (1.0 + 1.0) / 2, (2.0 + 2.0) / 2, (0.5 + 0.5) / 2])


def test_prequential_loss_reads_the_item_about_to_be_trained():
    schedule = np.array([0, 1, 0, 1])
    losses = np.array([[3.0, 9.0], [1.0, 4.0], [2.0, 1.0], [0.5, 6.0], [0.4, 0.5]])
    assert prequential_loss(losses, schedule) == pytest.approx((3.0 + 4.0 + 2.0 + 6.0) / 4)
    assert prequential_loss(losses, schedule, from_episode=2) == pytest.approx((2.0 + 6.0) / 2)


def test_training_episodes():
    np.testing.assert_array_equal(training_episodes(CYCLIC_3x2, 2), [2, 5])


@pytest.mark.parametrize(
    ("losses", "schedule", "message"),
    [
        (np.zeros((6, 3)), CYCLIC_3x2, "losses"),  # one row short
        (np.zeros((7, 2)), CYCLIC_3x2, "schedule"),  # item 2 has no column
    ],
)
def test_bad_shapes_name_the_argument(losses, schedule, message):
    with pytest.raises(ValueError, match=message):
        recovery_scores(losses, schedule)


def test_untrained_item_and_bad_start_are_refused():
    with pytest.raises(ValueError, match="never trained"):
        shift_averaged_curve(np.zeros((3, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="from_episode"):
        prequential_loss(np.zeros((3, 2)), np.array([0, 1]), from_episode=2)


def test_gap_losses_and_recovery_ratio():
    # item 0 forgets 3 and recovers 1.5; item 1 forgets 1 and recovers 1; item 2 never forgets.
    losses = np.array([
        [5.0, 5.0, 5.0],
        [1.0, 5.0, 5.0],  # after episode 0 (item 0)
        [4.0, 1.0, 5.0],  # after episode 1 (item 1)
        [2.5, 2.0, 1.0],  # after episode 2 (item 2)
        [1.0, 1.0, 1.0],  # after episode 3 (item 0 again)
        [1.0, 1.0, 1.0],
        [1.0, 1.0, 1.0],
    ])
    after, peak, before = gap_losses(losses, CYCLIC_3x2)
    assert after[:, 0].tolist() == [1.0, 1.0, 1.0]
    assert peak[:, 0].tolist() == [4.0, 2.0, 1.0]
    assert before[:, 0].tolist() == [2.5, 1.0, 1.0]
    scores = recovery_scores(losses, CYCLIC_3x2)[:, 0]
    assert scores[0] == pytest.approx(0.5) and scores[1] == pytest.approx(1.0) and np.isnan(scores[2])
    # weighted by forgetting: (1.5 + 1) / (3 + 1)
    assert recovery_ratio(losses, CYCLIC_3x2)[0] == pytest.approx(2.5 / 4.0)


def test_circular_offset_means_known_values():
    matrix = np.arange(9, dtype=float).reshape(3, 3)
    # offset 1: (0,1),(1,2),(2,0) -> 1, 5, 6; offset 2: (0,2),(1,0),(2,1) -> 2, 3, 7
    assert circular_offset_means(matrix).tolist() == [4.0, 4.0]


class _Fixed:
    """A data source serving the same tokens at every step."""

    def __init__(self, tokens):
        self.tokens = tokens

    def batch(self, step, batch_size, generator):
        return {"tokens": self.tokens[None].expand(batch_size, -1).clone()}


def test_pairwise_recovery_trains_each_row_from_the_same_checkpoint(trained_run):
    run, tokens = trained_run.run, trained_run.tokens
    train_cfg = TrainConfig(steps=3, batch_size=1, optimizer="adam", lr=1e-2)

    def evaluate(model):
        batch = {"tokens": tokens}
        return token_losses(forward(model, batch), batch)[:, :-1].mean(dim=1).detach().cpu().numpy()

    sources = [_Fixed(t) for t in tokens]
    matrix = pairwise_recovery(run, 4, sources, evaluate, train_cfg, steps=3, device="cpu")
    assert matrix.shape == (3, 3)
    assert (np.diag(matrix) > 0).all()  # training on an item lowers its own loss
    # each row starts from the checkpoint again: the order of the sources does not matter
    reversed_rows = pairwise_recovery(run, 4, sources[::-1], evaluate, train_cfg, steps=3, device="cpu")
    np.testing.assert_allclose(reversed_rows, matrix[::-1], atol=1e-6)
    model = run.load(4, device="cpu")
    before = evaluate(model)
    take_steps(model, train_cfg, sources[1], range(3))
    np.testing.assert_allclose(matrix[1], before - evaluate(model), atol=1e-6)


def test_recovery_stats_stack_the_statistics_of_each_run():
    losses = matrix_with(0, [5.0, 1.0, 4.0, 2.5, 1.0, 1.5, 2.0])
    other = matrix_with(1, [5.0, 5.0, 1.0, 3.0, 2.0, 1.0, 1.0])
    stats = recovery_stats([(losses, CYCLIC_3x2), (other.tolist(), CYCLIC_3x2.tolist())], prequential_from=3)
    assert stats.rs.shape == stats.ratio.shape == (2, 1) and stats.prequential.shape == (2,)
    np.testing.assert_allclose(stats.rs[:, 0], [0.5, 0.5])  # item 1 of `other`: forgot 2, recovered 1
    np.testing.assert_allclose(stats.ratio[1], recovery_ratio(other, CYCLIC_3x2))
    assert stats.prequential[0] == pytest.approx(prequential_loss(losses, CYCLIC_3x2, from_episode=3))


def test_recovery_stats_average_shift_averaged_curves_over_their_common_range():
    losses = np.array([[3.0, 9.0], [1.0, 3.0], [2.0, 1.0], [0.5, 2.0], [0.4, 0.5]])
    # item 1 first trained in episode 1, then in episode 2: curves of 4 and of 3 rows
    stats = recovery_stats([(losses, np.array([0, 1, 0, 1])), (losses, np.array([0, 0, 1, 1]))])
    x, curve = stats.shift_averaged_curve()
    np.testing.assert_array_equal(x, np.arange(3))
    np.testing.assert_allclose(curve, [(3.0 + 2.0) / 2, (1.0 + 1.5) / 2, (2.0 + 1.25) / 2])


def test_forgetting_summary_of_a_hand_built_curve():
    steps = np.array([0, 10, 20, 30, 40])
    # From 1.0, the gap to the baseline 5 is 4: the old loss has risen by half of it (to 3.0) at
    # step 20 and peaks at 4.0 at step 30, a rise of 3/4 of the gap.
    old = np.array([1.0, 2.0, 3.5, 4.0, 2.5])
    accuracy, new = np.array([0.9, 0.5, 0.2, 0.1, 0.4]), np.array([5.0, 3.0, 2.0, 1.5, 1.0])
    assert forgetting_summary(steps, old, accuracy, new, baseline=5.0) == ForgettingSummary(
        old_loss_before=1.0, old_loss_peak=4.0, old_loss_peak_step=30, old_loss_after=2.5, old_accuracy_before=0.9,
        old_accuracy_after=0.4, old_accuracy_min=0.1, new_loss_before=5.0, new_loss_after=1.0,
        rise_over_gap_to_baseline=0.75, half_gap_step=20)
    never_half = forgetting_summary(steps[:3], np.array([1.0, 1.5, 1.2]), accuracy[:3], new[:3], baseline=5.0)
    assert (never_half.rise_over_gap_to_baseline, never_half.half_gap_step) == (0.125, None)
    nothing_to_forget = forgetting_summary(steps, old, accuracy, new, baseline=1.0)  # starts at the baseline
    assert (nothing_to_forget.rise_over_gap_to_baseline, nothing_to_forget.half_gap_step) == (None, None)
    assert nothing_to_forget.old_loss_peak_step == 30
