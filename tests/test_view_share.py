"""Share and embed the explorer, and runs side by side: the state in the URL fragment (a fresh page
opened with it shows the same state; a hostile or stale fragment is ignored), the page inline in a
notebook (`interp.view.show`, executed headless), the provenance panel with its config diff, and
the overlay of one quantity across runs with a mean and a band over the runs that differ only by
seed, on a hand-built analysis folder of three tiny runs."""

from __future__ import annotations

import html
import json
import shutil
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from test_view import _console_errors, _open, _settle, browser  # noqa: F401 - `browser` is a fixture

from interp.errors import InputError
from interp.view import VIEW_DIR, NotebookView, show, view_data, write_view
from interp.view.page import INDEX
from interp.view.provenance import flat_config, run_provenance, seed_groups, seeds_of

# Three runs: s0 and s1 differ only by their seeds, wide has another learning rate; their logged
# `eval/score` is hand-written so that the mean and band over s0 and s1 are known.
SCORES = {"s0": [1.0, 2.0, 6.0], "s1": [3.0, 4.0, 2.0], "wide": [5.0, 5.0, 5.0]}
SCORE_STEPS = [0, 4, 8]


def _write_config(run_dir: Path, edit) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    edit(config)
    (run_dir / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def runs_dir(trained_run, tmp_path_factory) -> Path:
    """An analysis folder (an analysis no registry knows: the generic headline) of three copies of the
    tiny run with edited seeds, learning rate and logged scores."""
    out = tmp_path_factory.mktemp("share") / "sweep"
    for name, scores in SCORES.items():
        run_dir = out / "runs" / name
        shutil.copytree(trained_run.path, run_dir)
        seed = {"s0": 0, "s1": 1, "wide": 0}[name]

        def edit(config, seed=seed, name=name):
            config["model"]["seed"] = config["train"]["seed"] = seed
            if name == "wide":
                config["train"]["lr"] = 0.5
            config["versions"] = {**config.get("versions", {}), "torch": f"torch-of-{name}"}

        _write_config(run_dir, edit)
        rows = [{"step": 0}, *(json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())]
        for step, score in zip(SCORE_STEPS, scores, strict=True):
            next(r for r in rows if r["step"] == step)["eval/score"] = score
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "analysis.json").write_text(json.dumps({"analysis": "hand-built sweep", "preset": "tiny",
                                                   "config": {"seeds": 2}}))
    (out / "results.json").write_text("{}")
    write_view(out, device="cpu")
    return out


# --- provenance and seed groups (known answers) ------------------------------------------------------


def test_seed_groups_are_the_runs_equal_but_for_their_seeds():
    base = {"model": {"d_model": 8, "seed": 0}, "train": {"lr": 0.1, "seed": 0}, "task": {"structure_seed": 3},
            "device": "cpu", "versions": {"torch": "2.0"}}
    other_seed = {**base, "model": {"d_model": 8, "seed": 1}, "task": {"structure_seed": 4}, "device": "cuda",
                  "versions": {"torch": "2.1"}}
    other_lr = {**base, "train": {"lr": 0.2, "seed": 0}}
    configs = {"a": base, "b": other_lr, "c": other_seed, "d": {**other_lr, "train": {"lr": 0.2, "seed": 7}},
               "e": {**base, "model": {"d_model": 16, "seed": 0}}}
    assert seed_groups(configs) == [["a", "c"], ["b", "d"]]
    assert seed_groups({"a": base}) == []
    assert seeds_of(base) == {"model.seed": 0, "train.seed": 0, "task.structure_seed": 3}
    assert flat_config({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": None}) == {"a.b.c": 1, "a.d": [1, 2], "e": None}


def test_page_data_holds_each_runs_provenance_and_the_seed_groups(runs_dir, trained_run):
    data = view_data(runs_dir, device="cpu")
    assert data["seed_groups"] == [["s0", "s1"]]
    assert data["analysis_config"] == {"seeds": 2}
    shown = {r["name"]: r["provenance"] for r in data["runs"]}
    recorded = json.loads((runs_dir / "runs" / "wide" / "config.json").read_text())
    assert shown["wide"]["config"]["train"]["lr"] == 0.5 and shown["wide"]["config"]["model"] == recorded["model"]
    assert "versions" not in shown["wide"]["config"] and shown["wide"]["versions"]["torch"] == "torch-of-wide"
    assert shown["s1"]["seeds"] == {"model.seed": 1, "train.seed": 1}
    assert shown["s1"]["device"] == recorded["device"]
    from interp.checkpoints import Run

    assert run_provenance(Run.open(trained_run.path))["versions"].keys() >= {"torch", "transformer_lens"}


# --- the page inline in a notebook ---------------------------------------------------------------------


def test_show_writes_the_page_and_displays_it_in_an_iframe(runs_dir):
    shown = show(runs_dir, height=500)
    assert isinstance(shown, NotebookView) and shown.path == runs_dir / VIEW_DIR / INDEX
    frame = shown._repr_html_()
    assert frame.startswith('<iframe srcdoc="') and "height: 500px" in frame
    srcdoc = frame[len('<iframe srcdoc="'):frame.index('" title=')]
    assert '"' not in srcdoc and "<" not in srcdoc  # the attribute holds the page escaped, and ends where it should
    assert html.unescape(srcdoc) == shown.path.read_text(encoding="utf-8")
    for bad in (50, 1.5, "600", True):
        with pytest.raises(InputError, match="height"):
            show(runs_dir, height=bad)


def test_show_in_a_notebook_executed_headless(runs_dir, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    preprocessors = pytest.importorskip("nbconvert.preprocessors")
    worktree = str(Path(__file__).resolve().parents[1])  # the kernel imports this checkout's interp
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(f"import sys\nsys.path.insert(0, {worktree!r})"),
        nbformat.v4.new_code_cell(f"from interp.view import show\nshow({str(runs_dir)!r}, device='cpu')"),
    ])
    started = time.perf_counter()
    preprocessors.ExecutePreprocessor(timeout=60, kernel_name="python3").preprocess(
        notebook, {"metadata": {"path": str(tmp_path)}})
    outputs = notebook.cells[1].outputs
    assert time.perf_counter() - started < 60
    assert not [o for o in outputs if o["output_type"] == "error"], outputs
    (result,) = [o for o in outputs if o["output_type"] == "execute_result"]  # beside it: libraries' warnings
    frame = result["data"]["text/html"]
    page = html.unescape(frame.split('srcdoc="', 1)[1].split('"', 1)[0])
    assert '<script type="application/json" id="view-data">' in page and "- interp view</title>" in page
    assert page == (runs_dir / VIEW_DIR / INDEX).read_text(encoding="utf-8")


# --- the page in Chromium ---------------------------------------------------------------------------


def _state(driver) -> dict:
    return driver.execute_script("""
        const S = window.interpView.state, r = S.run, head = S.head[r];
        return {tab: S.tab, run: r, a: S.a, b: S.b, compare: S.compare, diff: S.diff, probe: S.probe[r],
                head: head ? `L${head.layer}H${head.head}` : null, circuit: S.circuit[r], logx: S.logx,
                quantity: S.quantity, band: S.band, shown: S.shown ? [...S.shown].sort() : null,
                active: document.querySelector('nav button.active').dataset.tab,
                sliderA: document.getElementById('slider-a').value,
                stepA: document.getElementById('step-a').textContent};""")


def _open_at(driver, page: Path, fragment: str) -> None:
    driver.get("about:blank")  # a new document, not a fragment navigation of the same one
    driver.get(page.resolve().as_uri() + fragment)
    deadline = time.time() + 30
    while not driver.execute_script("return !!(window.interpView && window.interpView.ready)"):
        assert time.time() < deadline, "the page never became ready"
        time.sleep(0.05)
    _settle(driver)


def test_permalink_reopens_the_same_state(runs_dir, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page = runs_dir / VIEW_DIR / INDEX
    _open(browser, page)
    Select(browser.find_element(By.ID, "run-select")).select_by_value("s1")
    browser.find_element(By.CSS_SELECTOR, 'nav button[data-tab="heads"]').click()
    browser.find_element(By.ID, "compare").click()
    browser.execute_script("window.interpView.setStep('a', 2); window.interpView.setStep('b', 3);")
    browser.execute_script("""const S = window.interpView.state; S.head.s1 = {layer: 1, head: 0};
                              window.interpView.showTab('heads');""")
    _settle(browser)
    before = _state(browser)
    fragment = browser.execute_script("return location.hash")
    assert fragment == browser.execute_script("return window.interpView.fragment()")
    assert "tab=heads" in fragment and "run=s1" in fragment and "head=L1H0" in fragment
    assert "a=4&" in fragment and "b=6&" in fragment, fragment  # step numbers, not indices

    _open_at(browser, page, fragment)
    after = _state(browser)
    assert after == before and after["active"] == "heads" and after["stepA"].startswith("step 4 ")
    title = browser.execute_script("return document.getElementById('heads-attn-a').layout.title.text")
    assert title.startswith("L1H0 attention at step 4")

    browser.find_element(By.ID, "copy-link").click()
    deadline = time.time() + 5
    while not browser.find_element(By.ID, "copy-status").text:
        assert time.time() < deadline, "copy link said nothing"
        time.sleep(0.05)
    errors = _console_errors(browser) + browser.execute_script("return window.interpView.errors")
    assert errors == [], f"browser console errors: {errors}"


def test_permalink_keeps_the_picked_token_of_a_strip(runs_dir, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    page = runs_dir / VIEW_DIR / INDEX
    _open(browser, page)
    browser.find_element(By.CSS_SELECTOR, 'nav button[data-tab="tokens"]').click()
    _settle(browser)
    browser.find_element(By.CSS_SELECTOR, '.tokens-example[data-example="0"] .token[data-pos="3"]').click()
    _settle(browser)
    fragment = browser.execute_script("return location.hash")
    assert "tab=tokens" in fragment and "tokens=0.3" in fragment, fragment

    _open_at(browser, page, fragment)
    picked = browser.find_elements(By.CSS_SELECTOR, '.tokens-example[data-example="0"] .token.picked')
    assert [p.get_attribute("data-pos") for p in picked] == ["3"]
    title = browser.find_element(By.CSS_SELECTOR, '.tokens-example[data-example="0"] .tokens-panel .pair-title')
    assert title.text.startswith("position 3:")
    for bad in ("tokens=0.99999", "tokens=7.1", "tokens=x.1,0.-1"):  # past the strip, no such example, not numbers
        _open_at(browser, page, "#tab=tokens&" + bad)
        assert not browser.find_elements(By.CSS_SELECTOR, ".token.picked")
    assert _console_errors(browser) + browser.execute_script("return window.interpView.errors") == []


PWNED = "window.__pwned = 1"


@pytest.mark.parametrize("fragment", [
    "#tab=%3Cimg%20src%3Dx%20onerror%3D'" + PWNED.replace(" ", "%20") + "'%3E&run=%3C!--%3Cscript%3E&a=%3Cs%3E",
    "#tab=constructor&run=__proto__&a=99999&b=-1&head=L9H9&probe=toString&circuit=x&quantity=%5B&runs=%7B",
    "#tab=curves&a=%E0%A4%A&run=s0%",  # malformed %-escapes
    "#" + "x" * 5000,
])
def test_a_hostile_or_stale_fragment_is_ignored(runs_dir, browser, fragment):  # noqa: F811
    _open_at(browser, runs_dir / VIEW_DIR / INDEX, fragment)
    found = browser.execute_script("""
        return {pwned: window.__pwned === 1, injected: document.querySelectorAll('img, iframe, a, [onerror]').length,
                plots: [...document.querySelectorAll('.js-plotly-plot')].filter((e) => e.offsetParent).length,
                run: window.interpView.state.run, tab: window.interpView.state.tab,
                errors: window.interpView.errors};""")
    assert not found["pwned"] and found["injected"] == 0 and found["errors"] == []
    assert found["plots"] > 0 and found["run"] in SCORES and found["tab"] in ("headline", "curves")
    assert _console_errors(browser) == []


def _metric_id(key: str) -> str:
    """The fragment value naming the Runs tab's overlay of metric `key` (as the page writes it)."""
    return quote(json.dumps(["metric", key], separators=(",", ":")), safe="")


def test_runs_side_by_side_with_a_seed_mean_and_band(runs_dir, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page = runs_dir / VIEW_DIR / INDEX
    _open_at(browser, page, "#tab=runs&quantity=" + _metric_id("eval/score"))
    traces = browser.execute_script("""return document.getElementById('runs-plot').data.map(
        (t) => ({name: t.name, x: t.x, y: t.y, fill: t.fill || null, legend: t.showlegend !== false}));""")
    legend = {t["name"]: t for t in traces if t["legend"]}
    mean = legend["s*: mean of 2 seeds (min-max band)"]
    assert mean["x"] == SCORE_STEPS and mean["y"] == [2.0, 3.0, 4.0]
    lower, upper = (t for t in traces if t["name"] in (None, "min-max band"))
    assert lower["y"] == [1.0, 2.0, 2.0] and upper["y"] == [3.0, 4.0, 6.0] and upper["fill"] == "tonexty"
    assert legend["wide"]["y"] == SCORES["wide"]  # not a seed twin of the others: drawn alone

    Select(browser.find_element(By.ID, "runs-band")).select_by_value("std")
    _settle(browser)
    ys = browser.execute_script("return document.getElementById('runs-plot').data.map((t) => t.y)")
    assert [1.0, 2.0, 2.0] in ys and [3.0, 4.0, 6.0] in ys  # +- 1 sd of two values is their min and max
    assert "band=std" in browser.execute_script("return location.hash")

    diff = browser.execute_script("""return [...document.querySelectorAll('#runs-diff tr')].map(
        (tr) => [...tr.children].map((c) => c.textContent));""")
    assert diff[0] == ["key", "s0", "s1", "wide"]
    rows = {row[0]: row[1:] for row in diff[1:]}
    assert rows["train.lr"][2] == "0.5" and rows["model.seed"] == ["0", "1", "0"]
    assert rows["versions.torch"] == ["torch-of-s0", "torch-of-s1", "torch-of-wide"]
    assert "model.d_model" not in rows  # only the keys that differ

    grids = browser.execute_script("""return [...document.querySelectorAll('#runs-grids .plot')]
        .filter((e) => !e.hidden).map((e) => [e.layout.title.text, e.data[0].zmin, e.data[0].zmax]);""")
    assert [g[0].split(" ")[0] for g in grids] == ["s0", "s1", "wide"]
    assert len({(g[1], g[2]) for g in grids}) == 1  # one colour scale for all

    # The overlay's choices grouped (metrics, then one group per probe) and narrowed by the filter.
    options = "return [...document.querySelectorAll('#runs-quantity option')].map((o) => [o.parentNode.label, o.text])"
    listed = browser.execute_script(options)
    assert ["metrics", "eval/score"] in listed and any(group.startswith("probe ") for group, _ in listed)
    browser.find_element(By.ID, "runs-filter").send_keys("train/")
    narrowed = browser.execute_script(options)
    assert narrowed and all("train/" in text or text == "eval/score" for _, text in narrowed), narrowed
    assert len(narrowed) < len(listed) and ["metrics", "eval/score"] in narrowed  # the chosen one stays

    browser.find_element(By.CSS_SELECTOR, '#runs-pick input[data-run="s1"]').click()
    _settle(browser)
    names = browser.execute_script("return document.getElementById('runs-plot').data.map((t) => t.name)")
    assert names == ["s0", "wide"]  # one seed left: no mean, no band
    errors = _console_errors(browser) + browser.execute_script("return window.interpView.errors")
    assert errors == [], f"browser console errors: {errors}"


def test_provenance_panel_and_its_config_diff(runs_dir, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _open_at(browser, runs_dir / VIEW_DIR / INDEX, "#run=wide")
    browser.find_element(By.CSS_SELECTOR, "#provenance summary").click()
    text = browser.find_element(By.ID, "provenance-body").text
    assert "run wide" in text and "model.seed 0, train.seed 0" in text and "torch torch-of-wide" in text
    assert "git commit: not recorded" in text
    Select(browser.find_element(By.ID, "provenance-with")).select_by_value("s1")
    rows = browser.execute_script("""return [...document.querySelectorAll('#provenance-body table.config-diff tr')]
        .map((tr) => [...tr.children].map((c) => c.textContent));""")
    assert rows[0] == ["key", "wide", "s1"]
    assert {r[0] for r in rows[1:]} == {"model.seed", "train.seed", "train.lr", "versions.torch"}


HOSTILE = ["<!--<script>", f"<img src=x onerror='{PWNED}'>", f'<a href="javascript:{PWNED}">click</a>', "<s>"]


def test_hostile_names_and_configs_show_literally_in_the_runs_tab_and_provenance(runs_dir, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from interp.view.page import render_page

    data = view_data(runs_dir, device="cpu")
    hostile_run = next(r for r in data["runs"] if r["name"] not in (data["default_run"], *data["seed_groups"][0]))
    hostile_run["name"] = HOSTILE[1]
    for r in data["runs"]:
        p = r["provenance"]
        p["config"]["task"] = {"type": HOSTILE[0], HOSTILE[2]: HOSTILE[3]}
        p["seeds"] = {HOSTILE[3]: HOSTILE[1]}
        p["versions"] = {"git_commit": HOSTILE[2], HOSTILE[0]: r["name"]}
        r["metrics"][HOSTILE[2]] = r["metrics"]["eval/score"]
    data["analysis_config"] = {HOSTILE[1]: HOSTILE[0]}
    data["toolkit_version"] = HOSTILE[3]
    page = tmp_path / INDEX
    page.write_text(render_page(data), encoding="utf-8")
    _open_at(browser, page, "#tab=runs&quantity=" + _metric_id(HOSTILE[2]))
    browser.find_element(By.CSS_SELECTOR, "#provenance summary").click()
    Select(browser.find_element(By.ID, "provenance-with")).select_by_value(HOSTILE[1])
    _settle(browser)
    found = browser.execute_script("""
        return {pwned: window.__pwned === 1, injected: document.querySelectorAll('img, iframe, a, [onerror]').length,
                scripts: document.querySelectorAll('script').length, page: document.body.innerText,
                svg: [...document.querySelectorAll('#tab-runs svg text')].map((e) => e.textContent).join('\\n'),
                errors: window.interpView.errors};""")
    assert not found["pwned"] and found["injected"] == 0 and found["scripts"] == 3 and found["errors"] == []
    for literal in HOSTILE:
        assert literal in found["page"], f"{literal!r} is not shown literally"
    quantity = browser.execute_script("return window.interpView.state.quantity")
    assert json.loads(quantity) == ["metric", HOSTILE[2]]
    assert HOSTILE[2] in found["svg"] and HOSTILE[1] in found["svg"], found["svg"]  # the plot's and a grid's title
    assert _console_errors(browser) == []
