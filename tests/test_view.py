"""`interp view`: the explorer's data, its caches, bad input, the CLI, and the page in a real
headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium)."""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, fields
from importlib.metadata import EntryPoint
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import interp.analysis as analysis_module
from interp.analysis import (
    Analysis,
    Headline,
    Heads,
    Lines,
    Mark,
    Series,
    Table,
    VLine,
    detail,
    main_run,
    read_results,
    results_dict,
    run_analysis,
)
from interp.checkpoints import Run
from interp.circuits.graph import CircuitGraph, GraphSource, ModelShape, save_graphs
from interp.cli import main
from interp.hooks import hook_name
from interp.ids import CheckpointRef, EdgeId, HeadId
from interp.probing import ProbeTable
from interp.view import VIEW_DIR, ViewError, example_for, example_patterns, owner, view_data, write_view
from interp.view import page as page_module
from interp.view import patterns as patterns_module
from interp.view.checkpoint_cache import PATTERNS_DIR

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def analysis_dir(tmp_path_factory) -> Path:
    """The induction-heads analysis on its tiny preset (seconds), with its view written."""
    out = tmp_path_factory.mktemp("view") / "induction"
    run_analysis("induction-heads", out, "tiny", progress=False)
    write_view(out, device="cpu")
    return out


def _run_data(data: dict, name: str = "main") -> dict:
    return next(r for r in data["runs"] if r["name"] == name)


def _leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.endswith(".tmp"))


# --- the data and its caches -----------------------------------------------------------------------


def test_view_is_one_offline_page(analysis_dir):
    page = analysis_dir / VIEW_DIR / "index.html"
    html = page.read_text()
    assert page.stat().st_size < 4e6
    assert "<script src" not in html and "<link rel=\"stylesheet\"" not in html  # nothing loaded from elsewhere
    assert "plotly.js (cartesian - minified) v4.1.1" in html
    assert _leftovers(analysis_dir) == []
    payload = html.split('<script type="application/json" id="view-data">', 1)[1].split("</script>", 1)[0]
    data = json.loads(payload)
    assert data["format"] == "interp.view/1" and data["analysis"] == "induction-heads"
    assert [r["name"] for r in data["runs"]] == ["main"]


def test_patterns_are_cached_per_checkpoint_hash_and_match_a_bridge_forward(analysis_dir):
    run = Run.open(analysis_dir / "runs" / "main")
    example = example_for(run, 6)  # the tiny preset's probe period, read from analysis.json by the view
    folder = run.path / PATTERNS_DIR / example.key
    assert sorted(p.name for p in folder.glob("*.npy")) == sorted(f"{run.checkpoint_hash(s)[:16]}.npy"
                                                                  for s in run.steps)
    assert json.loads((folder / "example.json").read_text())["tokens"] == list(example.tokens)
    stored = example_patterns(run, example)
    assert stored.dtype == np.float16 and stored.shape == (len(run.steps), 2, 2, 12, 12)
    model = run.load(run.steps[-1], device="cpu")
    with torch.no_grad():
        _, cache = model.run_with_cache(example.batch()["tokens"],
                                        names_filter=[hook_name("pattern", 0), hook_name("pattern", 1)])
    for layer in range(2):
        np.testing.assert_allclose(stored[-1, layer].astype(np.float32), cache[hook_name("pattern", layer)][0].numpy(),
                                   atol=2e-3)
    np.testing.assert_allclose(stored[..., :, :].astype(np.float32).sum(-1), 1.0, atol=1e-2)  # rows sum to 1


def test_a_second_view_computes_nothing_and_shows_the_same(analysis_dir, monkeypatch):
    before = view_data(analysis_dir, device="cpu")

    def refuse(*args, **kwargs):
        raise AssertionError("patterns were computed again")

    monkeypatch.setattr(patterns_module, "_compute_patterns", refuse)
    after = view_data(analysis_dir, device="cpu")
    assert {**before, "generated": ""} == {**after, "generated": ""}


def _stored_probe(run: Run, key: str) -> dict[int, dict[str, float]]:
    """The raw rows of a probe cache at the run's checkpoints (matching weights), by step."""
    rows = [json.loads(line) for line in (run.path / "probes" / f"{key}.jsonl").read_text().splitlines()]
    return {r["step"]: r["values"] for r in rows if r["weights"] == run.checkpoint_hash(r["step"])}


def test_page_values_are_the_probe_cache_and_the_patterns(analysis_dir):
    data = view_data(analysis_dir, device="cpu")
    run, shown = Run.open(analysis_dir / "runs" / "main"), _run_data(data)
    induction = shown["probes"]["induction"]
    assert induction["steps"] == run.steps and induction["heads"]
    assert induction["columns"] == ["L0H0", "L0H1", "L1H0", "L1H1"]
    stored = _stored_probe(run, "induction")
    for step, row in zip(induction["steps"], induction["values"], strict=True):
        np.testing.assert_allclose(row, [stored[step][c] for c in induction["columns"]], rtol=1e-4)
    patterns = shown["patterns"]
    assert patterns["steps"] == run.steps and patterns["shape"] == [2, 2, 12, 12]
    saved = example_patterns(run, example_for(run, 6))
    rows, cols = np.tril_indices(12)
    decoded = np.frombuffer(base64.b64decode(patterns["data"][-1]), dtype="<f2").reshape(2, 2, -1)
    np.testing.assert_array_equal(decoded, saved[-1][..., rows, cols])
    scores = shown["probes"]["example.induction"]
    expected = patterns_module.pattern_scores(saved, 6)["induction"][-1].reshape(-1)
    np.testing.assert_allclose(scores["values"][-1], expected, rtol=1e-4)


def test_induction_headline_and_marks(analysis_dir):
    data = view_data(analysis_dir, device="cpu")
    headline = data["headline"]
    results = json.loads((analysis_dir / "results.json").read_text())
    found = results["phase_change_step"] is not None  # the title claims the phase change only where it was found
    assert headline["title"] == ("Induction heads forming" if found else "Induction scores (no phase change found)")
    assert headline["run"] == "main"
    kinds = [f["type"] for f in headline["figures"]]
    assert kinds == ["lines", "heads", "table"]
    lines = headline["figures"][0]
    assert {s["name"] for s in lines["series"]} >= {"L1H0 induction score", "L1H1 induction score"}
    assert headline["figures"][1]["head"] == results["induction_head"]
    assert dict(headline["figures"][2]["rows"])["induction_head"] == results["induction_head"]


def test_saved_circuit_graphs_are_shown_and_attention_graph_is_the_fallback(trained_run, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(trained_run.path, path)
    run = Run.open(path)
    fallback = _run_data(view_data(path, device="cpu"), "run")["circuits"]
    assert [c["method"] for c in fallback] == ["attention metrics"]
    assert all(e["input"] == "k" and e["sender"].startswith("L0") for e in fallback[0]["edges"])
    shape = ModelShape(2, 2, False)
    edges = [EdgeId.parse("L0H1->L1H0.k"), EdgeId.parse("embed->L0H0.q"), EdgeId.parse("L1H1->logits")]
    graphs = [CircuitGraph("path patching", step, shape, {e: (i + 1) * 0.1 * step for i, e in enumerate(edges)},
                           "logit difference") for step in run.steps[::2]]
    source = GraphSource("hand-made path patching", "no-batch", "float32/cpu")
    save_graphs(run, "patch", graphs, source)
    shown = _run_data(view_data(path, device="cpu"), "run")["circuits"]
    assert [c["key"] for c in shown] == ["patch"]
    circuit = shown[0]
    assert circuit["graph_set"] == str(source.set_id) and circuit["source"] == f"circuits/patch/{source.set_id}"
    assert circuit["steps"] == run.steps[::2] and circuit["method"] == "path patching"
    names = [e["edge"] for e in circuit["edges"]]
    assert sorted(names) == sorted(str(e) for e in edges)
    for graph, row in zip(graphs, circuit["weights"], strict=True):
        for name, weight in zip(names, row, strict=True):
            assert weight == pytest.approx(graph.weights[EdgeId.parse(name)], rel=1e-4)
    assert circuit["positions"]["L1H0"] == list(shape.position(HeadId(1, 0)))


def test_other_headlines_read_their_analysis_files(trained_run, tmp_path):
    """Recovery: pairwise and residual matrices per epoch from loss_matrix.json; low-rank: Z
    sorted by its first factors; both from a hand-made analysis directory around a tiny run
    (results: every field of the analysis's results null but those given)."""
    from analyses.anticipatory_recovery import RecoveryResults
    from analyses.lowrank_forgetting import LowRankForgettingResults

    def analysis(name: str, results_type: type, given: dict, runs: list[str]) -> Path:
        out = tmp_path / name
        for run_name in runs:
            shutil.copytree(trained_run.path, out / "runs" / run_name)
        (out / "analysis.json").write_text(json.dumps({"analysis": name, "preset": "tiny", "config": {}}))
        results = {f.name: None for f in fields(results_type) if not f.metadata.get("detail")}
        (out / "results.json").write_text(json.dumps({**results, **given}))
        return out

    out = analysis("anticipatory-recovery", RecoveryResults, {"reference_size": "1x8", "seeds": [0]},
                   ["1x8-cyclic-s0"])
    schedule, n = [0, 1, 2, 0, 1, 2], 3
    losses = np.arange(7 * n, dtype=float).reshape(7, n) ** 1.5
    (out / "runs" / "1x8-cyclic-s0" / "loss_matrix.json").write_text(
        json.dumps({"schedule": schedule, "losses": losses.tolist()}))
    headline = view_data(out, device="cpu")["headline"]
    assert headline["run"] == "1x8-cyclic-s0"
    pairwise = next(f for f in headline["figures"] if f["title"].startswith("Pairwise"))
    assert [f["label"] for f in pairwise["frames"]] == ["epoch 1", "epoch 2"]
    np.testing.assert_allclose(pairwise["frames"][1]["z"][2], losses[6] - losses[5], rtol=1e-4)
    residual = next(f for f in headline["figures"] if f["title"].startswith("Loss residual"))
    block = losses[3:7]
    np.testing.assert_allclose(residual["frames"][1]["z"], block - block.mean(axis=0), rtol=1e-4, atol=1e-9)

    out = analysis("lowrank-forgetting", LowRankForgettingResults, {"r2_multiplicative": 0.9}, ["base"])
    z = np.outer([3.0, 1.0, 2.0], [1.0, 4.0, 2.0, 3.0])
    np.save(out / "z.npy", z)
    (out / "tasks.json").write_text(json.dumps([{"domain_weights": [0.9, 0.1]}] * 3))
    matrix = view_data(out, device="cpu")["headline"]["figures"][0]
    assert matrix["y"][0] == "task 0, mostly domain 0"
    np.testing.assert_allclose(matrix["frames"][0]["z"], z[[0, 2, 1]][:, [1, 3, 2, 0]])


def test_an_analysis_can_give_the_example_sequence_of_its_task(trained_run, tmp_path, monkeypatch, caplog):
    """`Analysis.example(run)` (fact learning: a biography) replaces the random repeat; a hook
    that fails for a run falls back to it with a warning."""
    out = tmp_path / "fact-learning"
    shutil.copytree(trained_run.path, out / "runs" / "main")
    (out / "analysis.json").write_text(json.dumps({"analysis": "fact-learning", "preset": "tiny", "config": {}}))
    (out / "results.json").write_text(json.dumps({}))
    task_tokens = [1, 4, 2, 7, 3, 5]
    monkeypatch.setattr(owner, "get_analysis",
                        lambda name: SimpleNamespace(name=name, example=lambda run: task_tokens))
    example = _run_data(view_data(out, device="cpu"))["example"]
    assert example["tokens"] == task_tokens and example["period"] == 0 and "fact-learning" in example["description"]

    def broken(run):
        raise ValueError("task.type: expected BiographiesConfig")

    monkeypatch.setattr(owner, "get_analysis", lambda name: SimpleNamespace(name=name, example=broken))
    with caplog.at_level("WARNING"):
        example = _run_data(view_data(out, device="cpu"))["example"]
    assert example["period"] >= 2 and "random tokens" in example["description"]
    assert "example failed" in caplog.text


@dataclass(frozen=True)
class PeakResults:
    """The results of `PEAK`, an analysis defined here that the library knows nothing of."""

    best_head: HeadId
    peak_step: int | None


def peak_view(source, runs) -> Headline:
    r, name = read_results(source.path, PeakResults), main_run(source)
    return Headline("Peak heads", "A test analysis's own headline.", run=name,
                    marks={name: Mark.at((r.peak_step, "the peak"))},
                    figures=[Lines("Loss", [Series.of_metric(runs[name], "train/loss")], run=name,
                                   vlines=VLine.at((r.peak_step, "peak"))),
                             Heads.of("Previous-token attention", name, runs[name], "example.prev_token", r.best_head),
                             Table.of(results_dict(r), ("best_head", "peak_step"))])


def _not_run(*args):
    raise AssertionError("only the view of this analysis is used")


PEAK = Analysis("peak", "a test analysis with its own view", {}, _not_run, _not_run, _not_run, view=peak_view)


def test_a_new_analysis_shows_its_own_headline_and_a_renamed_field_fails_loudly(trained_run, tmp_path, monkeypatch):
    real = analysis_module._entry_points()
    entry = EntryPoint("peak", f"{__name__}:PEAK", analysis_module.ENTRY_POINT_GROUP)
    monkeypatch.setattr(analysis_module, "_entry_points", lambda: {**real, "peak": entry})
    out = tmp_path / "peak"
    shutil.copytree(trained_run.path, out / "runs" / "main")
    (out / "analysis.json").write_text(json.dumps({"analysis": "peak", "preset": "tiny", "config": {}}))
    (out / "results.json").write_text(json.dumps({"analysis": "peak", "best_head": "L1H0", "peak_step": 4}))
    data = view_data(out, device="cpu")
    headline = data["headline"]
    assert headline["title"] == "Peak heads" and headline["run"] == data["default_run"] == "main"
    assert [f["type"] for f in headline["figures"]] == ["lines", "heads", "table"]
    lines, heads, table = headline["figures"]
    assert [s["name"] for s in lines["series"]] == ["train/loss"] and lines["vlines"] == [{"x": 4, "label": "peak"}]
    assert heads["head"] == "L1H0" and heads["probe"] == "example.prev_token"
    assert table["rows"] == [["best_head", "L1H0"], ["peak_step", 4]]
    assert {"step": 4, "label": "the peak"} in _run_data(data)["marks"]

    (out / "results.json").write_text(json.dumps({"analysis": "peak", "best_head": "L1H0", "peak": 4}))
    with pytest.raises(ValueError, match=r"results\.json: peak_step is missing: PeakResults expects it"):
        view_data(out, device="cpu")


@dataclass(frozen=True)
class _Inner:
    head: HeadId
    ref: CheckpointRef | None


@dataclass(frozen=True)
class _Outer:
    inner: _Inner
    by_step: dict[int, float]
    heads: tuple[HeadId, ...]
    optional: _Inner | None
    table: ProbeTable = detail()


def test_results_read_back_typed(tmp_path):
    """`read_results` is the inverse of `results_dict`: identities, nested results, numeric keys, tuples."""
    written = _Outer(_Inner(HeadId(1, 0), CheckpointRef("runs/a", 3)), {4: 0.5}, (HeadId(0, 1),), None)
    (tmp_path / "results.json").write_text(json.dumps({"analysis": "x", **results_dict(written)}))
    read = read_results(tmp_path, _Outer)
    assert read == written and isinstance(read.inner.head, HeadId) and read.table is None
    (tmp_path / "results.json").write_text(json.dumps({**results_dict(written), "inner": {"head": "L1H0"}}))
    with pytest.raises(ValueError, match=r"inner\.ref is missing: _Inner expects it"):
        read_results(tmp_path, _Outer)


# --- bad input ---------------------------------------------------------------------------------------


def test_bad_input_says_what_is_missing_and_writes_nothing(trained_run, tmp_path):
    cases: dict[str, tuple[Path, str]] = {}
    missing = tmp_path / "missing"
    cases["missing"] = (missing, "no such directory")
    (empty := tmp_path / "empty").mkdir()
    cases["empty"] = (empty, "is empty: there is no run")
    (half := tmp_path / "half").mkdir()
    shutil.copy(trained_run.path / "config.json", half / "config.json")
    cases["config only"] = (half, "has no checkpoint yet: .*manifest.json is missing")
    torn = tmp_path / "torn"
    shutil.copytree(trained_run.path, torn)
    with open(torn / "metrics.jsonl", "a") as f:
        f.write('{"step"\n')  # a line that is not JSON
    cases["damaged metrics"] = (torn, "is damaged: .*metrics.jsonl: line")
    (ana := tmp_path / "analysis").mkdir()
    (ana / "analysis.json").write_text(json.dumps({"analysis": "induction-heads", "config": {}}))
    cases["analysis without runs"] = (ana, "with no runs: .*runs is missing")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(trained_run.path, unfinished / "runs" / "main")
    (unfinished / "analysis.json").write_text(json.dumps({"analysis": "induction-heads", "config": {}}))
    cases["analysis without results"] = (unfinished, "results.json is missing: analysis induction-heads did not finish")
    (other := tmp_path / "other").mkdir()
    (other / "notes.txt").write_text("hello")
    cases["something else"] = (other, "neither a run directory")
    for label, (path, message) in cases.items():
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        with pytest.raises((ViewError, FileNotFoundError), match=message):
            write_view(path, device="cpu")
        after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        assert after == before, f"{label}: wrote {set(after) - set(before)}"


def test_a_failure_while_writing_keeps_the_previous_view(trained_run, tmp_path, monkeypatch):
    path = tmp_path / "run"
    shutil.copytree(trained_run.path, path)
    first = write_view(path, device="cpu")
    old = first.read_text()

    def broken(data):
        raise RuntimeError("template broke")

    monkeypatch.setattr(page_module, "render_page", broken)
    with pytest.raises(RuntimeError, match="template broke"):
        write_view(path, device="cpu")
    assert first.read_text() == old and _leftovers(path) == []
    monkeypatch.undo()

    real_replace = os.replace

    def fail_on_the_new_view(src, dst):  # the old view is moved aside, then the new one fails to land
        if Path(src).name.startswith(f".{VIEW_DIR}."):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(page_module.os, "replace", fail_on_the_new_view)
    with pytest.raises(OSError):
        write_view(path, device="cpu")
    assert first.read_text() == old and _leftovers(path) == []


def test_a_view_of_the_users_own_is_refused_untouched_and_our_page_is_replaced(trained_run, tmp_path, capsys):
    """Before: a user's own file or folder named `view` was renamed aside and left as a hidden temp file."""
    path = tmp_path / "run"
    shutil.copytree(trained_run.path, path)
    view = path / VIEW_DIR
    for make in (lambda: view.write_text("my notes"), lambda: (view.mkdir(), (view / "notes.txt").write_text("mine")),
                 lambda: (view.mkdir(), (view / "index.html").write_text("<html><head><title>mine</title></head>"))):
        make()
        before = sorted((p.relative_to(tmp_path), p.is_file() and p.read_bytes()) for p in tmp_path.rglob("*"))
        with pytest.raises(ViewError) as info:
            write_view(path, device="cpu")
        assert str(info.value) == (f"{view} exists and is not an explorer page written by interp view: move it away "
                                   "or choose another directory")
        after = sorted((p.relative_to(tmp_path), p.is_file() and p.read_bytes()) for p in tmp_path.rglob("*"))
        assert after == before and _leftovers(path) == []
        assert main(["view", str(path)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"interp view: error: {info.value}"]
        shutil.rmtree(view) if view.is_dir() else view.unlink()

    first = write_view(path, device="cpu")  # a page this toolkit wrote is replaced
    first.write_text(first.read_text().replace("</head>", "<!-- older --></head>", 1))
    assert write_view(path, device="cpu") == first and "<!-- older -->" not in first.read_text()
    assert sorted(p.name for p in view.iterdir()) == ["index.html"] and _leftovers(path) == []


def test_cli_view_prints_the_page_and_names_bad_input(analysis_dir, tmp_path, capsys):
    assert main(["view", str(analysis_dir)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {analysis_dir / VIEW_DIR / 'index.html'}" in out and "MB" in out
    (tmp_path / "empty").mkdir()
    assert main(["view", str(tmp_path / "empty")]) == 2
    assert "interp view: error: " in capsys.readouterr().err
    assert not (tmp_path / "empty" / VIEW_DIR).exists()


# --- the page in a real browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Selenium and Debian's chromedriver (no driver download)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no headless Chromium here: `apt-get install chromium chromium-driver` (Debian) provides the "
                    "browser and its driver; .ci/run installs them where apt-get is available")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for a driver online
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _open(driver, page: Path) -> None:
    driver.get(page.resolve().as_uri())
    deadline = time.time() + 30
    while not driver.execute_script("return !!(window.interpView && window.interpView.ready)"):
        assert time.time() < deadline, "the page never became ready"
        time.sleep(0.05)


def _console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _shown(driver, plot_id: str) -> list:
    return driver.execute_script(f"return document.getElementById('{plot_id}').data[0].z")


def _settle(driver) -> None:
    """Wait until every plot the page started drawing is drawn (and resized)."""
    driver.set_script_timeout(30)
    driver.execute_async_script("window.interpView.settled().then(arguments[arguments.length - 1])")


def _click_cell(driver, plot_id: str, layer: int, head: int) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    _settle(driver)
    element = driver.find_element("id", plot_id)
    x, y = driver.execute_script(f"""
        const gd = document.getElementById('{plot_id}'), xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        return [xa._offset + xa.l2p({head}), ya._offset + ya.l2p({layer})];""")
    size = element.size
    ActionChains(driver).move_to_element_with_offset(element, int(x - size["width"] / 2),
                                                     int(y - size["height"] / 2)).click().perform()


def _assert_pattern(shown: list, stored: np.ndarray) -> None:
    """A displayed T x T attention heatmap (null above the diagonal) equals a stored pattern."""
    shown_array = np.array([[np.nan if v is None else v for v in row] for row in shown], dtype=float)
    lower = np.tril(np.ones_like(shown_array, dtype=bool))
    np.testing.assert_array_equal(shown_array[lower], stored.astype(np.float64)[lower])
    assert np.isnan(shown_array[~lower]).all()


def test_page_in_headless_chromium_slider_grid_pattern_and_click(analysis_dir, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    run = Run.open(analysis_dir / "runs" / "main")
    steps = run.steps
    stored = example_patterns(run, example_for(run, 6))  # [step, layer, head, q, k]
    cached = _stored_probe(run, "induction")  # the probe cache's rows, as stored on disk

    def stored_grid(index: int) -> np.ndarray:
        grid = np.full((2, 2), np.nan)
        for column, value in cached[steps[index]].items():
            head = HeadId.parse(column)
            grid[head.layer, head.head] = value
        return grid

    _open(browser, analysis_dir / VIEW_DIR / "index.html")
    browser.find_element(By.CSS_SELECTOR, 'nav button[data-tab="heads"]').click()
    Select(browser.find_element(By.ID, "probe-select")).select_by_value("induction")
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.HOME)
    state = lambda: browser.execute_script("return window.interpView.state")  # noqa: E731
    assert state()["a"] == 0 and browser.find_element(By.ID, "step-a").text.startswith(f"step {steps[0]} ")
    head = state()["head"]["main"]
    np.testing.assert_allclose(_shown(browser, "heads-grid-a"), stored_grid(0), rtol=1e-4)
    _assert_pattern(_shown(browser, "heads-attn-a"), stored[0, head["layer"], head["head"]])
    first_pattern = _shown(browser, "heads-attn-a")

    for index in range(1, len(steps)):  # the arrow key walks the slider to the last checkpoint
        body.send_keys(Keys.ARROW_RIGHT)
        assert state()["a"] == index
        assert browser.find_element(By.ID, "step-a").text.startswith(f"step {steps[index]} ")
    assert int(browser.find_element(By.ID, "slider-a").get_attribute("value")) == len(steps) - 1
    np.testing.assert_allclose(_shown(browser, "heads-grid-a"), stored_grid(-1), rtol=1e-4)
    assert not np.allclose(stored_grid(-1), stored_grid(0))
    _assert_pattern(_shown(browser, "heads-attn-a"), stored[-1, head["layer"], head["head"]])
    assert _shown(browser, "heads-attn-a") != first_pattern

    target = {"layer": 0, "head": 1 - head["head"]} if head["layer"] == 1 else {"layer": 1, "head": head["head"]}
    _click_cell(browser, "heads-grid-a", target["layer"], target["head"])
    deadline = time.time() + 5
    while state()["head"]["main"] != target:
        assert time.time() < deadline, f"clicking L{target['layer']}H{target['head']} did not select it"
        time.sleep(0.05)
    time.sleep(0.2)
    _assert_pattern(_shown(browser, "heads-attn-a"), stored[-1, target["layer"], target["head"]])
    title = browser.execute_script("return document.getElementById('heads-attn-a').layout.title.text")
    assert title.startswith(f"L{target['layer']}H{target['head']} attention at step {steps[-1]}")

    errors = _console_errors(browser) + browser.execute_script("return window.interpView.errors")
    assert errors == [], f"browser console errors: {errors}"


def test_page_in_headless_chromium_compare_circuit_and_headline(analysis_dir, browser):
    from selenium.webdriver.common.by import By

    _open(browser, analysis_dir / VIEW_DIR / "index.html")
    assert browser.execute_script("return document.getElementById('headline-0').data.length") >= 3
    browser.find_element(By.ID, "compare").click()
    assert browser.find_element(By.ID, "row-b").is_displayed()
    assert browser.execute_script("return !!document.getElementById('headline-grid-b').data")
    browser.find_element(By.CSS_SELECTOR, 'nav button[data-tab="circuit"]').click()
    browser.find_element(By.ID, "diff").click()
    ids = browser.execute_script("return [...document.querySelectorAll('#circuit .plot')].map(e => e.id)")
    assert ids == ["circuit-a", "circuit-b", "circuit-diff"]
    browser.find_element(By.CSS_SELECTOR, 'nav button[data-tab="curves"]').click()
    cursors = browser.execute_script("return document.getElementById('curve-0').layout.shapes.length")
    assert cursors >= 2  # the A and B cursors
    browser.find_element(By.CSS_SELECTOR, 'nav button[data-tab="headline"]').click()
    _settle(browser)
    hover = browser.execute_script("""
        const gd = document.getElementById('headline-grid-a');
        Plotly.Fx.hover(gd, {xval: 1, yval: 1});
        return gd.querySelector('.hoverlayer').textContent;""")
    assert hover.startswith("L1H1: "), hover  # the head's own name, not the tick labels run together
    errors = _console_errors(browser) + browser.execute_script("return window.interpView.errors")
    assert errors == [], f"browser console errors: {errors}"
    assert math.isfinite(browser.execute_script("return window.interpView.readyAt"))
