"""Attention-head scores on patterns `[batch, head, query, key]`, and probes built
from them: previous-token, induction, attention to an offset, attention mass,
sharpness, induction strength; and the strongest heads of a score grid.

The scalar metrics are task-agnostic: they take position offsets or boolean
position sets, so a task only has to say which positions matter. Each returns
one number per head; probes flatten them to `"L{layer}H{head}"` keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from interp.hooks import hook_name
from interp.ids import HeadId
from interp.model import Batch
from interp.probing import ROWS, MeanOver, Probe, ProbeContext, mean_over_positions

Pattern = Float[Tensor, "batch head query key"]


def attention_to_offset(pattern: Pattern, offset: int, min_query: int | None = None) -> Float[Tensor, " head"]:
    """Mean attention from each query `q >= min_query` to key `q - offset`.

    `min_query` defaults to `offset` (the first query that has such a key).
    """
    n_query = pattern.shape[-2]
    start = offset if min_query is None else min_query
    if offset < 0 or start < offset or start >= n_query:
        raise ValueError(
            f"offset={offset}, min_query={min_query}: need 0 <= offset <= min_query < n_query={n_query}"
        )
    queries = torch.arange(start, n_query, device=pattern.device)
    return pattern[:, :, queries, queries - offset].mean(dim=(0, 2))


def previous_token_score(pattern: Pattern) -> Float[Tensor, " head"]:
    """Mean attention to the immediately preceding token (queries 1..)."""
    return attention_to_offset(pattern, 1)


def induction_score(pattern: Pattern, period: int) -> Float[Tensor, " head"]:
    """On a sequence repeated with `period`, mean attention from each query in a
    repeat to the token after its earlier occurrence (`q - period + 1`)."""
    if period < 2:
        raise ValueError(f"period: expected >= 2, got {period}")
    return attention_to_offset(pattern, period - 1, min_query=period)


def attention_mass(
    pattern: Pattern,
    query_mask: Bool[Tensor, "batch query"],
    key_mask: Bool[Tensor, "batch key"] | Bool[Tensor, "batch query key"],
) -> Float[Tensor, " head"]:
    """Attention mass each selected query puts on the selected keys, averaged
    over selected queries (and the batch). Key sets may differ per query."""
    if key_mask.dim() == 2:
        key_mask = key_mask[:, None, :].expand(-1, pattern.shape[-2], -1)
    if query_mask.shape != pattern.shape[:1] + pattern.shape[2:3] or key_mask.shape != (
        pattern.shape[:1] + pattern.shape[2:]
    ):
        raise ValueError(
            f"masks do not fit pattern {tuple(pattern.shape)}: "
            f"query_mask {tuple(query_mask.shape)}, key_mask {tuple(key_mask.shape)}"
        )
    if not query_mask.any():
        raise ValueError("query_mask selects no position")
    mass = (pattern * key_mask[:, None].to(pattern.dtype)).sum(-1)  # batch head query
    weights = query_mask[:, None, :].to(pattern.dtype)
    return (mass * weights).sum(dim=(0, 2)) / weights.sum(dim=(0, 2))


def _queries_after_zero(pattern: Pattern, query_mask: Bool[Tensor, "batch query"]) -> Bool[Tensor, "batch query"]:
    """The selected queries other than position 0 (which has no earlier key)."""
    if query_mask.shape != pattern.shape[:1] + pattern.shape[2:3]:
        raise ValueError(f"query_mask {tuple(query_mask.shape)} does not fit pattern {tuple(pattern.shape)}")
    usable = query_mask.clone()
    usable[:, 0] = False
    if not usable.any():
        raise ValueError("query_mask selects no position after 0")
    return usable


def attention_sharpness(pattern: Pattern, query_mask: Bool[Tensor, "batch query"]) -> Float[Tensor, " head"]:
    """Normalized attention entropy of the selected queries: the entropy of each
    query's pattern over the log of the number of keys it may attend to (q + 1
    under the causal mask). 0: all mass on one key; 1: uniform. Queries at
    position 0 (one key, entropy 0/0) are left out."""
    usable = _queries_after_zero(pattern, query_mask)
    n_query = pattern.shape[-2]
    p = pattern.float().clamp_min(0)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)  # batch head query
    attendable = torch.log(torch.arange(1, n_query + 1, device=pattern.device, dtype=torch.float32))
    normalized = entropy / attendable.clamp_min(1e-12)
    weights = usable[:, None, :].float()
    return (normalized * weights).sum(dim=(0, 2)) / weights.sum(dim=(0, 2))


def corrected_previous_token_score(pattern: Pattern, query_mask: Bool[Tensor, "batch query"]) -> Float[Tensor, " head"]:
    """Attention to the preceding position at the selected queries, corrected for
    what uniform attention would give: `A[p, p-1] - (1 - A[p, p-1]) / p`, averaged.

    0 for uniform attention over the `p + 1` visible keys, 1 for a perfect
    previous-token head; negative when the head avoids the previous position.
    """
    usable = _queries_after_zero(pattern, query_mask)
    positions = torch.arange(1, pattern.shape[-2], device=pattern.device)
    previous = pattern[:, :, positions, positions - 1].float()  # batch head query-1
    score = previous - (1 - previous) / positions.float()
    weights = usable[:, None, 1:].float()
    return (score * weights).sum(dim=(0, 2)) / weights.sum(dim=(0, 2))


def induction_strength(
    pattern: Pattern,
    query_mask: Bool[Tensor, "batch query"],
    match_mask: Bool[Tensor, "batch key"],
    nonmatch_mask: Bool[Tensor, "batch key"],
) -> Float[Tensor, " head"]:
    """Mean attention per matching key minus mean attention per non-matching key,
    at the selected queries (e.g. from a few-shot query to the labels of pairs of
    its class vs of other classes). Rows with no key of either kind are left out."""
    for name, mask in (("query_mask", query_mask), ("match_mask", match_mask), ("nonmatch_mask", nonmatch_mask)):
        if mask.shape != pattern.shape[:1] + pattern.shape[2:3]:
            raise ValueError(f"{name} {tuple(mask.shape)} does not fit pattern {tuple(pattern.shape)}")
    rows = query_mask & (match_mask.any(1) & nonmatch_mask.any(1))[:, None]
    if not rows.any():
        raise ValueError("no selected query has both a matching and a non-matching key")

    def per_key(mask: Tensor) -> Tensor:  # batch head query
        mask = mask[:, None, None, :].to(pattern.dtype)
        return (pattern * mask).sum(-1) / mask.sum(-1).clamp_min(1)

    difference = per_key(match_mask) - per_key(nonmatch_mask)
    weights = rows[:, None, :].to(pattern.dtype)
    return (difference * weights).sum(dim=(0, 2)) / weights.sum(dim=(0, 2))


def per_head(scores: Float[Tensor, " head"], layer: int) -> dict[str, float]:
    return {str(HeadId(layer, h)): float(s) for h, s in enumerate(scores)}


# --- probes ----------------------------------------------------------------------


def _layer_probe(
    name: str, layers: Sequence[int], score: Callable[[Pattern, Batch], Float[Tensor, " head"]],
    mean_over: MeanOver = ROWS,
) -> Probe:
    def fn(ctx: ProbeContext) -> dict[str, float]:
        out: dict[str, float] = {}
        for layer in layers:
            out.update(per_head(score(ctx.acts[hook_name("pattern", layer)], ctx.batch), layer))
        return out

    return Probe(name=name, hooks=tuple(hook_name("pattern", layer) for layer in layers), fn=fn, mean_over=mean_over)


def _after_zero(query_key: str) -> MeanOver:
    """The queries `batch[query_key]` selects after position 0 (`_queries_after_zero`)."""
    return mean_over_positions(f"{query_key} after position 0", lambda b: b[query_key].bool()[:, 1:])


def previous_token_probe(layers: Sequence[int]) -> Probe:
    layers = tuple(layers)
    return _layer_probe(f"prev_token(layers={layers})", layers, lambda p, b: previous_token_score(p))


def offset_probe(layers: Sequence[int], offset: int, min_query: int | None = None) -> Probe:
    """Attention to the key `offset` positions back (see `attention_to_offset`)."""
    layers = tuple(layers)
    return _layer_probe(
        f"offset(layers={layers},offset={offset},min_query={min_query})",
        layers,
        lambda p, b: attention_to_offset(p, offset, min_query),
    )


def induction_probe(layers: Sequence[int], period: int) -> Probe:
    """Induction score; the probe batch must be `interp.batches.repeated_tokens(..., period)`."""
    layers = tuple(layers)
    return _layer_probe(
        f"induction(layers={layers},period={period})", layers, lambda p, b: induction_score(p, period)
    )


def attention_mass_probe(layers: Sequence[int], query_key: str, key_key: str) -> Probe:
    """Attention mass from the positions in `batch[query_key]` to those in `batch[key_key]`."""
    layers = tuple(layers)
    return _layer_probe(
        f"attention_mass(layers={layers},{query_key}->{key_key})",
        layers,
        lambda p, b: attention_mass(p, b[query_key].bool(), b[key_key].bool()),
        mean_over_positions(query_key, lambda b: b[query_key].bool()),
    )


def sharpness_probe(layers: Sequence[int], query_key: str) -> Probe:
    """Normalized attention entropy at the positions in `batch[query_key]`."""
    layers = tuple(layers)
    return _layer_probe(f"sharpness(layers={layers},{query_key})", layers,
                        lambda p, b: attention_sharpness(p, b[query_key].bool()), _after_zero(query_key))


def corrected_previous_token_probe(layers: Sequence[int], query_key: str) -> Probe:
    """Baseline-corrected previous-token score at the positions in `batch[query_key]`."""
    layers = tuple(layers)
    return _layer_probe(f"corrected_prev_token(layers={layers},{query_key})", layers,
                        lambda p, b: corrected_previous_token_score(p, b[query_key].bool()), _after_zero(query_key))


def induction_strength_probe(layers: Sequence[int], query_key: str, match_key: str, nonmatch_key: str) -> Probe:
    """`induction_strength` with the position sets named by batch keys."""
    layers = tuple(layers)
    return _layer_probe(
        f"induction_strength(layers={layers},{query_key}->{match_key}-{nonmatch_key})", layers,
        lambda p, b: induction_strength(p, b[query_key].bool(), b[match_key].bool(), b[nonmatch_key].bool()),
        mean_over_positions(f"{query_key} with both kinds of key", lambda b: b[query_key].bool() & (
            b[match_key].bool().any(1) & b[nonmatch_key].bool().any(1))[:, None]))


def strongest_heads(scores: Sequence[Sequence[float]], threshold: float, min_layer: int = 1) -> list[HeadId]:
    """Every head of layer `min_layer` or above whose score (`scores[layer][head]`) reaches
    `threshold`, strongest first (ties in layer, head order); the strongest alone if none does."""
    order = sorted((HeadId(layer, head) for layer in range(min_layer, len(scores))
                    for head in range(len(scores[layer]))), key=lambda h: -float(scores[h.layer][h.head]))
    return [h for h in order if scores[h.layer][h.head] >= threshold] or order[:1]
