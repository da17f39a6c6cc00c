"""What a training run is told: its config (`TrainConfig`, `DataSource`, `checkpoint_schedule`),
which checkpoint files it keeps (`CheckpointPolicy`, `keep_checkpoints`) and its optimizer and
learning-rate schedule (`make_optimizer`, `lr_at`). The trainer itself is `interp.train`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from interp.checkpoints import Run
from interp.configs import require, require_finite, require_literals, require_positive
from interp.model import Batch
from interp.run_layout import STATE_FILE, WEIGHTS_FILE

Optimizer = Literal["adamw", "adam", "sgd"]
Schedule = Literal["constant", "cosine"]
Precision = Literal["fp32", "bf16"]


class DataSource(Protocol):
    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        """The training batch for `step`; a pure function of its arguments."""
        ...


@dataclass(frozen=True)
class TrainConfig:
    """Optimization, schedule, logging and checkpointing of one training run.

    `l2` adds `l2/2 * ||theta||^2` to the loss (explicit penalty), distinct from
    decoupled `weight_decay`. Each applies to the parameters whose checkpoint names
    match one of its patterns, `l2_only` and `decay_only` (fnmatch, e.g.
    `"blocks.*.attn.*"`: the attention only), or to all when they are empty.
    `log_every` is an interval: the training loss (averaged over the steps since the
    last row) and the learning rate are logged every `log_every` steps and at the last;
    evaluators run every `eval_every` steps (0: at step 0 and the last step only).
    Checkpoints are taken at step 0, the last step, at `checkpoint_log` log-spaced steps
    (a count, not an interval: `geomspace(1, steps, checkpoint_log)` rounded; 0: none),
    every `checkpoint_every` steps (an interval; 0: none) and at each of
    `checkpoint_steps`. (These names are keys of every saved run's `config.json`, which
    identifies the run, so they stay.) `init_from` is `"run_dir"` (last step) or `"run_dir@step"`.
    `precision="bf16"` runs the training forward pass under bfloat16 autocast
    (weights, optimizer state and evaluation stay float32); bfloat16 keeps float32's
    exponent range, so it needs no loss scaling.
    """

    steps: int = 1000
    batch_size: int = 32
    optimizer: Optimizer = "adamw"
    lr: float = 1e-3
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    l2: float = 0.0
    l2_only: tuple[str, ...] = ()
    decay_only: tuple[str, ...] = ()
    schedule: Schedule = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.0
    precision: Precision = "fp32"
    log_every: int = 10
    eval_every: int = 0
    checkpoint_log: int = 10
    checkpoint_every: int = 0
    checkpoint_steps: tuple[int, ...] = ()
    episode_steps: int = 0
    reset_optimizer_each_episode: bool = False
    init_from: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        require_finite(self)
        require_positive(self, "steps", "batch_size", "log_every")
        require(self.lr > 0, "lr", "a positive learning rate", self.lr)
        require_literals(self)
        for name in ("momentum", "weight_decay", "l2", "grad_clip"):
            value = getattr(self, name)
            require(value >= 0, name, "a number >= 0", value)
        for name in ("beta1", "beta2", "min_lr_ratio"):
            value = getattr(self, name)
            require(0 <= value <= 1, name, "a number in [0, 1]", value)
        for name in ("warmup_steps", "eval_every", "checkpoint_log", "checkpoint_every", "episode_steps"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 0, name, "an integer >= 0", value)
        bad = [s for s in self.checkpoint_steps if not 0 <= s <= self.steps]
        require(not bad, "checkpoint_steps", f"steps within [0, {self.steps}]", bad)
        require(
            not self.reset_optimizer_each_episode or self.episode_steps > 0,
            "episode_steps",
            "a positive episode length when reset_optimizer_each_episode is set",
            self.episode_steps,
        )


def checkpoint_schedule(cfg: TrainConfig) -> list[int]:
    """Sorted checkpoint steps: 0, the end, log-spaced, linear and explicit ones."""
    steps = {0, cfg.steps, *cfg.checkpoint_steps}
    if cfg.checkpoint_log:
        steps.update(int(round(s)) for s in np.geomspace(1, cfg.steps, cfg.checkpoint_log))
    if cfg.checkpoint_every:
        steps.update(range(0, cfg.steps + 1, cfg.checkpoint_every))
    return sorted(steps)


KeptWeights = Literal["all", "log", "final", "none"]
KeptState = Literal["latest", "all"]


@dataclass(frozen=True)
class CheckpointPolicy:
    """Which of a run's checkpoint files stay on disk. It changes what the run directory
    holds, never a number in it, so it is not part of the run's identity (`config.json`): the
    job that trains the run declares it (`interp.pipeline.TrainingJob.keep`, `train(keep=...)`).

    `weights`: "all" at every scheduled checkpoint; "log" at step 0, the last step, the
    `checkpoint_log` log-spaced steps and the explicit `checkpoint_steps` (the `checkpoint_every`
    ones are then resume points only); "final" at the last step only; "none" at none once the
    job's own results are written (`keep_checkpoints(..., results_written=True)`; until then at
    the last step, which they are computed from). `state`: the training state (`state.pt`:
    optimizer state and running loss), "latest" only at the last checkpoint, the one a resume
    continues from, or "all" at every one. Whatever the policy, the last committed checkpoint
    keeps both while the run trains, so a killed run loses nothing it checkpointed; an earlier
    one loses what the policy drops only once a later one is committed."""

    weights: KeptWeights = "all"
    state: KeptState = "latest"

    def __post_init__(self) -> None:
        require_literals(self)


KEEP_ALL = CheckpointPolicy()
"""Weights at every checkpoint, the training state at the last (the default of `train`)."""


def kept_weights(cfg: TrainConfig, policy: CheckpointPolicy, committed: Sequence[int]) -> set[int]:
    """Which of the `committed` checkpoints of a run trained with `cfg` keep their weights under
    `policy` once a later one is committed (the last keeps them anyway, see `keep_checkpoints`)."""
    if policy.weights == "all":
        return set(committed)
    if policy.weights == "log":
        return set(checkpoint_schedule(replace(cfg, checkpoint_every=0))) & set(committed)
    return {cfg.steps} & set(committed) if policy.weights == "final" else set()


def keep_checkpoints(run: Run, cfg: TrainConfig, policy: CheckpointPolicy, *, results_written: bool = False) -> None:
    """Release the files `policy` does not keep from `run`'s committed checkpoints (by the holder
    of its lock). The last committed checkpoint keeps its weights, unless the policy keeps none and
    `results_written` says that what the job computes from them is written."""
    committed = run.committed_steps
    if not committed:
        return
    last, kept = committed[-1], kept_weights(cfg, policy, committed)
    manifest = run.manifest
    drop: dict[int, list[str]] = {}
    for step in committed:
        names = []
        if step != last and policy.state == "latest":
            names.append(STATE_FILE)
        if step not in kept and (step != last or (policy.weights == "none" and results_written)):
            names.append(WEIGHTS_FILE)
        names = [n for n in names if n in manifest[str(step)]]
        if names:
            drop[step] = names
    if drop:
        run.release(drop)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for the update taken at `step` (0-based)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    return cfg.lr


def selected(patterns: Sequence[str], name: str) -> bool:
    """Whether the parameter called `name` matches one of `patterns` (all do when there are none)."""
    return not patterns or any(fnmatchcase(name, pattern) for pattern in patterns)


def decayed(cfg: TrainConfig, name: str) -> bool:
    """Whether `weight_decay` applies to the parameter called `name`."""
    return selected(cfg.decay_only, name)


def make_optimizer(cfg: TrainConfig, named_params: Sequence[tuple[str, Tensor]]) -> torch.optim.Optimizer:
    groups = [{"params": [p for n, p in named_params if decayed(cfg, n)], "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in named_params if not decayed(cfg, n)], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    # The fused kernels update every tensor in one call: the per-tensor loop of the default
    # implementation is most of an optimizer step at these model sizes (5x slower on CPU).
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=True)
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=betas, fused=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=True)
