"""The one way an analysis trains its runs: typed jobs, run in stages on a `Backend`.

An analysis builds `TrainingJob`s (a name, the model and training configs, the
task's config and a module-level `setup` function that turns the job into a data
source and its training hooks), hands each stage's jobs to `Context.train` and
gets the finished `Run`s back by name. Every run lives in `<out>/runs/<name>/`
and stores its task as `{"task": {"type": ..., ...}}`. Jobs of a stage run on
the context's backend (a local process pool by default); a failing job does not
stop the others (`JobsFailed` names it) and `resume` continues every unfinished
run from its last checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from interp.checkpoints import Run
from interp.configs import from_dict, require, to_dict
from interp.locking import brief_wait, run_lock
from interp.memory import FLOAT_BYTES, parameter_count
from interp.model import ModelConfig
from interp.parallel import Backend, LocalBackend, run_all
from interp.run_layout import CONFIG_FILE
from interp.train import TrainHooks, train
from interp.train_config import (
    KEEP_ALL,
    CheckpointPolicy,
    DataSource,
    TrainConfig,
    checkpoint_schedule,
    keep_checkpoints,
    kept_weights,
)

RUNS_DIR = "runs"
T = TypeVar("T")


@dataclass(frozen=True)
class AnalysisConfig:
    """What every analysis config declares: the main run's `model` and `train`
    configs and the `seed` that drives data, initialization and evaluation. How the
    runs are executed (`Context.backend`, `Context.workers`) is not part of it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    def fit_model(self, d_vocab: int, n_ctx: int, d_input: int | None = None) -> None:
        """Set the model's vocabulary, context (and input dimension) to the task's.

        The one policy for every analysis: these model fields follow the task, so an
        override of the task (a pool size, a sequence length) needs nothing else. The
        frozen config stays complete, as saved in every run. Call from `__post_init__`."""
        shape = {"d_vocab": d_vocab, "n_ctx": n_ctx} | ({} if d_input is None else {"d_input": d_input})
        if any(getattr(self.model, k) != v for k, v in shape.items()):
            object.__setattr__(self, "model", replace(self.model, **shape))


def task_record(task: Any) -> dict[str, Any]:
    """A task config as stored in a run: `{"type": <config class>, **fields}`."""
    return {"type": type(task).__name__, **to_dict(task)}


def read_task(run: Run, cls: type[T]) -> T:
    """The task config a run was trained on, as a `cls` (the inverse of `task_record`)."""
    record = dict(run.config.get("task") or {})
    stored = record.pop("type", None)
    require(stored == cls.__name__, "task.type", f"{cls.__name__} in {run.path / 'config.json'}", stored)
    return from_dict(cls, record, prefix="task.")


@dataclass(frozen=True)
class JobSetup:
    """What a job's `setup` builds in the process that trains it: the data source, the
    training hooks (evaluators, stop/pause conditions, patterns), and `finish`, called
    with the finished run (e.g. to save a vocabulary beside it)."""

    data: DataSource
    hooks: TrainHooks = field(default_factory=TrainHooks)
    finish: Callable[[Run], None] | None = None


@dataclass(frozen=True)
class TrainingJob:
    """One training run of an analysis, picklable so a worker process can run it.

    `setup(job, device)` must be a module-level function; `task` is the task's config
    dataclass (stored in the run), `params` any other picklable settings `setup`
    needs, and `extra` further keys stored in the run's config. `show_progress`
    asks for a progress bar when the job runs in this process; `continues` resumes
    a run an earlier stage paused, even when the analysis itself is not resumed.
    `keep` is which checkpoint files the run keeps (`CheckpointPolicy`; not stored in its
    config: it changes no result); with `weights="none"` they go once `finish` has run."""

    name: str
    model: ModelConfig
    train: TrainConfig
    task: Any
    setup: Callable[[TrainingJob, torch.device], JobSetup]
    params: Any = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    show_progress: bool = False
    continues: bool = False
    keep: CheckpointPolicy = KEEP_ALL


@dataclass(frozen=True)
class RunShape:
    """`runs` training runs of one shape, as an analysis declares them before it trains
    (`Analysis.run_shapes`, read by `interp run --plan` and the GPU check): `job`, trained `steps`
    steps each (0: its own `train.steps`; a mean or an upper bound where runs differ or stop
    early, as `note` says). `unknown` says what only earlier runs decide (the checkpoint a
    fine-tuning starts from, replay weights, where a run stops); empty when the config fixes it
    all. `measure_as` names an earlier shape of the same model, batch and data whose timing this
    one reuses; `finish` times the job's `finish` too, which runs after each of its runs."""

    label: str
    job: TrainingJob
    runs: int
    note: str = ""
    steps: int = 0
    unknown: str = ""
    measure_as: str = ""
    finish: bool = False

    @property
    def steps_per_run(self) -> int:
        return self.steps or self.job.train.steps


@dataclass(frozen=True)
class _Launch:
    job: TrainingJob
    run_dir: str
    device: str
    resume: bool
    progress: bool

    @property
    def name(self) -> str:  # JobsFailed names failed jobs by this attribute
        return self.job.name


def _launch(launch: _Launch) -> str:
    job, device = launch.job, torch.device(launch.device)
    parts = job.setup(job, device)
    run = train(launch.run_dir, job.model, job.train, parts.data, hooks=parts.hooks,
                config_extra={"task": task_record(job.task), **job.extra}, resume=launch.resume, device=device,
                progress=launch.progress, keep=job.keep)
    # A run whose last weights were released has had its `finish`: they go only after it.
    if parts.finish is not None and run.committed_steps[-1] in run.steps:
        parts.finish(run)
    if job.keep.weights == "none":
        with run_lock(run.path, wait=brief_wait()):
            keep_checkpoints(run, job.train, job.keep, results_written=True)
    return str(run.path)


@dataclass(frozen=True)
class Context:
    """Where an analysis writes (`out`), on which device, and how its jobs run.

    `backend` runs each stage's independent jobs (None: a local pool of `workers`
    processes, 0 one per core; one process on CUDA, where jobs share the one device).
    Neither is part of the analysis's config: they change where runs train, not their results."""

    out: Path
    device: torch.device
    progress: bool = True
    resume: bool = False
    backend: Backend | None = None
    workers: int = 0

    @property
    def runs_dir(self) -> Path:
        return self.out / RUNS_DIR

    def jobs_backend(self) -> Backend:
        if self.backend is not None:
            return self.backend
        return LocalBackend(1 if self.device.type == "cuda" else self.workers)

    def run(self, name: str) -> Run:
        """The run of the job `name`, trained by an earlier stage."""
        return Run.open(self.runs_dir / name)

    def train(self, jobs: Sequence[TrainingJob]) -> dict[str, Run]:
        """Train one stage's jobs, longest first as given; returns their runs by job name.

        A job that asks for a progress bar gets one only when the stage runs in this process."""
        names = [job.name for job in jobs]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        require(not duplicated, "jobs", "distinct job names", duplicated)
        backend = self.jobs_backend()
        in_process = backend == LocalBackend(1)
        launches = [_Launch(job, str(self.runs_dir / job.name), str(self.device), self.resume or job.continues,
                            self.progress and job.show_progress and in_process) for job in jobs]
        paths = run_all(_launch, launches, backend)
        return {job.name: Run.open(path) for job, path in zip(jobs, paths, strict=True)}


@dataclass(frozen=True)
class DiskEstimate:
    """Bytes one run of a job takes on disk: `kept` once it is finished (and its job's results
    are written), `peak` while it trains (what it keeps so far, plus the last checkpoint with
    its optimizer state and the next one being written beside it)."""

    kept: int
    peak: int


LOG_ROW_BYTES = 80  # a metrics.jsonl row of the training loss and learning rate; evaluations add more
RUN_FILES_BYTES = 3_000  # config.json, manifest.json and the last checkpoint's small state.pt


def estimate_disk(job: TrainingJob) -> DiskEstimate:
    """The disk one run of `job` takes under its checkpoint policy (`job.keep`), from its configs
    alone: float32 weights at each checkpoint kept (an `init_from` run's step 0 is its parent's
    file), the optimizer state (AdamW's two moments, SGD's momentum) at the last one while it
    trains, and its log. The job's own files (`finish`'s) are not counted."""
    cfg = job.train
    weights = parameter_count(job.model) * FLOAT_BYTES
    moments = {"adam": 2, "adamw": 2, "sgd": 1 if cfg.momentum else 0}[cfg.optimizer] * weights
    schedule = checkpoint_schedule(cfg)
    kept = kept_weights(cfg, job.keep, schedule) - ({0} if cfg.init_from else set())
    if job.keep.weights != "none":
        kept.add(cfg.steps)
    log = LOG_ROW_BYTES * (cfg.steps // cfg.log_every + 1)
    final = len(kept) * weights + log + RUN_FILES_BYTES
    return DiskEstimate(kept=final, peak=final + 2 * (weights + moments))


def keep_runs(runs_dir: Path, policy: CheckpointPolicy) -> None:
    """Release from every run under `runs_dir` the checkpoint files `policy` does not keep, once
    the results the runs were trained for are written (a sweep point's `results.json`): it
    only ever drops files, so runs that already keep less stay as they are."""
    for path in sorted(p for p in runs_dir.iterdir() if (p / CONFIG_FILE).is_file()) if runs_dir.is_dir() else []:
        run = Run(path)
        with run_lock(path, wait=brief_wait()):
            keep_checkpoints(run, from_dict(TrainConfig, run.config["train"]), policy, results_written=True)


def nearest_step(steps: Sequence[int], target: int) -> int:
    """The step in `steps` closest to `target` (the earlier one on a tie)."""
    return min(steps, key=lambda s: (abs(s - target), s))


def final_only(cfg: TrainConfig) -> TrainConfig:
    """`cfg` checkpointing only its first and last step (side runs that are read for their curves)."""
    return replace(cfg, checkpoint_every=0, checkpoint_log=0, checkpoint_steps=())
