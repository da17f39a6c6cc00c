"""Forgetting and anticipatory recovery under a fixed schedule of training items.

Inputs are a loss matrix `L[r, i]`, the loss on item `i` after `r` training
episodes (row 0: before training), and `schedule[e]`, the item trained in
episode `e`; so `L` has `len(schedule) + 1` rows. Plain numpy, task-agnostic,
except `pairwise_recovery`, which fine-tunes copies of a checkpoint to build an
item x item recovery matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Float, Int

from interp.checkpoints import Run
from interp.train_config import DataSource, TrainConfig
from interp.train_steps import take_steps

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge


def _check(losses: np.ndarray, schedule: np.ndarray) -> None:
    if losses.ndim != 2 or losses.shape[0] != len(schedule) + 1:
        raise ValueError(
            f"losses: expected shape [len(schedule) + 1, n_items] = [{len(schedule) + 1}, n], got {losses.shape}"
        )
    if len(schedule) and (schedule.min() < 0 or schedule.max() >= losses.shape[1]):
        raise ValueError(f"schedule: item indices must lie in [0, {losses.shape[1] - 1}]")


def training_episodes(schedule: Int[np.ndarray, " episode"], item: int) -> np.ndarray:
    """Episodes in which `item` is trained, in order."""
    return np.flatnonzero(np.asarray(schedule) == item)


def gap_losses(
    losses: Float[np.ndarray, "row item"], schedule: Int[np.ndarray, " episode"]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(after, peak, before)`, each `[item, gap]`: for the gap after an item's
    n-th training (column n-1), its loss just after that training, the highest
    loss until the next one, and the loss just before it. NaN where an item has
    fewer trainings than the most-trained item."""
    losses, schedule = np.asarray(losses, dtype=float), np.asarray(schedule)
    _check(losses, schedule)
    episodes = [training_episodes(schedule, i) for i in range(losses.shape[1])]
    n_gaps = max((len(e) - 1 for e in episodes), default=0)
    after, peak, before = (np.full((losses.shape[1], max(n_gaps, 0)), np.nan) for _ in range(3))
    for item, trained in enumerate(episodes):
        for gap, (start, end) in enumerate(zip(trained[:-1], trained[1:], strict=True)):
            window = losses[start + 1 : end + 1, item]  # from just after training to just before the next
            after[item, gap], peak[item, gap], before[item, gap] = window[0], window.max(), window[-1]
    return after, peak, before


def recovery_scores(
    losses: Float[np.ndarray, "row item"], schedule: Int[np.ndarray, " episode"]
) -> Float[np.ndarray, "item gap"]:
    """Recovery score of each item in each gap between two of its trainings.

    `RS = (l_max - l_before) / (l_max - l_after)` (Yang et al. 2024), from
    `gap_losses`. 0: nothing recovered before the re-encounter; 1: all
    forgetting recovered. NaN where the item was not forgotten at all
    (`l_max == l_after`) or has fewer trainings than the most-trained item.
    The paper's RS(n) is the mean over items of column n-1 (`np.nanmean(scores, axis=0)`).
    """
    after, peak, before = gap_losses(losses, schedule)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(peak > after, (peak - before) / (peak - after), np.nan)


def recovery_ratio(
    losses: Float[np.ndarray, "row item"], schedule: Int[np.ndarray, " episode"]
) -> Float[np.ndarray, " gap"]:
    """Forgetting-weighted recovery per gap: `sum(l_max - l_before) / sum(l_max - l_after)`
    over items. Equals the mean RS when every item forgets equally, and stays
    finite when a few items barely forget (where their own RS explodes)."""
    after, peak, before = gap_losses(losses, schedule)
    forgotten = np.nansum(peak - after, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(forgotten > 0, np.nansum(peak - before, axis=0) / forgotten, np.nan)


def shift_averaged_curve(
    losses: Float[np.ndarray, "row item"], schedule: Int[np.ndarray, " episode"]
) -> tuple[np.ndarray, np.ndarray]:
    """Each item's loss curve shifted so x=0 is just before its first training,
    averaged over items, for the x range every item covers."""
    losses, schedule = np.asarray(losses, dtype=float), np.asarray(schedule)
    _check(losses, schedule)
    firsts = []
    for item in range(losses.shape[1]):
        trained = training_episodes(schedule, item)
        if len(trained) == 0:
            raise ValueError(f"schedule: item {item} is never trained")
        firsts.append(trained[0])
    length = losses.shape[0] - max(firsts)
    curves = np.stack([losses[first : first + length, item] for item, first in enumerate(firsts)])
    return np.arange(length), curves.mean(axis=0)


def prequential_loss(
    losses: Float[np.ndarray, "row item"], schedule: Int[np.ndarray, " episode"], from_episode: int = 0
) -> float:
    """Mean online loss: each episode's item, measured just before it is trained,
    over episodes `from_episode` onwards (e.g. from epoch 2 on: `from_episode=T`)."""
    losses, schedule = np.asarray(losses, dtype=float), np.asarray(schedule)
    _check(losses, schedule)
    if not 0 <= from_episode < len(schedule):
        raise ValueError(f"from_episode: expected an episode in [0, {len(schedule) - 1}], got {from_episode}")
    episodes = np.arange(from_episode, len(schedule))
    return float(losses[episodes, schedule[episodes]].mean())


def circular_offset_means(matrix: Float[np.ndarray, "item item"]) -> Float[np.ndarray, " offset"]:
    """Mean of `matrix[i, (i + k) % n]` for each offset k = 1..n-1 (the diagonal left out):
    e.g. how a pairwise recovery matrix of cyclically ordered items depends on j - i."""
    n = matrix.shape[0]
    return np.array([np.mean([matrix[i, (i + k) % n] for i in range(n)]) for k in range(1, n)])


def pairwise_recovery(
    run: Run,
    step: int,
    sources: Sequence[DataSource],
    evaluate: Callable[[TransformerBridge], np.ndarray],
    train_cfg: TrainConfig,
    steps: int,
    device: str | torch.device | None = None,
) -> Float[np.ndarray, "trained evaluated"]:
    """`R[i, j]`: the drop of item j's loss (`evaluate(model)[j]`) after `steps` steps
    on `sources[i]`, each from the checkpoint at `step` of `run` with a fresh
    optimizer (`take_steps`). Positive off the diagonal: training on i helps j."""
    model = run.load(step, device=device)
    with torch.no_grad():
        before = np.asarray(evaluate(model), dtype=float)
    rows = []
    for source in sources:
        model = run.load(step, into=model)
        take_steps(model, train_cfg, source, range(steps))
        with torch.no_grad():
            rows.append(before - np.asarray(evaluate(model), dtype=float))
    return np.stack(rows)


@dataclass(frozen=True)
class RecoveryStats:
    """Recovery statistics of several runs of one schedule (e.g. one per seed): their
    loss matrices and schedules, the mean RS over items `[run, gap]` (column n-1: the
    gap after the n-th training), `recovery_ratio` `[run, gap]` and `prequential_loss`
    `[run]`."""

    losses: list[np.ndarray]
    schedules: list[np.ndarray]
    rs: Float[np.ndarray, "run gap"]
    ratio: Float[np.ndarray, "run gap"]
    prequential: Float[np.ndarray, " run"]

    def shift_averaged_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """`shift_averaged_curve` of every run, averaged over the runs for the x range all cover."""
        xs, ys = zip(*map(shift_averaged_curve, self.losses, self.schedules), strict=True)
        length = min(len(x) for x in xs)
        return xs[0][:length], np.mean([y[:length] for y in ys], axis=0)


def recovery_stats(
    runs: Sequence[tuple[np.ndarray, np.ndarray]], prequential_from: int = 0
) -> RecoveryStats:
    """`RecoveryStats` of `(losses, schedule)` pairs; the prequential loss counts episodes
    `prequential_from` onwards."""
    losses = [np.asarray(m, dtype=float) for m, _ in runs]
    schedules = [np.asarray(s) for _, s in runs]
    pairs = list(zip(losses, schedules, strict=True))
    return RecoveryStats(
        losses,
        schedules,
        rs=np.array([np.nanmean(recovery_scores(*p), axis=0) for p in pairs], dtype=float),
        ratio=np.array([recovery_ratio(*p) for p in pairs], dtype=float),
        prequential=np.array([prequential_loss(*p, from_episode=prequential_from) for p in pairs], dtype=float),
    )


@dataclass(frozen=True)
class ForgettingSummary:
    """A forgetting curve in numbers: while a model trains on new items, its loss and
    accuracy on the old ones before, at the old loss's peak and after, and its loss on
    the new ones before and after. `rise_over_gap_to_baseline` is the old loss's rise to
    its peak over its starting gap to a no-knowledge `baseline` (1: all forgotten), and
    `half_gap_step` the first step at which it has risen by half that gap; both are None
    where the old loss starts at or above the baseline (nothing to forget), and
    `half_gap_step` also where it never rises that far."""

    old_loss_before: float
    old_loss_peak: float
    old_loss_peak_step: int
    old_loss_after: float
    old_accuracy_before: float
    old_accuracy_after: float
    old_accuracy_min: float
    new_loss_before: float
    new_loss_after: float
    rise_over_gap_to_baseline: float | None
    half_gap_step: int | None


def forgetting_summary(
    steps: Int[np.ndarray, " eval"],
    old_loss: Float[np.ndarray, " eval"],
    old_accuracy: Float[np.ndarray, " eval"],
    new_loss: Float[np.ndarray, " eval"],
    baseline: float,
) -> ForgettingSummary:
    """`ForgettingSummary` of evaluation curves taken at `steps` of training on new items
    (the first evaluation: before it)."""
    steps, old, old_accuracy, new = (np.asarray(a) for a in (steps, old_loss, old_accuracy, new_loss))
    peak, gap = int(np.argmax(old)), baseline - float(old[0])
    halfway = np.flatnonzero(old - old[0] >= gap / 2) if gap > 0 else np.array([], int)
    return ForgettingSummary(
        old_loss_before=float(old[0]),
        old_loss_peak=float(old[peak]),
        old_loss_peak_step=int(steps[peak]),
        old_loss_after=float(old[-1]),
        old_accuracy_before=float(old_accuracy[0]),
        old_accuracy_after=float(old_accuracy[-1]),
        old_accuracy_min=float(old_accuracy.min()),
        new_loss_before=float(new[0]),
        new_loss_after=float(new[-1]),
        rise_over_gap_to_baseline=float(old[peak] - old[0]) / gap if gap > 0 else None,
        half_gap_step=int(steps[halfway[0]]) if len(halfway) else None,
    )
