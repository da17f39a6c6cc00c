"""Induction-head formation in a 2-layer attention-only model (Olsson et al. 2022).

Train on random tokens in which per-sequence trigger tokens recur, each followed
by its own output token (Bietti et al. 2023). The loss on repeated triggers'
outputs sits on a plateau, then drops in a phase change as layer-1 induction
heads form on top of a layer-0 previous-token head. Head scores are measured on
uniform random tokens repeated with a period P (the standard induction score).

    interp run induction-heads --preset quick --out runs/induction
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from interp import ModelConfig, TrainConfig, probe
from interp.analysis import Analysis, detail, results_dict
from interp.configs import require
from interp.ids import HeadId, hooks
from interp.metrics import circuits, spans
from interp.model import Batch, forward, scored_positions, token_losses
from interp.pipeline import AnalysisConfig, Context, JobSetup, TrainingJob
from interp.probing import ProbeTable
from interp.report import Figure, Report
from interp.train import TrainHooks, step_generator
from interp.viz import plot_attention, plot_curves, plot_head_curves, plot_head_grids
from tasks.induction import RecurringPairs, RecurringPairsConfig

EVAL_STREAM, PROBE_STREAM = 1, 2
SHIFTS = (-3, -2, -1, 0, 1)  # offsets P+d around the period P at which layer-1 attention is reported
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

    def __post_init__(self) -> None:
        super().__post_init__()
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
    checkpoints: int
    train_steps: int
    n_params: int
    table: ProbeTable = detail()
    probe_batch: Batch = detail()


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
                                                     step_generator(cfg.seed, 0, EVAL_STREAM)).items()}
    scored = scored_positions(batch)
    repeat, other = batch["repeat_mask"] & scored, ~batch["repeat_mask"] & scored

    def evaluate(model) -> dict[str, float]:
        losses = token_losses(forward(model, batch), batch)
        return {"repeated_loss": float(losses[repeat].mean()), "other_loss": float(losses[other].mean())}

    return JobSetup(task, TrainHooks(evaluators={"eval": evaluate}))


def probe_batch(cfg: InductionHeadsConfig) -> Batch:
    tokens = circuits.repeated_tokens(cfg.probe_sequences, cfg.probe_period, cfg.model.d_vocab,
                                      step_generator(cfg.seed, 0, PROBE_STREAM))
    return {"tokens": tokens, "in_repeat": torch.arange(tokens.shape[1]).expand_as(tokens) >= cfg.probe_period}


def measure(cfg: InductionHeadsConfig, ctx: Context) -> InductionResults:
    job = TrainingJob("main", cfg.model, cfg.train, cfg.task, setup_job, params=cfg, show_progress=True)
    run = ctx.train([job])["main"]
    layers = list(range(cfg.model.n_layers))
    probes = {
        "prev": circuits.previous_token_probe(layers),
        "induction": circuits.induction_probe(layers, cfg.probe_period),
        # Neighbours of the induction offset P-1: P-2 is a shifted copy circuit, P a duplicate-token head.
        **{f"offset_{d:+d}": circuits.offset_probe(layers, cfg.probe_period + d, cfg.probe_period + max(SHIFTS))
           for d in SHIFTS if d != -1},
        "repeat_loss": circuits.loss_probe("in_repeat"),
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
        checkpoints=len(table.steps),
        train_steps=cfg.train.steps,
        n_params=sum(int(np.prod(v.shape)) for v in run.load_state_dict(run.steps[-1]).values()),
        table=table,
        probe_batch=batch,
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
    model = run.load(device=ctx.device)
    example = results.probe_batch["tokens"][:1].to(ctx.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(example, names_filter=[hooks.pattern(layer) for layer in range(n_layers)])
    for head in (results.induction_head, results.prev_token_head):
        pattern = cache[hooks.pattern(head.layer)][0, head.head].cpu().numpy()
        drawn.append(Figure(f"attention_{head}", f"Attention pattern of {head} at the final step",
                            plot_attention(pattern, title=f"{head} attention on a repeated sequence (final step)")))
    return drawn


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
    return (Report("Induction heads: phase change in a 2-layer attention-only model")
            .text(f"{cfg.model.n_layers}-layer attention-only transformer (d_model={cfg.model.d_model}, "
                  f"{cfg.model.n_heads} heads, {r.n_params} parameters) trained for {cfg.train.steps} steps on "
                  f"random-token sequences (V={cfg.task.d_vocab}) in which {cfg.task.n_triggers} per-sequence trigger "
                  f"tokens recur, each followed by its own output token (pair rate {cfg.task.pair_rate}). 'Repeated' "
                  "loss is the loss on the outputs of triggers seen before. Head scores are measured on uniform "
                  f"random tokens repeated with period P={cfg.probe_period}. {verdict}")
            .table(list(results_dict(results).items()))
            .figures("loss_curves", "induction_scores", "prev_scores", "induction_grids", "prev_grids",
                     "last_layer_offsets"))


ANALYSIS = Analysis("induction-heads", "Induction-head phase change in a 2-layer attention-only transformer "
                    "(Olsson et al. 2022)", PRESETS, measure, figures, report,
                    headline=("phase_change_step", "induction_score_final", "repeated_loss_after"))

__all__ = ["ANALYSIS", "InductionHeadsConfig", "InductionResults"]
