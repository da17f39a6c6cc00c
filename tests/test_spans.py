"""interp.metrics.spans on hand-built sequences with known answers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from interp.metrics import spans

# tokens:      bos  a  b  X  Y  .  c  Z  .
# span_of:     -1  -1 -1  0  0 -1 -1  1 -1     (X Y is span 0, Z is span 1)
SPAN_OF = torch.tensor([[-1, -1, -1, 0, 0, -1, -1, 1, -1]])
TOKENS = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 5]])


def test_target_spans_shift_left():
    assert spans.target_spans(SPAN_OF).tolist() == [[-1, -1, 0, 0, -1, -1, 1, -1, -1]]


def test_span_losses_sum_the_losses_predicting_each_span():
    losses = torch.arange(9, dtype=torch.float).view(1, 9)
    out = spans.span_losses(losses, SPAN_OF, 3)
    assert out[0, 0] == 2 + 3 and out[0, 1] == 6
    assert torch.isnan(out[0, 2])


def test_span_correct_needs_every_token_right():
    logits = torch.full((1, 9, 10), -5.0)
    for p in range(8):  # predict the true next token everywhere
        logits[0, p, TOKENS[0, p + 1]] = 5.0
    assert spans.span_correct(logits, TOKENS, SPAN_OF, 2).tolist() == [[1.0, 1.0]]
    logits[0, 3, TOKENS[0, 4]] = -10.0  # the second token of span 0 is now wrong
    assert spans.span_correct(logits, TOKENS, SPAN_OF, 2).tolist() == [[0.0, 1.0]]


def test_span_start_positions_are_the_queries():
    assert spans.span_start_positions(SPAN_OF).nonzero()[:, 1].tolist() == [2, 6]


def test_confidence_of_uniform_and_peaked_predictions():
    logits = torch.zeros((1, 2, 4))
    logits[0, 1, 0] = 100.0
    uniform = spans.confidence(logits, torch.tensor([[True, False]]))
    assert uniform["max_prob"] == pytest.approx(0.25) and uniform["entropy"] == pytest.approx(np.log(4))
    peaked = spans.confidence(logits, torch.tensor([[False, True]]))
    assert peaked["max_prob"] == pytest.approx(1.0) and peaked["entropy"] == pytest.approx(0.0, abs=1e-6)


def test_phase_boundaries_of_a_three_phase_curve():
    steps = np.arange(0, 1000, 10)
    curve = np.where(steps < 100, 8 - 3 * steps / 100, 5.0)  # phase 1 reaches the baseline 5 at step 100
    curve = np.where(steps >= 600, 5 - (steps - 600) / 100, curve)  # knowledge from step 600
    assert spans.phase_boundaries(steps, curve, baseline=5.0, delta=0.1) == (100, 620)
    assert spans.phase_boundaries(steps, np.full(100, 9.0), baseline=5.0) == (None, None)
    assert spans.phase_boundaries(steps, np.full(100, 5.0), baseline=5.0) == (0, None)
    with pytest.raises(ValueError, match="steps"):
        spans.phase_boundaries(steps, curve[:5], 5.0)


def test_smooth_keeps_a_constant_and_averages_a_spike():
    assert spans.smooth(np.ones(7), 3).tolist() == [1.0] * 7
    assert spans.smooth(np.array([0, 0, 3.0, 0, 0]), 3).tolist() == [0, 1, 1, 1, 0]


def test_smooth_a_series_shorter_than_the_window():
    assert spans.smooth(np.array([2.0]), 3).tolist() == [2.0]
    assert spans.smooth(np.array([2.0, 4.0]), 5).tolist() == [3.0, 3.0]
    assert spans.phase_boundaries(np.array([50]), np.array([5.0]), baseline=5.0, window=3) == (50, None)


def test_phase_change_on_a_known_curve():
    steps = np.arange(0, 1001, 10)
    loss = np.where(steps < 600, 4.0, 1.0)
    loss[0] = 5.0
    step, before, after = spans.phase_change(steps, loss)
    assert (step, before, after) == (600, 4.0, 1.0)
    assert spans.phase_change(steps, np.full(len(steps), 4.0))[0] is None


def test_timing_of_one_step_against_another():
    assert [spans.timing(100, 300), spans.timing(300, 100), spans.timing(250, 300, tolerance=50)] == [
        "before", "after", "with"]
    assert (spans.timing(None, 300), spans.timing(100, None)) == ("never", "undetermined")


def test_first_crossing():
    steps = np.array([0, 10, 20, 30])
    assert spans.first_crossing(steps, np.array([0.0, 0.2, 0.6, 0.9]), 0.5) == 20
    assert spans.first_crossing(steps, np.zeros(4), 0.5) is None


def test_plateau_phases_add_the_length_and_its_ratio_to_phase_1():
    steps = np.arange(0, 1000, 10)
    curve = np.where(steps < 100, 8 - 3 * steps / 100, 5.0)
    curve = np.where(steps >= 600, 5 - (steps - 600) / 100, curve)
    assert spans.plateau_phases(steps, curve, baseline=5.0) == spans.PlateauPhases(
        phase1_end=100, plateau_end=620, plateau_length=520, plateau_over_phase1=5.2)
    assert spans.plateau_phases(steps, np.full(100, 5.0), baseline=5.0) == spans.PlateauPhases(
        phase1_end=0, plateau_end=None, plateau_length=None, plateau_over_phase1=None)


def test_plateau_end_settles_once_its_smoothing_window_is_complete():
    steps = np.arange(0, 60, 10)
    loss = np.array([9.0, 6.0, 3.5, 3.0, 2.7, 2.0])
    assert not spans.plateau_end_settled(steps[:4], loss[:4], 3.0, 0.1, window=3)  # no end yet
    # smoothed over 3 (2 at the end), the loss is first 0.1 below the baseline at step 40, the last point
    assert spans.phase_boundaries(steps[:5], loss[:5], 3.0, 0.1, window=3)[1] == 40
    assert not spans.plateau_end_settled(steps[:5], loss[:5], 3.0, 0.1, window=3)
    assert spans.plateau_end_settled(steps, loss, 3.0, 0.1, window=3)  # the point after it completes the window


def test_near_baseline_starts_within_one_of_the_baseline_and_ends_at_until():
    steps = np.arange(0, 600, 100)
    loss = np.array([9.0, 6.0, 3.5, 3.0, 2.9, 2.0])
    kept, excess, smoothed = spans.near_baseline(steps, loss, 3.0, window=1, until=400)
    assert kept.tolist() == [200, 300, 400] and excess == pytest.approx([0.5, 0.0, -0.1])
    assert smoothed == pytest.approx(excess)


def test_power_law_fit_recovers_a_known_law():
    ns = np.array([250.0, 1000.0, 4000.0])
    fit = spans.power_law_fit(ns, 0.43 * ns**0.81)
    assert fit.exponent == pytest.approx(0.81) and fit.prefactor == pytest.approx(0.43)
    assert fit.r2 == pytest.approx(1.0)
    assert spans.power_law_fit(ns[:1], ns[:1]) is None


def test_first_below():
    steps = np.array([0, 10, 20, 30])
    assert spans.first_below(steps, np.array([3.0, 2.5, 2.0, 1.0]), 2.5) == 20
    assert spans.first_below(steps, np.full(4, 3.0), 2.5) is None


def test_curve_phases_add_the_final_values_and_a_phase_row_rounds_them():
    steps = np.arange(0, 1000, 10)
    curve = np.where(steps < 100, 8 - 3 * steps / 100, 5.0)
    curve = np.where(steps >= 600, 5 - (steps - 600) / 100, curve)
    phases = spans.curve_phases(steps, curve, steps / 1000, baseline=5.0)
    assert phases == spans.CurvePhases(phase1_end=100, plateau_end=620, plateau_length=520, plateau_over_phase1=5.2,
                                       final_loss=pytest.approx(1.1), final_accuracy=0.99, last_step=990)
    assert type(phases.last_step) is int and type(phases.final_loss) is float
    row = replace(phases, final_loss=1.234567).row()
    assert row == spans.PhaseRow(phase1_end=100, plateau_end=620, plateau_length=520, final_loss=1.2346,
                                 final_accuracy=0.99, last_step=990)
    flat = spans.curve_phases(steps, np.full(100, 9.0), steps / 1000, baseline=5.0).row()
    assert flat == spans.PhaseRow(phase1_end=None, plateau_end=None, plateau_length=None, final_loss=9.0,
                                  final_accuracy=0.99, last_step=990)


def test_plateau_watch_settles_when_the_whole_curve_does():
    steps = np.arange(0, 60, 10)
    loss = np.array([9.0, 6.0, 3.5, 3.0, 2.7, 2.0])
    watch = spans.PlateauWatch(3.0, 0.1, window=3)
    settled = [watch.observe(int(s), v) for s, v in zip(steps, loss, strict=True)]
    expected = [spans.plateau_end_settled(steps[: i + 1], loss[: i + 1], 3.0, 0.1, window=3) for i in range(6)]
    assert settled == expected == [False] * 5 + [True]
    watch.observe(50, 2.5)  # a step evaluated again replaces its value
    assert watch.values == dict(zip(steps.tolist(), [9.0, 6.0, 3.5, 3.0, 2.7, 2.5], strict=True))
