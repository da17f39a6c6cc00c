"""What every causal method of `interp.circuits` shares: the metric it scores, the source
run's batch, and forward passes with hooks.

One convention for every method: the **base** run is the batch's `tokens` (the metric
reads its targets), and the patched-in activations come from a **source** run on
`batch["source_tokens"]` (`interp.batches.SOURCE_KEY`; every other batch key, e.g. input
vectors, is shared). With a corrupted source this is noising (which paths does the
behaviour need?); with `tokens` corrupted, `source_tokens` clean and `targets` set to the
clean targets it is denoising (which paths restore it?).

The methods, one module each: `activation` (TransformerLens's activation patching
sweeps), `paths` (path patching), `attribution` (edge attribution patching, EAP and
EAP-IG), `cross_checkpoint` (components taken from another checkpoint); `edges` reads a
sender's write and a receiver's input, which path patching and attribution share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from interp.batches import SOURCE_KEY
from interp.model import Batch, input_hooks, scored_positions, targets_of
from interp.probing import MeanOver, ProbeContext, mean_over_positions

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge


@dataclass(frozen=True)
class PatchMetric:
    """A differentiable scalar of a forward pass: `fn(logits, batch)`. `name` keys the cache.
    `mean_over`: where the scalar is a mean over rows or positions (`interp.probing.MeanOver`),
    which lets a method's probe run on chunks of rows; None where it is not (an accuracy of
    the whole batch's argmax is, a ratio of means is not), and the probe runs on the whole batch."""

    name: str
    fn: Callable[[Tensor, Batch], Tensor]
    mean_over: MeanOver | None = None


def mean_logprob(mask_key: str | None = None) -> PatchMetric:
    """Mean log-probability of the batch's targets at its scored positions (and
    `batch[mask_key]`): minus the loss there."""

    def positions(batch: Batch) -> Tensor:
        mask = scored_positions(batch)
        return mask if mask_key is None else mask & batch[mask_key].bool()

    def fn(logits: Tensor, batch: Batch) -> Tensor:
        mask = positions(batch)
        if not mask.any():
            raise ValueError(f"mean_logprob: no scored position{' in ' + mask_key if mask_key else ''}")
        targets = targets_of(batch).clamp_min(0)
        logprobs = logits.float().log_softmax(-1).gather(-1, targets[..., None])[..., 0]
        return logprobs[mask].mean()

    return PatchMetric(f"mean_logprob({mask_key})", fn,
                       mean_over_positions(f"scored positions in {mask_key}", positions))


def source_batch(batch: Batch) -> Batch:
    """The source run's batch: the source tokens, scored against the base run's targets."""
    if SOURCE_KEY not in batch:
        raise KeyError(f"batch: patching needs {SOURCE_KEY!r} (the tokens the patched-in activations come from)")
    if batch[SOURCE_KEY].shape != batch["tokens"].shape:
        raise ValueError(f"batch: {SOURCE_KEY} {tuple(batch[SOURCE_KEY].shape)} must have the tokens' shape "
                         f"{tuple(batch['tokens'].shape)}")
    return {**batch, "tokens": batch[SOURCE_KEY], "targets": targets_of(batch)}


def run_with_hooks(model: TransformerBridge, batch: Batch, fwd_hooks: Sequence[tuple[str, Any]] = (),
                   names: Sequence[str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits (and the named activations) of one forward pass with the batch's input vectors."""
    with model.hooks(fwd_hooks=input_hooks(model, batch) + list(fwd_hooks)):
        if names is None:
            return model(batch["tokens"]), {}
        logits, cache = model.run_with_cache(batch["tokens"], names_filter=list(names))
    return logits, dict(cache.items())


def run_with_full_cache(model: TransformerBridge, batch: Batch) -> tuple[Tensor, Any]:
    """Logits and TransformerLens's cache of every activation, with the batch's input vectors."""
    with model.hooks(fwd_hooks=input_hooks(model, batch)):
        return model.run_with_cache(batch["tokens"])


def probe_batch(ctx: ProbeContext) -> Batch:
    """The batch a circuit patching probe runs on, which it cannot do without."""
    if ctx.batch is None:
        raise ValueError("batch: circuit patching probes need a batch with tokens and source_tokens")
    return ctx.batch
