"""analyses.fact_learning: patch references, the plateau window, config checks and a smoke run of the tiny preset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analyses.fact_learning import PRESETS, SEEN, left_plateau_step, log_spaced, patch_references, plateau_window
from interp.analysis import run_analysis
from interp.checkpoints import Run
from interp.configs import ConfigError, with_overrides
from interp.ids import CheckpointRef
from interp.metrics import spans
from tasks.biographies import model_shape


class _LossCurve:
    """A stand-in for a run: only the seen-people loss series."""

    def __init__(self, steps, loss):
        self.steps_values = np.asarray(steps), np.asarray(loss, dtype=float)

    def series(self, key):
        assert key == f"{SEEN}/loss"
        return self.steps_values

    @property
    def config(self):
        return {"baseline": 3.0}

    @property
    def steps(self):
        return self.steps_values[0].tolist()


def test_patch_references_come_from_the_phases_and_the_step_that_left_the_plateau():
    steps = np.arange(0, 1100, 100)
    run = _LossCurve(steps, [9.0, 6.0, 3.5, 3.05, 3.0, 3.0, 2.95, 2.7, 2.45, 1.5, 1.0])
    cfg = PRESETS["quick"]  # pause_below 0.5: first below 2.5 at step 800
    assert left_plateau_step(run, cfg) == 800
    assert left_plateau_step(_LossCurve(steps, [3.0] * 11), cfg) is None
    phases = spans.PlateauPhases(phase1_end=300, plateau_end=700, plateau_length=400, plateau_over_phase1=4 / 3)
    assert patch_references(run, cfg, phases, after=800) == {"before": 100, "inside": 500, "after": 800}
    assert patch_references(run, cfg, phases)["after"] == 1000  # no pause: the last checkpoint


def test_plateau_window_spans_near_baseline_to_twice_the_plateau_end():
    steps = np.arange(0, 1100, 100)
    loss = np.array([9.0, 6.0, 3.5, 3.05, 3.0, 3.0, 2.95, 2.5, 2.0, 1.5, 1.0])
    window = plateau_window(_LossCurve(steps, loss), PRESETS["quick"], baseline=3.0, plateau_end=400)
    raw_steps, excess = window["seen people"]
    # smoothed over 3: 7.5, 6.17, 4.18, 3.18, ... first within 1 nat at step 300; kept up to step 800
    assert raw_steps.tolist() == [300, 400, 500, 600, 700, 800]
    assert excess == pytest.approx(loss[3:9] - 3.0)
    assert window["smoothed over 3 evaluations"][1][0] == pytest.approx((3.5 + 3.05 + 3.0) / 3 - 3.0)
    assert window["baseline ± 0.1"][1].tolist() == [0.0] * 6


@pytest.mark.parametrize("key, value, field", [
    ("alphas", "0", "alphas"),
    ("pause_below", 0.05, "pause_below"), ("warmup_steps", 0, "warmup_steps"), ("patch_steps", "99999", "patch_steps"),
    ("train.eval_every", 0, "train.eval_every"), ("n_sweep", "10", "n_sweep"), ("replay_ratio", 0, "replay_ratio"),
])
def test_bad_config_names_the_field(key, value, field):
    with pytest.raises(ConfigError, match=field):
        with_overrides(PRESETS["quick"], {key: value})


def test_the_model_shape_follows_the_pool_sizes():
    cfg = with_overrides(PRESETS["quick"], {"data.days": "8", "data.cities": "20"})
    more_cities, fewer_days = 20 - PRESETS["quick"].data.cities, 28 - 8
    expected = (PRESETS["quick"].model.d_vocab + more_cities - fewer_days, 51)
    assert (cfg.model.d_vocab, cfg.model.n_ctx) == model_shape(cfg.data) == expected
    assert with_overrides(PRESETS["quick"], {"model.d_vocab": "10", "model.n_ctx": "8"}) == PRESETS["quick"]


def test_tiny_preset_end_to_end(tmp_path):
    results = run_analysis("fact-learning", tmp_path, preset="tiny", progress=False)
    cfg = PRESETS["tiny"]
    for key in ("baseline", "phase1_end", "plateau_end", "final_accuracy", "unseen_loss_final", "recall_half_step"):
        assert key in results
    for key in ("value_probe_initial", "value_probe_final"):  # by position, then layer
        assert {where: list(layers) for where, layers in results[key].items()} == {"name": ["layer0"],
                                                                                  "query": ["layer0"]}
    assert set(results["value_probe_half_step"]) == {"name", "query"}
    assert [r["n_individuals"] for r in results["plateau_by_n"]] == sorted([cfg.data.n_individuals, *cfg.n_sweep])
    assert [r["alpha"] for r in results["alpha_sweep"]] == [0.0, *cfg.alphas]
    assert {"none", "replay"} == set(results["finetune"])
    assert set(results["finetune"]["none"]) >= {"old_loss_before", "old_loss_peak", "old_loss_after"}
    assert len(results["patching"]) == 3

    def reject(constant):
        raise AssertionError(f"results.json holds {constant}, which is not JSON")

    json.loads((tmp_path / "results.json").read_text(), parse_constant=reject)
    assert len(list((tmp_path / "figures").glob("*.png"))) >= 10
    main = Run.open(tmp_path / "runs" / "main")
    assert main.steps == list(range(0, cfg.train.steps + 1, cfg.train.checkpoint_every))
    assert (main.path / "vocab.json").exists()
    finetuned = Run.open(tmp_path / "runs" / "finetune-none")
    assert finetuned.config["init_from"]["step"] == cfg.train.steps
    assert finetuned.config["task"]["type"] == "BiographiesConfig"
    patched = Run.open(tmp_path / "runs" / "patch-after")
    assert CheckpointRef.parse(patched.config["patch_from"]) == CheckpointRef.of(main.path, cfg.train.steps)
    again = run_analysis("fact-learning", tmp_path, preset="tiny", progress=False, resume=True)
    assert again["final_loss"] == results["final_loss"]  # finished runs are reused as they are


def test_a_failing_run_leaves_the_others_finished_and_resume_repeats_only_it(tmp_path, monkeypatch):
    """One internal training run fails: the analysis names it, every other run of that
    stage ends with its last checkpoint, and a resumed analysis trains only the failed run."""
    import analyses.fact_learning as fact_learning
    from interp.parallel import JobsFailed

    real_setup = fact_learning.setup_job

    def alpha_fails(job, device):
        if job.params.kind == "alpha":
            raise RuntimeError("simulated crash")
        return real_setup(job, device)

    monkeypatch.setattr(fact_learning, "setup_job", alpha_fails)
    with pytest.raises(JobsFailed, match=r"1 of 4 jobs failed .*alpha0\.5: RuntimeError: simulated crash"):
        run_analysis("fact-learning", tmp_path, preset="tiny", progress=False)
    cfg = PRESETS["tiny"]
    finished = {name: Run.open(tmp_path / "runs" / name) for name in ("main", "n20", "warmup")}
    assert all(run.steps[-1] == cfg.train.steps for run in finished.values())
    mtimes = {name: (run.path / "metrics.jsonl").stat().st_mtime_ns for name, run in finished.items()}

    monkeypatch.setattr(fact_learning, "setup_job", real_setup)
    results = run_analysis("fact-learning", tmp_path, preset="tiny", progress=False, resume=True)
    assert [r["alpha"] for r in results["alpha_sweep"]] == [0.0, *cfg.alphas]
    assert {name: (run.path / "metrics.jsonl").stat().st_mtime_ns for name, run in finished.items()} == mtimes


def test_the_main_run_pauses_after_its_plateau_and_continues_beside_the_patching_runs(tmp_path, monkeypatch):
    """With a baseline the tiny run's loss falls below, the main run pauses at its first
    evaluation 0.2 under it (step 8), patches from there, and then trains to its end."""
    import tasks.biographies

    monkeypatch.setattr(tasks.biographies.Biographies, "baseline", lambda self: 7.2)  # seen loss 7.07 .. 6.94
    results = run_analysis("fact-learning", tmp_path, preset="tiny", overrides={"pause_below": 0.2}, progress=False)
    assert [(r["reference"], r["reference_step"]) for r in results["patching"]] == [
        ("before", 0), ("inside", 4), ("after", 8)]
    assert Run.open(tmp_path / "runs" / "main").steps == [0, 4, 8, 12]
    # The plateau "ends" at once: sweep and patching runs stop when the smoothing window after it is complete.
    assert [r["last_step"] for r in results["patching"]] == [8, 8, 8]
    assert [r["last_step"] for r in results["plateau_by_n"]] == [8, 12]


@pytest.mark.parametrize("key, value", [("llc_sequences", 0), ("llc_checkpoints", 2), ("llc_checkpoints", -1)])
def test_bad_llc_settings_name_the_field(key, value):
    with pytest.raises(ConfigError, match=key):
        with_overrides(PRESETS["quick"], {key: value})


def test_llc_checkpoints_are_log_spaced():
    """Dense where the phases are early, the first and last always; all of them with 0."""
    steps = list(range(0, 9001, 100))
    assert log_spaced(steps, 0) == steps and log_spaced(steps[:5], 10) == steps[:5]
    # step 0, then 4 targets from 100 to 9000 at ratio 90^(1/3): 100, 448, 2008, 9000
    assert log_spaced(steps, 5) == [0, 100, 400, 2000, 9000]


@pytest.mark.slow
def test_llc_reports_stages_beside_the_plateau(tmp_path, capsys):
    """`--set llc=true` adds the LLC's stages beside the end of phase 1 and of the plateau to
    results, report and figures; results without them still read back; the analysis draws training
    biographies, so `interp llc` runs on its main run."""
    from analyses.fact_learning import FactLearningResults, training_rows
    from interp import seeding
    from interp.analysis import read_results
    from interp.cli import main

    out = tmp_path / "facts-llc"
    assert main(["run", "fact-learning", "--preset", "tiny", "--out", str(out), "--quiet", "--set", "llc=true",
                 "--set", "llc_checkpoints=3", "--set", "llc_sampler.draws=4", "--set", "llc_sampler.burn_in=1",
                 "--set", "llc_sampler.chains=2", "--set", "llc_sampler.batch_size=4",
                 "--set", "llc_sequences=16"]) == 0
    results = json.loads((out / "results.json").read_text())
    development = results["development"]
    checkpoints = Run.open(out / "runs" / "main").steps
    assert development["stages"]["llc_checkpoints"] == len(log_spaced(checkpoints, 3))
    assert development["stages"]["llc_settings"].startswith("lr=0.001,")
    assert "llc.png" in {p.name for p in (out / "figures").glob("*.png")}
    assert "Developmental stages" in (out / "report.md").read_text()
    assert read_results(out, FactLearningResults).development.stages.llc_checkpoints >= 3
    del results["development"]
    (out / "results.json").write_text(json.dumps(results))
    assert read_results(out, FactLearningResults).development is None

    capsys.readouterr()
    assert main(["llc", str(out / "runs" / "main"), "--chains", "2", "--draws", "4", "--burn-in", "1",
                 "--sequences", "16", "--batch-size", "4"]) == 0
    assert "minibatches of 4 from 16 rows" in capsys.readouterr().out
    rows = training_rows(Run.open(out / "runs" / "finetune-none"), 8, seeding.generator(0, 1))
    assert set(rows["individual"].tolist()) <= set(range(40 + 8, 40 + 8 + 8))  # the tiny preset's new people
