"""Random-token sequences with one repeated segment (Olsson et al. 2022).

Each sequence is uniform random tokens in which a segment of `k` tokens occurs
twice, at random offsets. Only an induction mechanism (find the earlier copy of
the current token, predict what followed it) can predict the second copy, so the
loss on it drops in a phase change when an induction head forms; the random
offsets rule out a fixed positional shortcut.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.configs import require, require_positive
from interp.model import Batch


@dataclass(frozen=True)
class RepeatedSegmentsConfig:
    """`segments_per_sequence` splits each sequence into that many equal chunks,
    each holding one segment and its copy: more induction targets per sequence.

    `skip_bigram` is the probability that a filler token is `perm[token two back]`
    for a fixed random permutation (drawn from `structure_seed`): local structure
    that rewards a previous-token head on its own, as text does."""

    d_vocab: int = 64
    seq_len: int = 64
    min_segment: int = 8
    max_segment: int = 24
    segments_per_sequence: int = 1
    skip_bigram: float = 0.0
    structure_seed: int = 0

    @property
    def chunk_len(self) -> int:
        return self.seq_len // self.segments_per_sequence

    def __post_init__(self) -> None:
        require_positive(self, "d_vocab", "seq_len", "min_segment", "max_segment", "segments_per_sequence")
        require(self.min_segment >= 2, "min_segment", "at least 2 tokens", self.min_segment)
        require(
            self.min_segment <= self.max_segment,
            "max_segment",
            f">= min_segment={self.min_segment}",
            self.max_segment,
        )
        require(0.0 <= self.skip_bigram <= 1.0, "skip_bigram", "a probability in [0, 1]", self.skip_bigram)
        require(
            2 * self.max_segment <= self.chunk_len,
            "seq_len",
            f">= 2 * max_segment * segments_per_sequence = {2 * self.max_segment * self.segments_per_sequence}",
            self.seq_len,
        )


class RepeatedSegments:
    """Data source for the trainer and evaluation batches for probes.

    Batches carry `repeat_mask`: the positions whose next token lies in the
    second copy (after its first token), i.e. is predictable by induction.
    """

    def __init__(self, cfg: RepeatedSegmentsConfig):
        self.cfg = cfg
        self.permutation = torch.randperm(cfg.d_vocab, generator=torch.Generator().manual_seed(cfg.structure_seed))

    def filler(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Background tokens: uniform, or following the skip-bigram where drawn."""
        cfg = self.cfg
        tokens = torch.randint(0, cfg.d_vocab, (n, cfg.seq_len), generator=generator)
        if cfg.skip_bigram:
            follow = torch.rand(n, cfg.seq_len, generator=generator) < cfg.skip_bigram
            for pos in range(2, cfg.seq_len):
                tokens[:, pos] = torch.where(follow[:, pos], self.permutation[tokens[:, pos - 2]], tokens[:, pos])
        return tokens

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        cfg = self.cfg
        tokens = self.filler(n, generator)
        repeat_mask = torch.zeros(n, cfg.seq_len, dtype=torch.bool)
        chunks = cfg.segments_per_sequence
        lengths = torch.randint(cfg.min_segment, cfg.max_segment + 1, (n, chunks), generator=generator)
        for i, chunk, k in ((i, c, int(lengths[i, c])) for i in range(n) for c in range(chunks)):
            start = chunk * cfg.chunk_len
            first = start + _randint(0, cfg.chunk_len - 2 * k, generator)
            second = _randint(first + k, start + cfg.chunk_len - k, generator)
            tokens[i, second : second + k] = tokens[i, first : first + k]
            repeat_mask[i, second : second + k - 1] = True
        return {"tokens": tokens, "repeat_mask": repeat_mask}

    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        return self.sample(batch_size, generator)


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform integer in [low, high] inclusive."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))

