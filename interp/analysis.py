"""The analysis contract, the registry and the one function that runs an analysis.

An analysis module exposes an `Analysis` and registers it under the
`interp.analyses` entry-point group in `pyproject.toml`; the CLI finds it there,
so the library never imports `analyses`, and only the analysis that is named is
imported. An analysis supplies presets of its config (an `AnalysisConfig`),
`measure` (trains its runs through `Context.train`, probes them, returns a typed
results dataclass), `figures` (matplotlib figures with captions), `report`
(prose and tables that place the figures by key) and, optionally, `view` (its headline panel in
the explorer, `interp view`). `run_analysis` does the rest: it writes `analysis.json`, the
figures, `report.md` and `results.json`; `read_results` reads the results back typed.

This module is also the one import surface for writing an analysis: it hands on the configs, the
jobs and context of `interp.pipeline`, the probe runner, `Figure`/`Report` and the explorer's
headline vocabulary (`interp.headline`), so an analysis imports its contract from here.

An output directory is written only once it is accepted: new or empty, or holding
this analysis (`analysis.json`) with nothing trained yet, or, with `resume`, the
same config; a directory of anything else is refused unless `force`. Nothing in it
is rewritten before then, and one process at a time writes it (its lock).
"""

from __future__ import annotations

import dataclasses
import json
import keyword
import math
import shutil
import time
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from interp.checkpoints import Run
from interp.configs import MAX_SEED, ConfigError, require, to_dict, with_overrides
from interp.devices import resolve_device
from interp.errors import InputError, InterpError, OutputExistsError, UnknownNameError, listing
from interp.files import atomic_write_json, dumps_json, is_temporary, read_json
from interp.headline import (
    Band,
    Frame,
    Headline,
    Heads,
    HLine,
    Lines,
    Mark,
    Matrix,
    RunsData,
    Series,
    Source,
    Table,
    VLine,
    head_probe,
    main_run,
    num,
    nums,
    probe_column,
)
from interp.ids import Identity
from interp.locking import run_lock
from interp.memory import check_memory
from interp.model import Batch, ModelConfig
from interp.parallel import Backend
from interp.pipeline import (
    RUNS_DIR,
    AnalysisConfig,
    Context,
    JobSetup,
    RunShape,
    TrainingJob,
    final_only,
    nearest_step,
    read_task,
)
from interp.probe_table import ProbeTable
from interp.probing import probe
from interp.report import FIGURES_DIR, Figure, Report, write_figures
from interp.run_layout import ANALYSIS_FILE, CONFIG_FILE, LOCK_FILE
from interp.train import TrainHooks
from interp.train_config import CheckpointPolicy, TrainConfig

ENTRY_POINT_GROUP = "interp.analyses"
RETIRED_CONFIG_FIELDS = ("workers",)
"""Keys that an older `analysis.json` holds in its config but configs no longer have:
`workers`, an execution setting now (`Context.workers`), which never changed a result."""

ConfigT = TypeVar("ConfigT", bound=AnalysisConfig)
ResultsT = TypeVar("ResultsT")


def detail(**kw: Any) -> Any:
    """A results field that figures and reports read but `results.json` leaves out
    (curves, grids, probe tables)."""
    return field(default=None, repr=False, compare=False, metadata={"detail": True}, **kw)


def inline(**kw: Any) -> Any:
    """A results field holding a results dataclass whose fields `results.json` writes at
    this field's level, in its place, under their own names (e.g. the findings of one step
    of an analysis among the analysis's other numbers)."""
    return field(metadata={"inline": True}, **kw)


@dataclass(frozen=True)
class Analysis(Generic[ConfigT, ResultsT]):
    """`measure(config, context)` trains and measures; `figures(config, results, context)`
    draws; `report(config, results)` writes the prose. `headline` names the results a
    sweep plots by default. For the explorer (`interp view`): `example(run)`, when given, is
    a token sequence of the run's task on which it shows attention, or a one-row `Batch` with
    the input vectors of a model that reads them (default: random tokens repeated twice);
    `view(source, runs)` builds the analysis's headline panel from its directory and its runs'
    page data, reading its results with `read_results` (default: the generic view, losses and
    a head grid); `opens_on(source)` names the run the page opens on and computes first
    (default: "main", else "base", else the first). `training_rows(run, n,
    generator)`, when given, draws `n` rows of the distribution `run` was trained on: the data of
    sampling-based probes such as the LLC (`interp llc`). `preset_workers` names presets whose independent
    runs train on that many local processes unless the caller chooses (`backend`, `--workers`),
    e.g. 1 where starting a pool costs more than the runs; other presets use one per core. It is
    an execution setting, not part of a preset's config: it never changes a result. `run_shapes(config)`
    declares, before anything trains, the runs `measure` will train (`RunShape`s: a job and how many
    runs of it): `interp run --plan` and the GPU check read them."""

    name: str
    description: str
    presets: Mapping[str, ConfigT]
    measure: Callable[[ConfigT, Context], ResultsT]
    figures: Callable[[ConfigT, ResultsT, Context], Iterable[Figure]]
    report: Callable[[ConfigT, ResultsT], Report]
    headline: tuple[str, ...] = ()
    example: Callable[[Run], Sequence[int] | Batch] | None = None
    training_rows: Callable[[Run, int, torch.Generator], Batch] | None = None
    view: Callable[[Source, RunsData], Headline] | None = None
    opens_on: Callable[[Source], str] | None = None
    preset_workers: Mapping[str, int] = field(default_factory=dict)
    run_shapes: Callable[[ConfigT], Sequence[RunShape]] | None = None

    def __post_init__(self) -> None:
        for preset, workers in self.preset_workers.items():
            require(preset in self.presets, "preset_workers", f"keys among the presets {sorted(self.presets)}",
                    preset)
            require(isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0,
                    f"preset_workers[{preset!r}]", "an integer >= 0 (0: one per core)", workers)


class AnalysisImportError(InterpError, ImportError):
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
        raise UnknownNameError(f"unknown analysis {name!r}; available: {sorted(found)}")
    try:
        analysis = found[name].load()
    except Exception as err:  # noqa: BLE001 - any import failure is reported by name
        raise AnalysisImportError(f"analysis {name!r} ({found[name].value}) failed to load: "
                                  f"{type(err).__name__}: {err}") from err
    if not isinstance(analysis, Analysis):
        raise AnalysisImportError(f"analysis {name!r}: {found[name].value} is a {type(analysis).__name__}, "
                                  "not an interp.analysis.Analysis")
    return analysis


def analysis_of_run(run: Run) -> Analysis | None:
    """The registered analysis that trained `run` (a run in `<analysis dir>/runs/<name>/`), or None
    for a run of no analysis. An analysis that is named but does not load is an error."""
    record_file = run.path.parent.parent / ANALYSIS_FILE
    if run.path.parent.name != RUNS_DIR or not record_file.is_file():
        return None
    name = read_json(record_file).get("analysis")
    if not isinstance(name, str):
        raise InputError(f"{record_file}: analysis: expected the analysis's name, got {name!r}")
    return get_analysis(name)


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
    """The preset with `overrides` applied and checked.

    Errors name the dotted field (`train.lr`, not the `lr` a nested config reports); every
    seed in the tree must be an integer in [0, 2**63); an override that the analysis
    replaces with a value of its own (e.g. `model.d_vocab`, which follows the task) is
    refused rather than silently dropped."""
    if preset not in analysis.presets:
        raise UnknownNameError(f"preset: {analysis.name} has {sorted(analysis.presets)}, not {preset!r}")
    base = analysis.presets[preset]
    try:
        config = with_overrides(base, overrides)
    except ConfigError as err:
        qualified = _qualified(err, base, overrides)
        if qualified is err:
            raise
        raise qualified from err
    for path, node in _config_nodes(config):
        if any(f.name == "seed" for f in dataclasses.fields(node)):
            seed = node.seed
            require(isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED,
                    f"{path}seed", "an integer in [0, 2**63)", seed)
    _check_overrides_kept(base, config, overrides)
    return config


def _config_nodes(cfg: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted prefix, config) of `cfg` and of every config nested in it: `("", cfg)`, `("train.", ...)`."""
    nodes = [(prefix, cfg)]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            nodes += _config_nodes(value, f"{prefix}{f.name}.")
    return nodes


def _qualified(err: ConfigError, base: Any, overrides: Mapping[str, Any]) -> ConfigError:
    """`err` naming its field by its dotted path in the config tree.

    A nested config validates itself and knows only its own field names (`lr`); the
    overrides rebuild the configs along their keys (every config, for `seed`), children
    before parents, so the deepest rebuilt config with a field of that name raised it."""
    if "." in err.field:
        return err
    rebuilt = [(prefix, node) for prefix, node in _config_nodes(base)
               if prefix == "" or "seed" in overrides or any(k.startswith(prefix) for k in overrides)]
    candidates = [prefix for prefix, node in rebuilt if err.field in {f.name for f in dataclasses.fields(node)}]
    if not candidates:
        return err
    deepest = max(c.count(".") for c in candidates)
    candidates = [c for c in candidates if c.count(".") == deepest]
    prefix = next((c for c in candidates if f"{c}{err.field}" in overrides), candidates[0])
    if not prefix:
        return err
    message = str(err)
    rest = message[len(err.field):] if message.startswith(err.field) else f": {message}"
    qualified = type(err).__new__(type(err))
    Exception.__init__(qualified, f"{prefix}{err.field}{rest}")
    qualified.field = f"{prefix}{err.field}"
    return qualified


def _check_overrides_kept(base: Any, config: Any, overrides: Mapping[str, Any]) -> None:
    """Refuse an override that the analysis replaced (a config that sets a field from
    another, like `fit_model`): the run would silently not be the one asked for."""
    for key, value in overrides.items():
        if key == "seed":
            continue
        *parents, leaf = key.split(".")
        given, result = base, config
        for part in parents:
            given, result = getattr(given, part), getattr(result, part)
        try:  # the override alone, coerced and validated as the field's own config would
            wanted = getattr(with_overrides(given, {leaf: value}), leaf)
        except ConfigError:
            continue  # valid only together with other overrides: they were applied together above
        actual = getattr(result, leaf)
        if actual != wanted:
            raise ConfigError(key, f"a value this analysis keeps (it sets {key} itself, here to {actual!r}, "
                              "e.g. from its task's sizes: override those instead)", wanted)


def _roundtrip(obj: Any) -> Any:
    """`obj` as it reads back from `analysis.json` (tuples become lists), to compare with a stored config."""
    return json.loads(dumps_json(obj, Path(ANALYSIS_FILE)))


def _first_difference(stored: Any, given: Any, prefix: str = "") -> str:
    """The dotted key of the first value that differs between two JSON trees, with both values."""
    if isinstance(stored, dict) and isinstance(given, dict):
        for key in sorted(set(stored) | set(given)):
            if stored.get(key, _MISSING) != given.get(key, _MISSING):
                return _first_difference(stored.get(key, _MISSING), given.get(key, _MISSING), f"{prefix}{key}.")
    return f"{prefix.rstrip('.') or 'config'} (stored {_shown(stored)}, given {_shown(given)})"


_MISSING = object()


def _shown(value: Any) -> str:
    return "nothing" if value is _MISSING else repr(value)


def accept_output_dir(out: Path, record: Mapping[str, Any], *, resume: bool, force: bool) -> None:
    """Raise unless `out` may receive the analysis described by `record` (`analysis.json`).

    Accepted: a missing or empty directory; one holding `analysis.json` of the same
    analysis with no run trained yet (a new config may start over); with `resume`, one
    whose `analysis.json` holds the same config (every run config below it must read as
    strict JSON). Refused: the same analysis without `resume` once it has runs (they would
    be mixed with new ones, or refused half-way), or with another config; and, unless
    `force`, a non-empty directory that holds something else (the user's own files would be
    overwritten by results.json, report.md and figures/). Only the lock file and temporary
    files of interrupted writes do not count as content."""
    name = record["analysis"]
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory; choose another output directory")
    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE and not is_temporary(p.name)) \
        if out.is_dir() else []
    if not entries:
        return
    stored, unreadable = None, ""
    if ANALYSIS_FILE in entries:
        try:
            stored = read_json(out / ANALYSIS_FILE)
        except ValueError as err:  # RunDamagedError: not strict JSON
            unreadable = f" ({err})"
    if not isinstance(stored, dict) or stored.get("analysis") != name:
        if force:
            return
        held = (f"an output of analysis {stored['analysis']!r}" if isinstance(stored, dict) and "analysis" in stored
                else f"{ANALYSIS_FILE} that cannot be read{unreadable}" if ANALYSIS_FILE in entries
                else f"files that are not an output of {name!r} {listing(entries, 5)}")
        raise OutputExistsError(f"{out} is not empty: it holds {held}; choose another output directory, or pass "
                                "--force (force=True) to write into it anyway")
    runs_dir = out / RUNS_DIR
    runs = sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    if not runs:
        return
    if not resume:
        raise OutputExistsError(f"{out} already holds analysis {name!r} with runs {listing(runs, 5)}; pass --resume "
                                "(resume=True) to continue it with the same config, or choose another output directory")
    config = stored.get("config")
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k not in RETIRED_CONFIG_FIELDS}
    if config != _roundtrip(record["config"]):
        difference = _first_difference(config, _roundtrip(record["config"]))
        raise InputError(f"resume: the config differs from {out / ANALYSIS_FILE} at {difference}; resume with the "
                         "same preset and overrides, or choose another output directory")
    for run in runs:
        if (runs_dir / run / CONFIG_FILE).exists():
            read_json(runs_dir / run / CONFIG_FILE)  # a damaged run config is named before anything runs


def run_analysis(
    name: str,
    out_dir: str | Path,
    preset: str = "quick",
    overrides: Mapping[str, Any] | None = None,
    device: str | None = None,
    progress: bool = True,
    resume: bool = False,
    backend: Backend | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Run a registered analysis end to end; returns its results as written to `results.json`.

    Before anything is written: the config is resolved and checked, the main model's
    training memory is checked against the device (`InsufficientMemoryError`), the
    output directory is locked and accepted (`accept_output_dir`; `force` allows a
    non-empty directory that holds no output of this analysis). `backend` runs each
    stage's independent runs (None: the preset's `preset_workers` local processes, else
    one per core); like the device, it is not part of the config."""
    analysis = get_analysis(name)
    config = resolve_config(analysis, preset, overrides or {})
    out = Path(out_dir)
    resolved = resolve_device(device)
    if isinstance(getattr(config, "model", None), ModelConfig):
        # The main run's model at its batch size: a config that cannot fit is refused here, in
        # this process, rather than in each worker after the output directory was written.
        check_memory(config.model, resolved, batch_size=getattr(getattr(config, "train", None), "batch_size", 0))
    record = {"analysis": name, "preset": preset, "config": to_dict(config)}
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory; choose another output directory")
    with run_lock(out):
        accept_output_dir(out, record, resume=resume, force=force)
        for leftover in analysis_leftovers(out):  # a killed writer's, never a live one's: we hold the lock
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        context = Context(out, resolved, progress=progress, resume=resume, backend=backend,
                          workers=analysis.preset_workers.get(preset, 0))
        atomic_write_json(out / ANALYSIS_FILE, record)
        started = time.perf_counter()
        measured = analysis.measure(config, context)
        figures = write_figures(analysis.figures(config, measured, context), out)
        analysis.report(config, measured).write(out / "report.md", figures)
        results = json_safe({"analysis": name, "preset": preset, **results_dict(measured),
                             "wall_seconds": round(time.perf_counter() - started, 1), "device": str(context.device)})
        atomic_write_json(out / "results.json", results)
    return results


def analysis_leftovers(out: Path) -> list[Path]:
    """Temporary files of interrupted writes in an analysis directory and its figures/ (its
    runs' own are `RunState.leftovers`); the next run of the analysis removes them."""
    return sorted(p for d in (out, out / FIGURES_DIR) if d.is_dir() for p in d.iterdir() if is_temporary(p.name))


def results_dict(results: Any) -> dict[str, Any]:
    """The results dataclass as `results.json` holds it: nested dataclasses become dicts
    (an `inline()` field's fields join its parent's), identities their text form,
    numpy values plain numbers and lists; `detail()` fields are left out. A field named
    after a Python keyword with a trailing underscore (`lambda_`) is written without it."""
    if not dataclasses.is_dataclass(results) or isinstance(results, type):
        raise TypeError(f"results: expected a dataclass, got {type(results).__name__}")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(results):
        if f.metadata.get("detail"):
            continue
        value = getattr(results, f.name)
        if f.metadata.get("inline"):
            out.update(results_dict(value))
        else:
            out[_key(f.name)] = _plain(value)
    return out


def _key(name: str) -> str:
    stripped = name.removesuffix("_")
    return stripped if stripped != name and keyword.iskeyword(stripped) else name


def read_results(directory: str | Path, cls: type[ResultsT]) -> ResultsT:
    """The results dataclass `cls` from `directory/results.json` (the inverse of `results_dict`):
    identities parsed back from their text form, nested dataclasses rebuilt, `detail()` fields
    left at None. A field of `cls` that the file lacks (renamed since, or another analysis's file)
    is an error naming it, never a silently missing value; keys the file adds are ignored."""
    path = Path(directory) / "results.json"
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object of {cls.__name__}, got {type(data).__name__}")
    return _typed_dataclass(cls, data, path)


def _typed_dataclass(cls: type[ResultsT], data: Mapping[str, Any], path: Path, prefix: str = "") -> ResultsT:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("detail") or not f.init:
            continue
        if f.metadata.get("inline"):  # its fields are the parent's (see `results_dict`)
            values[f.name] = _typed_dataclass(hints[f.name], data, path, prefix)
            continue
        key = _key(f.name)
        if key not in data:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise InputError(f"{path}: {prefix}{key} is missing: {cls.__name__} expects it (a file written by "
                             "another version of the analysis? run it again)")
        values[f.name] = _typed(hints[f.name], data[key], path, f"{prefix}{key}.")
    return cls(**values)


def _typed(hint: Any, value: Any, path: Path, prefix: str) -> Any:
    """`value` as read from JSON, rebuilt as `hint` where it differs from its JSON form (see `_plain`)."""
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        return _typed(members[0], value, path, prefix) if len(members) == 1 else value
    if origin in (list, tuple, Sequence) and isinstance(value, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return tuple(_typed(a, v, path, prefix) for a, v in zip(args, value, strict=False))
        items = [_typed(args[0], v, path, prefix) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) and isinstance(value, dict):
        key, item = args or (Any, Any)
        number = key in (int, float)  # `results_dict` writes every key as text
        return {key(k) if number else _typed(key, k, path, prefix): _typed(item, v, path, f"{prefix}{k}.")
                for k, v in value.items()}
    if isinstance(hint, type) and isinstance(value, str) and hasattr(hint, "parse"):
        return hint.parse(value)  # an identity in its text form (HeadId, CheckpointRef, ...)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return _typed_dataclass(hint, value, path, prefix)
    if hint is np.ndarray:
        return np.asarray(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Identity):  # one rule for every identity: its text form, read back by `parse`
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


__all__ = [
    # the contract and running it
    "ANALYSIS_FILE", "MAX_SEED", "Analysis", "AnalysisImportError", "accept_output_dir", "analysis_names", "detail",
    "get_analysis", "inline", "json_safe", "load_all", "read_results", "resolve_config", "results_dict", "run_analysis",
    # configs, jobs and the context that trains them (interp.pipeline, interp.model, interp.train)
    "AnalysisConfig", "CheckpointPolicy", "Context", "JobSetup", "ModelConfig", "Run", "RunShape", "TrainConfig",
    "TrainHooks",
    "TrainingJob", "final_only", "nearest_step", "read_task",
    # probing (interp.probing) and the report (interp.report)
    "Figure", "ProbeTable", "Report", "probe",
    # the explorer's headline (interp.headline)
    "Band", "Frame", "HLine", "Headline", "Heads", "Lines", "Mark", "Matrix", "RunsData", "Series", "Source", "Table",
    "VLine", "head_probe", "main_run", "num", "nums", "probe_column",
]
