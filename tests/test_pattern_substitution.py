"""interp.pattern_substitution: a model given another's attention patterns computes with them."""

from __future__ import annotations

import torch
from helpers import RandomTokens, tiny_model_config, tiny_train_config

from interp.model import (
    attention_patterns,
    build_model,
    forward,
    load_model_state_dict,
    model_state_dict,
    pattern_hooks,
)
from interp.pattern_substitution import reference_patterns
from interp.train import TrainHooks, train


def twins():
    """Two models identical except for their queries and keys (so only their patterns differ)."""
    cfg = tiny_model_config()
    a, b = build_model(cfg), build_model(cfg)
    state = model_state_dict(a)
    for key in state:
        if ".attn.q." in key or ".attn.k." in key:
            state[key] = state[key] + torch.randn(state[key].shape, generator=torch.Generator().manual_seed(1))
    load_model_state_dict(b, state)
    return a, b


def test_patched_twin_reproduces_the_reference_exactly():
    a, b = twins()
    batch = RandomTokens().batch(0, 4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (forward(b, batch) - forward(a, batch)).abs().max() > 1e-2
        patched = forward(b, batch, patterns=reference_patterns(a)(batch))
        torch.testing.assert_close(patched, forward(a, batch), rtol=1e-4, atol=1e-5)


def test_patching_a_subset_of_layers_is_not_enough():
    a, b = twins()
    batch = RandomTokens().batch(0, 4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        partial = forward(b, batch, patterns=reference_patterns(a, layers=[0])(batch))
        assert (partial - forward(a, batch)).abs().max() > 1e-3


def test_training_with_patched_patterns_leaves_queries_and_keys_untrained(tmp_path):
    reference = build_model(tiny_model_config(seed=5))
    run = train(tmp_path / "run", tiny_model_config(), tiny_train_config(steps=3), RandomTokens(),
                hooks=TrainHooks(batch_patterns=reference_patterns(reference)), device="cpu", progress=False)
    start, end = run.load_state_dict(0), run.load_state_dict(3)
    qk = [k for k in start if ".attn.q." in k or ".attn.k." in k]
    assert qk and all(torch.equal(start[k], end[k]) for k in qk)  # the patched patterns carry no gradient to Q, K
    assert any(not torch.equal(start[k], end[k]) for k in start if k not in qk)


def test_fused_patterns_are_the_bridge_hook_patterns_and_patch_it_alike():
    a, b = twins()
    batch = RandomTokens().batch(0, 4, torch.Generator().manual_seed(0))
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(a.cfg.n_layers)]
    _, cache = a.run_with_cache(batch["tokens"], names_filter=names)
    patterns = attention_patterns(a, batch)
    for name, pattern in zip(names, patterns, strict=True):
        torch.testing.assert_close(pattern, cache[name], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        bridge = b.run_with_hooks(batch["tokens"], fwd_hooks=pattern_hooks([patterns[0], None]))
        torch.testing.assert_close(forward(b, batch, patterns=[patterns[0], None]), bridge, rtol=1e-5, atol=1e-5)
