"""docs/extending.md: its worked example is a complete analysis that runs, and stays short;
a broken analysis module does not stop the others."""

from __future__ import annotations

import json
import re
import sys
import types
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import interp.analysis as analysis_module
from interp.analysis import AnalysisImportError, get_analysis, load_all, run_analysis
from interp.cli import main
from interp.view import view_data

PAGE = Path(__file__).parents[1] / "docs" / "extending.md"
GROUP = analysis_module.ENTRY_POINT_GROUP


def example_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) == 1, "the page holds one Python module"
    return blocks[0]


@pytest.fixture
def registered(monkeypatch):
    """The worked example registered as `prev-token`, beside a deliberately broken entry point."""
    module = types.ModuleType("prev_token_example")
    monkeypatch.setitem(sys.modules, "prev_token_example", module)
    exec(compile(example_source(), str(PAGE), "exec"), module.__dict__)  # noqa: S102 - our own documentation
    real = analysis_module._entry_points()
    extra = {"prev-token": EntryPoint("prev-token", "prev_token_example:ANALYSIS", GROUP),
             "broken": EntryPoint("broken", "no_such_module_for_tests:ANALYSIS", GROUP)}
    monkeypatch.setattr(analysis_module, "_entry_points", lambda: {**real, **extra})


def test_the_example_is_at_most_120_lines():
    assert len(example_source().splitlines()) <= 120


@pytest.mark.slow
def test_the_example_runs_end_to_end(registered, tmp_path):
    results = run_analysis("prev-token", tmp_path, preset="tiny", device="cpu", progress=False)
    assert re.fullmatch(r"L0H\d", results["best_head"])
    assert 0 <= results["final_score"] <= 1
    assert json.loads((tmp_path / "results.json").read_text())["final_score"] == results["final_score"]
    assert (tmp_path / "figures" / "prev_scores.png").exists()
    report = (tmp_path / "report.md").read_text()
    assert "figures/prev_scores.png" in report and "Previous-token heads" in report
    assert json.loads((tmp_path / "runs" / "main" / "config.json").read_text())["task"]["type"] == \
        "RepeatedSegmentsConfig"
    headline = view_data(tmp_path, device="cpu")["headline"]  # the example's own view, not the generic one
    assert headline["title"] == "Previous-token heads forming" and headline["run"] == "main"
    assert [f["type"] for f in headline["figures"]] == ["lines", "heads"]
    assert [s["name"] for s in headline["figures"][0]["series"]] == ["L0H0", "L0H1"]
    assert headline["figures"][1]["head"] == results["best_head"]


def test_the_example_imports_the_contract_from_one_module():
    modules = set(re.findall(r"^from (\S+) import", example_source(), flags=re.M))
    assert "interp.analysis" in modules
    assert not modules & {"interp.pipeline", "interp.report", "interp.train", "interp.probing", "interp.headline"}


def test_a_broken_analysis_is_named_and_does_not_stop_the_others(registered, capsys):
    with pytest.raises(AnalysisImportError, match="broken.*no_such_module_for_tests"):
        get_analysis("broken")
    loaded, broken = load_all()
    assert "prev-token" in loaded and "induction-heads" in loaded and set(broken) == {"broken"}
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "broken" in out and "BROKEN" in out and "induction-heads" in out
    assert main(["run", "broken", "--preset", "tiny"]) == 2
    assert "no_such_module_for_tests" in capsys.readouterr().err


@pytest.mark.slow
def test_another_analysis_runs_beside_a_broken_one(registered, tmp_path):
    assert main(["run", "prev-token", "--preset", "tiny", "--out", str(tmp_path), "--quiet", "--device", "cpu"]) == 0


def test_a_run_gives_back_its_task_config(tmp_path):
    from interp.checkpoints import Run
    from interp.configs import ConfigError
    from interp.pipeline import read_task, task_record
    from tasks.induction import RecurringPairsConfig, RepeatedSegmentsConfig

    task = RecurringPairsConfig(d_vocab=16, seq_len=16)
    run = Run.create(tmp_path / "run", {"task": task_record(task)})
    assert read_task(run, RecurringPairsConfig) == task
    with pytest.raises(ConfigError, match="task.type"):
        read_task(run, RepeatedSegmentsConfig)
