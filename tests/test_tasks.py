"""tasks.induction.RepeatedSegments: the planted repeat, its mask, determinism and
config validation."""

from __future__ import annotations

import pytest
import torch

from interp.configs import ConfigError
from tasks.induction import RecurringPairs, RecurringPairsConfig, RepeatedSegments, RepeatedSegmentsConfig


def mask_runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a 1-D bool tensor."""
    runs, start = [], None
    for i, v in enumerate(row.tolist() + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


CONFIGS = [
    RepeatedSegmentsConfig(d_vocab=64, seq_len=64, min_segment=8, max_segment=24),
    RepeatedSegmentsConfig(d_vocab=5, seq_len=20, min_segment=2, max_segment=10),  # tight: 2k may equal seq_len
    RepeatedSegmentsConfig(d_vocab=50, seq_len=16, min_segment=8, max_segment=8),  # copies forced adjacent
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "tight", "exact-fit"])
def test_masked_positions_are_predictable_from_the_earlier_copy(cfg):
    batch = RepeatedSegments(cfg).sample(64, torch.Generator().manual_seed(0))
    tokens, mask = batch["tokens"], batch["repeat_mask"]
    assert tokens.shape == mask.shape == (64, cfg.seq_len)
    assert mask.dtype == torch.bool
    assert tokens.min() >= 0 and tokens.max() < cfg.d_vocab
    for row_tokens, row_mask in zip(tokens, mask, strict=True):
        runs = mask_runs(row_mask)
        assert len(runs) == 1, "exactly one repeated segment per sequence"
        second, n_masked = runs[0]
        k = n_masked + 1  # the mask covers the second copy minus its last position
        assert cfg.min_segment <= k <= cfg.max_segment
        assert second + k <= cfg.seq_len
        # the earlier copy: a non-overlapping segment of length k equal to the second copy
        offsets = [
            d
            for d in range(k, second + 1)
            if torch.equal(row_tokens[second - d : second - d + k], row_tokens[second : second + k])
        ]
        assert offsets, "no earlier copy of the repeated segment"
        # for every masked position i, the next token equals the token right after the
        # earlier occurrence of tokens[i]
        for d in offsets[:1]:
            for i in range(second, second + k - 1):
                assert row_mask[i]
                assert row_tokens[i] == row_tokens[i - d]
                assert row_tokens[i + 1] == row_tokens[i - d + 1]


def test_mask_excludes_the_first_token_of_the_second_copy_prediction():
    """Position second-1 predicts the second copy's first token, which is not
    predictable by induction, so it must not be in the mask."""
    cfg = RepeatedSegmentsConfig(d_vocab=50, seq_len=16, min_segment=8, max_segment=8)
    batch = RepeatedSegments(cfg).sample(8, torch.Generator().manual_seed(1))
    # with seq_len == 2k the copies sit at 0 and k
    expected = torch.zeros(16, dtype=torch.bool)
    expected[8:15] = True
    assert (batch["repeat_mask"] == expected).all()
    assert torch.equal(batch["tokens"][:, :8], batch["tokens"][:, 8:])


def test_segment_lengths_and_offsets_vary():
    cfg = RepeatedSegmentsConfig(d_vocab=64, seq_len=64, min_segment=8, max_segment=24)
    mask = RepeatedSegments(cfg).sample(200, torch.Generator().manual_seed(2))["repeat_mask"]
    starts = {mask_runs(row)[0][0] for row in mask}
    lengths = {mask_runs(row)[0][1] + 1 for row in mask}
    assert len(starts) > 10
    assert min(lengths) == 8 and max(lengths) == 24


def test_sampling_is_deterministic_given_the_generator():
    source = RepeatedSegments(RepeatedSegmentsConfig())
    a = source.sample(16, torch.Generator().manual_seed(7))
    b = source.sample(16, torch.Generator().manual_seed(7))
    c = source.sample(16, torch.Generator().manual_seed(8))
    assert torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["repeat_mask"], b["repeat_mask"])
    assert not torch.equal(a["tokens"], c["tokens"])
    # the trainer's entry point is the same pure function of the generator
    d = source.batch(123, 16, torch.Generator().manual_seed(7))
    assert torch.equal(a["tokens"], d["tokens"]) and torch.equal(a["repeat_mask"], d["repeat_mask"])


def test_sampling_does_not_touch_global_rng():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    RepeatedSegments(RepeatedSegmentsConfig()).sample(4, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(
    "kwargs, field, bad",
    [
        (dict(d_vocab=0), "d_vocab", 0),
        (dict(seq_len=-4), "seq_len", -4),
        (dict(min_segment=1), "min_segment", 1),
        (dict(min_segment=0), "min_segment", 0),
        (dict(min_segment=10, max_segment=9), "max_segment", 9),
        (dict(seq_len=40, max_segment=24), "seq_len", 40),
    ],
)
def test_config_validation_names_the_field(kwargs, field, bad):
    with pytest.raises(ConfigError) as info:
        RepeatedSegmentsConfig(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")
    assert repr(bad) in str(info.value)


def test_config_boundary_is_valid():
    RepeatedSegmentsConfig(seq_len=48, min_segment=2, max_segment=24)
    RepeatedSegmentsConfig(seq_len=4, min_segment=2, max_segment=2)


def test_several_segments_per_sequence_each_repeat_inside_its_chunk():
    cfg = RepeatedSegmentsConfig(d_vocab=64, seq_len=64, min_segment=2, max_segment=6, segments_per_sequence=4)
    batch = RepeatedSegments(cfg).sample(32, torch.Generator().manual_seed(1))
    for row_mask in batch["repeat_mask"]:
        runs = mask_runs(row_mask)
        # adjacent chunks can merge two runs of the mask; each chunk holds at most 5 masked positions
        assert 4 * (cfg.min_segment - 1) <= int(row_mask.sum()) <= 4 * (cfg.max_segment - 1)
        for chunk in range(4):
            lo, hi = chunk * 16, (chunk + 1) * 16
            masked = [i for i in range(lo, hi) if row_mask[i]]
            assert masked, f"chunk {chunk} has no repeated segment"
            assert all(i + 1 < hi for i in masked), "a copy must end inside its chunk"
        assert runs


def test_segments_must_fit_their_chunk():
    with pytest.raises(ConfigError, match="seq_len"):
        RepeatedSegmentsConfig(seq_len=64, min_segment=2, max_segment=9, segments_per_sequence=4)


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_skip_bigram_filler_follows_the_permutation_at_the_set_rate(p):
    cfg = RepeatedSegmentsConfig(d_vocab=32, seq_len=64, min_segment=2, max_segment=2, skip_bigram=p)
    task = RepeatedSegments(cfg)
    tokens = task.filler(256, torch.Generator().manual_seed(0))
    follows = tokens[:, 2:] == task.permutation[tokens[:, :-2]]
    expected = p + (1 - p) / cfg.d_vocab
    assert abs(follows.float().mean().item() - expected) < 0.01  # 15,872 draws: std < 0.004


def test_skip_bigram_must_be_a_probability():
    with pytest.raises(ConfigError, match="skip_bigram"):
        RepeatedSegmentsConfig(skip_bigram=1.5)


# --- RecurringPairs ---------------------------------------------------------------------------

PAIRS = RecurringPairsConfig(d_vocab=32, seq_len=48, n_triggers=3, pair_rate=0.3)


def test_repeated_triggers_are_followed_by_the_output_seen_before():
    batch = RecurringPairs(PAIRS).sample(64, torch.Generator().manual_seed(0))
    tokens, mask = batch["tokens"], batch["repeat_mask"]
    assert mask.any(dim=1).float().mean() > 0.8, "most sequences hold a repeated trigger"
    for row, row_mask in zip(tokens, mask, strict=True):
        for t in torch.nonzero(row_mask).flatten().tolist():
            assert t + 1 < PAIRS.seq_len
            earlier = [s for s in range(t) if row[s] == row[t] and row[s + 1] == row[t + 1]]
            assert earlier, f"position {t}: trigger {int(row[t])} -> {int(row[t + 1])} never occurred before"


def test_first_occurrences_are_not_marked():
    batch = RecurringPairs(PAIRS).sample(64, torch.Generator().manual_seed(1))
    for row, row_mask in zip(batch["tokens"], batch["repeat_mask"], strict=True):
        for t in torch.nonzero(row_mask).flatten().tolist():
            assert (row[:t] == row[t]).any(), "a marked trigger must have appeared earlier"
        assert not row_mask[-1], "the last position has no output to predict"


def test_pairs_are_deterministic_and_leave_the_global_rng_alone():
    task = RecurringPairs(PAIRS)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = task.sample(8, torch.Generator().manual_seed(5))
    b = task.sample(8, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("field", "value"), [("n_triggers", 0), ("n_triggers", 40), ("pair_rate", 0.0), ("pair_rate", 1.0), ("seq_len", 3)]
)
def test_pairs_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        RecurringPairsConfig(**{"d_vocab": 32, "seq_len": 48, field: value})
