"""Head ablations: a head's output (`hook_z`) set to zero or to its mean over batch and
positions, alone (each head's effect on a metric, as a dict, a `[layer][head]` grid or a
probe) or several together."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from interp.hooks import hook_name
from interp.ids import HeadId
from interp.model import Batch, FwdHook, forward
from interp.probing import Probe

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge

ABLATIONS = ("zero", "mean")


def head_ablation_hooks(heads: Sequence[HeadId], kind: str = "zero") -> list[FwdHook]:
    """Hooks on `hook_z` that ablate every head in `heads` together, to zero
    or to the head's mean output over batch and positions."""
    if kind not in ABLATIONS:
        raise ValueError(f"kind: expected one of {ABLATIONS}, got {kind!r}")
    by_layer: dict[int, list[int]] = {}
    for head in heads:
        by_layer.setdefault(head.layer, []).append(head.head)

    def ablate(z: Tensor, hook, chosen: tuple[int, ...]) -> Tensor:
        z = z.clone()
        index = list(chosen)
        z[:, :, index] = 0.0 if kind == "zero" else z[:, :, index].mean(dim=(0, 1))
        return z

    return [(hook_name("z", layer), partial(ablate, chosen=tuple(chosen)))
            for layer, chosen in sorted(by_layer.items())]


def head_ablation_effect(
    model: TransformerBridge,
    batch: Batch,
    metric: Callable[[Float[Tensor, "batch pos vocab"], Batch], float],
    kind: str = "zero",
    layers: Sequence[int] | None = None,
) -> dict[str, float]:
    """`metric(ablated) - metric(clean)` for each head, ablating its output
    (`hook_z`) to zero or to its mean over batch and positions."""
    if kind not in ABLATIONS:
        raise ValueError(f"kind: expected one of {ABLATIONS}, got {kind!r}")
    layers = range(model.cfg.n_layers) if layers is None else layers
    with torch.no_grad():
        clean = metric(forward(model, batch), batch)
        effects: dict[str, float] = {}
        for layer in layers:
            for head in range(model.cfg.n_heads):
                logits = forward(model, batch, head_ablation_hooks([HeadId(layer, head)], kind))
                effects[str(HeadId(layer, head))] = metric(logits, batch) - clean
    return effects


def ablation_probe(
    metric: Callable[[Float[Tensor, "batch pos vocab"], Batch], float],
    name: str,
    kind: str = "zero",
    layers: Sequence[int] | None = None,
) -> Probe:
    """Per-head ablation effect as a probe (one extra forward per head)."""
    return Probe(
        name=f"ablation({name},{kind},layers={tuple(layers) if layers else None})",
        hooks=(),
        fn=lambda ctx: head_ablation_effect(ctx.model, ctx.batch, metric, kind, layers),
        reads="batch",
    )


def head_ablation_grid(
    model: TransformerBridge,
    batch: Batch,
    metric: Callable[[Float[Tensor, "batch pos vocab"], Batch], float],
    kind: str = "zero",
) -> list[list[float]]:
    """`head_ablation_effect` of every head as a `[layer][head]` grid."""
    effects = head_ablation_effect(model, batch, metric, kind)
    return [[effects[str(HeadId(layer, head))] for head in range(model.cfg.n_heads)]
            for layer in range(model.cfg.n_layers)]


def ablated_metric(
    model: TransformerBridge,
    batch: Batch,
    metric: Callable[[Float[Tensor, "batch pos vocab"], Batch], float],
    heads: Sequence[HeadId],
    kind: str = "zero",
) -> float:
    """`metric` with every head in `heads` ablated together (none: the clean model)."""
    with torch.no_grad():
        return metric(forward(model, batch, head_ablation_hooks(heads, kind)), batch)
