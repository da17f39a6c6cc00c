"""The one place that reads TransformerLens internals: the plain torch modules behind a
`TransformerBridge` built with `boot_native`, for the fused training path, and the weights
and parameter names the circuit methods read.

The fused forward (`interp.model.fused_forward`) computes the bridge's function on the
bridge's own weights without its hook wrappers. It reaches those weights through public
TransformerLens API: the bridge's component slots (`embed`, `pos_embed`, `blocks`,
`ln1`, `attn.q/k/v/o`, `ln2`, `mlp.in/out`, `ln_final`, `unembed`: the names of its hooks
and state-dict keys), each component's `original_component`, and `model.cfg`. Three
facts have no public accessor and are read from TransformerLens's native modules: the
attention's score `scale`, its `rotary.apply_rope`, and the MLP's activation `act`.

The circuit methods (`interp.circuits`) and analyses read a head's weights, a layer's
attention norm and parameters, and what a checkpoint parameter's name says it belongs to
through the functions at the end of this module, not through the bridge's attributes.

Nothing here runs at import, so an untested TransformerLens inside the supported range
imports and trains as long as its layout matches; an out-of-range version, or one whose
layout differs, fails at the first fused forward with `UnsupportedTransformerLensError`,
naming the installed version and the supported range.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING, Literal, TypeVar

from packaging.specifiers import SpecifierSet
from torch import Tensor, nn

from interp.ids import EMBED, LOGITS, HeadInput, MlpId, Node

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge

SUPPORTED = ">=4.0,<5"
"""TransformerLens versions the fast path accepts (pyproject.toml's dependency range)."""
VERIFIED = "4.3"
"""The version `tests/test_model.py` pins the fast path against."""

Rope = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""Rotary position embedding applied to (queries, keys), each [batch, head, pos, d_head]."""

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class UnsupportedTransformerLensError(RuntimeError):
    """The installed TransformerLens is outside the supported range, or its native
    bridge lacks what the fused forward reads."""


@dataclass(frozen=True)
class Attention:
    """One layer's attention: Q, K, V (each `nn.Linear` with a bias) and O projections."""

    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    scale: float
    """Scores are `q @ k.T / scale`."""
    rope: Rope | None
    """Applied to queries and keys under rotary positions; None under learned positions."""


@dataclass(frozen=True)
class MLP:
    """One layer's MLP with its pre-norm (the block's `ln2`): `fc_out(act(fc_in(ln(x))))`."""

    ln: nn.Module
    fc_in: nn.Linear
    act: Callable[[Tensor], Tensor]
    fc_out: nn.Linear


@dataclass(frozen=True)
class Block:
    """One pre-norm residual block; `mlp` is None in attention-only models."""

    ln1: nn.Module
    attn: Attention
    mlp: MLP | None


@dataclass(frozen=True)
class NativeParts:
    """The modules of a native bridge, in forward order, without their hook wrappers."""

    embed: nn.Embedding
    pos: nn.Embedding | None
    """Learned positions; None under rotary positions."""
    blocks: tuple[Block, ...]
    ln_final: nn.Module
    unembed: nn.Linear
    n_heads: int
    d_head: int


@functools.cache
def installed_version() -> str:
    """The installed TransformerLens version (its package metadata; TL 4 has no `__version__`)."""
    return version("transformer-lens")


def unsupported(installed: str, reason: str) -> UnsupportedTransformerLensError:
    """The one-line error for a fast-path assumption that `installed` breaks."""
    return UnsupportedTransformerLensError(
        f"interp's fused forward needs TransformerLens {SUPPORTED} (verified on {VERIFIED}); "
        f"installed {installed}: {reason}"
    )


@functools.cache
def require_supported(installed: str) -> None:
    """Raise unless `installed` is in `SUPPORTED` (pre-releases of an in-range version count)."""
    if not SpecifierSet(SUPPORTED).contains(installed, prereleases=True):
        raise unsupported(installed, "out of the supported range")


def native_parts(model: TransformerBridge) -> NativeParts:
    """The plain modules the fused forward runs, checked against the installed
    TransformerLens; raises `UnsupportedTransformerLensError` where they are not there.

    Resolved on every call rather than cached on the model: it costs microseconds, and
    a cache would go stale if TransformerLens swapped a module (e.g. on a device move).
    """
    installed = installed_version()
    require_supported(installed)
    try:
        return _resolve(model)
    except AttributeError as err:
        raise unsupported(installed, str(err)) from None


def _unwrap(component: nn.Module, kind: type[ModuleT], where: str) -> ModuleT:
    """The module a bridge component wraps, which must be a `kind`."""
    inner = component.original_component
    if not isinstance(inner, kind):
        raise AttributeError(f"{where} wraps {type(inner).__name__}, not {kind.__name__}")
    return inner


def _linear_with_bias(component: nn.Module, where: str) -> nn.Linear:
    # The fused forward concatenates the Q, K and V weights and biases into one projection.
    linear = _unwrap(component, nn.Linear, where)
    if linear.bias is None:
        raise AttributeError(f"{where} has no bias")
    return linear


def _resolve(model: TransformerBridge) -> NativeParts:
    cfg = model.cfg
    rotary = cfg.positional_embedding_type == "rotary"
    blocks = []
    for layer, block in enumerate(model.blocks):
        where = f"blocks.{layer}"
        native_attn = _unwrap(block.attn, nn.Module, f"{where}.attn")
        attn = Attention(
            q=_linear_with_bias(block.attn.q, f"{where}.attn.q"),
            k=_linear_with_bias(block.attn.k, f"{where}.attn.k"),
            v=_linear_with_bias(block.attn.v, f"{where}.attn.v"),
            o=_unwrap(block.attn.o, nn.Linear, f"{where}.attn.o"),
            scale=float(native_attn.scale),
            rope=native_attn.rotary.apply_rope if rotary else None,
        )
        mlp = None
        if not cfg.attn_only:
            mlp = MLP(
                ln=_unwrap(block.ln2, nn.Module, f"{where}.ln2"),
                fc_in=_unwrap(getattr(block.mlp, "in"), nn.Linear, f"{where}.mlp.in"),  # `in` is a keyword
                act=_unwrap(block.mlp, nn.Module, f"{where}.mlp").act,
                fc_out=_unwrap(block.mlp.out, nn.Linear, f"{where}.mlp.out"),
            )
        blocks.append(Block(ln1=_unwrap(block.ln1, nn.Module, f"{where}.ln1"), attn=attn, mlp=mlp))
    return NativeParts(
        embed=_unwrap(model.embed, nn.Embedding, "embed"),
        pos=None if rotary else _unwrap(model.pos_embed, nn.Embedding, "pos_embed"),
        blocks=tuple(blocks),
        ln_final=_unwrap(model.ln_final, nn.Module, "ln_final"),
        unembed=_unwrap(model.unembed, nn.Linear, "unembed"),
        n_heads=cfg.n_heads,
        d_head=cfg.d_head,
    )


# --- weights and parameter names the circuit methods read --------------------------------


def attention_norm(model: TransformerBridge, layer: int) -> nn.Module:
    """Layer `layer`'s pre-norm of the attention (`ln1`), as the bridge runs it."""
    return model.blocks[layer].ln1


def attention_parameters(model: TransformerBridge, layer: int) -> list[nn.Parameter]:
    """Every parameter of layer `layer`'s attention (q, k, v, o and their biases)."""
    return list(model.blocks[layer].attn.parameters())


def head_input_weights(model: TransformerBridge, head_input: HeadInput, layer: int, head: int) -> tuple[Tensor, Tensor]:
    """The weight `[d_model, d_head]` and bias `[d_head]` of a head's q, k or v projection."""
    if head_input == "q":
        return model.W_Q[layer, head], model.b_Q[layer, head]
    if head_input == "k":
        return model.W_K[layer, head], model.b_K[layer, head]
    if head_input == "v":
        return model.W_V[layer, head], model.b_V[layer, head]
    raise ValueError(f"head_input: expected 'q', 'k' or 'v', got {head_input!r}")


def head_output_weight(model: TransformerBridge, layer: int, head: int) -> Tensor:
    """A head's slice of the output projection, `[d_head, d_model]`."""
    return model.W_O[layer, head]


@dataclass(frozen=True)
class LayerAttention:
    """Owner of the attention parameters a layer's heads share (its pre-norm, the output
    bias) or split between them (q, k, v, o)."""

    layer: int


def parameter_owner(name: str) -> Node | LayerAttention:
    """The circuit node a checkpoint parameter (`interp.model.model_state_dict`'s `name`)
    belongs to: the embedding (token, position and input-vector weights), an MLP (with its
    pre-norm), the logits (the final norm and the unembedding), or a layer's attention."""
    if name.startswith(("embed.", "pos_embed.", "input_proj.")):
        return EMBED
    if name.startswith(("ln_final.", "unembed.")):
        return LOGITS
    parts = name.split(".")
    layer = int(parts[1])
    if parts[2] in ("ln2", "mlp"):
        return MlpId(layer)
    return LayerAttention(layer)


_HEAD_PARAMETER = re.compile(r"blocks\.(\d+)\.attn\.([qkvo])\.(weight|bias)")


@dataclass(frozen=True)
class HeadSlices:
    """A parameter split between a layer's heads: the rows of a q, k or v weight or bias,
    the columns of the o weight."""

    layer: int
    projection: Literal["q", "k", "v", "o"]

    def index(self, head: int, n_heads: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
        """Where head `head`'s part lies in a parameter of `shape`."""
        width = shape[-1 if self.projection == "o" else 0] // n_heads
        rows = slice(head * width, (head + 1) * width)
        return (slice(None), rows) if self.projection == "o" else (rows,)


def head_slices(name: str) -> HeadSlices | None:
    """How checkpoint parameter `name` splits between heads; None if it does not (the
    output bias is shared)."""
    match = _HEAD_PARAMETER.fullmatch(name)
    if match is None or (match[2] == "o" and match[3] == "bias"):
        return None
    return HeadSlices(int(match[1]), match[2])  # type: ignore[arg-type]
