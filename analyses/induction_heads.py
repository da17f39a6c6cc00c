"""Induction-head formation in a 2-layer attention-only model (Olsson et al. 2022).

Train on random tokens in which per-sequence trigger tokens recur, each followed
by its own output token (Bietti et al. 2023). The loss on repeated triggers'
outputs sits on a plateau, then drops in a phase change as layer-1 induction
heads form on top of a layer-0 previous-token head. Head scores are measured on
uniform random tokens repeated with a period P (the standard induction score). The
circuit is then traced at every checkpoint: K-composition of the previous-token head into
the layer-1 heads (weights), path patching and edge attribution with a source run whose
first copy is resampled, and the induction head's OV copying score.

    interp run induction-heads --preset quick --out runs/induction
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from interp import seeding
from interp.analysis import (
    Analysis,
    AnalysisConfig,
    Context,
    Figure,
    Headline,
    Heads,
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
    inline,
    main_run,
    nearest_step,
    num,
    probe,
    probe_column,
    read_results,
    read_task,
    results_dict,
)
from interp.batches import repeated_patch_batch, repeated_tokens
from interp.circuits.activation import activation_patching_probe
from interp.circuits.common import mean_logprob
from interp.circuits.graph import CircuitDiff, CircuitGraph
from interp.circuits.trace import trace
from interp.circuits.weights import copying_probe
from interp.configs import require
from interp.hooks import hook_name
from interp.ids import EdgeId, HeadId
from interp.metrics import heads, outputs, spans
from interp.metrics.development import Development, boundary_sentence, development
from interp.metrics.llc import LLCSettings, refined_llc_probe
from interp.model import Batch, forward, scored_positions, token_losses
from interp.viz import plot_attention, plot_circuit_diff, plot_curves, plot_head_curves, plot_head_grids
from tasks.induction import RecurringPairs, RecurringPairsConfig

EVAL_STREAM, PROBE_STREAM, CIRCUIT_STREAM, LLC_STREAM = 1, 2, 3, 4
SHIFTS = (-3, -2, -1, 0, 1)  # offsets P+d around the period P at which layer-1 attention is reported
EAP_IG_STEPS = 5  # EAP-IG's interpolation steps, besides plain EAP
MIN_HEAD_SCORE = 0.2  # below this a head "score" is noise, and its emergence step is not reported


@dataclass(frozen=True)
class InductionHeadsConfig(AnalysisConfig):
    """`probe_period`: length of the random token sequence repeated in the probe
    batch on which induction and previous-token scores are measured. The model's
    vocabulary and context follow the task."""

    task: RecurringPairsConfig = field(default_factory=RecurringPairsConfig)
    eval_sequences: int = 128
    probe_sequences: int = 32
    probe_period: int = 24
    llc: bool = False
    """Opt in to developmental stages: the LLC at every checkpoint, its stages and their change
    points (`interp.metrics.development`; minutes on a CPU, so off by default: `--set llc=true`)."""
    llc_per_head: bool = False
    """With `llc`, also each head's refined LLC (each head costs as much as the whole model's LLC)."""
    llc_per_head_checkpoints: int = 8
    """Checkpoints the refined LLCs are estimated at, evenly spread, first and last kept (0: all)."""
    llc_sampler: LLCSettings = field(default_factory=lambda: LLCSettings(lr=1e-3, gamma=100.0, chains=4, draws=60,
                                                                          burn_in=40, batch_size=32))
    """Measured on the quick run (`benchmarks/llc_cost.py`): 3.0-3.1 min for its 32 checkpoints on 2 quiet CPU
    cores, 29-32 of 32 estimates trustworthy, stage boundaries within one checkpoint over four sampler seeds."""
    llc_sequences: int = 1024
    """Rows of the training distribution the sampler draws its minibatches from."""

    def __post_init__(self) -> None:
        self.fit_model(self.task.d_vocab, self.task.seq_len)
        require(self.probe_period >= 2 and 2 * self.probe_period <= self.model.n_ctx, "probe_period",
                f"between 2 and n_ctx/2={self.model.n_ctx // 2}", self.probe_period)
        require(self.model.n_layers >= 2, "model.n_layers", "at least 2 (induction needs two layers)",
                self.model.n_layers)


@dataclass(frozen=True)
class InductionResults:
    phase_change_step: int | None
    repeated_loss_before: float
    repeated_loss_after: float
    other_loss_final: float
    uniform_loss: float
    induction_score_final: float
    induction_head: HeadId
    prev_token_score_final: float
    prev_token_head: HeadId
    induction_half_step: int | None
    probe_repeat_loss_final: float
    last_layer_attention_by_offset: dict[str, float]
    copy_head: HeadId
    copy_offset: str
    copy_attention_final: float
    copy_half_step: int | None
    circuit_findings: CircuitFindings = inline()
    checkpoints: int
    train_steps: int
    n_params: int
    development: DevelopmentFindings | None = None
    """With `llc` on: the LLC's stages beside the phase change (None otherwise)."""
    table: ProbeTable = detail()
    probe_batch: Batch = detail()
    circuit: CircuitTrace = detail()
    llc: DevelopmentTrace | None = detail()


@dataclass(frozen=True)
class DevelopmentFindings:
    """When the model's structure changes (`llc`): the LLC's stages beside the loss's phase change."""

    llc_settings: str
    llc_trusted: int
    """Checkpoints whose LLC estimate raised no problem (of `checkpoints`)."""
    llc_init: float
    llc_final: float
    llc_peak: float
    llc_peak_step: int
    stage_boundaries: list[str]
    """"<step> <kind>" of every boundary of the LLC's stages."""
    boundary_before_change: int | None
    """The last stage boundary at or before the phase change (None: none, or no phase change)."""
    boundary_after_change: int | None
    checkpoints_to_nearest_boundary: float | None
    """From the phase change to the nearest stage boundary, in checkpoints."""
    dynamics_turning_points: list[int]
    dynamics_explained: list[float]
    rllc_final: dict[HeadId, float] | None
    """With `llc_per_head`: each head's refined LLC at the last checkpoint."""
    rllc_separation_step: int | None
    """With `llc_per_head`: the first checkpoint from which the induction and previous-token heads'
    refined LLCs both stay above every other head's (None: they never do)."""


@dataclass(frozen=True)
class CircuitDiffSummary:
    """The path-patching circuit's changes across the phase change, as edges (`CircuitDiff`)."""

    appeared: list[EdgeId]
    vanished: list[EdgeId]
    sign_flipped: list[EdgeId]
    largest_changes: list[str]  # "<edge> <change>", the five largest


@dataclass(frozen=True)
class CircuitFindings:
    """The circuit's numbers (`circuit_findings`), written among the other results."""

    k_composition_final: float
    k_composition_half_step: int | None
    k_composition_by_head: dict[HeadId, float]
    path_k_effect: float
    prev_head_patch_effect: float
    path_k_share: float
    eap_top_edges: list[str]  # "<edge> <weight>", the five strongest
    eap_path_spearman_final: float
    eap_path_spearman_median: float
    eap_path_spearman_at_change: float | None
    eap_ig_path_spearman_final: float
    eap_ig_path_spearman_median: float
    copying_init: float
    copying_final: float
    circuit_diff_steps: list[int]
    circuit_diff: CircuitDiffSummary


@dataclass(frozen=True)
class CircuitTrace:
    """The traced circuit: per-checkpoint graphs and the probe tables behind the results."""

    composition: list[CircuitGraph]
    path: list[CircuitGraph]
    eap: list[CircuitGraph]
    eap_ig: list[CircuitGraph]
    head_patch: ProbeTable
    copying: ProbeTable


PRESETS = {
    # ~2-3 minutes on 2 CPU cores; the phase change lands around step 5000.
    "quick": InductionHeadsConfig(
        model=ModelConfig(n_layers=2, d_model=64, n_heads=4, attn_only=True),
        train=TrainConfig(steps=8000, batch_size=32, optimizer="adamw", lr=3e-3, warmup_steps=50, eval_every=100,
                          checkpoint_log=12, checkpoint_every=400),
        task=RecurringPairsConfig(d_vocab=64, seq_len=64, n_triggers=4, pair_rate=0.15),
    ),
    # seconds: for smoke tests of the whole pipeline, not for the phenomenon.
    "tiny": InductionHeadsConfig(
        model=ModelConfig(n_layers=2, d_model=16, n_heads=2, attn_only=True),
        train=TrainConfig(steps=20, batch_size=8, lr=3e-3, eval_every=5, checkpoint_log=3, checkpoint_every=10),
        task=RecurringPairsConfig(d_vocab=16, seq_len=16, n_triggers=2, pair_rate=0.3),
        eval_sequences=16, probe_sequences=8, probe_period=6,
    ),
    # Larger width, vocabulary and context for a GPU (not yet run on one).
    "gpu": InductionHeadsConfig(
        model=ModelConfig(n_layers=2, d_model=256, n_heads=8, attn_only=True),
        train=TrainConfig(steps=20000, batch_size=64, optimizer="adamw", lr=1e-3, warmup_steps=500, eval_every=100,
                          checkpoint_log=20, checkpoint_every=500),
        task=RecurringPairsConfig(d_vocab=512, seq_len=256, n_triggers=16, pair_rate=0.15),
        eval_sequences=256, probe_sequences=64, probe_period=64,
    ),
}


def setup_job(job: TrainingJob, device: torch.device) -> JobSetup:
    """Evaluation on a fixed batch: the loss on outputs of repeated triggers vs every other token."""
    cfg: InductionHeadsConfig = job.params
    task = RecurringPairs(cfg.task)
    batch = {k: v.to(device) for k, v in task.sample(cfg.eval_sequences,
                                                     seeding.generator(cfg.seed, EVAL_STREAM)).items()}
    scored = scored_positions(batch)
    repeat, other = batch["repeat_mask"] & scored, ~batch["repeat_mask"] & scored

    def evaluate(model) -> dict[str, float]:
        losses = token_losses(forward(model, batch), batch)
        return {"repeated_loss": float(losses[repeat].mean()), "other_loss": float(losses[other].mean())}

    return JobSetup(task, TrainHooks(evaluators={"eval": evaluate}))


def probe_batch(cfg: InductionHeadsConfig) -> Batch:
    tokens = repeated_tokens(cfg.probe_sequences, cfg.probe_period, cfg.model.d_vocab,
                             seeding.generator(cfg.seed, PROBE_STREAM))
    return {"tokens": tokens, "in_repeat": torch.arange(tokens.shape[1]).expand_as(tokens) >= cfg.probe_period}


def main_job(cfg: InductionHeadsConfig) -> TrainingJob:
    """The analysis's one training run."""
    return TrainingJob("main", cfg.model, cfg.train, cfg.task, setup_job, params=cfg, show_progress=True)


def run_shapes(cfg: InductionHeadsConfig) -> list[RunShape]:
    return [RunShape("main", main_job(cfg), 1, "the one training run")]


def measure(cfg: InductionHeadsConfig, ctx: Context) -> InductionResults:
    run = ctx.train([main_job(cfg)])["main"]
    layers = list(range(cfg.model.n_layers))
    probes = {
        "prev": heads.previous_token_probe(layers),
        "induction": heads.induction_probe(layers, cfg.probe_period),
        # Neighbours of the induction offset P-1: P-2 is a shifted copy circuit, P a duplicate-token head.
        **{f"offset_{d:+d}": heads.offset_probe(layers, cfg.probe_period + d, cfg.probe_period + max(SHIFTS))
           for d in SHIFTS if d != -1},
        "repeat_loss": outputs.loss_probe("in_repeat"),
    }
    batch = probe_batch(cfg)
    table = probe(run, probes, batch, device=ctx.device, progress=ctx.progress)

    steps, repeated = run.series("eval/repeated_loss")
    change_step, before, after = spans.phase_change(steps, repeated)
    shape = (cfg.model.n_layers, cfg.model.n_heads)
    induction, prev = table.head_grid("induction", *shape), table.head_grid("prev", *shape)
    last_layer = cfg.model.n_layers - 1
    best_induction = HeadId(last_layer, int(np.argmax(induction[-1, last_layer])))
    best_prev = HeadId(0, int(np.argmax(prev[-1, 0])))
    induction_curve = induction[:, last_layer, best_induction.head]
    final_induction = float(induction_curve[-1])
    by_shift = offset_profile(cfg, table)[:, -1]  # head x shift, final checkpoint
    copy_head, copy_shift = np.unravel_index(int(np.argmax(by_shift)), by_shift.shape)
    copy_curve = offset_profile(cfg, table)[copy_head, :, copy_shift]
    circuit = trace_circuit(cfg, run, ctx)
    development = measure_development(cfg, run, ctx, change_step, (best_prev, best_induction)) if cfg.llc else None
    return InductionResults(
        phase_change_step=change_step,
        repeated_loss_before=before,
        repeated_loss_after=after,
        other_loss_final=float(run.series("eval/other_loss")[1][-1]),
        uniform_loss=math.log(cfg.model.d_vocab),
        induction_score_final=final_induction,
        induction_head=best_induction,
        prev_token_score_final=float(prev[-1, 0, best_prev.head]),
        prev_token_head=best_prev,
        induction_half_step=(spans.first_crossing(table.steps, induction_curve, 0.5 * final_induction)
                             if final_induction >= MIN_HEAD_SCORE else None),
        probe_repeat_loss_final=float(table["repeat_loss/loss"][-1]),
        last_layer_attention_by_offset={f"P{d:+d}": round(float(by_shift[:, i].max()), 4)
                                        for i, d in enumerate(SHIFTS)},
        copy_head=HeadId(last_layer, int(copy_head)),
        copy_offset=f"P{SHIFTS[copy_shift]:+d}",
        copy_attention_final=float(copy_curve[-1]),
        copy_half_step=spans.first_crossing(table.steps, copy_curve, 0.5 * float(copy_curve[-1])),
        circuit_findings=circuit_findings(circuit, best_prev, best_induction, change_step, run.steps),
        checkpoints=len(table.steps),
        train_steps=cfg.train.steps,
        n_params=sum(int(np.prod(v.shape)) for v in run.load_state_dict(run.steps[-1]).values()),
        development=development[0] if development else None,
        llc=development[1] if development else None,
        table=table,
        probe_batch=batch,
        circuit=circuit,
    )


@dataclass(frozen=True)
class DevelopmentTrace:
    """The development behind `DevelopmentFindings`, for the figures."""

    found: Development
    refined: ProbeTable | None


def measure_development(cfg: InductionHeadsConfig, run: Run, ctx: Context, change_step: int | None,
                        heads_of_circuit: tuple[HeadId, HeadId]) -> tuple[DevelopmentFindings, DevelopmentTrace]:
    """The LLC at every checkpoint on rows of the training task, its stages, the essential
    dynamics, and the boundaries beside the repeated-token loss's phase change; with
    `llc_per_head`, each head's refined LLC and when the circuit's heads separate from the rest."""
    rows = training_rows(run, cfg.llc_sequences, seeding.generator(cfg.seed, LLC_STREAM))
    found = development(run, rows, cfg.llc_sampler, loss=run.series("eval/repeated_loss"), device=ctx.device,
                        progress=ctx.progress)
    llc, steps = found.llc["llc"], found.llc.steps
    boundaries = [b.step for b in found.stages.boundaries] if found.stages else []
    before = [b for b in boundaries if change_step is not None and b <= change_step]
    after = [b for b in boundaries if change_step is not None and b >= change_step]
    position = lambda step: float(np.interp(step, steps, np.arange(len(steps))))  # noqa: E731 - checkpoints
    nearest = min((abs(position(b) - position(change_step)) for b in boundaries), default=None) \
        if change_step is not None else None
    refined = separation = final = None
    if cfg.llc_per_head:
        heads = [HeadId(layer, head) for layer in range(cfg.model.n_layers) for head in range(cfg.model.n_heads)]
        spread = np.linspace(0, len(run.steps) - 1, cfg.llc_per_head_checkpoints or len(run.steps))
        refined_steps = [run.steps[i] for i in np.unique(spread.round().astype(int))]
        refined = probe(run, {"rllc": refined_llc_probe(cfg.llc_sampler, heads)}, rows, steps=refined_steps,
                        device=ctx.device, progress=ctx.progress).select("rllc")
        grid = refined.head_grid("llc", cfg.model.n_layers, cfg.model.n_heads)
        final = {HeadId(layer, head): round(float(grid[-1, layer, head]), 4)
                 for layer in range(cfg.model.n_layers) for head in range(cfg.model.n_heads)}
        circuit_heads = np.stack([grid[:, h.layer, h.head] for h in heads_of_circuit], axis=1).min(axis=1)
        others = np.array([[grid[i, layer, head] for layer in range(cfg.model.n_layers)
                            for head in range(cfg.model.n_heads) if HeadId(layer, head) not in heads_of_circuit]
                           for i in range(len(refined.steps))]).max(axis=1)
        apart = circuit_heads > others
        separation = next((int(refined.steps[i]) for i in range(len(apart)) if apart[i:].all()), None)
    peak = int(np.nanargmax(llc)) if np.isfinite(llc).any() else 0
    findings = DevelopmentFindings(
        llc_settings=cfg.llc_sampler.canonical(), llc_trusted=found.trusted, llc_init=float(llc[0]),
        llc_final=float(llc[-1]), llc_peak=float(llc[peak]), llc_peak_step=int(steps[peak]),
        stage_boundaries=[f"{b.step} {b.kind}" for b in found.stages.boundaries] if found.stages else [],
        boundary_before_change=max(before, default=None), boundary_after_change=min(after, default=None),
        checkpoints_to_nearest_boundary=nearest,
        dynamics_turning_points=[t.step for t in found.dynamics.turning_points] if found.dynamics else [],
        dynamics_explained=[round(float(v), 4) for v in found.dynamics.explained] if found.dynamics else [],
        rllc_final=final, rllc_separation_step=separation)
    return findings, DevelopmentTrace(found, refined)


def trace_circuit(cfg: InductionHeadsConfig, run, ctx: Context) -> CircuitTrace:
    """Composition, path patching and EAP graphs at every checkpoint (saved in the run, as
    their keys' default graph sets), the patching of each head's whole output and the OV
    copying scores. The source run resamples the first copy, so a path the induction circuit
    needs carries a wrong token."""
    batch = repeated_patch_batch(cfg.probe_sequences, cfg.probe_period, cfg.model.d_vocab,
                                 seeding.generator(cfg.seed, CIRCUIT_STREAM))
    metric = mean_logprob("in_repeat")
    # make_default: these are the graphs behind results.json, so the explorer and load_graphs show them,
    # not a set a user traced on another batch before or after.
    graphs = {method: trace(run, method, batch, metric, device=ctx.device, progress=ctx.progress,
                            make_default=True).graphs
              for method in ("composition", "path", "eap")}
    eap_ig = trace(run, "eap", batch, metric, key="eap-ig", device=ctx.device, progress=ctx.progress,
                   ig_steps=EAP_IG_STEPS, make_default=True).graphs
    tables = probe(run, {"head_patch": activation_patching_probe(metric), "copying": copying_probe()}, batch,
                   device=ctx.device, progress=ctx.progress)
    return CircuitTrace(graphs["composition"], graphs["path"], graphs["eap"], eap_ig, tables.select("head_patch"),
                        tables.select("copying"))


def rank_agreement(actual: CircuitGraph, estimated: CircuitGraph) -> float:
    """Spearman correlation of two graphs' edge weights over every edge."""
    edges = list(actual.weights)
    from scipy.stats import spearmanr  # scipy loads (a second) only when a result needs it

    return float(spearmanr([actual.weights[e] for e in edges], [estimated.weights[e] for e in edges]).statistic)


def circuit_findings(circuit: CircuitTrace, prev: HeadId, induction: HeadId, change_step: int | None,
                     steps: list[int]) -> CircuitFindings:
    """The circuit's numbers for the results: composition timing, path vs whole-head patching,
    EAP against path patching, copying at init and end, the graph diff across the change."""
    k_edge = EdgeId(prev, induction, "k")
    k_curve = np.array([g.weights[k_edge] for g in circuit.composition])
    final_path = circuit.path[-1].weights
    rho, rho_ig = ([rank_agreement(a, b) for a, b in zip(circuit.path, estimates, strict=True)]
                   for estimates in (circuit.eap, circuit.eap_ig))
    head_effect = float(circuit.head_patch[prev][-1] - circuit.head_patch["base"][-1])
    before = nearest_step(steps, int(0.75 * change_step)) if change_step else steps[0]
    diff = CircuitDiff.between(*(next(g for g in circuit.path if g.step == s) for s in (before, steps[-1])))
    return CircuitFindings(
        k_composition_final=float(k_curve[-1]),
        k_composition_half_step=spans.halfway_step(np.array(steps), k_curve),
        k_composition_by_head={e.receiver: round(w, 4) for e, w in circuit.composition[-1].weights.items()
                               if e.sender == prev and e.input == "k"},
        path_k_effect=final_path[k_edge],
        prev_head_patch_effect=head_effect,
        path_k_share=final_path[k_edge] / head_effect if head_effect else math.nan,
        eap_top_edges=[f"{e} {w:+.3f}" for e, w in circuit.eap[-1].strongest(5)],
        eap_path_spearman_final=rho[-1],
        eap_path_spearman_median=float(np.nanmedian(rho)),
        eap_path_spearman_at_change=rho[steps.index(nearest_step(steps, change_step))] if change_step else None,
        eap_ig_path_spearman_final=rho_ig[-1],
        eap_ig_path_spearman_median=float(np.nanmedian(rho_ig)),
        copying_init=float(circuit.copying[induction][0]),
        copying_final=float(circuit.copying[induction][-1]),
        circuit_diff_steps=[before, steps[-1]],
        circuit_diff=CircuitDiffSummary(list(diff.appeared), list(diff.vanished), list(diff.sign_flipped),
                                        [f"{e} {d:+.3f}" for e, d in diff.largest_changes[:5]]),
    )


def offset_profile(cfg: InductionHeadsConfig, table: ProbeTable) -> np.ndarray:
    """`[head, step, shift]` last-layer attention at offsets `P + d` for d in SHIFTS."""
    last = cfg.model.n_layers - 1
    grids = [table.head_grid("induction" if d == -1 else f"offset_{d:+d}", cfg.model.n_layers, cfg.model.n_heads)
             for d in SHIFTS]
    return np.stack([g[:, last, :] for g in grids], axis=-1).transpose(1, 0, 2)


def figures(cfg: InductionHeadsConfig, results: InductionResults, ctx: Context) -> list[Figure]:
    run, table = ctx.run("main"), results.table
    marks = {"phase change": results.phase_change_step} if results.phase_change_step else {}
    n_layers, n_heads = cfg.model.n_layers, cfg.model.n_heads
    curves = {name: run.series(f"eval/{name}") for name in ("repeated_loss", "other_loss")}
    curves["train loss"] = run.series("train/loss")
    drawn = [Figure("loss_curves", "Eval loss on outputs of repeated triggers vs all other tokens", plot_curves(
        curves, title="Loss on repeated-trigger outputs vs other tokens", ylabel="loss (nats)", vlines=marks,
        hlines={"ln V": results.uniform_loss}))]
    for key, label in (("induction", "Induction score"), ("prev", "Previous-token score")):
        grid = table.head_grid(key, n_layers, n_heads)
        drawn += [Figure(f"{key}_scores", f"{label} per head over training (log steps)",
                         plot_head_curves(grid, table.steps, title=f"{label} per head over training", logx=True)),
                  Figure(f"{key}_grids", f"{label}, layer x head, at checkpoints",
                         plot_head_grids(grid, table.steps, title=f"{label} (layer x head)"))]
    final_profile = offset_profile(cfg, table)[:, -1]
    drawn.append(Figure(
        "last_layer_offsets", "Last-layer attention at offsets around the repeat period P (final step)",
        plot_curves({str(HeadId(n_layers - 1, h)): (np.array(SHIFTS), final_profile[h]) for h in range(n_heads)},
                    title=f"Layer-{n_layers - 1} attention by offset from the period P (final step)",
                    ylabel="mean attention", xlabel="key offset - P (induction: -1)")))
    drawn += circuit_figures(results, marks)
    if results.llc is not None:
        drawn += development_figures(results, marks, n_layers, n_heads)
    model = run.load(device=ctx.device)
    example = results.probe_batch["tokens"][:1].to(ctx.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(example,
                                        names_filter=[hook_name("pattern", layer) for layer in range(n_layers)])
    for head in (results.induction_head, results.prev_token_head):
        pattern = cache[hook_name("pattern", head.layer)][0, head.head].cpu().numpy()
        drawn.append(Figure(f"attention_{head}", f"Attention pattern of {head} at the final step",
                            plot_attention(pattern, title=f"{head} attention on a repeated sequence (final step)")))
    return drawn


def development_figures(results: InductionResults, marks: dict[str, int], n_layers: int,
                        n_heads: int) -> list[Figure]:
    """The LLC with its spread over chains and its stage boundaries; each head's refined LLC."""
    found, refined = results.llc.found, results.llc.refined
    table = found.llc
    boundaries = {f"{b.kind} {b.step}": b.step for b in found.stages.boundaries} if found.stages else {}
    drawn = [Figure("llc", "The LLC at every checkpoint (SGLD, +-1 sd over chains) and its stage boundaries",
                    plot_curves({"LLC": (table.steps, table["llc"])}, bands={"LLC": table["llc_std"]},
                                title="Local learning coefficient over training", ylabel="LLC", logx=True,
                                markers=True, vlines={**marks, **boundaries}))]
    if refined is not None:
        drawn.append(Figure("rllc_heads", "Each head's refined LLC over training (log steps)", plot_head_curves(
            refined.head_grid("llc", n_layers, n_heads), refined.steps, title="Refined LLC per head", logx=True)))
    return drawn


def circuit_figures(results: InductionResults, marks: dict[str, int]) -> list[Figure]:
    circuit, prev, induction = results.circuit, results.prev_token_head, results.induction_head
    steps = np.array([g.step for g in circuit.composition])
    k_curves = {f"{prev} -> {e.receiver}": (steps, np.array([g.weights[e] for g in circuit.composition]))
                for e in circuit.composition[-1].weights if e.sender == prev and e.input == "k"}
    k_edge = EdgeId(prev, induction, "k")
    head_patch = circuit.head_patch
    effects = {f"path {k_edge}": (steps, np.array([g.weights[k_edge] for g in circuit.path])),
               f"whole {prev} output": (head_patch.steps, head_patch[prev] - head_patch["base"])}
    diff_steps = results.circuit_findings.circuit_diff_steps
    before, after = (next(g for g in circuit.path if g.step == s) for s in diff_steps)
    return [
        Figure("k_composition", f"K-composition of the previous-token head {prev} into each layer-1 head",
               plot_curves(k_curves, title=f"K-composition from {prev}", ylabel="composition score", logx=True,
                           vlines=marks)),
        Figure("path_patching", f"Change of the repeat log-prob when only the path {k_edge} carries the source "
               f"run's write, vs the whole output of {prev}", plot_curves(
                   effects, title="Path patching vs patching the whole head", ylabel="change of mean log-prob",
                   logx=True, vlines=marks)),
        Figure("circuit_diff", f"Path-patching circuit at step {before.step} and at the end",
               plot_circuit_diff(before, after, title="Induction circuit across the phase change")),
    ]


def report(cfg: InductionHeadsConfig, results: InductionResults) -> Report:
    r, last = results, cfg.model.n_layers - 1
    if r.phase_change_step is None:
        verdict = "No phase change: the repeated-token loss did not drop by 0.5 nats. Train longer or raise lr."
    else:
        verdict = (f"The repeated-token loss drops from {r.repeated_loss_before:.2f} to {r.repeated_loss_after:.2f} "
                   f"nats with its midpoint at step {r.phase_change_step}. ")
        if r.induction_score_final >= MIN_HEAD_SCORE:
            verdict += (f"Head {r.induction_head} is an induction head (score {r.induction_score_final:.2f}), "
                        f"reaching half its final score at step {r.induction_half_step}.")
        else:
            verdict += (f"No layer-{last} head is a canonical induction head (best score "
                        f"{r.induction_score_final:.2f} at offset P-1). The strongest layer-{last} attention on the "
                        f"earlier copy is {r.copy_head} at offset {r.copy_offset} ({r.copy_attention_final:.2f}), "
                        f"reaching half its final value at step {r.copy_half_step}: a shifted copy circuit, see "
                        "the offset figure.")
    verdict += (f" The best layer-0 previous-token head is {r.prev_token_head} "
                f"(score {r.prev_token_score_final:.2f}).")
    f = r.circuit_findings
    circuit = (f"Circuit: the K-composition of {r.prev_token_head} into {r.induction_head} ends at "
               f"{f.k_composition_final:.3f} and is halfway from its initial to its final value at step "
               f"{f.k_composition_half_step} (phase change: {r.phase_change_step}). Path patching only "
               f"{r.prev_token_head} -> {r.induction_head}.k with the resampled source changes the repeat log-prob "
               f"by {f.path_k_effect:+.3f}, {f.path_k_share:.0%} of patching the whole head's output "
               f"({f.prev_head_patch_effect:+.3f}). EAP ranks edges like path patching with Spearman "
               f"{f.eap_path_spearman_final:.2f} at the end (median over checkpoints "
               f"{f.eap_path_spearman_median:.2f}, at the phase change {f.eap_path_spearman_at_change}); EAP-IG "
               f"({EAP_IG_STEPS} steps) with {f.eap_ig_path_spearman_final:.2f} (median "
               f"{f.eap_ig_path_spearman_median:.2f}). The OV copying score of {r.induction_head} goes from "
               f"{f.copying_init:.2f} at initialization to {f.copying_final:.2f}.")
    report_ = (Report("Induction heads: phase change in a 2-layer attention-only model")
               .text(f"{cfg.model.n_layers}-layer attention-only transformer (d_model={cfg.model.d_model}, "
                     f"{cfg.model.n_heads} heads, {r.n_params} parameters) trained for {cfg.train.steps} steps on "
                     f"random-token sequences (V={cfg.task.d_vocab}) in which {cfg.task.n_triggers} per-sequence "
                     f"trigger tokens recur, each followed by its own output token (pair rate {cfg.task.pair_rate}). "
                     "'Repeated' loss is the loss on the outputs of triggers seen before. Head scores are measured on "
                     f"uniform random tokens repeated with period P={cfg.probe_period}. {verdict}")
               .text(circuit)
               .table(list(results_dict(results).items()))
               .figures("loss_curves", "induction_scores", "prev_scores", "induction_grids", "prev_grids",
                        "last_layer_offsets", "k_composition", "path_patching", "circuit_diff"))
    if r.development is not None:
        report_.text(development_text(r)).figures("llc", *(("rllc_heads",) if r.development.rllc_final else ()))
    return report_


def development_text(r: InductionResults) -> str:
    """What the LLC's stages say about the phase change, as the numbers have it."""
    d = r.development
    text = (f"Developmental stages (LLC by SGLD: {d.llc_settings}; {d.llc_trusted} of {r.checkpoints} estimates "
            f"trustworthy): the LLC goes from {d.llc_init:.3g} at initialization to {d.llc_final:.3g} at the end, "
            f"peaking at {d.llc_peak:.3g} at step {d.llc_peak_step}. Stage boundaries: "
            f"{', '.join(d.stage_boundaries) or 'none (one stage)'}.")
    text += boundary_sentence("the phase change", r.phase_change_step, d.checkpoints_to_nearest_boundary)
    if r.phase_change_step is not None and d.checkpoints_to_nearest_boundary is not None:
        text += (f" Around it, the last boundary before it is at {d.boundary_before_change} and the first after it "
                 f"at {d.boundary_after_change}.")
    text += (f" Essential dynamics turns at steps {d.dynamics_turning_points or 'none'} (top components explain "
             f"{d.dynamics_explained}).")
    if d.rllc_final is not None:
        text += (f" Refined LLC per head at the end: {', '.join(f'{h} {v:.3g}' for h, v in d.rllc_final.items())}; "
                 + (f"the induction and previous-token heads stay above every other head from step "
                    f"{d.rllc_separation_step}." if d.rllc_separation_step is not None else
                    "the induction and previous-token heads never stay above every other head."))
    return text


def view(source: Source, runs: RunsData) -> Headline:
    """The explorer's headline: the last layer's induction scores over training with the loss on
    repeated triggers' outputs, the head grid, and the phase change marked."""
    r, name = read_results(source.path, InductionResults), main_run(source)
    run = runs[name]
    last = run["model"]["n_layers"] - 1
    key = "induction" if "induction" in run["probes"] else "example.induction"
    series: list[Series | None] = []
    if key in run["probes"]:
        p = run["probes"][key]
        series = [Series(f"{c} induction score", p["steps"], probe_column(p, c)) for c in p["columns"]
                  if HeadId.parse(c).layer == last]
    series.append(Series.of_metric(run, "eval/repeated_loss", "loss on repeated-trigger outputs (right axis)", "y2"))
    head = r.induction_head
    change = (f"the phase change (repeated-token loss at its midpoint) at step {r.phase_change_step}"
              if r.phase_change_step is not None else "no phase change found in the repeated-token loss")
    return Headline(
        "Induction heads forming" if r.phase_change_step is not None else "Induction scores (no phase change found)",
        (f"Layer-{last} heads' induction score (attention from a repeated token to the token after its earlier "
         f"occurrence) over training, with the loss on outputs of repeated triggers ({change}; {head} ends at "
         f"{num(r.induction_score_final)}); the grid and the attention pattern of the induction head follow the "
         "checkpoint slider."),
        run=name, marks={name: Mark.at((r.phase_change_step, "phase change: repeated-token loss at its midpoint"),
                                       (r.induction_half_step, f"{head} reaches half its final induction score"))},
        figures=[
            Lines("Induction score per head and repeated-token loss", series, run=name, ylabel="induction score",
                  y2label="loss (nats)", vlines=VLine.at((r.phase_change_step, "phase change"),
                                                         (r.induction_half_step, f"{head} half"))),
            Heads.of("Induction score (layer x head) and the induction head's attention", name, run, key, head),
            Table.of(results_dict(r), ("phase_change_step", "repeated_loss_before", "repeated_loss_after",
                                       "induction_head", "induction_score_final", "induction_half_step",
                                       "prev_token_head", "prev_token_score_final", "copy_head", "copy_offset")),
        ])


def training_rows(run: Run, n: int, generator: torch.Generator) -> Batch:
    """`n` sequences of the recurring-pairs task `run` was trained on."""
    return RecurringPairs(read_task(run, RecurringPairsConfig)).sample(n, generator)


ANALYSIS = Analysis("induction-heads", "Induction-head phase change in a 2-layer attention-only transformer "
                    "(Olsson et al. 2022)", PRESETS, measure, figures, report,
                    headline=("phase_change_step", "induction_score_final", "repeated_loss_after"), view=view,
                    training_rows=training_rows, run_shapes=run_shapes)

__all__ = ["ANALYSIS", "InductionHeadsConfig", "InductionResults"]
