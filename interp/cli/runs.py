"""Finding the runs a command names: a run directory, every run below an analysis or sweep
directory, or a checkpoint-suite folder."""

from __future__ import annotations

from pathlib import Path

from interp.checkpoints import Run, open_checkpoints
from interp.configs import ConfigError
from interp.errors import InputError, MissingFileError
from interp.model import ModelConfig
from interp.run_layout import ANALYSIS_FILE, CHECKPOINTS_DIR, CONFIG_FILE, MANIFEST_FILE, METRICS_FILE
from interp.suite_layouts import is_suite_folder
from interp.suites import HUB_PREFIX, CheckpointSuite, open_suite

RUN_MARKERS = (CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, CHECKPOINTS_DIR)


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in RUN_MARKERS)


def run_dirs(path: Path) -> list[Path]:
    """The run directory `path`, or every run directory below it (an analysis or sweep
    output), including incomplete ones (any of config.json, manifest.json, metrics.jsonl,
    checkpoints/ makes a run)."""
    if not path.exists():
        raise MissingFileError(f"{path}: no run directory (no such directory)")
    if not path.is_dir():
        raise MissingFileError(f"{path} is not a directory (expected a run or analysis directory)")
    if _is_run_dir(path):
        return [path]
    found = {p.parent for marker in RUN_MARKERS for p in path.rglob(marker)}
    # checkpoints/step_N/ holds no marker, but a run's own subdirectories must not count twice
    runs = sorted(p for p in found if not any(q in p.parents for q in found))
    if runs:
        return runs
    if (path / ANALYSIS_FILE).exists():
        raise MissingFileError(f"{path} is an analysis directory with no runs yet (they go in {path / 'runs'}/<name>)")
    raise MissingFileError(f"{path}: no run directory (config.json + manifest.json) found")


def find_runs(path: Path, cache: str | None = None) -> list[Run | CheckpointSuite]:
    """Every run at or below `path` that has a config (see `run_dirs`), or the checkpoint suite
    `path` is (`step<N>` or `checkpoint-<N>` sub-folders saved by `transformers`, or `hf:<owner>/<name>`,
    a hub model; its results go to `cache`, default its interp-cache/)."""
    name = str(path)
    if name.startswith(HUB_PREFIX):
        return [open_suite(name.removeprefix(HUB_PREFIX), hub=True, cache=cache)]
    if is_suite_folder(path) or (path / CONFIG_FILE).is_file():
        return [open_checkpoints(path, cache=cache)]
    if cache is not None:
        raise InputError(f"--cache: {path} is no checkpoint suite (step<N> or checkpoint-<N> sub-folders); runs "
                         "cache their results in themselves")
    dirs = run_dirs(path)
    runs = [Run(p) for p in dirs if (p / CONFIG_FILE).exists()]
    if not runs:
        raise MissingFileError(f"{path}: no run directory with a {CONFIG_FILE} found (below it: "
                               f"{', '.join(str(p) for p in dirs[:3])}); `interp info --verify` says what is wrong")
    return runs


def one_run(path: Path, cache: str | None = None) -> Run | CheckpointSuite:
    """The run `path` names: a run directory, an analysis directory with exactly one run, or a
    checkpoint suite (results in `cache`, default its interp-cache/).

    `Run.open` on an analysis directory fails ("no config.json"); here such a directory
    is accepted when it holds one run, and otherwise the error lists the runs to choose from."""
    runs = find_runs(path, cache)
    if len(runs) > 1:
        listed = ", ".join(str(r.path) for r in runs[:5]) + (f", ... ({len(runs)} in all)" if len(runs) > 5 else "")
        raise InputError(f"{path} holds {len(runs)} runs; name one of them: {listed}")
    return runs[0]


def model_config(run: Run) -> ModelConfig:
    """The run's model config; a config.json that does not describe one is named."""
    try:
        return run.model_config
    except (ConfigError, KeyError, TypeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise ConfigError(f"{run.path / CONFIG_FILE}: model", "a valid model config", str(message)) from None
