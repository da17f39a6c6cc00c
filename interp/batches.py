"""Probe and patching batches of random repeated tokens, drawn from a CPU generator
(`interp.seeding`): the same generator state gives the same tokens.

`repeated_tokens` is what induction scores read (`interp.metrics.heads.induction_probe`);
`repeated_patch_batch` adds the source run every patching method compares against
(`interp.circuits`): its `SOURCE_KEY` tokens are the ones the patched-in activations come from.
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

from interp.model import Batch

SOURCE_KEY = "source_tokens"


def repeated_tokens(
    n_batch: int, period: int, d_vocab: int, generator: torch.Generator, repeats: int = 2, distinct: bool = False
) -> Int[Tensor, "batch pos"]:
    """Uniform random tokens of length `period`, repeated `repeats` times; `distinct`: no token
    twice within a period (each token of the repeat then has one earlier occurrence, so its
    induction target is unambiguous), which needs `period <= d_vocab`."""
    if not distinct:
        segment = torch.randint(0, d_vocab, (n_batch, period), generator=generator)
    elif period > d_vocab:
        raise ValueError(f"period: at most d_vocab ({d_vocab}) for distinct tokens, got {period}")
    else:
        segment = torch.stack([torch.randperm(d_vocab, generator=generator)[:period] for _ in range(n_batch)])
    return segment.repeat(1, repeats)


def repeated_patch_batch(n: int, period: int, d_vocab: int, generator: torch.Generator) -> Batch:
    """`repeated_tokens(n, period, d_vocab, generator)` (`tokens`), and the same with the
    first copy resampled (`source_tokens`, drawn next from `generator`): the source has no
    earlier copy to induce from, so an edge of the induction circuit carrying the source's
    write breaks the copy. `in_repeat` marks the positions that predict a token of the
    second copy."""
    tokens = repeated_tokens(n, period, d_vocab, generator)
    other = torch.randint(0, d_vocab, (n, period), generator=generator)
    positions = torch.arange(2 * period).expand(n, -1)
    return {"tokens": tokens, SOURCE_KEY: torch.cat([other, tokens[:, :period]], dim=1),
            "in_repeat": positions >= period}
