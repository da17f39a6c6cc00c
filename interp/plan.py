"""A plan before a long run: what an analysis's preset trains and what it costs, without training.

`plan_analysis(analysis, preset, config, device)` reads the run shapes the analysis declares
(`Analysis.run_shapes`: each a job and how many runs of it) and gives, per shape and for the
preset: parameters, tokens, training FLOPs, the training step's peak memory, the checkpoints'
disk and a wall time extrapolated from a short slice of real training steps on the device
(`time_slice`, which the GPU check uses too). It refuses nothing: what cannot be timed here, or
known before earlier runs finish, is said in the plan. `plan_text` is its table.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from interp.analysis import Analysis
from interp.checkpoints import Run
from interp.configs import to_dict
from interp.memory import available_memory, estimate_memory, format_bytes, parameter_count
from interp.model import ModelConfig, build_model, training_batch
from interp.pipeline import JobSetup, RunShape, TrainingJob, estimate_disk, task_record
from interp.seeding import BATCHES, generator
from interp.train_config import TrainConfig, checkpoint_schedule
from interp.train_steps import Stepper

FLOPS_FORMULA = ("FLOPs = 6*N*T + 6*L*n_ctx*d_attn*T (Kaplan et al. 2020: forward 2 per weight and token, backward "
                 "twice that; N: parameters outside the embedding tables, which are lookups; T: tokens = steps x "
                 "batch x n_ctx; the attention term counts every key, as a full n_ctx context)")
CPU_CAVEAT = "CPU timings do not predict GPU timings: plan on the device the preset will train on."
SLICE_SECONDS = 2.0  # steps timed per run shape by `interp run --plan`, at most
SLICE_STEPS = 5


# --- sizes, tokens, FLOPs and disk, from the configs alone --------------------------------------


def trainable_parameter_count(cfg: ModelConfig) -> int:
    """Trainable parameters of `build_model(cfg)` (`interp.model.count_parameters`), from the
    config: the state dict's numbers less the unembedding bias, a buffer that never trains."""
    return parameter_count(cfg) - cfg.d_vocab


def training_flops(cfg: ModelConfig, tokens: int) -> int:
    """Training FLOPs for `tokens` tokens of `cfg`: see `FLOPS_FORMULA`."""
    embeddings = cfg.d_vocab * cfg.d_model + (cfg.n_ctx * cfg.d_model if cfg.positional == "standard" else 0)
    multiplied = trainable_parameter_count(cfg) - embeddings
    return 6 * multiplied * tokens + 6 * cfg.n_layers * cfg.n_ctx * cfg.n_heads * cfg.head_dim * tokens


def evaluations_per_run(train: TrainConfig, steps: int) -> int:
    """Evaluations the trainer runs: at step 0, every `eval_every` steps and at the last step."""
    if not train.eval_every:
        return 2
    return 1 + steps // train.eval_every + (1 if steps % train.eval_every else 0)


# --- a timed slice of real training -------------------------------------------------------------


class Clock:
    """Wall time of device work: synchronizes before reading the clock."""

    def __init__(self, device: torch.device):
        self.device, self.started = device, 0.0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        self.sync()
        self.started = time.perf_counter()

    def stop(self) -> float:
        self.sync()
        return time.perf_counter() - self.started

    def time(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        self.start()
        value = fn()
        return value, self.stop()


@dataclass(frozen=True)
class SliceTiming:
    """Seconds of one run's parts, timed on the device: the job's `setup` (data, evaluators),
    building the model, a first step apart (kernel selection, allocator warm-up), `step_s` the
    mean of `steps_measured` steps that follow (drawing the batch included: `data_s` is that
    alone), one evaluation (None: the job has no evaluators), one checkpoint and the job's
    `finish` (None: not timed). `untimed` says why no step was timed at the real batch size (then
    `step_s` is None); `peak_memory_bytes` is the device's peak (CUDA only)."""

    setup_s: float
    build_s: float
    first_step_s: float
    step_s: float | None
    steps_measured: int
    data_s: float
    eval_s: float | None
    checkpoint_s: float
    finish_s: float | None = None
    peak_memory_bytes: int | None = None
    untimed: str = ""


def time_slice(job: TrainingJob, device: torch.device, *, seconds: float, max_steps: int,
               scratch: Path, finish: bool = False) -> SliceTiming:
    """Time one run of `job` as the trainer runs it: setup, model, a first step, then up to
    `max_steps` steps (at least one) or `seconds`, with no device sync between them (as in
    `train`), the data alone, one evaluation, one checkpoint under `scratch` (removed after)
    and, if asked, the job's `finish`.

    On a CPU a step's cost grows with its rows: steps of 1, 2, 4, ... rows come first, until one
    shows that a step at `batch_size` takes at most `seconds`; where `seconds` pass before that,
    the real batch is not timed (`untimed` says so with the numbers) rather than hold the caller
    for minutes."""
    clock, batch_size = Clock(device), job.train.batch_size
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    setup, setup_s = clock.time(lambda: job.setup(job, device))
    setup: JobSetup
    model, build_s = clock.time(lambda: build_model(job.model, device=device))
    stepper = Stepper(model, job.train, setup.hooks.fwd_hooks, setup.hooks.batch_patterns)
    model.train()

    def batch(step: int, rows: int = batch_size) -> dict[str, torch.Tensor]:
        return training_batch(setup.data.batch(step, rows, generator(job.train.seed, BATCHES, step)), device)

    def data_s(steps: int, rows: int = batch_size) -> float:
        clock.start()
        for step in range(steps):
            batch(1 + step, rows)
        return clock.stop() / steps

    rows, spent = 1, 0.0
    while device.type == "cpu" and rows < batch_size:  # steps of 1, 2, 4, ... rows: each bounds the batch's from above
        _, row_step_s = clock.time(lambda: stepper.step(0, batch(0, rows)))  # noqa: B023 - called at once
        spent += row_step_s
        if row_step_s * batch_size / rows <= seconds:
            break
        if spent > seconds:
            return SliceTiming(setup_s, build_s, spent, None, 0, data_s(1), None, 0.0, untimed=(
                f"a step of {rows} row{'s' if rows > 1 else ''} takes {row_step_s:.2g} s here, so one at batch "
                f"{batch_size} up to "
                f"~{duration(row_step_s * batch_size / rows)}: beyond the {seconds:g} s slice"))
        rows = min(2 * rows, batch_size)
    _, first_step_s = clock.time(lambda: stepper.step(0, batch(0)))
    deadline, steps = time.perf_counter() + seconds, 0
    clock.start()
    while steps < max(1, max_steps):
        stepper.step(1 + steps, batch(1 + steps))
        steps += 1
        if time.perf_counter() > deadline:
            break
    step_s = clock.stop() / steps
    eval_s = None
    if setup.hooks.evaluators:
        def evaluate() -> None:
            model.eval()
            with torch.no_grad():
                for fn in setup.hooks.evaluators.values():
                    fn(model)
            model.train()
        _, eval_s = clock.time(evaluate)
    folder = Path(tempfile.mkdtemp(prefix="slice_", dir=scratch))
    try:
        run = Run.create(folder / "run", {"model": to_dict(job.model), "train": to_dict(job.train),
                                          "task": task_record(job.task)})
        state = {"step": 0, "optimizer": stepper.optimizer.state_dict(), "loss_sum": 0.0, "loss_count": 0,
                 "stopped": False}
        _, checkpoint_s = clock.time(lambda: run.save_checkpoint(0, model, state))
        finish_s = clock.time(lambda: setup.finish(run))[1] if finish and setup.finish is not None else None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return SliceTiming(setup_s, build_s, first_step_s, step_s, steps, data_s(min(steps, 10)), eval_s, checkpoint_s,
                       finish_s, peak)


# --- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPlan:
    """One run shape of a plan (`RunShape`), per run: its sizes, tokens (steps x batch x n_ctx),
    training FLOPs, the training step's memory (`estimate_memory`), checkpoint disk and, where a
    slice was timed (`timing`, that of `measured_as` when it reuses another shape's), seconds:
    setup + build + steps + evaluations + checkpoints (+ finish). `untimed` says why not."""

    label: str
    runs: int
    note: str
    unknown: str
    parameters: int
    steps: int
    batch_size: int
    n_ctx: int
    precision: str
    tokens: int
    flops: int
    memory_bytes: int
    checkpoints: int
    disk_bytes: int
    """What one finished run keeps on disk under its job's checkpoint policy (`pipeline.estimate_disk`)."""
    evaluations: int
    timing: SliceTiming | None
    measured_as: str
    untimed: str
    seconds_per_run: float | None

    @property
    def seconds(self) -> float | None:
        return None if self.seconds_per_run is None else self.runs * self.seconds_per_run


@dataclass(frozen=True)
class AnalysisPlan:
    """Every run shape of a preset and the totals over its runs; `available_bytes` is the memory
    the device has free (None: unknown), `caveats` what to read the numbers with."""

    analysis: str
    preset: str
    device: str
    shapes: tuple[RunPlan, ...]
    available_bytes: int | None
    caveats: tuple[str, ...]
    planning_seconds: float

    @property
    def runs(self) -> int:
        return sum(s.runs for s in self.shapes)

    @property
    def tokens(self) -> int:
        return sum(s.runs * s.tokens for s in self.shapes)

    @property
    def flops(self) -> int:
        return sum(s.runs * s.flops for s in self.shapes)

    @property
    def disk_bytes(self) -> int:
        return sum(s.runs * s.disk_bytes for s in self.shapes)

    @property
    def peak_memory_bytes(self) -> int:
        return max((s.memory_bytes for s in self.shapes), default=0)

    @property
    def seconds(self) -> float | None:
        """Seconds of all runs one after another (None where a shape is not timed)."""
        times = [s.seconds for s in self.shapes]
        return None if not times or None in times else sum(times)


def run_plan(shape: RunShape, timing: SliceTiming | None, untimed: str = "") -> RunPlan:
    """`shape`'s numbers per run, with the seconds `timing` gives (None: `untimed` says why)."""
    model, train, steps = shape.job.model, shape.job.train, shape.steps_per_run
    tokens = steps * train.batch_size * model.n_ctx
    evaluations = evaluations_per_run(train, steps) if timing is not None and timing.eval_s is not None else 0
    checkpoints = len(checkpoint_schedule(train))
    seconds = None
    if timing is not None and timing.step_s is not None:
        seconds = (timing.setup_s + timing.build_s + steps * timing.step_s + evaluations * (timing.eval_s or 0.0)
                   + checkpoints * timing.checkpoint_s + (timing.finish_s or 0.0))
    return RunPlan(
        label=shape.label, runs=shape.runs, note=shape.note, unknown=shape.unknown,
        parameters=trainable_parameter_count(model), steps=steps, batch_size=train.batch_size, n_ctx=model.n_ctx,
        precision=train.precision, tokens=tokens, flops=training_flops(model, tokens),
        memory_bytes=estimate_memory(model, train.batch_size).total, checkpoints=checkpoints,
        disk_bytes=estimate_disk(shape.job).kept, evaluations=evaluations, timing=timing,
        measured_as=shape.measure_as, untimed=untimed or (timing.untimed if timing is not None else ""),
        seconds_per_run=seconds)


def plan_analysis(analysis: Analysis, preset: str, config: Any, device: torch.device, *,
                  slice_seconds: float = SLICE_SECONDS, max_steps: int = SLICE_STEPS,
                  timed: bool = True) -> AnalysisPlan:
    """The plan of `analysis` at `config` (its `preset`, resolved
    with any overrides) on `device`. Each shape that does not reuse another's timing is timed for
    at most `slice_seconds` of steps (`time_slice`; `timed=False`: none is); one whose training
    step does not fit in the device's free memory is not timed, and says so."""
    started = time.perf_counter()
    shapes = list(analysis.run_shapes(config)) if analysis.run_shapes is not None else []
    available = available_memory(device)
    free = None if available is None else available.free
    caveats = [] if shapes else [f"{analysis.name} declares no run shapes (Analysis.run_shapes): nothing to plan"]
    if device.type == "cpu":
        caveats.append(CPU_CAVEAT)
    timings: dict[str, SliceTiming | None] = {}
    plans = []
    scratch = Path(tempfile.mkdtemp(prefix="interp_plan_"))
    try:
        for shape in shapes:
            memory = estimate_memory(shape.job.model, shape.job.train.batch_size).total
            untimed = ""
            if shape.measure_as:
                timing = timings[shape.measure_as]
            elif not timed:
                timing, untimed = None, "not timed"
            elif free is not None and memory > free:
                timing, untimed = None, (f"not timed here: a training step needs ~{format_bytes(memory)}, "
                                         f"{format_bytes(free)} is free ({available.source})")
            else:
                timing = time_slice(shape.job, device, seconds=slice_seconds, max_steps=max_steps, scratch=scratch,
                                    finish=shape.finish)
            timings[shape.label] = timing
            plans.append(run_plan(shape, timing, untimed))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if any(s.unknown for s in shapes):
        caveats.append("Shapes marked * depend on earlier runs' results (see below): where a run may stop early, "
                       "the plan counts the most steps the config allows.")
    caveats.append("Training only: probes, figures and the report are not counted; runs are summed one after "
                   "another (on a CPU an analysis trains a stage's runs in parallel processes).")
    return AnalysisPlan(analysis.name, preset, str(device), tuple(plans), free, tuple(caveats),
                        time.perf_counter() - started)


# --- as text --------------------------------------------------------------------------------------


def _count(n: float) -> str:
    for unit, size in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}" if isinstance(n, float) else str(n)


def duration(seconds: float | None) -> str:
    """`seconds` as `1.2 s`, `3.4 min`, `5.6 h` or `7.8 d` ("-" for None)."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"


def plan_text(plan: AnalysisPlan) -> str:
    """The plan as a table of its run shapes, totals, the FLOPs formula, caveats and notes."""
    header = ("shape", "runs", "params", "steps", "batch x ctx", "tokens/run", "FLOPs/run", "memory", "ckpts",
              "disk/run", "s/step", "time/run", "time, all runs")
    rows = [[f"{s.label}{' *' if s.unknown else ''}", str(s.runs), f"{s.parameters:,}", _count(s.steps),
             f"{s.batch_size} x {s.n_ctx}", _count(s.tokens), _count(s.flops), format_bytes(s.memory_bytes),
             str(s.checkpoints), format_bytes(s.disk_bytes),
             "-" if s.timing is None or s.timing.step_s is None else f"{s.timing.step_s:.3g}",
             duration(s.seconds_per_run), duration(s.seconds)] for s in plan.shapes]
    rows.append(["total", str(plan.runs), "", "", "", _count(plan.tokens), _count(plan.flops),
                 format_bytes(plan.peak_memory_bytes), "", format_bytes(plan.disk_bytes), "", "",
                 duration(plan.seconds)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join
    free = "unknown" if plan.available_bytes is None else format_bytes(plan.available_bytes)
    lines = [f"plan: {plan.analysis} --preset {plan.preset} on {plan.device}: {plan.runs} runs, "
             f"{_count(plan.tokens)} tokens, {_count(plan.flops)} FLOPs, "
             f"peak memory {format_bytes(plan.peak_memory_bytes)} (free: {free}), "
             f"disk {format_bytes(plan.disk_bytes)}, wall time {duration(plan.seconds)}", "",
             line(h.ljust(w) for h, w in zip(header, widths, strict=True)),
             line("-" * w for w in widths),
             *(line(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
               for r in rows), "",
             "memory: the training step's estimated peak, one run at a time (interp.memory.estimate_memory); "
             "disk: checkpoints (weights, and optimizer state where a resume needs it)",
             FLOPS_FORMULA]
    lines += [f"note: {c}" for c in plan.caveats]
    for s in plan.shapes:
        timing = f" (timed as {s.measured_as})" if s.measured_as else ""
        detail = "; ".join(x for x in (s.note, f"* unknown before: {s.unknown}" if s.unknown else "",
                                       f"wall time: {s.untimed}" if s.untimed else "") if x)
        if detail or timing:
            lines.append(f"  {s.label}{timing}: {detail}")
    lines.append(f"planned in {plan.planning_seconds:.1f} s")
    return "\n".join(lines)


def plan_json(plan: AnalysisPlan) -> dict[str, Any]:
    """The plan as plain data (strict JSON once NaN-free), totals included."""
    return {**asdict(plan), "runs": plan.runs, "tokens": plan.tokens, "flops": plan.flops,
            "disk_bytes": plan.disk_bytes, "peak_memory_bytes": plan.peak_memory_bytes, "seconds": plan.seconds,
            "shapes": [{**asdict(s), "seconds": s.seconds} for s in plan.shapes]}


__all__ = ["CPU_CAVEAT", "FLOPS_FORMULA", "AnalysisPlan", "Clock", "RunPlan", "SliceTiming",
           "duration", "evaluations_per_run", "plan_analysis", "plan_json", "plan_text",
           "run_plan", "time_slice", "trainable_parameter_count", "training_flops"]
