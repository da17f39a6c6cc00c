"""Path patching (Wang et al. 2022): the source run's write of a sender reaches only the
chosen receiver inputs (a head's q, k or v, an MLP, the logits); every other reader keeps
the base run's value. With several edges, ACDC's semantics (Conmy et al. 2023): a patched
edge carries the sender's source write even where another patch changed the sender, an
unpatched edge the sender's write in the patched run. TransformerLens's own
`get_act_patch_direct_path` needs per-head q/k/v input hooks that native bridges lack;
this one patches the receiver head's slice of `hook_q/k/v` instead and is pinned to
TransformerLens's on a model where both run (`tests/test_circuits.py`). The base and source
runs: `interp.circuits.common`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from interp.circuits.common import PatchMetric, probe_batch, run_with_hooks, source_batch
from interp.circuits.edges import check_edges, head_input, reader_hook, write, write_bytes, write_hook, write_hooks
from interp.circuits.graph import ModelShape
from interp.hooks import hook_name
from interp.ids import EdgeId, HeadId, HeadInput, Node
from interp.memory import FLOAT_BYTES
from interp.model import Batch, ModelConfig
from interp.probing import Probe

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge


def path_patch(model: TransformerBridge, batch: Batch, metric: PatchMetric, edges: Sequence[EdgeId],
               writes: tuple[Mapping[str, Tensor], Mapping[str, Tensor]] | None = None) -> float:
    """`metric` of the base run in which each edge's receiver input sees its sender's write
    from the source run instead of this run's (all edges at once; duplicates count once).

    ACDC's semantics (Conmy et al. 2023) for several edges: a patched edge carries the
    sender's source-run write, whatever the other patches did to the sender, and every
    unpatched edge carries the sender's write in this patched run (the base run's unless
    one of the sender's own inputs, or something upstream of them, was patched); what the
    receivers compute flows on as usual. So where edge A's receiver is edge B's sender, B's
    receiver input is `its residual - B's sender's write in this run + its source write`
    (and likewise for every patched sender into the same input): the source write once,
    never on top of the upstream patch's change to the sender.
    `writes`: the base and source activations of `write_hooks`, when already computed
    (only the source's are read: the senders' current writes come from the patched run)."""
    shape = ModelShape.of(model.cfg)
    check_edges(shape, edges)
    edges = list(dict.fromkeys(edges))
    source = writes[1] if writes is not None else \
        run_with_hooks(model, source_batch(batch), names=write_hooks(shape))[1]
    senders: dict[tuple[Node, HeadInput | None], list[Node]] = {}
    for edge in edges:
        senders.setdefault((edge.receiver, edge.input), []).append(edge.sender)
    source_writes = {edge.sender: write(model, source, edge.sender) for edge in edges}
    live: dict[str, Tensor] = {}  # this run's activations of the patched senders' write hooks

    def keep(value: Tensor, hook: Any, name: str) -> None:
        live[name] = value.clone()

    def swapped(resid: Tensor, key: tuple[Node, HeadInput | None]) -> Tensor:
        """`resid` with each patched sender's current write swapped for its source write."""
        for sender in senders[key]:
            resid = resid - write(model, live, sender) + source_writes[sender]
        return resid

    def patch_head(value: Tensor, hook: Any, head: HeadId, edge_input: HeadInput) -> Tensor:
        value = value.clone()
        resid = swapped(live[hook_name("resid_pre", head.layer)], (head, edge_input))
        value[:, :, head.head] = head_input(model, edge_input, head, resid)
        return value

    kept = {write_hook(edge.sender) for edge in edges}
    kept |= {hook_name("resid_pre", r.layer) for r, _ in senders if isinstance(r, HeadId)}
    fwd: list[tuple[str, Any]] = [(name, partial(keep, name=name)) for name in sorted(kept)]
    for key in senders:
        receiver, edge_input = key
        if isinstance(receiver, HeadId):
            assert edge_input is not None
            fwd.append((reader_hook(receiver, edge_input), partial(patch_head, head=receiver, edge_input=edge_input)))
        else:
            fwd.append((reader_hook(receiver, None), lambda value, hook, key=key: swapped(value, key)))
    with torch.no_grad():
        logits, _ = run_with_hooks(model, batch, fwd)
        return float(metric.fn(logits, batch))


def path_patch_edges(model: TransformerBridge, batch: Batch, metric: PatchMetric,
                     edges: Sequence[EdgeId] | None = None) -> dict[str, float]:
    """`path_patch` of each edge alone (default: every edge of the model), with the
    baselines `base` (no patch) and `source` (the source run scored on the base targets)."""
    shape = ModelShape.of(model.cfg)
    edges = shape.edges() if edges is None else list(edges)
    with torch.no_grad():
        base_logits, base = run_with_hooks(model, batch, names=write_hooks(shape))
        source_logits, source = run_with_hooks(model, source_batch(batch), names=write_hooks(shape))
        out = {"base": float(metric.fn(base_logits, batch)), "source": float(metric.fn(source_logits, batch))}
    for edge in edges:
        out[str(edge)] = path_patch(model, batch, metric, [edge], writes=(base, source))
    return out


def path_patching_memory(cfg: ModelConfig, batch_size: int, positions: int) -> int:
    """Bytes `path_patch_edges` holds beyond one forward pass: the base and source runs' logits
    and caches of every sender's write, and per patched pass the sender's source write and the
    clones of its live write and its receiver's residual."""
    tokens = batch_size * positions
    width = max(cfg.d_model, cfg.n_heads * cfg.head_dim)
    return 2 * tokens * cfg.d_vocab * FLOAT_BYTES + 2 * write_bytes(cfg, batch_size, positions) + \
        4 * tokens * width * FLOAT_BYTES


def path_patching_probe(metric: PatchMetric, edges: Sequence[EdgeId] | None = None) -> Probe:
    """`path_patch_edges` at every checkpoint; columns are edges plus `base` and `source`."""
    chosen = None if edges is None else tuple(edges)
    name = f"path_patching({metric.name},edges={None if chosen is None else tuple(map(str, chosen))})"
    return Probe(name=name, hooks=(), fn=lambda ctx: path_patch_edges(ctx.model, probe_batch(ctx), metric, chosen),
                 reads="batch", memory=path_patching_memory, mean_over=metric.mean_over)
