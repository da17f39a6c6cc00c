"""Measurements of the model's output: the loss, and the probability it puts on a set of
tokens, as functions of logits and as probes."""

from __future__ import annotations

from jaxtyping import Bool, Float
from torch import Tensor

from interp.model import Batch, scored_positions, token_losses
from interp.probing import Probe, ProbeContext, mean_over_positions


def token_set_mass(
    logits: Float[Tensor, "batch pos vocab"],
    query_mask: Bool[Tensor, "batch pos"],
    token_mask: Bool[Tensor, "batch vocab"],
) -> float:
    """Probability the model puts on a per-sequence set of tokens (e.g. the labels
    present in context), averaged over the selected positions."""
    if query_mask.shape != logits.shape[:2] or token_mask.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"masks do not fit logits {tuple(logits.shape)}: query_mask {tuple(query_mask.shape)}, "
                         f"token_mask {tuple(token_mask.shape)}")
    if not query_mask.any():
        raise ValueError("query_mask selects no position")
    mass = (logits.float().softmax(-1) * token_mask[:, None, :].float()).sum(-1)
    return float(mass[query_mask].mean())


def token_set_mass_probe(query_key: str, token_key: str) -> Probe:
    """Probability on the tokens in `batch[token_key]` at the positions in `batch[query_key]`."""
    return Probe(name=f"token_set_mass({query_key},{token_key})", hooks=(),
                 fn=lambda ctx: {"mass": token_set_mass(ctx.logits, ctx.batch[query_key].bool(),
                                                        ctx.batch[token_key].bool())},
                 mean_over=mean_over_positions(query_key, lambda batch: batch[query_key].bool()))


def loss_probe(mask_key: str | None = None, also_on: tuple[str, ...] = ()) -> Probe:
    """Mean loss over scored positions, optionally restricted to `batch[mask_key]`; with
    `also_on`, also the loss on each of those bool batch keys' positions (column `loss_<key>`,
    e.g. `loss_in_repeat`: the second copy of repeated tokens), from the same logits."""

    def positions(batch: Batch) -> Tensor:
        mask = scored_positions(batch)
        return mask if mask_key is None else mask & batch[mask_key].bool()

    def fn(ctx: ProbeContext) -> dict[str, float]:
        mask = positions(ctx.batch)
        losses = token_losses(ctx.logits, ctx.batch)
        return {"loss": float(losses[mask].mean()),
                **{f"loss_{key}": float(losses[mask & ctx.batch[key].bool()].mean()) for key in also_on}}

    # The name keys the cache: a probe without `also_on` keeps the name its cached rows carry.
    name = f"loss(mask={mask_key})" if not also_on else f"loss(mask={mask_key}, also_on={','.join(also_on)})"
    # Columns over different positions are not one count-weighted mean: with `also_on` the probe runs whole.
    mean_over = None if also_on else mean_over_positions(f"scored positions in {mask_key}", positions)
    return Probe(name=name, hooks=(), fn=fn, mean_over=mean_over)
