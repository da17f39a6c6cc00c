"""ModelConfig validation, the fused training forward against the bridge, continuous
inputs, seeded construction and the loss helpers."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from helpers import D_VOCAB, N_CTX, assert_state_equal, fixed_tokens, snapshot, tiny_model_config

from interp.configs import ConfigError
from interp.model import (
    IGNORE_INDEX,
    ModelConfig,
    build_model,
    count_parameters,
    forward,
    fused_forward,
    load_model_state_dict,
    masked_mean_loss,
    model_state_dict,
    named_trainable_parameters,
    scored_positions,
    targets_of,
    token_losses,
    trainable_parameters,
    trim_padding,
)

# --- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("n_layers", 0),
        ("n_layers", -1),
        ("d_model", 0),
        ("d_model", -16),
        ("n_heads", 0),
        ("d_vocab", -3),
        ("n_ctx", 0),
        ("d_head", -1),
        ("d_mlp", -8),
        ("d_input", -2),
        ("activation", "tanhh"),
        ("normalization", "batchnorm"),
        ("positional", "alibi"),
        ("init", "orthogonal"),
        ("init_range", -0.5),
    ],
)
def test_model_config_rejects_bad_value_naming_field_and_value(field, value):
    with pytest.raises(ConfigError) as info:
        tiny_model_config(**{field: value})
    assert info.value.field == field
    message = str(info.value)
    assert field in message
    assert repr(value) in message


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        tiny_model_config(n_layers=0)


def test_d_model_must_divide_by_heads_when_d_head_is_implicit():
    with pytest.raises(ConfigError) as info:
        ModelConfig(d_model=30, n_heads=4)
    assert info.value.field == "d_model"
    assert "30" in str(info.value) and "n_heads=4" in str(info.value)
    explicit = ModelConfig(d_model=30, n_heads=4, d_head=8)
    assert explicit.head_dim == 8
    assert ModelConfig(d_model=32, n_heads=4).head_dim == 8


def test_rotary_needs_even_head_dim():
    with pytest.raises(ConfigError) as info:
        ModelConfig(d_model=12, n_heads=4, positional="rotary")  # head_dim 3
    assert info.value.field == "d_head"
    ModelConfig(d_model=12, n_heads=4, positional="standard")  # fine without rotary


def test_config_is_frozen():
    cfg = tiny_model_config()
    with pytest.raises(AttributeError):
        cfg.n_layers = 3  # type: ignore[misc]


# --- fused forward == bridge forward ---------------------------------------------------


def perturb(model, seed: int = 0, scale: float = 0.2) -> None:
    """Move every parameter off its initialization (biases start at zero, LN at one),
    so a fused path that forgot a bias or a norm scale would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainable_parameters(model):
            p.add_(torch.randn(p.shape, generator=g) * scale)


GRID = list(itertools.product([False, True], ["LN", "RMS", "none"], ["standard", "rotary"]))


@pytest.mark.parametrize("attn_only, normalization, positional", GRID)
def test_fused_forward_matches_bridge(attn_only, normalization, positional):
    cfg = tiny_model_config(attn_only=attn_only, normalization=normalization, positional=positional, seed=3)
    model = build_model(cfg, device="cpu").eval()
    perturb(model)
    for n_pos in (N_CTX, 5):  # full context and a shorter sequence
        tokens = fixed_tokens(3)[:, :n_pos]
        with torch.no_grad():
            bridge = model(tokens)
            fused = fused_forward(model, {"tokens": tokens})
        assert fused.shape == (3, n_pos, D_VOCAB)
        assert torch.allclose(fused, bridge, atol=1e-4), (fused - bridge).abs().max()


@pytest.mark.parametrize(
    "overrides",
    [
        dict(activation="relu"),
        dict(activation="gelu_new"),
        dict(activation="silu"),
        dict(d_head=5, n_heads=3, d_mlp=24),
        dict(d_head=6, n_heads=2, positional="rotary"),
        dict(init="xavier_normal", init_range=0.05),
        dict(init="kaiming_uniform", n_layers=3),
    ],
)
def test_fused_forward_matches_bridge_other_shapes(overrides):
    model = build_model(tiny_model_config(seed=4, **overrides), device="cpu").eval()
    perturb(model, seed=1)
    tokens = fixed_tokens(2)
    with torch.no_grad():
        assert torch.allclose(fused_forward(model, {"tokens": tokens}), model(tokens), atol=1e-4)


def test_forward_without_hooks_is_the_fused_path_and_with_hooks_the_bridge():
    model = build_model(tiny_model_config(seed=6), device="cpu").eval()
    perturb(model)
    batch = {"tokens": fixed_tokens()}
    seen = []

    def spy(act, hook):
        seen.append(hook.name)

    with torch.no_grad():
        plain = forward(model, batch)
        hooked = forward(model, batch, [("blocks.1.hook_resid_pre", spy)])
        assert torch.equal(plain, fused_forward(model, batch))
    assert len(seen) == 1  # the hook ran once (TL may report the alias's canonical name)
    assert torch.allclose(plain, hooked, atol=1e-4)


def test_forward_hooks_can_change_the_output():
    model = build_model(tiny_model_config(seed=6), device="cpu").eval()
    batch = {"tokens": fixed_tokens()}
    with torch.no_grad():
        clean = forward(model, batch)
        doubled = forward(model, batch, [("blocks.0.hook_resid_pre", lambda act, hook: act * 2)])
    assert not torch.allclose(clean, doubled, atol=1e-3)


# --- continuous inputs -----------------------------------------------------------------


def vector_batch(d_input: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = fixed_tokens(3)
    vectors = torch.randn(3, N_CTX, d_input, generator=g)
    vector_mask = torch.zeros(3, N_CTX, dtype=torch.bool)
    vector_mask[:, 4:7] = True
    vector_mask[1, :] = False  # one sequence without vectors
    return {"tokens": tokens, "vectors": vectors, "vector_mask": vector_mask}


@pytest.mark.parametrize("attn_only", [False, True])
def test_vectors_fused_equals_hooked_bridge(attn_only):
    model = build_model(tiny_model_config(d_input=5, attn_only=attn_only, seed=2), device="cpu").eval()
    perturb(model)
    batch = vector_batch()
    with torch.no_grad():
        fused = fused_forward(model, batch)
        hooked = forward(model, batch, fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: act)])
        tokens_only = fused_forward(model, {"tokens": batch["tokens"]})
    assert torch.allclose(fused, hooked, atol=1e-4)
    # the vectors matter from their first position on, and only there (causal)
    assert torch.allclose(fused[:, :4], tokens_only[:, :4], atol=1e-6)
    assert not torch.allclose(fused[0, 4:], tokens_only[0, 4:], atol=1e-3)
    # a sequence whose vector_mask is all False is unaffected by its vectors
    assert torch.allclose(fused[1], tokens_only[1], atol=1e-6)


def test_vectors_replace_token_embedding_at_masked_positions():
    """At a vector position the token id is irrelevant."""
    model = build_model(tiny_model_config(d_input=5, seed=2), device="cpu").eval()
    batch = vector_batch()
    other = dict(batch, tokens=batch["tokens"].clone())
    other["tokens"][0, 4:7] = (other["tokens"][0, 4:7] + 1) % D_VOCAB
    with torch.no_grad():
        assert torch.allclose(fused_forward(model, batch)[0], fused_forward(model, other)[0], atol=1e-6)


def test_vectors_on_model_without_input_projection_raise():
    model = build_model(tiny_model_config(d_input=0), device="cpu").eval()
    batch = vector_batch()
    with pytest.raises(ValueError, match="d_input"):
        fused_forward(model, batch)
    with pytest.raises(ValueError, match="d_input"):
        forward(model, batch, fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: act)])


def test_input_projection_is_a_trainable_parameter_and_in_state_dict():
    with_proj = build_model(tiny_model_config(d_input=5), device="cpu")
    without = build_model(tiny_model_config(d_input=0), device="cpu")
    assert count_parameters(with_proj) == count_parameters(without) + 5 * 16 + 16
    state = model_state_dict(with_proj)
    assert state["input_proj.weight"].shape == (16, 5)
    assert "input_proj.bias" in state
    proj_ids = {id(p) for p in with_proj.input_proj.parameters()}
    assert proj_ids <= {id(p) for p in trainable_parameters(with_proj)}


@pytest.mark.parametrize("d_input", [0, 5])
def test_trainable_parameters_carry_their_checkpoint_names(d_input):
    model = build_model(tiny_model_config(d_input=d_input), device="cpu")
    named = named_trainable_parameters(model)
    state = model_state_dict(model)
    assert len(named) == len(trainable_parameters(model))
    assert {n for n, _ in named} <= set(state)  # the state also holds buffers (the unembedding bias)
    for name, param in named:
        assert torch.equal(param.detach(), state[name]), name


# --- construction and state dicts ----------------------------------------------------------


@pytest.mark.parametrize("d_input", [0, 4])
def test_build_model_same_seed_same_weights(d_input):
    a = build_model(tiny_model_config(seed=11, d_input=d_input), device="cpu")
    torch.manual_seed(12345)  # the global RNG must not matter
    b = build_model(tiny_model_config(seed=11, d_input=d_input), device="cpu")
    assert_state_equal(snapshot(a), snapshot(b))
    c = build_model(tiny_model_config(seed=12, d_input=d_input), device="cpu")
    sa, sc = snapshot(a), snapshot(c)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    if d_input:
        assert not torch.equal(sa["input_proj.weight"], sc["input_proj.weight"])


@pytest.mark.parametrize("d_input", [0, 4])
def test_build_model_leaves_global_rng_untouched(d_input):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    build_model(tiny_model_config(seed=3, d_input=d_input), device="cpu")
    assert torch.equal(torch.get_rng_state(), before)


def test_state_dict_round_trip_gives_identical_logits():
    source = build_model(tiny_model_config(seed=1, d_input=3), device="cpu").eval()
    perturb(source)
    target = build_model(tiny_model_config(seed=2, d_input=3), device="cpu").eval()
    load_model_state_dict(target, model_state_dict(source))
    batch = vector_batch(d_input=3)
    with torch.no_grad():
        assert torch.equal(fused_forward(source, batch), fused_forward(target, batch))


def test_load_model_state_dict_is_strict():
    with_proj = build_model(tiny_model_config(d_input=3), device="cpu")
    without = build_model(tiny_model_config(d_input=0), device="cpu")
    with pytest.raises(KeyError, match="input_proj"):
        load_model_state_dict(with_proj, model_state_dict(without))
    with pytest.raises(KeyError, match="input_proj"):
        load_model_state_dict(without, model_state_dict(with_proj))
    state = model_state_dict(without)
    state.pop("blocks.0.attn.q.weight")
    with pytest.raises(RuntimeError, match="Missing key"):
        load_model_state_dict(build_model(tiny_model_config(d_input=0), device="cpu"), state)


# --- losses ------------------------------------------------------------------------------


def test_default_targets_are_next_tokens():
    tokens = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    targets = targets_of({"tokens": tokens})
    assert targets.tolist() == [[2, 3, 4, IGNORE_INDEX], [6, 7, 8, IGNORE_INDEX]]


def test_token_losses_with_explicit_targets_and_ignore():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 7, generator=g)
    targets = torch.tensor([[1, IGNORE_INDEX, 6, 0], [IGNORE_INDEX, IGNORE_INDEX, 2, 3]])
    batch = {"tokens": torch.zeros(2, 4, dtype=torch.long), "targets": targets}
    losses = token_losses(logits, batch)
    assert losses.shape == (2, 4)
    log_probs = F.log_softmax(logits, dim=-1)
    for b in range(2):
        for p in range(4):
            t = int(targets[b, p])
            expected = 0.0 if t == IGNORE_INDEX else float(-log_probs[b, p, t])
            assert float(losses[b, p]) == pytest.approx(expected, abs=1e-5)
    mask = scored_positions(batch)
    assert mask.tolist() == [[True, False, True, True], [False, False, True, True]]
    expected_mean = float(-sum(log_probs[b, p, int(targets[b, p])] for b, p in mask.nonzero().tolist()) / 5)
    assert float(masked_mean_loss(logits, batch)) == pytest.approx(expected_mean, abs=1e-5)


def test_masked_mean_loss_uses_loss_mask():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 5, 7, generator=g)
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    loss_mask = torch.tensor([[0, 1, 0, 1, 1]])  # the last position has no target anyway
    batch = {"tokens": tokens, "loss_mask": loss_mask}
    manual = F.cross_entropy(logits[0, [1, 3]], torch.tensor([3, 5]))
    assert float(masked_mean_loss(logits, batch)) == pytest.approx(float(manual), abs=1e-6)


@pytest.mark.parametrize(
    "batch",
    [
        {"tokens": torch.tensor([[1, 2, 3]]), "loss_mask": torch.zeros(1, 3, dtype=torch.bool)},
        {"tokens": torch.tensor([[1, 2, 3]]), "loss_mask": torch.tensor([[0, 0, 1]])},  # only the last
        {"tokens": torch.tensor([[4], [5]])},  # no next token at all
        {"tokens": torch.tensor([[1, 2]]), "targets": torch.full((1, 2), IGNORE_INDEX)},
    ],
)
def test_masked_mean_loss_raises_without_scored_positions(batch):
    logits = torch.zeros(*batch["tokens"].shape, 7)
    with pytest.raises(ValueError, match="no scored positions"):
        masked_mean_loss(logits, batch)


def padded_batch() -> dict[str, torch.Tensor]:
    """Rows of 5 and 3 real tokens padded (token 0, not scored) to width 8."""
    tokens = torch.tensor([[3, 4, 5, 6, 7, 0, 0, 0], [5, 6, 7, 0, 0, 0, 0, 0]])
    return {"tokens": tokens, "loss_mask": tokens != 0, "annotation": tokens * 10, "row_id": torch.tensor([0, 1])}


def test_trim_padding_keeps_the_last_scored_prediction_and_its_target():
    batch = padded_batch()
    trimmed = trim_padding(batch)
    # the last scored prediction is at position 4 (row 0's last token, whose target is padding)
    assert trimmed["tokens"].tolist() == [[3, 4, 5, 6, 7, 0], [5, 6, 7, 0, 0, 0]]
    assert trimmed["annotation"].shape == (2, 6) and trimmed["row_id"].tolist() == [0, 1]


def test_trim_padding_leaves_the_causal_loss_unchanged():
    model = build_model(tiny_model_config())
    batch = padded_batch()
    full = masked_mean_loss(forward(model, batch), batch)
    trimmed = trim_padding(batch)
    assert float(masked_mean_loss(forward(model, trimmed), trimmed)) == pytest.approx(float(full), abs=1e-6)


@pytest.mark.parametrize("batch", [
    {"tokens": torch.tensor([[1, 2, 3, 4]])},  # everything scored
    {"tokens": torch.tensor([[1, 2, 3, 4]]), "loss_mask": torch.zeros(1, 4, dtype=torch.bool)},  # nothing scored
])
def test_trim_padding_leaves_a_batch_without_trailing_padding_alone(batch):
    assert trim_padding(batch) is batch
