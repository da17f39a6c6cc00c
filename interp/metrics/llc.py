"""The local learning coefficient (LLC; Lau et al. 2023) of a model at its current weights,
estimated by SGLD with devinterp's sampler, with its diagnostics, and as a probe over
checkpoints; the refined LLC of one component (Wang et al. 2024: a head, an MLP, the
embedding or the logits), sampling only that component's weights, optionally on a loss
restricted to some positions.

The estimate is `nbeta * (mean loss over the post-burn-in draws - loss at the weights)`,
sampling from `exp(-nbeta * L(w) - gamma/2 * |w - w0|^2)` with devinterp's SGLD optimizer. An
estimate says when it is not trustworthy (a chain diverged, a loss trace still drifting after
burn-in, chains disagreeing) instead of returning a bare number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from interp.bridge import NativeParts, head_slices, native_parts, parameter_owner
from interp.checkpoints import CheckpointSource, open_checkpoints
from interp.circuits.graph import ModelShape
from interp.errors import InputError, MissingFileError
from interp.files import atomic_write_json, atomic_write_npy, read_json
from interp.ids import HeadId, Node
from interp.metrics.llc_settings import LLCSettings
from interp.model import (
    Batch,
    forward,
    fused_attention,
    fused_logits_after_attention,
    fused_residual,
    masked_mean_loss,
    named_trainable_parameters,
    scored_positions,
)
from interp.probe_cache import probe_artifacts
from interp.probing import Probe, ProbeContext
from interp.seeding import LLC_BATCHES, LLC_NOISE, generator

DIVERGENCE_MARGIN = 2.0
"""A chain diverged when its loss rises above the initial loss by more than
`DIVERGENCE_MARGIN * (d / 2) / nbeta` over a third of its draws, d the number of weight entries
sampled: twice the rise of the largest LLC a local minimum can have (d/2), so the chain has
left the basin."""
DRIFT_TOLERANCE = 2.0
"""The trace is not flat when the first and last thirds of the post-burn-in draws differ (in
LLC units) by more than `DRIFT_TOLERANCE` chain spreads (plus `RELATIVE_FLOOR` of the estimate)."""
CHAIN_DISAGREEMENT = 0.25
"""Chains disagree when the spread over chains exceeds this fraction of the estimate."""
RELATIVE_FLOOR = 0.05
"""Slack, as a fraction of the estimate, that keeps a near-zero spread from flagging noise."""
STREAMS = "streams=per-checkpoint"
"""In the LLC probes' names: each checkpoint's chains draw from streams of its step
(`estimate_llc(step=)`); results cached before, from one stream for all checkpoints, are other
computations and are not returned."""

Data = Mapping[str, Tensor]
"""Named tensors with one row per example along dim 0 (a `Batch` is one)."""
LossFn = Callable[[nn.Module, Data], Tensor]
"""`(model, rows) -> the mean loss over the rows` (a scalar with a gradient)."""
WeightMasks = Mapping[str, Tensor]
"""Parameter name (as `interp.model.named_trainable_parameters` names it, e.g.
`blocks.0.attn.q.weight`) -> bool mask of the parameter's shape, True at the entries sampled;
parameters not named are held fixed."""
Component = Node
"""What a refined LLC samples: a head (its rows of W_Q/W_K/W_V and their biases, its columns
of W_O), an MLP (with its pre-norm), the embedding (token, position and input-vector weights)
or the logits (the final norm and the unembedding), as `interp.bridge.parameter_owner` splits
the weights."""


@dataclass(frozen=True)
class LLCEstimate:
    llc: float
    """Mean over chains."""
    llc_std: float
    """Standard deviation over chains (0 with one chain)."""
    llc_per_chain: tuple[float, ...]
    init_loss: float
    """The loss at the weights estimated at, over all the data."""
    loss_traces: tuple[tuple[float, ...], ...]
    """Per chain, the minibatch loss at every step, burn-in included (shorter if it diverged)."""
    problems: tuple[str, ...] = field(default=())
    """Why the estimate is not trustworthy; empty when it is."""
    sampled_entries: int = 0
    """How many weight entries were sampled (the `d` of the divergence margin)."""

    @property
    def trustworthy(self) -> bool:
        return not self.problems


def sampled_parameters(model: nn.Module, restrict_to: Sequence[str] = ()) -> list[tuple[str, nn.Parameter]]:
    """The parameters an LLC estimate samples: all, or those matching a `restrict_to` pattern."""
    named = named_trainable_parameters(model)
    chosen = [(n, p) for n, p in named if not restrict_to or any(fnmatchcase(n, pat) for pat in restrict_to)]
    if not chosen:
        raise InputError(f"restrict_to: no parameter matches {list(restrict_to)}; names: {[n for n, _ in named]}")
    return chosen


def _rows(data: Data) -> int:
    counts = {key: len(t) for key, t in data.items()}
    if not counts or len(set(counts.values())) != 1:
        raise InputError(f"data: expected tensors with the same number of rows, got {counts}")
    return next(iter(counts.values()))


def _full_loss(model: nn.Module, loss_fn: LossFn, data: Data, n: int, batch_size: int) -> float:
    with torch.no_grad():
        total = sum(float(loss_fn(model, {k: t[i:i + batch_size] for k, t in data.items()}))
                    * (min(n, i + batch_size) - i) for i in range(0, n, batch_size))
    return total / n


def _sampled(model: nn.Module, settings: LLCSettings,
             masks: WeightMasks | None) -> list[tuple[str, nn.Parameter, Tensor | None]]:
    """(name, parameter, mask of the entries sampled or None for all of them) of every sampled parameter."""
    if masks is None:
        return [(name, p, None) for name, p in sampled_parameters(model, settings.restrict_to)]
    if settings.restrict_to:
        raise InputError("masks: give weight masks or settings.restrict_to, not both")
    named = dict(named_trainable_parameters(model))
    chosen = []
    for name, mask in masks.items():
        if name not in named:
            raise InputError(f"masks: no parameter named {name!r}; names: {list(named)}")
        p = named[name]
        if mask.dtype != torch.bool or mask.shape != p.shape:
            raise InputError(f"masks: expected a bool mask of shape {tuple(p.shape)} for {name!r}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        if mask.any():
            chosen.append((name, p, None if mask.all() else mask.to(p.device)))
    if not chosen:
        raise InputError("masks: expected at least one sampled weight entry, got none (every mask is all False)")
    return chosen


StepLoss = Callable[[Tensor], Tensor]
"""`(row indices into the data) -> that minibatch's mean loss` at the sampled weights."""
Sampled = list[tuple[str, Tensor, Tensor | None]]
"""(parameter name, the tensor SGLD moves, mask of the entries sampled or None for all of them)."""


def _chain(step_loss: StepLoss, sampled: Sampled, n: int, settings: LLCSettings, chain: int,
           checkpoint: tuple[int, ...]) -> list[float]:
    """One SGLD chain from the sampled tensors' current values; its minibatch loss at every
    step, stopping at the first non-finite one. `checkpoint`: `(step,)` to draw this
    checkpoint's own minibatches and noise, or `()` for the seed's."""
    from devinterp.optim import SGMCMC

    batches = generator(settings.seed, LLC_BATCHES, chain, *checkpoint)
    # Drawn by CPU generators (the toolkit's streams), whatever device the model is on.
    noise_seed = int(torch.randint(2**62, (1,), generator=generator(settings.seed, LLC_NOISE, chain, *checkpoint),
                                   device="cpu"))
    # devinterp's mask scales the gradient, localization and noise of an entry alike: masked entries never move
    groups = [{"params": [p], "mask": None if mask is None else mask.to(p.dtype)} for _, p, mask in sampled]
    optimizer = SGMCMC.sgld(groups, lr=settings.lr, nbeta=settings.effective_nbeta, localization=settings.gamma)
    trace: list[float] = []
    # devinterp draws its noise from torch's global stream; the caller's is left as it was
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(noise_seed)
        for _ in range(settings.burn_in + settings.draws):
            loss = step_loss(torch.randint(n, (settings.batch_size,), generator=batches, device="cpu"))
            value = float(loss.detach())
            trace.append(value)
            if not math.isfinite(value):
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return trace


def estimate_llc(model: nn.Module, loss_fn: LossFn, data: Data, settings: LLCSettings,
                 masks: WeightMasks | None = None, init_loss: float | None = None,
                 step: int | None = None) -> LLCEstimate:
    """The LLC of `model` at its current weights on `data` (rows drawn with replacement, one
    minibatch per SGLD step), and whether to trust it. The model's weights are left as found.

    `masks` (e.g. `component_masks(model, HeadId(1, 0))`): sample only those weight entries,
    the rest held at their values: the refined LLC of that part of the model. `init_loss`: the
    loss at the weights over all the data, when the caller has it (it does not depend on the
    masks; `refined_llc_probe` computes it once for all components).

    `step`: the checkpoint's training step, when estimates are made at several checkpoints: the
    chains then draw minibatches and noise from streams of `(settings.seed, step)`, so the
    estimates at different checkpoints have independent errors. With one stream for every
    checkpoint, a chain that runs high at one checkpoint runs high at the next, and the chains'
    spread, seen at every checkpoint, measures the noise of only `chains` draws however many
    checkpoints there are (`interp.metrics.stages` takes its noise level from that spread)."""
    return _estimate(model, loss_fn, data, settings, masks, init_loss, {}, step)


def _estimate(model: nn.Module, loss_fn: LossFn, data: Data, settings: LLCSettings, masks: WeightMasks | None,
              init_loss: float | None, layer_inputs: dict[int, _LayerInputs], step: int | None) -> LLCEstimate:
    """`estimate_llc`, reading and filling `layer_inputs` (by layer) for a head's refined LLC."""
    n = _rows(data)
    sampled = _sampled(model, settings, masks)
    entries = sum(p.numel() if mask is None else int(mask.sum()) for _, p, mask in sampled)
    head = _sampled_head(model, loss_fn, masks)
    saved = [(p, p.detach().clone(), p.requires_grad) for _, p in named_trainable_parameters(model)]
    # The head path samples copies of the layer's weights: no model parameter needs a gradient
    sampled_ids = set() if head is not None else {id(p) for _, p, _ in sampled}
    nbeta = settings.effective_nbeta
    try:
        for p, _, _ in saved:
            p.requires_grad_(id(p) in sampled_ids)
        if init_loss is None:
            init_loss = _full_loss(model, loss_fn, data, n, settings.batch_size)
        one_head = None
        if head is not None:
            if head.layer not in layer_inputs:
                layer_inputs.clear()  # one layer's at a time: they are n_rows x n_ctx x d_model each
                layer_inputs[head.layer] = _LayerInputs.of(model, head.layer, data, settings.batch_size)
            one_head = _OneHeadLoss(layer_inputs[head.layer], head, loss_fn, data)
        traces = []
        checkpoint = () if step is None else (step,)
        for chain in range(settings.chains):
            if one_head is None:
                traces.append(_chain(lambda rows: loss_fn(model, {k: t[rows.to(t.device)] for k, t in data.items()}),
                                     sampled, n, settings, chain, checkpoint))
            else:
                copies = [(name, p.detach().clone().requires_grad_(), mask) for name, p, mask in sampled]
                weights = {name: p for name, p, _ in copies}
                traces.append(_chain(lambda rows, weights=weights: one_head(weights, rows), copies, n, settings, chain,
                                     checkpoint))
            with torch.no_grad():
                for p, value, _ in saved:
                    p.copy_(value)
    finally:
        with torch.no_grad():
            for p, value, requires_grad in saved:
                p.copy_(value)
                p.requires_grad_(requires_grad)
                p.grad = None

    problems: list[str] = []
    steps = settings.burn_in + settings.draws
    margin = DIVERGENCE_MARGIN * entries / 2 / nbeta
    healthy = []
    for chain, trace in enumerate(traces):
        if len(trace) < steps or not all(math.isfinite(v) for v in trace):
            problems.append(f"chain {chain} diverged: non-finite loss at step {len(trace) - 1}")
        elif (worst := max(float(np.mean(part)) for part in np.array_split(trace[settings.burn_in:], 3))) \
                > init_loss + margin:  # a third's mean, as one minibatch's loss is noisy
            problems.append(f"chain {chain} diverged: its loss, {worst:.4g} over a third of the draws, rose above "
                            f"the initial {init_loss:.4g} by more than {margin:.3g}")
        else:
            healthy.append(chain)
    per_chain = [nbeta * (float(np.mean(trace[settings.burn_in:])) - init_loss) if chain in healthy else math.nan
                 for chain, trace in enumerate(traces)]
    kept = np.array([per_chain[c] for c in healthy])
    llc = float(kept.mean()) if len(kept) else math.nan
    llc_std = float(kept.std()) if len(kept) else math.nan
    if len(kept):
        draws = np.array([traces[c][settings.burn_in:] for c in healthy]).mean(axis=0)
        third = len(draws) // 3
        drift = nbeta * abs(float(draws[-third:].mean() - draws[:third].mean()))
        if drift > DRIFT_TOLERANCE * llc_std + RELATIVE_FLOOR * abs(llc):
            problems.append(f"loss trace not flat after burn-in: first and last thirds differ by {drift:.3g} "
                            f"(LLC units), chain spread {llc_std:.3g}")
        if len(kept) > 1 and llc_std > CHAIN_DISAGREEMENT * abs(llc):
            problems.append(f"chains disagree: spread {llc_std:.3g} over mean {llc:.3g}")
        if llc < 0:
            problems.append(f"negative LLC {llc:.3g}: the weights are not at a local minimum of the loss")
    return LLCEstimate(llc, llc_std, tuple(per_chain), init_loss, tuple(tuple(t) for t in traces), tuple(problems),
                       entries)


# --- refined LLC: one component's weights, optionally a restricted loss ---------------------------


def component_masks(model: nn.Module, component: Component) -> dict[str, Tensor]:
    """The weight entries of `component` (see `Component`) in a model built by `interp.model`,
    as `WeightMasks` for `estimate_llc`. A layer's attention pre-norm and output bias, shared by
    its heads, belong to no head."""
    shape = ModelShape.of(model.cfg)
    if component not in shape.nodes():
        raise InputError(f"component: expected one of {[str(c) for c in shape.nodes()]}, got {component!s}")
    masks = {}
    for name, p in named_trainable_parameters(model):
        if isinstance(component, HeadId):
            split = head_slices(name)
            if split is None or split.layer != component.layer:
                continue
            mask = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
            mask[split.index(component.head, shape.n_heads, tuple(p.shape))] = True
        elif parameter_owner(name) == component:
            mask = torch.ones(p.shape, dtype=torch.bool, device=p.device)
        else:
            continue
        masks[name] = mask
    return masks


@dataclass(frozen=True)
class ScoredLoss:
    """The toolkit's training loss, mean cross-entropy over the scored positions, or over only
    those where `rows[positions]` (a bool `[batch, pos]` mask in the batch, e.g. the
    repeated-token positions) is True: the data restriction of a refined LLC. A `LossFn`; being
    a function of the logits, it lets a head's refined LLC skip what the head's weights do not
    change (`estimate_llc`)."""

    positions: str | None = None

    def __call__(self, model: nn.Module, rows: Data) -> Tensor:
        return self.of_logits(forward(model, rows), rows)

    def of_logits(self, logits: Tensor, rows: Data) -> Tensor:
        if self.positions is None:
            return masked_mean_loss(logits, rows)
        chosen = rows.get(self.positions)
        if chosen is None or chosen.dtype != torch.bool or chosen.shape != rows["tokens"].shape:
            raise InputError(f"batch: expected a bool mask {self.positions!r} shaped like the tokens, of the positions "
                             f"the loss reads; got {None if chosen is None else (chosen.dtype, tuple(chosen.shape))}")
        return masked_mean_loss(logits, {**rows, "loss_mask": scored_positions(rows) & chosen})


language_model_loss = ScoredLoss()
"""The toolkit's training loss on the rows: mean cross-entropy over the scored positions."""


def loss_on_positions(key: str) -> ScoredLoss:
    """The training loss over only the scored positions where `rows[key]` is True (`ScoredLoss`).
    Name it in the probe's `loss_name` (e.g. `f"positions={key}"`)."""
    return ScoredLoss(key)


def _sampled_head(model: nn.Module, loss_fn: LossFn, masks: WeightMasks | None) -> HeadId | None:
    """The head whose weights `masks` sample exactly (`component_masks`), when the loss is a
    function of the fused forward's logits; else None (the whole model runs at every step)."""
    if masks is None or not isinstance(loss_fn, ScoredLoss):
        return None
    splits = {head_slices(name) for name, mask in masks.items() if mask.any()}
    if None in splits or len({split.layer for split in splits}) != 1:
        return None
    layer = next(iter(splits)).layer
    for head in range(model.cfg.n_heads):
        expected = component_masks(model, HeadId(layer, head))
        if expected.keys() == masks.keys() and all(torch.equal(expected[k], masks[k].to(expected[k].device))
                                                   for k in masks):
            return HeadId(layer, head)
    return None


@dataclass(frozen=True)
class _LayerInputs:
    """What a block's heads' refined LLCs read that their weights do not change, for every row
    of the data: computed once per layer and checkpoint, shared by the layer's heads and chains."""

    parts: NativeParts
    layer: int
    normed: Tensor
    """The block's normed input (`ln1` of the residual stream entering it), `[row, pos, d_model]`."""
    attended: Tensor
    """The residual stream after the block's attention, `[row, pos, d_model]`."""
    heads: Tensor
    """Every head's attention output before W_O, `[row, pos, n_heads * d_head]`."""

    @classmethod
    def of(cls, model: nn.Module, layer: int, data: Data, chunk: int) -> _LayerInputs:
        parts = native_parts(model)
        block = parts.blocks[layer]
        attn = block.attn
        normed, attended, heads = [], [], []
        with torch.no_grad():
            for start in range(0, _rows(data), chunk):
                h = fused_residual(model, {k: t[start:start + chunk] for k, t in data.items()}, layer)
                x = block.ln1(h)
                z = fused_attention(parts, layer, x, torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]),
                                    torch.cat([attn.q.bias, attn.k.bias, attn.v.bias])).transpose(1, 2).flatten(2)
                normed.append(x)
                attended.append(h + attn.o(z))
                heads.append(z)
        return cls(parts, layer, torch.cat(normed), torch.cat(attended), torch.cat(heads))


class _OneHeadLoss:
    """A head's refined-LLC minibatch loss with the other weights at their values, from the
    layer's `_LayerInputs`: each step runs only the head's attention and the blocks above it.
    The same function as the whole forward, to float rounding (`tests/test_llc.py` pins the
    estimates to the whole-model path's)."""

    def __init__(self, inputs: _LayerInputs, head: HeadId, loss: ScoredLoss, data: Data) -> None:
        self.inputs, self.loss, self.data = inputs, loss, data
        self.columns = slice(head.head * inputs.parts.d_head, (head.head + 1) * inputs.parts.d_head)
        o_weight = inputs.parts.blocks[head.layer].attn.o.weight
        with torch.no_grad():  # the residual stream after attention, less this head's part
            self.without_head = inputs.attended - F.linear(inputs.heads[..., self.columns], o_weight[:, self.columns])

    def __call__(self, weights: Mapping[str, Tensor], rows: Tensor) -> Tensor:
        """The loss on `rows` with the head's part of `weights` (the layer's sampled q, k, v and o tensors)."""
        rows = rows.to(self.without_head.device)
        by_part = {(split.projection, name.rsplit(".", 1)[1]): w for name, w in weights.items()
                   if (split := head_slices(name)) is not None}
        qkv = [by_part[p, kind][self.columns] for kind in ("weight", "bias") for p in "qkv"]
        parts, layer = self.inputs.parts, self.inputs.layer
        z = fused_attention(parts, layer, self.inputs.normed[rows], torch.cat(qkv[:3]), torch.cat(qkv[3:]))
        h = self.without_head[rows] + F.linear(z.transpose(1, 2).flatten(2),
                                               by_part["o", "weight"][:, self.columns])
        logits = fused_logits_after_attention(parts, h, layer)
        return self.loss.of_logits(logits, {k: t[rows.to(t.device)] for k, t in self.data.items()})


# --- probes, with their per-chain loss traces ---------------------------------------------------

TRACES_META = "meta.json"


def _columns(estimate: LLCEstimate, suffix: str = "") -> dict[str, float]:
    """The estimate's columns, each name followed by `suffix` (a refined probe's `/<component>`)."""
    columns = {"llc": estimate.llc, "llc_std": estimate.llc_std, "trustworthy": float(estimate.trustworthy),
               **{f"llc_chain{c}": v for c, v in enumerate(estimate.llc_per_chain)}}
    return {name + suffix: value for name, value in columns.items()}


def _trace_array(estimate: LLCEstimate, steps: int) -> np.ndarray:
    """`[chain, sgld step]` minibatch losses, NaN after a chain stopped (diverged)."""
    out = np.full((len(estimate.loss_traces), steps), np.nan, dtype=np.float32)
    for chain, trace in enumerate(estimate.loss_traces):
        out[chain, :len(trace)] = trace
    return out


def traces_file(directory: Path, step: int) -> Path:
    return directory / f"step_{step:06d}.npy"


def _save_traces(ctx: ProbeContext, traces: np.ndarray, meta: Mapping[str, object]) -> None:
    """Write one checkpoint's traces into the probe's artifacts folder (`probe()` holds the
    cache's lock while the probe runs); nothing outside `probe()` or where nothing is cached."""
    if ctx.artifacts is None or ctx.step is None:
        return
    ctx.artifacts.mkdir(parents=True, exist_ok=True)
    if not (ctx.artifacts / TRACES_META).exists():
        atomic_write_json(ctx.artifacts / TRACES_META, meta)
    atomic_write_npy(traces_file(ctx.artifacts, ctx.step), traces)


def llc_probe(settings: LLCSettings, loss: LossFn = language_model_loss, loss_name: str = "loss") -> Probe:
    """The LLC at each checkpoint on the probe's batch (its rows are the SGLD data), as columns
    `llc`, `llc_std`, `init_loss`, `trustworthy` (1/0) and `llc_chain<c>` (each chain's
    estimate, NaN if it diverged). `loss_name` names `loss` in the cache key. Inside `probe()`
    each checkpoint's loss traces `[chain, sgld step]` are saved (`load_llc_traces`)."""
    name = f"llc({loss_name};{settings.canonical()};{STREAMS})"

    def fn(ctx: ProbeContext) -> dict[str, float]:
        if ctx.batch is None:
            raise InputError("batch: the LLC probe samples over the probe's batch; pass one")
        estimate = estimate_llc(ctx.model, loss, ctx.batch, settings, step=ctx.step)
        _save_traces(ctx, _trace_array(estimate, settings.burn_in + settings.draws),
                     {"probe": name, "axes": ["chain", "sgld_step"], "burn_in": settings.burn_in})
        return {**_columns(estimate), "init_loss": estimate.init_loss}

    return Probe(name=name, hooks=(), fn=fn, reads="batch")


def refined_llc_probe(settings: LLCSettings, components: Sequence[Component] | None = None,
                      loss: LossFn = language_model_loss, loss_name: str = "loss") -> Probe:
    """The refined LLC of each component (None: every one, in `ModelShape.nodes()` order) at each
    checkpoint, sampling only its weights (`component_masks`) on the probe's batch, on `loss`
    (e.g. `loss_on_positions("repeated")` for a data restriction; `loss_name` names it in the
    cache key). Columns `llc/<component>`, `llc_std/<component>`, `trustworthy/<component>`,
    `llc_chain<c>/<component>` and `init_loss`, so `table.head_grid(f"{key}/llc", n_layers,
    n_heads)` is the per-head grid over steps. Inside `probe()` each checkpoint's traces
    `[component, chain, sgld step]` are saved (`load_llc_traces`)."""
    if settings.restrict_to:
        raise InputError("restrict_to: a refined LLC probe samples its components' weights; leave it empty")
    chosen = None if components is None else tuple(components)
    if chosen is not None and (not chosen or len(set(chosen)) != len(chosen)):
        raise InputError(f"components: expected distinct components, got {[str(c) for c in chosen]}")
    listed = "all" if chosen is None else ",".join(map(str, chosen))
    name = f"rllc({loss_name};{settings.canonical()};components={listed};{STREAMS})"

    def fn(ctx: ProbeContext) -> dict[str, float]:
        if ctx.batch is None:
            raise InputError("batch: the refined LLC probe samples over the probe's batch; pass one")
        order = ModelShape.of(ctx.model.cfg).nodes() if chosen is None else chosen
        columns: dict[str, float] = {}
        traces = []
        init_loss = _full_loss(ctx.model, loss, ctx.batch, _rows(ctx.batch), settings.batch_size)
        layer_inputs: dict[int, _LayerInputs] = {}  # computed once per layer, read by its heads
        for component in order:
            estimate = _estimate(ctx.model, loss, ctx.batch, settings, component_masks(ctx.model, component),
                                 init_loss, layer_inputs, ctx.step)
            columns.update(_columns(estimate, f"/{component}"))
            traces.append(_trace_array(estimate, settings.burn_in + settings.draws))
        _save_traces(ctx, np.stack(traces), {"probe": name, "axes": ["component", "chain", "sgld_step"],
                                             "components": [str(c) for c in order], "burn_in": settings.burn_in})
        return {**columns, "init_loss": init_loss}

    return Probe(name=name, hooks=(), fn=fn, reads="batch")


def load_llc_traces(run: CheckpointSource | str | Path, key: str, probe_obj: Probe, batch: Batch,
                    steps: Sequence[int] | None = None,
                    device: str | torch.device | None = None) -> dict[int, np.ndarray]:
    """`{step: traces}` that LLC probe `probe_obj` saved under `key` in `run` (a run, its
    directory or another checkpoint source) on `batch`, computed on `device`'s class (default as
    `probe()` chooses): every saved step, or `steps`. Traces are minibatch losses, `[chain, sgld
    step]` (`llc_probe`) or `[component, chain, sgld step]` (`refined_llc_probe`, components as
    its `meta.json` lists them), burn-in included, NaN after a chain diverged."""
    run = open_checkpoints(run) if isinstance(run, str | Path) else run
    directory = probe_artifacts(run, key, probe_obj, batch, device)
    if steps is None:
        steps = sorted(int(p.stem[len("step_"):]) for p in directory.glob("step_*.npy"))
        if not steps:
            raise MissingFileError(f"{directory}: no saved LLC traces (probe the run with this probe first)")
    missing = [traces_file(directory, s) for s in steps if not traces_file(directory, s).exists()]
    if missing:
        raise MissingFileError(f"{missing[0]} is missing ({len(missing)} steps): its result was cached without it; "
                               "probe again with use_cache=False")
    return {int(s): np.load(traces_file(directory, s), allow_pickle=False) for s in steps}


def load_llc_traces_meta(run: CheckpointSource | str | Path, key: str, probe_obj: Probe, batch: Batch,
                         device: str | torch.device | None = None) -> dict[str, object]:
    """What the traces `load_llc_traces` returns hold: the probe's name, the axes, the burn-in and (refined)
    the components in order."""
    run = open_checkpoints(run) if isinstance(run, str | Path) else run
    path = probe_artifacts(run, key, probe_obj, batch, device) / TRACES_META
    if not path.exists():
        raise MissingFileError(f"{path}: no saved LLC traces (probe the run with this probe first)")
    return read_json(path)
