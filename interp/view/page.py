"""The explorer page: the data of a run or analysis directory in one offline HTML file.

`write_view(DIR)` writes `DIR/view/index.html`: the page template (`static/`), the data
(`view_data`) as a JSON block and plotly.js (`static/plotly-cartesian.min.js`), all
inline, so the page opens from disk with no server and no network. The folder is
written under a temporary name and renamed into place, so a failure leaves the previous
view (or none), never a partial one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from interp.files import fsync_dir
from interp.view import owner
from interp.view.data import FORMAT, ViewError, open_source, run_data
from interp.view.examples import ExampleInput, LossInput, add_token_strips, resolve_examples, resolve_loss_batch
from interp.view.patterns import PATTERN_BUDGET, pattern_bytes
from interp.view.provenance import run_provenance, seed_groups, toolkit_version

VIEW_DIR = "view"
INDEX = "index.html"


def view_data(
    path: str | Path,
    device: str | torch.device | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    examples: Sequence[ExampleInput] = (),
    loss: LossInput | None = None,
    cache: str | Path | None = None,
) -> dict[str, Any]:
    """The page's data for the run, analysis or checkpoint suite at `path` (checked first:
    `open_source`, then `examples`, the user's inputs, and `loss` against every run:
    `resolve_examples`, `resolve_loss_batch`).

    Computes (and caches in each run) the example sequence's attention patterns at the
    checkpoints that lack them; the headline's run comes first in the patterns' size
    budget (`PATTERN_BUDGET`), and runs past it are shown without patterns. A checkpoint
    suite's page also shows its loss at every checkpoint on `loss` (default: random tokens
    repeated twice, `interp.metrics.loss_curve.repeated_loss_batch`), cached as a probe."""
    source = open_source(path, cache)
    inputs = {name: resolve_examples(run, examples) for name, run in source.runs.items()}
    losses = {name: resolve_loss_batch(run, loss, default=source.kind == "suite") for name, run in source.runs.items()}
    first = owner.opened_run(source)
    period = owner.example_period(source)
    order = [first, *(n for n in source.runs if n != first)]
    budget = PATTERN_BUDGET
    runs: dict[str, dict[str, Any]] = {}
    task_example = owner.task_example(source)
    for name in order:
        run = source.runs[name]
        example = task_example(run, period)
        cost = pattern_bytes(run, example)
        with_patterns = name == first or cost <= budget
        budget -= cost if with_patterns else 0
        step_progress = None if progress is None else (lambda done, total, n=name: progress(n, done, total))
        runs[name] = run_data(run, name, period, patterns=with_patterns, device=device, progress=step_progress,
                              example=example, loss=losses[name])
    add_token_strips(runs, source.runs, order, lambda run: task_example(run, period), inputs, device=device)
    headline = owner.headline(source, runs)
    for name, marks in headline.marks.items():  # the analysis's marks replace those found at their steps
        if name in runs:
            known = {m.step for m in marks}
            runs[name]["marks"] = sorted([*(m.to_json() for m in marks),
                                          *(m for m in runs[name]["marks"] if m["step"] not in known)],
                                         key=lambda m: m["step"])
    record = source.record
    title = (f"{record['analysis']} ({record.get('preset', '?')} preset)" if source.kind == "analysis"
             else f"checkpoint suite {source.path.resolve().name}" if source.kind == "suite"
             else f"run {source.path.name}")
    data = {
        "format": FORMAT, "title": title, "kind": source.kind, "analysis": source.analysis,
        "preset": record.get("preset"), "path": source.path.resolve().name,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": [runs[n] for n in source.runs],
        "default_run": headline.run or first, "headline": headline.to_json(first), "notes": list(source.notes),
        "toolkit_version": toolkit_version(),
        "analysis_config": record.get("config") if source.kind == "analysis" else None,
        "seed_groups": seed_groups({n: source.runs[n].config for n in source.runs}),
    }
    for name, run in source.runs.items():
        runs[name]["provenance"] = run_provenance(run)
    return _folder_relative(data, source.path)


def _folder_relative(value: Any, root: Path) -> Any:
    """`value` with every path under `root` written relative to it (under the folder's own name),
    and any other path in the user's home folder from `~` (e.g. a fine-tuning run's `init_from`):
    a shared page does not disclose where its author keeps the folder, nor whose home it is."""
    prefixes = sorted({str(root), str(root.resolve()), str(root.absolute())}, key=len, reverse=True)
    name = root.resolve().name
    homes = sorted({str(Path.home()), str(Path.home().resolve())}, key=len, reverse=True)

    def strip(v: Any) -> Any:
        if isinstance(v, str):
            for prefix in prefixes:
                v = v.replace(prefix, name)
            for home in homes:
                v = "~" if v == home else v.replace(home + "/", "~/")
            return v
        if isinstance(v, dict):
            return {strip(k): strip(x) for k, x in v.items()}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    return strip(value)


PLOTLY_JS = "plotly-cartesian.min.js"
"""plotly.js 4.1.1, the official cartesian bundle (npm `plotly.js-cartesian-dist-min`, MIT; the
same version as the full bundle of the `plotly` PyPI package, a third of its size: the page
needs only its scatter and heatmap traces, and parses in well under the 2 s budget)."""


def plotly_js() -> str:
    """The bundled plotly.js (minified; it makes no network requests for these traces)."""
    return _static(PLOTLY_JS)


APP_SCRIPTS = ("tokens.js", "stages.js", "heads.js", "circuit.js", "share.js", "view.js")
"""The page's own scripts, in order: each tab's file defines its `window.interpViewX` factory; `view.js`,
the app, comes last and calls them."""


def _static(name: str) -> str:
    return resources.files("interp.view").joinpath("static", name).read_text(encoding="utf-8")


_PLACEHOLDER = re.compile(r"\{\{([A-Z]+)\}\}")
_SCRIPT_END = re.compile(r"</(script)", re.IGNORECASE)
# In the data block no `<`, `>` or `&` is left, so no string (`<!--<script>`, `</script>`) can move the
# HTML tokenizer into another state; JSON.parse reads the escapes back as the same characters.
_JSON_MARKUP = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def _inline(text: str) -> str:
    """Text safe inside a <script> element: no `</script` ends it early (`<\\/` is the same
    inside JS strings and JSON)."""
    return _SCRIPT_END.sub(r"<\\/\1", text)


def render_page(data: dict[str, Any]) -> str:
    """The HTML page of `data` (from `view_data`), with everything it needs inline."""
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).translate(_JSON_MARKUP)
    parts = {"TITLE": _escape(data["title"]), "CSS": _static("view.css"), "DATA": payload,
             "PLOTLY": _inline(plotly_js()),
             "APP": _inline("".join(_static(name) for name in APP_SCRIPTS))}
    pieces = _PLACEHOLDER.split(_static("page.html"))  # [text, name, text, name, ...]: filled in one pass
    missing = set(parts) - set(pieces[1::2])
    if missing:
        raise RuntimeError(f"page template: placeholders {sorted(missing)} are missing")
    return "".join(parts[p] if i % 2 else p for i, p in enumerate(pieces))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_OUR_TITLE = re.compile(rb"<title>[^<]*- interp view</title>")
"""How the template's head (`static/page.html`) ends a page's title: marks a page this module wrote."""


def _is_our_page(folder: Path) -> bool:
    """Whether `folder` is a view this module wrote (and may replace): a real folder holding only
    an index.html whose title is the template's. Anything else is the user's, never moved."""
    if folder.is_symlink() or not folder.is_dir() or [p.name for p in folder.iterdir()] != [INDEX]:
        return False
    index = folder / INDEX
    if index.is_symlink() or not index.is_file():
        return False
    with open(index, "rb") as f:
        head = f.read(64 * 1024).split(b"</head>", 1)[0]
    return _OUR_TITLE.search(head) is not None


def write_view(
    path: str | Path,
    device: str | torch.device | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    examples: Sequence[ExampleInput] = (),
    loss: LossInput | None = None,
    cache: str | Path | None = None,
) -> Path:
    """Write `path/view/index.html` for the run or analysis directory or checkpoint-suite
    folder `path`, with token strips of the analysis's example and of `examples`
    (`interp.view.examples`) and a loss curve on `loss` (a suite's default: see `view_data`); `cache`: a
    suite's results cache root (default: in the suite folder); returns the
    page's path. Bad input (a missing, empty or half-written directory, a `view` of the
    user's own in it, an example the model cannot read) raises before anything is written,
    naming what is wrong."""
    root = Path(path)
    final = root / VIEW_DIR
    if os.path.lexists(final) and not _is_our_page(final):
        raise ViewError(f"{final} exists and is not an explorer page written by interp view: move it away or "
                        "choose another directory")
    page = render_page(view_data(root, device=device, progress=progress, examples=examples, loss=loss, cache=cache))
    tmp = root / f".{VIEW_DIR}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    old = root / f".{VIEW_DIR}-old.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        with open(tmp / INDEX, "w", encoding="utf-8") as f:
            f.write(page)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
    fsync_dir(root)
    return final / INDEX
