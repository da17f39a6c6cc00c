"""Low-rank structure of forgetting (Jin & Ren, arXiv 2406.14026).

A base model is pre-trained on a corpus of synthetic domains at unequal
frequencies. It is then fine-tuned once per task, always from the base, on M
prompt -> answer tasks that perturb some domains. `Z[i, j]` is the loss change
on upstream example j after task i. The analysis fits low-rank models to Z,
with a row-shuffled control. It predicts held-out rows from k revealed entries
by matrix completion, against representation-similarity and example-mean
baselines. Finally it replays upstream examples while fine-tuning held-out
tasks (none, random, predicted, oracle) and measures forgetting on a
never-replayed set.

Besides the report it writes `z.npy` (tasks x pool examples), `z_heldout.npy`,
`tasks.json` (each task's domain weights, strength, steps and lr) and the base
run in `base/`; the pool and held-out examples are those of
`UpstreamCorpus(cfg.upstream)`.

    interp run lowrank-forgetting --preset quick --out runs/lowrank
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from transformer_lens.model_bridge import TransformerBridge

from interp import ModelConfig, Run, TrainConfig, train
from interp.analysis import Analysis, Report, RunOptions
from interp.checkpoints import atomic_write_json
from interp.configs import require, require_positive, to_dict
from interp.metrics import lowrank
from interp.model import forward, scored_positions, token_losses
from interp.parallel import Backend, run_all
from interp.replay import Replay, softmax_weights
from interp.train import step_generator, take_steps
from interp.viz import plot_bars, plot_curves, plot_matrix, save_figure
from tasks.forgetting import (
    DOMAINS,
    FineTuningTask,
    TaskFamilyConfig,
    TaskSpec,
    UpstreamConfig,
    UpstreamCorpus,
    task_specs,
)

logger = logging.getLogger(__name__)

CONDITIONS = ("none", "random", "predicted", "oracle")
POOLED_HOOK = "ln_final.hook_normalized"
REPRESENTATION_STREAM = 3


@dataclass(frozen=True)
class LowRankForgettingConfig:
    """- `pretrain`: the base model's training; `finetune`: optimizer settings of
      every task's fine-tuning (each task sets its own steps and lr, see `tasks`).
    - `test_tasks` rows are held out for completion and replay; `revealed`
      entries of each are shown to the completers, over `completion_seeds` draws.
    - Replay interleaves `replay_ratio` pool examples per task example; predicted
      and oracle replay sample with weights softmax(Z / T), T = `replay_temperature`
      x the standard deviation of the row, over `replay_seeds` seeds per task.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(optimizer="adamw", batch_size=16))
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    tasks: TaskFamilyConfig = field(default_factory=TaskFamilyConfig)
    test_tasks: int = 10
    revealed: int = 30
    completion_seeds: int = 10
    knn_k: int = 10
    mf_rank: int = 5
    mf_reg: float = 1.0
    top_fraction: float = 0.1
    replay_ratio: float = 0.125
    replay_temperature: float = 1.0
    replay_seeds: int = 3
    shuffle_controls: int = 5
    workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.model.d_vocab == self.upstream.d_vocab, "upstream.d_vocab", f"model.d_vocab={self.model.d_vocab}",
                self.upstream.d_vocab)
        require(self.upstream.seq_len <= self.model.n_ctx, "upstream.seq_len", f"<= model.n_ctx={self.model.n_ctx}",
                self.upstream.seq_len)
        require_positive(self, "test_tasks", "revealed", "completion_seeds", "knn_k", "mf_rank", "replay_seeds",
                         "shuffle_controls")
        require(self.test_tasks < self.tasks.n_tasks, "test_tasks", f"fewer than tasks.n_tasks={self.tasks.n_tasks}",
                self.test_tasks)
        require(self.revealed < self.upstream.pool_size, "revealed",
                f"fewer than upstream.pool_size={self.upstream.pool_size}", self.revealed)
        require(0 < self.replay_ratio <= 1, "replay_ratio", "a ratio in (0, 1]", self.replay_ratio)
        require(self.replay_temperature > 0, "replay_temperature", "a positive number", self.replay_temperature)
        require(0 < self.top_fraction < 1, "top_fraction", "a fraction in (0, 1)", self.top_fraction)


def example_losses(model: TransformerBridge, tokens: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Mean token loss of each sequence (all predicted positions)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(tokens), batch_size):
            batch = {"tokens": tokens[start : start + batch_size].to(next(model.parameters()).device)}
            losses, mask = token_losses(forward(model, batch), batch), scored_positions(batch)
            out.append(((losses * mask).sum(1) / mask.sum(1)).cpu().numpy())
    return np.concatenate(out)


@dataclass(frozen=True)
class FineTuneJob:
    """Fine-tune the base on one task, optionally with replay; report per-example losses."""

    base_dir: str
    cfg: LowRankForgettingConfig
    task_index: int
    condition: str = "none"
    replay_weights: tuple[float, ...] | None = None
    seed: int = 0
    device: str = "cpu"


def run_finetune(job: FineTuneJob) -> dict[str, np.ndarray]:
    """Module-level so that worker processes can run it."""
    cfg = job.cfg
    corpus = UpstreamCorpus(cfg.upstream)
    spec = task_specs(cfg.tasks)[job.task_index]
    data: Any = FineTuningTask(corpus.domains, spec)
    if job.condition != "none":
        weights = None if job.replay_weights is None else np.asarray(job.replay_weights)
        data = Replay(data, {"tokens": corpus.sequences[corpus.pool]}, cfg.replay_ratio, weights, seed=job.seed)
    run = Run.open(job.base_dir)
    model = run.load(run.steps[-1], device=job.device)
    train_cfg = replace(cfg.finetune, steps=spec.steps, lr=spec.lr, seed=job.seed)
    take_steps(model, train_cfg, data, range(spec.steps))
    return {"pool": example_losses(model, corpus.sequences[corpus.pool]),
            "heldout": example_losses(model, corpus.sequences[corpus.heldout])}


def pooled_representations(model: TransformerBridge, tokens: torch.Tensor) -> np.ndarray:
    """Mean over positions of the final normalized residual stream, one row per sequence."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(next(model.parameters()).device), names_filter=[POOLED_HOOK])
    return cache[POOLED_HOOK].mean(dim=1).cpu().numpy()


def representation_similarity(model: TransformerBridge, corpus: UpstreamCorpus, specs: list[TaskSpec],
                              cfg: LowRankForgettingConfig) -> np.ndarray:
    """`S[i, j]`: cosine between task i's mean pooled representation (over a batch
    of its examples) and upstream example j's, under the base model."""
    examples = pooled_representations(model, corpus.sequences[corpus.pool])
    tasks = []
    for index, spec in enumerate(specs):
        generator = step_generator(cfg.seed, index, REPRESENTATION_STREAM)
        batch = FineTuningTask(corpus.domains, spec).batch(0, 64, generator)
        tasks.append(pooled_representations(model, batch["tokens"]).mean(axis=0))
    tasks_arr = np.stack(tasks)
    tasks_arr /= np.linalg.norm(tasks_arr, axis=1, keepdims=True)
    examples /= np.linalg.norm(examples, axis=1, keepdims=True)
    return tasks_arr @ examples.T


def run(cfg: LowRankForgettingConfig, out: Path, options: RunOptions) -> dict[str, Any]:
    corpus = UpstreamCorpus(cfg.upstream)
    specs = task_specs(cfg.tasks)
    base_dir = out / "base"
    pool_tokens = corpus.sequences[corpus.pool]

    def domain_losses(model) -> dict[str, float]:
        losses = example_losses(model, pool_tokens)
        domains = corpus.domain_of[corpus.pool]
        return {DOMAINS[d]: float(losses[domains == d].mean()) for d in range(len(DOMAINS)) if (domains == d).any()}

    base = train(base_dir, cfg.model, cfg.pretrain, corpus, evaluators={"pool": domain_losses},
                 config_extra={"upstream": to_dict(cfg.upstream)},
                 resume=options.resume and (base_dir / "config.json").exists(), device=options.device,
                 progress=options.progress)
    model = base.load(device=options.device)
    before_pool = example_losses(model, pool_tokens)
    before_heldout = example_losses(model, corpus.sequences[corpus.heldout])
    similarity = representation_similarity(model, corpus, specs, cfg)

    backend = options.jobs(cfg.workers)
    device = str(options.device)
    jobs = [FineTuneJob(str(base_dir), cfg, i, device=device) for i in range(len(specs))]
    after = run_all(run_finetune, jobs, backend)
    z = lowrank.forgetting_matrix(before_pool, np.stack([a["pool"] for a in after]))
    z_heldout = lowrank.forgetting_matrix(before_heldout, np.stack([a["heldout"] for a in after]))
    np.save(out / "z.npy", z, allow_pickle=False)
    np.save(out / "z_heldout.npy", z_heldout, allow_pickle=False)
    atomic_write_json(out / "tasks.json", [to_dict(spec) for spec in specs])

    rng = np.random.default_rng([cfg.seed, 7])
    test_rows = np.sort(rng.choice(len(specs), cfg.test_tasks, replace=False))
    fits = lowrank.fit_summary(z)
    shuffled_rank1 = [lowrank.r2_by_rank(lowrank.shuffle_rows_independently(z, np.random.default_rng([cfg.seed, s])),
                                         [1])[0] for s in range(cfg.shuffle_controls)]
    predictors = {
        "additive": lowrank.as_predictor(lowrank.complete_additive),
        "knn": lowrank.as_predictor(lambda m: lowrank.complete_knn(m, k=cfg.knn_k)),
        "mf": lowrank.as_predictor(lambda m: lowrank.complete_mf(m, rank=cfg.mf_rank, reg=cfg.mf_reg)),
        "example mean": lowrank.column_mean_predictor,
        "representation similarity": lowrank.similarity_predictor(similarity),
    }
    completion = lowrank.evaluate_completion(z, test_rows, cfg.revealed, predictors,
                                             seeds=range(cfg.seed, cfg.seed + cfg.completion_seeds),
                                             top_fraction=cfg.top_fraction)

    replay = replay_experiment(cfg, z, test_rows, base_dir, before_heldout, backend, device)
    results = summarize(z, z_heldout, fits, shuffled_rank1, completion, replay, test_rows)
    figures = make_figures(cfg, out, z, fits, shuffled_rank1, completion, replay)
    write_report(cfg, results, figures, out)
    return results


def replay_experiment(cfg: LowRankForgettingConfig, z: np.ndarray, test_rows: np.ndarray, base_dir: Path,
                      before_heldout: np.ndarray, backend: Backend, device: str) -> dict[str, Any]:
    """Fine-tune each held-out task under every replay condition and seed; the
    mean held-out NLL increase per (condition, task, seed)."""
    jobs, keys = [], []
    for row in test_rows:
        spread = z[row].std() or 1.0
        oracle = softmax_weights(z[row], cfg.replay_temperature * spread)
        for seed in range(cfg.seed, cfg.seed + cfg.replay_seeds):
            observed = z.copy()
            mask = lowrank.reveal_mask(1, z.shape[1], cfg.revealed, np.random.default_rng([seed, int(row), 11]))[0]
            observed[test_rows] = np.nan
            observed[row] = np.where(mask, z[row], np.nan)
            predicted_row = lowrank.complete_mf(observed[np.r_[np.setdiff1d(np.arange(len(z)), test_rows), row]],
                                                rank=cfg.mf_rank, reg=cfg.mf_reg)[-1]
            predicted = softmax_weights(predicted_row, cfg.replay_temperature * (predicted_row.std() or 1.0))
            weights = {"none": None, "random": None, "predicted": predicted, "oracle": oracle}
            for condition in CONDITIONS:
                w = weights[condition]
                jobs.append(FineTuneJob(str(base_dir), cfg, int(row), condition,
                                        None if w is None else tuple(float(x) for x in w), seed, device))
                keys.append((condition, int(row), seed))
    outcomes = run_all(run_finetune, jobs, backend)
    increase = {key: float((o["heldout"] - before_heldout).mean()) for key, o in zip(keys, outcomes, strict=True)}
    by_condition = {c: np.array([v for (cond, _, _), v in increase.items() if cond == c]) for c in CONDITIONS}
    predicted, random = by_condition["predicted"], by_condition["random"]
    differs = len(predicted) > 1 and not np.allclose(predicted, random, rtol=0, atol=1e-12)
    return {
        "increase": by_condition,
        # No test when the two conditions gave identical outcomes (nothing to compare).
        "p_value_predicted_vs_random": float(stats.ttest_rel(predicted, random).pvalue) if differs else None,
        "p_value_wilcoxon": float(stats.wilcoxon(predicted, random).pvalue) if differs else None,
        "pairs": len(predicted),
    }


def _mean_ci(values: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval."""
    if len(values) < 2:
        return float(values.mean()), 0.0
    return float(values.mean()), float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / len(values) ** 0.5)


def summarize(z: np.ndarray, z_heldout: np.ndarray, fits: dict[str, Any], shuffled_rank1: list[float],
              completion: dict[str, dict[str, float]], replay: dict[str, Any], test_rows: np.ndarray) -> dict[str, Any]:
    def rounded(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: rounded(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [rounded(v) for v in x]
        return round(float(x), 4)

    replay_summary = {}
    for condition, values in replay["increase"].items():
        mean, half = _mean_ci(values)
        replay_summary[condition] = {"mean_heldout_nll_increase": round(mean, 4), "ci95": round(half, 4)}
    none = replay_summary["none"]["mean_heldout_nll_increase"]
    for condition in CONDITIONS[1:]:
        # Undefined (None) when fine-tuning without replay did not raise the held-out loss.
        reduced = 1 - replay_summary[condition]["mean_heldout_nll_increase"] / none if none > 0 else None
        replay_summary[condition]["reduced_forgetting"] = None if reduced is None else round(reduced, 4)
    return {
        "shape": list(z.shape),
        "z_mean": round(float(z.mean()), 4),
        "z_std": round(float(z.std()), 4),
        "z_row_mean_std": round(float(z.mean(axis=1).std()), 4),
        "z_column_mean_std": round(float(z.mean(axis=0).std()), 4),
        "z_heldout_mean": round(float(z_heldout.mean()), 4),
        "r2_by_rank": rounded(fits["r2_by_rank"]),
        "r2_additive": rounded(fits["r2_additive"]),
        "r2_multiplicative": rounded(fits["r2_multiplicative"]),
        "r2_row_only": rounded(fits["r2_row_only"]),
        "r2_column_only": rounded(fits["r2_column_only"]),
        "r2_shuffled_rank1": round(float(np.mean(shuffled_rank1)), 4),
        "r2_shuffled_rank1_std": round(float(np.std(shuffled_rank1)), 4),
        "singular_values": rounded(lowrank.singular_values(z)[:10].tolist()),
        "test_tasks": test_rows.tolist(),
        "completion": rounded(completion),
        "replay": {**replay_summary, "p_value_predicted_vs_random": replay["p_value_predicted_vs_random"],
                   "p_value_wilcoxon": replay["p_value_wilcoxon"], "pairs": replay["pairs"]},
    }


def make_figures(cfg: LowRankForgettingConfig, out: Path, z: np.ndarray, fits: dict[str, Any],
                 shuffled_rank1: list[float], completion: dict[str, dict[str, float]],
                 replay: dict[str, Any]) -> dict[str, Path]:
    fig_dir = out / "figures"
    figures: dict[str, Path] = {}
    u, _, vt = np.linalg.svd(z, full_matrices=False)
    sign = np.sign(u[:, 0].sum()) or 1.0
    rows, cols = np.argsort(-sign * u[:, 0]), np.argsort(-sign * vt[0])
    figures["z_heatmap"] = save_figure(plot_matrix(
        z[rows][:, cols], title="Forgetting Z (rows and columns sorted by the first factors)", cmap="RdBu_r",
        symmetric=True, xlabel="upstream example", ylabel="fine-tuning task", colorbar_label="loss change (nats)"),
        fig_dir / "z_heatmap.png")
    spectrum = lowrank.singular_values(z)
    ks = np.arange(1, min(10, len(spectrum)) + 1)
    figures["spectrum"] = save_figure(plot_curves(
        {"Z": (ks, spectrum[: len(ks)])}, markers=True, title="Singular values of Z", ylabel="singular value",
        xlabel="index"), fig_dir / "spectrum.png")
    ranks = np.arange(1, len(fits["r2_by_rank"]) + 1)
    figures["r2_by_rank"] = save_figure(plot_curves(
        {"SVD rank k": (ranks, np.array(fits["r2_by_rank"]))}, markers=True,
        hlines={"additive": fits["r2_additive"], "row-shuffled, rank 1": float(np.mean(shuffled_rank1))},
        title="Variance of Z explained", ylabel="R²", xlabel="rank"), fig_dir / "r2_by_rank.png")
    figures["completion"] = save_figure(plot_bars(
        {name: scores["rmse"] for name, scores in completion.items()},
        title=f"Predicting held-out rows from {cfg.revealed} revealed entries", ylabel="RMSE on hidden entries"),
        fig_dir / "completion_rmse.png")
    means, errors = {}, {}
    for condition, values in replay["increase"].items():
        means[condition], errors[condition] = _mean_ci(values)
    figures["replay"] = save_figure(plot_bars(
        means, errors=errors, title=f"Replay at ratio {cfg.replay_ratio} (95% CI over tasks x seeds)",
        ylabel="held-out NLL increase (nats)"), fig_dir / "replay.png")
    return figures


def write_report(cfg: LowRankForgettingConfig, results: dict[str, Any], figures: dict[str, Path], out: Path) -> None:
    m, n = results["shape"]
    report = Report("Low-rank structure of forgetting")
    report.text(
        f"Base: {cfg.model.n_layers} layers, d_model {cfg.model.d_model}, pre-trained {cfg.pretrain.steps} steps on "
        f"{cfg.upstream.corpus_size} sequences of five domains. Z is {m} tasks x {n} upstream examples "
        f"(loss change after fine-tuning from the base); {len(results['test_tasks'])} tasks held out for "
        f"completion and replay.")
    report.table([
        ("mean Z (nats)", results["z_mean"]), ("sd of Z", results["z_std"]),
        ("sd of task means / example means", f"{results['z_row_mean_std']} / {results['z_column_mean_std']}"),
        ("R² by rank 1-5", results["r2_by_rank"]), ("R² additive", results["r2_additive"]),
        ("R² multiplicative (rank 1)", results["r2_multiplicative"]),
        ("R² task-only / example-only", f"{results['r2_row_only']} / {results['r2_column_only']}"),
        ("R² rank 1, row-shuffled control (mean ± sd over shuffles)",
         f"{results['r2_shuffled_rank1']} ± {results['r2_shuffled_rank1_std']}"),
    ])
    report.text(f"Completion of held-out rows from {cfg.revealed} revealed entries "
                f"({cfg.completion_seeds} seeds; F1 of the top {cfg.top_fraction:.0%} most forgotten):")
    report.grid(["method", "RMSE", "F1", "Spearman"],
                [[name, s["rmse"], s["f1"], s["spearman"]] for name, s in results["completion"].items()])
    replay = results["replay"]
    report.text(f"Replay ({cfg.replay_ratio} pool examples per task example; mean held-out NLL increase "
                f"over {replay['pairs']} task x seed pairs, 95% CI):")
    report.grid(["condition", "NLL increase", "95% CI", "reduced forgetting vs none"],
                [[c, replay[c]["mean_heldout_nll_increase"], f"±{replay[c]['ci95']}",
                  replay[c].get("reduced_forgetting", "")] for c in CONDITIONS])
    def p_value(value: float | None) -> str:
        return "n/a (identical outcomes)" if value is None else f"{value:.3g}"

    report.text(f"Predicted vs random replay: paired t-test p = {p_value(replay['p_value_predicted_vs_random'])}, "
                f"Wilcoxon p = {p_value(replay['p_value_wilcoxon'])}.")
    report.figures(figures, out, {
        "z_heatmap": "Forgetting matrix sorted by its first singular vectors",
        "spectrum": "Singular-value spectrum",
        "r2_by_rank": "R² by rank, with the additive fit and the row-shuffled control",
        "completion": "Completion RMSE by method",
        "replay": "Held-out forgetting under each replay condition",
    })
    report.write(out / "report.md")


def _preset(**kw: Any) -> LowRankForgettingConfig:
    return LowRankForgettingConfig(**kw)


PRESETS = {
    "quick": _preset(
        model=ModelConfig(n_layers=2, d_model=128, n_heads=4, d_vocab=96, n_ctx=24),
        pretrain=TrainConfig(steps=3000, batch_size=32, optimizer="adamw", lr=1e-3, warmup_steps=100,
                             schedule="cosine", min_lr_ratio=0.1, eval_every=250, checkpoint_log=0,
                             checkpoint_every=1000),
        finetune=TrainConfig(optimizer="adamw", batch_size=16, log_every=10),
        upstream=UpstreamConfig(),
        tasks=TaskFamilyConfig(n_tasks=40),
    ),
    # One GPU, closer to the published scale: M = 85 tasks (as for OLMo), a 4-layer base
    # model pretrained on a 10x larger corpus, a 4000-example pool. Not yet run: cost unmeasured.
    "gpu": _preset(
        model=ModelConfig(n_layers=4, d_model=256, n_heads=8, d_vocab=512, n_ctx=64),
        pretrain=TrainConfig(steps=20000, batch_size=128, optimizer="adamw", lr=6e-4, warmup_steps=500,
                             schedule="cosine", min_lr_ratio=0.1, eval_every=1000, checkpoint_log=0,
                             checkpoint_every=5000, precision="bf16"),
        finetune=TrainConfig(optimizer="adamw", batch_size=32, log_every=10, precision="bf16"),
        upstream=UpstreamConfig(d_vocab=512, seq_len=64, corpus_size=80000, pool_size=4000, heldout_size=2000,
                                n_facts=256, modulus=23),
        tasks=TaskFamilyConfig(n_tasks=85, steps_choices=(100, 200, 400), lr_choices=(1e-4, 3e-4)),
        test_tasks=20, revealed=200, knn_k=10, mf_rank=8, replay_seeds=5, workers=1,
    ),
    "tiny": _preset(
        model=ModelConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=32, n_ctx=12),
        pretrain=TrainConfig(steps=20, batch_size=8, eval_every=10, checkpoint_log=0),
        finetune=TrainConfig(optimizer="adamw", batch_size=4),
        upstream=UpstreamConfig(d_vocab=32, seq_len=12, corpus_size=200, pool_size=40, heldout_size=20, n_facts=8,
                                modulus=5),
        tasks=TaskFamilyConfig(n_tasks=6, steps_choices=(2, 3)),
        test_tasks=2, revealed=5, completion_seeds=2, knn_k=2, mf_rank=2, replay_seeds=2, shuffle_controls=2,
        workers=1,
    ),
}

ANALYSIS = Analysis(
    name="lowrank-forgetting",
    description="Forgetting matrices of fine-tuning tasks x upstream examples: low-rank fits, completion, replay",
    presets=PRESETS,
    run=run,
    headline=("r2_additive", "r2_shuffled_rank1", "z_mean"),
)

__all__ = ["ANALYSIS", "LowRankForgettingConfig", "example_losses", "run_finetune"]
