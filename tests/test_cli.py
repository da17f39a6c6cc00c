"""CLI smoke test: the whole induction-heads pipeline on the `tiny` preset, in seconds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from interp.cli import main


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "induction"
    assert main(["run", "induction-heads", "--preset", "tiny", "--out", str(out), "--quiet", "--seed", "3"]) == 0
    return out


def test_run_writes_results_report_and_figures(tiny_out):
    results = json.loads((tiny_out / "results.json").read_text())
    for key in (
        "phase_change_step",
        "induction_score_final",
        "prev_token_score_final",
        "repeated_loss_before",
        "repeated_loss_after",
    ):
        assert key in results
    assert 0.0 <= results["induction_score_final"] <= 1.0
    assert (tiny_out / "report.md").read_text().startswith("# Induction heads")
    figures = {p.name for p in (tiny_out / "figures").glob("*.png")}
    assert {"loss_curves.png", "induction_scores.png", "prev_scores.png", "induction_grids.png"} <= figures
    config = json.loads((tiny_out / "runs" / "main" / "config.json").read_text())
    assert config["model"]["seed"] == 3 and config["train"]["seed"] == 3


def test_info_probe_plot(tiny_out, capsys, tmp_path):
    assert main(["info", str(tiny_out)]) == 0
    assert "checkpoints: " in capsys.readouterr().out
    csv = tmp_path / "prev.csv"
    assert main(["probe", str(tiny_out), "prev-token", "--layers", "0", "--csv", str(csv)]) == 0
    table = np.loadtxt(csv, delimiter=",", skiprows=1)
    assert table.shape[1] == 1 + 2  # step + two heads of layer 0
    # cached under the analysis's own key for the probe: one file holds both computations
    caches = tiny_out / "runs" / "main" / "probes"
    assert not (caches / "prev_token.jsonl").exists()
    names = {json.loads(line)["probe"] for line in (caches / "prev.jsonl").read_text().splitlines()}
    assert names == {"prev_token(layers=(0, 1))", "prev_token(layers=(0,))"}
    assert main(["plot", str(tiny_out)]) == 0
    assert (tiny_out / "runs" / "main" / "figures" / "metrics_train.png").exists()


def test_list_names_the_analysis(capsys):
    assert main(["list"]) == 0
    assert "induction-heads" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "no-such-analysis"], "unknown analysis"),
        (["run", "induction-heads", "--preset", "huge"], "preset"),
        (["run", "induction-heads", "--preset", "tiny", "--set", "train.lr=-1"], "lr"),
        (["run", "induction-heads", "--preset", "tiny", "--set", "model.bogus=1"], "model.bogus"),
        (["run", "induction-heads", "--preset", "tiny", "--set", "noequals"], "key=value"),
        # an execution setting (--workers), not a field of the config
        (["run", "induction-heads", "--preset", "tiny", "--set", "workers=2"], "workers: expected a field of"),
        (["info", "/nonexistent/run"], "no run directory"),
    ],
)
def test_bad_input_gives_a_named_error(argv, message, capsys, tmp_path):
    if argv[0] == "run":
        argv = [*argv, "--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_an_analysis_written_with_workers_in_its_config_resumes_unchanged(tiny_out, tmp_path):
    """Every analysis.json written while `workers` was a config field holds it (0 unless set):
    such a directory resumes, the key dropped when the configs are compared, to the same results."""
    out = tmp_path / "old"
    shutil.copytree(tiny_out, out)
    record = json.loads((out / "analysis.json").read_text())
    assert "workers" not in record["config"]
    (out / "analysis.json").write_text(json.dumps({**record, "config": {**record["config"], "workers": 0}}))
    before = json.loads((out / "results.json").read_text())
    assert main(["run", "induction-heads", "--preset", "tiny", "--out", str(out), "--quiet", "--seed", "3",
                 "--workers", "1", "--resume"]) == 0
    after = json.loads((out / "results.json").read_text())
    assert {k: v for k, v in after.items() if k != "wall_seconds"} == \
        {k: v for k, v in before.items() if k != "wall_seconds"}
    assert json.loads((out / "analysis.json").read_text()) == record  # rewritten as configs are now


def test_probe_rejects_a_layer_out_of_range(tiny_out, capsys):
    assert main(["probe", str(tiny_out), "induction", "--layers", "5"]) == 2
    assert "--layers" in capsys.readouterr().err


def test_llc_at_every_checkpoint_on_the_training_distribution(tiny_out, capsys, tmp_path):
    """`interp llc` samples rows of the task the run was trained on (its analysis draws them),
    caches one computation per sampler setting, and answers a second call from the cache."""
    argv = ["llc", str(tiny_out), "--chains", "2", "--draws", "6", "--burn-in", "2", "--sequences", "16",
            "--batch-size", "4", "--csv", str(tmp_path / "llc.csv")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    steps = json.loads((tiny_out / "runs" / "main" / "manifest.json").read_text())
    table = np.loadtxt(tmp_path / "llc.csv", delimiter=",", skiprows=1, ndmin=2)
    assert table.shape[1] >= 1 + 4  # step, llc, llc_std, init_loss, trustworthy (and per-chain estimates)
    assert "2 chains x 6 draws after 2 burn-in" in out and "trustworthy" in out
    cache = tiny_out / "runs" / "main" / "probes" / "llc.jsonl"
    rows = cache.read_text().splitlines()
    assert len(rows) == len(table) and steps
    assert main(argv) == 0
    assert cache.read_text().splitlines() == rows  # answered from the cache


@pytest.mark.parametrize(("extra", "message"), [
    (["--lr", "0"], "--lr"), (["--draws", "2"], "--draws"), (["--batch", "/nonexistent.safetensors"], "no batch file"),
])
def test_llc_refuses_bad_settings_in_one_line(tiny_out, capsys, extra, message):
    assert main(["llc", str(tiny_out), *extra]) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]  # after argparse's usage, one line


def test_llc_of_a_run_of_no_analysis_asks_for_a_batch(trained_run, capsys):
    assert main(["llc", str(trained_run.path)]) == 2
    assert "--batch" in capsys.readouterr().err


def test_llc_per_head_gives_each_heads_refined_llc(tiny_out, capsys, tmp_path):
    csv = tmp_path / "rllc.csv"
    assert main(["llc", str(tiny_out), "--per-head", "--steps", "0", "20", "--chains", "2", "--draws", "4",
                 "--burn-in", "1", "--sequences", "8", "--batch-size", "4", "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "refined LLC per head" in out and "L1H1" in out
    header = csv.read_text().splitlines()[0].split(",")
    assert {f"rllc/llc/L{layer}H{head}" for layer in range(2) for head in range(2)} <= set(header)
    assert len(csv.read_text().splitlines()) == 1 + 2


def test_induction_with_llc_reports_its_stages(tmp_path):
    """`--set llc=true` adds the LLC's stages beside the phase change to results, report and
    figures; results without them (llc off, or written before) still read back."""
    from analyses.induction_heads import InductionResults
    from interp.analysis import read_results

    out = tmp_path / "induction-llc"
    settings = {"llc": "true", "llc_per_head": "true", "llc_per_head_checkpoints": 3, "llc_sampler.draws": 4,
                "llc_sampler.burn_in": 1, "llc_sampler.chains": 2, "llc_sampler.batch_size": 4, "llc_sequences": 16}
    assert main(["run", "induction-heads", "--preset", "tiny", "--out", str(out), "--quiet",
                 *(arg for key, value in settings.items() for arg in ("--set", f"{key}={value}"))]) == 0
    development = json.loads((out / "results.json").read_text())["development"]
    assert development["llc_settings"].startswith("lr=0.001,") and set(development["rllc_final"]) == {
        "L0H0", "L0H1", "L1H0", "L1H1"}
    estimates = {row["step"]: row["values"]["llc"] for row in map(json.loads, (out / "runs" / "main" / "probes" /
                                                                             "llc.jsonl").read_text().splitlines())}
    peak = max(estimates, key=estimates.get)  # the peak among every checkpoint's LLC, not the per-head ones' steps
    assert (development["llc_peak_step"], development["llc_peak"]) == (peak, estimates[peak])
    assert {"llc.png", "rllc_heads.png"} <= {p.name for p in (out / "figures").glob("*.png")}
    assert "Developmental stages" in (out / "report.md").read_text()
    assert read_results(out, InductionResults).development.rllc_final is not None
    results = json.loads((out / "results.json").read_text())
    del results["development"]
    (out / "results.json").write_text(json.dumps(results))
    assert read_results(out, InductionResults).development is None
