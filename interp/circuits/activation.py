"""Activation patching: TransformerLens's `get_act_patch_*` sweeps (head outputs, q/k/v,
patterns, residual stream, attention and MLP outputs; all positions or per position), one
activation taken from the source run at a time. The base and source runs:
`interp.circuits.common`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from interp.circuits.common import PatchMetric, probe_batch, run_with_full_cache, run_with_hooks, source_batch
from interp.ids import HeadId
from interp.memory import FLOAT_BYTES
from interp.model import Batch, ModelConfig, input_hooks
from interp.probing import Probe

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge

ActivationKind = Literal["head_out", "q", "k", "v", "pattern", "resid_pre", "attn_out", "mlp_out"]
# The sweeps by their names in `transformer_lens.patching`, which is imported on first use
# (TransformerLens takes seconds to import; a patch has a model, so it is loaded by then).
_HEAD_SWEEPS: dict[str, tuple[str, str]] = {
    "head_out": ("get_act_patch_attn_head_out_all_pos", "get_act_patch_attn_head_out_by_pos"),
    "q": ("get_act_patch_attn_head_q_all_pos", "get_act_patch_attn_head_q_by_pos"),
    "k": ("get_act_patch_attn_head_k_all_pos", "get_act_patch_attn_head_k_by_pos"),
    "v": ("get_act_patch_attn_head_v_all_pos", "get_act_patch_attn_head_v_by_pos"),
    "pattern": ("get_act_patch_attn_head_pattern_all_pos", "get_act_patch_attn_head_pattern_by_pos"),
}
_LAYER_SWEEPS: dict[str, str] = {
    "resid_pre": "get_act_patch_resid_pre",
    "attn_out": "get_act_patch_attn_out",
    "mlp_out": "get_act_patch_mlp_out",
}


def _whole_layer_setter(base_activation: Tensor, index: Sequence[int], source_activation: Tensor) -> Tensor:
    return source_activation.clone()


def activation_patch(model: TransformerBridge, batch: Batch, metric: PatchMetric, kind: ActivationKind = "head_out",
                     by_position: bool = False) -> dict[str, float]:
    """`metric` of the base run with one activation taken from the source run, for every
    head (`kind` head_out, q, k, v, pattern: columns `"L1H2"`, or `"L1H2@5"` by position)
    or every layer (`resid_pre`, `attn_out`, `mlp_out`: columns `"3"`, all positions at
    once, and `"3@5"` by position), with the `base` and `source` baselines.
    TransformerLens's sweeps do the work."""
    if kind not in _HEAD_SWEEPS and kind not in _LAYER_SWEEPS:
        raise ValueError(f"kind: expected one of {sorted({*_HEAD_SWEEPS, *_LAYER_SWEEPS})}, got {kind!r}")
    from transformer_lens import patching as tl_patching

    source = source_batch(batch)
    with torch.no_grad():
        source_logits, source_cache = run_with_full_cache(model, source)
        base_logits = run_with_hooks(model, batch)[0]

        def scored(logits: Tensor) -> Tensor:
            return metric.fn(logits, batch)

        # TransformerLens's sweeps draw an unconditional progress bar; a library call stays quiet.
        with model.hooks(fwd_hooks=input_hooks(model, batch)), contextlib.redirect_stderr(io.StringIO()):
            if kind in _HEAD_SWEEPS:
                sweep = getattr(tl_patching, _HEAD_SWEEPS[kind][1 if by_position else 0])
                result = sweep(model, batch["tokens"], source_cache, scored)
            else:
                layer_sweep = getattr(tl_patching, _LAYER_SWEEPS[kind])
                result = layer_sweep(model, batch["tokens"], source_cache, scored) if by_position else \
                    tl_patching.generic_activation_patch(model, batch["tokens"], source_cache, scored,
                                                         _whole_layer_setter, kind, index_axis_names=("layer",))
    values = (result if isinstance(result, Tensor) else result.values).float().cpu()
    out = {"base": float(scored(base_logits)), "source": float(scored(source_logits))}
    if kind in _HEAD_SWEEPS and not by_position:
        out.update({str(HeadId(layer, h)): float(values[layer, h])
                    for layer in range(values.shape[0]) for h in range(values.shape[1])})
    elif kind in _HEAD_SWEEPS:
        out.update({f"{HeadId(layer, h)}@{pos}": float(values[layer, pos, h]) for layer in range(values.shape[0])
                    for pos in range(values.shape[1]) for h in range(values.shape[2])})
    elif by_position:
        out.update({f"{layer}@{pos}": float(values[layer, pos])
                    for layer in range(values.shape[0]) for pos in range(values.shape[1])})
    else:
        out.update({str(layer): float(values[layer]) for layer in range(values.shape[0])})
    return out


def activation_patching_memory(cfg: ModelConfig, batch_size: int, positions: int) -> int:
    """Bytes `activation_patch` holds beyond one forward pass: the source run's cache of every
    hook (per layer the residual stream's copies, q/k/v/z, the attention scores and pattern,
    the MLP's hidden layer before and after its activation) and the two runs' logits."""
    tokens = batch_size * positions
    inner, d_mlp = cfg.n_heads * cfg.head_dim, 0 if cfg.attn_only else (cfg.d_mlp or 4 * cfg.d_model)
    per_layer = tokens * (10 * cfg.d_model + 4 * inner + 2 * d_mlp) + 2 * batch_size * cfg.n_heads * positions**2
    return (cfg.n_layers * per_layer + tokens * (4 * cfg.d_model + 4 * cfg.d_vocab)) * FLOAT_BYTES


def activation_patching_probe(metric: PatchMetric, kind: ActivationKind = "head_out",
                              by_position: bool = False) -> Probe:
    return Probe(name=f"activation_patching({metric.name},{kind},by_position={by_position})", hooks=(),
                 fn=lambda ctx: activation_patch(ctx.model, probe_batch(ctx), metric, kind, by_position), reads="batch",
                 memory=activation_patching_memory, mean_over=metric.mean_over)
