"""The optimizer step shared by `interp.train.train` and in-memory fine-tuning (`take_steps`):
`Stepper` updates the model, `read_steps` reads the steps' losses from the device and stops
at the first non-finite one."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from interp.errors import InputError
from interp.files import NonFiniteError
from interp.model import (
    Batch,
    FwdHook,
    Patterns,
    forward,
    masked_mean_loss,
    named_trainable_parameters,
    training_batch,
)
from interp.seeding import BATCHES, generator
from interp.train_config import DataSource, TrainConfig, lr_at, make_optimizer, selected

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge

BatchPatterns = Callable[[Batch], Patterns]
"""Attention patterns that depend on the batch (e.g. a reference model's on it,
`interp.pattern_substitution.reference_patterns`), used instead of the model's own at every training
step; they carry no gradient, so queries and keys are not trained."""


class StepStats(NamedTuple):
    """What one optimizer step reports, left on the device (reading it waits for the step)."""

    loss: Tensor
    """The loss before the update, detached, 0-dim."""
    grad_norm: Tensor
    """The total gradient norm before clipping, 0-dim: a NaN or infinity here poisons the
    weights (and the optimizer's moments) even while the loss still reads finite."""


def _total_norm(grads: list[Tensor]) -> Tensor:
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6: one fused pass
    if get_total_norm is not None:
        return get_total_norm(grads)
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class Stepper:
    """The optimizer step of `train`: learning-rate schedule, explicit L2,
    gradient clipping and the per-episode optimizer reset. `take_steps` uses
    the same object, so in-memory fine-tuning updates exactly as a run does."""

    def __init__(self, model: TransformerBridge, cfg: TrainConfig, fwd_hooks: Sequence[FwdHook] = (),
                 batch_patterns: BatchPatterns | None = None):
        self.model, self.cfg, self.fwd_hooks, self.batch_patterns = model, cfg, fwd_hooks, batch_patterns
        self.named_params = named_trainable_parameters(model)
        self.params = [p for _, p in self.named_params]
        names = [n for n, _ in self.named_params]
        for field_name in ("decay_only", "l2_only"):
            patterns = getattr(cfg, field_name)
            if patterns and not any(selected(patterns, n) for n in names):
                raise InputError(f"{field_name}: {list(patterns)} matches no parameter; names are {names}")
        self.penalized = [p for n, p in self.named_params if selected(cfg.l2_only, n)]
        self.optimizer = make_optimizer(cfg, self.named_params)
        self.device_type = self.params[0].device.type

    def step(self, step: int, batch: Batch) -> StepStats:
        """Update on `batch` (on the model's device, trimmed: `interp.model.training_batch`) as
        the `step`-th (0-based) step; returns the loss before the update
        and the gradient norm, detached 0-dim tensors on the model's device. Reading them waits
        for the device to finish the step, so callers read them only when they need the numbers
        (`read_steps`, which also stops at the first non-finite one)."""
        cfg = self.cfg
        if cfg.reset_optimizer_each_episode and step > 0 and step % cfg.episode_steps == 0:
            self.optimizer = make_optimizer(cfg, self.named_params)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(cfg, step)
        patterns = self.batch_patterns(batch) if self.batch_patterns else None
        with torch.autocast(self.device_type, torch.bfloat16, enabled=cfg.precision == "bf16"):
            loss = masked_mean_loss(forward(self.model, batch, self.fwd_hooks, patterns), batch)
        objective = loss
        if cfg.l2:
            objective = loss + 0.5 * cfg.l2 * sum(p.pow(2).sum() for p in self.penalized)
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if cfg.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        else:
            grad_norm = _total_norm([p.grad for p in self.params if p.grad is not None])
        self.optimizer.step()
        return StepStats(loss.detach(), grad_norm.detach())


def take_steps(
    model: TransformerBridge,
    train_cfg: TrainConfig,
    data: DataSource,
    steps: Sequence[int],
    *,
    fwd_hooks: Sequence[FwdHook] = (),
    batch_patterns: BatchPatterns | None = None,
) -> list[float]:
    """Train `model` in place on `data`'s batches for `steps`, with a fresh
    optimizer and no run directory; returns the training losses.

    For short what-if fine-tuning from a checkpoint (e.g. a pairwise recovery
    matrix), where writing a run per probe would cost more than the training.
    The update is `train`'s own (`Stepper`); the model is left in eval mode.
    """
    device = next(model.parameters()).device
    stepper = Stepper(model, train_cfg, fwd_hooks, batch_patterns)
    model.train()
    stats: list[StepStats] = []
    for step in steps:
        batch = data.batch(step, train_cfg.batch_size, generator(train_cfg.seed, BATCHES, step))
        stats.append(stepper.step(step, training_batch(batch, device)))
    model.eval()
    return read_steps(train_cfg, list(steps), stats)


def read_steps(cfg: TrainConfig, steps: Sequence[int], stats: Sequence[StepStats]) -> list[float]:
    """The losses of `steps`, read from the device at once (one wait instead of one per step).

    Raises `NonFiniteError` naming the first step whose loss or gradient norm is NaN or
    infinite: every step after it trains on garbage, so nothing from it may be logged or saved.
    """
    if not stats:
        return []
    losses = torch.stack([s.loss for s in stats]).tolist()
    norms = torch.stack([s.grad_norm for s in stats]).tolist()
    for step, loss, norm in zip(steps, losses, norms, strict=True):
        if not (math.isfinite(loss) and math.isfinite(norm)):
            what = f"the training loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {norm}"
            scheduled = f" (the schedule's learning rate there is {lr_at(cfg, step):g})" \
                if lr_at(cfg, step) != cfg.lr else ""
            raise NonFiniteError(f"training diverged at step {step}: {what}{scheduled}; lower the learning rate "
                                 f"(train.lr={cfg.lr:g})")
    return losses
