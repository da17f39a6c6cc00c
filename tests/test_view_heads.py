"""The explorer's Heads tab over training, in a real headless Chromium: the head x step heatmap
of a per-head probe (rows, columns, gaps, hover, the slider's cursor), the probe's default head,
every head's attention at the step (small multiples) and the play button."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from test_view import _console_errors, _open, _settle, browser  # noqa: F401 - `browser` is a fixture

from interp.view import VIEW_DIR, view_data
from interp.view.page import INDEX, render_page

KEY = "known"
COLUMNS = ["L0H0", "L0H1", "L1H0", "L1H1"]


def _known_probe(steps: list[int]) -> dict:
    """A per-head probe probed at every checkpoint but the second: value 10 * step + column index,
    except L0H1, the largest at the end (a layer-0 head, outside the probe's `layers=(1,)`)."""
    probed = [s for i, s in enumerate(steps) if i != 1]
    values = [[100.0 * s if col == "L0H1" else 10.0 * s + j for j, col in enumerate(COLUMNS)] for s in probed]
    return {"probe": "known(layers=(1,),period=6)", "about": "", "steps": probed, "columns": COLUMNS,
            "values": values, "heads": True}


def _page(trained_run, tmp_path: Path, headline_head: str | None = None) -> tuple[Path, list[int]]:
    folder = tmp_path / "run"
    shutil.copytree(trained_run.path, folder)
    data = view_data(folder, device="cpu")
    r = data["runs"][0]
    r["probes"][KEY] = _known_probe(r["steps"])
    data["headline"] = {"title": "t", "caption": "", "run": r["name"], "figures": [
        {"type": "heads", "title": "heads", "run": r["name"], "probe": KEY, "head": headline_head}]}
    page = folder / VIEW_DIR / INDEX
    page.parent.mkdir()
    page.write_text(render_page(data), encoding="utf-8")
    return page, r["steps"]


def _heads_tab(driver, page: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _open(driver, page)
    driver.find_element(By.CSS_SELECTOR, 'nav button[data-tab="heads"]').click()
    Select(driver.find_element(By.ID, "probe-select")).select_by_value(KEY)
    _settle(driver)


def _cursors(driver) -> list[tuple[float, str]]:
    """The slider cursors of the heatmap (solid: step A, dashed: step B) as (x, dash)."""
    return [(s["x0"], s["line"]["dash"]) for s in driver.execute_script(
        "return document.getElementById('heads-steps').layout.shapes") if s["type"] == "line" and s.get("yref") ==
            "paper" and s["line"].get("dash") in ("solid", "dash")]


def test_head_step_heatmap_rows_columns_gaps_and_cursor(trained_run, tmp_path, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    page, steps = _page(trained_run, tmp_path)
    _heads_tab(browser, page)
    shown = browser.execute_script("""
        const gd = document.getElementById('heads-steps'), t = gd.data[0], l = gd.layout;
        return {z: t.z, y: t.y, x: t.x, text: t.text, colorbar: t.colorbar.title.text, xtitle: l.xaxis.title.text,
                ytitle: l.yaxis.title.text, title: l.title.text};""")
    assert shown["y"] == COLUMNS  # one row per head, by layer
    assert len(shown["z"]) == 4 and all(len(row) == len(steps) for row in shown["z"])  # one column per checkpoint
    assert len(shown["x"]) == len(steps) + 1  # the cells' edges
    for j, col in enumerate(COLUMNS):
        for i, step in enumerate(steps):
            expected = None if i == 1 else (100.0 * step if col == "L0H1" else 10.0 * step + j)
            assert shown["z"][j][i] == expected
    assert shown["text"][2][-1] == f"L1H0 \u00b7 step {steps[-1]} \u00b7 {10 * steps[-1] + 2}"
    assert shown["text"][0][1] == f"L0H0 \u00b7 step {steps[1]} \u00b7 not probed at this checkpoint"
    assert shown["colorbar"] == KEY and shown["xtitle"] == "step" and shown["ytitle"] == "head"
    assert f"1 of {len(steps)} checkpoints" in shown["title"]
    hover = browser.execute_script("""
        const gd = document.getElementById('heads-steps');
        Plotly.Fx.hover(gd, {xval: arguments[0], yval: 3});
        return gd.querySelector('.hoverlayer').textContent;""", steps[0])
    assert hover == f"L1H1 \u00b7 step {steps[0]} \u00b7 {10 * steps[0] + 3}", hover

    # The probe's default head: the largest last value among its layers (layer 1), not L0H1.
    assert browser.execute_script("const s = window.interpView.state; return s.head[s.run]") == {"layer": 1, "head": 1}

    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.HOME)
    _settle(browser)
    assert _cursors(browser) == [(steps[0], "solid")]
    body.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    _settle(browser)
    assert _cursors(browser) == [(steps[2], "solid")]  # the cursor follows the slider
    browser.find_element(By.ID, "compare").click()
    _settle(browser)
    assert _cursors(browser) == [(steps[2], "solid"), (steps[-1], "dash")]  # and step B's
    assert browser.execute_script("return document.getElementById('heads-multiples-b').hidden") is False

    browser.find_element(By.ID, "heads-logx").click()  # log axis: step 0 where the Curves tab puts it (logZero)
    _settle(browser)
    assert browser.execute_script("return document.getElementById('heads-steps').layout.xaxis.type") == "log"
    browser.find_element(By.ID, "compare").click()
    body.send_keys(Keys.HOME)
    _settle(browser)
    assert _cursors(browser) == [(steps[1] / 4, "solid")]
    errors = _console_errors(browser) + browser.execute_script("return window.interpView.errors")
    assert errors == [], f"browser console errors: {errors}"


def test_the_headline_head_is_the_default_and_every_head_has_a_panel(trained_run, tmp_path, browser):  # noqa: F811
    page, steps = _page(trained_run, tmp_path, headline_head="L1H0")
    _heads_tab(browser, page)
    assert browser.execute_script("const s = window.interpView.state; return s.head[s.run]") == {"layer": 1, "head": 0}
    panels = browser.execute_script("""
        const gd = document.getElementById('heads-multiples-a');
        return {names: gd.data.map((t) => t.name), rows: gd.data.map((t) => t.z.length),
                axes: gd.data.map((t) => t.xaxis + t.yaxis), outlined: gd.layout.shapes.map((s) => s.xref)};""")
    assert panels["names"] == COLUMNS  # n_layers x n_heads panels
    assert len(set(panels["axes"])) == 4 and set(panels["rows"]) == {12}  # each its own axes; T x T patterns
    assert panels["outlined"] == ["x3 domain"]  # the selected head, L1H0, the third panel
    errors = _console_errors(browser) + browser.execute_script("return window.interpView.errors")
    assert errors == [], f"browser console errors: {errors}"


def test_play_steps_through_every_checkpoint_and_stops_at_the_last(trained_run, tmp_path, browser):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    page, steps = _page(trained_run, tmp_path)
    _heads_tab(browser, page)
    button = browser.find_element(By.ID, "play")
    assert button.get_attribute("aria-pressed") == "false" and "play" in button.text
    browser.execute_script("""  // every step the slider shows, recorded in the page (polling could miss one)
        window.seenSteps = [window.interpView.state.a];
        new MutationObserver(() => window.seenSteps.push(window.interpView.state.a))
          .observe(document.getElementById('step-a'), {childList: true, characterData: true, subtree: true});""")
    button.click()
    deadline = time.time() + 60
    while browser.execute_script("return window.interpView.state.playing"):
        assert time.time() < deadline, "play did not stop"
        time.sleep(0.05)
    seen = browser.execute_script("return window.seenSteps")
    assert seen == list(range(len(steps)))  # every checkpoint in turn, then it stops at the last
    assert "play" in button.text and button.get_attribute("aria-pressed") == "false"
    assert browser.find_element(By.ID, "step-a").text.startswith(f"step {steps[-1]} ")
    _settle(browser)
    title = browser.execute_script("return document.getElementById('heads-multiples-a').layout.title.text")
    assert title.startswith(f"Every head's attention at step {steps[-1]}")  # the views followed the slider
    cursor = [s["x0"] for s in browser.execute_script("return document.getElementById('heads-steps').layout.shapes")
              if s["line"].get("dash") == "solid"]
    assert cursor == [steps[-1]]

    # The keyboard plays (from the start again: it was at the end) and pauses: Space twice, in one action.
    ActionChains(browser).send_keys_to_element(button, " ").send_keys_to_element(button, " ").perform()
    state = browser.execute_script("return window.interpView.state")
    assert not state["playing"] and state["a"] <= 1
    errors = _console_errors(browser) + browser.execute_script("return window.interpView.errors")
    assert errors == [], f"browser console errors: {errors}"


def test_a_circuit_graph_from_another_step_is_marked_and_blank_beyond_one_checkpoint(trained_run, tmp_path, browser):  # noqa: F811
    """Graphs saved at the first and last checkpoints only: at the second checkpoint the first
    graph is shown with a note (1 checkpoint away); in the middle of the run nothing is drawn."""
    folder = tmp_path / "run"
    shutil.copytree(trained_run.path, folder)
    data = view_data(folder, device="cpu")
    r = data["runs"][0]
    steps = r["steps"]
    assert len(steps) >= 5 and r["circuits"], "the test needs a run with 5+ checkpoints and a circuit"
    c = r["circuits"][0]
    c["steps"], c["weights"] = [steps[0], steps[-1]], [[1.0] * len(c["edges"])] * 2  # every edge above the cut
    page = folder / VIEW_DIR / INDEX
    page.parent.mkdir()
    page.write_text(render_page(data), encoding="utf-8")
    _open(browser, page)
    browser.execute_script("window.interpView.showTab('circuit')")

    def shown(index: int) -> tuple[list[str], int]:
        browser.execute_script(f"window.interpView.setStep('a', {index})")
        _settle(browser)
        layout, data = browser.execute_script(
            "const gd = document.getElementById('circuit-a'); return [gd.layout, gd.data];")
        notes = [a["text"] for a in layout.get("annotations") or []]
        edges = sum(1 for t in data if t.get("mode") == "lines")
        return notes, edges

    notes, edges = shown(0)
    assert not notes and edges > 0
    notes, edges = shown(1)
    assert notes == [f"not graphed at this step: showing step {steps[0]} (1 checkpoint away)"] and edges > 0
    notes, edges = shown(len(steps) // 2)
    assert len(notes) == 1 and notes[0].startswith(f"not graphed at this step: the nearest graphed step, {steps[0]}")
    assert edges == 0
    assert not _console_errors(browser)
