"""The explorer's developmental-stages views: the Stages tab (the LLC curve with its band over chains,
untrusted estimates, stage boundaries and the slider's cursor; the essential-dynamics trajectory with
the slider's step) and a refined LLC's per-head values in the Heads tab, on a run whose LLC caches
hold known curves (written by the probe runner from hand-set values), in a real headless Chromium."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import RandomTokens, fixed_tokens, tiny_model_config, tiny_train_config
from test_view import _console_errors, _open, _settle, browser  # noqa: F401 - `browser` is a fixture

from interp.checkpoints import Run
from interp.metrics.essential_dynamics import output_trajectory, trajectory_dynamics
from interp.metrics.stages import llc_stages
from interp.probing import Probe, ProbeContext, probe
from interp.train import train
from interp.view import view_data, write_view
from interp.view.stages import stages_data

LLC = [1, 1, 1, 1, 1.5, 3, 4.5, 5, 4, 3, 3, 3, 3]
"""The whole model's LLC at checkpoints 0, 2, ..., 24: a rise to a maximum at step 14, a fall, a plateau from 20."""
STD = 0.05
UNTRUSTED_STEP = 12
HEADS = ["L0H0", "L0H1", "L1H0", "L1H1"]


def _llc_columns(ctx: ProbeContext) -> dict[str, float]:
    i = ctx.step // 2
    return {"llc": LLC[i], "llc_std": STD, "trustworthy": float(ctx.step != UNTRUSTED_STEP), "init_loss": 3.0,
            "llc_chain0": LLC[i] - STD, "llc_chain1": LLC[i] + STD}


def _rllc_columns(ctx: ProbeContext) -> dict[str, float]:
    """Head j's refined LLC: step + j; L1H1 not trustworthy at even multiples of 8."""
    out = {"init_loss": 3.0}
    for j, head in enumerate(HEADS):
        out |= {f"llc/{head}": ctx.step + j, f"llc_std/{head}": 0.1,
                f"trustworthy/{head}": float(not (head == "L1H1" and ctx.step % 8 == 0))}
    return out


@pytest.fixture(scope="module")
def staged_run(tmp_path_factory) -> Path:
    """A 24-step run (13 checkpoints) with known `llc` and `rllc` caches and cached output vectors."""
    path = tmp_path_factory.mktemp("stages") / "run"
    train(path, tiny_model_config(), tiny_train_config(steps=24), RandomTokens(), device="cpu", progress=False)
    probe(path, {"llc": Probe("llc(known)", (), _llc_columns, reads="weights"),
                 "rllc": Probe("rllc(known)", (), _rllc_columns, reads="weights")}, device="cpu")
    output_trajectory(path, {"tokens": fixed_tokens()}, device="cpu")
    return path


def test_stages_data_holds_the_caches_stages_and_trajectory(staged_run):
    run = Run.open(staged_run)
    data = stages_data(run, {})
    steps = list(range(0, 26, 2))
    expected = llc_stages(steps, LLC, [STD / np.sqrt(2)] * len(steps))  # the standard error of 2 chains' mean
    assert data["steps"] == steps and data["llc"] == LLC
    assert data["trustworthy"] == [s != UNTRUSTED_STEP for s in steps]
    assert [(b["step"], b["kind"]) for b in data["boundaries"]] == [(14, "maximum"), (20, "plateau start")]
    assert [(b["step"], b["kind"]) for b in data["boundaries"]] == [(b.step, b.kind) for b in expected.boundaries]
    found, rows = output_trajectory(run, {"tokens": fixed_tokens()}, device="cpu")
    dynamics = trajectory_dynamics(found, rows)
    assert data["dynamics"]["steps"] == steps
    np.testing.assert_allclose(data["dynamics"]["coords"], dynamics.coords, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(data["dynamics"]["explained"], dynamics.explained, rtol=1e-4)
    assert [p["step"] for p in data["change_points"] if p["source"] == "llc stage"] == [14, 20]
    assert [p["step"] for p in data["change_points"] if p["source"] == "essential dynamics"] == \
        [t.step for t in dynamics.turning_points]

    probes = view_data(staged_run, device="cpu")["runs"][0]["probes"]
    refined = probes["rllc/llc"]
    assert refined["heads"] and refined["columns"] == HEADS and refined["steps"] == steps
    assert refined["values"] == [[s + j for j in range(4)] for s in steps]
    assert refined["untrusted"] == [[False, False, False, s % 8 == 0] for s in steps]
    assert not probes["rllc"]["heads"]  # the whole table stays as it was, for the Curves tab


def test_without_cached_outputs_the_view_names_the_command(staged_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(staged_run, folder)
    shutil.rmtree(folder / "probes" / "essential_dynamics")
    data = stages_data(Run.open(folder), {})
    assert data["dynamics"] is None and f"`interp llc {folder}` computes" in data["dynamics_note"]
    (folder / "probes" / "llc.jsonl").unlink()
    assert stages_data(Run.open(folder), {}) is None  # no LLC cache: no Stages tab


def _llc_shapes(driver) -> dict:
    return driver.execute_script("""
        const gd = document.getElementById('stages-llc'), shapes = gd.layout.shapes;
        return {cursor: shapes.filter((s) => s.type === 'line' && s.line.dash === 'solid').map((s) => s.x0),
                boundaries: shapes.filter((s) => s.name === 'stage boundary').map((s) => s.x0),
                labels: gd.layout.annotations.filter((a) => a.name === 'stage boundary').map((a) => a.text)};""")


def _highlighted(driver, plot: str) -> list:
    return driver.execute_script(f"""
        const t = document.getElementById('{plot}').data.find((d) => (d.name || '').startsWith('step A'));
        return [t.x[0], t.y[0], t.name];""")


def test_stages_tab_follows_the_slider_and_heads_show_the_refined_llc(staged_run, tmp_path, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    folder = tmp_path / "run"
    shutil.copytree(staged_run, folder)
    page = write_view(folder, device="cpu")
    steps = list(range(0, 26, 2))
    _open(browser, page)
    tab = browser.find_element(By.CSS_SELECTOR, 'nav button[data-tab="stages"]')
    assert tab.is_displayed()
    tab.click()
    _settle(browser)
    llc = browser.execute_script("""
        const d = document.getElementById('stages-llc').data;
        return d.map((t) => ({name: t.name, x: t.x, y: t.y, fill: t.fill || null,
                              symbols: t.marker ? t.marker.symbol : null}));""")
    lower, upper, curve = llc
    assert upper["fill"] == "tonexty" and lower["x"] == steps  # the band: llc -/+ 1 sd over chains
    np.testing.assert_allclose(lower["y"], np.array(LLC) - STD)
    np.testing.assert_allclose(upper["y"], np.array(LLC) + STD)
    assert curve["x"] == steps and curve["y"] == LLC
    assert curve["symbols"] == ["circle-open" if s == UNTRUSTED_STEP else "circle" for s in steps]
    shapes = _llc_shapes(browser)
    assert shapes["boundaries"] == [14, 20]  # llc_stages of the cached table
    assert shapes["labels"] == ["maximum (step 14)", "plateau start (step 20)"]
    assert shapes["cursor"] == [steps[0]]
    dynamics = browser.execute_script("return window.interpView.data.runs[0].stages.dynamics")
    coords = dynamics["coords"]
    assert _highlighted(browser, "stages-pc12")[:2] == [coords[0][0], coords[0][1]]
    assert _highlighted(browser, "stages-pc23")[:2] == [coords[0][1], coords[0][2]]
    title = browser.execute_script("return document.getElementById('stages-pc12').layout.xaxis.title.text")
    percent = float(f"{100 * dynamics['explained'][0]:.3g}")
    assert title == f"PC1 ({percent:g}% of the variance)"

    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    _settle(browser)
    assert _llc_shapes(browser)["cursor"] == [steps[3]]  # the cursor moved with the slider
    assert _highlighted(browser, "stages-pc12") == [coords[3][0], coords[3][1], f"step A ({steps[3]})"]
    assert _highlighted(browser, "stages-pc23")[:2] == [coords[3][1], coords[3][2]]
    table = browser.find_element(By.ID, "stages-points").text
    assert "llc stage" in table and "maximum" in table

    browser.find_element(By.CSS_SELECTOR, 'nav button[data-tab="heads"]').click()
    options = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "probe-select")).options]
    assert "rllc/llc" in options
    Select(browser.find_element(By.ID, "probe-select")).select_by_value("rllc/llc")
    body.send_keys(Keys.HOME)  # step 0: L1H1 is not trustworthy there
    _settle(browser)
    heat = browser.execute_script("""
        const t = document.getElementById('heads-steps').data[0];
        return {y: t.y, z: t.z, text: t.text};""")
    assert heat["y"] == HEADS and len(heat["z"]) == 4 and all(len(row) == len(steps) for row in heat["z"])
    assert heat["z"][2] == [s + 2 for s in steps]
    assert heat["text"][3][0].endswith("not trustworthy") and not heat["text"][3][1].endswith("not trustworthy")
    grid = browser.execute_script("""
        const gd = document.getElementById('heads-grid-a');
        return {names: gd.data[0].text, outlined: gd.layout.shapes.filter((s) => s.name === 'not trustworthy')
                .map((s) => [s.x0 + 0.42, s.y0 + 0.42])};""")
    assert grid["names"][1][1] == "L1H1 (not trustworthy)" and grid["names"][1][0] == "L1H0"
    assert [[round(x), round(y)] for x, y in grid["outlined"]] == [[1, 1]]
    errors = _console_errors(browser) + browser.execute_script("return window.interpView.errors")
    assert errors == [], f"browser console errors: {errors}"


def test_a_run_without_an_llc_cache_has_no_stages_tab(trained_run, tmp_path, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    folder = tmp_path / "run"
    shutil.copytree(trained_run.path, folder)
    _open(browser, write_view(folder, device="cpu"))
    assert not browser.find_element(By.CSS_SELECTOR, 'nav button[data-tab="stages"]').is_displayed()
    errors = _console_errors(browser) + browser.execute_script("return window.interpView.errors")
    assert errors == [], f"browser console errors: {errors}"


def test_stage_labels_are_shown_literally(staged_run, tmp_path, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from test_view_safety import HOSTILE

    from interp.view.page import INDEX, render_page

    data = view_data(staged_run, device="cpu")
    st = data["runs"][0]["stages"]
    st["about"], st["stages_note"] = HOSTILE[7], HOSTILE[1]
    st["boundaries"][0]["kind"] = HOSTILE[2]
    st["change_points"] = [{"source": HOSTILE[4], "step": 14, "detail": HOSTILE[7], "nearest": HOSTILE[0]}]
    page = tmp_path / INDEX
    page.write_text(render_page(data), encoding="utf-8")
    _open(browser, page)
    browser.find_element(By.CSS_SELECTOR, 'nav button[data-tab="stages"]').click()
    _settle(browser)
    assert browser.execute_script("return window.__pwned") is None
    assert HOSTILE[7] in browser.find_element(By.ID, "stages-points").text  # the table's cells, as text
    assert HOSTILE[7] in browser.find_element(By.ID, "stages-info").text
    label = browser.execute_script(
        "return document.querySelector('#stages-llc .annotation-text').textContent")
    assert label == f"{HOSTILE[2]} (step 14)"  # plotly draws the label as written, not as its markup
    errors = _console_errors(browser) + browser.execute_script("return window.interpView.errors")
    assert errors == [], f"browser console errors: {errors}"
