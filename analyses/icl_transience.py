"""Transient in-context learning (Singh et al. 2023, arXiv 2311.08360) on bursty
few-shot sequences of Gaussian clusters (Reddy 2023).

A model trained on `x1 y1 ... xN yN xq` can answer from the context (ICL: copy
the label of the matching exemplar) or from its weights (IWL: recall the query
class's label). Singh et al. find ICL emerges and then fades while in-weights
learning takes over. The analysis runs:

- the main run with dense checkpoints, evaluated on every set of
  `tasks.fewshot.EVAL_KINDS` (ICL on novel classes and on permuted labels, IWL,
  flip, CIWL, training sequences);
- circuit metrics over training on novel-class ICL sequences: the corrected
  previous-token score at label positions, induction strength (matching minus
  non-matching label attention at the query), total label attention at the query
  and the probability mass on in-context labels;
- head ablations at the ICL peak and at the end: each head's effect on ICL and
  IWL accuracy, and ICL with the strongest induction heads ablated together;
- direct logit attribution of the correct label at the query, split into attention
  heads above layer 0 (the in-context path) and MLPs plus embeddings (in-weights), on
  training, novel-class ICL and IWL sequences at every checkpoint;
- cross-checkpoint patching: the final model with each component's weights (or its
  output) taken from the ICL peak, scored on novel-class ICL;
- linear probes of the answer from the query's residual before the last MLP: the
  in-weights label (IWL sequences) and the in-context label (novel-class ICL);
- an L2 sweep (the main run is lambda = `train.l2`), one run per lambda;
- the negative control: the query is a copy of one of its in-context exemplars;
- the strategy-coopetition toy model (Singh et al. 2025), in seconds.

    interp run icl-transience --preset quick --out runs/icl
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any, Literal

import numpy as np
import torch

from analyses.toys import CoopetitionSummary, CoopetitionToyConfig, CoopetitionToyResult, coopetition_toy
from interp import seeding
from interp.analysis import (
    Analysis,
    AnalysisConfig,
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
    main_run,
    nearest_step,
    probe,
    probe_column,
    read_results,
    read_task,
    results_dict,
)
from interp.circuits.common import PatchMetric
from interp.circuits.cross_checkpoint import cross_checkpoint_probe
from interp.circuits.readout import dla_probe
from interp.configs import require, require_literals, require_positive
from interp.hooks import hook_name
from interp.ids import EMBED, HeadId, MlpId, Node, parse_node
from interp.metrics import spans
from interp.metrics.ablation import ablated_metric, head_ablation_grid
from interp.metrics.development import Development, DevelopmentSummary, boundary_sentence, development
from interp.metrics.heads import strongest_heads
from interp.metrics.llc import LLCSettings, refined_llc_probe
from interp.model import Batch, batch_to
from interp.viz import plot_bars, plot_curves, plot_head_curves, plot_head_grids
from tasks.fewshot import (
    HEAD_CIRCUITS,
    AnswerSummary,
    FewShot,
    FewShotConfig,
    accuracy,
    answer_probes,
    answer_summary,
    circuit_probes,
)

ICLKind = Literal["icl_novel", "icl_permuted"]
Control = Literal["negative_control", "no_decay_control"]
# Where an exemplar -> label mapping can be memorized: everything but the attention.
IN_WEIGHTS_PATHWAY = ("blocks.*.mlp.*", "embed.*", "unembed.*", "input_proj.*")
EVAL_STREAM, PROBE_STREAM, LINEAR_STREAM = 1, 2, 3
LLC_STREAM = 4
DLA_SETS = ("train", "icl_novel", "iwl")  # batches on which the query's correct label is attributed
ICL_ACCURACY = PatchMetric("icl_accuracy_closed", lambda logits, batch: torch.tensor(accuracy(logits, batch)))
CONTROL_LABELS: dict[Control, str] = {"negative_control": "the query copies its in-context exemplar",
                                      "no_decay_control": "no weight decay"}


@dataclass(frozen=True)
class ICLTransienceConfig(AnalysisConfig):
    """- `data`/`model`/`train` define the main run (the model's vocabulary, context and
      input dimension follow `data`); `l2_sweep` adds one run per lambda (> 0, each
      replacing `train.l2`; the penalty applies to the parameters matching `l2_only`,
      all when empty), `negative_control` one run whose query copies an in-context
      exemplar, and `no_decay_control` (when `train.weight_decay` > 0) one run without
      weight decay;
    - evaluation sets hold `eval_size` sequences each; `icl_kind` is the ICL set
      whose closed-class accuracy defines the peak; peaks and final values are read
      from curves smoothed over `smooth_window` evaluations (centred);
    - circuit probes and ablations use `probe_size` novel-class ICL sequences;
      the induction heads at the peak (layers >= 1, strength >= `induction_threshold`;
      the strongest one if none reaches it) are also ablated together."""

    data: FewShotConfig = field(default_factory=FewShotConfig)
    l2_sweep: tuple[float, ...] = (1e-5, 1e-4, 1e-3)
    l2_only: tuple[str, ...] = ()
    negative_control: bool = True
    no_decay_control: bool = True
    icl_kind: ICLKind = "icl_novel"
    eval_size: int = 512
    smooth_window: int = 5
    probe_size: int = 256
    induction_threshold: float = 0.3
    toy: CoopetitionToyConfig = field(default_factory=CoopetitionToyConfig)
    llc: bool = False
    """Opt in to developmental stages (`interp.metrics.development`): the main run's LLC at every
    checkpoint, its stages beside the ICL peak and the IWL rise, and the last MLP's refined LLC
    (minutes on a CPU, so off by default: `--set llc=true`)."""
    llc_sampler: LLCSettings = field(default_factory=lambda: LLCSettings(lr=1e-3, gamma=100.0, chains=4, draws=100,
                                                                          burn_in=100, batch_size=64))
    llc_sequences: int = 1024
    """Training sequences the sampler draws its minibatches from."""

    def __post_init__(self) -> None:
        self.fit_model(self.data.d_vocab, self.data.n_ctx, self.data.dim)
        require(self.model.n_layers >= 2, "model.n_layers", "at least 2 (induction needs two)", self.model.n_layers)
        require(self.train.eval_every > 0, "train.eval_every", "a positive evaluation interval", self.train.eval_every)
        require(all(lam > 0 and lam != self.train.l2 for lam in self.l2_sweep), "l2_sweep",
                f"lambdas > 0 other than train.l2={self.train.l2} (the main run)", self.l2_sweep)
        require_literals(self)
        require_positive(self, "eval_size", "smooth_window", "probe_size")
        require(0 < self.induction_threshold <= 1, "induction_threshold", "a strength in (0, 1]",
                self.induction_threshold)
        require_positive(self, "llc_sequences")


@dataclass(frozen=True)
class SideRunDynamics:
    """`Dynamics` of a side run (the L2 sweep, the controls): its ICL peak and the final values."""

    icl_peak: float
    icl_peak_step: int
    icl_final: float
    iwl_final: float
    train_loss_final: float


@dataclass(frozen=True)
class Dynamics:
    """ICL peak and end, IWL at the end and the training loss around them (`dynamics`); the
    final closed-class accuracy of the flip, CIWL and both ICL evaluation sets."""

    icl_peak: float
    icl_peak_step: int
    icl_final: float
    icl_drop: float
    iwl_final: float
    iwl_max: float
    train_loss_first: float
    train_loss_at_peak: float
    train_loss_final: float
    flip_final: float
    ciwl_final: float
    icl_novel_final: float
    icl_permuted_final: float

    def side(self) -> SideRunDynamics:
        return SideRunDynamics(self.icl_peak, self.icl_peak_step, self.icl_final, self.iwl_final,
                               self.train_loss_final)


@dataclass(frozen=True)
class L2Row:
    """The run with L2 strength `lambda_` (written `lambda`)."""

    lambda_: float
    run: SideRunDynamics = inline()


@dataclass(frozen=True)
class CircuitSummary:
    """At `step`: the strongest layer-0 previous-token head, the strongest induction head
    above layer 0, total label attention (best head above layer 0) and label mass."""

    step: int
    prev_token_layer0_max: float
    induction_max: float
    label_attention_max: float
    label_mass: float


@dataclass(frozen=True)
class Ablation:
    """At `step`: the accuracy drop on ICL and IWL when each head is ablated (`[layer, head]`),
    and ICL accuracy clean and with `heads` ablated together."""

    step: int
    icl_drop_by_head: np.ndarray
    iwl_drop_by_head: np.ndarray
    icl_clean: float
    heads: list[HeadId]
    icl_heads_ablated: float


@dataclass(frozen=True)
class LogitSplit:
    """The correct label's direct logit at the query from heads above layer 0 (`late_heads`),
    from the MLPs and embeddings (`in_weights`), and in all (`total`)."""

    late_heads: float
    in_weights: float
    total: float


@dataclass(frozen=True)
class CrossCheckpoint:
    """Novel-class ICL accuracy at `end_step` and at `peak_step`, and at the end with each
    component's weights (`weights`) or output (`activations`) alone from the peak, with the
    three that restore it most."""

    peak_step: int
    end_step: int
    icl_at_end: float
    icl_at_peak: float
    weights: dict[Node, float]
    weights_most_restoring: list[Node]
    activations: dict[Node, float]
    activations_most_restoring: list[Node]


@dataclass(frozen=True)
class ICLTransienceResults:
    dynamics: Dynamics = inline()
    circuits_initial: CircuitSummary
    circuits_at_peak: CircuitSummary
    circuits_final: CircuitSummary
    ablation_at_peak: Ablation
    ablation_final: Ablation
    l2_sweep: list[L2Row]
    negative_control: SideRunDynamics | None
    no_decay_control: SideRunDynamics | None
    coopetition_toy: CoopetitionSummary
    dla_initial: dict[str, LogitSplit]  # by DLA set
    dla_at_peak: dict[str, LogitSplit]
    dla_final: dict[str, LogitSplit]
    cross_checkpoint: CrossCheckpoint
    answer_summary: AnswerSummary = inline()
    targets: dict[str, bool]
    development: ICLDevelopment | None = None
    """With `llc` on: the LLC's stages beside the ICL peak and the IWL rise (None otherwise)."""
    table: ProbeTable = detail()  # the circuit probes of the main run
    dla: ProbeTable = detail()  # direct logit attribution at the query, per DLA_SETS batch
    answers: ProbeTable = detail()  # the answer probes
    grids: dict[str, np.ndarray] = detail()  # `[step, layer, head]` grid of each of the HEAD_CIRCUITS
    toy: CoopetitionToyResult = detail()
    sweep_runs: dict[float, Run] = detail()  # lambda -> run, the main run at train.l2
    control_runs: dict[Control, Run] = detail()
    llc: ICLDevelopmentTrace | None = detail()


@dataclass(frozen=True)
class ICLDevelopment:
    """When the main run's structure changes (`llc`): the LLC's stages beside the ICL peak and
    the IWL rise, and the refined LLC of the last MLP (where in-weights answers are stored) as
    ICL fades."""

    stages: DevelopmentSummary
    icl_peak_step: int
    iwl_rise_step: int | None
    """IWL accuracy at half its final value (`answer_summary.iwl_half_step`; None: it never rises)."""
    checkpoints_from_icl_peak: float | None
    """From the ICL peak to the nearest stage boundary, in checkpoints (None: no boundary)."""
    checkpoints_from_iwl_rise: float | None
    mlp: MlpId
    mlp_rllc_at_peak: float
    mlp_rllc_at_peak_std: float
    """Spread over chains."""
    mlp_rllc_final: float
    mlp_rllc_final_std: float
    mlp_rllc_trusted: int
    """Checkpoints whose refined LLC estimate raised no problem."""
    mlp_rllc_icl_spearman_after_peak: float | None
    """Rank correlation of the MLP's refined LLC with ICL accuracy from the peak on (negative: it
    rises as ICL fades; None: fewer than 3 checkpoints, or a constant curve)."""


@dataclass(frozen=True)
class ICLDevelopmentTrace:
    """The development behind `ICLDevelopment`, for the figures."""

    found: Development
    mlp_rllc: ProbeTable
    """`refined_llc_probe` columns of the last MLP."""


def setup_job(job: TrainingJob, device: torch.device) -> JobSetup:
    """Every run is evaluated on one fixed batch per evaluation set of its own task."""
    cfg: ICLTransienceConfig = job.params
    task, generator = FewShot(job.task), seeding.generator(cfg.seed, EVAL_STREAM)
    return JobSetup(task, TrainHooks(evaluators=task.evaluators(cfg.eval_size, generator, device)))


def jobs(cfg: ICLTransienceConfig) -> tuple[TrainingJob, dict[float, TrainingJob], dict[Control, TrainingJob]]:
    """The main run, one run per L2 lambda and the controls (side runs keep only their curves)."""
    side = final_only(cfg.train)

    def job(name: str, train: TrainConfig, data: FewShotConfig = cfg.data, **kw: Any) -> TrainingJob:
        return TrainingJob(name, cfg.model, train, data, setup_job, params=cfg, **kw)

    sweep = {lam: job(f"l2-{lam:g}", replace(side, l2=lam, l2_only=cfg.l2_only)) for lam in cfg.l2_sweep}
    controls: dict[Control, TrainingJob] = {}
    if cfg.negative_control:
        controls["negative_control"] = job("control", side, replace(cfg.data, query_copies_context=True))
    if cfg.no_decay_control and cfg.train.weight_decay > 0:
        controls["no_decay_control"] = job("no-decay", replace(side, weight_decay=0.0))
    return job("main", cfg.train, show_progress=True), sweep, controls


def run_shapes(cfg: ICLTransienceConfig) -> list[RunShape]:
    main, sweep, controls = jobs(cfg)
    shapes = [RunShape("main", main, 1, "the main run")]
    if sweep:
        shapes.append(RunShape("l2 sweep", next(iter(sweep.values())), len(sweep),
                               f"one run per L2 lambda ({', '.join(f'{lam:g}' for lam in sweep)})", measure_as="main"))
    shapes += [RunShape(control.replace("_", " "), job, 1, f"the {control.replace('_', ' ')}", measure_as="main")
               for control, job in controls.items()]
    return shapes


def dynamics(run: Run, cfg: ICLTransienceConfig) -> Dynamics:
    """The `Dynamics` of a run, all read from evaluation curves smoothed over `smooth_window`
    evaluations (a single evaluation of `eval_size` sequences is noisy by a few points)."""

    def smoothed(key: str) -> tuple[np.ndarray, np.ndarray]:
        steps, values = run.series(key)
        return steps, spans.smooth(values, cfg.smooth_window)

    (steps, icl), (loss_steps, loss), (_, iwl) = (smoothed(key) for key in
                                                  (f"{cfg.icl_kind}/closed", "train/loss", "iwl/full"))
    peak = int(np.argmax(icl))
    at_peak = min(int(np.searchsorted(loss_steps, steps[peak])), len(loss) - 1)

    def final(kind: str) -> float:
        return float(smoothed(f"{kind}/closed")[1][-1])

    return Dynamics(icl_peak=float(icl[peak]), icl_peak_step=int(steps[peak]), icl_final=float(icl[-1]),
                    icl_drop=float(icl[peak] - icl[-1]), iwl_final=float(iwl[-1]), iwl_max=float(iwl.max()),
                    train_loss_first=float(run.series("train/loss")[1][0]), train_loss_at_peak=float(loss[at_peak]),
                    train_loss_final=float(loss[-1]), flip_final=final("flip"), ciwl_final=final("ciwl"),
                    icl_novel_final=final("icl_novel"), icl_permuted_final=final("icl_permuted"))


def circuit_summary(table: ProbeTable, grids: dict[str, np.ndarray], step: int) -> CircuitSummary:
    """The `CircuitSummary` at the probed step `step`."""
    i = int(np.searchsorted(table.steps, step))
    return CircuitSummary(step=int(table.steps[i]), prev_token_layer0_max=float(grids["prev_token"][i, 0].max()),
                          induction_max=float(grids["induction"][i, 1:].max()),
                          label_attention_max=float(grids["label_attention"][i, 1:].max()),
                          label_mass=float(table["label_mass/mass"][i]))


def ablations(run: Run, step: int, icl: Batch, iwl: Batch, heads: list[HeadId], device: torch.device) -> Ablation:
    """Per-head accuracy drops (`[layer, head]`) on ICL and IWL at `step`, and ICL with `heads` ablated together."""
    model, icl, iwl = run.load(step, device=device), batch_to(icl, device), batch_to(iwl, device)
    icl_accuracy, iwl_accuracy = partial(accuracy, closed=True), partial(accuracy, closed=False)
    clean, ablated = (ablated_metric(model, icl, icl_accuracy, chosen) for chosen in ([], heads))
    return Ablation(step=step, icl_drop_by_head=-np.array(head_ablation_grid(model, icl, icl_accuracy)),
                    iwl_drop_by_head=-np.array(head_ablation_grid(model, iwl, iwl_accuracy)),
                    icl_clean=clean, heads=heads, icl_heads_ablated=ablated)


def measure(cfg: ICLTransienceConfig, ctx: Context) -> ICLTransienceResults:
    main_job, sweep_jobs, control_jobs = jobs(cfg)
    runs = ctx.train([main_job, *sweep_jobs.values(), *control_jobs.values()])
    main, found, task = runs[main_job.name], dynamics(runs[main_job.name], cfg), FewShot(cfg.data)
    # Novel-class ICL sequences: attention to a matching label can only come from the context.
    icl, iwl = (task.evaluation(kind, cfg.probe_size, seeding.generator(cfg.seed, PROBE_STREAM))
                for kind in ("icl_novel", "iwl"))
    table = probe(main, circuit_probes(range(cfg.model.n_layers)), icl, device=ctx.device)
    grids = {k: table.head_grid(k, cfg.model.n_layers, cfg.model.n_heads) for k in HEAD_CIRCUITS}
    peak, end = nearest_step(main.steps, found.icl_peak_step), main.steps[-1]
    heads = strongest_heads(grids["induction"][np.searchsorted(table.steps, peak)], cfg.induction_threshold)
    at_peak, final = (ablations(main, step, icl, iwl, heads, ctx.device) for step in (peak, end))
    sweep_runs = {cfg.train.l2: main, **{lam: runs[job.name] for lam, job in sweep_jobs.items()}}
    control_runs = {key: runs[job.name] for key, job in control_jobs.items()}

    def side(run: Run) -> SideRunDynamics:
        return dynamics(run, cfg).side()

    controls, toy = {key: side(run) for key, run in control_runs.items()}, coopetition_toy(cfg.toy)
    summary = partial(circuit_summary, table, grids)
    dla = attributions(main, task, cfg, ctx)
    dla_split = partial(logit_split, dla, cfg.model.n_layers, cfg.model.n_heads)
    answer_batch = task.answer_batch(2 * cfg.probe_size, seeding.generator(cfg.seed, LINEAR_STREAM))
    answers = probe(main, answer_probes(hook_name("resid_mid", cfg.model.n_layers - 1), cfg.seed), answer_batch,
                    device=ctx.device)
    iwl_steps, iwl = main.series("iwl/full")  # smoothed as in `dynamics`
    results = ICLTransienceResults(
        dynamics=found, circuits_initial=summary(0), circuits_at_peak=summary(peak), circuits_final=summary(end),
        dla_initial=dla_split(0), dla_at_peak=dla_split(peak), dla_final=dla_split(end), dla=dla,
        cross_checkpoint=cross_checkpoint(main, peak, end, icl, ctx),
        ablation_at_peak=at_peak, ablation_final=final, control_runs=control_runs,
        l2_sweep=[L2Row(lam, side(run)) for lam, run in sweep_runs.items()],
        negative_control=controls.get("negative_control"), no_decay_control=controls.get("no_decay_control"),
        coopetition_toy=toy.summary(), targets={}, table=table, grids=grids, toy=toy, sweep_runs=sweep_runs,
        answers=answers, answer_summary=answer_summary(answers, iwl_steps, spans.smooth(iwl, cfg.smooth_window)))
    results = replace(results, targets=targets(results))
    if not cfg.llc:
        return results
    findings, trace = measure_development(cfg, main, results, ctx)
    return replace(results, development=findings, llc=trace)


def measure_development(cfg: ICLTransienceConfig, run: Run, r: ICLTransienceResults,
                        ctx: Context) -> tuple[ICLDevelopment, ICLDevelopmentTrace]:
    """The main run's LLC at every checkpoint on its training distribution, its stages and the
    essential dynamics, the distance from the ICL peak and the IWL rise to the nearest stage
    boundary, and the last MLP's refined LLC at the peak, at the end, and against ICL accuracy
    from the peak on."""
    rows = training_rows(run, cfg.llc_sequences, seeding.generator(cfg.seed, LLC_STREAM))
    found = development(run, rows, cfg.llc_sampler, loss=run.series("train/loss"), device=ctx.device,
                        progress=ctx.progress)
    mlp = MlpId(cfg.model.n_layers - 1)
    refined = probe(run, {"rllc_mlp": refined_llc_probe(cfg.llc_sampler, [mlp])}, rows, device=ctx.device,
                    progress=ctx.progress).select("rllc_mlp")
    steps, rllc, spread = refined.steps, refined[f"llc/{mlp}"], refined[f"llc_std/{mlp}"]
    peak_step, iwl_rise = r.dynamics.icl_peak_step, r.answer_summary.iwl_half_step
    peak = int(np.argmin(np.abs(steps - peak_step)))
    icl_steps, icl = run.series(f"{cfg.icl_kind}/closed")
    icl_at = np.interp(steps[peak:], icl_steps, spans.smooth(icl, cfg.smooth_window))
    varies = len(icl_at) >= 3 and np.ptp(icl_at) > 0 and np.ptp(rllc[peak:]) > 0  # else no rank correlation
    from scipy.stats import spearmanr  # scipy loads (a second) only when a result needs it

    rho = float(spearmanr(rllc[peak:], icl_at).statistic) if varies else float("nan")
    findings = ICLDevelopment(
        stages=found.summary(cfg.llc_sampler), icl_peak_step=peak_step, iwl_rise_step=iwl_rise,
        checkpoints_from_icl_peak=found.checkpoints_to_nearest_boundary(peak_step),
        checkpoints_from_iwl_rise=None if iwl_rise is None else found.checkpoints_to_nearest_boundary(iwl_rise),
        mlp=mlp, mlp_rllc_at_peak=float(rllc[peak]), mlp_rllc_at_peak_std=float(spread[peak]),
        mlp_rllc_final=float(rllc[-1]), mlp_rllc_final_std=float(spread[-1]),
        mlp_rllc_trusted=int((refined[f"trustworthy/{mlp}"] == 1).sum()),
        mlp_rllc_icl_spearman_after_peak=rho if np.isfinite(rho) else None)
    return findings, ICLDevelopmentTrace(found, refined)


def attributions(run: Run, task: FewShot, cfg: ICLTransienceConfig, ctx: Context) -> ProbeTable:
    """Direct logit attribution of the correct label at the query on each of the DLA_SETS."""
    tables = [probe(run, {kind: dla_probe()}, task.evaluation(kind, cfg.probe_size,
                                                              seeding.generator(cfg.seed, PROBE_STREAM)),
                    device=ctx.device) for kind in DLA_SETS]
    return ProbeTable(tables[0].steps, sum((t.columns for t in tables), ()), np.hstack([t.values for t in tables]))


def logit_split(dla: ProbeTable, n_layers: int, n_heads: int, step: int) -> dict[str, LogitSplit]:
    """The `LogitSplit` at `step` on each of the DLA sets."""
    i = int(np.searchsorted(dla.steps, step))
    late = [HeadId(layer, h) for layer in range(1, n_layers) for h in range(n_heads)]
    weights = [EMBED, *(MlpId(layer) for layer in range(n_layers))]
    by_set = {kind: dla.select(kind) for kind in DLA_SETS}
    return {kind: LogitSplit(late_heads=round(float(sum(table[c][i] for c in late)), 4),
                             in_weights=round(float(sum(table[c][i] for c in weights if c in table)), 4),
                             total=round(float(table["total"][i]), 4)) for kind, table in by_set.items()}


def cross_checkpoint(run: Run, peak: int, end: int, icl: Batch, ctx: Context) -> CrossCheckpoint:
    """Novel-class ICL accuracy of the final model with each component taken alone from the
    ICL peak: its weights, or its output on the same sequences."""
    probes = {f"cross_{mode}": cross_checkpoint_probe(lambda device: run.load(peak, device=device),
                                                      run.checkpoint_hash(peak), ICL_ACCURACY, mode)
              for mode in ("weights", "activations")}
    table = probe(run, probes, icl, steps=[end], device=ctx.device)

    def moved(mode: str) -> dict[Node, float]:
        by_component = table.select(f"cross_{mode}")
        return {parse_node(c): round(float(v), 4) for c, v in zip(by_component.columns, by_component.values[0],
                                                                  strict=True) if c not in ("base", "source")}

    def most_restoring(values: dict[Node, float]) -> list[Node]:
        return sorted(values, key=lambda c: -values[c])[:3]

    weights, activations = moved("weights"), moved("activations")
    return CrossCheckpoint(peak_step=peak, end_step=end, icl_at_end=float(table["cross_weights/base"][0]),
                           icl_at_peak=float(table["cross_weights/source"][0]), weights=weights,
                           weights_most_restoring=most_restoring(weights), activations=activations,
                           activations_most_restoring=most_restoring(activations))


def targets(r: ICLTransienceResults) -> dict[str, bool]:
    """The issue's criteria for transience, evaluated on the measured numbers (reported, never tuned)."""
    d, at_peak = r.dynamics, r.ablation_at_peak
    return {"icl_peak_at_least_0.8": d.icl_peak >= 0.8, "icl_falls_by_0.2": d.icl_drop >= 0.2,
            "iwl_final_at_least_0.9": d.iwl_final >= 0.9,
            "train_loss_falls_after_peak": d.train_loss_final < d.train_loss_at_peak,
            "some_l2_keeps_icl_within_0.1_of_a_peak_of_0.8": any(
                row.run.icl_peak >= 0.8 and row.run.icl_peak - row.run.icl_final <= 0.1
                for row in r.l2_sweep if row.lambda_ > 0),
            "induction_rises_by_0.1_with_icl":
                r.circuits_at_peak.induction_max - r.circuits_initial.induction_max >= 0.1,
            "induction_heads_ablation_removes_icl": at_peak.icl_heads_ablated <= 0.6 < at_peak.icl_clean}


def figures(cfg: ICLTransienceConfig, results: ICLTransienceResults, ctx: Context) -> list[Figure]:
    r, main, steps, icl = results, results.sweep_runs[cfg.train.l2], results.table.steps, f"{cfg.icl_kind}/closed"
    peak = {"ICL peak": r.dynamics.icl_peak_step}
    drawn = [Figure("dynamics", "ICL, IWL, flip and CIWL accuracy and the training loss", plot_curves(
        {"ICL, novel classes (closed)": main.series("icl_novel/closed"),
         "ICL, permuted labels (closed)": main.series("icl_permuted/closed"),
         "IWL (full vocabulary)": main.series("iwl/full"),
         "flip: answers the swapped label": main.series("flip/closed"), "CIWL (closed)": main.series("ciwl/closed")},
        secondary={"training loss": main.series("train/loss")}, secondary_label="training loss", secondary_logy=True,
        hlines={"chance (2-way)": 0.5}, vlines=peak, title="ICL vs in-weights learning", ylabel="accuracy"))]
    for name, label in HEAD_CIRCUITS.items():
        grid = r.grids[name]
        drawn += [Figure(f"{name}_grid", f"{label} (layer x head)", plot_head_grids(
            grid, steps, title=label, vmin=min(0.0, float(np.nanmin(grid))), vmax=max(1e-6, float(np.nanmax(grid))))),
            Figure(f"{name}_heads", f"{label}, every head", plot_head_curves(grid, steps, title=label))]
    drawn.append(Figure("circuits", "Circuit metrics over training", plot_curves(
        {"ICL accuracy (novel, closed)": main.series("icl_novel/closed"),
         "best induction head (layer >= 1)": (steps, r.grids["induction"][:, 1:].max(axis=(1, 2))),
         "best previous-token head (layer 0)": (steps, r.grids["prev_token"][:, 0].max(axis=1)),
         "probability on in-context labels": (steps, r.table["label_mass/mass"])},
        vlines=peak, title="Circuit metrics and ICL", ylabel="score")))
    n_layers, n_heads = cfg.model.n_layers, cfg.model.n_heads
    splits = [logit_split(r.dla, n_layers, n_heads, int(step)) for step in r.dla.steps]
    drawn.append(Figure("dla_split", "Direct logit of the correct label at the query: heads above layer 0 vs MLPs "
                        "and embeddings", plot_curves(
                            {f"{part}, {kind} sequences": (r.dla.steps,
                                                           np.array([getattr(s[kind], part) for s in splits]))
                             for kind in ("train", "icl_novel") for part in ("late_heads", "in_weights")},
                            vlines=peak, title="In-context vs in-weights share of the correct logit",
                            ylabel="direct logit (centred)")))
    cross = r.cross_checkpoint
    drawn.append(Figure("cross_checkpoint", f"ICL accuracy at step {cross.end_step} with one component from the "
                        f"peak (step {cross.peak_step})", plot_bars(
                            {str(c): v for c, v in cross.weights.items()}, reference=cross.icl_at_end,
                            ylabel="ICL accuracy (closed)",
                            title="Final model, one component's weights from the ICL peak")))
    iwl_half_step = r.answer_summary.iwl_half_step
    answers, half = r.answers, {"IWL at half its final": iwl_half_step} if iwl_half_step is not None else {}
    drawn.append(Figure("answer_probes", "The answer decoded from the query's residual before the last MLP, with "
                        "IWL and ICL accuracy", plot_curves(
                            {"probe: in-weights label (IWL sequences)": (answers.steps, answers["in_weights/accuracy"]),
                             "probe: in-context label (novel-class ICL)": (answers.steps,
                                                                           answers["in_context/accuracy"]),
                             "IWL accuracy (full vocabulary)": main.series("iwl/full"),
                             "ICL accuracy (novel, closed)": main.series("icl_novel/closed")},
                            hlines={"probe chance": 1 / cfg.data.labels}, vlines=peak | half, ylabel="accuracy",
                            title="Linear probes of the answer at the query")))
    pairs = (r.ablation_at_peak, r.ablation_final)
    ablation = np.stack([drop for a in pairs for drop in (a.icl_drop_by_head, a.iwl_drop_by_head)])
    scale = max(0.05, float(np.abs(ablation).max()))
    drawn.append(Figure("ablation", "Which heads carry ICL and IWL, at the peak and at the end", plot_head_grids(
        ablation, np.array([a.step for a in pairs for _ in range(2)]), vmin=-scale, vmax=scale, cmap="RdBu_r",
        titles=["ICL drop at the peak", "IWL drop at the peak", "ICL drop at the end", "IWL drop at the end"],
        title="Accuracy drop when one head is ablated")))
    where = "the in-weights pathway" if cfg.l2_only == IN_WEIGHTS_PATHWAY else ", ".join(cfg.l2_only) or "all weights"
    for key, metric, label, chance in (("icl", icl, "ICL accuracy (closed)", 0.5),
                                       ("iwl", "iwl/full", "IWL accuracy (full vocabulary)", None)):
        drawn.append(Figure(f"l2_sweep_{key}", f"{key.upper()} by L2 strength", plot_curves(
            {f"lambda = {lam:g}": run.series(metric) for lam, run in r.sweep_runs.items()},
            hlines={"chance": chance} if chance else None, ylabel="accuracy", title=f"L2 on {where}: {label}")))
    for key, run in r.control_runs.items():
        label = CONTROL_LABELS[key]
        drawn.append(Figure(key, f"Control: {label}", plot_curves(
            {"ICL, main run": main.series(icl), f"ICL, {label}": run.series(icl),
             "IWL, main run": main.series("iwl/full"), f"IWL, {label}": run.series("iwl/full")},
            hlines={"chance": 0.5}, title=f"Control: {label}", ylabel="accuracy")))
    if r.llc is not None:
        drawn += development_figures(cfg, r)
    return [*drawn, Figure("coopetition", "Strategy coopetition toy model", r.toy.figure())]


def development_figures(cfg: ICLTransienceConfig, r: ICLTransienceResults) -> list[Figure]:
    """The LLC with its spread over chains and its stage boundaries beside the ICL peak and the
    IWL rise; the last MLP's refined LLC beside ICL and IWL accuracy."""
    found, refined, d, main = r.llc.found, r.llc.mlp_rllc, r.development, r.sweep_runs[cfg.train.l2]
    table = found.llc
    marks = {"ICL peak": d.icl_peak_step, **({"IWL rise": d.iwl_rise_step} if d.iwl_rise_step is not None else {})}
    boundaries = {f"{b.kind} {b.step}": b.step for b in found.stages.boundaries} if found.stages else {}
    return [
        Figure("llc", "The LLC at every checkpoint (SGLD, +-1 sd over chains), its stage boundaries, the ICL peak "
               "and the IWL rise", plot_curves({"LLC": (table.steps, table["llc"])}, bands={"LLC": table["llc_std"]},
                                               title="Local learning coefficient over training", ylabel="LLC",
                                               markers=True, vlines={**marks, **boundaries})),
        Figure("mlp_rllc", f"Refined LLC of {d.mlp} (+-1 sd over chains) beside ICL and IWL accuracy", plot_curves(
            {f"refined LLC of {d.mlp}": (refined.steps, refined[f"llc/{d.mlp}"])},
            bands={f"refined LLC of {d.mlp}": refined[f"llc_std/{d.mlp}"]}, markers=True, vlines=marks,
            secondary={"ICL accuracy (closed)": main.series(f"{cfg.icl_kind}/closed"),
                       "IWL accuracy (full vocabulary)": main.series("iwl/full")},
            secondary_label="accuracy", title=f"Refined LLC of {d.mlp} as ICL fades", ylabel="refined LLC")),
    ]


def answer_text(cfg: ICLTransienceConfig, r: ICLTransienceResults) -> str:
    steps, control, a = r.answers.steps, r.answers["in_weights/control_accuracy"][-1], r.answer_summary
    icl_peak_step = r.dynamics.icl_peak_step
    when = spans.timing(a.in_weights_probe_half_step, a.iwl_half_step, int(np.diff(steps).max(initial=0)))
    falls = spans.timing(a.in_weights_probe_half_step, icl_peak_step)
    words = {"before": "before", "with": "as", "after": "after", "undetermined": "(IWL never rises) before"}
    timing = ("The in-weights probe never rises above its initial accuracy." if when == "never" else
              f"It first reaches half its final accuracy at step {a.in_weights_probe_half_step}, IWL accuracy at step "
              f"{a.iwl_half_step}: the in-weights answer becomes decodable {words[when]} IWL accuracy rises ('as': "
              f"within one probed interval) and {falls} the ICL peak (step {icl_peak_step}), where ICL starts to "
              "fall.")
    hook = hook_name("resid_mid", cfg.model.n_layers - 1)
    return (f"Linear probes of the answer (logistic regression on {hook}, the "
            f"query's residual before the last MLP; {2 * cfg.probe_size} sequences of each kind, every "
            "checkpoint). The in-weights label on IWL sequences, grouped by query class (a class is held out whole, "
            f"so only a label code shared across classes passes): {a.in_weights_probe_initial:.3f} at "
            f"initialization, {a.in_weights_probe_final:.3f} at the end (control task {control:.3f}, chance "
            f"{1 / cfg.data.labels:.3f}). {timing} The in-context label on novel-class ICL sequences, grouped by "
            "sequence (no control task: the label is drawn per sequence, so memorising a type of input cannot "
            f"pass): {a.in_context_probe_initial:.3f} at initialization (the baseline), "
            f"{a.in_context_probe_peak:.3f} at its peak (step {a.in_context_probe_peak_step}), "
            f"{a.in_context_probe_final:.3f} at the end.")


def report(cfg: ICLTransienceConfig, results: ICLTransienceResults) -> Report:
    r, m, t, d = results, cfg.model, cfg.train, cfg.data
    report = Report("Transient in-context learning").text(
        f"{m.n_layers} layers{' (attention only)' if m.attn_only else ''}, d_model {m.d_model}, {m.n_heads} heads; "
        f"{t.optimizer} at lr {t.lr:g}, batch {t.batch_size}, {t.steps} steps (weight decay {t.weight_decay:g}"
        f"{' on ' + ', '.join(t.decay_only) if t.decay_only else ''}, L2 {t.l2:g}). "
        f"Task: {d.describe()}. Each evaluation set holds {cfg.eval_size} sequences; ICL is `{cfg.icl_kind}` "
        f"closed-class accuracy (chance 0.5), IWL full-vocabulary accuracy (chance 1/{d.labels}). Peaks and final "
        f"values are read from curves smoothed over {cfg.smooth_window} evaluations.")
    report.table([(k.replace("_", " "), getattr(r.dynamics, k)) for k in (
        "icl_peak", "icl_peak_step", "icl_final", "icl_drop", "iwl_final", "iwl_max", "flip_final", "ciwl_final",
        "train_loss_first", "train_loss_at_peak", "train_loss_final")]).text("The transience criteria, as measured:")
    report.table([(k.replace("_", " "), v) for k, v in r.targets.items()], header=("criterion", "met"))
    report.figures("dynamics").text("Circuit metrics on novel-class ICL sequences:")
    summaries = (r.circuits_initial, r.circuits_at_peak, r.circuits_final)
    report.grid(["metric", "at initialization", "at the ICL peak", "at the end"],
                [[f.name, *(getattr(s, f.name) for s in summaries)] for f in fields(CircuitSummary)])
    report.figures("circuits", *(f"{k}_grid" for k in HEAD_CIRCUITS), *(f"{k}_heads" for k in HEAD_CIRCUITS))
    report.text(f"Ablating together the induction heads of the peak (strength >= {cfg.induction_threshold:g}; "
                "outputs zeroed):")
    report.grid(["checkpoint", "step", "heads", "ICL accuracy", "ICL accuracy, heads ablated"],
                [[when, a.step, ", ".join(map(str, a.heads)), a.icl_clean, a.icl_heads_ablated]
                 for when, a in (("ICL peak", r.ablation_at_peak), ("end", r.ablation_final))])
    where = f"the parameters matching {', '.join(cfg.l2_only)}" if cfg.l2_only else "all parameters"
    report.figures("ablation")
    split = [(when, d["train"].late_heads, d["train"].in_weights, d["icl_novel"].late_heads,
              d["iwl"].in_weights) for when, d in (("initialization", r.dla_initial), ("ICL peak", r.dla_at_peak),
                                                       ("end", r.dla_final))]
    report.text("Direct logit attribution of the correct label at the query (centred logits): heads above layer 0 "
                "carry the in-context answer, MLPs and embeddings the in-weights one.")
    report.grid(["checkpoint", "train: heads >= L1", "train: MLPs + embed", "ICL novel: heads >= L1",
                 "IWL: MLPs + embed"], [list(row) for row in split])
    cross = r.cross_checkpoint

    def restoring(values: dict[Node, float], most: list[Node]) -> str:
        return ", ".join(f"{c} ({values[c]:.3f})" for c in most)

    by_weights = restoring(cross.weights, cross.weights_most_restoring)
    by_output = restoring(cross.activations, cross.activations_most_restoring)
    report.text(f"Cross-checkpoint patching: at step {cross.end_step} novel-class ICL accuracy is "
                f"{cross.icl_at_end:.3f} (peak: {cross.icl_at_peak:.3f}). With one component's weights from "
                f"the peak it is highest for {by_weights}; with one component's output from the peak, "
                f"for {by_output}.")
    report.figures("dla_split", "cross_checkpoint").text(answer_text(cfg, r)).figures("answer_probes").text(
        f"L2 sweep (loss + lambda/2 |theta|^2 over {where}, on top of the main run's settings):")
    report.grid(["lambda", "ICL peak (step)", "ICL final", "IWL final", "training loss final"],
                [[row.lambda_, f"{row.run.icl_peak:.3f} ({row.run.icl_peak_step})", row.run.icl_final,
                  row.run.iwl_final, row.run.train_loss_final] for row in r.l2_sweep])
    report.figures("l2_sweep_icl", "l2_sweep_iwl")
    for key, label in CONTROL_LABELS.items():
        if (c := getattr(r, key)) is not None:
            report.text(f"Control, {label}: ICL peak {c.icl_peak:.3f} at step {c.icl_peak_step}, final "
                        f"{c.icl_final:.3f}; IWL final {c.iwl_final:.3f}.").figures(key)
    if r.development is not None:
        report.text(development_text(r)).figures("llc", "mlp_rllc")
    return report.text(r.toy.describe(cfg.toy)).figures("coopetition")


def development_text(r: ICLTransienceResults) -> str:
    """What the LLC's stages and the last MLP's refined LLC say about ICL fading, as the numbers have it."""
    d = r.development
    text = d.stages.describe()
    text += boundary_sentence("the ICL peak", d.icl_peak_step, d.checkpoints_from_icl_peak)
    text += boundary_sentence("the IWL rise (IWL at half its final accuracy)", d.iwl_rise_step,
                              d.checkpoints_from_iwl_rise)
    change, spread = d.mlp_rllc_final - d.mlp_rllc_at_peak, d.mlp_rllc_at_peak_std + d.mlp_rllc_final_std
    trend = ("rises" if change > spread else "falls" if change < -spread else
             "does not change beyond the chains' spread")
    rho = d.mlp_rllc_icl_spearman_after_peak
    return text + (
        f" The refined LLC of {d.mlp} (its weights alone) is {d.mlp_rllc_at_peak:.3g} +- {d.mlp_rllc_at_peak_std:.2g} "
        f"at the ICL peak and {d.mlp_rllc_final:.3g} +- {d.mlp_rllc_final_std:.2g} at the end "
        f"({d.mlp_rllc_trusted} of {len(r.llc.mlp_rllc.steps)} estimates trustworthy): it {trend} while ICL "
        f"accuracy falls by {r.dynamics.icl_drop:.3f} from its peak; its rank correlation with ICL accuracy from "
        "the peak on is " + ("undefined (too few checkpoints, or a constant curve)." if rho is None else
                             f"{rho:+.2f} (negative: it rises as ICL fades)."))


PRESETS = {
    # Calibrated on 2 CPU cores (see the issue notes). 2560 classes on 32 labels with two context
    # pairs and 10% non-bursty sequences: ICL emerges before the MLPs memorize the classes. Weight
    # decay on the attention weights alone (Nguyen & Reddy 2024) then removes the in-context
    # circuit once in-weights learning makes it redundant. Without it ICL only sags (0.97 -> 0.90
    # in 20k steps); with fewer classes or a higher learning rate IWL wins from the start.
    # The L2 sweep penalizes the in-weights pathway (MLPs, embeddings, input projection): L2 on
    # every parameter never kept ICL here (it also penalizes the attention, which the decay
    # already shrinks; lambda 1e-2 stopped ICL from forming at all).
    "quick": ICLTransienceConfig(
        data=FewShotConfig(n_classes=2560, n_labels=32, context_pairs=2, burstiness=1, bursty_fraction=0.9),
        model=ModelConfig(n_layers=2, d_model=64, n_heads=8), l2_sweep=(1e-4, 1e-3, 1e-2), l2_only=IN_WEIGHTS_PATHWAY,
        train=TrainConfig(steps=12000, batch_size=32, optimizer="adamw", lr=1e-3, weight_decay=0.5,
                          decay_only=("blocks.*.attn.*",), eval_every=100, log_every=100, checkpoint_log=0,
                          checkpoint_every=250)),
    # Singh et al. 2023's published shape with Gaussian clusters in place of Omniglot: 12 layers,
    # d_model 64, 8 heads, 8 context pairs (3 of the query's class, 3 of a distractor), one
    # label per class, Adam 3e-4, batch 32, no weight decay. Not yet run (no GPU in the
    # development sessions); the paper's ICL peaks after 1e6-1e7 sequences.
    "paper": ICLTransienceConfig(
        data=FewShotConfig(n_classes=12800, n_heldout_classes=256, context_pairs=8, burstiness=3),
        model=ModelConfig(n_layers=12, d_model=64, n_heads=8), l2_sweep=(1e-6, 1e-5, 1e-4, 1e-3), eval_size=1024,
        train=TrainConfig(steps=1_000_000, batch_size=32, optimizer="adam", lr=3e-4, eval_every=5000,
                          log_every=1000, checkpoint_log=20, checkpoint_every=25000), probe_size=512),
    "tiny": ICLTransienceConfig(
        data=FewShotConfig(n_classes=24, n_heldout_classes=4, n_labels=8, exemplars_per_class=6, dim=8,
                           context_pairs=4, burstiness=1),
        model=ModelConfig(n_layers=2, d_model=16, n_heads=2), l2_sweep=(1e-3,), l2_only=IN_WEIGHTS_PATHWAY,
        train=TrainConfig(steps=8, batch_size=4, eval_every=4, log_every=4, checkpoint_log=0, checkpoint_every=4,
                          weight_decay=0.1, decay_only=("blocks.*.attn.*",)),
        eval_size=16, probe_size=8, toy=CoopetitionToyConfig(dims=(3, 3, 3, 6), steps=40, record_every=10)),
}

def view(source: Source, runs: RunsData) -> Headline:
    """The explorer's headline: ICL rising and fading as IWL takes over, with the induction strength
    of the best head and the probability on in-context labels."""
    r, name = read_results(source.path, ICLTransienceResults), main_run(source)
    run = runs[name]
    series = [Series.of_metric(run, "icl_novel/closed", "ICL accuracy (novel classes, closed)"),
              Series.of_metric(run, "iwl/full", "IWL accuracy (full vocabulary)")]
    induction = run["probes"].get("induction")
    if induction and induction["heads"]:
        later = [c for c in induction["columns"] if HeadId.parse(c).layer >= 1]
        best = [max((v for v in (row[induction["columns"].index(c)] for c in later) if v is not None), default=None)
                for row in induction["values"]]
        series.append(Series("induction strength, best head in layers >= 1", induction["steps"], best))
    mass = run["probes"].get("label_mass")
    if mass and "mass" in mass["columns"]:
        series.append(Series("probability on in-context labels", mass["steps"], probe_column(mass, "mass")))
    series.append(Series.of_metric(run, "train/loss", "training loss (right axis)", "y2"))
    ablated = r.ablation_at_peak.heads
    head = ablated[0] if ablated else None
    d, met = r.dynamics, r.targets
    transient = met.get("icl_peak_at_least_0.8", False) and met.get("icl_falls_by_0.2", False)
    numbers = (f"ICL accuracy peaks at {d.icl_peak:.3g} (step {d.icl_peak_step}) and ends at {d.icl_final:.3g}; IWL "
               f"ends at {d.iwl_final:.3g}")
    return Headline(
        "In-context vs in-weights learning, and the induction circuit",
        (f"ICL emerges and fades while in-weights learning takes over ({numbers}); the induction strength of the "
         "best head (matching minus non-matching label attention) is drawn beside it." if transient else
         f"{numbers}: not a transient ICL by the analysis's criteria (a peak of at least 0.8 that falls by 0.2); "
         "the induction strength of the best head (matching minus non-matching label attention) is drawn beside it."),
        run=name, marks={name: Mark.at((r.dynamics.icl_peak_step, "ICL peak"))},
        figures=[
            Lines("ICL, IWL and induction strength", series, run=name, ylabel="accuracy / score",
                  y2label="training loss", hlines=[HLine(0.5, "chance (2-way)")],
                  vlines=VLine.at((r.dynamics.icl_peak_step, "ICL peak"))),
            Heads.of("Induction strength (layer x head) and a head's attention", name, run,
                     head_probe(run, ("induction",)), head),
            Table.of(results_dict(r), ("icl_peak", "icl_peak_step", "icl_final", "icl_drop", "iwl_final",
                                       "train_loss_at_peak", "train_loss_final", "targets")),
        ])


def example(run: Run) -> Batch:
    """The explorer's example: one novel-class sequence (two held-out classes, each given a
    random label in context), exemplars as their input vectors: a model that learns in context
    attends from the query to the label of its class's exemplars, the only way to answer it."""
    batch = FewShot(read_task(run, FewShotConfig)).evaluation("icl_novel", 1, seeding.generator(0, seeding.EXAMPLES))
    return {key: batch[key] for key in ("tokens", "vectors", "vector_mask")}


def training_rows(run: Run, n: int, generator: torch.Generator) -> Batch:
    """`n` training sequences of the few-shot task `run` was trained on."""
    return FewShot(read_task(run, FewShotConfig)).sample(n, generator)


ANALYSIS = Analysis(
    "icl-transience", "Bursty few-shot Gaussian clusters: ICL vs in-weights learning over training, circuit metrics, "
    "ablations, L2 sweep, negative control and the coopetition toy", PRESETS, measure, figures, report,
    preset_workers={"tiny": 1},
    headline=("icl_peak", "icl_final", "iwl_final"), example=example, view=view, training_rows=training_rows,
    run_shapes=run_shapes)

__all__ = ["ANALYSIS", "ICLTransienceConfig", "jobs"]
