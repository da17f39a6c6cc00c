"""The headline panel of an analysis in the explorer (`interp view`), typed: what an analysis's
`view` reads and what it returns.

The explorer opens a directory as a `Source`, computes each run's page data (`RunsData`: per run,
its logged `metrics`, cached `probes`, `steps`, `model` sizes, ...; see `interp.view.data.run_data`)
and calls the analysis's `view(source, runs)` (`Analysis.view`; an analysis without one, and a
plain run, get the explorer's generic view). The view returns a `Headline`: a title, a caption,
the run the checkpoint slider opens on, the steps marked on its slider (per run), and figures,
each serialised (`to_json`) to what the page's script (`interp/view/static/view.js`) draws:

- `Lines`: curves (`Series`; axis "y2": the right axis) with `VLine`s, `HLine`s and a shaded
  `Band`; a cursor follows the slider when the figure's `run` is the selected run;
- `Heads`: the layer x head grid of a per-head probe of `run` at the selected step, and the
  attention pattern of `head` on the example sequence;
- `Matrix`: a heatmap with one `Frame` per epoch, moved by the panel's own frame slider;
- `Table`: rows of `[name, value]`.

A view reads its own results typed (`interp.analysis.read_results`), so a renamed field fails
loudly instead of dropping a series.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from interp.checkpoints import CheckpointSource, Run
from interp.ids import HeadId

SIGNIFICANT = 5  # significant digits of the numbers the page holds

RunsData = dict[str, dict[str, Any]]
"""Each run's page data by run name (`interp.view.data.run_data`)."""

Axis = Literal["y", "y2"]


def num(x: Any) -> float | int | None:
    """A finite number rounded to `SIGNIFICANT` digits (ints kept); None for NaN, inf or non-numbers."""
    if isinstance(x, bool) or not isinstance(x, int | float | np.integer | np.floating):
        return None
    if isinstance(x, int | np.integer):
        return int(x)
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{SIGNIFICANT}g}")


def nums(values: Sequence[Any] | np.ndarray) -> list[float | int | None]:
    return [num(v) for v in np.asarray(values).tolist()] if isinstance(values, np.ndarray) else [num(v) for v in values]


@dataclass(frozen=True)
class Source:
    """A directory to view: one run, an analysis output with its runs (`runs/<name>/`), or a
    checkpoint-suite folder (`interp.suites`: one `CheckpointSuite`, shown as a run is)."""

    path: Path
    kind: Literal["run", "analysis", "suite"]
    runs: dict[str, Run | CheckpointSource]
    record: dict[str, Any] = field(default_factory=dict)
    """`analysis.json` of an analysis (analysis name, preset, config); empty for a run."""
    results: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    """What the explorer left out of the directory and why (an empty run folder)."""

    @property
    def analysis(self) -> str | None:
        return self.record.get("analysis") if self.kind == "analysis" else None


def main_run(source: Source) -> str:
    """The run a page opens on unless its analysis names another (`Analysis.opens_on`):
    "main", else "base", else the first."""
    for name in ("main", "base"):
        if name in source.runs:
            return name
    return next(iter(source.runs))


# --- the figures -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One curve of a `Lines` figure; `axis` "y2" draws it against the right axis."""

    name: str
    x: Sequence[Any]
    y: Sequence[Any]
    axis: Axis = "y"

    @classmethod
    def of_metric(cls, data: Mapping[str, Any], key: str, name: str | None = None, axis: Axis = "y") -> Series | None:
        """The logged metric `key` of a run's page data `data` (None: the run did not log it)."""
        curve = data["metrics"].get(key)
        if curve is None:
            return None
        return cls(name or key, curve["steps"], curve["values"], axis)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "x": list(self.x), "y": list(self.y), "axis": self.axis}


@dataclass(frozen=True)
class VLine:
    x: int
    label: str

    @classmethod
    def at(cls, *pairs: tuple[int | None, str]) -> list[VLine]:
        """Vertical lines at the given steps (None: not reached, left out), with short labels."""
        return [cls(m.step, m.label) for m in Mark.at(*pairs)]

    def to_json(self) -> dict[str, Any]:
        return {"x": self.x, "label": self.label}


@dataclass(frozen=True)
class HLine:
    y: float
    label: str
    axis: Axis | None = None  # None: the left axis

    def to_json(self) -> dict[str, Any]:
        return {"y": self.y, "label": self.label, **({"axis": self.axis} if self.axis else {})}


@dataclass(frozen=True)
class Band:
    """A shaded span of steps."""

    x0: int
    x1: int
    label: str

    def to_json(self) -> dict[str, Any]:
        return {"x0": self.x0, "x1": self.x1, "label": self.label}


@dataclass(frozen=True)
class Mark:
    """A labelled step on a run's checkpoint slider."""

    step: int
    label: str

    @classmethod
    def at(cls, *pairs: tuple[int | None, str]) -> list[Mark]:
        """Marks at the given steps (None: not reached, left out); labels at one step are joined."""
        by_step: dict[int, list[str]] = {}
        for step, label in pairs:
            if isinstance(step, int) and not isinstance(step, bool):
                by_step.setdefault(step, []).append(label)
        return [cls(step, "; ".join(labels)) for step, labels in sorted(by_step.items())]

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "label": self.label}


@dataclass(frozen=True)
class Lines:
    """Curves over steps (or episodes: `xlabel`); a figure with a `run` follows the slider
    with a cursor while that run is selected. None in `series`: a curve the run lacks, left out."""

    title: str
    series: Sequence[Series | None]
    run: str | None = None
    xlabel: str | None = None
    ylabel: str | None = None
    y2label: str | None = None
    band: Band | None = None
    hlines: Sequence[HLine] | None = None
    vlines: Sequence[VLine] | None = None

    def to_json(self) -> dict[str, Any]:
        optional = {"run": self.run, "xlabel": self.xlabel, "ylabel": self.ylabel, "y2label": self.y2label,
                    "band": self.band and self.band.to_json(),
                    "hlines": None if self.hlines is None else [h.to_json() for h in self.hlines],
                    "vlines": None if self.vlines is None else [v.to_json() for v in self.vlines]}
        return {"type": "lines", "title": self.title, "series": [s.to_json() for s in self.series if s is not None],
                **{k: v for k, v in optional.items() if v is not None}}


@dataclass(frozen=True)
class Heads:
    """The layer x head grid of per-head probe `probe` of `run` at the selected step, and the
    attention pattern of `head` (None: the page's choice) on the example sequence."""

    title: str
    run: str
    probe: str
    head: HeadId | None

    @classmethod
    def of(cls, title: str, run: str, data: Mapping[str, Any], probe: str | None,
           head: HeadId | None = None) -> Heads | None:
        """The grid of `probe` (None: no such figure) in `run`'s page data `data`, showing `head`
        where the probe has it, else the head with the probe's largest last value."""
        if probe is None:
            return None
        if head is None or str(head) not in data["probes"][probe]["columns"]:
            head = best_head(data, probe)
        return cls(title, run, probe, head)

    def to_json(self) -> dict[str, Any]:
        return {"type": "heads", "title": self.title, "run": self.run, "probe": self.probe,
                "head": None if self.head is None else str(self.head)}


@dataclass(frozen=True)
class Frame:
    label: str
    z: Sequence[Sequence[float | int | None]]

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "z": [list(row) for row in self.z]}


@dataclass(frozen=True)
class Matrix:
    """A heatmap with one frame per epoch (moved by the panel's frame slider); `symmetric`:
    its colour scale is centred on zero."""

    title: str
    frames: Sequence[Frame]
    x: Sequence[str]
    y: Sequence[str]
    xlabel: str
    ylabel: str
    caption: str
    symmetric: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"type": "matrix", "title": self.title, "frames": [f.to_json() for f in self.frames],
                "x": list(self.x), "y": list(self.y), "xlabel": self.xlabel, "ylabel": self.ylabel,
                "symmetric": self.symmetric, "caption": self.caption}


@dataclass(frozen=True)
class Table:
    """Rows of `[name, value]`."""

    rows: Sequence[tuple[str, Any]]
    title: str = "results.json"

    @classmethod
    def of(cls, results: Mapping[str, Any], keys: Iterable[str]) -> Table:
        """The results (as `results.json` holds them: `interp.analysis.results_dict`) named by
        `keys`, numbers rounded for the page, lists and dicts as JSON text."""
        rows = []
        for key in keys:
            if key not in results:
                raise ValueError(f"table: the results have no field {key!r} (they have {sorted(results)})")
            value = results[key]
            if isinstance(value, float):
                value = num(value)
            elif isinstance(value, list):
                value = json.dumps([num(v) if isinstance(v, float) else v for v in value])
            elif isinstance(value, dict):
                value = json.dumps(value)
            rows.append((key, value))
        return cls(rows)

    def to_json(self) -> dict[str, Any]:
        return {"type": "table", "title": self.title, "rows": [[name, value] for name, value in self.rows]}


HeadlineFigure = Lines | Heads | Matrix | Table


@dataclass(frozen=True)
class Headline:
    """An analysis's headline panel. `run`: the run the page opens on (None: the explorer's
    choice, `main_run` or `Analysis.opens_on`); `marks`: steps marked on each run's slider
    (they replace the explorer's own marks at those steps); None in `figures`: a figure the
    data does not allow, left out."""

    title: str
    caption: str
    figures: Sequence[HeadlineFigure | None]
    run: str | None = None
    marks: Mapping[str, Sequence[Mark]] = field(default_factory=dict)

    def to_json(self, opened: str) -> dict[str, Any]:
        """The page's `headline` (its marks go to the runs); `opened`: the run the page opens on unless `run`."""
        return {"title": self.title, "caption": self.caption, "run": self.run or opened,
                "figures": [f.to_json() for f in self.figures if f is not None]}


# --- reading the runs' page data ---------------------------------------------------------------------


def probe_column(probe: Mapping[str, Any], column: str) -> list[Any]:
    """One column of a cached probe in the page data, a value per probed step."""
    j = probe["columns"].index(column)
    return [row[j] for row in probe["values"]]


def head_probe(data: Mapping[str, Any], preferred: tuple[str, ...] = ()) -> str | None:
    """A per-head probe of the run: the first of `preferred` it has, else its first cached one,
    else the previous-token score on the example."""
    probes = data["probes"]
    for key in (*preferred, *sorted(k for k in probes if not k.startswith("example.")), "example.induction",
                "example.prev_token"):
        if key in probes and probes[key]["heads"] and probes[key]["steps"]:
            return key
    return None


def best_head(data: Mapping[str, Any], key: str) -> HeadId | None:
    """The head with the largest value of probe `key` at its last probed step."""
    probe = data["probes"].get(key)
    if not probe or not probe["values"]:
        return None
    last = probe["values"][-1]
    found = [(v, c) for c, v in zip(probe["columns"], last, strict=True) if v is not None]
    return HeadId.parse(max(found)[1]) if found else None
