"""The local learning coefficient (LLC; Lau et al. 2023) of a model at its current weights,
estimated by SGLD with devinterp's sampler, with its diagnostics, and as a probe over
checkpoints.

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

import numpy as np
import torch
from devinterp.optim import SGMCMC
from devinterp.utils import default_nbeta
from torch import Tensor, nn

from interp.model import forward, masked_mean_loss
from interp.probing import Probe, ProbeContext
from interp.seeding import LLC_BATCHES, LLC_NOISE, generator

DIVERGENCE_MARGIN = 2.0
"""A chain diverged when its loss rises above the initial loss by more than
`DIVERGENCE_MARGIN * (n_params / 2) / nbeta` over a third of its draws: twice the rise of the largest LLC a local
minimum can have (d/2), so the chain has left the basin."""
DRIFT_TOLERANCE = 2.0
"""The trace is not flat when the first and last thirds of the post-burn-in draws differ (in
LLC units) by more than `DRIFT_TOLERANCE` chain spreads (plus `RELATIVE_FLOOR` of the estimate)."""
CHAIN_DISAGREEMENT = 0.25
"""Chains disagree when the spread over chains exceeds this fraction of the estimate."""
RELATIVE_FLOOR = 0.05
"""Slack, as a fraction of the estimate, that keeps a near-zero spread from flagging noise."""

Data = Mapping[str, Tensor]
"""Named tensors with one row per example along dim 0 (a `Batch` is one)."""
LossFn = Callable[[nn.Module, Data], Tensor]
"""`(model, rows) -> the mean loss over the rows` (a scalar with a gradient)."""


@dataclass(frozen=True)
class LLCSettings:
    """SGLD settings of an LLC estimate. `nbeta` None: devinterp's recommendation for the
    batch size, `batch_size / log(batch_size)`. `restrict_to`: parameter-name patterns
    (`fnmatch`, e.g. `"blocks.0.attn.*"`) of the only weights sampled (refined LLC); empty:
    all of them."""

    lr: float = 1e-3
    gamma: float = 100.0
    nbeta: float | None = None
    chains: int = 4
    draws: int = 200
    burn_in: int = 100
    batch_size: int = 64
    seed: int = 0
    restrict_to: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("lr", "nbeta"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise ValueError(f"gamma: expected a finite number >= 0, got {self.gamma!r}")
        for name, least in (("chains", 1), ("draws", 3), ("burn_in", 0), ("batch_size", 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{name}: expected an integer >= {least}, got {value!r}")
        if isinstance(self.restrict_to, str) or not all(isinstance(p, str) and p for p in self.restrict_to):
            raise ValueError(f"restrict_to: expected a tuple of parameter-name patterns, got {self.restrict_to!r}")

    @property
    def effective_nbeta(self) -> float:
        return float(default_nbeta(self.batch_size)) if self.nbeta is None else self.nbeta

    def canonical(self) -> str:
        """The settings as text, part of the probe's name and so of its cache key."""
        restrict = "|".join(self.restrict_to) or "all"
        return (f"lr={self.lr!r},gamma={self.gamma!r},nbeta={self.effective_nbeta!r},chains={self.chains},"
                f"draws={self.draws},burn_in={self.burn_in},batch_size={self.batch_size},seed={self.seed},"
                f"restrict_to={restrict}")


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

    @property
    def trustworthy(self) -> bool:
        return not self.problems


def sampled_parameters(model: nn.Module, restrict_to: Sequence[str] = ()) -> list[tuple[str, nn.Parameter]]:
    """The parameters an LLC estimate samples: all, or those matching a `restrict_to` pattern."""
    named = list(model.named_parameters())
    chosen = [(n, p) for n, p in named if not restrict_to or any(fnmatchcase(n, pat) for pat in restrict_to)]
    if not chosen:
        raise ValueError(f"restrict_to: no parameter matches {list(restrict_to)}; names: {[n for n, _ in named]}")
    return chosen


def _rows(data: Data) -> int:
    counts = {key: len(t) for key, t in data.items()}
    if not counts or len(set(counts.values())) != 1:
        raise ValueError(f"data: expected tensors with the same number of rows, got {counts}")
    return next(iter(counts.values()))


def _full_loss(model: nn.Module, loss_fn: LossFn, data: Data, n: int, batch_size: int) -> float:
    with torch.no_grad():
        total = sum(float(loss_fn(model, {k: t[i:i + batch_size] for k, t in data.items()}))
                    * (min(n, i + batch_size) - i) for i in range(0, n, batch_size))
    return total / n


def _chain(model: nn.Module, params: list[nn.Parameter], loss_fn: LossFn, data: Data, n: int,
           settings: LLCSettings, chain: int) -> list[float]:
    """One SGLD chain from the model's current weights; its minibatch loss at every step,
    stopping at the first non-finite one."""
    batches = generator(settings.seed, LLC_BATCHES, chain)
    # Drawn by CPU generators (the toolkit's streams), whatever device the model is on.
    noise_seed = int(torch.randint(2**62, (1,), generator=generator(settings.seed, LLC_NOISE, chain), device="cpu"))
    optimizer = SGMCMC.sgld(params, lr=settings.lr, nbeta=settings.effective_nbeta, localization=settings.gamma)
    trace: list[float] = []
    # devinterp draws its noise from torch's global stream; the caller's is left as it was
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(noise_seed)
        for _ in range(settings.burn_in + settings.draws):
            rows = torch.randint(n, (settings.batch_size,), generator=batches, device="cpu")
            loss = loss_fn(model, {k: t[rows.to(t.device)] for k, t in data.items()})
            value = float(loss.detach())
            trace.append(value)
            if not math.isfinite(value):
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return trace


def estimate_llc(model: nn.Module, loss_fn: LossFn, data: Data, settings: LLCSettings) -> LLCEstimate:
    """The LLC of `model` at its current weights on `data` (rows drawn with replacement, one
    minibatch per SGLD step), and whether to trust it. The model's weights are left as found."""
    n = _rows(data)
    named = sampled_parameters(model, settings.restrict_to)
    params = [p for _, p in named]
    saved = [(p, p.detach().clone(), p.requires_grad) for _, p in model.named_parameters()]
    sampled = {id(p) for p in params}
    nbeta = settings.effective_nbeta
    try:
        for p, _, _ in saved:
            p.requires_grad_(id(p) in sampled)
        init_loss = _full_loss(model, loss_fn, data, n, settings.batch_size)
        traces = []
        for chain in range(settings.chains):
            traces.append(_chain(model, params, loss_fn, data, n, settings, chain))
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
    margin = DIVERGENCE_MARGIN * sum(p.numel() for p in params) / 2 / nbeta
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
    return LLCEstimate(llc, llc_std, tuple(per_chain), init_loss, tuple(tuple(t) for t in traces), tuple(problems))


def language_model_loss(model: nn.Module, rows: Data) -> Tensor:
    """The toolkit's training loss on the rows: mean cross-entropy over the scored positions."""
    return masked_mean_loss(forward(model, rows), rows)


def llc_probe(settings: LLCSettings, loss: LossFn = language_model_loss, loss_name: str = "loss") -> Probe:
    """The LLC at each checkpoint on the probe's batch (its rows are the SGLD data), as columns
    `llc`, `llc_std`, `init_loss`, `trustworthy` (1/0). `loss_name` names `loss` in the cache key."""

    def fn(ctx: ProbeContext) -> dict[str, float]:
        if ctx.batch is None:
            raise ValueError("batch: the LLC probe samples over the probe's batch; pass one")
        estimate = estimate_llc(ctx.model, loss, ctx.batch, settings)
        return {"llc": estimate.llc, "llc_std": estimate.llc_std, "init_loss": estimate.init_loss,
                "trustworthy": float(estimate.trustworthy)}

    return Probe(name=f"llc({loss_name};{settings.canonical()})", hooks=(), fn=fn, reads="batch")
