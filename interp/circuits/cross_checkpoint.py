"""Cross-checkpoint patching: the model at one checkpoint with components' weights or
residual-stream writes taken from another checkpoint, and its probe over a run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from interp.bridge import LayerAttention, head_output_weight, head_slices, parameter_owner
from interp.circuits.common import PatchMetric, probe_batch, run_with_hooks
from interp.circuits.edges import write, write_bytes, write_hooks
from interp.circuits.graph import ModelShape
from interp.hooks import hook_name
from interp.ids import EMBED, LOGITS, HeadId, MlpId, Node
from interp.memory import FLOAT_BYTES, parameter_count
from interp.model import Batch, ModelConfig, load_model_state_dict, model_state_dict
from interp.probing import Probe, ProbeContext

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge

Component = Node
"""What moves between checkpoints: the embedding (token, position and input-vector weights),
a head, an MLP (with its pre-norm), or the logits (the final norm and the unembedding)."""
CrossMode = Literal["weights", "activations"]


def components(shape: ModelShape) -> list[Component]:
    return shape.nodes()


def _swap_weights(target: dict[str, Tensor], source: Mapping[str, Tensor], moved: set[Component],
                  n_heads: int) -> dict[str, Tensor]:
    state = dict(target)
    whole_layers = {layer for layer in {h.layer for h in moved if isinstance(h, HeadId)}
                    if all(HeadId(layer, h) in moved for h in range(n_heads))}
    for name, value in target.items():
        owner = parameter_owner(name)
        split = head_slices(name)
        if owner in moved or (isinstance(owner, LayerAttention) and owner.layer in whole_layers):
            state[name] = source[name]
        elif split is not None:
            chosen = [h for h in range(n_heads) if HeadId(split.layer, h) in moved]
            if not chosen:
                continue
            mixed = value.clone()
            for h in chosen:
                index = split.index(h, n_heads, tuple(value.shape))
                mixed[index] = source[name][index]
            state[name] = mixed
    return state


def cross_checkpoint_patch(source_model: TransformerBridge, model: TransformerBridge, batch: Batch,
                           metric: PatchMetric, moved: Sequence[Component], mode: CrossMode = "weights",
                           scratch: TransformerBridge | None = None) -> float:
    """`metric` of `model` (checkpoint B) with the components in `moved` taken from
    `source_model` (checkpoint A), together.

    `weights`: their parameters come from A (a head: its rows of W_Q/W_K/W_V, their
    biases, its columns of W_O; a layer's pre-norm and output bias move when all its
    heads do). `activations`: their writes to the residual stream come from A's forward
    pass on the same batch (all heads of a layer: the layer's whole attention output;
    the logits: A's logits). With every component moved, either mode gives model A.
    `scratch`: a model to load mixed weights into (default: a copy of `model`)."""
    moved_set = set(moved)
    shape = ModelShape.of(model.cfg)
    unknown = moved_set - set(components(shape))
    if unknown:
        raise ValueError(f"moved: {sorted(map(str, unknown))} are not components of this model")
    if mode == "weights":
        scratch = copy.deepcopy(model) if scratch is None else scratch
        mixed = _swap_weights(model_state_dict(model), model_state_dict(source_model), moved_set, shape.n_heads)
        load_model_state_dict(scratch, mixed)
        with torch.no_grad():
            return float(metric.fn(run_with_hooks(scratch, batch)[0], batch))
    if mode != "activations":
        raise ValueError(f"mode: expected 'weights' or 'activations', got {mode!r}")
    with torch.no_grad():
        names = write_hooks(shape) + [hook_name("attn_out", layer) for layer in range(shape.n_layers)]
        source_logits, source = run_with_hooks(source_model, batch, names=names)
        if LOGITS in moved_set:
            return float(metric.fn(source_logits, batch))
        logits, _ = run_with_hooks(model, batch, _activation_hooks(source_model, model, source, moved_set, shape))
        return float(metric.fn(logits, batch))


def _activation_hooks(source_model: TransformerBridge, model: TransformerBridge, source: Mapping[str, Tensor],
                      moved: set[Component], shape: ModelShape) -> list[tuple[str, Any]]:
    fwd: list[tuple[str, Any]] = []
    live_z: dict[int, Tensor] = {}
    if EMBED in moved:
        fwd.append((hook_name("resid_pre", 0), lambda value, hook: source[hook_name("resid_pre", 0)]))
    for layer in range(shape.n_layers):
        heads = [HeadId(layer, h) for h in range(shape.n_heads) if HeadId(layer, h) in moved]
        if len(heads) == shape.n_heads:
            fwd.append((hook_name("attn_out", layer), lambda value, hook, layer=layer:
                        source[hook_name("attn_out", layer)]))
        elif heads:
            fwd.append((hook_name("z", layer), lambda value, hook, layer=layer: live_z.__setitem__(layer, value)))

            def swap(value: Tensor, hook: Any, heads: list[HeadId] = heads) -> Tensor:
                for head in heads:
                    own = live_z[head.layer][:, :, head.head] @ head_output_weight(model, head.layer, head.head)
                    value = value - own + write(source_model, source, head)
                return value

            fwd.append((hook_name("attn_out", layer), swap))
        if MlpId(layer) in moved:
            fwd.append((hook_name("mlp_out", layer), lambda value, hook, layer=layer:
                        source[hook_name("mlp_out", layer)]))
    return fwd


def cross_checkpoint_memory(cfg: ModelConfig, batch_size: int, positions: int) -> int:
    """Bytes `cross_checkpoint_probe` holds beyond one forward pass: the source checkpoint and a
    scratch model, a mixed state dict loading into it, the source run's writes and attention
    outputs, and the base and source runs' logits."""
    tokens = batch_size * positions
    return 3 * parameter_count(cfg) * FLOAT_BYTES + write_bytes(cfg, batch_size, positions) + \
        tokens * (cfg.n_layers * cfg.d_model + 2 * cfg.d_vocab) * FLOAT_BYTES


def cross_checkpoint_probe(load_source: Callable[[torch.device], TransformerBridge], source_id: str,
                           metric: PatchMetric, mode: CrossMode = "weights",
                           moved: Sequence[Component] | None = None) -> Probe:
    """At every checkpoint B: `metric` with each component (default: every one) taken
    alone from the source checkpoint A, plus `base` (B itself) and `source` (A itself).
    `load_source(device)` loads A once, on first use; `source_id` (e.g. A's checkpoint
    hash) keys the cache."""
    held: dict[str, Any] = {}

    def fn(ctx: ProbeContext) -> dict[str, float]:
        batch = probe_batch(ctx)
        device = next(ctx.model.parameters()).device
        if "source" not in held:
            held["source"] = load_source(device)
            held["scratch"] = copy.deepcopy(ctx.model)
        source_model, scratch = held["source"], held["scratch"]
        chosen = components(ModelShape.of(ctx.model.cfg)) if moved is None else list(moved)
        with torch.no_grad():
            out = {"base": float(metric.fn(run_with_hooks(ctx.model, batch)[0], batch)),
                   "source": float(metric.fn(run_with_hooks(source_model, batch)[0], batch))}
        for component in chosen:
            out[str(component)] = cross_checkpoint_patch(source_model, ctx.model, batch, metric, [component], mode,
                                                         scratch=scratch)
        return out

    chosen_name = None if moved is None else tuple(map(str, moved))
    return Probe(name=f"cross_checkpoint({source_id},{metric.name},{mode},moved={chosen_name})", hooks=(), fn=fn,
                 reads="batch", memory=cross_checkpoint_memory, mean_over=metric.mean_over)
