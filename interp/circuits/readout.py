"""What each component and each layer says about the target token: direct logit
attribution and the logit lens, from TransformerLens's own implementations, at every
checkpoint.

Both read the batch's targets (`interp.model.targets_of`: the next token unless the batch
says otherwise) at its scored positions, optionally narrowed to `batch[mask_key]`, and
average over those positions; `position_readout` keeps every position (and adds the loss and
the top-k predictions), from one forward pass, for the explorer's token strips.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from interp.ids import HeadId, MlpId
from interp.model import IGNORE_INDEX, Batch, input_hooks, scored_positions, targets_of
from interp.probing import MeanOver, Probe, ProbeContext, mean_over_positions


def _selected(batch: Batch, mask_key: str | None) -> Tensor:
    mask = scored_positions(batch)
    return mask if mask_key is None else mask & batch[mask_key].bool()

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge


def _positions(batch: Batch, mask_key: str | None) -> Tensor:
    mask = _selected(batch, mask_key)
    if not mask.any():
        raise ValueError(f"batch: no scored position{' in ' + repr(mask_key) if mask_key else ''} to read out")
    return mask


def direct_logit_attributions(model: TransformerBridge, batch: Batch, mask_key: str | None = None) -> dict[str, float]:
    """Each component's direct contribution to the target's logit (through the final
    norm's frozen scale and the unembedding), averaged over the selected positions:
    per head (`"L1H2"`), `embed` (token and position embeddings), per MLP (`"MLP0"`),
    `other` (the attention output biases) and `total`, their sum: the target's logit
    minus the mean logit over the vocabulary, less the same difference of the unembedding
    bias (compatibility mode centres the unembedding). TransformerLens's
    `direct_logit_attribution` on a copy of the model in compatibility mode (which folds
    the final norm's weights into the unembedding, as it requires) does the work."""
    mask = _positions(batch, mask_key)
    folded = folded_copy(model)
    targets = targets_of(batch).clamp_min(0)
    with torch.no_grad(), folded.hooks(fwd_hooks=input_hooks(folded, batch)):
        _, cache = folded.run_with_cache(batch["tokens"])
        by_position = _attributions_by_position(folded, cache, targets)
    out = {name: float(values[mask].mean()) for name, values in by_position.items()}
    out["total"] = float(sum(by_position.values())[mask].mean())
    return out


def folded_copy(model: TransformerBridge) -> TransformerBridge:
    """A copy of `model` in compatibility mode (the final norm folded into the unembedding, as
    TransformerLens's DLA requires). Compatibility mode rewrites the weights in place, and
    callers reuse `model` (for a checkpoint's other probes, then loading the next checkpoint
    into it): the copy is folded, never the model."""
    folded = copy.deepcopy(model)
    folded.enable_compatibility_mode()
    return folded


def _attributions_by_position(folded: TransformerBridge, cache: Any, targets: Tensor) -> dict[str, Tensor]:
    """`[batch, pos]` direct logit attribution to `targets` per head, `embed`, MLP and `other`
    (in that order; they sum to `direct_logit_attributions`'s `total`), from a cache of `folded`."""
    from transformer_lens.tools.analysis.direct_logit_attribution import direct_logit_attribution  # with the model

    by_head = direct_logit_attribution(folded, cache=cache, answer_tokens=targets, unit="head", pos=None)
    by_component = direct_logit_attribution(folded, cache=cache, answer_tokens=targets, unit="component", pos=None)
    heads = dict(zip(by_head.labels, by_head.attribution, strict=True))
    components = dict(zip(by_component.labels, by_component.attribution, strict=True))
    n_layers, n_heads = folded.cfg.n_layers, folded.cfg.n_heads
    out = {str(HeadId(layer, h)): heads[str(HeadId(layer, h))] for layer in range(n_layers) for h in range(n_heads)}
    out["embed"] = sum(v for k, v in components.items() if k in ("embed", "pos_embed"))
    out.update({str(MlpId(layer)): components[f"{layer}_mlp_out"] for layer in range(n_layers)
                if f"{layer}_mlp_out" in components})
    out["other"] = heads["remainder"] - out["embed"] - sum(out[str(MlpId(layer))] for layer in range(n_layers)
                                                           if str(MlpId(layer)) in out)
    return out


@dataclass(frozen=True)
class PositionReadout:
    """What one forward pass says at every position of a `[batch, pos]` batch: the loss of
    the target (`interp.model.targets_of`; 0 where there is none), the model's `top_k`
    predictions, the logit lens of each residual-stream entry (`lens_labels`: `"0_pre"`, ...,
    `"final_post"`) as the target's probability and rank and the entry's top-1 token, and the
    direct logit attribution of each component (`components`, as `direct_logit_attributions`
    names them, less `total`) to the target."""

    losses: Tensor  # [batch, pos]
    top_ids: Tensor  # [batch, pos, k]
    top_probs: Tensor  # [batch, pos, k]
    lens_labels: list[str]
    lens_probs: Tensor  # [entry, batch, pos]
    lens_ranks: Tensor  # [entry, batch, pos]
    lens_top: Tensor  # [entry, batch, pos]
    components: list[str]
    dla: Tensor  # [component, batch, pos]


def position_readout(model: TransformerBridge, batch: Batch, top_k: int = 5) -> PositionReadout:
    """`PositionReadout` of `batch`, from one `run_with_cache` of the folded copy of `model`
    (`folded_copy`: compatibility mode shifts each position's logits by a constant, so its
    probabilities are the model's); the logit lens and the DLA read that cache."""
    from transformer_lens.tools.analysis.logit_lens import logit_lens  # TransformerLens is loaded with the model

    folded = folded_copy(model)
    targets = targets_of(batch)
    scored = targets != IGNORE_INDEX
    clamped = targets.clamp_min(0)
    with torch.no_grad(), folded.hooks(fwd_hooks=input_hooks(folded, batch)):
        logits, cache = folded.run_with_cache(batch["tokens"])
        attributions = _attributions_by_position(folded, cache, clamped)
        lens = logit_lens(folded, cache=cache, positions=None, targets=clamped, return_type="probs")
        lens_top = logit_lens(folded, cache=cache, positions=None, top_k=1, return_type="probs")
    log_probs = logits.float().log_softmax(dim=-1)
    losses = -log_probs.gather(-1, clamped.unsqueeze(-1)).squeeze(-1) * scored
    top = log_probs.topk(min(top_k, log_probs.shape[-1]), dim=-1)
    return PositionReadout(
        losses=losses, top_ids=top.indices, top_probs=top.values.exp(), lens_labels=list(lens.labels),
        lens_probs=lens.values[..., 0], lens_ranks=lens.rank_trajectory(),
        lens_top=lens_top.readout.top_ids[..., 0], components=list(attributions),
        dla=torch.stack(list(attributions.values())))


def logit_lens_readout(model: TransformerBridge, batch: Batch, mask_key: str | None = None) -> dict[str, float]:
    """The residual stream before each layer and after the last, read through the final
    norm and the unembedding (TransformerLens's `logit_lens`): per entry (`"0_pre"`,
    `"1_pre"`, ..., `"final_post"`) the target's mean log-probability (`/logprob`), the
    share of positions where it is the top token (`/top1`) and its mean rank (`/rank`)."""
    from transformer_lens.tools.analysis.logit_lens import logit_lens  # TransformerLens is loaded with the model

    mask = _positions(batch, mask_key)
    targets = targets_of(batch).clamp_min(0)
    with torch.no_grad(), model.hooks(fwd_hooks=input_hooks(model, batch)):
        _, cache = model.run_with_cache(batch["tokens"])
        lens = logit_lens(model, cache=cache, positions=None, targets=targets, return_type="log_probs")
        ranks = lens.rank_trajectory()
    out: dict[str, float] = {}
    for i, label in enumerate(lens.labels):
        out[f"{label}/logprob"] = float(lens.values[i][..., 0][mask].mean())
        out[f"{label}/top1"] = float((ranks[i][mask] == 0).float().mean())
        out[f"{label}/rank"] = float(ranks[i][mask].float().mean())
    return out


def dla_probe(mask_key: str | None = None) -> Probe:
    """`direct_logit_attributions` at every checkpoint."""
    return Probe(name=f"dla({mask_key})", hooks=(), fn=lambda ctx: direct_logit_attributions(ctx.model, _need(ctx),
                                                                                             mask_key), reads="batch",
                 mean_over=_mean_over(mask_key))


def logit_lens_probe(mask_key: str | None = None) -> Probe:
    """`logit_lens_readout` at every checkpoint."""
    return Probe(name=f"logit_lens({mask_key})", hooks=(), fn=lambda ctx: logit_lens_readout(ctx.model, _need(ctx),
                                                                                             mask_key), reads="batch",
                 mean_over=_mean_over(mask_key))


def _mean_over(mask_key: str | None) -> MeanOver:
    """Both readouts average over the selected positions."""
    return mean_over_positions(f"scored positions in {mask_key}", lambda batch: _selected(batch, mask_key))


def _need(ctx: ProbeContext) -> Batch:
    if ctx.batch is None:
        raise ValueError("batch: readout probes need a batch")
    return ctx.batch


__all__ = ["PositionReadout", "direct_logit_attributions", "dla_probe", "folded_copy", "logit_lens_probe",
           "logit_lens_readout", "position_readout"]
