"""The explorer page is safe with any string: hostile folder, run, probe, column, metric, circuit,
result and token names are shown literally in a real headless Chromium, never parsed as HTML or as
plotly's pseudo-HTML; no share-to-cloud button; no absolute path in the page."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from test_view import _console_errors, _open, _settle, browser  # noqa: F401 - `browser` is a fixture

from interp.view import VIEW_DIR, view_data
from interp.view.page import INDEX, render_page

PWNED = "window.__pwned = 1"
HOSTILE = [
    "<!--<script>",
    "</script><script>" + PWNED + "</script>",
    "<s>",
    "</s>",
    f'<a href="javascript:{PWNED}">click</a>',
    '<a href="https://example.com/leak">link</a>',
    '<span style="font-size:90px">BIG</span>',
    f"<img src=x onerror='{PWNED}'>",
    "&rarr; &quot; &amp; <br>",
    f"javascript:{PWNED}",
]
FOLDER = f"run <img src=x onerror='{PWNED}'> <!--<script> <s>"  # no '/': it is one folder's name


def _rename_node(circuit: dict, old: str, new: str) -> None:
    circuit["nodes"] = [new if n == old else n for n in circuit["nodes"]]
    circuit["positions"] = {(new if n == old else n): p for n, p in circuit["positions"].items()}
    for edge in circuit["edges"]:
        for field in ("sender", "receiver"):
            if edge[field] == old:
                edge[field] = new
        edge["edge"] = edge["edge"].replace(old, new)


def _hostile_data(run_path: Path) -> dict:
    """The page data of a run in a hostile folder, with hostile strings in every other name field."""
    data = view_data(run_path, device="cpu")
    data["title"] = HOSTILE[1]
    data["preset"] = HOSTILE[0]
    r = data["runs"][0]
    steps = r["steps"]
    r["status"] = HOSTILE[6]
    r["notes"] = [*r["notes"], *HOSTILE]
    r["marks"] = [{"step": steps[1], "label": HOSTILE[4]}]
    metric = next(iter(r["metrics"].values()))
    for name in HOSTILE:
        r["metrics"][name] = copy.deepcopy(metric)
    head_probe = next(p for p in r["probes"].values() if p["heads"])
    column_probe = {**copy.deepcopy(head_probe), "heads": False, "probe": HOSTILE[5], "about": HOSTILE[7],
                    "columns": HOSTILE[: len(head_probe["columns"])]}
    r["probes"][HOSTILE[3]] = column_probe
    r["probes"][HOSTILE[2]] = {**copy.deepcopy(head_probe), "probe": HOSTILE[4], "about": HOSTILE[6]}
    labels = r["example"]["labels"]
    r["example"]["labels"] = [HOSTILE[i % len(HOSTILE)] for i in range(len(labels))]
    r["example"]["description"] = HOSTILE[5]
    for example in r["strip"]["examples"]:  # the token strips: token labels, predicted tokens, descriptions
        example["labels"] = [HOSTILE[i % len(HOSTILE)] for i in range(len(example["labels"]))]
        example["description"] = HOSTILE[7]
    r["strip"]["vocab"] = {t: HOSTILE[i % len(HOSTILE)] for i, t in enumerate(r["strip"]["vocab"])}
    assert r["circuits"], "the run shows a circuit (the attention-pattern fallback at least)"
    for circuit in r["circuits"]:
        circuit.update(key=HOSTILE[2], method=HOSTILE[4], metric=HOSTILE[6], source=HOSTILE[7])
        _rename_node(circuit, circuit["nodes"][1], HOSTILE[3])
    name = r["name"]
    data["headline"] = {
        "title": HOSTILE[1], "caption": HOSTILE[4], "run": name,
        "figures": [
            {"type": "lines", "title": HOSTILE[5], "run": name, "ylabel": HOSTILE[6], "y2label": HOSTILE[2],
             "series": [{"name": HOSTILE[7], "x": metric["steps"], "y": metric["values"], "axis": "y"},
                        {"name": HOSTILE[8], "x": metric["steps"], "y": metric["values"], "axis": "y2"}],
             "vlines": [{"x": steps[1], "label": HOSTILE[4]}], "hlines": [{"y": 0.5, "label": HOSTILE[0]}],
             "band": {"x0": steps[0], "x1": steps[1], "label": HOSTILE[6]}},
            {"type": "heads", "title": HOSTILE[2], "run": name, "probe": HOSTILE[2], "head": None},
            {"type": "table", "title": HOSTILE[7], "rows": [[h, h] for h in HOSTILE]},
        ]}
    return data


def test_page_data_escapes_markup_and_holds_no_absolute_path(trained_run, tmp_path):
    folder = tmp_path / FOLDER
    shutil.copytree(trained_run.path, folder)
    data = _hostile_data(folder)
    html = render_page(data)
    start = html.index('<script type="application/json" id="view-data">') + len(
        '<script type="application/json" id="view-data">')
    block = html[start:html.index("</script>", start)]
    assert not set("<>&") & set(block)  # no HTML tokenizer state can be entered from the data
    assert json.loads(block) == json.loads(json.dumps(data))  # and it reads back unchanged
    assert str(tmp_path) not in html and str(tmp_path.resolve()) not in html
    assert data["path"] == FOLDER and data["runs"][0]["path"] == FOLDER


def test_hostile_strings_show_literally_in_chromium(trained_run, tmp_path, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    folder = tmp_path / FOLDER
    shutil.copytree(trained_run.path, folder)
    page = folder / VIEW_DIR / INDEX
    page.parent.mkdir()
    page.write_text(render_page(_hostile_data(folder)), encoding="utf-8")
    _open(browser, page)
    for tab in ("curves", "heads", "circuit", "headline"):
        browser.find_element(By.CSS_SELECTOR, f'nav button[data-tab="{tab}"]').click()
        _settle(browser)
    if browser.find_elements(By.ID, "compare"):
        browser.find_element(By.ID, "compare").click()
        _settle(browser)
    found = browser.execute_script("""
        const text = (sel) => [...document.querySelectorAll(sel)].map((e) => e.textContent);
        return {
          pwned: window.__pwned === 1,
          injected: document.querySelectorAll('img, iframe, object, embed, a, [onerror], [style*="90px"]').length,
          scripts: document.querySelectorAll('script').length,
          share: document.querySelectorAll('.modebar-btn[data-title^="Share"], .modebar-btn[data-title*="Cloud"]')
            .length,
          modebars: document.querySelectorAll('.modebar').length,
          svg: text('svg text').join('\\n'),
          options: text('#run-select option'),
          page: document.body.innerText,
          resources: performance.getEntriesByType('resource').map((e) => e.name),
          errors: window.interpView.errors,
        };""")
    assert not found["pwned"]
    assert found["injected"] == 0, "an element or link was injected from the data"
    assert found["scripts"] == 3  # the data block, plotly and the app: none added, none swallowed
    assert found["modebars"] > 0 and found["share"] == 0
    assert found["options"] == [FOLDER]
    for literal in ("<s>", "</s>", '<span style="font-size:90px">BIG</span>', "&rarr; &quot; &amp; <br>",
                    "<!--<script>", f'<a href="javascript:{PWNED}">click</a>'):  # ... and reference lines' labels
        assert literal in found["svg"], f"{literal!r} is not drawn literally by plotly"
    for literal in (HOSTILE[1], HOSTILE[4], HOSTILE[7]):
        assert literal in found["page"], f"{literal!r} is not shown literally on the page"
    assert all(url.startswith(("file:", "data:")) for url in found["resources"]), found["resources"]
    errors = _console_errors(browser) + found["errors"]
    assert errors == [], f"browser console errors: {errors}"
    _hostile_tokens_show_literally(browser)


def _hostile_tokens_show_literally(driver) -> None:
    """The Tokens tab, a token hovered: every hostile label is text, none is markup."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, 'nav button[data-tab="tokens"]').click()
    tokens = driver.find_elements(By.CSS_SELECTOR, "#tokens .token")
    assert [t.text for t in tokens[:len(HOSTILE)]] == [h.strip() for h in HOSTILE]
    ActionChains(driver).move_to_element(tokens[2]).perform()
    found = driver.execute_script("""return {
        pwned: window.__pwned === 1, text: document.getElementById('tab-tokens').innerText,
        injected: document.querySelectorAll('#tab-tokens :is(img, iframe, a, s, span[style*="90px"], [onerror])')
          .length, errors: window.interpView.errors};""")
    assert not found["pwned"] and found["injected"] == 0 and found["errors"] == []
    for literal in ("position 2: '<s>'", "next token '</s>'", HOSTILE[7]):
        assert literal in found["text"], f"{literal!r} is not shown literally in the Tokens tab"
    assert _console_errors(driver) == []


def test_curves_draw_one_point_series_and_say_what_they_leave_out(trained_run, tmp_path, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    folder = tmp_path / "run"
    shutil.copytree(trained_run.path, folder)
    data = view_data(folder, device="cpu")
    r = data["runs"][0]
    r["metrics"]["solo"] = {"steps": [r["steps"][-1]], "values": [0.5]}
    head_probe = next(p for p in r["probes"].values() if p["heads"])
    r["probes"]["many"] = {**copy.deepcopy(head_probe), "heads": False, "columns": [f"c{i}" for i in range(45)],
                           "values": [[float(i)] * 45 for i in range(len(head_probe["steps"]))]}
    page = folder / VIEW_DIR / INDEX
    page.parent.mkdir()
    page.write_text(render_page(data), encoding="utf-8")
    _open(browser, page)
    browser.find_element(By.CSS_SELECTOR, 'nav button[data-tab="curves"]').click()
    for chip in browser.find_elements(By.CSS_SELECTOR, "#curve-groups label.chip"):
        box = chip.find_element(By.TAG_NAME, "input")
        if chip.text.strip() in ("solo", "probe many") and not box.is_selected():
            box.click()
    _settle(browser)
    plots = browser.execute_script("""
        return [...document.querySelectorAll('#curves .plot')].filter((e) => !e.hidden && e.data).map((e) => ({
          title: e.layout.title.text, traces: e.data.map((t) => [t.name, t.mode, t.x.length])}));""")
    solo = [t for p in plots for t in p["traces"] if t[0] == "solo"]
    assert solo == [["solo", "lines+markers", 1]]  # one point, drawn as a marker
    many = [p for p in plots if p["title"].startswith("probe many")]
    assert len(many) == 1 and len(many[0]["traces"]) == 40
    assert many[0]["title"] == "probe many (the first 40 of 45 curves)"


def test_a_path_in_the_home_folder_outside_the_viewed_one_is_shown_from_home(trained_run, tmp_path, monkeypatch):
    """A fine-tuning run's `init_from` names its parent outside the folder: the page says `~/...`,
    never the author's home folder."""
    from pathlib import Path

    from interp.view.page import _folder_relative

    home = tmp_path / "home" / "alice"
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: home))
    parent = f"{home}/experiments/base/runs/main"
    shown = _folder_relative({"init_from": parent, "other": f"{home}x/y", "home": str(home)}, tmp_path / "view-me")
    assert shown == {"init_from": "~/experiments/base/runs/main", "other": f"{home}x/y", "home": "~"}
