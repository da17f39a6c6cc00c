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
`tasks.json` (each task's domain weights, strength, steps and lr); the base run
is `runs/base/`, each fine-tuning run `runs/task<i>-<replay>-seed<s>/`. The pool
and held-out examples are those of `tasks.forgetting.UpstreamCorpus(cfg.upstream)`.

    interp run lowrank-forgetting --preset quick --out runs/lowrank
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from interp import seeding
from interp.analysis import (
    Analysis,
    AnalysisConfig,
    CheckpointPolicy,
    Context,
    Figure,
    Frame,
    Headline,
    JobSetup,
    Matrix,
    ModelConfig,
    Report,
    Run,
    RunsData,
    RunShape,
    Source,
    Table,
    TrainConfig,
    TrainHooks,
    TrainingJob,
    detail,
    final_only,
    nums,
    read_results,
    results_dict,
)
from interp.configs import require, require_positive, to_dict
from interp.files import atomic_write_json, atomic_write_npy, read_json
from interp.ids import CheckpointRef
from interp.metrics import lowrank
from interp.viz import plot_bars, plot_curves, plot_matrix
from tasks import forgetting

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge

Condition = Literal["none", "random", "predicted", "oracle"]
CONDITIONS: tuple[Condition, ...] = ("none", "random", "predicted", "oracle")
REPRESENTATION_STREAM = 3
SCORES = "example_losses.npy"  # a fine-tuning run's final losses: `pool_...` and `heldout_...`
Z_FILE, TASKS_FILE = "z.npy", "tasks.json"  # beside results.json: the forgetting matrix, each task's spec


@dataclass(frozen=True)
class LowRankForgettingConfig(AnalysisConfig):
    """- `train`: the base model's pre-training (its vocabulary and context follow `upstream`);
      `finetune`: optimizer settings of every task's fine-tuning (each task sets its own steps and lr).
    - `test_tasks` rows are held out for completion and replay; `revealed` entries of each
      are shown to the completers, over `completion_seeds` draws.
    - Replay interleaves `replay_ratio` pool examples per task example; predicted and oracle
      replay sample with weights softmax(Z / T), T = `replay_temperature` x the standard
      deviation of the row, over `replay_seeds` seeds per task."""

    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(optimizer="adamw", batch_size=16))
    upstream: forgetting.UpstreamConfig = field(default_factory=forgetting.UpstreamConfig)
    tasks: forgetting.TaskFamilyConfig = field(default_factory=forgetting.TaskFamilyConfig)
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

    def __post_init__(self) -> None:
        self.fit_model(self.upstream.d_vocab, self.upstream.seq_len)
        require_positive(self, "test_tasks", "revealed", "completion_seeds", "knn_k", "mf_rank", "replay_seeds",
                         "shuffle_controls")
        require(self.test_tasks < self.tasks.n_tasks, "test_tasks", f"fewer than tasks.n_tasks={self.tasks.n_tasks}",
                self.test_tasks)
        require(self.revealed < self.upstream.pool_size, "revealed",
                f"fewer than upstream.pool_size={self.upstream.pool_size}", self.revealed)
        require(0 < self.replay_ratio <= 1, "replay_ratio", "a ratio in (0, 1]", self.replay_ratio)
        require(self.replay_temperature > 0, "replay_temperature", "a positive number", self.replay_temperature)
        require(0 < self.top_fraction < 1, "top_fraction", "a fraction in (0, 1)", self.top_fraction)


@dataclass(frozen=True)
class LowRankForgettingResults:
    """The keys of results.json (`replay`: see `lowrank.replay_summary`) and Z."""

    shape: list[int]
    z_mean: float
    z_std: float
    z_row_mean_std: float
    z_column_mean_std: float
    z_heldout_mean: float
    r2_by_rank: list[float]
    r2_additive: float
    r2_multiplicative: float
    r2_row_only: float
    r2_column_only: float
    r2_shuffled_rank1: float
    r2_shuffled_rank1_std: float
    singular_values: list[float]
    test_tasks: list[int]
    completion: dict[str, dict[str, float]]
    replay: dict[str, Any]
    z: np.ndarray = detail()


def setup_base(job: TrainingJob, device: torch.device) -> JobSetup:
    """Pre-training on the corpus, evaluated by the mean pool loss of each domain."""
    corpus = forgetting.upstream_corpus(job.task)
    return JobSetup(corpus, TrainHooks(evaluators={
        "pool": lambda model: corpus.domain_means(lowrank.example_losses(model, corpus.sequences[corpus.pool]))}))


def setup_finetune(job: TrainingJob, device: torch.device) -> JobSetup:
    """Fine-tuning; the worker that trains also scores the final model (`SCORES` in the run)."""
    return JobSetup(job.task.data(), finish=lambda run: score_run(run, job.task.upstream, device))


def score_run(run: Run, upstream: forgetting.UpstreamConfig, device: torch.device) -> None:
    corpus, model = forgetting.upstream_corpus(upstream), run.load(device=device)
    for name, examples in (("pool", corpus.pool), ("heldout", corpus.heldout)):
        atomic_write_npy(run.path / f"{name}_{SCORES}", lowrank.example_losses(model, corpus.sequences[examples]))


def finetune_job(cfg: LowRankForgettingConfig, index: int, base: CheckpointRef, seed: int,
                 condition: Condition = "none", scores: np.ndarray | None = None) -> TrainingJob:
    """Task `index` fine-tuned from `base` (its name is built here only), replaying the pool unless `condition`
    is "none", weighted by softmax(`scores` / T) if given; the "none" job of `cfg.seed` is also a row of Z."""
    spec = forgetting.task_specs(cfg.tasks)[index]
    train = replace(final_only(cfg.finetune), steps=spec.steps, lr=spec.lr, seed=seed, init_from=str(base))
    weights = None if scores is None else tuple(map(float, lowrank.scaled_softmax(scores, cfg.replay_temperature)))
    ratio = 0.0 if condition == "none" else cfg.replay_ratio
    task = forgetting.FineTuningConfig(cfg.upstream, spec, ratio, weights, replay_seed=seed)
    # The analysis reads a fine-tuning run's final losses only (`SCORES`, written by its `finish`), so the
    # run keeps no weights after: its step 0 is the base's checkpoint, referenced, and its last one goes.
    return TrainingJob(f"task{index:03d}-{condition}-seed{seed}", cfg.model, train, task, setup_finetune,
                       keep=CheckpointPolicy(weights="none"))


def train_and_score(ctx: Context, jobs: list[TrainingJob]) -> dict[str, tuple[np.ndarray, ...]]:
    """Train `jobs` (longest first); each run's final per-example losses (pool, held-out), by job name."""
    runs = ctx.train(sorted(jobs, key=lambda job: -job.train.steps))
    return {name: tuple(np.load(run.path / f"{part}_{SCORES}", allow_pickle=False) for part in ("pool", "heldout"))
            for name, run in runs.items()}


def representation_similarity(cfg: LowRankForgettingConfig, model: TransformerBridge,
                              corpus: forgetting.UpstreamCorpus) -> np.ndarray:
    """`S[i, j]`: cosine between task i's mean pooled representation (over a batch
    of its examples) and upstream example j's, under the base model."""
    tasks = [lowrank.pooled_representations(model, forgetting.FineTuningTask(corpus.domains, spec).batch(
        0, 64, seeding.generator(cfg.seed, REPRESENTATION_STREAM, i))["tokens"]).mean(axis=0)
        for i, spec in enumerate(forgetting.task_specs(cfg.tasks))]
    return lowrank.row_cosines(np.stack(tasks), lowrank.pooled_representations(model, corpus.sequences[corpus.pool]))


def replay_jobs(cfg: LowRankForgettingConfig, z: np.ndarray, test_rows: np.ndarray,
                base: CheckpointRef) -> dict[tuple[Condition, int, int], TrainingJob]:
    """Each held-out task under every replay condition and seed. Predicted replay weighs the pool by the
    row completed (MF) from `revealed` entries, other held-out rows unseen; oracle replay by the true row."""
    train_rows = np.setdiff1d(np.arange(len(z)), test_rows)
    jobs = {}
    for row in map(int, test_rows):
        for seed in range(cfg.seed, cfg.seed + cfg.replay_seeds):
            mask = lowrank.reveal_mask(1, z.shape[1], cfg.revealed, seeding.rng(seed, row, 11))[0]
            scores = {"predicted": lowrank.complete_row(z[train_rows], np.where(mask, z[row], np.nan), cfg.mf_rank,
                                                        cfg.mf_reg), "oracle": z[row]}
            for condition in CONDITIONS:
                jobs[condition, row, seed] = finetune_job(cfg, row, base, seed, condition, scores.get(condition))
    return jobs


def base_job(cfg: LowRankForgettingConfig) -> TrainingJob:
    return TrainingJob("base", cfg.model, cfg.train, cfg.upstream, setup_base, show_progress=True)


def held_out_tasks(cfg: LowRankForgettingConfig) -> np.ndarray:
    """The rows of Z whose completion and replay are evaluated (sorted task indices)."""
    return np.sort(seeding.rng(cfg.seed, 7).choice(cfg.tasks.n_tasks, cfg.test_tasks, replace=False))


def run_shapes(cfg: LowRankForgettingConfig) -> list[RunShape]:
    specs, test_rows = forgetting.task_specs(cfg.tasks), held_out_tasks(cfg)
    base = CheckpointRef.of("base")  # the base run, once trained: a plan needs only the shape of its jobs
    replay = cfg.test_tasks * cfg.replay_seeds * len(CONDITIONS) - cfg.test_tasks  # seed-`seed` "none" runs are rows
    return [RunShape("base", base_job(cfg), 1, "pre-training of the base model"),
            RunShape("rows of Z", finetune_job(cfg, 0, base, cfg.seed), len(specs),
                     f"one fine-tuning per task, {round(np.mean([s.steps for s in specs]))} steps on average, from the "
                     "base run's last checkpoint, each scored on the pool and held-out set (its `finish`)",
                     steps=round(np.mean([s.steps for s in specs])), finish=True),
            RunShape("replay", finetune_job(cfg, int(test_rows[0]), base, cfg.seed, "random"), replay,
                     f"{cfg.test_tasks} held-out tasks x {cfg.replay_seeds} seeds x {len(CONDITIONS)} conditions, less "
                     "the rows already trained", steps=round(np.mean([specs[i].steps for i in test_rows])),
                     unknown="the predicted and oracle replay weights come from the rows' forgetting matrix",
                     measure_as="rows of Z")]


def measure(cfg: LowRankForgettingConfig, ctx: Context) -> LowRankForgettingResults:
    corpus, specs = forgetting.upstream_corpus(cfg.upstream), forgetting.task_specs(cfg.tasks)
    base = ctx.train([base_job(cfg)])["base"]
    model = base.load(device=ctx.device)
    before_pool = lowrank.example_losses(model, corpus.sequences[corpus.pool])
    before_heldout = lowrank.example_losses(model, corpus.sequences[corpus.heldout])
    similarity = representation_similarity(cfg, model, corpus)
    base_ref = CheckpointRef.of(base.path)

    rows = [finetune_job(cfg, i, base_ref, cfg.seed) for i in range(len(specs))]
    after = train_and_score(ctx, rows)
    z = lowrank.forgetting_matrix(before_pool, np.stack([after[job.name][0] for job in rows]))
    z_heldout = lowrank.forgetting_matrix(before_heldout, np.stack([after[job.name][1] for job in rows]))
    atomic_write_npy(ctx.out / Z_FILE, z)
    atomic_write_npy(ctx.out / "z_heldout.npy", z_heldout)
    atomic_write_json(ctx.out / TASKS_FILE, [to_dict(spec) for spec in specs])

    test_rows = held_out_tasks(cfg)
    completion = lowrank.evaluate_completion(
        z, test_rows, cfg.revealed, lowrank.completion_predictors(cfg.knn_k, cfg.mf_rank, cfg.mf_reg, similarity),
        seeds=range(cfg.seed, cfg.seed + cfg.completion_seeds), top_fraction=cfg.top_fraction)

    replay = replay_jobs(cfg, z, test_rows, base_ref)
    after |= train_and_score(ctx, [job for job in replay.values() if job.name not in after])
    increase = {c: np.array([float((after[job.name][1] - before_heldout).mean())
                             for (condition, _, _), job in replay.items() if condition == c]) for c in CONDITIONS}
    summary = lowrank.rounded(lowrank.matrix_summary(z, cfg.shuffle_controls, cfg.seed))
    return LowRankForgettingResults(
        shape=list(z.shape), z_mean=summary.z_mean, z_std=summary.z_std, z_row_mean_std=summary.z_row_mean_std,
        z_column_mean_std=summary.z_column_mean_std, z_heldout_mean=lowrank.rounded(z_heldout.mean()),
        r2_by_rank=summary.fits.r2_by_rank, r2_additive=summary.fits.r2_additive,
        r2_multiplicative=summary.fits.r2_multiplicative, r2_row_only=summary.fits.r2_row_only,
        r2_column_only=summary.fits.r2_column_only, r2_shuffled_rank1=summary.r2_shuffled_rank1,
        r2_shuffled_rank1_std=summary.r2_shuffled_rank1_std, singular_values=summary.singular_values,
        test_tasks=test_rows.tolist(), completion=lowrank.rounded(completion),
        replay=lowrank.replay_summary(increase), z=z)


def figures(cfg: LowRankForgettingConfig, results: LowRankForgettingResults, ctx: Context) -> list[Figure]:
    z, replay = results.z, results.replay
    rows, cols = lowrank.first_factor_order(z)
    return [
        Figure("z_heatmap", "Forgetting matrix sorted by its first singular vectors", plot_matrix(
            z[rows][:, cols], title="Forgetting Z (rows and columns sorted by the first factors)", cmap="RdBu_r",
            symmetric=True, xlabel="upstream example", ylabel="fine-tuning task", colorbar_label="loss change (nats)")),
        Figure("spectrum", "Singular-value spectrum", plot_curves(
            {"Z": (np.arange(1, len(results.singular_values) + 1), np.array(results.singular_values))}, markers=True,
            title="Singular values of Z", ylabel="singular value", xlabel="index")),
        Figure("r2_by_rank", "R² by rank, with the additive fit and the row-shuffled control", plot_curves(
            {"SVD rank k": (np.arange(1, len(results.r2_by_rank) + 1), np.array(results.r2_by_rank))}, markers=True,
            hlines={"additive": results.r2_additive, "row-shuffled, rank 1": results.r2_shuffled_rank1},
            title="Variance of Z explained", ylabel="R²", xlabel="rank")),
        Figure("completion_rmse", "Completion RMSE by method", plot_bars(
            {name: scores["rmse"] for name, scores in results.completion.items()},
            title=f"Predicting held-out rows from {cfg.revealed} revealed entries", ylabel="RMSE on hidden entries")),
        Figure("replay", "Held-out forgetting under each replay condition", plot_bars(
            {c: replay[c]["mean_heldout_nll_increase"] for c in CONDITIONS},
            errors={c: replay[c]["ci95"] for c in CONDITIONS}, ylabel="held-out NLL increase (nats)",
            title=f"Replay at ratio {cfg.replay_ratio} (95% CI over tasks x seeds)")),
    ]


def report(cfg: LowRankForgettingConfig, results: LowRankForgettingResults) -> Report:
    r, replay = results, results.replay

    def p_value(value: float | None) -> str:
        return "n/a (identical outcomes)" if value is None else f"{value:.3g}"

    return (
        Report("Low-rank structure of forgetting")
        .text(f"Base: {cfg.model.n_layers} layers, d_model {cfg.model.d_model}, pre-trained {cfg.train.steps} steps "
              f"on {cfg.upstream.corpus_size} sequences of five domains. Z is {r.shape[0]} tasks x {r.shape[1]} "
              f"upstream examples (loss change after fine-tuning from the base); {len(r.test_tasks)} tasks held out "
              "for completion and replay.")
        .table([("mean Z (nats)", r.z_mean), ("sd of Z", r.z_std),
                ("sd of task means / example means", f"{r.z_row_mean_std} / {r.z_column_mean_std}"),
                ("R² by rank 1-5", r.r2_by_rank), ("R² additive", r.r2_additive),
                ("R² multiplicative (rank 1)", r.r2_multiplicative),
                ("R² task-only / example-only", f"{r.r2_row_only} / {r.r2_column_only}"),
                ("R² rank 1, row-shuffled control (mean ± sd over shuffles)",
                 f"{r.r2_shuffled_rank1} ± {r.r2_shuffled_rank1_std}")])
        .figures("z_heatmap", "spectrum", "r2_by_rank")
        .text(f"Completion of held-out rows from {cfg.revealed} revealed entries "
              f"({cfg.completion_seeds} seeds; F1 of the top {cfg.top_fraction:.0%} most forgotten):")
        .grid(["method", "RMSE", "F1", "Spearman"],
              [[name, s["rmse"], s["f1"], s["spearman"]] for name, s in r.completion.items()])
        .figures("completion_rmse")
        .text(f"Replay ({cfg.replay_ratio} pool examples per task example; mean held-out NLL increase "
              f"over {replay['pairs']} task x seed pairs, 95% CI):")
        .grid(["condition", "NLL increase", "95% CI", "reduced forgetting vs none"],
              [[c, replay[c]["mean_heldout_nll_increase"], f"±{replay[c]['ci95']}",
                replay[c].get("reduced_forgetting", "")] for c in CONDITIONS])
        .text(f"Predicted vs random replay: paired t-test p = {p_value(replay['p_value_predicted_vs_random'])}, "
              f"Wilcoxon p = {p_value(replay['p_value_wilcoxon'])}.")
        .figures("replay")
    )


PRESETS = {
    "quick": LowRankForgettingConfig(
        model=ModelConfig(n_layers=2, d_model=128, n_heads=4),
        train=TrainConfig(steps=3000, batch_size=32, optimizer="adamw", lr=1e-3, warmup_steps=100, schedule="cosine",
                          min_lr_ratio=0.1, eval_every=250, checkpoint_log=0, checkpoint_every=1000),
        tasks=forgetting.TaskFamilyConfig(n_tasks=40),  # finetune and upstream: the defaults
    ),
    # One GPU, closer to the published scale: M = 85 tasks (as for OLMo), a 4-layer base
    # model pretrained on a 10x larger corpus, a 4000-example pool. Not yet run: cost unmeasured.
    "gpu": LowRankForgettingConfig(
        model=ModelConfig(n_layers=4, d_model=256, n_heads=8),
        train=TrainConfig(steps=20000, batch_size=128, optimizer="adamw", lr=6e-4, warmup_steps=500, schedule="cosine",
                          min_lr_ratio=0.1, eval_every=1000, checkpoint_log=0, checkpoint_every=5000, precision="bf16"),
        finetune=TrainConfig(optimizer="adamw", batch_size=32, log_every=10, precision="bf16"),
        upstream=forgetting.UpstreamConfig(d_vocab=512, seq_len=64, corpus_size=80000, pool_size=4000,
                                           heldout_size=2000, n_facts=256, modulus=23),
        tasks=forgetting.TaskFamilyConfig(n_tasks=85, steps_choices=(100, 200, 400), lr_choices=(1e-4, 3e-4)),
        test_tasks=20, revealed=200, knn_k=10, mf_rank=8, replay_seeds=5,
    ),
    "tiny": LowRankForgettingConfig(
        model=ModelConfig(n_layers=1, d_model=16, n_heads=2),
        train=TrainConfig(steps=20, batch_size=8, eval_every=10, checkpoint_log=0),
        finetune=TrainConfig(optimizer="adamw", batch_size=4),
        upstream=forgetting.UpstreamConfig(d_vocab=32, seq_len=12, corpus_size=200, pool_size=40, heldout_size=20,
                                           n_facts=8, modulus=5),
        tasks=forgetting.TaskFamilyConfig(n_tasks=6, steps_choices=(2, 3)),
        test_tasks=2, revealed=5, completion_seeds=2, knn_k=2, mf_rank=2, replay_seeds=2, shuffle_controls=2,
    ),
}

def view(source: Source, runs: RunsData) -> Headline:
    """The explorer's headline: Z sorted by its first factors (a rank-1 matrix is a smooth gradient)."""
    r = read_results(source.path, LowRankForgettingResults)
    figures: list[Matrix | Table] = []
    if (source.path / Z_FILE).exists():
        z = np.load(source.path / Z_FILE, allow_pickle=False)
        rows, cols = lowrank.first_factor_order(z)
        specs = read_json(source.path / TASKS_FILE) if (source.path / TASKS_FILE).exists() else []
        labels = []
        for i in rows:
            spec = specs[i] if i < len(specs) and isinstance(specs[i], dict) else {}
            weights = spec.get("domain_weights") or []
            domain = f", mostly domain {int(np.argmax(weights))}" if weights else ""
            labels.append(f"task {i}{domain}")
        figures.append(Matrix("Forgetting matrix Z sorted by its first factors",
                              [Frame("", [nums(row) for row in z[rows][:, cols]])], [f"ex {c}" for c in cols], labels,
                              "upstream example", "fine-tuning task",
                              "Loss increase on each upstream example after fine-tuning on each task; rows and "
                              "columns in the order of the first singular vectors: a rank-1 (multiplicative) "
                              "matrix shows as a smooth gradient from one corner."))
    figures.append(Table.of(results_dict(r), ("shape", "r2_by_rank", "r2_multiplicative", "r2_additive",
                                              "r2_shuffled_rank1", "singular_values", "completion", "replay")))
    return Headline("Low-rank forgetting", rank1_caption(r), figures)


RANK1_R2 = 0.9
"""The rank-1 R² from which the headline calls the forgetting matrix close to rank 1."""


def rank1_caption(r: LowRankForgettingResults) -> str:
    """The headline's caption: "close to rank 1" only when the rank-1 fit's R² reaches `RANK1_R2`;
    otherwise what the fits give."""
    rank1 = r.r2_by_rank[0] if r.r2_by_rank else None
    numbers = (f"rank-1 R² {rank1:.3g}, multiplicative {r.r2_multiplicative:.3g}, additive {r.r2_additive:.3g}, "
               f"row-shuffled rank-1 control {r.r2_shuffled_rank1:.3g}") if rank1 is not None else "no rank fits"
    if rank1 is not None and rank1 >= RANK1_R2:
        return f"The M x N forgetting matrix is close to rank 1 ({numbers}; close means R² >= {RANK1_R2})."
    return f"The M x N forgetting matrix's low-rank fits: {numbers} (not close to rank 1: that needs R² >= {RANK1_R2})."


ANALYSIS = Analysis("lowrank-forgetting", "Forgetting matrices of fine-tuning tasks x upstream examples: low-rank "
                    "fits, completion, replay", PRESETS, measure, figures, report, preset_workers={"gpu": 1, "tiny": 1},
                    headline=("r2_additive", "r2_shuffled_rank1", "z_mean"), view=view, run_shapes=run_shapes)

__all__ = ["ANALYSIS", "LowRankForgettingConfig", "finetune_job"]
