"""The training loop: one loop for every experiment in the toolkit.

Data comes from a `DataSource`: `batch(step, batch_size, generator)` must depend
only on its arguments. The trainer seeds `generator` from `(seed, step)`, so the
data position is the step itself and a resumed run sees exactly the batches an
uninterrupted one would.

Structured regimes use the same loop:
- phases (pre-train, then fine-tune): a fine-tuning run is its own run directory
  with `init_from="path/to/base@step"`;
- fixed-order episodes with K steps per item: the data source serves item
  `(step // K) % T`, and `episode_steps=K` with `reset_optimizer_each_episode`
  restarts the optimizer at each item.
"""

from __future__ import annotations

import json
import logging
import math
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from interp.bridge import installed_version
from interp.checkpoints import CONFIG_FILE, Run
from interp.configs import require, require_literals, require_positive, to_dict
from interp.ids import CheckpointRef
from interp.model import (
    Batch,
    FwdHook,
    ModelConfig,
    Patterns,
    batch_to,
    build_model,
    forward,
    load_model_state_dict,
    masked_mean_loss,
    named_trainable_parameters,
    resolve_device,
    trim_padding,
)

logger = logging.getLogger(__name__)

Optimizer = Literal["adamw", "adam", "sgd"]
Schedule = Literal["constant", "cosine"]
Precision = Literal["fp32", "bf16"]


class DataSource(Protocol):
    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        """The training batch for `step`; a pure function of its arguments."""
        ...


Evaluator = Callable[[TransformerBridge], Mapping[str, float]]
"""Called in eval mode without gradients; returns named numbers to log."""

StepCallback = Callable[[int, TransformerBridge, float], None]
"""Called after each optimizer step with (steps done, model, training loss)."""

StopCondition = Callable[[int, Mapping[str, float]], bool]
"""Called after each evaluation with (steps done, that evaluation's row); True ends
the run there (e.g. once a loss has left its plateau)."""

BatchPatterns = Callable[[Batch], Patterns]
"""Attention patterns that depend on the batch (e.g. a reference model's on it,
`interp.patching.pattern_patch`), used instead of the model's own at every training
step; they carry no gradient, so queries and keys are not trained."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimization, schedule, logging and checkpointing of one training run.

    `l2` adds `l2/2 * ||theta||^2` to the loss (explicit penalty), distinct from
    decoupled `weight_decay`. Each applies to the parameters whose checkpoint names
    match one of its patterns, `l2_only` and `decay_only` (fnmatch, e.g.
    `"blocks.*.attn.*"`: the attention only), or to all when they are empty.
    Checkpoints are taken at step 0, the last step,
    `checkpoint_log` log-spaced steps, every `checkpoint_every` steps and at each
    of `checkpoint_steps`. `init_from` is `"run_dir"` (last step) or `"run_dir@step"`.
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


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator determined by (seed, step, stream) alone."""
    state = np.random.SeedSequence([seed, stream, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def parse_init_from(spec: str) -> tuple[Run, int]:
    ref = CheckpointRef.parse(spec)
    parent = Run.open(ref.run_dir)
    if not parent.steps:
        raise ValueError(f"init_from: {ref.run_dir} has no checkpoints")
    return parent, parent.steps[-1] if ref.step is None else ref.step


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformer_lens": installed_version(),
        "numpy": np.__version__,
    }


def _run_config(model_cfg: ModelConfig, train_cfg: TrainConfig, extra: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {"model": to_dict(model_cfg), "train": to_dict(train_cfg), **extra}
    if train_cfg.init_from:
        parent, step = parse_init_from(train_cfg.init_from)
        config["init_from"] = {"run": str(parent.path), "step": step, "sha256": parent.checkpoint_hash(step)}
    return config


def _identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a run config that define its results (not where it ran)."""
    return {k: v for k, v in config.items() if k not in ("versions", "device")}


def _json_roundtrip(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


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
                raise ValueError(f"{field_name}: {list(patterns)} matches no parameter; names are {names}")
        self.penalized = [p for n, p in self.named_params if selected(cfg.l2_only, n)]
        self.optimizer = make_optimizer(cfg, self.named_params)
        self.device_type = self.params[0].device.type

    def step(self, step: int, batch: Batch) -> float:
        """Update on `batch` as the `step`-th (0-based) step; returns the loss before the update."""
        cfg = self.cfg
        if cfg.reset_optimizer_each_episode and step > 0 and step % cfg.episode_steps == 0:
            self.optimizer = make_optimizer(cfg, self.named_params)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(cfg, step)
        batch = trim_padding(batch)
        patterns = self.batch_patterns(batch) if self.batch_patterns else None
        with torch.autocast(self.device_type, torch.bfloat16, enabled=cfg.precision == "bf16"):
            loss = masked_mean_loss(forward(self.model, batch, self.fwd_hooks, patterns), batch)
        objective = loss
        if cfg.l2:
            objective = loss + 0.5 * cfg.l2 * sum(p.pow(2).sum() for p in self.penalized)
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimizer.step()
        return loss.item()


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
    losses = []
    for step in steps:
        batch = data.batch(step, train_cfg.batch_size, step_generator(train_cfg.seed, step))
        losses.append(stepper.step(step, batch_to(batch, device)))
    model.eval()
    return losses


@dataclass(frozen=True)
class TrainHooks:
    """Everything a caller plugs into `train`'s loop besides the data, in one value.

    None of it is part of the run's identity (it is not written to `config.json`), so a
    resumed call must pass the same hooks to continue the run it started.
    """

    evaluators: Mapping[str, Evaluator] = field(default_factory=dict)
    """Named evaluators, run at step 0, every `eval_every` steps and at the last step;
    each returned number is logged as `"<name>/<key>"`."""
    callbacks: Sequence[StepCallback] = ()
    """Called after every step, after that step's checkpoint (if any) is written, including
    the step at which `stop_when` or `pause_when` ends the call."""
    stop_when: StopCondition | None = None
    """Asked after each evaluation before the last step; True ends the run there for good,
    with a checkpoint (the learning-rate schedule stays that of `steps`, so a stopped
    run is a prefix of the full one)."""
    pause_when: StopCondition | None = None
    """Like `stop_when`, but the run is not finished: `resume=True` continues it."""
    fwd_hooks: Sequence[FwdHook] = ()
    """TransformerLens forward hooks active in every training forward pass (not in evaluators)."""
    batch_patterns: BatchPatterns | None = None
    """Attention patterns used instead of the model's own in every training forward pass."""


NO_HOOKS = TrainHooks()


@dataclass(frozen=True)
class RunStart:
    """Where a call to `train` begins: the run directory, opened or created, and the
    state an interrupted run left at its last checkpoint."""

    run: Run
    step: int
    """Steps already taken: 0 for a new run, else the last checkpoint's step."""
    resumed: bool
    """The run existed (then step 0's evaluation and checkpoint are already written)."""
    finished: bool
    """Nothing is left to train: the last step was reached or `stop_when` ended the run."""
    weights: dict[str, Tensor] | None = None
    """Weights to load over the seeded initialization: the resumed checkpoint's or `init_from`'s."""
    optimizer: dict[str, Any] | None = None
    """The resumed optimizer state; None starts a fresh optimizer."""
    # The running train-loss sum and count since the last log row, so a resumed log
    # matches an uninterrupted one.
    loss_sum: float = 0.0
    loss_count: int = 0


def open_run(
    run_dir: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    config_extra: Mapping[str, Any],
    *,
    resume: bool,
    device: torch.device,
) -> RunStart:
    """Create the run directory, or reopen it to resume; see `train` for the rules."""
    config = _run_config(model_cfg, train_cfg, config_extra)
    run = Run(run_dir)
    if not (run.path.joinpath(CONFIG_FILE).exists() and run.steps):
        run = Run.create(run_dir, {**config, "device": str(device), "versions": versions()})
        weights = None
        if train_cfg.init_from:
            parent, parent_step = parse_init_from(train_cfg.init_from)
            weights = parent.load_state_dict(parent_step)
        return RunStart(run, step=0, resumed=False, finished=False, weights=weights)

    if not resume:
        raise FileExistsError(f"{run.path} already holds a run; resume it or choose another directory")
    # Comparing what the config defines (not where it ran) refuses a resume with other settings,
    # which would silently splice two different runs into one directory.
    if _identity(run.config) != _identity(_json_roundtrip(config)):
        raise ValueError(f"resume: the config differs from {run.path / CONFIG_FILE}; start a new run instead")
    step = run.steps[-1]
    if step >= train_cfg.steps:
        return RunStart(run, step=step, resumed=True, finished=True)
    state = run.load_training_state(step)
    if state.get("stopped"):
        return RunStart(run, step=step, resumed=True, finished=True)
    # Rows logged after the last checkpoint describe steps that are about to be redone.
    run.truncate_metrics(step)
    logger.info("resuming %s from step %d", run.path, step)
    return RunStart(run, step=step, resumed=True, finished=False, weights=run.load_state_dict(step),
                    optimizer=state["optimizer"], loss_sum=state["loss_sum"], loss_count=state["loss_count"])


def _evaluate(model: TransformerBridge, evaluators: Mapping[str, Evaluator]) -> dict[str, float]:
    """One row of named evaluation numbers; the model is left in training mode."""
    model.eval()
    with torch.no_grad():
        row = {f"{name}/{key}": float(v) for name, fn in evaluators.items() for key, v in fn(model).items()}
    model.train()
    return row


def train(
    run_dir: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: DataSource,
    *,
    hooks: TrainHooks = NO_HOOKS,
    config_extra: Mapping[str, Any] | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Run:
    """Train a model into `run_dir` and return the `Run`.

    With `resume=True` an existing run continues from its last complete
    checkpoint and ends with the weights an uninterrupted run would have; a
    finished run is returned as is. Without it, a directory that already holds
    checkpoints is refused rather than overwritten.

    `hooks.stop_when` ends the run early at an evaluation step, with a checkpoint
    there; the learning-rate schedule is still the one of `train_cfg.steps`, so
    a stopped run is the prefix of the full one. A stopped run counts as finished.
    `hooks.pause_when` ends this call the same way, but the run is not finished: a
    later call with `resume=True` continues it to `train_cfg.steps` (e.g. to
    use a checkpoint from just after a transition while the run goes on).
    """
    device = resolve_device(device)
    start = open_run(run_dir, model_cfg, train_cfg, config_extra or {}, resume=resume, device=device)
    run = start.run
    if start.finished:
        return run
    model = build_model(model_cfg, device=device)
    if start.weights is not None:
        load_model_state_dict(model, start.weights)
    stepper = Stepper(model, train_cfg, hooks.fwd_hooks, hooks.batch_patterns)
    if start.optimizer is not None:
        stepper.optimizer.load_state_dict(start.optimizer)
    loss_sum, loss_count = start.loss_sum, start.loss_count

    def checkpoint(step: int, stopped: bool = False) -> None:
        # The running train-loss average rides along so a resumed log matches an uninterrupted one.
        # No RNG state: every random draw comes from step_generator(seed, step), so the
        # data position is the step and the caller's global RNG is never touched.
        # At an episode boundary of a resetting run the optimizer state is about to be
        # discarded, so it is not stored (it would double the size of dense checkpoints).
        discarded = train_cfg.reset_optimizer_each_episode and step % train_cfg.episode_steps == 0
        state = {"step": step, "optimizer": None if discarded else stepper.optimizer.state_dict(),
                 "loss_sum": loss_sum, "loss_count": loss_count, "stopped": stopped}
        run.save_checkpoint(step, model, state)

    if not start.resumed:
        run.log_metrics([{"step": 0, **_evaluate(model, hooks.evaluators)}] if hooks.evaluators else [])
        checkpoint(0)

    total = train_cfg.steps
    schedule = set(checkpoint_schedule(train_cfg))
    # Rows wait here until the next checkpoint, so metrics.jsonl never runs ahead of the
    # checkpoint a resumed run restarts from.
    pending: list[dict[str, Any]] = []
    model.train()
    bar = tqdm(total=total, initial=start.step, disable=not progress, desc=run.path.name, leave=False)
    for step in range(start.step, total):
        batch = batch_to(data.batch(step, train_cfg.batch_size, step_generator(train_cfg.seed, step)), device)
        loss = stepper.step(step, batch)
        done = step + 1
        bar.update(1)

        # The logged train loss averages every step since the last log row, not just this one.
        loss_sum, loss_count = loss_sum + loss, loss_count + 1
        row: dict[str, Any] = {}
        if done % train_cfg.log_every == 0 or done == total:
            row.update({"train/loss": loss_sum / loss_count, "lr": lr_at(train_cfg, step)})
            loss_sum, loss_count = 0.0, 0
            bar.set_postfix(loss=f"{row['train/loss']:.3f}")

        # Stopping and pausing are decided on evaluations only; at the last step the run ends anyway.
        stop = pause = False
        if hooks.evaluators and (done == total or (train_cfg.eval_every and done % train_cfg.eval_every == 0)):
            evaluation = _evaluate(model, hooks.evaluators)
            row.update(evaluation)
            if done < total:
                stop = hooks.stop_when is not None and hooks.stop_when(done, evaluation)
                pause = not stop and hooks.pause_when is not None and hooks.pause_when(done, evaluation)
        if row:
            pending.append({"step": done, **row})

        # An early end takes a checkpoint too: it is where a stopped run ends, or a paused one resumes.
        if done in schedule or stop or pause:
            run.log_metrics(pending)
            pending = []
            checkpoint(done, stopped=stop)

        for callback in hooks.callbacks:
            callback(done, model, loss)
        if stop or pause:
            logger.info("%s: %s condition met at step %d", run.path, "stop" if stop else "pause", done)
            break
    bar.close()
    run.log_metrics(pending)
    return run
