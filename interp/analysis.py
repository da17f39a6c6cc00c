"""The analysis contract, the registry and the one function that runs an analysis.

An analysis module exposes an `Analysis` and registers it under the
`interp.analyses` entry-point group in `pyproject.toml`; the CLI finds it there,
so the library never imports `analyses`, and only the analysis that is named is
imported. An analysis supplies presets of its config (an `AnalysisConfig`),
`measure` (trains its runs through `Context.train`, probes them, returns a typed
results dataclass), `figures` (matplotlib figures with captions) and `report`
(prose and tables that place the figures by key). `run_analysis` does the rest:
it writes `analysis.json`, the figures, `report.md` and `results.json`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from interp.checkpoints import atomic_write_json
from interp.configs import to_dict, with_overrides
from interp.ids import CheckpointRef, HeadId
from interp.model import resolve_device
from interp.parallel import Backend
from interp.pipeline import AnalysisConfig, Context
from interp.report import Figure, Report, write_figures

ENTRY_POINT_GROUP = "interp.analyses"

ConfigT = TypeVar("ConfigT", bound=AnalysisConfig)
ResultsT = TypeVar("ResultsT")


def detail(**kw: Any) -> Any:
    """A results field that figures and reports read but `results.json` leaves out
    (curves, grids, probe tables)."""
    return field(default=None, repr=False, compare=False, metadata={"detail": True}, **kw)


@dataclass(frozen=True)
class Analysis(Generic[ConfigT, ResultsT]):
    """`measure(config, context)` trains and measures; `figures(config, results, context)`
    draws; `report(config, results)` writes the prose. `headline` names the results a
    sweep plots by default."""

    name: str
    description: str
    presets: Mapping[str, ConfigT]
    measure: Callable[[ConfigT, Context], ResultsT]
    figures: Callable[[ConfigT, ResultsT, Context], Iterable[Figure]]
    report: Callable[[ConfigT, ResultsT], Report]
    headline: tuple[str, ...] = ()


class AnalysisImportError(ImportError):
    """The module of a registered analysis could not be loaded."""


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def analysis_names() -> list[str]:
    """Every registered analysis, without importing any of them."""
    return sorted(_entry_points())


def get_analysis(name: str) -> Analysis:
    """The analysis registered as `name`; only its module is imported."""
    found = _entry_points()
    if name not in found:
        raise KeyError(f"unknown analysis {name!r}; available: {sorted(found)}")
    try:
        analysis = found[name].load()
    except Exception as err:  # noqa: BLE001 - any import failure is reported by name
        raise AnalysisImportError(f"analysis {name!r} ({found[name].value}) failed to load: "
                                  f"{type(err).__name__}: {err}") from err
    if not isinstance(analysis, Analysis):
        raise AnalysisImportError(f"analysis {name!r}: {found[name].value} is a {type(analysis).__name__}, "
                                  "not an interp.analysis.Analysis")
    return analysis


def load_all() -> tuple[dict[str, Analysis], dict[str, str]]:
    """Every registered analysis that loads, and for each one that does not, why."""
    loaded, broken = {}, {}
    for name in analysis_names():
        try:
            loaded[name] = get_analysis(name)
        except AnalysisImportError as err:
            broken[name] = str(err)
    return loaded, broken


def resolve_config(analysis: Analysis, preset: str, overrides: Mapping[str, Any]) -> Any:
    if preset not in analysis.presets:
        raise KeyError(f"preset: {analysis.name} has {sorted(analysis.presets)}, not {preset!r}")
    return with_overrides(analysis.presets[preset], overrides)


def run_analysis(
    name: str,
    out_dir: str | Path,
    preset: str = "quick",
    overrides: Mapping[str, Any] | None = None,
    device: str | None = None,
    progress: bool = True,
    resume: bool = False,
    backend: Backend | None = None,
) -> dict[str, Any]:
    """Run a registered analysis end to end; returns its results as written to `results.json`."""
    analysis = get_analysis(name)
    config = resolve_config(analysis, preset, overrides or {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    context = Context(out, resolve_device(device), progress=progress, resume=resume, backend=backend,
                      workers=config.workers)
    atomic_write_json(out / "analysis.json", {"analysis": name, "preset": preset, "config": to_dict(config)})
    started = time.perf_counter()
    measured = analysis.measure(config, context)
    figures = write_figures(analysis.figures(config, measured, context), out)
    analysis.report(config, measured).write(out / "report.md", figures)
    results = json_safe({"analysis": name, "preset": preset, **results_dict(measured),
                         "wall_seconds": round(time.perf_counter() - started, 1), "device": str(context.device)})
    atomic_write_json(out / "results.json", results)
    return results


def results_dict(results: Any) -> dict[str, Any]:
    """The results dataclass as `results.json` holds it: nested dataclasses become
    dicts, numpy values plain numbers and lists, `detail()` fields are left out."""
    if not dataclasses.is_dataclass(results):
        raise TypeError(f"results: expected a dataclass, got {type(results).__name__}")
    return {f.name: _plain(getattr(results, f.name)) for f in dataclasses.fields(results)
            if not f.metadata.get("detail")}


def _plain(value: Any) -> Any:
    if isinstance(value, HeadId | CheckpointRef):  # identities are stored in their text form
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return results_dict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def json_safe(obj: Any) -> Any:
    """`obj` with NaN and infinities replaced by None, so `results.json` is strict JSON
    (an undefined statistic, e.g. a correlation of a constant, reads as null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


__all__ = ["Analysis", "AnalysisImportError", "Figure", "Report", "analysis_names", "detail", "get_analysis",
           "load_all", "resolve_config", "results_dict", "run_analysis"]
