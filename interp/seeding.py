"""The one random-stream scheme: every random draw comes from `(seed, *stream)`.

A stream is a tuple of small integers naming what the draws are for (the
trainer's batches are `(seed, 0, step)`; an analysis names its evaluation or
probe batches with its own constants). Both generators are seeded from
`numpy.random.SeedSequence([seed, *stream])`, so the same key gives the same
draws in torch and numpy alike, different keys give independent streams, and
nothing touches a global random state.
"""

from __future__ import annotations

import numpy as np
import torch

BATCHES = 0  # the trainer's stream: batch `step` is drawn from `generator(seed, BATCHES, step)`


def generator(seed: int, *stream: int) -> torch.Generator:
    """A torch generator determined by `(seed, *stream)` alone."""
    state = np.random.SeedSequence([seed, *stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def rng(seed: int, *stream: int) -> np.random.Generator:
    """A numpy generator determined by `(seed, *stream)` alone."""
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))
