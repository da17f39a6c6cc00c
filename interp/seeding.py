"""The one random-stream scheme: every random draw comes from `(seed, *stream)`.

A stream is a tuple of small integers: first what the draws are for (a named
constant), then which of them (a step, an index), e.g. the trainer's batch of
`step` is `generator(seed, BATCHES, step)`. Both generators are seeded from
`numpy.random.SeedSequence([seed, *stream])`, so the same key gives the same
draws in torch and numpy alike, different keys give independent streams, and
nothing touches a global random state. (SeedSequence pads its entropy with zeros,
so a trailing 0 names the same stream: `(seed, s)` is `(seed, s, 0)`.)

The library's own streams are named here; an analysis or a task names its
evaluation and probe batches with constants of its own module.
"""

from __future__ import annotations

import numpy as np
import torch

BATCHES = 0
"""The trainer's: the batch of `step` is drawn from `generator(seed, BATCHES, step)`."""
CLI_BATCHES = 2
"""The batches `interp probe` and `interp circuit` draw from their `--seed`."""
LINEAR_PROBES = 21
"""A linear probe's split, folds and control labels (`interp.metrics.probe_fitting`)."""
LLC_BATCHES = 31
"""The SGLD minibatches of an LLC estimate's chain `c`: `generator(seed, LLC_BATCHES, c)` (`interp.metrics.llc`)."""
LLC_NOISE = 32
"""The seed of chain `c`'s SGLD noise: `generator(seed, LLC_NOISE, c)`."""
LOSS_CURVE = 41
"""The default batch of a checkpoint source's loss curve (`interp.metrics.loss_curve`)."""
EXAMPLES = 9001
"""The explorer's example sequence (`interp view`), apart from any analysis's streams."""


def generator(seed: int, *stream: int) -> torch.Generator:
    """A torch generator determined by `(seed, *stream)` alone."""
    state = np.random.SeedSequence([seed, *stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def rng(seed: int, *stream: int) -> np.random.Generator:
    """A numpy generator determined by `(seed, *stream)` alone."""
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))
