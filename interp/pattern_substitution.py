"""Attention-pattern substitution during training (Zucchet et al. 2025's causal test).

`reference_patterns(reference)` returns batch patterns for `train(..., hooks=TrainHooks(batch_patterns=...))`:
at every step the reference model computes its attention patterns on the
training batch, and the trained model uses them (detached) in place of its own.
The trained model then learns everything but where to attend. The same patterns
go to `interp.model.forward(..., patterns=...)` for evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from interp.model import Batch, Patterns, attention_patterns

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge


def reference_patterns(reference: TransformerBridge,
                       layers: Sequence[int] | None = None) -> Callable[[Batch], Patterns]:
    """Batch patterns: the reference's pattern in `layers` (default: all), the model's own elsewhere."""
    chosen = set(range(reference.cfg.n_layers) if layers is None else layers)
    device = next(reference.parameters()).device
    reference.eval()

    def patterns(batch: Batch) -> Patterns:
        computed = attention_patterns(reference, {k: v.to(device) for k, v in batch.items()})
        return [pattern if layer in chosen else None for layer, pattern in enumerate(computed)]

    return patterns
