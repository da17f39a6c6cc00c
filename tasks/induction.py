"""Synthetic sequences whose repeats only an in-context mechanism can predict.

- `RecurringPairs` (Bietti et al. 2023, "Birth of a transformer"): each sequence
  draws its own few trigger tokens, each always followed by its own output token.
  At a repeated trigger the output is predictable only by canonical induction:
  find the earlier occurrence of the current token and copy what followed it.
  The token before a trigger is random, so a circuit matching on the previous
  token instead cannot help. This is the induction-heads analysis's task.
- `RepeatedSegments` (Olsson et al. 2022): one segment of `k` tokens occurs twice
  at random offsets. Small attention-only models solve it with a shifted copy
  circuit (matching the previous token, attending one past the induction target)
  rather than a canonical induction head; kept for studying that contrast.

Both mark `repeat_mask`: the positions whose next token is predictable in context.
Filler tokens are uniform, or follow a skip-bigram (`token[t] = perm[token[t-2]]`
with probability `skip_bigram`), local structure that rewards a previous-token head.
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
        return filler_tokens(n, self.cfg.seq_len, self.cfg.d_vocab, self.cfg.skip_bigram, self.permutation, generator)

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


def filler_tokens(
    n: int, seq_len: int, d_vocab: int, skip_bigram: float, permutation: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Background tokens: uniform, or `permutation[token two back]` where the skip-bigram is drawn."""
    tokens = torch.randint(0, d_vocab, (n, seq_len), generator=generator)
    if skip_bigram:
        follow = torch.rand(n, seq_len, generator=generator) < skip_bigram
        for pos in range(2, seq_len):
            tokens[:, pos] = torch.where(follow[:, pos], permutation[tokens[:, pos - 2]], tokens[:, pos])
    return tokens


@dataclass(frozen=True)
class RecurringPairsConfig:
    """`n_triggers` trigger tokens per sequence (distinct, drawn per sequence), each
    placed at a position with probability `pair_rate / n_triggers` and followed by
    its output token."""

    d_vocab: int = 64
    seq_len: int = 64
    n_triggers: int = 4
    pair_rate: float = 0.15
    skip_bigram: float = 0.0
    structure_seed: int = 0

    def __post_init__(self) -> None:
        require_positive(self, "d_vocab", "seq_len", "n_triggers")
        require(self.seq_len >= 4, "seq_len", "at least 4 positions", self.seq_len)
        require(self.n_triggers <= self.d_vocab, "n_triggers", f"<= d_vocab={self.d_vocab}", self.n_triggers)
        require(0.0 < self.pair_rate < 1.0, "pair_rate", "a probability in (0, 1)", self.pair_rate)
        require(0.0 <= self.skip_bigram <= 1.0, "skip_bigram", "a probability in [0, 1]", self.skip_bigram)


class RecurringPairs:
    """Data source for the trainer and evaluation batches for probes.

    Pairs never overlap: a trigger is placed at `t` only if none was drawn at
    `t - 1`. `repeat_mask` marks triggers whose trigger token occurred before in
    the sequence (the prediction there, of the output token, needs induction).
    """

    def __init__(self, cfg: RecurringPairsConfig):
        self.cfg = cfg
        self.permutation = torch.randperm(cfg.d_vocab, generator=torch.Generator().manual_seed(cfg.structure_seed))

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        cfg = self.cfg
        tokens = filler_tokens(n, cfg.seq_len, cfg.d_vocab, cfg.skip_bigram, self.permutation, generator)
        triggers = torch.rand(n, cfg.d_vocab, generator=generator).argsort(dim=1)[:, : cfg.n_triggers]
        outputs = torch.randint(0, cfg.d_vocab, (n, cfg.n_triggers), generator=generator)
        drawn = torch.rand(n, cfg.seq_len, generator=generator) < cfg.pair_rate
        which = torch.randint(0, cfg.n_triggers, (n, cfg.seq_len), generator=generator)
        placed = drawn & ~torch.cat([torch.zeros(n, 1, dtype=torch.bool), drawn[:, :-1]], dim=1)
        placed[:, -1] = False  # a trigger needs a position for its output
        one_hot = torch.nn.functional.one_hot(which, cfg.n_triggers) * placed.unsqueeze(-1)
        earlier = (one_hot.cumsum(dim=1) - one_hot).gather(2, which.unsqueeze(-1)).squeeze(-1)
        tokens = torch.where(placed, triggers.gather(1, which), tokens)
        after = torch.cat([torch.zeros(n, 1, dtype=torch.bool), placed[:, :-1]], dim=1)
        previous_which = torch.cat([which[:, :1], which[:, :-1]], dim=1)
        tokens = torch.where(after, outputs.gather(1, previous_which), tokens)
        return {"tokens": tokens, "repeat_mask": placed & (earlier > 0)}

    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        return self.sample(batch_size, generator)


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform integer in [low, high] inclusive."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))

