"""analyses.anticipatory_recovery: config validation, helpers and a smoke run of the tiny preset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analyses.anticipatory_recovery import PRESETS, ModelSize, sweep_job
from interp.analysis import run_analysis
from interp.checkpoints import Run
from interp.configs import ConfigError, with_overrides


def test_parse_size():
    assert ModelSize.parse("4x128") == ModelSize(4, 128) and str(ModelSize(4, 128)) == "4x128"
    for bad in ("4", "x128", "4x", "0x8", "ax8", "4*128"):
        with pytest.raises(ValueError, match="sizes"):
            ModelSize.parse(bad)


def test_config_validation_names_the_field():
    quick = PRESETS["quick"]
    with pytest.raises(ValueError, match="sizes"):
        with_overrides(quick, {"sizes": "4x128,big"})
    with pytest.raises(ConfigError, match="pairwise_epoch"):
        with_overrides(quick, {"pairwise_epoch": 6})
    with pytest.raises(ConfigError, match="gradient_layer"):
        with_overrides(quick, {"gradient_layer": 4})
    with pytest.raises(ConfigError, match="task.epochs"):
        with_overrides(quick, {"task.epochs": 1})
    with pytest.raises(ConfigError, match="reference_size"):
        with_overrides(quick, {"reference_size": "8x512"})


def test_largest_smallest_and_reference_follow_parameter_cost():
    cfg = with_overrides(PRESETS["quick"], {"sizes": "4x128,1x8,2x64"})
    assert (cfg.largest, cfg.smallest, cfg.reference) == (ModelSize(4, 128), ModelSize(1, 8), ModelSize(4, 128))
    assert with_overrides(cfg, {"reference_size": "2x64"}).reference == ModelSize(2, 64)
    assert cfg.model_sizes == (ModelSize(4, 128), ModelSize(1, 8), ModelSize(2, 64))


def test_sizes_map_to_models_and_episodes_to_the_trainer():
    cfg = PRESETS["quick"]
    job = sweep_job(cfg, ModelSize(2, 128), "shuffled", 3, dense=True)
    model, train = job.model, job.train
    assert job.name == "2x128-shuffled-s3" and (job.task.order, job.task.seed) == ("shuffled", 3)
    assert (model.n_layers, model.d_model, model.n_heads, model.d_mlp, model.seed) == (2, 128, 2, 512, 3)
    assert (model.d_vocab, model.n_ctx) == (cfg.task.d_vocab, cfg.task.doc_len)
    sparse = sweep_job(cfg, ModelSize(1, 8), "cyclic", 0, dense=False)
    assert sparse.model.n_heads == 1
    assert (train.steps, train.batch_size, train.episode_steps, train.checkpoint_every) == (1000, 1, 10, 10)
    assert train.checkpoint_steps == (800,) and sparse.train.checkpoint_every == 0


def test_the_model_follows_the_task_and_train_holds_the_optimizer():
    cfg = with_overrides(PRESETS["quick"], {"task.d_vocab": 100, "task.doc_len": 32, "train.lr": 0.05})
    assert (cfg.model.d_vocab, cfg.model.n_ctx) == (100, 32)
    job = sweep_job(cfg, ModelSize(1, 8), "cyclic", 0, dense=False)
    assert (job.model.d_vocab, job.model.n_ctx) == (100, 32)
    assert (job.train.optimizer, job.train.lr, job.train.reset_optimizer_each_episode) == ("adam", 0.05, True)
    assert with_overrides(cfg, {"orders": "cyclic,shuffled,partial"}).orders == ("cyclic", "shuffled", "partial")


def test_tiny_preset_end_to_end(tmp_path):
    results = run_analysis("anticipatory-recovery", tmp_path, preset="tiny", progress=False)
    cfg = PRESETS["tiny"]
    gaps = cfg.task.epochs - 1
    for key in ("rs_cyclic", "rs_shuffled", "toy_rs"):
        assert len(results[key]) == (gaps if key != "toy_rs" else cfg.toy.epochs - 1)
    assert [p["size"] for p in results["size_sweep"]] == list(cfg.sizes)
    assert {"params", "rs_cyclic", "rs_shuffled", "seed_std"} <= set(results["size_sweep"][0])
    # the document-identity probe: at initialization and after each epoch; directions by cycles apart
    by_epoch = (results["doc_probe_accuracy_by_epoch"], results["doc_probe_control_by_epoch"])
    assert [len(values) for values in by_epoch] == [cfg.task.epochs + 1] * 2
    assert len(results["doc_direction_same_phase"]) == len(results["doc_direction_other_phase"]) == cfg.task.epochs
    assert -1 <= results["doc_direction_cosine_lag_T"] <= 1 and -1 <= results["doc_direction_cosine_lag_half_T"] <= 1

    def reject(constant):
        raise AssertionError(f"results.json holds {constant}, which is not JSON")

    json.loads((tmp_path / "results.json").read_text(), parse_constant=reject)
    assert (tmp_path / "report.md").exists()
    assert len(list((tmp_path / "figures").glob("*.png"))) == 14  # with doc_probe
    reference = Run.open(tmp_path / "runs" / f"{cfg.sizes[-1]}-cyclic-s0")
    episode = cfg.task.steps_per_doc
    assert reference.steps == list(range(0, cfg.task.total_steps + 1, episode))
    saved = json.loads((reference.path / "loss_matrix.json").read_text())
    assert np.array(saved["losses"]).shape == (cfg.task.epochs * cfg.task.n_docs + 1, cfg.task.n_docs)
    other = Run.open(tmp_path / "runs" / f"{cfg.sizes[0]}-shuffled-s1")
    assert other.steps == [0, cfg.pairwise_epoch * cfg.task.n_docs * episode, cfg.task.total_steps]
