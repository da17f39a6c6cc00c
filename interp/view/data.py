"""What the explorer shows of a run, an analysis or a checkpoint suite: each run's page data.

`open_source` checks a directory before anything is computed or written and names what is
missing (`ViewError`). `run_data` assembles one run's data from its own files: the logged
`metrics.jsonl` (thinned), the probe caches `probes/<key>.jsonl`, the phase changes of its loss
curves, the example sequence's attention patterns (`interp.view.patterns`) and the circuit
graphs (`interp.view.circuits`); `interp.view.page.view_data` returns the page's data as one
JSON tree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interp.analysis import ANALYSIS_FILE
from interp.checkpoints import CheckpointSource, Run
from interp.errors import InputError, MissingFileError
from interp.files import is_temporary, read_json
from interp.headline import Source, num, nums
from interp.ids import HeadId
from interp.metrics import spans
from interp.metrics.loss_curve import LOSS_KEY, LossBatch, LossCurve, loss_curve
from interp.pipeline import RUNS_DIR
from interp.probe_cache import cached_computations, probe_cache_files
from interp.run_layout import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LOCK_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    CheckpointError,
)
from interp.suite_layouts import is_suite_folder
from interp.suites import open_suite
from interp.view.checkpoint_cache import thin
from interp.view.circuits import attention_circuit, saved_circuits
from interp.view.patterns import (
    Example,
    encode_patterns,
    example_for,
    example_patterns,
    pattern_scores,
    pattern_steps,
    reads_example,
)
from interp.view.stages import REFINED_QUANTITY, refined_head_probe, stages_data

FORMAT = "interp.view/1"
MAX_SERIES_POINTS = 1500  # points per logged curve (longer logs are thinned evenly, the last point kept)
VECTOR_INPUTS_NOTE = ("no example attention patterns: this run's model reads input vectors (d_input {d_input}) beside "
                      "its tokens, its analysis gives no example with them, and token ids alone are not its task")


class ViewError(InputError):
    """A directory the explorer cannot show; the message says what is missing."""


# --- what a directory holds ------------------------------------------------------------------


def _visible(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != LOCK_FILE and not is_temporary(p.name))


def open_source(path: str | Path, cache: str | Path | None = None) -> Source:
    """The run, analysis or checkpoint suite at `path`, checked: a `ViewError` (or
    `FileNotFoundError`) names what is missing before anything is computed or written.
    `cache`: a suite's results cache root (`open_suite`), ignored for a run or analysis."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: no such directory (expected a run directory, an analysis directory or a "
                               "checkpoint-suite folder)")
    if not path.is_dir():
        raise ViewError(f"{path} is not a directory (expected a run directory, an analysis directory or a "
                        "checkpoint-suite folder)")
    if (path / ANALYSIS_FILE).exists():
        return _open_analysis(path)
    if is_suite_folder(path):  # its step folders' config.json files are not run directories
        return Source(path, "suite", {path.resolve().name: open_suite(path, cache=cache)})
    if _is_suite_checkpoint(path):
        raise ViewError(f"{path} is one checkpoint of the checkpoint suite {path.parent} (a save_pretrained folder, "
                        f"not a run directory): view the whole suite, `interp view {path.parent}`")
    if any((path / marker).exists() for marker in (CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, CHECKPOINTS_DIR)):
        run = Run(path)
        check_run(run)
        return Source(path, "run", {path.name: run})
    entries = _visible(path)
    if not entries:
        raise ViewError(f"{path} is empty: there is no run ({CONFIG_FILE}, {MANIFEST_FILE}, {CHECKPOINTS_DIR}/), "
                        f"analysis ({ANALYSIS_FILE}) or checkpoint suite (step<N>/ sub-folders) to show")
    below = sorted({p.parent for name in (ANALYSIS_FILE, CONFIG_FILE) for p in path.glob(f"*/{name}")
                    if not _is_suite_checkpoint(p.parent)} | {p for p in path.iterdir() if is_suite_folder(p)})
    hint = f"; view one of the directories below it: {', '.join(str(p) for p in below[:4])}" if below else ""
    raise ViewError(f"{path} is neither a run directory (no {CONFIG_FILE}), an analysis directory (no "
                    f"{ANALYSIS_FILE}) nor a checkpoint-suite folder (no step<N>/ sub-folder with a {CONFIG_FILE})"
                    f"{hint}")


def _is_suite_checkpoint(path: Path) -> bool:
    """Whether `path` is one checkpoint folder of a suite (a `save_pretrained` folder beside the
    others, no run files), which a user may take for a run directory."""
    return (path / CONFIG_FILE).is_file() and not any((path / m).exists() for m in (MANIFEST_FILE, METRICS_FILE,
                                                                                    CHECKPOINTS_DIR)) \
        and is_suite_folder(path.parent)


def _open_analysis(path: Path) -> Source:
    record = read_json(path / ANALYSIS_FILE)  # a damaged file is named (RunDamagedError)
    if not isinstance(record, dict) or not isinstance(record.get("analysis"), str):
        raise ViewError(f"{path / ANALYSIS_FILE} does not name an analysis (no 'analysis' key)")
    name = record["analysis"]
    runs_dir = path / RUNS_DIR
    names = sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and not is_temporary(p.name)) \
        if runs_dir.is_dir() else []
    # An empty folder is no run (made by hand, or by a job killed before it wrote anything): left out, said.
    empty = [n for n in names if not _visible(runs_dir / n)]
    names = [n for n in names if n not in empty]
    notes = tuple(f"{RUNS_DIR}/{n}/ is empty (no run files): not shown" for n in empty)
    if not names:
        raise ViewError(f"{path} is an analysis directory ({name}) with no runs: {runs_dir} is "
                        f"{'empty' if runs_dir.is_dir() else 'missing'} (interrupted before its first run; "
                        f"`interp run {name} --out {path} --resume` continues it)")
    if not (path / "results.json").exists():
        raise ViewError(f"{path / 'results.json'} is missing: analysis {name} did not finish (interrupted, failed or "
                        f"still running); finish it with `interp run {name} --out {path} --resume` (the same preset), "
                        f"or view one of its runs, e.g. `interp view {runs_dir / names[0]}`")
    results = read_json(path / "results.json")
    if not isinstance(results, dict):
        raise ViewError(f"{path / 'results.json'} is not a JSON object")
    runs = {}
    for run_name in names:
        run = Run(runs_dir / run_name)
        check_run(run)
        runs[run_name] = run
    return Source(path, "analysis", runs, record, results, notes)


def check_run(run: Run) -> None:
    """Refuse a run the explorer cannot show, naming what is missing or damaged."""
    state = run.inspect()
    if state.config_error == "missing":
        raise ViewError(f"{run.path / CONFIG_FILE} is missing: {run.path} is not a usable run (killed while it was "
                        "created?)")
    if state.config_error:
        raise ViewError(f"{run.path / CONFIG_FILE} is {state.config_error}")
    damage = state.damage()
    if damage:
        raise ViewError(f"{run.path} is damaged: {damage[0]}" + (f" (and {len(damage) - 1} more; `interp info "
                                                                 f"{run.path} --verify` lists them)"
                                                                 if len(damage) > 1 else ""))
    if not state.steps:
        why = "is missing" if not (run.path / MANIFEST_FILE).exists() else "lists none"
        raise ViewError(f"{run.path} has no checkpoint yet: {run.path / MANIFEST_FILE} {why} (killed before its first "
                        "checkpoint, or still training)")
    try:
        run.model_config  # noqa: B018 - a config that describes no model is named here
    except (KeyError, TypeError, ValueError) as err:
        raise ViewError(f"{run.path / CONFIG_FILE} does not describe a model: {err}") from None


# --- metrics and probe caches -------------------------------------------------------------------


def metric_series(run: Run) -> dict[str, dict[str, list[Any]]]:
    """Every numeric logged metric as `{"steps", "values"}` (long logs thinned)."""
    rows = run.metrics()
    keys = sorted({k for r in rows for k, v in r.items() if k != "step" and isinstance(v, int | float)
                   and not isinstance(v, bool)})
    out = {}
    for key in keys:
        picked = [(r["step"], r[key]) for r in rows if key in r and isinstance(r.get("step"), int)]
        keep = thin(len(picked), MAX_SERIES_POINTS)
        out[key] = {"steps": [picked[i][0] for i in keep], "values": [num(picked[i][1]) for i in keep]}
    return out


def head_order(name: str) -> tuple[int, int, str]:
    if HeadId.is_head(name):
        head = HeadId.parse(name)
        return head.layer, head.head, ""
    return 1 << 30, 0, name


def cached_probes(run: Run) -> dict[str, dict[str, Any]]:
    """The probe caches of `run`: for each key, its most complete computation at the current
    checkpoints (`interp.probe_cache.cached_computations`: one probe, batch and numerics, the
    latest on a tie), as `{"probe", "about", "steps", "columns", "values": [step][column], "heads"}`.
    Damaged or edited rows are skipped (a cache can be recomputed)."""
    out: dict[str, dict[str, Any]] = {}
    for key in sorted({cache.stem for cache in probe_cache_files(run)}):
        found = cached_computations(run, key)
        if not found:
            continue
        best = found[0]
        columns = sorted(best.table.columns, key=head_order)
        order = [best.table.columns.index(c) for c in columns]
        out[key] = {
            "probe": best.probe, "about": best.describe(), "steps": [int(s) for s in best.table.steps],
            "columns": columns, "values": [nums(row[order]) for row in best.table.values],
            "heads": bool(columns) and all(HeadId.is_head(c) for c in columns),
        }
        refined = refined_head_probe(out[key])
        if refined is not None:  # a refined LLC's heads, shown as a per-head probe beside its other columns
            out[f"{key}/{REFINED_QUANTITY}"] = refined
    return out

def phase_marks(series: Mapping[str, Mapping[str, list[Any]]]) -> list[dict[str, Any]]:
    """Phase changes found in the run's evaluation loss curves (`spans.phase_change`: a drop
    of at least 0.5 nats), one mark per curve, at most three."""
    marks = []
    for key, curve in series.items():
        if "loss" not in key or key.startswith("train/"):
            continue
        pairs = [(s, v) for s, v in zip(curve["steps"], curve["values"], strict=True) if v is not None]
        if len(pairs) < 4:
            continue
        step, before, after = spans.phase_change(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
        label = f"phase change in {key} ({before:.2f} -> {after:.2f})"
        if step is None:
            continue
        same = next((m for m in marks if m["step"] == step), None)
        if same is not None:
            same["label"] += f"; {label}"
        else:
            marks.append({"step": int(step), "label": label})
    return sorted(marks, key=lambda m: m["step"])[:3]


# --- one run's data ------------------------------------------------------------------------------


def run_status(run: CheckpointSource) -> str:
    if not isinstance(run, Run):  # a checkpoint suite: no training config says where it was meant to end
        return f"checkpoint suite: {len(run.steps)} checkpoints (steps {run.steps[0]} .. {run.steps[-1]})"
    total = run.config.get("train", {}).get("steps")
    last = run.committed_steps[-1]  # where the run got to, whether or not its weights were kept there
    if last == total:
        return f"complete ({last} steps)"
    try:
        stopped = bool(run.load_training_state(last).get("stopped"))
    except (CheckpointError, OSError, RuntimeError):
        stopped = False
    return f"stopped early at step {last} of {total}" if stopped else \
        f"INCOMPLETE: last checkpoint at step {last} of {total} (interrupted, paused or still training)"


def loss_record(curve: LossCurve) -> dict[str, Any]:
    """A loss curve (`interp.metrics.loss_curve`) as a cached probe of the page, its batch named in `about`."""
    columns = sorted(curve.columns)
    return {"probe": curve.probe, "about": curve.caption(), "batch_about": curve.about, "steps": curve.steps,
            "columns": columns, "values": [nums([curve.columns[c][i] for c in columns])
                                           for i in range(len(curve.steps))], "heads": False}


def run_data(
    run: Run,
    name: str,
    period: int | None = None,
    patterns: bool = True,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    example: Example | None = None,
    loss: LossBatch | None = None,
) -> dict[str, Any]:
    """Everything the page shows of one run or checkpoint suite (see `view_data`); `example`
    default: `example_for(run, period)`; `loss`: a batch whose loss curve the page shows (computed
    where not cached, under the probe key `loss`), as a suite's has."""
    cfg = run.model_config
    steps = run.steps
    series = metric_series(run)
    example = example or example_for(run, period)
    shown_steps = pattern_steps(run, example) if patterns and reads_example(cfg, example) else []
    stacked = example_patterns(run, example, shown_steps, device=device, progress=progress) if shown_steps \
        else None
    probes = cached_probes(run)
    loss_series: dict[str, dict[str, list[Any]]] = {}
    if loss is not None:  # the page's own batch, not whichever the cache holds most of
        probes[LOSS_KEY] = loss_record(loss_curve(run, loss, device=device, progress=progress is not None))
        record = probes[LOSS_KEY]
        loss_series = {f"{LOSS_KEY}/{c}": {"steps": record["steps"], "values": [row[j] for row in record["values"]]}
                       for j, c in enumerate(record["columns"])}
    notes: list[str] = []
    if stacked is not None:
        scores = pattern_scores(stacked, example.period)
        for key, grid in scores.items():
            columns = [str(HeadId(layer, h)) for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
            probes[f"example.{key}"] = {
                "probe": f"{key} attention on the example sequence", "steps": shown_steps, "columns": columns,
                "values": [nums(grid[i].reshape(-1)) for i in range(len(shown_steps))], "heads": True}
    else:
        notes.append(VECTOR_INPUTS_NOTE.format(d_input=cfg.d_input) if not reads_example(cfg, example)
                     else "no example attention patterns in this page (its size budget went to other runs)")
    patterns_note = None if stacked is not None else notes[-1]
    circuits, circuit_notes = saved_circuits(run)
    notes += circuit_notes
    if not circuits and stacked is not None and cfg.n_layers > 1:
        circuits = [attention_circuit(cfg.n_layers, cfg.n_heads, shown_steps, scores)]
    return {
        "name": name, "path": str(run.path), "steps": steps, "status": run_status(run),
        "model": {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_model": cfg.d_model, "d_vocab": cfg.d_vocab,
                  "n_ctx": cfg.n_ctx, "attn_only": cfg.attn_only},
        "metrics": series, "probes": probes, "marks": phase_marks({**series, **loss_series}),
        "example": example.to_json(), "patterns_note": patterns_note,
        "patterns": None if stacked is None else {
            "steps": shown_steps, "shape": list(stacked.shape[1:]), "encoding": "float16-lower-triangle-base64",
            "data": encode_patterns(stacked)},
        "circuits": circuits, "notes": notes, "stages": stages_data(run, {**series, **loss_series}),
    }
