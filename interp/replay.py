"""Replay: interleave examples from an upstream pool into a data source's batches.

`Replay(source, pool, ratio)` serves the source's batch plus, on average,
`ratio` pool examples per source example ("one upstream example per 1/r new
examples"). Pool examples are drawn without replacement in an order that is
uniform, or sequential sampling proportional to `weights` (e.g.
`softmax_weights(predicted_forgetting, temperature)`); when the pool is used
up a new order starts. Like every data source, a batch depends only on the step.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from interp.model import Batch

MERGEABLE_KEYS = ("tokens", "loss_mask")


def softmax_weights(scores: np.ndarray, temperature: float) -> np.ndarray:
    """`softmax(scores / temperature)`, computed stably."""
    if temperature <= 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature}")
    logits = np.asarray(scores, dtype=np.float64) / temperature
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def sampling_order(n: int, weights: np.ndarray | None, seed: int, round_index: int) -> np.ndarray:
    """A permutation of `range(n)`: uniform, or the order in which sequential
    sampling without replacement proportional to `weights` would draw the items
    (Gumbel top-k: sort `log w + Gumbel noise`). Items of weight 0 come last."""
    rng = np.random.default_rng([seed, round_index])
    if weights is None:
        return rng.permutation(n)
    with np.errstate(divide="ignore"):
        keys = np.log(weights) + rng.gumbel(size=n)
    return np.argsort(-keys, kind="stable")


class Replay:
    def __init__(self, source, pool: Batch, ratio: float, weights: np.ndarray | None = None, seed: int = 0):
        unknown = sorted(set(pool) - set(MERGEABLE_KEYS))
        if unknown:
            raise ValueError(f"pool: keys {unknown} cannot be merged; expected only {MERGEABLE_KEYS}")
        n = pool["tokens"].shape[0]
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio: expected replayed examples per source example in (0, 1], got {ratio}")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (n,) or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError(f"weights: expected {n} non-negative weights with a positive sum")
        self.source, self.pool, self.ratio, self.weights, self.seed = source, pool, ratio, weights, seed
        self._orders: dict[int, np.ndarray] = {}

    def _pool_indices(self, start: int, count: int) -> np.ndarray:
        n = self.pool["tokens"].shape[0]
        out = []
        for k in range(start, start + count):
            round_index, position = divmod(k, n)
            if round_index not in self._orders:
                self._orders[round_index] = sampling_order(n, self.weights, self.seed, round_index)
            out.append(self._orders[round_index][position])
        return np.array(out, dtype=np.int64)

    def replayed(self, step: int, batch_size: int) -> np.ndarray:
        """Pool indices replayed at `step`."""
        start = math.floor(step * batch_size * self.ratio)
        return self._pool_indices(start, math.floor((step + 1) * batch_size * self.ratio) - start)

    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        batch = self.source.batch(step, batch_size, generator)
        unknown = sorted(set(batch) - set(MERGEABLE_KEYS))
        if unknown:
            raise ValueError(f"source batch: keys {unknown} cannot be merged with replay; expected {MERGEABLE_KEYS}")
        indices = torch.from_numpy(self.replayed(step, batch_size))
        if len(indices) == 0:
            return batch
        replay = {key: value[indices] for key, value in self.pool.items()}
        merged = {"tokens": torch.cat([batch["tokens"], replay["tokens"]])}
        if "loss_mask" in batch or "loss_mask" in replay:
            masks = [part.get("loss_mask", torch.ones_like(part["tokens"], dtype=torch.bool)).bool()
                     for part in (batch, replay)]
            merged["loss_mask"] = torch.cat(masks)
        return merged
