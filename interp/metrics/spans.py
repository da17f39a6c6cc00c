"""Losses and accuracies over labelled token spans, and phases of a loss curve.

A span is a run of tokens sharing a label in `span_of` [batch, pos] (-1:
none), e.g. the value tokens of one attribute in a biography. The prediction
at position p is scored against token p+1, so span metrics look at the
positions whose *target* lies in the span. Task-agnostic.
"""

from __future__ import annotations

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
