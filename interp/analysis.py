"""Registry and shared plumbing for analyses (one per phenomenon).

An analysis module exposes an `Analysis` object and registers it under the
`interp.analyses` entry-point group in `pyproject.toml`; the CLI finds it there,
so the library never imports `analyses`. Each analysis writes into one output
directory: its training runs, `figures/*.png`, `results.json` and `report.md`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch

from interp.checkpoints import atomic_write_bytes, atomic_write_json
from interp.configs import to_dict, with_overrides
from interp.model import resolve_device
from interp.parallel import Backend, LocalBackend

ENTRY_POINT_GROUP = "interp.analyses"


@dataclass(frozen=True)
class RunOptions:
    """`backend` runs an analysis's independent training runs (None: a local pool of
    the analysis's `workers` processes)."""

    device: torch.device
    progress: bool = True
    resume: bool = False
    backend: Backend | None = None

    def jobs(self, workers: int) -> Backend:
        """The backend for independent jobs; on CUDA the local pool is one process."""
        if self.backend is not None:
            return self.backend
        return LocalBackend(1 if self.device.type == "cuda" else workers)


@dataclass(frozen=True)
class Analysis:
    """`run(config, out_dir, options)` trains, probes, plots and returns the
    results dict (written to `results.json` by `run_analysis`). `headline` names
    the results a sweep plots by default."""

    name: str
    description: str
    presets: Mapping[str, Any]
    run: Callable[[Any, Path, RunOptions], dict[str, Any]]
    headline: tuple[str, ...] = ()


def registry() -> dict[str, Analysis]:
    found: dict[str, Analysis] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        analysis = ep.load()
        found[analysis.name] = analysis
    return dict(sorted(found.items()))


def get_analysis(name: str) -> Analysis:
    analyses = registry()
    if name not in analyses:
        raise KeyError(f"unknown analysis {name!r}; available: {sorted(analyses)}")
    return analyses[name]


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
    """Run a registered analysis end to end; returns its results."""
    analysis = get_analysis(name)
    config = resolve_config(analysis, preset, overrides or {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    options = RunOptions(device=resolve_device(device), progress=progress, resume=resume, backend=backend)
    atomic_write_json(out / "analysis.json", {"analysis": name, "preset": preset, "config": to_dict(config)})
    started = time.perf_counter()
    results = analysis.run(config, out, options)
    results = json_safe({"analysis": name, "preset": preset, **results,
                         "wall_seconds": round(time.perf_counter() - started, 1), "device": str(options.device)})
    atomic_write_json(out / "results.json", results)
    return results


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


@dataclass
class Report:
    """Builds `report.md`: a title, prose, key-number tables and figures."""

    title: str
    lines: list[str] = field(default_factory=list)

    def text(self, paragraph: str) -> Report:
        self.lines += [paragraph, ""]
        return self

    def table(self, rows: Sequence[tuple[str, Any]], header: tuple[str, str] = ("quantity", "value")) -> Report:
        self.lines += [f"| {header[0]} | {header[1]} |", "|---|---|"]
        self.lines += [f"| {k} | {_fmt(v)} |" for k, v in rows]
        self.lines.append("")
        return self

    def grid(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Report:
        """A table with any number of columns."""
        self.lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        self.lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
        self.lines.append("")
        return self

    def figure(self, path: Path, root: Path, caption: str) -> Report:
        self.lines += [f"![{caption}]({path.relative_to(root).as_posix()})", "", f"*{caption}*", ""]
        return self

    def figures(self, paths: Mapping[str, Path], root: Path, captions: Mapping[str, str]) -> Report:
        """Every figure named in `captions`, in that order."""
        for key, caption in captions.items():
            self.figure(paths[key], root, caption)
        return self

    def write(self, path: Path) -> Path:
        atomic_write_bytes(path, ("\n".join([f"# {self.title}", "", *self.lines]) + "\n").encode())
        return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
