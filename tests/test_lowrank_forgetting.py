"""analyses.lowrank_forgetting: config validation, the runs it trains and a smoke run of the tiny preset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analyses.lowrank_forgetting import CONDITIONS, PRESETS, finetune_job, setup_base
from interp.analysis import TrainingJob, run_analysis
from interp.checkpoints import Run
from interp.cli.info import verify_run
from interp.configs import ConfigError, with_overrides
from interp.files import bytes_in
from interp.ids import CheckpointRef
from interp.pipeline import estimate_disk
from interp.run_layout import STATE_FILE, WEIGHTS_FILE
from tasks.forgetting import FineTuningTask, task_specs


@pytest.mark.parametrize("key, value, field", [("test_tasks", 40, "test_tasks"), ("revealed", 600, "revealed"),
                                                ("replay_ratio", 0, "replay_ratio")])
def test_bad_config_names_the_field(key, value, field):
    with pytest.raises(ConfigError, match=field):
        with_overrides(PRESETS["quick"], {key: value})


def test_the_model_follows_the_upstream_corpus():
    cfg = with_overrides(PRESETS["quick"], {"upstream.d_vocab": 64, "upstream.seq_len": 32})
    assert (cfg.model.d_vocab, cfg.model.n_ctx) == (64, 32)


def test_finetune_job_starts_from_the_base_and_replays_only_when_asked():
    cfg, base = PRESETS["tiny"], CheckpointRef("runs/base")
    spec = task_specs(cfg.tasks)[3]
    plain = finetune_job(cfg, 3, base, seed=1)
    assert plain.train.init_from == "runs/base" and (plain.train.steps, plain.train.lr) == (spec.steps, spec.lr)
    assert plain.task.spec == spec and plain.task.replay_ratio == 0 and isinstance(plain.task.data(), FineTuningTask)
    scores = np.linspace(0, 1, cfg.upstream.pool_size)
    replayed = finetune_job(cfg, 3, base, seed=1, condition="predicted", scores=scores)
    assert replayed.name != plain.name and replayed.task.replay_ratio == cfg.replay_ratio
    weights = np.array(replayed.task.replay_weights)
    assert weights.sum() == pytest.approx(1) and np.all(np.diff(weights) > 0)  # more forgotten, more replayed
    assert finetune_job(cfg, 3, base, seed=1, condition="random").task.replay_weights is None


def test_tiny_preset_end_to_end(tmp_path):
    results = run_analysis("lowrank-forgetting", tmp_path, preset="tiny", progress=False)
    cfg = PRESETS["tiny"]
    assert results["shape"] == [cfg.tasks.n_tasks, cfg.upstream.pool_size]
    assert len(results["r2_by_rank"]) == 5
    assert set(results["completion"]) == {"additive", "knn", "mf", "example mean", "representation similarity"}
    assert set(results["replay"]) >= {"none", "random", "predicted", "oracle", "p_value_predicted_vs_random"}
    assert results["replay"]["pairs"] == cfg.test_tasks * cfg.replay_seeds

    def reject(constant):
        raise AssertionError(f"results.json holds {constant}, which is not JSON")

    json.loads((tmp_path / "results.json").read_text(), parse_constant=reject)
    assert len(list((tmp_path / "figures").glob("*.png"))) == 5
    report = (tmp_path / "report.md").read_text()
    assert all(f"figures/{png.name}" in report for png in (tmp_path / "figures").glob("*.png"))
    # The base, one run per task, and every replay run but those of seed cfg.seed without replay (rows of Z).
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 + cfg.tasks.n_tasks + cfg.test_tasks * (len(CONDITIONS) * cfg.replay_seeds - 1)
    base = json.loads((tmp_path / "runs" / "base" / "config.json").read_text())
    assert base["task"]["type"] == "UpstreamConfig"
    # A fine-tuning run keeps its scores, config and log but no weights (its step 0 was the base's, referenced),
    # and still verifies; the base keeps every checkpoint's weights, the training state of its last only.
    for path in runs:
        run = Run.open(path)
        assert verify_run(run) == ([], [])
        if path.name == "base":
            assert run.steps == run.committed_steps == [0, 20]
            assert [p.parent.name for p in path.rglob(STATE_FILE)] == ["step_000020"]
        else:
            assert run.steps == [] and run.committed_steps[0] == 0 and not list(path.rglob(WEIGHTS_FILE))
            assert (path / "pool_example_losses.npy").exists() and (path / "heldout_example_losses.npy").exists()
    # The disk estimate of each job (what --plan shows) is within 25% of what its run takes.
    base_job = TrainingJob("base", cfg.model, cfg.train, cfg.upstream, setup_base)
    assert estimate_disk(base_job).kept == pytest.approx(bytes_in(tmp_path / "runs" / "base"), rel=0.25)
    row = finetune_job(cfg, 0, CheckpointRef("runs/base"), cfg.seed)
    scores = sum(p.stat().st_size for p in (tmp_path / "runs" / row.name).glob("*_example_losses.npy"))
    assert estimate_disk(row).kept == pytest.approx(bytes_in(tmp_path / "runs" / row.name) - scores, rel=0.25)
    # Resumed, every finished run is taken as it is (its scores are not recomputed from released weights).
    again = run_analysis("lowrank-forgetting", tmp_path, preset="tiny", progress=False, resume=True)
    assert {k: v for k, v in again.items() if k != "wall_seconds"} == {
        k: v for k, v in results.items() if k != "wall_seconds"}


def test_the_gpu_preset_fits_in_a_gigabyte_and_a_half_of_disk():
    """The base keeps its five checkpoints; each of the 466 fine-tuning runs its log and scores only (before the
    checkpoint policies: a step-0 copy and the final weights each, 13.6 MB apiece, about 12.7 GB in all)."""
    cfg = PRESETS["gpu"]
    rows = [finetune_job(cfg, i, CheckpointRef("runs/base"), cfg.seed) for i in range(cfg.tasks.n_tasks)]
    replays = cfg.test_tasks * (len(CONDITIONS) * cfg.replay_seeds - 1)
    scores = 2 * 8 * (cfg.upstream.pool_size + cfg.upstream.heldout_size)  # float64 losses, pool and held-out
    per_row = sum(estimate_disk(job).kept for job in rows) / len(rows) + scores
    base = estimate_disk(TrainingJob("base", cfg.model, cfg.train, cfg.upstream, setup_base))
    total = base.kept + (len(rows) + replays) * per_row
    assert total < 1.5e9 and base.kept > 5 * 13e6
