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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interp import ModelConfig, Run, TrainConfig, probe, train
from interp.analysis import Analysis, Report, RunOptions
from interp.configs import require, to_dict
from interp.metrics import circuits
from interp.model import Batch, forward, scored_positions, token_losses
from interp.probing import ProbeTable
from interp.train import step_generator
from interp.viz import plot_attention, plot_curves, plot_head_curves, plot_head_grids, save_figure
from tasks.induction import RecurringPairs, RecurringPairsConfig

EVAL_STREAM, PROBE_STREAM = 1, 2
SHIFTS = (-3, -2, -1, 0, 1)  # offsets P+d around the period P at which layer-1 attention is reported
MIN_HEAD_SCORE = 0.2  # below this a head "score" is noise, and its emergence step is not reported


@dataclass(frozen=True)
class InductionHeadsConfig:
    """`probe_period`: length of the random token sequence repeated in the probe
    batch on which induction and previous-token scores are measured."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: RecurringPairsConfig = field(default_factory=RecurringPairsConfig)
    eval_sequences: int = 128
    probe_sequences: int = 32
    probe_period: int = 24
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.model.d_vocab == self.task.d_vocab, "task.d_vocab", f"model.d_vocab={self.model.d_vocab}",
                self.task.d_vocab)
        require(self.task.seq_len <= self.model.n_ctx, "task.seq_len", f"<= model.n_ctx={self.model.n_ctx}",
                self.task.seq_len)
        require(self.probe_period >= 2 and 2 * self.probe_period <= self.model.n_ctx, "probe_period",
                f"between 2 and n_ctx/2={self.model.n_ctx // 2}", self.probe_period)
        require(self.model.n_layers >= 2, "model.n_layers", "at least 2 (induction needs two layers)",
                self.model.n_layers)


def _preset(
    model: ModelConfig, train_cfg: TrainConfig, task: RecurringPairsConfig, **kw: Any
) -> InductionHeadsConfig:
    return InductionHeadsConfig(model=model, train=train_cfg, task=task, **kw)


PRESETS = {
    # ~2-3 minutes on 2 CPU cores; the phase change lands around step 5000.
    "quick": _preset(
        ModelConfig(n_layers=2, d_model=64, n_heads=4, d_vocab=64, n_ctx=64, attn_only=True),
        TrainConfig(steps=8000, batch_size=32, optimizer="adamw", lr=3e-3, warmup_steps=50, eval_every=100,
                    checkpoint_log=12, checkpoint_every=400),
        RecurringPairsConfig(d_vocab=64, seq_len=64, n_triggers=4, pair_rate=0.15),
    ),
    # seconds: for smoke tests of the whole pipeline, not for the phenomenon.
    "tiny": _preset(
        ModelConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=16, n_ctx=16, attn_only=True),
        TrainConfig(steps=20, batch_size=8, lr=3e-3, eval_every=5, checkpoint_log=3, checkpoint_every=10),
        RecurringPairsConfig(d_vocab=16, seq_len=16, n_triggers=2, pair_rate=0.3),
        eval_sequences=16, probe_sequences=8, probe_period=6,
    ),
    # Larger width, vocabulary and context for a GPU (not yet run on one).
    "gpu": _preset(
        ModelConfig(n_layers=2, d_model=256, n_heads=8, d_vocab=512, n_ctx=256, attn_only=True),
        TrainConfig(steps=20000, batch_size=64, optimizer="adamw", lr=1e-3, warmup_steps=500, eval_every=100,
                    checkpoint_log=20, checkpoint_every=500),
        RecurringPairsConfig(d_vocab=512, seq_len=256, n_triggers=16, pair_rate=0.15),
        eval_sequences=256, probe_sequences=64, probe_period=64,
    ),
}


def phase_change(steps: np.ndarray, loss: np.ndarray, min_drop: float = 0.5) -> tuple[int | None, float, float]:
    """(step, before, after) of a drop in a loss curve.

    `before` is the plateau level (median over the first 20% of training after
    step 0), `after` the final value; the change step is the first step where
    the loss falls below their midpoint. No step is returned if the loss fell
    by less than `min_drop`.
    """
    early = loss[(steps > 0) & (steps <= 0.2 * steps.max())]
    before = float(np.median(early if len(early) else loss[:1]))
    after = float(loss[-1])
    if before - after < min_drop:
        return None, before, after
    below = np.nonzero(loss < (before + after) / 2)[0]
    below = below[steps[below] > 0]
    return (int(steps[below[0]]) if len(below) else None), before, after


def first_crossing(steps: np.ndarray, values: np.ndarray, level: float) -> int | None:
    above = np.nonzero(values >= level)[0]
    return int(steps[above[0]]) if len(above) else None


def _evaluator(eval_batch: Batch):
    repeat = eval_batch["repeat_mask"] & scored_positions(eval_batch)
    other = ~eval_batch["repeat_mask"] & scored_positions(eval_batch)

    def evaluate(model) -> dict[str, float]:
        batch = {k: v.to(next(model.parameters()).device) for k, v in eval_batch.items()}
        losses = token_losses(forward(model, batch), batch).cpu()
        return {"repeated_loss": float(losses[repeat].mean()), "other_loss": float(losses[other].mean())}

    return evaluate


def run(cfg: InductionHeadsConfig, out: Path, options: RunOptions) -> dict[str, Any]:
    task = RecurringPairs(cfg.task)
    eval_batch = task.sample(cfg.eval_sequences, step_generator(cfg.seed, 0, EVAL_STREAM))
    run_dir = out / "run"
    trained = train(
        run_dir, cfg.model, cfg.train, task,
        evaluators={"eval": _evaluator(eval_batch)},
        config_extra={"task": {"name": "recurring_pairs", **to_dict(cfg.task)}},
        resume=options.resume and (run_dir / "config.json").exists(),
        device=options.device, progress=options.progress,
    )

    layers = list(range(cfg.model.n_layers))
    tokens = circuits.repeated_tokens(
        cfg.probe_sequences, cfg.probe_period, cfg.model.d_vocab, step_generator(cfg.seed, 0, PROBE_STREAM)
    )
    probe_batch = {"tokens": tokens, "in_repeat": torch.arange(tokens.shape[1]).expand_as(tokens) >= cfg.probe_period}
    probes = {
        "prev": circuits.previous_token_probe(layers),
        "induction": circuits.induction_probe(layers, cfg.probe_period),
        # Neighbours of the induction offset P-1: P-2 is a shifted copy circuit, P a duplicate-token head.
        **{f"offset_{d:+d}": circuits.offset_probe(layers, cfg.probe_period + d, cfg.probe_period + max(SHIFTS))
           for d in SHIFTS if d != -1},
        "repeat_loss": circuits.loss_probe("in_repeat"),
    }
    table = probe(trained, probes, probe_batch, device=options.device, progress=options.progress)
    results = summarize(cfg, trained, table)
    figures = make_figures(cfg, trained, table, probe_batch, results, out / "figures", options.device)
    write_report(cfg, results, figures, out)
    return results


def summarize(cfg: InductionHeadsConfig, run_: Run, table: ProbeTable) -> dict[str, Any]:
    steps, repeated = run_.series("eval/repeated_loss")
    _, other = run_.series("eval/other_loss")
    change_step, before, after = phase_change(steps, repeated)
    induction = table.head_grid("induction", cfg.model.n_layers, cfg.model.n_heads)
    prev = table.head_grid("prev", cfg.model.n_layers, cfg.model.n_heads)
    last_layer = cfg.model.n_layers - 1
    best_induction_head = int(np.argmax(induction[-1, last_layer]))
    best_prev_head = int(np.argmax(prev[-1, 0]))
    induction_curve = induction[:, last_layer, best_induction_head]
    final_induction = float(induction_curve[-1])
    profile = offset_profile(cfg, table)
    by_shift = profile[:, -1]  # head x shift, final checkpoint
    copy_head, copy_shift = np.unravel_index(int(np.argmax(by_shift)), by_shift.shape)
    copy_curve = profile[copy_head, :, copy_shift]
    return {
        "phase_change_step": change_step,
        "repeated_loss_before": before,
        "repeated_loss_after": after,
        "other_loss_final": float(other[-1]),
        "uniform_loss": math.log(cfg.model.d_vocab),
        "induction_score_final": final_induction,
        "induction_head": f"L{last_layer}H{best_induction_head}",
        "prev_token_score_final": float(prev[-1, 0, best_prev_head]),
        "prev_token_head": f"L0H{best_prev_head}",
        "induction_half_step": (first_crossing(table.steps, induction_curve, 0.5 * final_induction)
                                if final_induction >= MIN_HEAD_SCORE else None),
        "probe_repeat_loss_final": float(table["repeat_loss/loss"][-1]),
        "last_layer_attention_by_offset": {
            f"P{d:+d}": round(float(by_shift[:, i].max()), 4) for i, d in enumerate(SHIFTS)
        },
        "copy_head": f"L{last_layer}H{copy_head}",
        "copy_offset": f"P{SHIFTS[copy_shift]:+d}",
        "copy_attention_final": float(copy_curve[-1]),
        "copy_half_step": first_crossing(table.steps, copy_curve, 0.5 * float(copy_curve[-1])),
        "checkpoints": len(table.steps),
        "train_steps": cfg.train.steps,
        "n_params": sum(int(np.prod(v.shape)) for v in run_.load_state_dict(run_.steps[-1]).values()),
    }


def offset_profile(cfg: InductionHeadsConfig, table: ProbeTable) -> np.ndarray:
    """`[head, step, shift]` last-layer attention at offsets `P + d` for d in SHIFTS."""
    last = cfg.model.n_layers - 1
    grids = [table.head_grid("induction" if d == -1 else f"offset_{d:+d}", cfg.model.n_layers, cfg.model.n_heads)
             for d in SHIFTS]
    return np.stack([g[:, last, :] for g in grids], axis=-1).transpose(1, 0, 2)


def make_figures(cfg: InductionHeadsConfig, run_: Run, table: ProbeTable, probe_batch: Batch,
                 results: dict[str, Any], fig_dir: Path, device: torch.device) -> dict[str, Path]:
    marks = {"phase change": results["phase_change_step"]} if results["phase_change_step"] else {}
    n_layers, n_heads = cfg.model.n_layers, cfg.model.n_heads
    curves = {name: run_.series(f"eval/{name}") for name in ("repeated_loss", "other_loss")}
    curves["train loss"] = run_.series("train/loss")
    figures = {
        "loss": save_figure(plot_curves(curves, title="Loss on repeated-trigger outputs vs other tokens",
                                        ylabel="loss (nats)", vlines=marks, hlines={"ln V": results["uniform_loss"]}),
                            fig_dir / "loss_curves.png"),
    }
    for key, label in (("induction", "Induction score"), ("prev", "Previous-token score")):
        grid = table.head_grid(key, n_layers, n_heads)
        figures[f"{key}_curves"] = save_figure(
            plot_head_curves(grid, table.steps, title=f"{label} per head over training", logx=True),
            fig_dir / f"{key}_scores.png")
        figures[f"{key}_grids"] = save_figure(
            plot_head_grids(grid, table.steps, title=f"{label} (layer x head)"), fig_dir / f"{key}_grids.png")
    final_profile = offset_profile(cfg, table)[:, -1]
    shifts = np.array(SHIFTS)
    figures["offsets"] = save_figure(
        plot_curves({f"L{n_layers - 1}H{h}": (shifts, final_profile[h]) for h in range(n_heads)},
                    title=f"Layer-{n_layers - 1} attention by offset from the period P (final step)",
                    ylabel="mean attention", xlabel="key offset - P (induction: -1)"),
        fig_dir / "last_layer_offsets.png")
    model = run_.load(device=device)
    example = {k: v[:1].to(device) for k, v in probe_batch.items()}
    hooks = [circuits.pattern_hook(layer) for layer in range(n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(example["tokens"], names_filter=hooks)
    for head_name in (results["induction_head"], results["prev_token_head"]):
        layer, head = (int(x) for x in head_name[1:].split("H"))
        pattern = cache[circuits.pattern_hook(layer)][0, head].cpu().numpy()
        figures[f"attention_{head_name}"] = save_figure(
            plot_attention(pattern, title=f"{head_name} attention on a repeated sequence (final step)"),
            fig_dir / f"attention_{head_name}.png")
    return figures


def write_report(cfg: InductionHeadsConfig, results: dict[str, Any], figures: dict[str, Path], out: Path) -> None:
    change, last = results["phase_change_step"], cfg.model.n_layers - 1
    if change is None:
        verdict = "No phase change: the repeated-token loss did not drop by 0.5 nats. Train longer or raise lr."
    else:
        verdict = (f"The repeated-token loss drops from {results['repeated_loss_before']:.2f} to "
                   f"{results['repeated_loss_after']:.2f} nats with its midpoint at step {change}. ")
        if results["induction_score_final"] >= MIN_HEAD_SCORE:
            verdict += (f"Head {results['induction_head']} is an induction head (score "
                        f"{results['induction_score_final']:.2f}), reaching half its final score at step "
                        f"{results['induction_half_step']}.")
        else:
            verdict += (f"No layer-{last} head is a canonical induction head (best score "
                        f"{results['induction_score_final']:.2f} at offset P-1). The strongest layer-{last} "
                        f"attention on the earlier copy is {results['copy_head']} at offset {results['copy_offset']} "
                        f"({results['copy_attention_final']:.2f}), reaching half its final value at step "
                        f"{results['copy_half_step']}: a shifted copy circuit, see the offset figure.")
    verdict += (f" The best layer-0 previous-token head is {results['prev_token_head']} "
                f"(score {results['prev_token_score_final']:.2f}).")
    report = Report("Induction heads: phase change in a 2-layer attention-only model")
    report.text(f"{cfg.model.n_layers}-layer attention-only transformer (d_model={cfg.model.d_model}, "
                f"{cfg.model.n_heads} heads, {results['n_params']} parameters) trained for {cfg.train.steps} steps "
                f"on random-token sequences (V={cfg.task.d_vocab}) in which {cfg.task.n_triggers} per-sequence "
                f"trigger tokens recur, each followed by its own output token (pair rate {cfg.task.pair_rate}). "
                f"'Repeated' loss is the loss on the outputs of triggers seen before. Head scores are measured on "
                f"uniform random tokens repeated with period P={cfg.probe_period}. {verdict}")
    report.table([(k, v) for k, v in results.items()])
    for key, caption in (("loss", "Eval loss on outputs of repeated triggers vs all other tokens"),
                         ("induction_curves", "Induction score per head over training (log steps)"),
                         ("prev_curves", "Previous-token score per head over training"),
                         ("induction_grids", "Induction score, layer x head, at checkpoints"),
                         ("prev_grids", "Previous-token score, layer x head, at checkpoints"),
                         ("offsets", "Last-layer attention at offsets around the repeat period P (final step)")):
        report.figure(figures[key], out, caption)
    for key, path in figures.items():
        if key.startswith("attention_"):
            report.figure(path, out, f"Attention pattern of {key.removeprefix('attention_')} at the final step")
    report.write(out / "report.md")


ANALYSIS = Analysis(
    name="induction-heads",
    description="Induction-head phase change in a 2-layer attention-only transformer (Olsson et al. 2022)",
    presets=PRESETS,
    run=run,
    headline=("phase_change_step", "induction_score_final", "repeated_loss_after"),
)

__all__ = ["ANALYSIS", "InductionHeadsConfig", "phase_change"]
