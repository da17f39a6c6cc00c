"""Circuit metrics on hand-built attention patterns with known answers, and the
model-level metrics (ablation, loss probe) on a tiny real model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import D_VOCAB, N_CTX, fixed_tokens, tiny_model_config

from interp.batches import repeated_tokens
from interp.hooks import hook_name
from interp.ids import HeadId
from interp.metrics import ablation, heads, outputs
from interp.model import build_model, forward, fused_forward, load_model_state_dict, masked_mean_loss, model_state_dict
from interp.probing import run_probes

# --- hand-built patterns -----------------------------------------------------------


def previous_token_pattern(n: int) -> torch.Tensor:
    """[query, key]: query q puts all its attention on q-1; query 0 on itself."""
    p = torch.zeros(n, n)
    p[0, 0] = 1.0
    for q in range(1, n):
        p[q, q - 1] = 1.0
    return p


def uniform_causal_pattern(n: int) -> torch.Tensor:
    p = torch.tril(torch.ones(n, n))
    return p / p.sum(-1, keepdim=True)


def self_pattern(n: int) -> torch.Tensor:
    return torch.eye(n)


def offset_pattern(n: int, offset: int) -> torch.Tensor:
    """Query q attends to q - offset where that key exists, else to itself."""
    p = torch.zeros(n, n)
    for q in range(n):
        p[q, q - offset if q >= offset else q] = 1.0
    return p


def stack_heads(*heads: torch.Tensor, batch: int = 2) -> torch.Tensor:
    """[batch, head, query, key] with the same per-head pattern in every batch row."""
    return torch.stack(heads)[None].expand(batch, -1, -1, -1).clone()


def test_hand_built_patterns_are_causal_distributions():
    for p in (previous_token_pattern(7), uniform_causal_pattern(7), offset_pattern(7, 3)):
        assert torch.allclose(p.sum(-1), torch.ones(7))
        assert (torch.triu(p, diagonal=1) == 0).all()


def test_previous_token_score_known_values():
    n = 9
    pattern = stack_heads(previous_token_pattern(n), uniform_causal_pattern(n), self_pattern(n))
    scores = heads.previous_token_score(pattern)
    expected_uniform = sum(1 / (q + 1) for q in range(1, n)) / (n - 1)
    assert scores.shape == (3,)
    assert scores[0].item() == pytest.approx(1.0, abs=1e-6)
    assert scores[1].item() == pytest.approx(expected_uniform, abs=1e-6)
    assert scores[2].item() == pytest.approx(0.0, abs=1e-6)


def test_previous_token_score_averages_over_batch():
    n = 6
    pattern = torch.stack([previous_token_pattern(n)[None], self_pattern(n)[None]])  # batch 2, head 1
    assert heads.previous_token_score(pattern).item() == pytest.approx(0.5, abs=1e-6)


def test_induction_score_known_values():
    period = 5
    n = 2 * period
    induction = offset_pattern(n, period - 1)  # q -> q - period + 1
    duplicate = offset_pattern(n, period)  # q -> q - period: the earlier copy itself, not its successor
    uniform = uniform_causal_pattern(n)
    scores = heads.induction_score(stack_heads(induction, duplicate, uniform), period)
    expected_uniform = sum(1 / (q + 1) for q in range(period, n)) / (n - period)
    assert scores[0].item() == pytest.approx(1.0, abs=1e-6)
    assert scores[1].item() == pytest.approx(0.0, abs=1e-6)
    assert scores[2].item() == pytest.approx(expected_uniform, abs=1e-6)


def test_induction_score_ignores_first_copy():
    """Queries in the first copy have no earlier occurrence; whatever they do is not scored."""
    period = 4
    n = 3 * period
    p = offset_pattern(n, period - 1)
    p[:period] = torch.eye(n)[:period]  # first copy attends to itself
    p[period - 1, 0], p[period - 1, period - 1] = 1.0, 0.0  # an offset-(period-1) hit in the first copy
    assert heads.induction_score(stack_heads(p), period).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("period", [1, 0, -3])
def test_induction_score_rejects_short_period(period):
    with pytest.raises(ValueError, match="period"):
        heads.induction_score(stack_heads(uniform_causal_pattern(6)), period)


def test_attention_to_offset_matches_loop():
    g = torch.Generator().manual_seed(0)
    pattern = torch.rand(3, 2, 10, 10, generator=g)
    for offset, min_query in [(0, None), (1, None), (3, None), (2, 5), (0, 9)]:
        start = offset if min_query is None else min_query
        expected = torch.stack(
            [
                torch.tensor([pattern[b, h, q, q - offset] for b in range(3) for q in range(start, 10)]).mean()
                for h in range(2)
            ]
        )
        got = heads.attention_to_offset(pattern, offset, min_query)
        assert torch.allclose(got, expected, atol=1e-6), (offset, min_query)


@pytest.mark.parametrize(
    "offset, min_query",
    [(-1, None), (3, 2), (0, 8), (8, None), (9, None), (2, 10)],
)
def test_attention_to_offset_validates_arguments(offset, min_query):
    pattern = stack_heads(uniform_causal_pattern(8))
    with pytest.raises(ValueError, match="offset"):
        heads.attention_to_offset(pattern, offset, min_query)


# --- attention mass ----------------------------------------------------------------

# One batch row of [query, key] patterns for two heads (rows are causal distributions).
_HEAD0 = torch.tensor(
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.25, 0.75, 0.0, 0.0],
        [0.2, 0.3, 0.5, 0.0],
        [0.1, 0.2, 0.3, 0.4],
    ]
)
_HEAD1 = torch.tensor(
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.5, 0.5, 0.0, 0.0],
        [0.6, 0.0, 0.4, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def mass_pattern() -> torch.Tensor:
    # batch row 1 swaps the heads, so per-batch contributions differ
    return torch.stack([torch.stack([_HEAD0, _HEAD1]), torch.stack([_HEAD1, _HEAD0])])


def test_attention_mass_2d_key_mask():
    pattern = mass_pattern()
    query_mask = torch.tensor([[False, True, True, False], [False, False, False, True]])
    key_mask = torch.tensor([[True, False, True, False], [False, True, True, True]])
    # head 0: batch 0 q1 -> 0.25, q2 -> 0.2+0.5=0.7 ; batch 1 (head1 pattern) q3 -> 0+0+1=1.0
    # head 1: batch 0 q1 -> 0.5,  q2 -> 0.6+0.4=1.0 ; batch 1 (head0 pattern) q3 -> 0.2+0.3+0.4=0.9
    # averaged over the 3 selected queries (pooled over the batch)
    expected = torch.tensor([(0.25 + 0.7 + 1.0) / 3, (0.5 + 1.0 + 0.9) / 3])
    assert torch.allclose(heads.attention_mass(pattern, query_mask, key_mask), expected, atol=1e-6)


def test_attention_mass_3d_key_mask_differs_per_query():
    pattern = mass_pattern()
    query_mask = torch.tensor([[False, True, True, True], [True, False, False, False]])
    key_mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    key_mask[0, 1, 1] = True  # q1 -> {1}
    key_mask[0, 2, [0, 1]] = True  # q2 -> {0, 1}
    key_mask[0, 3, 3] = True  # q3 -> {3}
    key_mask[1, 0, 0] = True  # q0 -> {0}
    key_mask[1, 3, :] = True  # unselected query: must not count
    # head 0: b0 q1 0.75, q2 0.2+0.3=0.5, q3 0.4 ; b1 (head1) q0 1.0
    # head 1: b0 q1 0.5,  q2 0.6+0=0.6,  q3 1.0 ; b1 (head0) q0 1.0
    expected = torch.tensor([(0.75 + 0.5 + 0.4 + 1.0) / 4, (0.5 + 0.6 + 1.0 + 1.0) / 4])
    assert torch.allclose(heads.attention_mass(pattern, query_mask, key_mask), expected, atol=1e-6)


def test_attention_mass_all_keys_is_one():
    pattern = mass_pattern()
    query_mask = torch.ones(2, 4, dtype=torch.bool)
    key_mask = torch.ones(2, 4, dtype=torch.bool)
    assert torch.allclose(heads.attention_mass(pattern, query_mask, key_mask), torch.ones(2))


def test_attention_mass_2d_and_equivalent_3d_masks_agree():
    g = torch.Generator().manual_seed(1)
    pattern = torch.softmax(torch.randn(3, 2, 6, 6, generator=g), dim=-1)
    query_mask = torch.rand(3, 6, generator=g) < 0.5
    query_mask[0, 0] = True
    key_mask = torch.rand(3, 6, generator=g) < 0.5
    mass2 = heads.attention_mass(pattern, query_mask, key_mask)
    mass3 = heads.attention_mass(pattern, query_mask, key_mask[:, None, :].expand(-1, 6, -1))
    assert torch.allclose(mass2, mass3)


@pytest.mark.parametrize(
    "query_shape, key_shape",
    [
        ((2, 5), (2, 4)),  # query mask too long
        ((1, 4), (2, 4)),  # query mask batch mismatch
        ((2, 4), (2, 5)),  # 2-D key mask too long
        ((2, 4), (3, 4)),  # 2-D key mask batch mismatch
        ((2, 4), (2, 4, 5)),  # 3-D key mask wrong key length
        ((2, 4), (2, 3, 4)),  # 3-D key mask wrong query length
        ((2, 4), (4,)),  # 1-D key mask
    ],
)
def test_attention_mass_rejects_masks_of_wrong_shape(query_shape, key_shape):
    pattern = mass_pattern()
    with pytest.raises(ValueError, match="mask"):
        heads.attention_mass(
            pattern, torch.ones(query_shape, dtype=torch.bool), torch.ones(key_shape, dtype=torch.bool)
        )


def test_attention_mass_rejects_empty_query_mask():
    pattern = mass_pattern()
    with pytest.raises(ValueError, match="no position"):
        heads.attention_mass(pattern, torch.zeros(2, 4, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool))


# --- repeated tokens ---------------------------------------------------------------


@pytest.mark.parametrize("repeats", [2, 3])
def test_repeated_tokens_has_the_period(repeats):
    period = 7
    tokens = repeated_tokens(5, period, D_VOCAB, torch.Generator().manual_seed(0), repeats=repeats)
    assert tokens.shape == (5, period * repeats)
    assert tokens.dtype == torch.int64
    assert tokens.min() >= 0 and tokens.max() < D_VOCAB
    for r in range(1, repeats):
        assert torch.equal(tokens[:, r * period : (r + 1) * period], tokens[:, :period])
    # the segment is random: not itself periodic with a shorter period, and rows differ
    assert not torch.equal(tokens[:, 0], tokens[:, 1])
    assert not all(torch.equal(tokens[0], tokens[i]) for i in range(1, 5))


def test_repeated_tokens_deterministic_per_generator():
    a = repeated_tokens(4, 6, D_VOCAB, torch.Generator().manual_seed(3))
    b = repeated_tokens(4, 6, D_VOCAB, torch.Generator().manual_seed(3))
    c = repeated_tokens(4, 6, D_VOCAB, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_per_head_keys():
    assert heads.per_head(torch.tensor([0.5, 0.25]), layer=3) == {"L3H0": 0.5, "L3H1": 0.25}
    assert hook_name("pattern", 1) == "blocks.1.attn.hook_pattern"


# --- on a real tiny model ------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return build_model(tiny_model_config(seed=5), device="cpu").eval()


def mean_logit(logits: torch.Tensor, batch) -> float:
    return float(logits.mean())


def test_real_patterns_are_causal_and_probes_match_scores(model):
    tokens = repeated_tokens(3, 6, D_VOCAB, torch.Generator().manual_seed(0))
    batch = {"tokens": tokens}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    for layer in range(2):
        p = cache[hook_name("pattern", layer)]
        assert p.shape == (3, 2, N_CTX, N_CTX)
        assert torch.allclose(p.sum(-1), torch.ones(3, 2, N_CTX), atol=1e-5)
        assert (torch.triu(p, diagonal=1) == 0).all()
    probes = {
        "prev": heads.previous_token_probe(layers=[0, 1]),
        "ind": heads.induction_probe(layers=[1], period=6),
    }
    values = run_probes(model, probes, batch)
    assert set(values) == {"prev/L0H0", "prev/L0H1", "prev/L1H0", "prev/L1H1", "ind/L1H0", "ind/L1H1"}
    prev1 = heads.previous_token_score(cache[hook_name("pattern", 1)])
    ind1 = heads.induction_score(cache[hook_name("pattern", 1)], 6)
    for h in range(2):
        assert values[f"prev/L1H{h}"] == pytest.approx(float(prev1[h]), abs=1e-6)
        assert values[f"ind/L1H{h}"] == pytest.approx(float(ind1[h]), abs=1e-6)


def test_head_ablation_effect_keys_and_finiteness(model):
    batch = {"tokens": fixed_tokens()}
    for kind in ("zero", "mean"):
        effects = ablation.head_ablation_effect(model, batch, mean_logit, kind=kind)
        assert list(effects) == ["L0H0", "L0H1", "L1H0", "L1H1"]
        assert all(math.isfinite(v) for v in effects.values())
    only_l1 = ablation.head_ablation_effect(model, batch, mean_logit, layers=[1])
    assert list(only_l1) == ["L1H0", "L1H1"]


def test_head_ablation_rejects_unknown_kind(model):
    with pytest.raises(ValueError, match="bogus"):
        ablation.head_ablation_effect(model, {"tokens": fixed_tokens()}, mean_logit, kind="bogus")


def test_zero_ablation_equals_removing_the_heads_output_weights(model):
    """Zeroing head h's z is the same function as zeroing its columns of W_O."""
    batch = {"tokens": fixed_tokens()}
    effects = ablation.head_ablation_effect(model, batch, mean_logit, kind="zero")
    clean = mean_logit(fused_forward(model, batch), batch)
    d_head = model.cfg.d_head
    assert all(abs(v) > 1e-6 for v in effects.values()), "ablating a head should change the mean logit"
    for layer in range(2):
        for head in range(2):
            state = model_state_dict(model)
            state = {k: v.clone() for k, v in state.items()}
            state[f"blocks.{layer}.attn.o.weight"][:, head * d_head : (head + 1) * d_head] = 0.0
            edited = build_model(tiny_model_config(seed=99), device="cpu").eval()
            load_model_state_dict(edited, state)
            with torch.no_grad():
                expected = mean_logit(fused_forward(edited, batch), batch) - clean
            assert effects[f"L{layer}H{head}"] == pytest.approx(expected, abs=1e-5)


def test_joint_ablation_equals_removing_every_chosen_heads_output_weights(model):
    batch = {"tokens": fixed_tokens()}
    heads = [HeadId(0, 1), HeadId(1, 0), HeadId(1, 1)]
    state = {k: v.clone() for k, v in model_state_dict(model).items()}
    d_head = model.cfg.d_head
    for h in heads:
        state[f"blocks.{h.layer}.attn.o.weight"][:, h.head * d_head : (h.head + 1) * d_head] = 0.0
    edited = build_model(tiny_model_config(seed=99), device="cpu").eval()
    load_model_state_dict(edited, state)
    with torch.no_grad():
        ablated = forward(model, batch, ablation.head_ablation_hooks(heads))
        expected = fused_forward(edited, batch)
    assert torch.allclose(ablated, expected, atol=1e-5)
    with pytest.raises(ValueError, match="kind"):
        ablation.head_ablation_hooks(heads, kind="bogus")


def test_mean_ablation_is_a_no_op_on_a_single_position(model):
    """With one sequence of one position, the mean of z over batch and positions is z itself."""
    batch = {"tokens": torch.tensor([[3]])}
    effects = ablation.head_ablation_effect(model, batch, mean_logit, kind="mean")
    for value in effects.values():
        assert value == pytest.approx(0.0, abs=1e-5)


def test_zero_ablating_all_heads_of_attn_only_model_removes_context():
    model = build_model(tiny_model_config(n_layers=1, attn_only=True, seed=2), device="cpu").eval()
    tokens_a = fixed_tokens(2, seed=1)
    tokens_b = fixed_tokens(2, seed=2)
    tokens_b[:, -1] = tokens_a[:, -1]  # same last token, different context
    assert not torch.equal(tokens_a[:, :-1], tokens_b[:, :-1])

    hooks = ablation.head_ablation_hooks([HeadId(0, 0), HeadId(0, 1)])
    with torch.no_grad():
        ablated_a = forward(model, {"tokens": tokens_a}, hooks)[:, -1]
        ablated_b = forward(model, {"tokens": tokens_b}, hooks)[:, -1]
        clean_a = forward(model, {"tokens": tokens_a})[:, -1]
        clean_b = forward(model, {"tokens": tokens_b})[:, -1]
    assert torch.allclose(ablated_a, ablated_b, atol=1e-6)
    assert not torch.allclose(clean_a, clean_b, atol=1e-4)


# --- loss probe ------------------------------------------------------------------------


def test_loss_probe_is_masked_mean_cross_entropy(model):
    tokens = fixed_tokens(4, seed=7)
    g = torch.Generator().manual_seed(8)
    select = torch.rand(tokens.shape, generator=g) < 0.5
    select[0, 0] = True
    batch = {"tokens": tokens, "select": select}
    values = run_probes(model, {"all": outputs.loss_probe(), "sel": outputs.loss_probe("select")}, batch)

    with torch.no_grad():
        logits = model(tokens)
    pred, target = logits[:, :-1], tokens[:, 1:]
    manual_all = F.cross_entropy(pred.reshape(-1, D_VOCAB), target.reshape(-1))
    keep = select[:, :-1]  # the last position has no target
    manual_sel = F.cross_entropy(pred[keep], target[keep])
    assert values["all/loss"] == pytest.approx(float(manual_all), abs=1e-5)
    assert values["sel/loss"] == pytest.approx(float(manual_sel), abs=1e-5)
    assert values["sel/loss"] != pytest.approx(values["all/loss"], abs=1e-4)
    assert values["all/loss"] == pytest.approx(float(masked_mean_loss(logits, batch)), abs=1e-5)


def test_loss_probe_respects_batch_loss_mask(model):
    tokens = fixed_tokens(2, seed=9)
    loss_mask = torch.zeros(tokens.shape, dtype=torch.bool)
    loss_mask[:, 2:5] = True
    batch = {"tokens": tokens, "loss_mask": loss_mask}
    values = run_probes(model, {"l": outputs.loss_probe()}, batch)
    with torch.no_grad():
        logits = model(tokens)
    manual = F.cross_entropy(logits[:, 2:5].reshape(-1, D_VOCAB), tokens[:, 3:6].reshape(-1))
    assert values["l/loss"] == pytest.approx(float(manual), abs=1e-5)


# --- sharpness ---------------------------------------------------------------------


def test_sharpness_is_zero_for_one_hot_and_one_for_uniform_attention():
    n = 6
    pattern = torch.stack([previous_token_pattern(n), uniform_causal_pattern(n)])[None]  # batch 1, head 2
    every_query = torch.ones(1, n, dtype=torch.bool)
    sharp = heads.attention_sharpness(pattern, every_query)
    assert sharp.tolist() == pytest.approx([0.0, 1.0], abs=1e-6)


def test_sharpness_of_attention_split_over_two_keys():
    n = 5
    pattern = torch.zeros(1, 1, n, n)
    pattern[0, 0, :, 0] = 1.0
    pattern[0, 0, 4] = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0])  # query 4: entropy ln 2 over ln 5 keys
    only_four = torch.zeros(1, n, dtype=torch.bool)
    only_four[0, 4] = True
    assert heads.attention_sharpness(pattern, only_four).item() == pytest.approx(math.log(2) / math.log(5))


@pytest.mark.parametrize("metric", [heads.attention_sharpness, heads.corrected_previous_token_score])
def test_query_metrics_skip_query_zero_and_check_their_mask(metric):
    pattern = uniform_causal_pattern(4)[None, None]
    with pytest.raises(ValueError, match="after 0"):
        metric(pattern, torch.tensor([[True, False, False, False]]))
    with pytest.raises(ValueError, match="query_mask"):
        metric(pattern, torch.ones(1, 5, dtype=torch.bool))


# --- corrected previous-token score, induction strength, token-set mass ------------------------------------------


def test_corrected_previous_token_score_is_one_for_perfect_and_zero_for_uniform():
    n = 7
    pattern = stack_heads(previous_token_pattern(n), uniform_causal_pattern(n), self_pattern(n), batch=1)
    odd = torch.zeros(1, n, dtype=torch.bool)
    odd[0, 1::2] = True
    score = heads.corrected_previous_token_score(pattern, odd)
    # A head that never looks back scores -1/p per query: mean over p = 1, 3, 5.
    assert score.tolist() == pytest.approx([1.0, 0.0, -(1 + 1 / 3 + 1 / 5) / 3], abs=1e-6)


def test_corrected_previous_token_score_of_half_attention():
    n = 5
    pattern = uniform_causal_pattern(n)[None, None].clone()
    pattern[0, 0, 4] = torch.tensor([0.0, 0.0, 0.5, 0.5, 0.0])
    only_four = torch.zeros(1, n, dtype=torch.bool)
    only_four[0, 4] = True
    assert heads.corrected_previous_token_score(pattern, only_four).item() == pytest.approx(0.5 - 0.5 / 4)


def few_shot_masks(n: int, query: int, matching: list[int], other: list[int]):
    query_mask, match, nonmatch = (torch.zeros(1, n, dtype=torch.bool) for _ in range(3))
    query_mask[0, query] = True
    match[0, matching] = True
    nonmatch[0, other] = True
    return query_mask, match, nonmatch


def test_induction_strength_known_values():
    n = 9  # labels at 1, 3, 5, 7; query at 8
    query_mask, match, nonmatch = few_shot_masks(n, 8, [1, 5], [3, 7])
    pattern = uniform_causal_pattern(n)[None, None].repeat(1, 3, 1, 1)
    pattern[0, 0, 8] = 0.0
    pattern[0, 0, 8, [1, 5]] = 0.5  # all on the matching labels: 0.5 per key vs 0
    pattern[0, 1, 8] = 0.0
    pattern[0, 1, 8, 3] = 1.0  # all on one non-matching label: 0 vs 0.5 per key
    strength = heads.induction_strength(pattern, query_mask, match, nonmatch)
    assert strength.tolist() == pytest.approx([0.5, -0.5, 0.0], abs=1e-6)


def test_induction_strength_skips_rows_without_both_kinds_of_key():
    n = 5
    query_mask = torch.zeros(2, n, dtype=torch.bool)
    query_mask[:, 4] = True
    match = torch.zeros(2, n, dtype=torch.bool)
    nonmatch = torch.zeros(2, n, dtype=torch.bool)
    match[0, 1], nonmatch[0, 3] = True, True
    nonmatch[1, [1, 3]] = True  # row 1 has no matching key: left out
    pattern = uniform_causal_pattern(n)[None, None].repeat(2, 1, 1, 1)
    pattern[:, 0, 4] = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0])
    assert heads.induction_strength(pattern, query_mask, match, nonmatch).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="both"):
        heads.induction_strength(pattern[1:], query_mask[1:], match[1:], nonmatch[1:])


def test_token_set_mass_known_values():
    logits = torch.log(torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]]]))
    query_mask = torch.tensor([[True, False]])
    tokens = torch.tensor([[False, True, False, True]])
    assert outputs.token_set_mass(logits, query_mask, tokens) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="token_mask"):
        outputs.token_set_mass(logits, query_mask, tokens[:, :3])


# --- head selection and ablation grids (moved from the ICL-transience analysis) -----------


def test_strongest_heads_are_the_heads_above_the_threshold_from_min_layer_on():
    strength = np.array([[0.9, 0.0, 0.0], [0.1, 0.5, 0.35], [0.31, 0.2, 0.0]])
    assert heads.strongest_heads(strength, 0.3) == [HeadId(1, 1), HeadId(1, 2), HeadId(2, 0)]  # not layer 0's
    assert heads.strongest_heads(strength, 0.6) == [HeadId(1, 1)]  # none reaches it: the strongest alone
    assert heads.strongest_heads(strength, 0.6, min_layer=0) == [HeadId(0, 0)]
    assert heads.strongest_heads([[0.2, 0.2], [0.4, 0.4]], 0.3) == [HeadId(1, 0), HeadId(1, 1)]  # ties in order


def test_head_ablation_grid_and_joint_ablation_match_the_effects(model):
    batch = {"tokens": fixed_tokens()}
    effects = ablation.head_ablation_effect(model, batch, mean_logit)
    grid = ablation.head_ablation_grid(model, batch, mean_logit)
    assert [[effects[str(HeadId(layer, head))] for head in range(2)] for layer in range(2)] == grid
    clean = ablation.ablated_metric(model, batch, mean_logit, [])
    assert clean == pytest.approx(mean_logit(fused_forward(model, batch), batch), abs=1e-6)
    heads = [HeadId(0, 1), HeadId(1, 0)]
    with torch.no_grad():
        expected = mean_logit(forward(model, batch, ablation.head_ablation_hooks([HeadId(0, 1), HeadId(1, 0)])), batch)
    assert ablation.ablated_metric(model, batch, mean_logit, heads) == pytest.approx(expected, abs=1e-6)
    assert ablation.ablated_metric(model, batch, mean_logit, [HeadId(1, 1)]) - clean == pytest.approx(
        grid[1][1], abs=1e-6)
