"""Forgetting and anticipatory recovery under a fixed schedule of training items.

Inputs are a loss matrix `L[r, i]`, the loss on item `i` after `r` training
episodes (row 0: before training), and `schedule[e]`, the item trained in
episode `e`; so `L` has `len(schedule) + 1` rows. Plain numpy, task-agnostic.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, Int


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
