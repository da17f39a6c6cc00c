"""interp.sweep: grid expansion, the results table, skipping complete points, failure
isolation, a sweep killed half-way, and the Ray backend against the process pool."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from interp.analysis import CheckpointPolicy
from interp.checkpoints import Run
from interp.cli import main
from interp.cli.info import verify_run
from interp.parallel import LocalBackend, RayBackend
from interp.run_layout import STATE_FILE
from interp.sweep import grid_points, parse_grid, read_table, run_sweep, scalar_results

ANALYSIS = "induction-heads"


def test_grid_points_are_the_product_times_the_seeds():
    points = grid_points({"train.lr": ["1e-3", "3e-3"], "model.d_model": ["16"]}, seeds=[0, 5])
    assert [p.overrides for p in points] == [
        {"train.lr": "1e-3", "model.d_model": "16", "seed": "0"},
        {"train.lr": "1e-3", "model.d_model": "16", "seed": "5"},
        {"train.lr": "3e-3", "model.d_model": "16", "seed": "0"},
        {"train.lr": "3e-3", "model.d_model": "16", "seed": "5"},
    ]
    assert points[0].name == "train.lr=1e-3,model.d_model=16,seed=0"
    assert [p.overrides for p in grid_points({}, seeds=[1])] == [{"seed": "1"}]


@pytest.mark.parametrize("grid, seeds, match", [
    ({"train.lr": []}, [0], "train.lr"), ({"seed": ["1"]}, [0], "--seeds"), ({}, [], "seed"),
    ({"train.lr": ["1e-3", "1e-3"]}, [0], "share a directory"),
])
def test_bad_grids_are_refused(grid, seeds, match):
    with pytest.raises(ValueError, match=match):
        grid_points(grid, seeds)


def test_parse_grid():
    assert parse_grid(["train.lr=1e-3, 2e-3", "model.d_model=16"]) == {"train.lr": ["1e-3", "2e-3"],
                                                                       "model.d_model": ["16"]}
    for bad in ("train.lr", "=1,2", "train.lr="):
        with pytest.raises(ValueError, match="--grid"):
            parse_grid([bad])


def test_scalar_results_flattens_numbers_and_drops_lists():
    results = {"a": 1, "b": 0.5, "ok": True, "name": "L1H2", "curve": [1, 2], "nested": {"x": 2.0, "deep": {"y": 3}}}
    assert scalar_results(results) == {"a": 1.0, "b": 0.5, "ok": 1.0, "nested/x": 2.0, "nested/deep/y": 3.0}


def _results(table):
    return {row["point"]: row["results"] for row in table}


def test_sweep_table_figures_and_skipping_complete_points(tmp_path):
    grid = {"train.lr": ["1e-3", "3e-3"]}
    table = run_sweep(ANALYSIS, tmp_path, "tiny", grid, seeds=[0], backend=LocalBackend(workers=2, torch_threads=1),
                      keep=CheckpointPolicy())
    assert [r["status"] for r in table] == ["ok", "ok"] and not any(r["skipped"] for r in table)
    assert read_table(tmp_path) == table
    assert {r["overrides"]["train.lr"] for r in table} == {"1e-3", "3e-3"}
    assert all("induction_score_final" in r["results"] for r in table)
    assert (tmp_path / "points" / table[0]["point"] / "report.md").exists()
    # keep="all": a complete point's runs keep every checkpoint's weights, the training state of the last only
    runs = [Run.open(p) for p in sorted((tmp_path / "points").glob("*/runs/*"))]
    assert runs and all(run.steps == run.committed_steps and len(run.steps) > 2 for run in runs)
    assert all(len(list(run.path.rglob(STATE_FILE))) == 1 for run in runs)
    figures = {p.name for p in (tmp_path / "figures").glob("*.png")}
    # The tiny preset shows no phase change (phase_change_step is null), so that headline has no figure.
    assert figures == {"induction_score_final_vs_train.lr.png", "repeated_loss_after_vs_train.lr.png"}

    first = tmp_path / "points" / table[0]["point"] / "results.json"
    second = tmp_path / "points" / table[1]["point"] / "results.json"
    stamp = first.stat().st_mtime_ns
    second.unlink()
    again = run_sweep(ANALYSIS, tmp_path, "tiny", grid, seeds=[0], backend=LocalBackend(workers=1, torch_threads=1),
                      keep=CheckpointPolicy())
    assert [r["skipped"] for r in again] == [True, False]
    assert first.stat().st_mtime_ns == stamp
    assert _results(again) == _results(table)  # the re-run point resumed to the same numbers


def test_a_failing_point_is_reported_and_the_others_run(tmp_path):
    table = run_sweep(ANALYSIS, tmp_path, "tiny", {"train.lr": ["1e-3", "-1"]}, seeds=[0],
                      backend=LocalBackend(workers=1, torch_threads=1))
    ok, failed = table
    assert ok["status"] == "ok" and failed["status"] == "failed"
    assert "lr" in failed["error"] and "Traceback" in failed["traceback"]
    assert [r["status"] for r in read_table(tmp_path)] == ["ok", "failed"]


def test_cli_sweep_prints_the_table(tmp_path, capsys):
    assert main(["sweep", ANALYSIS, "--preset", "tiny", "--grid", "train.lr=1e-3", "--seeds", "1",
                 "--workers", "1", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "train.lr=1e-3,seed=0" in printed and "1 points, 0 failed" in printed
    # By default (SWEEP_KEEP) a complete point's runs keep their final weights only, and still verify.
    runs = [Run.open(p) for p in (tmp_path / "points").glob("*/runs/*")]
    assert runs and all(run.steps == [run.committed_steps[-1]] and verify_run(run) == ([], []) for run in runs)
    assert all(len(list(run.path.rglob(STATE_FILE))) == 1 for run in runs)
    # whose numbers could not be computed again from them once its results.json is gone
    next((tmp_path / "points").glob("*/results.json")).unlink()
    assert main(["sweep", ANALYSIS, "--preset", "tiny", "--grid", "train.lr=1e-3", "--seeds", "1",
                 "--workers", "1", "--out", str(tmp_path)]) == 2
    assert "cannot be computed again" in capsys.readouterr().err
    assert main(["sweep", ANALYSIS, "--preset", "nope", "--out", str(tmp_path / "x")]) == 2


@pytest.mark.slow
def test_killed_sweep_finishes_only_the_missing_points(tmp_path):
    command = [sys.executable, "-m", "interp.cli", "sweep", ANALYSIS, "--preset", "tiny", "--seeds", "3",
               "--workers", "1", "--threads", "1", "--out", str(tmp_path)]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "points" / "seed=0" / "results.json"
    deadline = time.monotonic() + 120
    while not first.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert first.exists(), "the first point did not finish before the deadline"
    assert not (tmp_path / "points" / "seed=2" / "results.json").exists(), "the sweep finished before the kill"
    table = run_sweep(ANALYSIS, tmp_path, "tiny", seeds=[0, 1, 2], backend=LocalBackend(workers=1, torch_threads=1))
    assert table[0]["skipped"] and not table[2]["skipped"]
    assert all(r["status"] == "ok" for r in table)


@pytest.mark.slow
def test_ray_backend_gives_the_process_pool_table(tmp_path):
    pytest.importorskip("ray")
    grid = {"train.lr": ["1e-3", "3e-3"]}
    local = run_sweep(ANALYSIS, tmp_path / "local", "tiny", grid, seeds=[0],
                      backend=LocalBackend(workers=2, torch_threads=1))
    ray_backend = RayBackend(torch_threads=1, init_kwargs={"num_cpus": 2})
    on_ray = run_sweep(ANALYSIS, tmp_path / "ray", "tiny", grid, seeds=[0], backend=ray_backend)
    assert [r["status"] for r in on_ray] == ["ok", "ok"]
    assert _results(on_ray) == _results(local)
    assert json.loads((tmp_path / "ray" / "sweep.json").read_text())["analysis"] == ANALYSIS
