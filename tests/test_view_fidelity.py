"""`interp view` draws what the data says: known answers for the example, the fallback circuit,
skipped empty run folders and computed captions, and a scripted Chromium check of each
analysis's tiny page (axis titles on every plot, no curve dropped, every headline figure moved
by the step slider or saying that it is not)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_view import _console_errors, _open, _settle, browser  # noqa: F401 - the module's Chromium fixture, shared

from interp.analysis import run_analysis
from interp.batches import repeated_tokens
from interp.checkpoints import Run
from interp.files import read_json
from interp.model import attention_patterns
from interp.view import example_for, example_patterns, view_data, write_view
from interp.view.circuits import attention_circuit
from interp.view.data import open_source
from interp.view.owner import task_example


def test_the_example_repeats_distinct_tokens_once(trained_run):
    """Each token of the example's period occurs once in it: its induction target is unambiguous."""
    run = open_source(trained_run.path).runs[trained_run.path.name]
    example = example_for(run, 6)
    first, second = example.tokens[:6], example.tokens[6:]
    assert first == second and len(set(first)) == 6
    assert "distinct" in example.description


def test_distinct_repeated_tokens_and_bad_period():
    tokens = repeated_tokens(50, 8, 8, torch.Generator().manual_seed(0), distinct=True)
    assert all(sorted(row[:8].tolist()) == list(range(8)) for row in tokens)  # a period as long as the vocabulary
    torch.testing.assert_close(tokens[:, :8], tokens[:, 8:])
    with pytest.raises(ValueError, match="period: at most d_vocab"):
        repeated_tokens(1, 9, 8, torch.Generator(), distinct=True)


def test_the_fallback_circuit_is_drawn_on_its_own_scale_with_heads_only():
    """Weights of 0.001 stay 0.001 of the full width (scale 1), and no MLP node sits on an edge."""
    prev = np.full((1, 2, 2), 0.1)
    induction = np.full((1, 2, 2), 0.01)
    circuit = attention_circuit(2, 2, [0], {"prev_token": prev, "induction": induction})
    assert circuit["scale"] == 1.0
    assert circuit["weights"] == [[pytest.approx(0.001)] * 4]
    assert not any("MLP" in n.upper() for n in circuit["nodes"])


def test_an_empty_run_folder_is_skipped_with_a_note(trained_run, tmp_path):
    out = tmp_path / "induction"
    shutil.copytree(trained_run.path, out / "runs" / "main")
    (out / "runs" / "x").mkdir()
    (out / "analysis.json").write_text(json.dumps({"analysis": "induction-heads", "preset": "tiny", "config": {}}))
    (out / "results.json").write_text(json.dumps({}))
    source = open_source(out)
    assert list(source.runs) == ["main"]
    assert source.notes == ("runs/x/ is empty (no run files): not shown",)


def test_the_low_rank_caption_claims_rank_1_only_above_its_threshold():
    from analyses.lowrank_forgetting import RANK1_R2, LowRankForgettingResults, rank1_caption

    r = LowRankForgettingResults.__new__(LowRankForgettingResults)
    fields = {"r2_by_rank": [0.76, 0.9], "r2_multiplicative": 0.7, "r2_additive": 0.5, "r2_shuffled_rank1": 0.1}
    for key, value in fields.items():
        object.__setattr__(r, key, value)
    low = rank1_caption(r)
    assert "not close to rank 1" in low and "rank-1 R² 0.76" in low
    object.__setattr__(r, "r2_by_rank", [RANK1_R2 + 0.01])
    assert "is close to rank 1" in rank1_caption(r)


def test_fact_learning_claims_a_plateau_only_when_its_ends_are_known(trained_run, tmp_path):
    from dataclasses import fields

    from analyses.fact_learning import FactLearningResults

    out = tmp_path / "fact-learning"
    shutil.copytree(trained_run.path, out / "runs" / "main")
    (out / "analysis.json").write_text(json.dumps({"analysis": "fact-learning", "preset": "tiny", "config": {}}))
    results = {f.name: None for f in fields(FactLearningResults) if not f.metadata.get("detail")}
    (out / "results.json").write_text(json.dumps(results))
    headline = view_data(out, device="cpu")["headline"]
    assert "plateau" not in headline["title"] and "no plateau to show" in headline["caption"]
    (out / "results.json").write_text(json.dumps({**results, "phase1_end": 2, "plateau_end": 6}))
    headline = view_data(out, device="cpu")["headline"]
    assert headline["title"] == "The recall circuit forms during the plateau"
    assert "step 2 to step 6" in headline["caption"]


# --- each analysis's tiny page in Chromium -----------------------------------------------------------

ANALYSES = ("induction-heads", "anticipatory-recovery", "fact-learning", "icl-transience", "lowrank-forgetting")


@pytest.fixture(scope="session")
def tiny_pages(tmp_path_factory, pytestconfig):
    """Each analysis's tiny preset (run once per session, on first use) with its page written; an
    analysis folder given with `--analysis-dir DIR` (e.g. a quick run's) replaces its analysis's
    tiny run: `pytest tests/test_view_fidelity.py --analysis-dir runs/induction -k induction`."""
    given = {read_json(Path(d) / "analysis.json")["analysis"]: Path(d) for d in pytestconfig.getoption("analysis_dir")}
    made: dict[str, Path] = {}

    def page(name: str) -> Path:
        if name not in made:
            if name in given:
                made[name] = write_view(given[name], device="cpu")
            else:
                out = tmp_path_factory.mktemp("tiny") / name
                run_analysis(name, out, "tiny", progress=False)
                made[name] = write_view(out, device="cpu")
        return made[name]

    return page


AXES = """
const out = [];
for (const el of document.querySelectorAll('.tab.active .js-plotly-plot')) {
  if (el.closest('[hidden]') || !el._fullLayout) continue;
  for (const name of ['xaxis', 'yaxis', 'yaxis2']) {
    const ax = el._fullLayout[name];
    if (!ax || !ax.visible || (name === 'yaxis2' && !ax.overlaying)) continue;
    out.push([el.id, name, (ax.title && ax.title.text) || '']);
  }
}
return out;"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ANALYSES)
def test_every_plot_is_titled_no_curve_is_dropped_and_the_slider_moves_each_headline(name, tiny_pages, browser):  # noqa: F811
    driver = browser
    _open(driver, tiny_pages(name))
    untitled = []
    for tab in ("headline", "curves", "heads"):
        driver.execute_script(f"window.interpView.showTab('{tab}')")
        _settle(driver)
        untitled += [row for row in driver.execute_script(AXES) if not row[2]]
    assert not untitled, f"axes without a title: {untitled}"

    # Curves: every group ticked; the plots hold every curve of every group (or say how many they show).
    counts = driver.execute_script("""
        const v = window.interpView, r = v.data.runs.find((x) => x.name === v.state.run);
        const groups = document.querySelectorAll('#curve-groups input');
        groups.forEach((box) => { if (!box.checked) box.click(); });
        let want = Object.keys(r.metrics).length;
        for (const p of Object.values(r.probes)) want += p.columns.length;
        return want;""")
    _settle(driver)
    drawn, said = driver.execute_script("""
        let drawn = 0, said = 0;
        for (const el of document.querySelectorAll('#curves .js-plotly-plot')) {
          if (el.hidden) continue;
          drawn += el.data.length;
          const m = /the first (\\d+) of (\\d+) curves/.exec(el.layout.title.text);
          if (m) said += +m[2] - +m[1];
        }
        return [drawn, said];""")
    assert drawn + said == counts

    # The headline: each figure changes between the first and last checkpoint, or says the slider does not move it.
    driver.execute_script("window.interpView.showTab('headline')")
    still = driver.execute_script(
        "return [...document.querySelectorAll('#tab-headline .figure')].map((f) => !!f.querySelector('.static-note'))")
    shots = []
    last = "window.interpView.data.runs.find((x) => x.name === window.interpView.state.run).steps.length - 1"
    for end in ("0", last):
        driver.execute_script(f"window.interpView.setStep('a', {end})")
        _settle(driver)
        figures = driver.find_elements("css selector", "#tab-headline .figure")
        shots.append([f.screenshot_as_png for f in figures])
    moved = [a != b for a, b in zip(*shots, strict=True)]
    assert all(m or s for m, s in zip(moved, still, strict=True)), f"{name}: moved {moved}, says still {still}"
    assert _console_errors(driver) + driver.execute_script("return window.interpView.errors") == []


def test_the_icl_example_is_a_task_sequence_with_its_input_vectors(tiny_pages):
    """The few-shot model reads exemplars as input vectors: its example carries them (labelled
    x1, x2, ...), and the page's patterns are the model's own attention on tokens and vectors,
    which token ids alone do not give."""
    out = tiny_pages("icl-transience").parent.parent
    run = Run.open(out / "runs" / "main")
    example = task_example(open_source(out))(run, None)
    assert set(example.inputs) == {"vectors", "vector_mask"} and example.period == 0
    assert example.inputs["vectors"].shape[:2] == (1, len(example.tokens))
    masked = example.inputs["vector_mask"][0].tolist()
    assert [label for label, vector in zip(example.labels, masked, strict=True) if vector] == \
        [f"x{i}" for i in range(1, sum(masked) + 1)]
    step = run.steps[-1]
    shown = example_patterns(run, example, [step], device="cpu", cache=False)[0].astype(np.float32)
    model = run.load(step, device="cpu")
    expected = torch.stack([p[0] for p in attention_patterns(model, example.batch())]).numpy()
    tokens_only = torch.stack([p[0] for p in attention_patterns(model, {"tokens": example.batch()["tokens"]})]).numpy()
    np.testing.assert_allclose(shown, expected, atol=1e-3)
    assert np.abs(expected - tokens_only).max() > 1e-2

    page = view_data(out, device="cpu")
    main = next(r for r in page["runs"] if r["name"] == "main")
    assert main["patterns"] is not None and main["patterns_note"] is None and main["example"]["vectors"]
