"""Losses and accuracies over labelled token spans, and phases of a loss curve.

A span is a run of tokens sharing a label in `span_of` [batch, pos] (-1:
none), e.g. the value tokens of one attribute in a biography. The prediction
at position p is scored against token p+1, so span metrics look at the
positions whose *target* lies in the span. Task-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def target_spans(span_of: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """The span label of each position's target token (-1 at the last position)."""
    return torch.cat([span_of[:, 1:], torch.full_like(span_of[:, :1], -1)], dim=1)


def span_losses(
    token_losses: Float[Tensor, "batch pos"], span_of: Int[Tensor, "batch pos"], n_spans: int
) -> Float[Tensor, "batch span"]:
    """Cross-entropy summed over each span's tokens; NaN where a row lacks the span."""
    target = target_spans(span_of)
    out = torch.full((token_losses.shape[0], n_spans), float("nan"), device=token_losses.device)
    for span in range(n_spans):
        mask = target == span
        present = mask.any(dim=1)
        out[present, span] = (token_losses * mask)[present].sum(dim=1)
    return out


def span_correct(
    logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"], span_of: Int[Tensor, "batch pos"],
    n_spans: int,
) -> Float[Tensor, "batch span"]:
    """1.0 where every token of the span is the argmax prediction, 0.0 where not, NaN where absent."""
    target = target_spans(span_of)
    hits = logits.argmax(dim=-1)[:, :-1] == tokens[:, 1:]
    hits = torch.cat([hits, torch.ones_like(hits[:, :1])], dim=1)
    out = torch.full((tokens.shape[0], n_spans), float("nan"), device=tokens.device)
    for span in range(n_spans):
        mask = target == span
        present = mask.any(dim=1)
        out[present, span] = (hits | ~mask)[present].all(dim=1).float()
    return out


def span_start_positions(span_of: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos"]:
    """Positions that predict the first token of a span (the query of a recall)."""
    target = target_spans(span_of)
    previous = torch.cat([torch.full_like(span_of[:, :1], -1), span_of[:, :-1]], dim=1)
    starts = (span_of >= 0) & (span_of != previous)
    return torch.cat([starts[:, 1:], torch.zeros_like(starts[:, :1])], dim=1) & (target >= 0)


def confidence(logits: Float[Tensor, "batch pos vocab"], positions: Bool[Tensor, "batch pos"]) -> dict[str, float]:
    """Mean max-probability and entropy (nats) of the predictions at `positions`."""
    log_probs = logits[positions].float().log_softmax(dim=-1)
    probs = log_probs.exp()
    return {"max_prob": float(probs.max(dim=-1).values.mean()),
            "entropy": float(-(probs * log_probs).sum(dim=-1).mean())}


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average (shrinking at the ends)."""
    values = np.asarray(values, dtype=float)
    if window <= 1:
        return values
    # The centred part of the full convolution: np.convolve(mode="same") for series at
    # least as long as the window, and still one value per point for shorter ones.
    kernel, start, n = np.ones(window), (window - 1) // 2, len(values)
    sums = np.convolve(values, kernel)[start : start + n]
    return sums / np.convolve(np.ones_like(values), kernel)[start : start + n]


def phase_boundaries(
    steps: np.ndarray, values: np.ndarray, baseline: float, delta: float = 0.1, window: int = 1
) -> tuple[int | None, int | None]:
    """`(phase1_end, plateau_end)` of a loss curve that falls to `baseline`, stays,
    then falls below it: the first step where the smoothed curve is within
    `delta` above the baseline, and the first later step where it is more than
    `delta` below. None where a boundary is not reached."""
    steps, values = np.asarray(steps), smooth(values, window)
    if steps.shape != values.shape:
        raise ValueError(f"steps, values: expected equal shapes, got {steps.shape} and {values.shape}")
    reached = np.flatnonzero(values <= baseline + delta)
    if len(reached) == 0:
        return None, None
    first = reached[0]
    below = np.flatnonzero(values[first:] < baseline - delta)
    return int(steps[first]), (int(steps[first + below[0]]) if len(below) else None)


def first_crossing(steps: np.ndarray, values: np.ndarray, level: float) -> int | None:
    """The first step at which `values` reach `level` (None if they never do)."""
    above = np.nonzero(values >= level)[0]
    return int(steps[above[0]]) if len(above) else None


def timing(step: int | None, reference: int | None, tolerance: int = 0) -> str:
    """When `step` comes relative to `reference` (e.g. two curves' crossings): "before",
    "with" (within `tolerance` steps, e.g. the spacing of the checkpoints measured), "after",
    or "never" when `step` is None ("undetermined" when only `reference` is)."""
    if step is None:
        return "never"
    if reference is None:
        return "undetermined"
    return "with" if abs(step - reference) <= tolerance else "before" if step < reference else "after"


def halfway_step(steps: np.ndarray, values: np.ndarray) -> int | None:
    """The first step at which `values` have covered half their way from the first value to
    the last, in whichever direction they go (None for a flat curve)."""
    start, end = float(values[0]), float(values[-1])
    if start == end:
        return None
    covered = (values - start) / (end - start)
    return first_crossing(steps, covered, 0.5)


def phase_change(steps: np.ndarray, loss: np.ndarray, min_drop: float = 0.5) -> tuple[int | None, float, float]:
    """(step, before, after) of a drop in a loss curve.

    `before` is the plateau level (median over the first 20% of training after
    step 0), `after` the final value; the change step is the first step where
    the loss falls below their midpoint. No step is returned if the loss fell
    by less than `min_drop`.
    """
    early = loss[(steps > 0) & (steps <= 0.2 * steps.max())]
    before = float(np.median(early if len(early) else loss[:1]))
    after = float(loss[-1])
    if before - after < min_drop:
        return None, before, after
    below = np.nonzero(loss < (before + after) / 2)[0]
    below = below[steps[below] > 0]
    return (int(steps[below[0]]) if len(below) else None), before, after


@dataclass(frozen=True)
class PlateauPhases:
    """`phase_boundaries` with the plateau's length and its ratio to phase 1's (None where undefined)."""

    phase1_end: int | None
    plateau_end: int | None
    plateau_length: int | None
    plateau_over_phase1: float | None


def plateau_phases(
    steps: np.ndarray, values: np.ndarray, baseline: float, delta: float = 0.1, window: int = 1
) -> PlateauPhases:
    """The `PlateauPhases` of a loss curve."""
    phase1_end, plateau_end = phase_boundaries(steps, values, baseline, delta, window)
    length = None if phase1_end is None or plateau_end is None else plateau_end - phase1_end
    return PlateauPhases(phase1_end, plateau_end, length,
                         None if length is None or not phase1_end else length / phase1_end)


def plateau_end_settled(
    steps: np.ndarray, values: np.ndarray, baseline: float, delta: float = 0.1, window: int = 1
) -> bool:
    """Whether the curve so far has a plateau end (`phase_boundaries`) that more points
    cannot move: the smoothing window around it is complete (e.g. to stop a run there)."""
    steps = np.asarray(steps)
    _, end = phase_boundaries(steps, values, baseline, delta, window)
    return end is not None and int(np.flatnonzero(steps == end)[0]) + window // 2 < len(steps)


def near_baseline(
    steps: np.ndarray, values: np.ndarray, baseline: float, window: int, until: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(steps, values - baseline, smoothed values - baseline)` from where the smoothed
    curve is first within 1 of the baseline up to step `until`: a plateau at a scale
    where a small band around the baseline is visible."""
    excess, smoothed = values - baseline, smooth(values, window) - baseline
    keep = (np.arange(len(steps)) >= np.argmax(smoothed <= 1)) & (steps <= until)
    return steps[keep], excess[keep], smoothed[keep]


@dataclass(frozen=True)
class PowerLaw:
    """`y ≈ prefactor * x^exponent`, with the R² of the fit in log-log space."""

    exponent: float
    prefactor: float
    r2: float


def power_law_fit(x: np.ndarray, y: np.ndarray) -> PowerLaw | None:
    """The power law through positive `(x, y)` by least squares in log-log space (None with < 2 points)."""
    if len(x) < 2:
        return None
    lx, ly = np.log(x), np.log(y)
    slope, intercept = np.polyfit(lx, ly, 1)
    residual = ly - (slope * lx + intercept)
    total = ((ly - ly.mean()) ** 2).sum()
    r2 = float(1 - (residual**2).sum() / total) if total > 0 else 1.0
    return PowerLaw(float(slope), float(np.exp(intercept)), r2)


def first_below(steps: np.ndarray, values: np.ndarray, level: float) -> int | None:
    """The first step at which `values` are below `level` (None if they never are)."""
    below = np.flatnonzero(np.asarray(values) < level)
    return int(steps[below[0]]) if len(below) else None


@dataclass(frozen=True)
class PhaseRow:
    """One run's row in a table of runs (`CurvePhases.row`): its phases and final values."""

    phase1_end: int | None
    plateau_end: int | None
    plateau_length: int | None
    final_loss: float
    final_accuracy: float
    last_step: int


@dataclass(frozen=True)
class CurvePhases(PlateauPhases):
    """`PlateauPhases` of a loss curve with its `final_loss`, the `final_accuracy` of the
    accuracy curve evaluated beside it, and its `last_step`."""

    final_loss: float
    final_accuracy: float
    last_step: int

    def row(self, digits: int = 4) -> PhaseRow:
        """The `PhaseRow`, its losses rounded to `digits` (the ratio `plateau_over_phase1` is left out)."""
        return PhaseRow(self.phase1_end, self.plateau_end, self.plateau_length, round(self.final_loss, digits),
                        round(self.final_accuracy, digits), self.last_step)


def curve_phases(
    steps: np.ndarray, loss: np.ndarray, accuracy: np.ndarray, baseline: float, delta: float = 0.1, window: int = 1
) -> CurvePhases:
    """The `CurvePhases` of a loss curve and the accuracy curve evaluated beside it."""
    plateau = plateau_phases(steps, loss, baseline, delta, window)
    return CurvePhases(plateau.phase1_end, plateau.plateau_end, plateau.plateau_length, plateau.plateau_over_phase1,
                       float(loss[-1]), float(accuracy[-1]), int(steps[-1]))


class PlateauWatch:
    """A loss curve fed one evaluation at a time (a repeated step replaces its value), which
    says when it has a plateau end that more points cannot move (`plateau_end_settled`):
    e.g. to stop a training run there."""

    def __init__(self, baseline: float, delta: float = 0.1, window: int = 1):
        self.baseline, self.delta, self.window = baseline, delta, window
        self.values: dict[int, float] = {}

    def observe(self, step: int, value: float) -> bool:
        """Record the evaluation at `step`; whether the plateau end is now settled."""
        self.values[step] = value
        steps, values = np.array(list(self.values)), np.array(list(self.values.values()))
        return plateau_end_settled(steps, values, self.baseline, self.delta, self.window)
