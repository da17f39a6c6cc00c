"""Fact-learning dynamics on synthetic biographies (Zucchet et al. 2025, arXiv 2503.21676).

A model trained on biographies of N people first fits the value marginals (phase 1),
sits on a plateau at the no-knowledge baseline (phase 2), then recalls the facts
(phase 3). The analysis runs:

- the main run (uniform over N people, dense checkpoints): its phases, the
  attention signatures of the recall circuit over training, and hallucinations
  (loss and confidence on never-seen people against seen ones);
- a sweep over N, with a power-law fit of the plateau end;
- power-law sampling (a sweep over alpha) and the warm-up curriculum at the
  main run's budget;
- attention-pattern patching: the main run re-trained from the same
  initialization on the same batches with every layer's attention pattern
  taken from a main-run checkpoint from before, inside or after the plateau;
- fine-tuning the trained model on new people, with and without replay of the
  original ones;
- the recall circuit over training: the logit lens of the value at the attribute
  query, the direct logit attribution of the head attending most to the name, and path
  patching of that head's outputs with another person's name in the source run;
- linear probes of a person's university from the residual stream at the name's last
  token (and at the query of the value), per layer, over training, against recall.

Every training run is a normal run directory under `runs/`. Sweep and patching
runs stop once their plateau end is known, on the main run's learning-rate
schedule.

    interp run fact-learning --preset quick --out runs/facts
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from interp import seeding
from interp.analysis import (
    Analysis,
    AnalysisConfig,
    Band,
    Context,
    Figure,
    Headline,
    Heads,
    HLine,
    JobSetup,
    Lines,
    Mark,
    ModelConfig,
    ProbeTable,
    Report,
    Run,
    RunsData,
    RunShape,
    Series,
    Source,
    Table,
    TrainConfig,
    TrainHooks,
    TrainingJob,
    VLine,
    detail,
    final_only,
    head_probe,
    inline,
    json_safe,
    main_run,
    nearest_step,
    num,
    nums,
    probe,
    read_results,
    read_task,
    results_dict,
)
from interp.configs import require, require_positive
from interp.files import atomic_write_json, read_json
from interp.ids import LOGITS, CheckpointRef, EdgeId, HeadId
from interp.metrics import recovery, spans
from interp.metrics.development import Development, DevelopmentSummary, boundary_sentence, development
from interp.metrics.llc import LLCSettings
from interp.model import Batch
from interp.pattern_substitution import reference_patterns
from interp.run_layout import METRICS_FILE
from interp.viz import plot_curves
from tasks import biographies
from tasks.biographies import Biographies, BiographiesConfig, RecallCircuit, RecallSignatures

SEEN, UNSEEN, OLD, NEW = "seen", "unseen", "old", "new"
EVAL_STREAM, PROBE_STREAM, REPLAY_STREAM, LINEAR_STREAM = 1, 2, 3, 4
LLC_STREAM = 5
VALUE_ATTRIBUTE = "university"  # the attribute whose value the linear probes decode
SIGNATURES_FILE = "signatures.json"  # beside results.json: the recall signatures per layer at every checkpoint
Kind = Literal["main", "n", "alpha", "warmup", "patch", "finetune"]
FINETUNE = {"none": False, "replay": True}  # fine-tuning conditions (results keys): with replay or not


@dataclass(frozen=True)
class FactLearningConfig(AnalysisConfig):
    """- `data` is the main run's population; `n_sweep` adds runs with other
      numbers of individuals, `alphas` power-law runs (p(i) ∝ i^-alpha) and
      `warmup_individuals`/`warmup_steps` one warm-up-curriculum run, all on `train`.
    - Evaluation uses held-out templates of `eval_individuals` seen people (drawn
      uniformly, whatever the training distribution) and as many unseen ones.
    - Phases: the eval loss, smoothed over `smooth_window` evaluations, within
      `delta` of the baseline (phase 1 ends) and then `delta` below it (plateau ends).
    - The power-law and warm-up runs, and the uniform run they are compared
      with, are measured at the same budget of `compare_steps` (0: `train.steps`).
    - Sweep and patching runs stop once their plateau end is known (the smoothed
      loss is `delta` below the baseline, with the evaluations the smoothing needs
      after it); patching runs also stop at `patch_horizon` x the main run's plateau end.
    - `patch_steps`: main-run checkpoints whose patterns are patched in; empty
      chooses three from the detected phases: mid phase 1, mid plateau, and the
      main run's first evaluation `pause_below` nats below the baseline (after the
      plateau; the main run pauses there, and the patching runs train beside the
      rest of it).
    - `finetune` trains the final model on `data.n_finetune` new people; with
      replay, `replay_ratio` old biographies per new one are mixed in.
    - `model.d_vocab` and `model.n_ctx` follow `data` (its vocabulary and longest
      biography), whatever they are set to.
    - The linear probes of the value read held-out-template biographies of `linear_individuals`
      trained people, at every other checkpoint of the main run.
    - `llc` opts in to developmental stages of the main run (`interp.metrics.development`; minutes
      on a CPU, so off by default: `--set llc=true`): the LLC by SGLD with `llc_sampler` on
      `llc_sequences` training biographies, at `llc_checkpoints` of the main run's checkpoints
      spaced evenly in log steps (0: all; the quick preset's 91 would take hours on a CPU).
    """

    data: BiographiesConfig = field(default_factory=BiographiesConfig)
    n_sweep: tuple[int, ...] = ()
    alphas: tuple[float, ...] = ()
    warmup_individuals: int = 0
    warmup_steps: int = 0
    compare_steps: int = 0
    eval_individuals: int = 128
    probe_individuals: int = 64
    linear_individuals: int = 256
    delta: float = 0.1
    smooth_window: int = 3
    pause_below: float = 0.5
    patch_steps: tuple[int, ...] = ()
    patch_horizon: float = 1.5
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, lr=3e-4))
    replay_ratio: float = 0.5
    replay_pool: int = 2000
    llc: bool = False
    llc_sampler: LLCSettings = field(default_factory=lambda: LLCSettings(lr=1e-3, gamma=100.0, chains=4, draws=100,
                                                                          burn_in=100, batch_size=64))
    llc_sequences: int = 1024
    llc_checkpoints: int = 24

    def __post_init__(self) -> None:
        self.fit_model(*biographies.model_shape(self.data))
        require_positive(self, "eval_individuals", "probe_individuals", "linear_individuals", "smooth_window",
                         "replay_pool")
        require(self.linear_individuals <= self.data.n_individuals, "linear_individuals",
                f"<= data.n_individuals={self.data.n_individuals}", self.linear_individuals)
        for name, train in (("train", self.train), ("finetune", self.finetune)):
            require(train.eval_every > 0, f"{name}.eval_every", "a positive evaluation interval", train.eval_every)
        require(self.data.n_unseen >= self.eval_individuals, "data.n_unseen",
                f">= eval_individuals={self.eval_individuals}", self.data.n_unseen)
        require(self.data.n_finetune > 0, "data.n_finetune", "a positive number of new people", self.data.n_finetune)
        require(min((self.data.n_individuals, *self.n_sweep)) >= self.eval_individuals, "n_sweep",
                f"sizes >= eval_individuals={self.eval_individuals}", self.n_sweep)
        require(all(a > 0 for a in self.alphas), "alphas", "exponents > 0 (alpha 0 is the main run)", self.alphas)
        require(self.delta > 0 and self.pause_below > self.delta, "pause_below", f"a margin > delta={self.delta}",
                self.pause_below)
        require(0 <= self.warmup_individuals <= self.data.n_individuals, "warmup_individuals",
                f"0..data.n_individuals={self.data.n_individuals}", self.warmup_individuals)
        require(self.warmup_individuals == 0 or 0 < self.warmup_steps < self.train.steps, "warmup_steps",
                f"0 < warmup_steps < train.steps={self.train.steps} with warmup_individuals", self.warmup_steps)
        require(0 <= self.compare_steps <= self.train.steps, "compare_steps", f"0..train.steps={self.train.steps}",
                self.compare_steps)
        bad = [s for s in self.patch_steps if s > self.train.steps]
        require(not bad, "patch_steps", f"main-run steps <= train.steps={self.train.steps}", bad)
        require(self.patch_horizon >= 1, "patch_horizon", "a factor >= 1", self.patch_horizon)
        require(0 < self.replay_ratio <= 1, "replay_ratio", "a ratio in (0, 1]", self.replay_ratio)
        require_positive(self, "llc_sequences")
        require(self.llc_checkpoints == 0 or self.llc_checkpoints >= 3, "llc_checkpoints",
                "0 (all) or at least 3 (a stage needs 3)", self.llc_checkpoints)


@dataclass(frozen=True)
class SizeRow:
    """The phases of the run on `n_individuals` people."""

    n_individuals: int
    phases: spans.PhaseRow = inline()


@dataclass(frozen=True)
class AlphaRow:
    """The phases of the run sampling people by a power law of exponent `alpha` (0: uniform)."""

    alpha: float
    phases: spans.PhaseRow = inline()


@dataclass(frozen=True)
class PatchRow:
    """The phases of the run trained with the attention patterns of main-run checkpoint
    `reference_step` (labelled `reference`: before, inside, after the plateau)."""

    reference: str
    reference_step: int
    phases: spans.PhaseRow = inline()


@dataclass(frozen=True)
class RecallHeadEffects:
    """At `step`: the recall head's direct logit to the value (`dla`) and all components'
    (`dla_total`), and the change of the value's log-prob when its direct path to the logits
    (`path_to_logits`) and its whole output (`whole_output`) carry another person's write."""

    step: int
    dla: float
    dla_total: float
    path_to_logits: float
    whole_output: float


@dataclass(frozen=True)
class FactLearningResults:
    """Phase rows (`plateau_by_n`, `alpha_sweep`, `warmup`, `patching`): a run's label, then its
    `spans.PhaseRow`; signatures are per layer (mean over heads) at the checkpoint nearest a step."""

    baseline: float
    phase1_end: int | None
    plateau_end: int | None
    plateau_length: int | None
    plateau_over_phase1: float | None
    final_loss: float
    final_accuracy: float
    plateau_by_n: list[SizeRow]
    plateau_power_law: spans.PowerLaw | None
    compare_steps: int
    alpha_sweep: list[AlphaRow]
    warmup: spans.PhaseRow | None
    unseen_loss_final: float
    seen_max_prob_final: float
    unseen_max_prob_final: float
    seen_entropy_final: float
    unseen_entropy_final: float
    unseen_loss_at_plateau_end: float | None
    patching: list[PatchRow]
    finetune: dict[str, recovery.ForgettingSummary]
    signatures_at_plateau_start: dict[str, dict[str, float]]
    signatures_at_plateau_end: dict[str, dict[str, float]]
    signatures_final: dict[str, dict[str, float]]
    lens_top1_step: dict[str, int | None]
    recall_head: HeadId
    recall_head_at_plateau: RecallHeadEffects | None
    recall_head_final: RecallHeadEffects
    value_probe_initial: dict[str, dict[str, float]]  # by position ("name", "query") and layer
    value_probe_final: dict[str, dict[str, float]]
    value_probe_half_step: dict[str, int | None]  # the first probed step where the best layer reaches 0.5
    recall_half_step: int | None  # the first evaluation with recall accuracy (seen people) >= 0.5
    development: FactDevelopment | None = None
    """With `llc` on: the LLC's stages beside the plateau (None otherwise)."""
    main: Run = detail()
    by_n: dict[int, Run] = detail()  # every N, the main run's included
    by_alpha: dict[float, Run] = detail()
    warmup_run: Run | None = detail()
    patched: dict[str, Run] = detail()  # by reference label
    finetuned: dict[str, Run] = detail()  # by condition
    signatures: RecallSignatures = detail()
    circuit: RecallCircuit = detail()
    values: ProbeTable = detail()  # biographies.value_probes on the main run
    llc: Development | None = detail()  # the development behind `development`, for the figures


@dataclass(frozen=True)
class FactDevelopment:
    """When the main run's structure changes (`llc`): the LLC's stages beside the end of phase 1
    and the end of the plateau."""

    stages: DevelopmentSummary
    boundary_before_plateau_end: int | None
    """The last stage boundary at or before the plateau's end (None: none, or no plateau end)."""
    boundary_after_plateau_end: int | None
    checkpoints_from_plateau_end: float | None
    """From the plateau's end to the nearest stage boundary, in the LLC's checkpoints (None: no
    boundary, or no plateau end)."""
    checkpoints_from_phase1_end: float | None
    """The same from the end of phase 1 (the plateau's start)."""


PRESETS = {
    # Calibrated on 2 CPU cores (see the issue notes and the README): with pools of 8 values,
    # 3500 people give a plateau over 3x as long as phase 1 (phase 1 is held at ~300 steps by
    # batch noise), and width 112 with 9000 cosine steps recalls them (accuracy over 0.8);
    # the whole analysis takes under 10 minutes.
    "quick": FactLearningConfig(
        data=BiographiesConfig(n_individuals=3500, cities=8, universities=8, majors=8, companies=8, years=8),
        model=ModelConfig(n_layers=2, d_model=112, n_heads=4),
        train=TrainConfig(steps=9000, batch_size=16, optimizer="adamw", lr=2e-3, beta2=0.95, weight_decay=0.1,
                          schedule="cosine", eval_every=50, log_every=50, checkpoint_log=0, checkpoint_every=100),
        n_sweep=(1000, 2000), alphas=(0.6,), warmup_individuals=700, warmup_steps=700, compare_steps=2100,
        patch_horizon=1.1, eval_individuals=96,
        finetune=TrainConfig(steps=300, batch_size=16, optimizer="adamw", lr=3e-4, beta2=0.95, weight_decay=0.1,
                             eval_every=20, log_every=20, checkpoint_log=0)),
    # Zucchet et al.'s setup on one GPU: their pools, 8 layers of width 512, AdamW 4e-4
    # (0.9, 0.95), cosine, 16k steps. They pack ~5 biographies into each 512-token sequence
    # of a 128-sequence batch; here one biography is one sequence, so a batch of 640 sees as
    # many biographies per step. Not yet run: cost unmeasured.
    "paper": FactLearningConfig(
        data=BiographiesConfig(n_individuals=64000, n_unseen=1000, n_finetune=4000, first_names=900,
                               middle_names=900, last_names=1000, cities=800, universities=200, majors=100,
                               companies=500, years=200),
        model=ModelConfig(n_layers=8, d_model=512, n_heads=8),
        train=TrainConfig(steps=16000, batch_size=640, optimizer="adamw", lr=4e-4, beta2=0.95, weight_decay=0.1,
                          schedule="cosine", eval_every=100, log_every=100, checkpoint_log=0, checkpoint_every=500,
                          precision="bf16"),
        n_sweep=(16000, 32000), alphas=(0.4, 0.8), warmup_individuals=8000, warmup_steps=2000, compare_steps=8000,
        eval_individuals=512, probe_individuals=128,
        finetune=TrainConfig(steps=1000, batch_size=640, optimizer="adamw", lr=3e-5, beta2=0.95, weight_decay=0.1,
                             eval_every=25, log_every=25, checkpoint_log=0, precision="bf16")),
    "tiny": FactLearningConfig(
        data=BiographiesConfig(n_individuals=40, n_unseen=8, n_finetune=8, first_names=8, middle_names=8,
                               last_names=8, cities=10, universities=6, majors=5, companies=7, years=6),
        model=ModelConfig(n_layers=1, d_model=16, n_heads=2),
        train=TrainConfig(steps=12, batch_size=4, eval_every=4, log_every=4, checkpoint_log=0, checkpoint_every=4),
        n_sweep=(20,), alphas=(0.5,), warmup_individuals=10, warmup_steps=4, eval_individuals=8,
        probe_individuals=4, linear_individuals=32, replay_pool=16,
        finetune=TrainConfig(steps=6, batch_size=4, lr=1e-3, eval_every=2, log_every=2, checkpoint_log=0)),
}


@dataclass(frozen=True)
class RunParams:
    """How one run trains besides its configs: `stop_step` ends it there (0: never);
    `pause` ends this stage's call (not the run) once the seen loss is `pause_below`
    under the baseline; `patch_from` is the checkpoint whose attention patterns replace
    the model's own; `replay` mixes old biographies into fine-tuning."""

    cfg: FactLearningConfig
    kind: Kind
    stop_step: int = 0
    pause: bool = False
    patch_from: CheckpointRef | None = None
    replay: bool = False


def setup_job(job: TrainingJob, device: torch.device) -> JobSetup:
    p: RunParams = job.params
    cfg, bios, baseline = p.cfg, Biographies(job.task), job.extra["baseline"]
    data: Any = bios
    # A patched model never trains its own queries and keys: it is evaluated as trained, patched.
    ref = p.patch_from
    patterns = reference_patterns(Run.open(ref.run_dir).load(ref.step, device=device)) if ref else None
    people = {SEEN: bios.draw_trained(cfg.eval_individuals, cfg.seed, EVAL_STREAM)}
    if p.kind == "finetune":
        people = {OLD: people[SEEN], NEW: bios.finetune[: cfg.eval_individuals]}
        data = bios.population(bios.finetune)
        if p.replay:
            data = bios.with_replay(data, cfg.replay_ratio, cfg.replay_pool, cfg.seed, REPLAY_STREAM)
    elif p.kind == "main":  # hallucinations are measured on the main run only
        people[UNSEEN] = bios.unseen[: cfg.eval_individuals]
    batches = {group: bios.heldout_batch(who, cfg.seed, EVAL_STREAM) for group, who in people.items()}
    evaluators = {group: biographies.attribute_evaluator(batch, device, patterns) for group, batch in batches.items()}
    watch = spans.PlateauWatch(baseline, cfg.delta, cfg.smooth_window)

    def stop_when(step: int, row: dict[str, float]) -> bool:
        # Sweep and patching runs stop once their plateau end is known; a resumed run starts
        # a new history, so it may only stop at its `stop_step`.
        if p.kind in ("n", "patch") and watch.observe(step, row[f"{SEEN}/loss"]):
            return True
        return bool(p.stop_step and step >= p.stop_step)

    def left_plateau(step: int, row: dict[str, float]) -> bool:
        return row[f"{SEEN}/loss"] < baseline - cfg.pause_below

    hooks = TrainHooks(evaluators=evaluators, batch_patterns=patterns, stop_when=stop_when,
                       pause_when=left_plateau if p.pause else None)
    return JobSetup(data, hooks, finish=lambda run: bios.vocab.save(run.path / "vocab.json"))


def phases(run: Run, cfg: FactLearningConfig, until: int | None = None) -> spans.CurvePhases:
    """Phase boundaries and final values of a run's eval curve (up to step `until` if given)."""
    return spans.curve_phases(*run.series(f"{SEEN}/loss", until), run.series(f"{SEEN}/accuracy", until)[1],
                              run.config["baseline"], cfg.delta, cfg.smooth_window)


def left_plateau_step(run: Run, cfg: FactLearningConfig) -> int | None:
    """The first evaluation at which the seen loss is `pause_below` under the baseline
    (where the main run pauses, with a checkpoint); None if it never is."""
    return spans.first_below(*run.series(f"{SEEN}/loss"), run.config["baseline"] - cfg.pause_below)


def patch_references(main: Run, cfg: FactLearningConfig, main_phases: spans.PlateauPhases,
                     after: int | None = None) -> dict[str, int]:
    """Checkpoints of the main run from before and inside the plateau, and `after` it
    (default: the last checkpoint)."""
    if cfg.patch_steps:
        return {f"step{s}": nearest_step(main.steps, s) for s in cfg.patch_steps}
    phase1_end = main_phases.phase1_end or cfg.train.steps // 10
    plateau_end = main_phases.plateau_end or cfg.train.steps // 2
    return {"before": nearest_step(main.steps, phase1_end // 2),
            "inside": nearest_step(main.steps, (phase1_end + plateau_end) // 2),
            "after": nearest_step(main.steps, after) if after else main.steps[-1]}


def make_job(cfg: FactLearningConfig, name: str, kind: Kind, data: BiographiesConfig, baseline: float,
             train: TrainConfig | None = None, **params: Any) -> TrainingJob:
    """The run `name` on `data`, whose no-knowledge `baseline` is stored in its config (default
    training: `cfg.train`, checkpointed at its ends only); `params` are `RunParams`'."""
    # The reference checkpoint is part of a patched run's identity: a resume from another one is refused.
    ref = {"patch_from": str(params["patch_from"])} if "patch_from" in params else {}
    return TrainingJob(name, cfg.model, train or final_only(cfg.train), data, setup_job,
                       params=RunParams(cfg, kind, **params), show_progress=kind == "main",
                       extra={"baseline": baseline, **ref})


def run_shapes(cfg: FactLearningConfig) -> list[RunShape]:
    base, budget = replace(cfg.data, seed=cfg.seed), cfg.compare_steps or cfg.train.steps
    # The baseline is read only by the stop and pause conditions, which a plan never asks.
    main = make_job(cfg, "main", "main", base, float("nan"), train=cfg.train)
    side = make_job(cfg, "side", "n", base, float("nan"))
    patches = len(cfg.patch_steps) or 3
    finetune = make_job(cfg, "finetune", "finetune", base, float("nan"), train=cfg.finetune)
    shapes = [RunShape("main", main, 1, "the main run (paused after its plateau while the patching runs start)"),
              RunShape("power law", side, len(cfg.alphas), f"alpha {', '.join(f'{a:g}' for a in cfg.alphas)}, to the "
                       "comparison budget", steps=budget, measure_as="main"),
              RunShape("warm-up", side, 1 if cfg.warmup_individuals else 0, "the warm-up curriculum, to the "
                       "comparison budget", steps=budget, measure_as="main"),
              RunShape("n sweep", side, len(cfg.n_sweep), f"n_individuals {', '.join(map(str, cfg.n_sweep))}",
                       unknown="each n-sweep run stops at its own plateau end", measure_as="main"),
              RunShape("patched", side, patches, "attention patterns patched in from main-run checkpoints",
                       unknown="the patched runs' reference checkpoints and the step they stop at (their plateau end, "
                       f"or {cfg.patch_horizon:g} x the main run's) come from the main run", measure_as="main"),
              RunShape("fine-tuning", finetune, len(FINETUNE), f"from the main run's last checkpoint: "
                       f"{', '.join(FINETUNE)}", measure_as="main" if cfg.finetune.batch_size == cfg.train.batch_size
                       else "")]
    return [shape for shape in shapes if shape.runs]


def measure(cfg: FactLearningConfig, ctx: Context) -> FactLearningResults:
    base = replace(cfg.data, seed=cfg.seed)
    populations = {n: Biographies(replace(base, n_individuals=n)) for n in {base.n_individuals, *cfg.n_sweep}}
    baselines = {n: bios.baseline() for n, bios in populations.items()}  # stored in each run's config
    budget = cfg.compare_steps or cfg.train.steps

    def job(name: str, kind: Kind, data: BiographiesConfig = base, train: TrainConfig | None = None,
            **params: Any) -> TrainingJob:
        return make_job(cfg, name, kind, data, baselines[data.n_individuals], train, **params)

    # Three stages. The main run pauses once it has left its plateau, so the patching runs,
    # which need its phases and a post-plateau checkpoint, share the cores with its second
    # half; fine-tuning needs its end. Longest runs first, so each stage's workers finish together.
    main_job = job("main", "main", train=cfg.train, pause=not cfg.patch_steps)
    alpha_jobs = {a: job(f"alpha{a:g}", "alpha", replace(base, distribution="power_law", alpha=a), stop_step=budget)
                  for a in cfg.alphas}
    warmup = replace(base, warmup_individuals=cfg.warmup_individuals, warmup_steps=cfg.warmup_steps)
    warmup_jobs = [job("warmup", "warmup", warmup, stop_step=budget)] if cfg.warmup_individuals else []
    n_jobs = {n: job(f"n{n}", "n", replace(base, n_individuals=n)) for n in sorted(cfg.n_sweep, reverse=True)}
    # A resumed main run that already paused after its plateau would only pause again, later.
    paused = main_job.params.pause and ctx.resume and (ctx.runs_dir / main_job.name / METRICS_FILE).exists() \
        and left_plateau_step(ctx.run(main_job.name), cfg) is not None
    first = ctx.train([*([] if paused else [main_job]), *alpha_jobs.values(), *warmup_jobs, *n_jobs.values()])
    main = ctx.run(main_job.name)
    paused_at = left_plateau_step(main, cfg)
    early_phases = phases(main, cfg, until=paused_at)
    references = patch_references(main, cfg, early_phases, after=paused_at)
    horizon = int(cfg.patch_horizon * (early_phases.plateau_end or cfg.train.steps))
    patch_jobs = {label: job(f"patch-{label}", "patch", patch_from=CheckpointRef.of(main.path, step),
                             stop_step=horizon) for label, step in references.items()}
    second = ctx.train([replace(main_job, continues=True, params=replace(main_job.params, pause=False)),
                        *patch_jobs.values()])
    finetune_cfg = replace(cfg.finetune, init_from=str(CheckpointRef.of(main.path)), seed=cfg.seed)
    finetune_jobs = {c: job(f"finetune-{c}", "finetune", train=finetune_cfg, replay=replay)
                     for c, replay in FINETUNE.items()}
    third = ctx.train(list(finetune_jobs.values()))

    main_phases, unseen, bios = phases(main, cfg), main.series(f"{UNSEEN}/loss"), populations[base.n_individuals]
    plateau_end = main_phases.plateau_end
    probed = bios.draw_trained(cfg.probe_individuals, cfg.seed + 1, EVAL_STREAM)
    signatures = biographies.recall_signatures(main, bios.heldout_batch(probed, cfg.seed, PROBE_STREAM), ctx.device)
    atomic_write_json(ctx.out / SIGNATURES_FILE, json_safe(signatures.to_json()))  # NaN: null
    circuit = biographies.recall_circuit(main, bios.heldout_batch(probed, cfg.seed, PROBE_STREAM), ctx.device)
    people = bios.draw_trained(cfg.linear_individuals, cfg.seed, LINEAR_STREAM)
    values = probe(main, biographies.value_probes(range(cfg.model.n_layers), cfg.seed),
                   bios.value_batch(people, VALUE_ATTRIBUTE, cfg.seed, LINEAR_STREAM),
                   steps=[*main.steps[:-1:2], main.steps[-1]], device=ctx.device)
    plateau_mid = (nearest_step(main.steps, (main_phases.phase1_end + plateau_end) // 2)
                   if main_phases.phase1_end and plateau_end else None)
    by_n = {n: first[j.name] for n, j in n_jobs.items()} | {base.n_individuals: main}
    plateau_by_n = [SizeRow(n, phases(by_n[n], cfg).row()) for n in sorted(by_n)]
    reached = np.array([(r.n_individuals, r.phases.plateau_end) for r in plateau_by_n if r.phases.plateau_end],
                       float)
    by_alpha = {a: first[j.name] for a, j in alpha_jobs.items()}
    warmup_run = first[warmup_jobs[0].name] if warmup_jobs else None
    patched = {label: second[j.name] for label, j in patch_jobs.items()}
    finetuned = {c: third[j.name] for c, j in finetune_jobs.items()}
    value_probe = biographies.value_probe_summary(values, cfg.model.n_layers)
    found = measure_development(cfg, main, ctx) if cfg.llc else None
    return FactLearningResults(
        baseline=round(main.config["baseline"], 4),
        # the main run's phases, unrounded
        phase1_end=main_phases.phase1_end, plateau_end=plateau_end, plateau_length=main_phases.plateau_length,
        plateau_over_phase1=main_phases.plateau_over_phase1, final_loss=main_phases.final_loss,
        final_accuracy=main_phases.final_accuracy,
        plateau_by_n=plateau_by_n,
        plateau_power_law=spans.power_law_fit(*reached.reshape(-1, 2).T),
        compare_steps=budget,
        alpha_sweep=[AlphaRow(a, phases(run, cfg, budget).row()) for a, run in {0.0: main, **by_alpha}.items()],
        warmup=phases(warmup_run, cfg, budget).row() if warmup_run else None,
        unseen_loss_final=float(unseen[1][-1]),
        seen_max_prob_final=float(main.series(f"{SEEN}/max_prob")[1][-1]),
        unseen_max_prob_final=float(main.series(f"{UNSEEN}/max_prob")[1][-1]),
        seen_entropy_final=float(main.series(f"{SEEN}/entropy")[1][-1]),
        unseen_entropy_final=float(main.series(f"{UNSEEN}/entropy")[1][-1]),
        unseen_loss_at_plateau_end=None if plateau_end is None else float(
            unseen[1][np.searchsorted(unseen[0], plateau_end)]),
        patching=[PatchRow(label, references[label], phases(run, cfg).row()) for label, run in patched.items()],
        finetune={c: recovery.forgetting_summary(*run.series(f"{OLD}/loss"), run.series(f"{OLD}/accuracy")[1],
                                                 run.series(f"{NEW}/loss")[1], main.config["baseline"])
                  for c, run in finetuned.items()},
        signatures_at_plateau_start=signatures.at(main_phases.phase1_end),
        signatures_at_plateau_end=signatures.at(plateau_end),
        signatures_final=signatures.at(main_phases.last_step),
        lens_top1_step={entry.removesuffix("/top1"): spans.first_crossing(circuit.lens.steps, circuit.lens[entry], 0.5)
                        for entry in circuit.lens.columns if entry.endswith("/top1")},
        recall_head=circuit.head,
        recall_head_at_plateau=None if plateau_mid is None else recall_head_at(circuit, plateau_mid),
        recall_head_final=recall_head_at(circuit, main.steps[-1]), circuit=circuit, values=values,
        value_probe_initial=value_probe.initial, value_probe_final=value_probe.final,
        value_probe_half_step=value_probe.half_step,
        recall_half_step=spans.first_crossing(*main.series(f"{SEEN}/accuracy"), 0.5),
        main=main, by_n=by_n, by_alpha=by_alpha, warmup_run=warmup_run, patched=patched, finetuned=finetuned,
        signatures=signatures,
        development=None if found is None else development_findings(found, cfg.llc_sampler, main_phases), llc=found,
    )


def measure_development(cfg: FactLearningConfig, main: Run, ctx: Context) -> Development:
    """The main run's LLC at `llc_checkpoints` of its checkpoints on training biographies, its
    stages and the essential dynamics, beside the seen people's loss drop."""
    rows = training_rows(main, cfg.llc_sequences, seeding.generator(cfg.seed, LLC_STREAM))
    return development(main, rows, cfg.llc_sampler, steps=log_spaced(main.steps, cfg.llc_checkpoints),
                       loss=main.series(f"{SEEN}/loss"), device=ctx.device, progress=ctx.progress)


def log_spaced(steps: list[int], count: int) -> list[int]:
    """`count` of `steps` spaced evenly in log steps, the first and last included (fewer where
    two targets share their nearest checkpoint), or all of them with `count` 0."""
    if not count or count >= len(steps):
        return list(steps)
    targets = np.geomspace(max(steps[1], 1), steps[-1], count - 1)
    return sorted({steps[0], *(nearest_step(steps, int(round(t))) for t in targets)})


def development_findings(found: Development, settings: LLCSettings,
                         main_phases: spans.PlateauPhases) -> FactDevelopment:
    """Where the LLC's stage boundaries fall against the end of phase 1 and of the plateau."""
    boundaries, end = found.boundary_steps, main_phases.plateau_end

    def distance(step: int | None) -> float | None:
        return None if step is None else found.checkpoints_to_nearest_boundary(step)

    return FactDevelopment(
        stages=found.summary(settings),
        boundary_before_plateau_end=None if end is None else max((b for b in boundaries if b <= end), default=None),
        boundary_after_plateau_end=None if end is None else min((b for b in boundaries if b >= end), default=None),
        checkpoints_from_plateau_end=distance(end), checkpoints_from_phase1_end=distance(main_phases.phase1_end))


def recall_head_at(circuit: RecallCircuit, step: int) -> RecallHeadEffects:
    """The `RecallHeadEffects` of the circuit's head at `step`, rounded to 4 digits."""
    i = int(np.searchsorted(circuit.dla.steps, step))
    head, dla, path, whole = circuit.head, circuit.dla, circuit.path, circuit.whole
    return RecallHeadEffects(step=step, dla=round(float(dla[head][i]), 4), dla_total=round(float(dla["total"][i]), 4),
                             path_to_logits=round(float(path[EdgeId(head, LOGITS)][i] - path["base"][i]), 4),
                             whole_output=round(float(whole[head][i] - whole["base"][i]), 4))


def band_label(delta: float) -> str:
    return f"baseline ± {delta:g}"


def plateau_window(main: Run, cfg: FactLearningConfig, baseline: float, plateau_end: int | None) -> dict:
    """The seen-people loss minus the baseline, raw and smoothed as the phases are detected,
    from where the smoothed loss is first within 1 nat of the baseline to twice the plateau's end: the
    plateau at a scale where the ± delta band is visible."""
    steps, loss = main.series(f"{SEEN}/loss")
    steps, excess, smoothed = spans.near_baseline(steps, loss, baseline, cfg.smooth_window,
                                                  2 * (plateau_end or steps[-1]))
    return {"seen people": (steps, excess), f"smoothed over {cfg.smooth_window} evaluations": (steps, smoothed),
            band_label(cfg.delta): (steps, np.zeros(len(steps)))}


def figures(cfg: FactLearningConfig, results: FactLearningResults, ctx: Context) -> list[Figure]:
    r, main, baseline, drawn = results, results.main, results.baseline, []
    marks = {k: v for k, v in (("phase1_end", r.phase1_end), ("plateau_end", r.plateau_end)) if v is not None}

    def draw(key: str, caption: str, series: dict, **kw: Any) -> None:
        drawn.append(Figure(key, caption, plot_curves(series, **kw)))

    draw("phases", "Three phases: the attribute loss against the no-knowledge baseline",
         {"held-out templates, seen people": main.series(f"{SEEN}/loss"),
          "never-seen people": main.series(f"{UNSEEN}/loss")},
         hlines={"no-knowledge baseline": baseline}, vlines=marks,
         title=f"Attribute loss, N = {cfg.data.n_individuals}", ylabel="attribute loss (nats)")
    if r.phase1_end is not None:
        draw("plateau", f"The plateau: within {cfg.delta:g} nats of the baseline from the end of phase 1 to its end",
             plateau_window(main, cfg, baseline, r.plateau_end), bands={band_label(cfg.delta): np.asarray(cfg.delta)},
             vlines=marks, title="The plateau: attribute loss above the baseline",
             ylabel="attribute loss − baseline (nats)")
    draw("accuracy", "Attribute accuracy",
         {"seen people": main.series(f"{SEEN}/accuracy"), "never-seen people": main.series(f"{UNSEEN}/accuracy")},
         vlines=marks, title="Attribute accuracy (held-out templates)", ylabel="accuracy")
    draw("loss_by_n", "Attribute loss by N",
         {f"N = {n}": run.series(f"{SEEN}/loss") for n, run in sorted(r.by_n.items())},
         hlines={"baseline": baseline}, title="Attribute loss by number of individuals", ylabel="attribute loss (nats)")
    reached = [row for row in r.plateau_by_n if row.phases.plateau_end]
    if reached:
        ns = np.array([row.n_individuals for row in reached], float)
        series = {"plateau end": (ns, np.array([row.phases.plateau_end for row in reached], float))}
        if fit := r.plateau_power_law:
            grid = np.geomspace(ns.min(), ns.max(), 50)
            series[f"{fit.prefactor:.3g} N^{fit.exponent:.2f} (R² {fit.r2:.3f})"] = (
                grid, fit.prefactor * grid**fit.exponent)
        draw("plateau_by_n", "Plateau end vs N", series, markers=True, logx=True, logy=True,
             title="Plateau end vs number of individuals", ylabel="plateau end (step)", xlabel="individuals N")

    distributions = {"uniform": main.series(f"{SEEN}/loss", r.compare_steps)}
    distributions |= {f"power law alpha={a:g}": run.series(f"{SEEN}/loss") for a, run in r.by_alpha.items()}
    if r.warmup_run is not None:
        distributions[f"warm-up ({cfg.warmup_individuals} people for {cfg.warmup_steps} steps)"] = \
            r.warmup_run.series(f"{SEEN}/loss")
    draw("distributions", "Power-law sampling and the warm-up curriculum", distributions,
         hlines={"baseline": baseline}, title="Sampling distributions at a fixed budget",
         ylabel="attribute loss, uniform over people (nats)")

    # At the scale of the delta band: the patched runs stop once their plateau is over.
    runs = {"no patching": main} | {f"patterns of step {row.reference_step} ({row.reference})":
                                    r.patched[row.reference] for row in r.patching}
    until = max(row.phases.last_step for row in r.patching)
    patched = {name: spans.near_baseline(*run.series(f"{SEEN}/loss"), baseline, cfg.smooth_window, until)[::2]
               for name, run in runs.items()}
    patched[band_label(cfg.delta)] = (np.array([0, until]), np.zeros(2))
    draw("patching", "Training with patched attention patterns", patched,
         bands={band_label(cfg.delta): np.asarray(cfg.delta)}, title="Training with attention patterns patched in",
         ylabel=f"attribute loss − baseline, smoothed over {cfg.smooth_window} (nats)")

    steps = np.array(r.signatures.steps)
    for name, label in biographies.RECALL_SIGNATURES.items():
        draw(f"signature_{name}", f"Signature: {name.replace('_', ' ')}",
             {layer: (steps, np.array(v)) for layer, v in r.signatures.values[name].items()}, vlines=marks, title=label,
             ylabel="mean over heads")
    lens, head = r.circuit.lens, r.recall_head
    draw("logit_lens", "Logit lens at the attribute query: how often the value is the top token, per residual entry",
         {entry.removesuffix("/top1"): (lens.steps, lens[entry]) for entry in lens.columns if entry.endswith("/top1")}
         | {"accuracy (seen people)": main.series(f"{SEEN}/accuracy")}, vlines=marks,
         title="Logit lens: value top-1 rate by layer", ylabel="top-1 rate")
    dla, path, whole, to_logits = r.circuit.dla, r.circuit.path, r.circuit.whole, EdgeId(head, LOGITS)
    draw("recall_head", f"The recall head {head}: its direct logit to the value, and patching its output with "
         "another person's", {f"{head} direct logit": (dla.steps, dla[head]),
                              f"{head} -> logits, path patched": (path.steps, path[to_logits] - path["base"]),
                              f"{head} whole output patched": (whole.steps, whole[head] - whole["base"])},
         vlines=marks, title=f"Recall head {head}", ylabel="logit / change of log-prob")
    values, where = r.values, {"name": "at the name's last token", "query": "at the value's query"}
    draw("value_probe", f"Linear probes of the {VALUE_ATTRIBUTE} per layer, held-out people, with recall accuracy",
         {f"{label}, layer {layer}": (values.steps, values[f"value_{key}{layer}/accuracy"])
          for key, label in where.items() for layer in range(cfg.model.n_layers)}
         | {"recall accuracy (seen people)": main.series(f"{SEEN}/accuracy")},
         hlines={"chance (majority value)": float(values["value_name0/chance"][-1]), "0.5": 0.5}, vlines=marks,
         title=f"Is the {VALUE_ATTRIBUTE} linearly decodable?", ylabel="accuracy")
    draw("confidence", "Hallucination: confidence on seen vs never-seen people",
         {"seen: max probability": main.series(f"{SEEN}/max_prob"),
          "never seen: max probability": main.series(f"{UNSEEN}/max_prob")},
         vlines=marks, title="Confidence of the first value token", ylabel="max probability")
    finetune = {f"{people} people, {'with' if FINETUNE[condition] else 'no'} replay": run.series(f"{group}/loss")
                for condition, run in r.finetuned.items() for people, group in (("original", OLD), ("new", NEW))}
    draw("finetune", "Fine-tuning on new people corrupts old memories", finetune, hlines={"baseline": baseline},
         title=f"Fine-tuning on {cfg.data.n_finetune} new people", ylabel="attribute loss (nats)",
         xlabel="fine-tuning step")
    if r.llc is not None:
        table = r.llc.llc
        boundaries = {f"{b.kind} {b.step}": b.step for b in r.llc.stages.boundaries} if r.llc.stages else {}
        draw("llc", "The LLC at every checkpoint (SGLD, +-1 sd over chains), its stage boundaries and the phases",
             {"LLC": (table.steps, table["llc"])}, bands={"LLC": table["llc_std"]}, markers=True,
             vlines={**marks, **boundaries}, secondary={"attribute loss, seen people": main.series(f"{SEEN}/loss")},
             secondary_label="attribute loss (nats)", title="Local learning coefficient over training", ylabel="LLC")
    return drawn


def report(cfg: FactLearningConfig, results: FactLearningResults) -> Report:
    r, m, t = results, cfg.model, cfg.train
    out = Report("Fact-learning dynamics on synthetic biographies").text(
        f"{m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads; {t.optimizer} at lr {t.lr:g} ({t.schedule}), "
        f"batch {t.batch_size}, {t.steps} steps, on fresh biographies of N = {cfg.data.n_individuals} people "
        f"(six attributes, shuffled sentences, training templates). Evaluation: held-out templates of "
        f"{cfg.eval_individuals} seen people and {cfg.eval_individuals} never-seen people every {t.eval_every} steps. "
        f"Phases use the loss smoothed over {cfg.smooth_window} evaluations and delta = {cfg.delta} nats.")
    out.table([
        ("no-knowledge baseline (nats)", r.baseline),
        ("end of phase 1 (step)", r.phase1_end),
        ("end of the plateau (step)", r.plateau_end),
        ("plateau length / phase 1 length", r.plateau_over_phase1),
        ("final attribute loss", r.final_loss),
        ("final accuracy, seen people, held-out templates", r.final_accuracy),
        ("final loss, never-seen people", r.unseen_loss_final),
        ("final max-probability, seen / never-seen", f"{r.seen_max_prob_final:.3f} / {r.unseen_max_prob_final:.3f}"),
        ("final entropy, seen / never-seen", f"{r.seen_entropy_final:.3f} / {r.unseen_entropy_final:.3f}"),
    ]).figures("phases", "plateau", "accuracy")
    out.text("Plateau by number of individuals (sweep runs stop once their plateau end is known):")
    out.grid(["N", "phase 1 end", "plateau end", "final loss", "final accuracy", "last step"],
             [[row.n_individuals, row.phases.phase1_end, row.phases.plateau_end, row.phases.final_loss,
               row.phases.final_accuracy, row.phases.last_step] for row in r.plateau_by_n])
    if fit := r.plateau_power_law:
        out.text(f"Power-law fit: plateau end ≈ {fit.prefactor:.3g} · N^{fit.exponent:.3f} (R² {fit.r2:.3f}).")
    out.figures("loss_by_n", "plateau_by_n").text(f"Sampling distributions at a budget of {r.compare_steps} steps:")
    labelled = [(f"power law alpha = {row.alpha:g}" if row.alpha else "uniform", row.phases) for row in r.alpha_sweep]
    if r.warmup:
        labelled.append((f"warm-up: {cfg.warmup_individuals} people for {cfg.warmup_steps} steps", r.warmup))
    out.grid(["distribution", "plateau end", "final loss", "final accuracy"],
             [[label, row.plateau_end, row.final_loss, row.final_accuracy] for label, row in labelled])
    out.figures("distributions").text("Attention-pattern patching (same initialization and batches; every layer's "
                                      "pattern from a main-run checkpoint):")
    out.grid(["reference", "reference step", "phase 1 end", "plateau end", "loss at stop", "last step"],
             [["none (main run)", "", r.phase1_end, r.plateau_end, "", ""]]
             + [[row.reference, row.reference_step, row.phases.phase1_end, row.phases.plateau_end,
                 row.phases.final_loss, row.phases.last_step] for row in r.patching]).figures("patching")
    out.text("Attention signatures (mean over heads, per layer) at the start and end of the plateau and at "
             "the end of training:")
    out.grid(["when", "signature", "by layer"],
             [[when, name, ", ".join(f"{k} {v:.3f}" for k, v in layers.items())]
              for when, at in (("at plateau start", r.signatures_at_plateau_start),
                               ("at plateau end", r.signatures_at_plateau_end), ("final", r.signatures_final))
              for name, layers in at.items()])
    out.figures(*(f"signature_{name}" for name in biographies.RECALL_SIGNATURES))
    first = ", ".join(f"{entry} at step {step}" for entry, step in r.lens_top1_step.items() if step is not None)
    out.text(f"Recall circuit. Logit lens at the attribute query: the value is the top token at half the queries "
             f"first {first or 'never'}. The head attending most from the query to the name at the end is "
             f"{r.recall_head}; its direct logit to the value and the effect of patching its output with another "
             "person's name (change of the value's log-prob):")
    out.grid(["when", "step", "direct logit", "all components", "path to logits patched", "whole output patched"],
             [[when, at.step, at.dla, at.dla_total, at.path_to_logits, at.whole_output]
              for when, at in (("mid plateau", r.recall_head_at_plateau), ("final", r.recall_head_final)) if at])
    out.figures("logit_lens", "recall_head").text(value_probe_text(cfg, r)).figures("value_probe", "confidence").text(
        f"Fine-tuning on {cfg.data.n_finetune} new people at constant lr {cfg.finetune.lr:g} for {cfg.finetune.steps} "
        f"steps, without and with replay ({cfg.replay_ratio} old biographies per new one):")
    out.grid(["", "old loss before", "old loss peak (step)", "old loss after", "old accuracy before / after",
              "rise / gap to baseline", "half the gap at step", "new loss after"],
             [[c, f.old_loss_before, f"{f.old_loss_peak:.3f} ({f.old_loss_peak_step})", f.old_loss_after,
               f"{f.old_accuracy_before:.3f} / {f.old_accuracy_after:.3f}", f.rise_over_gap_to_baseline,
               f.half_gap_step, f.new_loss_after] for c, f in r.finetune.items()]).figures("finetune")
    if r.development is not None:
        out.text(development_text(r)).figures("llc")
    return out


def development_text(r: FactLearningResults) -> str:
    """What the LLC's stages say about the plateau, as the numbers have it."""
    d = r.development
    text = d.stages.describe()
    text += boundary_sentence("the end of phase 1 (the plateau's start)", r.phase1_end, d.checkpoints_from_phase1_end)
    text += boundary_sentence("the plateau's end", r.plateau_end, d.checkpoints_from_plateau_end)
    if r.plateau_end is not None and d.stages.stage_boundaries:
        text += (f" Around the plateau's end: the last boundary before it is at step {d.boundary_before_plateau_end}, "
                 f"the first after it at step {d.boundary_after_plateau_end}.")
    return text


def value_probe_text(cfg: FactLearningConfig, r: FactLearningResults) -> str:
    steps = r.values.steps
    timing = spans.timing(r.value_probe_half_step["name"], r.recall_half_step, int(np.diff(steps).max(initial=0)))

    def by_layer(where: str) -> str:
        return ", ".join(f"{layer} {r.value_probe_initial[where][layer]:.3f} -> {acc:.3f}"
                         for layer, acc in r.value_probe_final[where].items())

    verdict = {"never": "never becomes linearly decodable at the name within training, " + (
                   "although recall does" if r.recall_half_step is not None else "nor does recall reach 0.5"),
               "before": "becomes decodable at the name before recall", "with": "becomes decodable at the name as "
               "recall rises (within one probed interval)", "after": "becomes decodable at the name after recall",
               "undetermined": "becomes decodable at the name, while recall never reaches 0.5"}[timing]
    return (f"Is the {VALUE_ATTRIBUTE} linearly decodable? Logistic-regression probes of its value "
            f"({int(r.values['value_name0/n_classes'][-1])} values) on the residual stream after each layer, at the "
            "last token of every occurrence of the name and, as a positive control, at the query of the value, on "
            f"held-out-template biographies of {cfg.linear_individuals} trained people, every other checkpoint of the "
            "main run. Grouping: a person is held out whole, so a probe passes only with a code of the value shared "
            "across people; the control task gives each surname a random value. Accuracy from initialization to the "
            f"end, by layer: at the name {by_layer('name')}; at the query {by_layer('query')} (chance, the majority "
            f"value: {r.values['value_name0/chance'][-1]:.3f}). The best layer first reaches 0.5 at step "
            f"{r.value_probe_half_step['name']} at the name and {r.value_probe_half_step['query']} at the query; "
            f"recall accuracy (seen people) at step {r.recall_half_step}. The {VALUE_ATTRIBUTE} {verdict}.")


def view(source: Source, runs: RunsData) -> Headline:
    """The explorer's headline: attribute -> name attention (the recall circuit's signature) through the
    three phases, against the attribute loss and its no-knowledge baseline."""
    r, name = read_results(source.path, FactLearningResults), main_run(source)
    run = runs[name]
    series: list[Series | None] = []
    signatures = read_json(source.path / SIGNATURES_FILE) if (source.path / SIGNATURES_FILE).exists() else None
    if isinstance(signatures, dict) and isinstance(signatures.get("attribute_to_name"), dict):
        series += [Series(f"attribute -> name attention, {layer} (mean over heads)", signatures["steps"], nums(values))
                   for layer, values in signatures["attribute_to_name"].items()]
    elif (probed := run["probes"].get("attribute_to_name")) and probed["heads"]:
        grid = np.array([[np.nan if v is None else v for v in row] for row in probed["values"]], dtype=float)
        for layer in sorted({HeadId.parse(c).layer for c in probed["columns"]}):
            columns = [j for j, c in enumerate(probed["columns"]) if HeadId.parse(c).layer == layer]
            series.append(Series(f"attribute -> name attention, layer{layer} (mean over heads)", probed["steps"],
                                 nums(np.nanmean(grid[:, columns], axis=1))))
    series += [Series.of_metric(run, f"{SEEN}/loss", "attribute loss, seen people (right axis)", "y2"),
               Series.of_metric(run, f"{UNSEEN}/loss", "attribute loss, never-seen people (right axis)", "y2")]
    start, end = r.phase1_end, r.plateau_end
    band = None if start is None else Band(start, end if end is not None else run["steps"][-1],
                                           "plateau" if end is not None else "plateau (not left)")
    plateau = start is not None and end is not None  # the phases are claimed only where both ends were found
    return Headline(
        "The recall circuit forms during the plateau" if plateau else "Attribute -> name attention and the loss",
        ("Attention from attribute tokens to the person's name (the recall circuit's signature) through the three "
         f"phases (plateau from step {start} to step {end}): it grows while the loss sits on the no-knowledge "
         "baseline." if plateau else
         "Attention from attribute tokens to the person's name (the recall circuit's signature) and the attribute "
         f"loss; no plateau to show: the end of phase 1 is {f'step {start}' if start is not None else 'not found'}"
         f", the plateau's end {f'step {end}' if end is not None else 'not found'}."),
        run=name, marks={name: Mark.at((start, "plateau starts (phase 1 ends)"), (end, "plateau ends: recall forms"))},
        figures=[
            Lines("Attribute -> name attention and the attribute loss", series, run=name, ylabel="attention",
                  y2label="loss (nats)", band=band,
                  hlines=[HLine(r.baseline, "no-knowledge baseline", "y2")] if num(r.baseline) else [],
                  vlines=VLine.at((start, "plateau starts"), (end, "plateau ends"))),
            Heads.of("Attribute -> name attention (layer x head) and a head's attention", name, run,
                     head_probe(run, ("attribute_to_name",))),
            Table.of(results_dict(r), ("baseline", "phase1_end", "plateau_end", "plateau_length",
                                       "plateau_over_phase1", "final_loss", "final_accuracy", "signatures_final")),
        ])


def training_rows(run: Run, n: int, generator: torch.Generator) -> Batch:
    """`n` training biographies of the people `run` was trained on: its population after any
    warm-up, or for a fine-tuning run (one that starts from another model) the new people, without
    replayed ones."""
    bios = Biographies(read_task(run, BiographiesConfig))
    if run.config["train"].get("init_from"):
        return bios.population(bios.finetune).batch(0, n, generator)
    return bios.batch(bios.cfg.warmup_steps, n, generator)


ANALYSIS = Analysis("fact-learning", "Synthetic biographies: plateau at the no-knowledge baseline, recall circuit, "
                    "distributions, hallucinations, fine-tuning corruption", PRESETS, measure, figures, report,
                    preset_workers={"paper": 1, "tiny": 1},
                    headline=("plateau_end", "final_accuracy", "unseen_loss_final"),
                    example=biographies.example_biography, view=view, training_rows=training_rows,
                    run_shapes=run_shapes)

__all__ = ["ANALYSIS", "FactLearningConfig", "FactLearningResults", "setup_job"]
