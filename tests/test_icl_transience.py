"""analyses.icl_transience: config validation and a smoke run of the tiny preset."""

from __future__ import annotations

import json

import pytest

from analyses.icl_transience import PRESETS
from interp.analysis import run_analysis
from interp.checkpoints import Run
from interp.configs import ConfigError, with_overrides


@pytest.mark.parametrize("key, value, field", [
    ("model.n_layers", 1, "model.n_layers"), ("train.eval_every", 0, "train.eval_every"),
    ("l2_sweep", "0", "l2_sweep"), ("icl_kind", "iwl", "icl_kind"), ("induction_threshold", 0, "induction_threshold"),
])
def test_bad_config_names_the_field(key, value, field):
    with pytest.raises(ConfigError, match=field):
        with_overrides(PRESETS["quick"], {key: value})


def test_l2_sweep_must_not_repeat_the_main_run():
    with pytest.raises(ConfigError, match="l2_sweep"):
        with_overrides(PRESETS["quick"], {"train.l2": 1e-4, "l2_sweep": "1e-4,1e-3"})


def test_the_model_follows_the_task():
    cfg = with_overrides(PRESETS["quick"], {"model.d_vocab": 10, "model.n_ctx": 4, "model.d_input": 3})
    assert (cfg.model.d_vocab, cfg.model.n_ctx, cfg.model.d_input) == (cfg.data.d_vocab, cfg.data.n_ctx, cfg.data.dim)
    cfg = with_overrides(PRESETS["quick"], {"data.n_labels": 40, "data.context_pairs": 4, "data.dim": 16})
    assert (cfg.model.d_vocab, cfg.model.n_ctx, cfg.model.d_input) == (41, 9, 16)


class Recording:
    """An in-process backend that remembers the launches (`.name`, `.job`) it ran."""

    def __init__(self):
        self.jobs = []

    def imap(self, fn, items):
        self.jobs += list(items)
        for index, item in enumerate(items):
            yield index, fn(item)


@pytest.mark.slow
def test_tiny_preset_end_to_end(tmp_path):
    backend = Recording()
    results = run_analysis("icl-transience", tmp_path, preset="tiny", progress=False, backend=backend)
    cfg = PRESETS["tiny"]
    assert [launch.name for launch in backend.jobs] == ["main", *(f"l2-{lam:g}" for lam in cfg.l2_sweep), "control",
                                                        "no-decay"]
    jobs = {launch.name: launch.job for launch in backend.jobs}
    assert jobs["l2-0.001"].train.l2 == 0.001 and jobs["l2-0.001"].train.l2_only == cfg.l2_only
    assert jobs["control"].task.query_copies_context and not jobs["main"].task.query_copies_context
    assert Run.open(tmp_path / "runs" / "no-decay").config["train"]["weight_decay"] == 0
    for key in ("icl_peak", "icl_peak_step", "icl_final", "iwl_final", "train_loss_first", "train_loss_final",
                "circuits_at_peak", "circuits_final", "ablation_at_peak", "negative_control", "no_decay_control",
                "coopetition_toy", "dla_at_peak", "cross_checkpoint", "in_weights_probe_final",
                "in_weights_probe_half_step", "iwl_half_step", "in_context_probe_peak", "in_context_probe_peak_step"):
        assert key in results
    assert [r["lambda"] for r in results["l2_sweep"]] == [cfg.train.l2, *cfg.l2_sweep]
    assert 0 <= results["icl_peak"] <= 1 and results["icl_peak"] >= results["icl_final"]
    drops = results["ablation_at_peak"]["icl_drop_by_head"]
    assert len(drops) == cfg.model.n_layers and len(drops[0]) == cfg.model.n_heads
    assert len(results["ablation_at_peak"]["heads"]) >= 1
    assert set(results["dla_final"]) == {"train", "icl_novel", "iwl"}
    cross = results["cross_checkpoint"]
    assert set(cross["weights"]) == {"embed", "L0H0", "L0H1", "MLP0", "L1H0", "L1H1", "MLP1", "logits"}

    def reject(constant):
        raise AssertionError(f"results.json holds {constant}, which is not JSON")

    json.loads((tmp_path / "results.json").read_text(), parse_constant=reject)
    figures = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert len(figures) == 17  # with dla_split, cross_checkpoint and answer_probes
    report = (tmp_path / "report.md").read_text()
    assert all(f"figures/{name}" in report for name in figures)
    main = Run.open(tmp_path / "runs" / "main")
    assert main.steps == [0, 4, 8]
    assert Run.open(tmp_path / "runs" / "control").config["task"]["query_copies_context"] is True


def test_llc_sequences_must_be_positive():
    with pytest.raises(ConfigError, match="llc_sequences"):
        with_overrides(PRESETS["quick"], {"llc_sequences": 0})


TINY_SAMPLER = ["--set", "llc_sampler.draws=4", "--set", "llc_sampler.burn_in=1", "--set", "llc_sampler.chains=2",
                "--set", "llc_sampler.batch_size=4", "--set", "llc_sequences=16"]


@pytest.mark.slow
def test_llc_reports_stages_beside_the_icl_peak_and_the_mlps_refined_llc(tmp_path, capsys):
    """`--set llc=true` adds the LLC's stages beside the ICL peak and the IWL rise, and the last
    MLP's refined LLC, to results, report and figures; results without them still read back; the
    analysis draws training rows (few-shot sequences with input vectors), so `interp llc` runs on its main run."""
    from analyses.icl_transience import ICLTransienceResults
    from interp.analysis import read_results
    from interp.cli import main

    out = tmp_path / "icl-llc"
    assert main(["run", "icl-transience", "--preset", "tiny", "--out", str(out), "--quiet", "--set", "llc=true",
                 *TINY_SAMPLER]) == 0
    results = json.loads((out / "results.json").read_text())
    development = results["development"]
    assert development["stages"]["llc_settings"].startswith("lr=0.001,")
    assert development["mlp"] == "MLP1" and development["stages"]["llc_checkpoints"] == 3
    assert development["icl_peak_step"] == results["icl_peak_step"]
    assert {"llc.png", "mlp_rllc.png"} <= {p.name for p in (out / "figures").glob("*.png")}
    report = (out / "report.md").read_text()
    assert "Developmental stages" in report and "refined LLC of MLP1" in report
    assert read_results(out, ICLTransienceResults).development.mlp_rllc_trusted >= 0
    del results["development"]
    (out / "results.json").write_text(json.dumps(results))
    assert read_results(out, ICLTransienceResults).development is None

    capsys.readouterr()
    assert main(["llc", str(out / "runs" / "main"), "--chains", "2", "--draws", "4", "--burn-in", "1",
                 "--sequences", "16", "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "minibatches of 4 from 16 rows" in printed and len([line for line in printed.splitlines()
                                                               if line.strip().startswith(("0 ", "4 ", "8 "))]) == 3
