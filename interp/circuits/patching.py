"""Causal circuit analysis at a checkpoint, and as probes over a run's checkpoints.

One convention for every method here: the **base** run is the batch's `tokens` (the
metric reads its targets), and the patched-in activations come from a **source** run on
`batch["source_tokens"]` (every other batch key, e.g. input vectors, is shared). With a
corrupted source this is noising (which paths does the behaviour need?); with
`tokens` corrupted, `source_tokens` clean and `targets` set to the clean targets it is
denoising (which paths restore it?).

- `activation_patch`: TransformerLens's `get_act_patch_*` sweeps (head outputs, q/k/v,
  patterns, residual stream; all positions or per position);
- `path_patch`: the source's write of a sender reaches only the chosen receiver inputs
  (a head's q, k or v, an MLP, the logits); every other reader keeps the base run's
  value (Wang et al. 2022). With several edges, ACDC's semantics (Conmy et al. 2023): a
  patched edge carries the sender's source write even where another patch changed the
  sender, an unpatched edge the sender's write in the patched run. TransformerLens's
  own `get_act_patch_direct_path` needs
  per-head q/k/v input hooks that native bridges lack; this one patches the receiver
  head's slice of `hook_q/k/v` instead and is pinned to TransformerLens's on a model
  where both run (`tests/test_circuit_patching.py`);
- `edge_attribution`: attribution patching (Nanda 2023; Syed et al. 2023, EAP): the
  first-order estimate `(source write - base write) . d metric / d receiver input` of
  every edge from one forward and one backward, likewise pinned to TransformerLens's
  `attribution_patch(granularity="edge")`; node scores are each sender's summed edges;
- `cross_checkpoint_patch`: the model at one checkpoint with components' weights or
  residual-stream writes taken from another checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor
from transformer_lens import patching as tl_patching
from transformer_lens.model_bridge import TransformerBridge

from interp.circuits.graph import ModelShape
from interp.ids import EMBED, LOGITS, EdgeId, HeadId, MlpId, Node, Terminal, hooks
from interp.model import Batch, input_hooks, load_model_state_dict, model_state_dict, scored_positions, targets_of
from interp.probing import Probe, ProbeContext

SOURCE_KEY = "source_tokens"


@dataclass(frozen=True)
class PatchMetric:
    """A differentiable scalar of a forward pass: `fn(logits, batch)`. `name` keys the cache."""

    name: str
    fn: Callable[[Tensor, Batch], Tensor]


def mean_logprob(mask_key: str | None = None) -> PatchMetric:
    """Mean log-probability of the batch's targets at its scored positions (and
    `batch[mask_key]`): minus the loss there."""

    def fn(logits: Tensor, batch: Batch) -> Tensor:
        mask = scored_positions(batch)
        if mask_key is not None:
            mask = mask & batch[mask_key].bool()
        if not mask.any():
            raise ValueError(f"mean_logprob: no scored position{' in ' + mask_key if mask_key else ''}")
        targets = targets_of(batch).clamp_min(0)
        logprobs = logits.float().log_softmax(-1).gather(-1, targets[..., None])[..., 0]
        return logprobs[mask].mean()

    return PatchMetric(f"mean_logprob({mask_key})", fn)


def source_batch(batch: Batch) -> Batch:
    """The source run's batch: the source tokens, scored against the base run's targets."""
    if SOURCE_KEY not in batch:
        raise KeyError(f"batch: patching needs {SOURCE_KEY!r} (the tokens the patched-in activations come from)")
    if batch[SOURCE_KEY].shape != batch["tokens"].shape:
        raise ValueError(f"batch: {SOURCE_KEY} {tuple(batch[SOURCE_KEY].shape)} must have the tokens' shape "
                         f"{tuple(batch['tokens'].shape)}")
    return {**batch, "tokens": batch[SOURCE_KEY], "targets": targets_of(batch)}


def _run(model: TransformerBridge, batch: Batch, fwd_hooks: Sequence[tuple[str, Any]] = (),
         names: Sequence[str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits (and the named activations) of one forward pass with the batch's input vectors."""
    with model.hooks(fwd_hooks=input_hooks(model, batch) + list(fwd_hooks)):
        if names is None:
            return model(batch["tokens"]), {}
        logits, cache = model.run_with_cache(batch["tokens"], names_filter=list(names))
    return logits, dict(cache.items())


# --- sender writes and receiver inputs ------------------------------------------------------


def _write_hooks(shape: ModelShape) -> list[str]:
    senders = [EMBED, *(HeadId(layer, 0) for layer in range(shape.n_layers)),
               *([] if shape.attn_only else [MlpId(layer) for layer in range(shape.n_layers)])]
    return [_write_name(sender) for sender in senders]


def _write_name(sender: Node) -> str:
    """The hook `_write` reads `sender`'s write from (a head's: its layer's `hook_z`)."""
    if sender == EMBED:
        return hooks.resid_pre(0)
    if isinstance(sender, HeadId):
        return hooks.head_output(sender.layer)
    assert isinstance(sender, MlpId)
    return f"blocks.{sender.layer}.hook_mlp_out"


def _write(model: TransformerBridge, acts: Mapping[str, Tensor], sender: Node) -> Tensor:
    """`sender`'s write to the residual stream, `[batch, pos, d_model]` (a head's without the
    layer's shared output bias, which is the same in every run)."""
    if isinstance(sender, HeadId):
        z = acts[_write_name(sender)][:, :, sender.head]
        return z @ model.W_O[sender.layer, sender.head]
    return acts[_write_name(sender)]


def _norm(model: TransformerBridge, layer: int) -> Callable[[Tensor], Tensor]:
    return model.blocks[layer].ln1


def _head_input(model: TransformerBridge, edge_input: str, head: HeadId, resid: Tensor) -> Tensor:
    """What `head`'s q, k or v projection makes of `resid` (its own copy of the residual)."""
    weight = getattr(model, f"W_{edge_input.upper()}")[head.layer, head.head]
    bias = getattr(model, f"b_{edge_input.upper()}")[head.layer, head.head]
    return _norm(model, head.layer)(resid) @ weight + bias


def _reader_hook(receiver: Node, edge_input: str | None) -> str:
    """The hook whose value is the receiver's input: a head's q/k/v (patched per head), an
    MLP's pre-norm input, the final norm's input."""
    if isinstance(receiver, HeadId):
        return f"blocks.{receiver.layer}.attn.hook_{edge_input}"
    if isinstance(receiver, MlpId):
        return f"blocks.{receiver.layer}.ln2.hook_in"
    return "ln_final.hook_in"


def _check_edges(shape: ModelShape, edges: Sequence[EdgeId]) -> None:
    known = set(shape.edges())
    for edge in edges:
        if edge not in known:
            raise ValueError(f"edges: {edge} is not an edge of this model (n_layers={shape.n_layers}, "
                             f"n_heads={shape.n_heads}, attn_only={shape.attn_only})")


# --- path patching ------------------------------------------------------------------------


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
    `writes`: the base and source activations of `_write_hooks`, when already computed
    (only the source's are read: the senders' current writes come from the patched run)."""
    shape = ModelShape.of(model.cfg)
    _check_edges(shape, edges)
    edges = list(dict.fromkeys(edges))
    source = writes[1] if writes is not None else _run(model, source_batch(batch), names=_write_hooks(shape))[1]
    senders: dict[tuple[Node, str | None], list[Node]] = {}
    for edge in edges:
        senders.setdefault((edge.receiver, edge.input), []).append(edge.sender)
    source_writes = {edge.sender: _write(model, source, edge.sender) for edge in edges}
    live: dict[str, Tensor] = {}  # this run's activations of the patched senders' write hooks

    def keep(value: Tensor, hook: Any, name: str) -> None:
        live[name] = value.clone()

    def swapped(resid: Tensor, key: tuple[Node, str | None]) -> Tensor:
        """`resid` with each patched sender's current write swapped for its source write."""
        for sender in senders[key]:
            resid = resid - _write(model, live, sender) + source_writes[sender]
        return resid

    def patch_head(value: Tensor, hook: Any, head: HeadId, edge_input: str) -> Tensor:
        value = value.clone()
        resid = swapped(live[hooks.resid_pre(head.layer)], (head, edge_input))
        value[:, :, head.head] = _head_input(model, edge_input, head, resid)
        return value

    kept = {_write_name(edge.sender) for edge in edges}
    kept |= {hooks.resid_pre(r.layer) for r, _ in senders if isinstance(r, HeadId)}
    fwd: list[tuple[str, Any]] = [(name, partial(keep, name=name)) for name in sorted(kept)]
    for key in senders:
        receiver, edge_input = key
        if isinstance(receiver, HeadId):
            assert edge_input is not None
            fwd.append((_reader_hook(receiver, edge_input), partial(patch_head, head=receiver, edge_input=edge_input)))
        else:
            fwd.append((_reader_hook(receiver, None), lambda value, hook, key=key: swapped(value, key)))
    with torch.no_grad():
        logits, _ = _run(model, batch, fwd)
        return float(metric.fn(logits, batch))


def path_patch_edges(model: TransformerBridge, batch: Batch, metric: PatchMetric,
                     edges: Sequence[EdgeId] | None = None) -> dict[str, float]:
    """`path_patch` of each edge alone (default: every edge of the model), with the
    baselines `base` (no patch) and `source` (the source run scored on the base targets)."""
    shape = ModelShape.of(model.cfg)
    edges = shape.edges() if edges is None else list(edges)
    with torch.no_grad():
        base_logits, base = _run(model, batch, names=_write_hooks(shape))
        source_logits, source = _run(model, source_batch(batch), names=_write_hooks(shape))
        out = {"base": float(metric.fn(base_logits, batch)), "source": float(metric.fn(source_logits, batch))}
    for edge in edges:
        out[str(edge)] = path_patch(model, batch, metric, [edge], writes=(base, source))
    return out


# --- edge attribution -------------------------------------------------------------------------


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
        base_logits, base = _run(model, batch, names=_write_hooks(shape))
        _, source = _run(model, source_batch(batch), names=_write_hooks(shape))
    embed, embed_change = base[hooks.resid_pre(0)], source[hooks.resid_pre(0)] - base[hooks.resid_pre(0)]
    alphas = [0.0] if ig_steps == 1 else [(k + 0.5) / ig_steps for k in range(ig_steps)]
    receiver_grads: dict[tuple[Node, str | None], Tensor] = {}
    for alpha in alphas:
        for key, grad in _gradients_at(model, batch, metric, shape, embed + alpha * embed_change).items():
            receiver_grads[key] = receiver_grads.get(key, 0) + grad / len(alphas)
    out: dict[str, float] = {"base": float(metric.fn(base_logits, batch))}
    with torch.no_grad():
        deltas = {s: _write(model, source, s) - _write(model, base, s) for s in shape.nodes() if s != LOGITS}
    for edge in shape.edges():
        score = float((deltas[edge.sender] * receiver_grads[(edge.receiver, edge.input)]).sum())
        out[str(edge)] = score
        node = f"node/{edge.sender}"
        out[node] = out.get(node, 0.0) + score
    return out


def _gradients_at(model: TransformerBridge, batch: Batch, metric: PatchMetric, shape: ModelShape,
                  embed: Tensor) -> dict[tuple[Node, str | None], Tensor]:
    """d metric / d (each receiver input) in the run whose input embedding is `embed`."""
    acts: dict[str, Tensor] = {}

    def track(value: Tensor, hook: Any, name: str) -> Tensor:
        # The embedding is the root of the graph (no parameter gradients are needed); every
        # other reader gets its own copy, so its gradient is what flows through it alone.
        value = embed.detach().clone().requires_grad_(True) if name == hooks.resid_pre(0) else value.clone()
        acts[name] = value
        return value

    readers = {hooks.resid_pre(layer) for layer in range(shape.n_layers)}
    readers |= {f"blocks.{layer}.attn.hook_{c}" for layer in range(shape.n_layers) for c in "qkv"}
    readers |= {"ln_final.hook_in"} | ({f"blocks.{layer}.ln2.hook_in" for layer in range(shape.n_layers)}
                                       if not shape.attn_only else set())
    with torch.enable_grad():
        logits, _ = _run(model, batch, [(name, partial(track, name=name)) for name in sorted(readers)])
        names = sorted(acts)
        found = torch.autograd.grad(metric.fn(logits, batch), [acts[n] for n in names], allow_unused=True)
    grads = {n: g for n, g in zip(names, found, strict=True) if g is not None}
    return _receiver_grads(model, shape, acts, grads)


def _receiver_grads(model: TransformerBridge, shape: ModelShape, acts: Mapping[str, Tensor],
                    grads: Mapping[str, Tensor]) -> dict[tuple[Node, str | None], Tensor]:
    """d metric / d (each receiver input's own copy of the residual), `[batch, pos, d_model]`.
    For a head's q/k/v input: the gradient at its slice of `hook_q/k/v`, pulled back
    through the projection and the shared pre-norm, one head at a time."""
    zero = torch.zeros_like(acts[hooks.resid_pre(0)])
    out: dict[tuple[Node, str | None], Tensor] = {}
    for layer in range(shape.n_layers):
        resid = acts[hooks.resid_pre(layer)].detach()
        for edge_input in "qkv":
            grad = grads.get(f"blocks.{layer}.attn.hook_{edge_input}")
            for h in range(shape.n_heads):
                head = HeadId(layer, h)
                if grad is None:  # the metric does not depend on it (e.g. a query nobody scores)
                    out[(head, edge_input)] = zero
                    continue
                copy_ = resid.clone().requires_grad_(True)
                with torch.enable_grad():
                    projected = _head_input(model, edge_input, head, copy_)
                    (pulled,) = torch.autograd.grad(projected, copy_, grad_outputs=grad[:, :, h])
                out[(head, edge_input)] = pulled
        if not shape.attn_only:
            out[(MlpId(layer), None)] = grads.get(f"blocks.{layer}.ln2.hook_in", zero)
    out[(LOGITS, None)] = grads.get("ln_final.hook_in", zero)
    return out


# --- activation patching (TransformerLens) --------------------------------------------------

ActivationKind = Literal["head_out", "q", "k", "v", "pattern", "resid_pre", "attn_out", "mlp_out"]
_HEAD_SWEEPS: dict[str, tuple[Callable[..., Tensor], Callable[..., Tensor]]] = {
    "head_out": (tl_patching.get_act_patch_attn_head_out_all_pos, tl_patching.get_act_patch_attn_head_out_by_pos),
    "q": (tl_patching.get_act_patch_attn_head_q_all_pos, tl_patching.get_act_patch_attn_head_q_by_pos),
    "k": (tl_patching.get_act_patch_attn_head_k_all_pos, tl_patching.get_act_patch_attn_head_k_by_pos),
    "v": (tl_patching.get_act_patch_attn_head_v_all_pos, tl_patching.get_act_patch_attn_head_v_by_pos),
    "pattern": (tl_patching.get_act_patch_attn_head_pattern_all_pos,
                tl_patching.get_act_patch_attn_head_pattern_by_pos),
}
_LAYER_SWEEPS: dict[str, Callable[..., Tensor]] = {
    "resid_pre": tl_patching.get_act_patch_resid_pre,
    "attn_out": tl_patching.get_act_patch_attn_out,
    "mlp_out": tl_patching.get_act_patch_mlp_out,
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
    source = source_batch(batch)
    with torch.no_grad():
        source_logits, source_cache = _run_cache(model, source)
        base_logits = _run(model, batch)[0]

        def scored(logits: Tensor) -> Tensor:
            return metric.fn(logits, batch)

        # TransformerLens's sweeps draw an unconditional progress bar; a library call stays quiet.
        with model.hooks(fwd_hooks=input_hooks(model, batch)), contextlib.redirect_stderr(io.StringIO()):
            if kind in _HEAD_SWEEPS:
                sweep = _HEAD_SWEEPS[kind][1 if by_position else 0]
                result = sweep(model, batch["tokens"], source_cache, scored)
            else:
                result = _LAYER_SWEEPS[kind](model, batch["tokens"], source_cache, scored) if by_position else \
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


def _run_cache(model: TransformerBridge, batch: Batch) -> tuple[Tensor, Any]:
    with model.hooks(fwd_hooks=input_hooks(model, batch)):
        return model.run_with_cache(batch["tokens"])


# --- cross-checkpoint patching --------------------------------------------------------------

Component = Node
"""What moves between checkpoints: the embedding (token, position and input-vector weights),
a head, an MLP (with its pre-norm), or the logits (the final norm and the unembedding)."""
CrossMode = Literal["weights", "activations"]
_HEAD_PARAM = re.compile(r"blocks\.(\d+)\.attn\.([qkvo])\.(weight|bias)")


def components(shape: ModelShape) -> list[Component]:
    return shape.nodes()


def _owner(name: str) -> Component | tuple[str, int]:
    """The component a parameter belongs to; a layer's shared attention parameters (its
    pre-norm, the output bias) belong to `("attention", layer)`: they move with the
    layer's heads only when all of them move."""
    if name.startswith(("embed.", "pos_embed.", "input_proj.")):
        return EMBED
    if name.startswith(("ln_final.", "unembed.")):
        return LOGITS
    parts = name.split(".")
    layer = int(parts[1])
    if parts[2] in ("ln2", "mlp"):
        return MlpId(layer)
    return ("attention", layer)


def _swap_weights(target: dict[str, Tensor], source: Mapping[str, Tensor], moved: set[Component],
                  n_heads: int) -> dict[str, Tensor]:
    state = dict(target)
    whole_layers = {layer for layer in {h.layer for h in moved if isinstance(h, HeadId)}
                    if all(HeadId(layer, h) in moved for h in range(n_heads))}
    for name, value in target.items():
        owner = _owner(name)
        match = _HEAD_PARAM.fullmatch(name)
        if owner in moved or (isinstance(owner, tuple) and owner[1] in whole_layers):
            state[name] = source[name]
        elif match and not (match[2] == "o" and match[3] == "bias"):
            chosen = [h for h in range(n_heads) if HeadId(int(match[1]), h) in moved]
            if not chosen:
                continue
            mixed = value.clone()
            width = value.shape[-1 if match[2] == "o" else 0] // n_heads
            for h in chosen:
                rows = slice(h * width, (h + 1) * width)
                if match[2] == "o":
                    mixed[:, rows] = source[name][:, rows]
                else:
                    mixed[rows] = source[name][rows]
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
            return float(metric.fn(_run(scratch, batch)[0], batch))
    if mode != "activations":
        raise ValueError(f"mode: expected 'weights' or 'activations', got {mode!r}")
    with torch.no_grad():
        names = _write_hooks(shape) + [f"blocks.{layer}.hook_attn_out" for layer in range(shape.n_layers)]
        source_logits, source = _run(source_model, batch, names=names)
        if LOGITS in moved_set:
            return float(metric.fn(source_logits, batch))
        logits, _ = _run(model, batch, _activation_hooks(source_model, model, source, moved_set, shape))
        return float(metric.fn(logits, batch))


def _activation_hooks(source_model: TransformerBridge, model: TransformerBridge, source: Mapping[str, Tensor],
                      moved: set[Component], shape: ModelShape) -> list[tuple[str, Any]]:
    fwd: list[tuple[str, Any]] = []
    live_z: dict[int, Tensor] = {}
    if EMBED in moved:
        fwd.append((hooks.resid_pre(0), lambda value, hook: source[hooks.resid_pre(0)]))
    for layer in range(shape.n_layers):
        heads = [HeadId(layer, h) for h in range(shape.n_heads) if HeadId(layer, h) in moved]
        if len(heads) == shape.n_heads:
            fwd.append((f"blocks.{layer}.hook_attn_out", lambda value, hook, layer=layer:
                        source[f"blocks.{layer}.hook_attn_out"]))
        elif heads:
            fwd.append((hooks.head_output(layer), lambda value, hook, layer=layer: live_z.__setitem__(layer, value)))

            def swap(value: Tensor, hook: Any, heads: list[HeadId] = heads) -> Tensor:
                for head in heads:
                    own = live_z[head.layer][:, :, head.head] @ model.W_O[head.layer, head.head]
                    value = value - own + _write(source_model, source, head)
                return value

            fwd.append((f"blocks.{layer}.hook_attn_out", swap))
        if MlpId(layer) in moved:
            fwd.append((f"blocks.{layer}.hook_mlp_out", lambda value, hook, layer=layer:
                        source[f"blocks.{layer}.hook_mlp_out"]))
    return fwd


# --- probes ------------------------------------------------------------------------------------


def path_patching_probe(metric: PatchMetric, edges: Sequence[EdgeId] | None = None) -> Probe:
    """`path_patch_edges` at every checkpoint; columns are edges plus `base` and `source`."""
    chosen = None if edges is None else tuple(edges)
    name = f"path_patching({metric.name},edges={None if chosen is None else tuple(map(str, chosen))})"
    return Probe(name=name, hooks=(), fn=lambda ctx: path_patch_edges(ctx.model, _need(ctx), metric, chosen),
                 reads="batch")


def edge_attribution_probe(metric: PatchMetric, ig_steps: int = 1) -> Probe:
    """`edge_attribution` at every checkpoint; columns are edges, `node/<sender>` and `base`."""
    name = f"edge_attribution({metric.name})" if ig_steps == 1 else f"edge_attribution({metric.name},ig={ig_steps})"
    return Probe(name=name, hooks=(), fn=lambda ctx: edge_attribution(ctx.model, _need(ctx), metric, ig_steps),
                 reads="batch")


def activation_patching_probe(metric: PatchMetric, kind: ActivationKind = "head_out",
                              by_position: bool = False) -> Probe:
    return Probe(name=f"activation_patching({metric.name},{kind},by_position={by_position})", hooks=(),
                 fn=lambda ctx: activation_patch(ctx.model, _need(ctx), metric, kind, by_position), reads="batch")


def cross_checkpoint_probe(load_source: Callable[[torch.device], TransformerBridge], source_id: str,
                           metric: PatchMetric, mode: CrossMode = "weights",
                           moved: Sequence[Component] | None = None) -> Probe:
    """At every checkpoint B: `metric` with each component (default: every one) taken
    alone from the source checkpoint A, plus `base` (B itself) and `source` (A itself).
    `load_source(device)` loads A once, on first use; `source_id` (e.g. A's checkpoint
    hash) keys the cache."""
    held: dict[str, Any] = {}

    def fn(ctx: ProbeContext) -> dict[str, float]:
        batch = _need(ctx)
        device = next(ctx.model.parameters()).device
        if "source" not in held:
            held["source"] = load_source(device)
            held["scratch"] = copy.deepcopy(ctx.model)
        source_model, scratch = held["source"], held["scratch"]
        chosen = components(ModelShape.of(ctx.model.cfg)) if moved is None else list(moved)
        with torch.no_grad():
            out = {"base": float(metric.fn(_run(ctx.model, batch)[0], batch)),
                   "source": float(metric.fn(_run(source_model, batch)[0], batch))}
        for component in chosen:
            out[str(component)] = cross_checkpoint_patch(source_model, ctx.model, batch, metric, [component], mode,
                                                         scratch=scratch)
        return out

    chosen_name = None if moved is None else tuple(map(str, moved))
    return Probe(name=f"cross_checkpoint({source_id},{metric.name},{mode},moved={chosen_name})", hooks=(), fn=fn,
                 reads="batch")


def _need(ctx: ProbeContext) -> Batch:
    if ctx.batch is None:
        raise ValueError("batch: circuit patching probes need a batch with tokens and source_tokens")
    return ctx.batch


__all__ = ["PatchMetric", "SOURCE_KEY", "Terminal", "activation_patch", "activation_patching_probe",
           "cross_checkpoint_patch", "cross_checkpoint_probe", "edge_attribution", "edge_attribution_probe",
           "mean_logprob", "path_patch", "path_patch_edges", "path_patching_probe", "source_batch"]
