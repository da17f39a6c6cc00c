"""`interp run --plan` (`interp.plan`): what a preset trains and costs, known answers, nothing written."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
import torch

from interp.analysis import get_analysis
from interp.cli import main
from interp.model import ModelConfig, build_model, count_parameters
from interp.plan import CPU_CAVEAT, time_slice, trainable_parameter_count, training_flops

# Runs each tiny preset trains, counted in the runs/ folder of a real `interp run NAME --preset tiny`.
TINY_RUNS = {"induction-heads": 1, "icl-transience": 4, "fact-learning": 9, "lowrank-forgetting": 21,
             "anticipatory-recovery": 8}


def table_rows(text: str) -> dict[str, list[str]]:
    """The plan table's rows by shape label (columns are separated by two spaces or more)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("shape")) + 2
    rows = {}
    for line in lines[start:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0].removesuffix(" *")] = cells
    return rows


@pytest.mark.parametrize("name", sorted(TINY_RUNS))
def test_the_plan_of_each_tiny_preset_counts_its_runs_and_parameters_and_writes_nothing(
        name, tmp_path, monkeypatch, capsys):
    work, scratch = tmp_path / "work", tmp_path / "scratch"
    work.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(work)  # the default --out, runs/NAME, would land here
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # the timed slice's checkpoint goes here, then away
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["run", name, "--preset", "tiny", "--plan", "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert not (tmp_path / "out").exists() and not list(work.iterdir())
    assert not list(scratch.glob("interp_plan_*"))  # (torch may leave its own kernel cache there)

    rows = table_rows(text)
    assert int(rows["total"][1]) == TINY_RUNS[name]
    shapes = get_analysis(name).run_shapes(get_analysis(name).presets["tiny"])
    assert sum(int(rows[s.label][1]) for s in shapes) == TINY_RUNS[name]
    for shape in shapes:
        assert int(rows[shape.label][2].replace(",", "")) == count_parameters(build_model(shape.job.model))
    assert CPU_CAVEAT in text and "FLOPs = 6*N*T" in text


def test_training_flops_of_a_hand_computed_config():
    """2 attention-only layers, d_model 8 (2 heads of 4), vocabulary 10, context 4, no norms:
    per layer W_Q, W_K, W_V, W_O (4 x 8 x 8) and their biases (3 x 8 + 8) = 288; the unembedding
    W_U = 80; N = 2 x 288 + 80 = 656 (the embedding tables, 10 x 8 + 4 x 8, are lookups).
    10 steps of 3 x 4 tokens: T = 120; FLOPs = 6 N T + 6 L n_ctx d_attn T
    = 6 x 656 x 120 + 6 x 2 x 4 x 8 x 120 = 472,320 + 46,080 = 518,400."""
    cfg = ModelConfig(n_layers=2, d_model=8, n_heads=2, d_vocab=10, n_ctx=4, attn_only=True, normalization="none")
    assert trainable_parameter_count(cfg) == count_parameters(build_model(cfg)) == 656 + 10 * 8 + 4 * 8
    assert training_flops(cfg, 10 * 3 * 4) == 518_400


def test_a_step_that_cannot_be_timed_here_says_why(tmp_path):
    """A slice shorter than any step: the real batch is not timed, and the plan says so with the numbers."""
    analysis = get_analysis("induction-heads")
    job = analysis.run_shapes(analysis.presets["tiny"])[0].job
    timing = time_slice(job, torch.device("cpu"), seconds=0.0, max_steps=1, scratch=Path(tmp_path))
    assert timing.step_s is None and timing.steps_measured == 0
    assert re.match(r"a step of \d+ rows? takes .* s here, so one at batch 8 up to ~.*: beyond the 0 s slice",
                    timing.untimed)
