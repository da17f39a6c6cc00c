"""Attention-pattern patching during training (Zucchet et al. 2025's causal test).

`pattern_patch(reference)` returns batch hooks for `train(..., batch_hooks=...)`:
at every step the reference model computes its attention patterns on the
training batch, and the trained model uses them (detached) in place of its own.
The trained model then learns everything but where to attend.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from interp.model import Batch, FwdHook, input_hooks


def pattern_hook_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def reference_patterns(reference: TransformerBridge, batch: Batch, layers: Sequence[int]) -> dict[str, Tensor]:
    """The reference model's attention pattern of each layer on `batch`, detached."""
    names = [pattern_hook_name(layer) for layer in layers]
    device = next(reference.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad(), reference.hooks(fwd_hooks=input_hooks(reference, batch)):
        _, cache = reference.run_with_cache(batch["tokens"], names_filter=names)
    return {name: cache[name].detach() for name in names}


def pattern_patch(reference: TransformerBridge, layers: Sequence[int] | None = None):
    """Batch hooks replacing the patterns of `layers` (default: all) with the reference's."""
    chosen = list(range(reference.cfg.n_layers)) if layers is None else list(layers)
    reference.eval()

    def hooks(batch: Batch) -> list[FwdHook]:
        patterns = reference_patterns(reference, batch, chosen)
        return [(name, lambda pattern, hook, fixed=fixed: fixed.to(pattern.dtype)) for name, fixed in patterns.items()]

    return hooks
