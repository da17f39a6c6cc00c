"""The headline panel of each analysis: its phenomenon in one view, read from the files the
analysis wrote (`results.json`, `signatures.json`, `loss_matrix.json`, `z.npy`, ...) and
from its runs' logged metrics and probe caches. Analyses are imported only through the registry,
for their optional example sequence (`Analysis.example`).

A headline is `{"title", "caption", "run", "marks", "figures"}`: `run` is the run the
checkpoint slider opens on, `marks` the steps marked on its slider (per run), and each
figure one of

- `lines`: curves (`series` of `{"name", "x", "y", "axis"}`, `axis` "y2" for the right
  axis), with `vlines`, `hlines` and a shaded `band`; a cursor follows the slider when
  the figure's `run` is the selected run;
- `heads`: the layer x head grid of a per-head probe of `run` at the selected step, and
  the attention pattern of `head` on the example sequence;
- `matrix`: a heatmap with one frame per epoch (`frames` of `{"label", "z"}`), moved by
  the panel's own frame slider;
- `table`: `rows` of `[name, value]`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from interp.analysis import ANALYSIS_FILE, Analysis, AnalysisImportError, get_analysis
from interp.checkpoints import Run
from interp.files import read_json
from interp.ids import HeadId
from interp.metrics.lowrank import first_factor_order
from interp.pipeline import RUNS_DIR
from interp.view.data import Example, Source, example_for, num, nums

logger = logging.getLogger(__name__)

Headline = dict[str, Any]
RunsData = dict[str, dict[str, Any]]


def main_run(source: Source) -> str:
    """The run the page opens on: the analysis's main (or reference) run, else the first."""
    names = list(source.runs)
    if source.analysis == "anticipatory-recovery":
        cyclic = _recovery_runs(source)[0]
        if cyclic in source.runs:
            return cyclic
    for name in ("main", "base"):
        if name in source.runs:
            return name
    return names[0]


def _owner_record(source: Source) -> dict[str, Any]:
    """`analysis.json` of the analysis that wrote `source` (for a run, of the analysis
    directory it belongs to: `<analysis>/runs/<name>/`); empty when there is none."""
    record: Any = source.record
    if source.kind == "run" and source.path.parent.name == RUNS_DIR:
        owner = source.path.parent.parent / ANALYSIS_FILE
        try:
            record = read_json(owner) if owner.exists() else {}
        except ValueError:
            record = {}
    return record if isinstance(record, dict) else {}


def example_period(source: Source) -> int | None:
    """The repeat period of the analysis's own probe batch, when its config has one."""
    config = _owner_record(source).get("config")
    period = config.get("probe_period") if isinstance(config, dict) else None
    return period if isinstance(period, int) and not isinstance(period, bool) and period >= 2 else None


def task_example(source: Source) -> Callable[[Run, int | None], Example]:
    """How each run's example sequence is chosen: the analysis's own `example(run)` (a
    sequence of its task, e.g. a biography) where it has one and it works for the run, else
    random tokens repeated twice."""
    analysis = _analysis_of(source)
    hook = getattr(analysis, "example", None) if analysis is not None else None

    def choose(run: Run, period: int | None) -> Example:
        if hook is not None:
            try:
                return example_for(run, period, tokens=list(hook(run)),
                                   description=f"a sequence of the {analysis.name} task")
            except Exception as err:  # noqa: BLE001 - any failure of the hook falls back to the generic example
                logger.warning("%s: the analysis's example failed (%s: %s); random tokens are shown", run.path,
                               type(err).__name__, err)
        return example_for(run, period)

    return choose


def _analysis_of(source: Source) -> Analysis | None:
    """The registered analysis that wrote `source` (for a run, its analysis directory's), if it loads."""
    name = _owner_record(source).get("analysis")
    if not isinstance(name, str):
        return None
    try:
        return get_analysis(name)
    except (KeyError, AnalysisImportError):
        return None


def build(source: Source, runs: RunsData) -> Headline:
    builder = BUILDERS.get(source.analysis or "", _generic)
    headline = builder(source, runs)
    headline.setdefault("run", main_run(source))
    headline.setdefault("marks", {})
    headline["figures"] = [f for f in headline.get("figures", []) if f]
    for figure in headline["figures"]:
        if figure["type"] == "lines":
            figure["series"] = [s for s in figure["series"] if s]
    return headline


# --- helpers ---------------------------------------------------------------------------------------


def _column(probe: dict[str, Any], column: str) -> list[Any]:
    j = probe["columns"].index(column)
    return [row[j] for row in probe["values"]]


def _metric(run: dict[str, Any], key: str, name: str | None = None, axis: str = "y") -> dict[str, Any] | None:
    curve = run["metrics"].get(key)
    if curve is None:
        return None
    return {"name": name or key, "x": curve["steps"], "y": curve["values"], "axis": axis}


def _head_probe(run: dict[str, Any], preferred: tuple[str, ...] = ()) -> str | None:
    """A per-head probe of the run: the first of `preferred` it has, else its first cached one,
    else the previous-token score on the example."""
    probes = run["probes"]
    for key in (*preferred, *sorted(k for k in probes if not k.startswith("example.")), "example.induction",
                "example.prev_token"):
        if key in probes and probes[key]["heads"] and probes[key]["steps"]:
            return key
    return None


def _best_head(run: dict[str, Any], key: str, min_layer: int = 0) -> str | None:
    """The head with the largest value of probe `key` at its last probed step."""
    probe = run["probes"].get(key)
    if not probe or not probe["values"]:
        return None
    last = probe["values"][-1]
    found = [(v, c) for c, v in zip(probe["columns"], last, strict=True)
             if v is not None and HeadId.parse(c).layer >= min_layer]
    return max(found)[1] if found else None


def _heads(run: str, data: dict[str, Any], probe: str | None, head: Any, title: str) -> dict[str, Any] | None:
    if probe is None:
        return None
    if not (isinstance(head, str) and HeadId.is_head(head) and head in data["probes"][probe]["columns"]):
        head = _best_head(data, probe)
    return {"type": "heads", "title": title, "run": run, "probe": probe, "head": head}


def _table(results: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    rows = []
    for key in keys:
        if key in results:
            value = results[key]
            if isinstance(value, float):
                value = num(value)
            elif isinstance(value, list | dict):
                value = json.dumps(value if not isinstance(value, list) else [num(v) if isinstance(v, float) else v
                                                                               for v in value])
            rows.append([key, value])
    return {"type": "table", "title": "results.json", "rows": rows}


def _vlines(*pairs: tuple[Any, str]) -> list[dict[str, Any]]:
    """Vertical lines of a `lines` figure at the given steps, with short labels."""
    return [{"x": m["step"], "label": m["label"]} for m in _marks(*pairs)]


def _marks(*pairs: tuple[Any, str]) -> list[dict[str, Any]]:
    """Marks at the given steps (None: not reached, left out); labels at one step are joined."""
    by_step: dict[int, list[str]] = {}
    for step, label in pairs:
        if isinstance(step, int) and not isinstance(step, bool):
            by_step.setdefault(step, []).append(label)
    return [{"step": step, "label": "; ".join(labels)} for step, labels in sorted(by_step.items())]


# --- per analysis ----------------------------------------------------------------------------------


def _induction(source: Source, runs: RunsData) -> Headline:
    r, name = source.results, main_run(source)
    run = runs[name]
    last = run["model"]["n_layers"] - 1
    probe = "induction" if "induction" in run["probes"] else "example.induction"
    series = []
    if probe in run["probes"]:
        p = run["probes"][probe]
        series = [{"name": f"{c} induction score", "x": p["steps"], "y": _column(p, c), "axis": "y"}
                  for c in p["columns"] if HeadId.parse(c).layer == last]
    series.append(_metric(run, "eval/repeated_loss", "loss on repeated-trigger outputs (right axis)", "y2"))
    head = r.get("induction_head")
    marks = _marks((r.get("phase_change_step"), "phase change: repeated-token loss at its midpoint"),
                   (r.get("induction_half_step"), f"{head} reaches half its final induction score"))
    vlines = _vlines((r.get("phase_change_step"), "phase change"), (r.get("induction_half_step"), f"{head} half"))
    return {
        "title": "Induction heads forming",
        "caption": (f"Layer-{last} heads' induction score (attention from a repeated token to the token after its "
                    "earlier occurrence) over training, with the loss on outputs of repeated triggers; the grid and "
                    "the attention pattern of the induction head follow the checkpoint slider."),
        "run": name, "marks": {name: marks},
        "figures": [
            {"type": "lines", "title": "Induction score per head and repeated-token loss", "run": name,
             "series": [s for s in series if s], "ylabel": "induction score", "y2label": "loss (nats)",
             "vlines": vlines},
            _heads(name, run, probe, head, "Induction score (layer x head) and the induction head's attention"),
            _table(r, ("phase_change_step", "repeated_loss_before", "repeated_loss_after", "induction_head",
                       "induction_score_final", "induction_half_step", "prev_token_head", "prev_token_score_final",
                       "copy_head", "copy_offset")),
        ],
    }


def _icl(source: Source, runs: RunsData) -> Headline:
    r, name = source.results, main_run(source)
    run = runs[name]
    series = [_metric(run, "icl_novel/closed", "ICL accuracy (novel classes, closed)"),
              _metric(run, "iwl/full", "IWL accuracy (full vocabulary)")]
    probe = run["probes"].get("induction")
    if probe and probe["heads"]:
        later = [c for c in probe["columns"] if HeadId.parse(c).layer >= 1]
        best = [max((v for v in (row[probe["columns"].index(c)] for c in later) if v is not None), default=None)
                for row in probe["values"]]
        series.append({"name": "induction strength, best head in layers >= 1", "x": probe["steps"], "y": best,
                       "axis": "y"})
    mass = run["probes"].get("label_mass")
    if mass and "mass" in mass["columns"]:
        series.append({"name": "probability on in-context labels", "x": mass["steps"], "y": _column(mass, "mass"),
                       "axis": "y"})
    series.append(_metric(run, "train/loss", "training loss (right axis)", "y2"))
    heads = (r.get("ablation_at_peak") or {}).get("heads") or []
    marks = _marks((r.get("icl_peak_step"), "ICL peak"))
    return {
        "title": "In-context vs in-weights learning, and the induction circuit",
        "caption": ("ICL emerges and fades while in-weights learning takes over; the induction strength of the best "
                    "head (matching minus non-matching label attention) rises and falls with ICL."),
        "run": name, "marks": {name: marks},
        "figures": [
            {"type": "lines", "title": "ICL, IWL and induction strength", "run": name,
             "series": [s for s in series if s], "ylabel": "accuracy / score", "y2label": "training loss",
             "hlines": [{"y": 0.5, "label": "chance (2-way)"}],
             "vlines": _vlines((r.get("icl_peak_step"), "ICL peak"))},
            _heads(name, run, _head_probe(run, ("induction",)), heads[0] if heads else None,
                   "Induction strength (layer x head) and a head's attention"),
            _table(r, ("icl_peak", "icl_peak_step", "icl_final", "icl_drop", "iwl_final", "train_loss_at_peak",
                       "train_loss_final", "targets")),
        ],
    }


def _facts(source: Source, runs: RunsData) -> Headline:
    r, name = source.results, main_run(source)
    run = runs[name]
    series: list[dict[str, Any] | None] = []
    signatures_file = source.path / "signatures.json"
    signatures = read_json(signatures_file) if signatures_file.exists() else None
    if isinstance(signatures, dict) and isinstance(signatures.get("attribute_to_name"), dict):
        series += [{"name": f"attribute -> name attention, {layer} (mean over heads)", "x": signatures["steps"],
                    "y": nums(values), "axis": "y"} for layer, values in signatures["attribute_to_name"].items()]
    elif (probe := run["probes"].get("attribute_to_name")) and probe["heads"]:
        grid = np.array([[np.nan if v is None else v for v in row] for row in probe["values"]], dtype=float)
        layers = sorted({HeadId.parse(c).layer for c in probe["columns"]})
        for layer in layers:
            cols = [j for j, c in enumerate(probe["columns"]) if HeadId.parse(c).layer == layer]
            series.append({"name": f"attribute -> name attention, layer{layer} (mean over heads)",
                           "x": probe["steps"], "y": nums(np.nanmean(grid[:, cols], axis=1)), "axis": "y"})
    series += [_metric(run, "seen/loss", "attribute loss, seen people (right axis)", "y2"),
               _metric(run, "unseen/loss", "attribute loss, never-seen people (right axis)", "y2")]
    start, end = r.get("phase1_end"), r.get("plateau_end")
    marks = _marks((start, "plateau starts (phase 1 ends)"), (end, "plateau ends: recall forms"))
    vlines = _vlines((start, "plateau starts"), (end, "plateau ends"))
    last = run["steps"][-1]
    band = {"x0": start, "x1": end if isinstance(end, int) else last,
            "label": "plateau" if isinstance(end, int) else "plateau (not left)"} if isinstance(start, int) else None
    baseline = r.get("baseline")
    return {
        "title": "The recall circuit forms during the plateau",
        "caption": ("Attention from attribute tokens to the person's name (the recall circuit's signature) through the "
                    "three phases: it grows while the loss sits on the no-knowledge baseline."),
        "run": name, "marks": {name: marks},
        "figures": [
            {"type": "lines", "title": "Attribute -> name attention and the attribute loss", "run": name,
             "series": [s for s in series if s], "ylabel": "attention", "y2label": "loss (nats)", "band": band,
             "hlines": [{"y": baseline, "label": "no-knowledge baseline", "axis": "y2"}] if num(baseline) else [],
             "vlines": vlines},
            _heads(name, run, _head_probe(run, ("attribute_to_name",)), None,
                   "Attribute -> name attention (layer x head) and a head's attention"),
            _table(r, ("baseline", "phase1_end", "plateau_end", "plateau_length", "plateau_over_phase1", "final_loss",
                       "final_accuracy", "signatures_final")),
        ],
    }


def _recovery_runs(source: Source) -> tuple[str, str]:
    r = source.results
    size, seeds = r.get("reference_size"), r.get("seeds") or [0]
    cyclic, shuffled = f"{size}-cyclic-s{seeds[0]}", f"{size}-shuffled-s{seeds[0]}"
    if cyclic not in source.runs:
        cyclic = next((n for n in source.runs if "-cyclic-" in n), next(iter(source.runs)))
    if shuffled not in source.runs:
        shuffled = next((n for n in source.runs if "-shuffled-" in n), "")
    return cyclic, shuffled


def _loss_matrix(source: Source, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    path = source.runs[name].path / "loss_matrix.json" if name in source.runs else None
    if path is None or not path.exists():
        return None
    saved = read_json(path)
    return np.array(saved["schedule"], dtype=int), np.array(saved["losses"], dtype=float)


def _recovery(source: Source, runs: RunsData) -> Headline:
    r = source.results
    cyclic, shuffled = _recovery_runs(source)
    figures: list[dict[str, Any] | None] = []
    loaded = {name: _loss_matrix(source, name) for name in (cyclic, shuffled) if name}
    marks: dict[str, list[dict[str, Any]]] = {}
    for name, found in loaded.items():
        if found is None:
            continue
        schedule, losses = found
        n = losses.shape[1]
        epochs = len(schedule) // n
        docs = [f"doc {d}" for d in range(n)]
        if name == cyclic:
            pairwise = []
            for e in range(epochs):
                m = np.full((n, n), np.nan)
                for k in range(e * n, (e + 1) * n):
                    m[schedule[k]] = losses[k + 1] - losses[k]
                pairwise.append({"label": f"epoch {e + 1}", "z": [nums(row) for row in m]})
            figures.append({"type": "matrix", "title": f"Pairwise loss change, {name}", "frames": pairwise,
                            "x": docs, "y": docs, "xlabel": "document j (loss measured)",
                            "ylabel": "document i (trained on)", "symmetric": True,
                            "caption": "Change of the loss on document j while training on document i in the epoch "
                                       "(negative: the loss falls); recovery shows as falls just before j's turn."})
        residual = []
        for e in range(epochs):
            block = losses[e * n:(e + 1) * n + 1]
            residual.append({"label": f"epoch {e + 1}", "z": [nums(row) for row in block - block.mean(axis=0)]})
        figures.append({"type": "matrix", "title": f"Loss residual, {name}", "frames": residual, "x": docs,
                        "y": [f"after {t} docs" for t in range(n + 1)], "xlabel": "document",
                        "ylabel": "episodes into the epoch", "symmetric": True,
                        "caption": "Each document's loss through the epoch minus its mean over the epoch: with a "
                                   "cyclic order it falls before the document comes round again."})
        task = source.runs[name].config.get("task", {})
        per_doc = task.get("steps_per_doc")
        if isinstance(per_doc, int) and per_doc > 0:
            marks[name] = _marks(*((e * n * per_doc, f"epoch {e + 1} starts") for e in range(1, epochs)))
    if cyclic in loaded and loaded[cyclic] is not None:
        series = [{"name": f"doc 0, {name}", "x": list(range(len(found[1]))), "y": nums(found[1][:, 0]), "axis": "y"}
                  for name, found in loaded.items() if found is not None]
        figures.insert(0, {"type": "lines", "title": "Loss on document 0 over episodes", "series": series,
                           "xlabel": "episode (documents trained)", "ylabel": "loss (nats)"})
    figures.append(_table(r, ("reference_size", "rs_cyclic", "rs_shuffled", "recovery_ratio_cyclic",
                              "recovery_ratio_shuffled", "gap_growth", "pairwise_by_offset")))
    return {"title": "Anticipatory recovery: pairwise and residual matrices per epoch",
            "caption": (f"Documents trained in a fixed repeated order ({cyclic}) against a shuffled order "
                        f"({shuffled or 'none'}); the epoch slider moves through the epochs."),
            "run": cyclic, "marks": marks, "figures": figures}


def _lowrank(source: Source, runs: RunsData) -> Headline:
    r = source.results
    figures: list[dict[str, Any] | None] = []
    path = source.path / "z.npy"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        rows, cols = first_factor_order(z)
        specs = read_json(source.path / "tasks.json") if (source.path / "tasks.json").exists() else []
        labels = []
        for i in rows:
            spec = specs[i] if i < len(specs) and isinstance(specs[i], dict) else {}
            weights = spec.get("domain_weights") or []
            domain = f", mostly domain {int(np.argmax(weights))}" if weights else ""
            labels.append(f"task {i}{domain}")
        figures.append({"type": "matrix", "title": "Forgetting matrix Z sorted by its first factors",
                        "frames": [{"label": "", "z": [nums(row) for row in z[rows][:, cols]]}],
                        "x": [f"ex {c}" for c in cols], "y": labels, "xlabel": "upstream example",
                        "ylabel": "fine-tuning task", "symmetric": True,
                        "caption": "Loss increase on each upstream example after fine-tuning on each task; rows and "
                                   "columns in the order of the first singular vectors: a rank-1 (multiplicative) "
                                   "matrix shows as a smooth gradient from one corner."})
    figures.append(_table(r, ("shape", "r2_by_rank", "r2_multiplicative", "r2_additive", "r2_shuffled_rank1",
                              "singular_values", "completion", "replay")))
    return {"title": "Low-rank forgetting", "caption": "The M x N forgetting matrix is close to rank 1.",
            "run": main_run(source), "figures": figures}


def _generic(source: Source, runs: RunsData) -> Headline:
    name = main_run(source)
    run = runs[name]
    evals = [k for k in run["metrics"] if "loss" in k]
    probe = _head_probe(run)
    return {"title": f"{source.analysis or 'Run'} {name}: losses and heads",
            "caption": "Logged losses and the per-head probe of the selected checkpoint.", "run": name,
            "figures": [{"type": "lines", "title": "Losses", "run": name, "ylabel": "loss",
                         "series": [_metric(run, k) for k in evals[:8]]},
                        _heads(name, run, probe, None, f"{probe} (layer x head)")]}


BUILDERS: dict[str, Callable[[Source, RunsData], Headline]] = {
    "induction-heads": _induction,
    "icl-transience": _icl,
    "fact-learning": _facts,
    "anticipatory-recovery": _recovery,
    "lowrank-forgetting": _lowrank,
}
