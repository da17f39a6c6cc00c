"""What each component and each layer says about the target token: direct logit
attribution and the logit lens, from TransformerLens's own implementations, at every
checkpoint.

Both read the batch's targets (`interp.model.targets_of`: the next token unless the batch
says otherwise) at its scored positions, optionally narrowed to `batch[mask_key]`, and
average over those positions.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.tools.analysis.direct_logit_attribution import direct_logit_attribution
from transformer_lens.tools.analysis.logit_lens import logit_lens

from interp.ids import HeadId, MlpId
from interp.model import Batch, input_hooks, scored_positions, targets_of
from interp.probing import Probe, ProbeContext


def _positions(batch: Batch, mask_key: str | None) -> Tensor:
    mask = scored_positions(batch)
    if mask_key is not None:
        mask = mask & batch[mask_key].bool()
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
    # Compatibility mode rewrites the weights in place, and the runner reuses `model` (for the
    # checkpoint's other probes, then loading the next checkpoint into it): fold a copy.
    folded = copy.deepcopy(model)
    folded.enable_compatibility_mode()
    targets = targets_of(batch).clamp_min(0)
    with torch.no_grad(), folded.hooks(fwd_hooks=input_hooks(folded, batch)):
        _, cache = folded.run_with_cache(batch["tokens"])
        by_head = direct_logit_attribution(folded, cache=cache, answer_tokens=targets, unit="head", pos=None)
        by_component = direct_logit_attribution(folded, cache=cache, answer_tokens=targets, unit="component",
                                                pos=None)

    def mean(values: Tensor) -> float:
        return float(values[mask].mean())

    out: dict[str, float] = {}
    heads = dict(zip(by_head.labels, by_head.attribution, strict=True))
    components = dict(zip(by_component.labels, by_component.attribution, strict=True))
    for layer in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            out[str(HeadId(layer, h))] = mean(heads[str(HeadId(layer, h))])
    out["embed"] = mean(sum(v for k, v in components.items() if k in ("embed", "pos_embed")))
    mlps = {MlpId(layer): components[f"{layer}_mlp_out"] for layer in range(model.cfg.n_layers)
            if f"{layer}_mlp_out" in components}
    out.update({str(m): mean(v) for m, v in mlps.items()})
    total = sum(heads.values())
    out["other"] = mean(heads["remainder"]) - out["embed"] - sum(out[str(m)] for m in mlps)
    out["total"] = mean(total)
    return out


def logit_lens_readout(model: TransformerBridge, batch: Batch, mask_key: str | None = None) -> dict[str, float]:
    """The residual stream before each layer and after the last, read through the final
    norm and the unembedding (TransformerLens's `logit_lens`): per entry (`"0_pre"`,
    `"1_pre"`, ..., `"final_post"`) the target's mean log-probability (`/logprob`), the
    share of positions where it is the top token (`/top1`) and its mean rank (`/rank`)."""
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
                                                                                             mask_key), reads="batch")


def logit_lens_probe(mask_key: str | None = None) -> Probe:
    """`logit_lens_readout` at every checkpoint."""
    return Probe(name=f"logit_lens({mask_key})", hooks=(), fn=lambda ctx: logit_lens_readout(ctx.model, _need(ctx),
                                                                                             mask_key), reads="batch")


def _need(ctx: ProbeContext) -> Batch:
    if ctx.batch is None:
        raise ValueError("batch: readout probes need a batch")
    return ctx.batch


__all__ = ["direct_logit_attributions", "dla_probe", "logit_lens_probe", "logit_lens_readout"]
