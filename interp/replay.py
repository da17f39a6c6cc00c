"""Replay: interleave examples from an upstream pool into a data source's batches.

`Replay(source, pool, ratio)` serves the source's batch plus, on average,
`ratio` pool examples per source example ("one upstream example per 1/r new
examples"). Pool examples are drawn without replacement in an order that is
uniform, or sequential sampling proportional to `weights` (e.g.
`softmax_weights(predicted_forgetting, temperature)`); when the pool is used
up a new order starts. Like every data source, a batch depends only on the step.

Replayed rows are appended to the source's batch key by key, so the pool must
carry the same keys as the source's batches (annotations included, e.g. a
biography's `attribute_of`); only `loss_mask` may be missing on either side
(everything scored).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from interp import seeding
from interp.model import Batch


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
    rng = seeding.rng(seed, round_index)
    if weights is None:
        return rng.permutation(n)
    with np.errstate(divide="ignore"):
        keys = np.log(weights) + rng.gumbel(size=n)
    return np.argsort(-keys, kind="stable")


class Replay:
    def __init__(self, source, pool: Batch, ratio: float, weights: np.ndarray | None = None, seed: int = 0):
        if "tokens" not in pool:
            raise ValueError(f"pool: expected a 'tokens' tensor, got keys {sorted(pool)}")
        n = pool["tokens"].shape[0]
        ragged = sorted(key for key, value in pool.items() if value.shape[0] != n)
        if ragged:
            raise ValueError(f"pool: keys {ragged} do not have {n} rows like 'tokens'")
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
        indices = torch.from_numpy(self.replayed(step, batch_size))
        if len(indices) == 0:
            return batch
        return merge_batches(batch, {key: value[indices] for key, value in self.pool.items()})


def merge_batches(first: Batch, second: Batch) -> Batch:
    """Rows of `second` appended to `first`, key by key; a missing `loss_mask`
    means every position is scored."""
    missing = sorted((set(first) ^ set(second)) - {"loss_mask"})
    if missing:
        raise ValueError(f"replay: keys {missing} are in only one of the source batch and the pool; "
                         "give the pool the same keys as the source's batches")
    merged = {}
    for key in first.keys() - {"loss_mask"}:
        a, b = first[key], second[key]
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(f"replay: key {key!r} has row shape {tuple(a.shape[1:])} in the source batch "
                             f"but {tuple(b.shape[1:])} in the pool")
        merged[key] = torch.cat([a, b.to(a.dtype)])
    if "loss_mask" in first or "loss_mask" in second:
        masks = [part.get("loss_mask", torch.ones_like(part["tokens"], dtype=torch.bool)).bool()
                 for part in (first, second)]
        merged["loss_mask"] = torch.cat(masks)
    return merged
