"""Sweeps: one registered analysis over a grid of config overrides x seeds.

Each point is a normal analysis output directory (`run_analysis`) under the sweep
directory, so any point opens and probes like a single run:

    DIR/sweep.json             what was asked: analysis, preset, grid, seeds
    DIR/points/<point>/        the point's runs, figures, results.json, report.md
    DIR/sweep.jsonl            one row per point: overrides, seed, status, error, scalar results
    DIR/figures/<metric>_vs_<key>.png   mean over seeds with a +-1 sd band

A point is complete once its `results.json` exists (`run_analysis` writes it last,
atomically). Its runs then keep only the checkpoint files of the sweep's `keep` policy
(default `SWEEP_KEEP`: the final weights; the sweep's numbers are in `results.json`).
Re-running a sweep skips complete points and resumes the others from
their last checkpoints, so a killed sweep finishes only what is missing. A point
that raises is recorded with its error; the others run on.

Points run on a backend of `interp.parallel`: `LocalBackend` (a process pool; the
default) or `RayBackend` (a Ray cluster, or a local Ray instance). Each
point gets a fixed number of torch threads, so the same seeds give the same
numbers on either backend. A point trains its own runs in its process
(`LocalBackend(1)`): the sweep already fills the cores.

    interp sweep icl-transience --preset quick --grid train.lr=5e-4,1e-3 --seeds 3 --out runs/lr
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
import traceback
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from interp.analysis import CheckpointPolicy, get_analysis, json_safe, resolve_config, run_analysis
from interp.configs import to_dict
from interp.errors import InputError
from interp.files import atomic_write_bytes, atomic_write_json, dumps_json, read_json, read_jsonl
from interp.parallel import Backend, LocalBackend
from interp.pipeline import RUNS_DIR, keep_runs
from interp.viz import plot_curves, save_figure

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
SWEEP_KEEP = CheckpointPolicy(weights="final")
"""What a complete point's runs keep by default: the final weights (to probe or fine-tune from),
no earlier checkpoint and no training state."""


@dataclass(frozen=True)
class SweepPoint:
    """One grid point and seed: `overrides` as given to `with_overrides` (with `seed`)."""

    name: str
    overrides: dict[str, str]


def point_name(overrides: Mapping[str, str]) -> str:
    """A directory name that reads as the overrides (`train.lr=0.001,seed=2`)."""
    text = ",".join(f"{k}={v}" for k, v in overrides.items())
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)


def grid_points(grid: Mapping[str, Sequence[str]], seeds: Sequence[int]) -> list[SweepPoint]:
    """The cartesian product of the grid's values, times the seeds, in row-major order."""
    for key, values in grid.items():
        if not values:
            raise InputError(f"--grid {key}: expected at least one value")
        if key == "seed":
            raise InputError("--grid seed: use --seeds for seeds")
    if not seeds:
        raise InputError("seeds: expected at least one seed")
    points = []
    for combination in itertools.product(*grid.values()):
        for seed in seeds:
            overrides = {**dict(zip(grid, map(str, combination), strict=True)), "seed": str(seed)}
            points.append(SweepPoint(point_name(overrides), overrides))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise InputError(f"grid: two points share a directory name; check for repeated values in {dict(grid)}")
    return points


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """CLI `key=v1,v2,...` strings into a grid, naming the malformed one."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise InputError(f"--grid: expected key=v1,v2,..., got {spec!r}")
        grid[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


# --- one point (module-level so worker processes can run it) -------------------------------------


@dataclass(frozen=True)
class PointTask:
    analysis: str
    preset: str
    overrides: dict[str, str]
    out: str
    device: str | None = None
    keep: CheckpointPolicy = SWEEP_KEEP


def run_point(task: PointTask) -> dict[str, Any]:
    """Run one point; never raises: a failure comes back as its formatted traceback."""
    started = time.perf_counter()
    try:
        results = run_analysis(task.analysis, task.out, task.preset, task.overrides, device=task.device,
                               progress=False, resume=True, backend=LocalBackend(1))
        keep_runs(Path(task.out) / RUNS_DIR, task.keep)
        return {"status": "ok", "results": point_results(results),
                "wall_seconds": round(time.perf_counter() - started, 1)}
    except Exception as err:  # noqa: BLE001 - a sweep reports every failure and runs on
        return {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
                "wall_seconds": round(time.perf_counter() - started, 1)}


def point_results(results: Mapping[str, Any]) -> dict[str, float]:
    """A point's numbers for the table; its timing is a column of its own."""
    return scalar_results({k: v for k, v in results.items() if k != "wall_seconds"})


def scalar_results(results: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers in a results dict, nested dicts flattened to `outer/inner` (lists are left out)."""
    out: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, int | float):  # bool included
            out[name] = float(value)
        elif isinstance(value, Mapping):
            out.update(scalar_results(value, f"{name}/"))
    return out


# --- the sweep -----------------------------------------------------------------------------------


def run_sweep(analysis: str, out: str | Path, preset: str = "quick", grid: Mapping[str, Sequence[str]] | None = None,
              seeds: Sequence[int] = (0,), backend: Backend | None = None, device: str | None = None,
              metrics: Sequence[str] = (), keep: CheckpointPolicy = SWEEP_KEEP) -> list[dict[str, Any]]:
    """Run every point not yet complete, write `sweep.jsonl` and the summary figures;
    returns the table rows in grid order. `metrics` chooses the figures' results
    (default: the analysis's `headline` results); `keep`, the checkpoint files each complete
    point's runs keep."""
    out = Path(out)
    grid = {k: list(v) for k, v in (grid or {}).items()}
    points = grid_points(grid, seeds)
    spec = get_analysis(analysis)
    resolve_config(spec, preset, {})  # an unknown preset fails here, before any point runs
    out.mkdir(parents=True, exist_ok=True)
    _refuse_released_points(out, points)
    atomic_write_json(out / "sweep.json", {"analysis": analysis, "preset": preset, "grid": grid,
                                           "seeds": list(seeds), "device": device, "keep": to_dict(keep)})
    rows: dict[str, dict[str, Any]] = {}
    todo: list[SweepPoint] = []
    for point in points:
        done = out / "points" / point.name / RESULTS_FILE
        if done.exists():
            keep_runs(done.parent / RUNS_DIR, keep)  # a sweep killed between the results and the release
            results = json.loads(done.read_text())
            rows[point.name] = _row(point, {"status": "ok", "results": point_results(results),
                                            "wall_seconds": results.get("wall_seconds")}, skipped=True)
        else:
            todo.append(point)
    logger.info("sweep %s: %d points, %d complete, %d to run", out, len(points), len(rows), len(todo))
    tasks = [PointTask(analysis, preset, p.overrides, str(out / "points" / p.name), device, keep) for p in todo]
    for index, outcome in (backend or LocalBackend()).imap(run_point, tasks):
        point = todo[index]
        rows[point.name] = _row(point, outcome, skipped=False)
        if outcome["status"] == "failed":
            logger.warning("sweep point %s failed: %s", point.name, outcome["error"])
        _write_table(out, [rows[p.name] for p in points if p.name in rows])
    table = [rows[p.name] for p in points]
    _write_table(out, table)
    summary_figures(out, table, grid, metrics or spec.headline)
    return table


def _refuse_released_points(out: Path, points: Sequence[SweepPoint]) -> None:
    """Refuse to run again a point that was complete and released checkpoints (an earlier `keep`
    other than "all") but has lost its `results.json`: its numbers, computed again from fewer
    checkpoints, would differ without saying so."""
    if not (out / "sweep.json").exists() or not (out / "sweep.jsonl").exists():
        return
    kept = read_json(out / "sweep.json").get("keep", {}).get("weights", "all")
    done = {row["point"] for row in read_table(out) if row.get("status") == "ok"}
    for point in points:
        folder = out / "points" / point.name
        if kept != "all" and point.name in done and not (folder / RESULTS_FILE).exists():
            raise InputError(f"{folder}: its {RESULTS_FILE} is gone and its runs keep weights of {kept!r} "
                             "checkpoints only, so its numbers cannot be computed again; delete the folder to train "
                             "the point again")


def _row(point: SweepPoint, outcome: Mapping[str, Any], skipped: bool) -> dict[str, Any]:
    overrides = {k: v for k, v in point.overrides.items() if k != "seed"}
    row = {"point": point.name, "overrides": overrides, "seed": int(point.overrides["seed"]),
           "status": outcome["status"], "skipped": skipped, "wall_seconds": outcome.get("wall_seconds")}
    if outcome["status"] == "ok":
        row["results"] = outcome["results"]
    else:
        row["error"], row["traceback"] = outcome["error"], outcome["traceback"]
    return row


def _write_table(out: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path = out / "sweep.jsonl"  # strict JSON: an undefined statistic is written as null
    atomic_write_bytes(path, "".join(dumps_json(json_safe(r), path) + "\n" for r in rows).encode())


def read_table(out: str | Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(out) / "sweep.jsonl")


def summary_figures(out: Path, table: Sequence[Mapping[str, Any]], grid: Mapping[str, Sequence[str]],
                    metrics: Sequence[str]) -> list[Path]:
    """For each numeric swept key and metric: the metric's mean over seeds against the
    key, one line per combination of the other keys, with a +-1 sd band."""
    ok = [r for r in table if r["status"] == "ok"]
    paths = []
    for key in grid:
        try:
            [float(v) for v in grid[key]]
        except ValueError:
            logger.info("sweep figures: %s has non-numeric values; no figure against it", key)
            continue
        for metric in metrics:
            groups: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
            for row in ok:
                if metric in row["results"]:
                    others = ", ".join(f"{k}={v}" for k, v in row["overrides"].items() if k != key) or metric
                    groups[others][float(row["overrides"][key])].append(row["results"][metric])
            if not groups:
                continue
            series, bands = {}, {}
            for label, by_value in groups.items():
                xs = np.array(sorted(by_value))
                series[label] = (xs, np.array([np.mean(by_value[x]) for x in xs]))
                bands[label] = np.array([np.std(by_value[x]) for x in xs])
            seeds = len({r["seed"] for r in ok})
            fig = plot_curves(series, bands=bands, markers=True, xlabel=key, ylabel=metric,
                              title=f"{metric} vs {key} (mean ± sd over {seeds} seed{'s' * (seeds > 1)})")
            name = re.sub(r"[^A-Za-z0-9._=-]", "_", f"{metric}_vs_{key}")
            paths.append(save_figure(fig, out / "figures" / f"{name}.png"))
    return paths


__all__ = ["SWEEP_KEEP", "PointTask", "SweepPoint", "grid_points", "parse_grid", "point_results", "read_table",
           "run_point", "run_sweep", "scalar_results", "summary_figures"]
