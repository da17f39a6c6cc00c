"""The fast path's adapter to TransformerLens: its version check and the clear error
when the native bridge's layout is not the one it reads (the numerics are pinned in
tests/test_model.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import fixed_tokens, tiny_model_config

import interp.bridge as bridge
from interp.bridge import SUPPORTED, UnsupportedTransformerLensError, native_parts, require_supported
from interp.model import attention_patterns, build_model, fused_forward


def test_installed_version_is_supported_and_read_from_package_metadata():
    installed = bridge.installed_version()
    assert installed[0].isdigit()
    require_supported(installed)


@pytest.mark.parametrize("version", ["4.0.0", "4.3.0", "4.9.2", "4.4.0.dev3", "4.4.0rc1"])
def test_versions_in_range_pass_untested_ones_included(version):
    require_supported(version)


@pytest.mark.parametrize("version", ["3.9.1", "5.0.0", "5.0.0rc1", "6.1"])
def test_an_out_of_range_version_is_named_with_the_supported_range(version):
    with pytest.raises(UnsupportedTransformerLensError) as raised:
        require_supported(version)
    message = str(raised.value)
    assert "\n" not in message
    assert f"installed {version}" in message and SUPPORTED in message and bridge.VERIFIED in message


def test_the_fast_path_refuses_a_faked_out_of_range_version(monkeypatch):
    model = build_model(tiny_model_config(), device="cpu")
    monkeypatch.setattr(bridge, "installed_version", lambda: "5.1.0")
    with pytest.raises(UnsupportedTransformerLensError, match=r"needs TransformerLens >=4\.0,<5 .*installed 5\.1\.0"):
        fused_forward(model, {"tokens": fixed_tokens()})


def test_the_fast_path_runs_on_an_untested_version_in_range_whose_layout_matches(monkeypatch):
    model = build_model(tiny_model_config(), device="cpu")
    with torch.no_grad():
        expected = fused_forward(model, {"tokens": fixed_tokens()})
        monkeypatch.setattr(bridge, "installed_version", lambda: "4.9.0")
        assert torch.equal(fused_forward(model, {"tokens": fixed_tokens()}), expected)

def test_importing_and_building_do_not_check_the_version(monkeypatch):
    """Only the fast path depends on TL's internals, so only it refuses a version."""
    monkeypatch.setattr(bridge, "installed_version", lambda: "5.1.0")
    model = build_model(tiny_model_config(), device="cpu")
    with torch.no_grad():
        assert model(fixed_tokens()).shape[-1] == tiny_model_config().d_vocab


def test_a_missing_native_attribute_gives_the_clear_error():
    model = build_model(tiny_model_config(), device="cpu")
    del model.blocks[1].attn.original_component.scale  # as if a TL release renamed it
    with pytest.raises(UnsupportedTransformerLensError) as raised:
        attention_patterns(model, {"tokens": fixed_tokens()})
    message = str(raised.value)
    assert "\n" not in message
    assert f"installed {bridge.installed_version()}" in message and SUPPORTED in message
    assert "'scale'" in message


def test_a_component_wrapping_another_module_type_is_named():
    model = build_model(tiny_model_config(), device="cpu")
    model.blocks[0].attn.q.set_original_component(torch.nn.Identity())
    with pytest.raises(UnsupportedTransformerLensError, match=r"blocks\.0\.attn\.q wraps Identity, not Linear"):
        fused_forward(model, {"tokens": fixed_tokens()})


@pytest.mark.parametrize("positional", ["standard", "rotary"])
@pytest.mark.parametrize("attn_only", [False, True])
def test_native_parts_are_the_bridges_own_parameters(positional, attn_only):
    """The fast path trains the bridge's weights, not copies of them."""
    model = build_model(tiny_model_config(positional=positional, attn_only=attn_only), device="cpu")
    parts = native_parts(model)
    owned = {id(p) for p in model.parameters()}
    used = [parts.embed.weight, parts.unembed.weight]
    for block in parts.blocks:
        used += [block.attn.q.weight, block.attn.k.bias, block.attn.o.weight]
        assert (block.mlp is None) == attn_only
        assert (block.attn.rope is None) == (positional == "standard")
        if block.mlp is not None:
            used += [block.mlp.fc_in.weight, block.mlp.fc_out.bias]
    assert all(id(p) in owned for p in used)
    assert (parts.pos is None) == (positional == "rotary")
