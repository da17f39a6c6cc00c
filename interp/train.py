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
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from interp.bridge import installed_version
from interp.checkpoints import Run
from interp.configs import require, require_finite, require_literals, require_positive, to_dict
from interp.devices import resolve_device
from interp.errors import InputError, OutputExistsError
from interp.files import NonFiniteError
from interp.ids import CheckpointRef
from interp.locking import brief_wait, run_lock
from interp.model import (
    Batch,
    FwdHook,
    ModelConfig,
    Patterns,
    build_model,
    forward,
    load_model_state_dict,
    masked_mean_loss,
    named_trainable_parameters,
    training_batch,
)
from interp.run_layout import CONFIG_FILE, STATE_FILE, WEIGHTS_FILE, RunDamagedError
from interp.seeding import BATCHES, generator

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge

logger = logging.getLogger(__name__)

Optimizer = Literal["adamw", "adam", "sgd"]
Schedule = Literal["constant", "cosine"]
Precision = Literal["fp32", "bf16"]


class DataSource(Protocol):
    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        """The training batch for `step`; a pure function of its arguments."""
        ...


Evaluator = Callable[["TransformerBridge"], Mapping[str, float]]
"""Called in eval mode without gradients; returns named numbers to log."""

StepCallback = Callable[[int, "TransformerBridge", float], None]
"""Called after each optimizer step with (steps done, model, training loss)."""

StopCondition = Callable[[int, Mapping[str, float]], bool]
"""Called after each evaluation with (steps done, that evaluation's row); True ends
the run there (e.g. once a loss has left its plateau)."""

BatchPatterns = Callable[[Batch], Patterns]
"""Attention patterns that depend on the batch (e.g. a reference model's on it,
`interp.pattern_substitution.reference_patterns`), used instead of the model's own at every training
step; they carry no gradient, so queries and keys are not trained."""


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


def parse_init_from(spec: str) -> tuple[Run, int]:
    ref = CheckpointRef.parse(spec)
    parent = Run.open(ref.run_dir)
    if not parent.steps:
        raise InputError(f"init_from: {ref.run_dir} has no checkpoints")
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
    init_from: CheckpointRef | None = None
    """A new run's `init_from` checkpoint, whose weights its step 0 shares instead of copying."""
    optimizer: dict[str, Any] | None = None
    """The resumed optimizer state; None starts a fresh optimizer."""
    # The running train-loss sum and count since the last log row, so a resumed log
    # matches an uninterrupted one.
    loss_sum: float = 0.0
    loss_count: int = 0


def _open_run(run_dir: str | Path, config: dict[str, Any], train_cfg: TrainConfig, *, resume: bool,
              device: torch.device) -> RunStart:
    with run_lock(run_dir):
        run = Run(run_dir)
        state = run.inspect()
        # Any trace of a run counts: a directory whose manifest is lost still holds checkpoints
        # and a log, which a new run would overwrite and append to.
        if state.exists and not resume:
            problems = state.problems()
            found = f" ({'; '.join(problems)})" if problems else ""
            raise OutputExistsError(f"{run.path} already holds a run{found}; resume it or choose another directory")
        damage = state.damage() if state.exists else []
        if damage:
            raise RunDamagedError(f"cannot resume {run.path}: {'; '.join(damage)}; nothing was changed")
        if not state.exists or state.unborn:  # new, or killed while being created: nothing to keep
            run.remove_leftovers(state)
            run = Run.create(run_dir, {**config, "device": str(device), "versions": versions()})
            return _first_start(run, train_cfg)

        # Comparing what the config defines (not where it ran) refuses a resume with other settings,
        # which would silently splice two different runs into one directory.
        if _identity(run.config) != _identity(_json_roundtrip(config)):
            raise InputError(f"resume: the config differs from {run.path / CONFIG_FILE}; start a new run instead")
        # What a killed writer leaves is after the last checkpoint (rows are logged before the
        # checkpoint that covers them), so removing it loses nothing that was saved: temporary
        # files, an uncommitted checkpoint directory, a torn last line and the rows after the
        # checkpoint, which are about to be redone.
        for repair in state.repairs():
            logger.info("repairing %s", repair)
        run.remove_leftovers(state)
        step = state.last_step
        run.truncate_metrics(step)
        if step is None:  # killed before checkpoint 0 was committed: start over (its row is gone too)
            return _first_start(run, train_cfg)
        if step >= train_cfg.steps:
            return RunStart(run, step=step, resumed=True, finished=True)
        training = run.load_training_state(step)
        if training.get("stopped"):
            return RunStart(run, step=step, resumed=True, finished=True)
        logger.info("resuming %s from step %d", run.path, step)
        return RunStart(run, step=step, resumed=True, finished=False, weights=run.load_state_dict(step),
                        optimizer=training["optimizer"], loss_sum=training["loss_sum"],
                        loss_count=training["loss_count"])


def _first_start(run: Run, train_cfg: TrainConfig) -> RunStart:
    """Step 0 of a run: the seeded initialization, or `init_from`'s weights."""
    if not train_cfg.init_from:
        return RunStart(run, step=0, resumed=False, finished=False)
    parent, parent_step = parse_init_from(train_cfg.init_from)
    return RunStart(run, step=0, resumed=False, finished=False, weights=parent.load_state_dict(parent_step),
                    init_from=CheckpointRef.of(parent.path, parent_step))


def _check_evaluation(step: int, row: Mapping[str, float], cfg: TrainConfig) -> None:
    """Refuse a non-finite evaluation: the log is strict JSON, and a NaN curve would read as data."""
    bad = {k: v for k, v in row.items() if not math.isfinite(v)}
    if bad:
        key, value = next(iter(bad.items()))
        raise NonFiniteError(f"the evaluation {key} is {value} at step {step}, so training stops there (if the "
                             f"model diverged, lower the learning rate, train.lr={cfg.lr:g}; else fix the evaluator)")


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
    keep: CheckpointPolicy = KEEP_ALL,
) -> Run:
    """Train a model into `run_dir` and return the `Run`.

    With `resume=True` an existing run continues from its last complete
    checkpoint and ends with the weights an uninterrupted run would have; a
    finished run is returned as is. What a killed writer leaves behind (a torn
    last log line, rows after the last checkpoint, an uncommitted checkpoint
    directory, temporary files) is removed first; a directory damaged in any other
    way (`Run.inspect().damage()`: a lost manifest, rows missing before the last
    checkpoint, rows of two runs) is refused with `RunDamagedError` and left as it is.
    Without `resume`, a directory with any trace of a run (config.json, checkpoints/
    or metrics.jsonl) is refused rather than overwritten.

    The run directory's lock (`run_lock`) is held throughout: a second writer of the
    same directory fails with `RunInUseError`. Taking it, training waits up to
    `interp.locking.brief_wait()` seconds (saying so) for a holder that needs it briefly:
    a probe caching its results in the run when training starts or resumes. Training stops with
    `NonFiniteError`, naming the step, at the first NaN or infinite training loss,
    gradient norm, evaluation or weight, before anything non-finite is logged or saved.

    `hooks.stop_when` ends the run early at an evaluation step, with a checkpoint
    there; the learning-rate schedule is still the one of `train_cfg.steps`, so
    a stopped run is the prefix of the full one. A stopped run counts as finished.
    `hooks.pause_when` ends this call the same way, but the run is not finished: a
    later call with `resume=True` continues it to `train_cfg.steps` (e.g. to
    use a checkpoint from just after a transition while the run goes on).

    `keep` decides which checkpoint files stay once a later checkpoint is committed
    (`CheckpointPolicy`); the step 0 of an `init_from` run shares its parent's weights file.
    """
    device = resolve_device(device)
    config = _run_config(model_cfg, train_cfg, config_extra or {})  # checked before anything is created
    # One writer per run directory for as long as it trains: a second `train` on the same
    # directory fails instead of interleaving its checkpoints and rows with ours.
    with run_lock(run_dir, wait=brief_wait()):
        start = _open_run(run_dir, config, train_cfg, resume=resume, device=device)
        if start.finished:
            return start.run
        try:
            return _train_from(start, model_cfg, train_cfg, data, hooks, device, progress, keep)
        except NonFiniteError as err:
            steps = start.run.steps
            kept = f"the run is intact up to its last checkpoint, step {steps[-1]}" if steps else "nothing was saved"
            raise NonFiniteError(f"{start.run.path}: {err}; {kept}") from None


def _train_from(start: RunStart, model_cfg: ModelConfig, train_cfg: TrainConfig, data: DataSource,
                hooks: TrainHooks, device: torch.device, progress: bool, keep: CheckpointPolicy) -> Run:
    """`train`'s loop from `start`, run by the holder of the run's lock."""
    run = start.run
    model = build_model(model_cfg, device=device)
    if start.weights is not None:
        load_model_state_dict(model, start.weights)
    stepper = Stepper(model, train_cfg, hooks.fwd_hooks, hooks.batch_patterns)
    if start.optimizer is not None:
        stepper.optimizer.load_state_dict(start.optimizer)
    loss_sum, loss_count = start.loss_sum, start.loss_count

    def checkpoint(step: int, stopped: bool = False) -> None:
        # The running train-loss average rides along so a resumed log matches an uninterrupted one.
        # No RNG state: every random draw comes from generator(seed, BATCHES, step), so the
        # data position is the step and the caller's global RNG is never touched.
        # The optimizer state is stored only where a run can continue from it: not at the end
        # of a finished (or stopped) run, and not at an episode boundary of a resetting run,
        # where it is about to be discarded (it would double the size of dense checkpoints).
        discarded = (stopped or step == train_cfg.steps
                     or (train_cfg.reset_optimizer_each_episode and step % train_cfg.episode_steps == 0))
        state = {"step": step, "optimizer": None if discarded else stepper.optimizer.state_dict(),
                 "loss_sum": loss_sum, "loss_count": loss_count, "stopped": stopped}
        try:
            # A fine-tuning run's step 0 is its parent's checkpoint: referenced, not copied.
            run.save_checkpoint(step, model, state, weights_of=start.init_from if step == 0 else None)
        except NonFiniteError:
            # Finite losses and gradients can still overflow the weights in the update itself.
            raise NonFiniteError(f"training diverged before step {step}: the weights are not finite; lower the "
                                 f"learning rate (train.lr={train_cfg.lr:g})") from None
        keep_checkpoints(run, train_cfg, keep)

    if not start.resumed:
        if hooks.evaluators:
            first = _evaluate(model, hooks.evaluators)
            _check_evaluation(0, first, train_cfg)
            run.log_metrics([{"step": 0, **first}])
        checkpoint(0)

    total = train_cfg.steps
    schedule = set(checkpoint_schedule(train_cfg))
    # Rows wait here until the next checkpoint, so metrics.jsonl never runs ahead of the
    # checkpoint a resumed run restarts from.
    pending: list[dict[str, Any]] = []
    # Steps whose loss and gradient norm are not yet read (nor added to `loss_sum`), left on the
    # device until a log row, an evaluation, a checkpoint or a callback needs them: reading each
    # step's would make the host wait for the device every step. Reading checks them
    # (`read_steps`), so nothing after a non-finite step is evaluated, logged or saved.
    unread: list[StepStats] = []
    unread_steps: list[int] = []
    last_loss = math.nan
    model.train()
    bar = tqdm(total=total, initial=start.step, disable=not progress, desc=run.path.name, leave=False)
    for step in range(start.step, total):
        batch = training_batch(data.batch(step, train_cfg.batch_size, generator(train_cfg.seed, BATCHES, step)),
                               device)
        unread.append(stepper.step(step, batch))
        unread_steps.append(step)
        done = step + 1
        bar.update(1)
        loss_count += 1

        logs = done % train_cfg.log_every == 0 or done == total
        # Stopping and pausing are decided on evaluations only; at the last step the run ends anyway.
        evaluates = bool(hooks.evaluators) and (done == total or bool(train_cfg.eval_every
                                                                      and done % train_cfg.eval_every == 0))
        if logs or evaluates or done in schedule or hooks.callbacks:
            # Added one by one in step order (not with `sum()`, which compensates since Python
            # 3.12), so the sum is the same however the steps were batched into reads.
            for value in read_steps(train_cfg, unread_steps, unread):
                loss_sum += value
                last_loss = value
            unread.clear()
            unread_steps.clear()

        # The logged train loss averages every step since the last log row, not just this one.
        row: dict[str, Any] = {}
        if logs:
            row.update({"train/loss": loss_sum / loss_count, "lr": lr_at(train_cfg, step)})
            loss_sum, loss_count = 0.0, 0
            bar.set_postfix(loss=f"{row['train/loss']:.3f}")

        stop = pause = False
        if evaluates:
            evaluation = _evaluate(model, hooks.evaluators)
            _check_evaluation(done, evaluation, train_cfg)
            row.update(evaluation)
            if done < total:
                stop = hooks.stop_when is not None and hooks.stop_when(done, evaluation)
                pause = not stop and hooks.pause_when is not None and hooks.pause_when(done, evaluation)
        if row:
            pending.append({"step": done, **row})

        # An early end takes a checkpoint too: it is where a stopped run ends, or a paused one resumes.
        if done in schedule or stop or pause:  # every step so far was read: the sum is complete
            run.log_metrics(pending)
            pending = []
            checkpoint(done, stopped=stop)

        for callback in hooks.callbacks:  # callbacks take a number: only then is every step read
            callback(done, model, last_loss)
        if stop or pause:
            logger.info("%s: %s condition met at step %d", run.path, "stop" if stop else "pause", done)
            break
    bar.close()
    run.log_metrics(pending)
    return run
