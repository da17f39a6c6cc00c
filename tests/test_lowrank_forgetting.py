"""analyses.lowrank_forgetting: config validation and a smoke run of the tiny preset."""

from __future__ import annotations

import json

import pytest

from analyses.lowrank_forgetting import PRESETS
from interp.analysis import run_analysis
from interp.configs import ConfigError, with_overrides


@pytest.mark.parametrize("key, value, field", [("test_tasks", 40, "test_tasks"), ("revealed", 600, "revealed"),
                                                ("replay_ratio", 0, "replay_ratio"),
                                                ("upstream.d_vocab", 64, "upstream.d_vocab")])
def test_bad_config_names_the_field(key, value, field):
    with pytest.raises(ConfigError, match=field):
        with_overrides(PRESETS["quick"], {key: value})


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
    assert (tmp_path / "report.md").exists()
