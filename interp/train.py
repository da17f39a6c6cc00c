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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from interp.bridge import installed_version
from interp.checkpoints import Run
from interp.configs import to_dict
from interp.devices import resolve_device
from interp.errors import InputError, OutputExistsError
from interp.files import NonFiniteError
from interp.ids import CheckpointRef
from interp.locking import brief_wait, run_lock
from interp.model import FwdHook, ModelConfig, build_model, load_model_state_dict, training_batch
from interp.run_layout import CONFIG_FILE, RunDamagedError
from interp.seeding import BATCHES, generator
from interp.train_config import (
    KEEP_ALL,
    CheckpointPolicy,
    DataSource,
    KeptState,
    KeptWeights,
    Optimizer,
    Precision,
    Schedule,
    TrainConfig,
    checkpoint_schedule,
    decayed,
    keep_checkpoints,
    kept_weights,
    lr_at,
    make_optimizer,
    selected,
)
from interp.train_steps import BatchPatterns, Stepper, StepStats, read_steps, take_steps

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge

# The config, checkpoint policy, optimizer and step machinery live in `interp.train_config` and
# `interp.train_steps`; they are re-exported here, where callers have always imported them.
__all__ = [
    "KEEP_ALL",
    "NO_HOOKS",
    "BatchPatterns",
    "CheckpointPolicy",
    "DataSource",
    "Evaluator",
    "KeptState",
    "KeptWeights",
    "Optimizer",
    "Precision",
    "RunStart",
    "Schedule",
    "StepCallback",
    "StepStats",
    "Stepper",
    "StopCondition",
    "TrainConfig",
    "TrainHooks",
    "checkpoint_schedule",
    "decayed",
    "keep_checkpoints",
    "kept_weights",
    "lr_at",
    "make_optimizer",
    "parse_init_from",
    "read_steps",
    "selected",
    "take_steps",
    "train",
    "versions",
]

logger = logging.getLogger(__name__)

Evaluator = Callable[["TransformerBridge"], Mapping[str, float]]
"""Called in eval mode without gradients; returns named numbers to log."""

StepCallback = Callable[[int, "TransformerBridge", float], None]
"""Called after each optimizer step with (steps done, model, training loss)."""

StopCondition = Callable[[int, Mapping[str, float]], bool]
"""Called after each evaluation with (steps done, that evaluation's row); True ends
the run there (e.g. once a loss has left its plateau)."""


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
