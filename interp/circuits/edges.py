"""The two ends of a circuit edge in a forward pass: where a sender's write to the
residual stream is read from, and which hook holds a receiver's input (a head's q, k or
v, an MLP's pre-norm input, the final norm's input). Path patching, edge attribution and
cross-checkpoint patching share them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from torch import Tensor

from interp.bridge import attention_norm, head_input_weights, head_output_weight
from interp.circuits.graph import ModelShape
from interp.hooks import hook_name
from interp.ids import EMBED, EdgeId, HeadId, HeadInput, MlpId, Node
from interp.memory import FLOAT_BYTES, hook_numel
from interp.model import ModelConfig

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge


def write_hooks(shape: ModelShape) -> list[str]:
    """The hooks every sender's write is read from (a layer's heads share one)."""
    senders = [EMBED, *(HeadId(layer, 0) for layer in range(shape.n_layers)),
               *([] if shape.attn_only else [MlpId(layer) for layer in range(shape.n_layers)])]
    return [write_hook(sender) for sender in senders]


def write_bytes(cfg: ModelConfig, batch_size: int, positions: int) -> int:
    """Bytes of one run's cache of `write_hooks` (what path patching and attribution keep per run)."""
    return sum(hook_numel(cfg, name, batch_size, positions) for name in write_hooks(ModelShape.of(cfg))) * FLOAT_BYTES


def write_hook(sender: Node) -> str:
    """The hook `write` reads `sender`'s write from (a head's: its layer's `hook_z`)."""
    if sender == EMBED:
        return hook_name("resid_pre", 0)
    if isinstance(sender, HeadId):
        return hook_name("z", sender.layer)
    assert isinstance(sender, MlpId)
    return hook_name("mlp_out", sender.layer)


def write(model: TransformerBridge, acts: Mapping[str, Tensor], sender: Node) -> Tensor:
    """`sender`'s write to the residual stream, `[batch, pos, d_model]` (a head's without the
    layer's shared output bias, which is the same in every run)."""
    if isinstance(sender, HeadId):
        z = acts[write_hook(sender)][:, :, sender.head]
        return z @ head_output_weight(model, sender.layer, sender.head)
    return acts[write_hook(sender)]


def head_input(model: TransformerBridge, edge_input: HeadInput, head: HeadId, resid: Tensor) -> Tensor:
    """What `head`'s q, k or v projection makes of `resid` (its own copy of the residual)."""
    weight, bias = head_input_weights(model, edge_input, head.layer, head.head)
    return attention_norm(model, head.layer)(resid) @ weight + bias


def reader_hook(receiver: Node, edge_input: HeadInput | None) -> str:
    """The hook whose value is the receiver's input: a head's q/k/v (patched per head), an
    MLP's pre-norm input, the final norm's input."""
    if isinstance(receiver, HeadId):
        assert edge_input is not None
        return hook_name(edge_input, receiver.layer)
    if isinstance(receiver, MlpId):
        return hook_name("ln2_in", receiver.layer)
    return hook_name("ln_final_in")


def check_edges(shape: ModelShape, edges: Sequence[EdgeId]) -> None:
    known = set(shape.edges())
    for edge in edges:
        if edge not in known:
            raise ValueError(f"edges: {edge} is not an edge of this model (n_layers={shape.n_layers}, "
                             f"n_heads={shape.n_heads}, attn_only={shape.attn_only})")
