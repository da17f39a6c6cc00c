"""Edge attribution patching (Nanda 2023; Syed et al. 2023, EAP): the first-order estimate
`(source write - base write) . d metric / d receiver input` of every edge from one forward
and one backward, pinned to TransformerLens's `attribution_patch(granularity="edge")`
(`tests/test_circuits.py`); node scores are each sender's summed edges. With integrated
gradients (EAP-IG, Hanna et al. 2024) the gradient is averaged along a path of inputs.
The base and source runs: `interp.circuits.common`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from interp.circuits.common import PatchMetric, probe_batch, run_with_hooks, source_batch
from interp.circuits.edges import head_input, write, write_bytes, write_hooks
from interp.circuits.graph import ModelShape
from interp.hooks import hook_name
from interp.ids import HEAD_INPUTS, LOGITS, HeadId, HeadInput, MlpId, Node
from interp.memory import FLOAT_BYTES
from interp.model import Batch, ModelConfig
from interp.probing import Probe

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge


def edge_attribution(model: TransformerBridge, batch: Batch, metric: PatchMetric,
                     ig_steps: int = 1) -> dict[str, float]:
    """EAP: for every edge, `sum over batch and positions of (source write - base write) .
    d metric / d (receiver's own copy of its input)`, the gradient taken on the base run.
    With `ig_steps` > 1, EAP-IG (Hanna et al. 2024): the gradient is averaged over runs whose
    input embedding moves from the base's toward the source's (midpoints of `ig_steps`
    equal steps), which follows the metric through saturated attention where one gradient
    cannot. Also `node/<sender>` (a sender's summed edges: its node attribution) and `base`."""
    if ig_steps < 1:
        raise ValueError(f"ig_steps: expected an integer >= 1, got {ig_steps}")
    shape = ModelShape.of(model.cfg)
    with torch.no_grad():
        base_logits, base = run_with_hooks(model, batch, names=write_hooks(shape))
        _, source = run_with_hooks(model, source_batch(batch), names=write_hooks(shape))
    embed_hook = hook_name("resid_pre", 0)
    embed, embed_change = base[embed_hook], source[embed_hook] - base[embed_hook]
    alphas = [0.0] if ig_steps == 1 else [(k + 0.5) / ig_steps for k in range(ig_steps)]
    receiver_grads: dict[tuple[Node, HeadInput | None], Tensor] = {}
    for alpha in alphas:
        for key, grad in _gradients_at(model, batch, metric, shape, embed + alpha * embed_change).items():
            receiver_grads[key] = receiver_grads.get(key, 0) + grad / len(alphas)
    out: dict[str, float] = {"base": float(metric.fn(base_logits, batch))}
    with torch.no_grad():
        deltas = {s: write(model, source, s) - write(model, base, s) for s in shape.nodes() if s != LOGITS}
    for edge in shape.edges():
        score = float((deltas[edge.sender] * receiver_grads[(edge.receiver, edge.input)]).sum())
        out[str(edge)] = score
        node = f"node/{edge.sender}"
        out[node] = out.get(node, 0.0) + score
    return out


def _gradients_at(model: TransformerBridge, batch: Batch, metric: PatchMetric, shape: ModelShape,
                  embed: Tensor) -> dict[tuple[Node, HeadInput | None], Tensor]:
    """d metric / d (each receiver input) in the run whose input embedding is `embed`."""
    acts: dict[str, Tensor] = {}

    def track(value: Tensor, hook: Any, name: str) -> Tensor:
        # The embedding is the root of the graph (no parameter gradients are needed); every
        # other reader gets its own copy, so its gradient is what flows through it alone.
        value = embed.detach().clone().requires_grad_(True) if name == hook_name("resid_pre", 0) else value.clone()
        acts[name] = value
        return value

    readers = {hook_name("resid_pre", layer) for layer in range(shape.n_layers)}
    readers |= {hook_name(c, layer) for layer in range(shape.n_layers) for c in HEAD_INPUTS}
    readers |= {hook_name("ln_final_in")} | ({hook_name("ln2_in", layer) for layer in range(shape.n_layers)}
                                             if not shape.attn_only else set())
    with torch.enable_grad():
        logits, _ = run_with_hooks(model, batch, [(name, partial(track, name=name)) for name in sorted(readers)])
        names = sorted(acts)
        found = torch.autograd.grad(metric.fn(logits, batch), [acts[n] for n in names], allow_unused=True)
    grads = {n: g for n, g in zip(names, found, strict=True) if g is not None}
    return _receiver_grads(model, shape, acts, grads)


def _receiver_grads(model: TransformerBridge, shape: ModelShape, acts: Mapping[str, Tensor],
                    grads: Mapping[str, Tensor]) -> dict[tuple[Node, HeadInput | None], Tensor]:
    """d metric / d (each receiver input's own copy of the residual), `[batch, pos, d_model]`.
    For a head's q/k/v input: the gradient at its slice of `hook_q/k/v`, pulled back
    through the projection and the shared pre-norm, one head at a time."""
    zero = torch.zeros_like(acts[hook_name("resid_pre", 0)])
    out: dict[tuple[Node, HeadInput | None], Tensor] = {}
    for layer in range(shape.n_layers):
        resid = acts[hook_name("resid_pre", layer)].detach()
        for edge_input in HEAD_INPUTS:
            grad = grads.get(hook_name(edge_input, layer))
            for h in range(shape.n_heads):
                head = HeadId(layer, h)
                if grad is None:  # the metric does not depend on it (e.g. a query nobody scores)
                    out[(head, edge_input)] = zero
                    continue
                copy_ = resid.clone().requires_grad_(True)
                with torch.enable_grad():
                    projected = head_input(model, edge_input, head, copy_)
                    (pulled,) = torch.autograd.grad(projected, copy_, grad_outputs=grad[:, :, h])
                out[(head, edge_input)] = pulled
        if not shape.attn_only:
            out[(MlpId(layer), None)] = grads.get(hook_name("ln2_in", layer), zero)
    out[(LOGITS, None)] = grads.get(hook_name("ln_final_in"), zero)
    return out


def edge_attribution_memory(cfg: ModelConfig, batch_size: int, positions: int, ig_steps: int = 1) -> int:
    """Bytes `edge_attribution` holds beyond one forward pass: the base and source runs' logits
    and write caches; the gradient pass's saved activations (the bridge keeps each layer's
    attention scores and pattern), its tracked input copies and their gradients, the logits'
    gradients; a gradient per receiver input (twice, summed over EAP-IG's steps) and a write
    change per sender, each `[batch, pos, d_model]`."""
    tokens, d_model = batch_size * positions, cfg.d_model
    inner, d_mlp = cfg.n_heads * cfg.head_dim, 0 if cfg.attn_only else (cfg.d_mlp or 4 * d_model)
    saved_per_layer = 8 * d_model + 10 * inner + 3 * d_mlp
    patterns = 2 * cfg.n_layers * batch_size * cfg.n_heads * positions**2
    receivers = cfg.n_layers * (3 * cfg.n_heads + (1 if d_mlp else 0)) + 1
    senders = 1 + cfg.n_layers * (cfg.n_heads + (1 if d_mlp else 0))
    per_token = (4 * cfg.d_vocab + cfg.n_layers * saved_per_layer + 2 * max(cfg.d_vocab, d_mlp)
                 + ((2 if ig_steps > 1 else 1) * receivers + senders + 1) * d_model)
    return 2 * write_bytes(cfg, batch_size, positions) + (tokens * per_token + patterns) * FLOAT_BYTES


def edge_attribution_probe(metric: PatchMetric, ig_steps: int = 1) -> Probe:
    """`edge_attribution` at every checkpoint; columns are edges, `node/<sender>` and `base`."""
    name = f"edge_attribution({metric.name})" if ig_steps == 1 else f"edge_attribution({metric.name},ig={ig_steps})"
    return Probe(name=name, hooks=(), fn=lambda ctx: edge_attribution(ctx.model, probe_batch(ctx), metric, ig_steps),
                 reads="batch", memory=partial(edge_attribution_memory, ig_steps=ig_steps), mean_over=metric.mean_over)
