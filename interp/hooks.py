"""Every hook name the toolkit uses, from one function: `hook_name(kind, layer)`.

TransformerLens's `get_act_name` builds every name it knows, so a name reads as in any
TransformerLens tutorial (`hook_name("pattern", 1)` is `"blocks.1.attn.hook_pattern"`).
Two names exist only on a `TransformerBridge`: a pre-norm's own input (`ln2_in`,
`ln_final_in`), which a patch can change without changing the residual stream. Nothing
else in the toolkit spells a hook name; `hook_size_kind` reads one back, for memory
estimates made before a model exists.
"""

from __future__ import annotations

from typing import Literal, get_args

HookKind = Literal["embed", "normalized", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out",
                   "pattern", "q", "k", "v", "z", "ln2_in", "ln_final_in"]
"""`embed`: the token embedding; `normalized`: the final norm's output; per layer: the residual
stream before, between and after attention and MLP, their outputs, a layer's attention
patterns, each head's q, k, v and output before the output projection (`z`, `[batch, pos,
head, d_head]`); the bridge's pre-norm inputs of the MLP (`ln2_in`) and of the unembedding
(`ln_final_in`, no layer)."""
HOOK_KINDS: tuple[HookKind, ...] = get_args(HookKind)

_LAYERLESS = frozenset({"embed", "normalized", "ln_final_in"})
# Bridge-only names, which `get_act_name` would spell only by accident of its string rules.
_BRIDGE_ONLY = {"ln2_in": "blocks.{layer}.ln2.hook_in", "ln_final_in": "ln_final.hook_in"}


def hook_name(kind: HookKind, layer: int | None = None) -> str:
    """The hook name of `kind` (in `layer` for a per-layer kind), e.g. `hook_name("z", 0)`:
    `"blocks.0.attn.hook_z"`."""
    if kind not in HOOK_KINDS:
        raise ValueError(f"kind: expected one of {list(HOOK_KINDS)}, got {kind!r}")
    if (layer is None) != (kind in _LAYERLESS):
        expected = "no layer" if kind in _LAYERLESS else "a layer >= 0"
        raise ValueError(f"layer: hook {kind!r} takes {expected}, got {layer!r}")
    if layer is not None and layer < 0:
        raise ValueError(f"layer: expected a layer >= 0, got {layer}")
    if kind in _BRIDGE_ONLY:
        return _BRIDGE_ONLY[kind].format(layer=layer)
    from transformer_lens.utilities import get_act_name  # TransformerLens takes seconds to import: on first use

    return get_act_name(kind, layer)


HookSizeKind = Literal["pattern", "head", "head_result", "mlp_hidden", "vocab", "per_token", "residual"]
"""What an activation's size scales with, per token: `pattern`: `[batch, head, query, key]`;
`head`: heads times d_head; `head_result`: heads times d_model; `mlp_hidden`: d_mlp;
`vocab`: d_vocab; `per_token`: one number (a norm's scale, token ids); `residual`: d_model."""

# Hook-name endings by the shape of what they record (a TransformerLens name or a bridge
# component's `hook_in`/`hook_out`); anything else records the residual stream's width.
_PATTERN_HOOKS = ("hook_pattern", "hook_attn_scores")
_HEAD_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_z", "q.hook_out", "k.hook_out", "v.hook_out", "o.hook_in",
               "hook_rot_q", "hook_rot_k")
_MLP_HOOKS = ("mlp.hook_pre", "mlp.hook_post", "mlp.in.hook_out", "mlp.out.hook_in", "mlp.hook_pre_linear")
_VOCAB_HOOKS = ("hook_unembed", "unembed.hook_out")
_TOKEN_ID_HOOKS = ("embed.hook_in", "pos_embed.hook_in")


def hook_size_kind(name: str) -> HookSizeKind:
    """What the activation at the bridge's hook `name` scales with, from the name alone."""
    if name.endswith(_PATTERN_HOOKS):
        return "pattern"
    if name.endswith(_HEAD_HOOKS):
        return "head"
    if name.endswith("hook_result"):
        return "head_result"
    if name.endswith(_MLP_HOOKS):
        return "mlp_hidden"
    if name.endswith(_VOCAB_HOOKS):
        return "vocab"
    if name.endswith("hook_scale") or name in _TOKEN_ID_HOOKS:
        return "per_token"
    return "residual"
