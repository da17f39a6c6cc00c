"""The analysis that wrote a directory, and what it adds to the explorer's page: the run the page
opens on (`Analysis.opens_on`), the example sequence (`Analysis.example`) and the headline panel
(`Analysis.view`, built from `interp.headline`'s figures). Analyses are imported only through the
registry; a run, or an analysis without a view, gets the generic headline: its losses and a head
grid."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from interp.analysis import ANALYSIS_FILE, Analysis, AnalysisImportError, get_analysis
from interp.checkpoints import Run
from interp.files import read_json
from interp.headline import Headline, Heads, Lines, RunsData, Series, Source, head_probe, main_run, probe_column
from interp.metrics.loss_curve import LOSS_KEY
from interp.pipeline import RUNS_DIR
from interp.view.patterns import Example, example_for

logger = logging.getLogger(__name__)


def opened_run(source: Source) -> str:
    """The run the page opens on: the one its analysis names (`Analysis.opens_on`), else `main_run`."""
    analysis = _analysis_of(source) if source.kind == "analysis" else None
    chooser = getattr(analysis, "opens_on", None)
    return chooser(source) if chooser is not None else main_run(source)


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
                drawn = hook(run)
                return example_for(run, period, tokens=drawn if isinstance(drawn, Mapping) else list(drawn),
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


def headline(source: Source, runs: RunsData) -> Headline:
    """The headline panel of `source`: its analysis's own view, else a checkpoint suite's, else the generic one."""
    if source.kind == "suite":
        return suite_headline(source, runs)
    analysis = _analysis_of(source) if source.kind == "analysis" else None
    view = getattr(analysis, "view", None)
    return view(source, runs) if view is not None else generic_headline(source, runs)


def suite_headline(source: Source, runs: RunsData) -> Headline:
    """A checkpoint suite's loss at every checkpoint on the page's batch, which its title and
    caption name (a suite has no training log), and the per-head probe of the selected checkpoint."""
    name = opened_run(source)
    run = runs[name]
    loss = run["probes"].get(LOSS_KEY)
    probe = head_probe(run)
    said = f"The {loss['about']}. " if loss else "No loss curve: no batch was given. "
    return Headline(f"Checkpoint suite {name}: loss and heads",
                    said + "The layer x head grid is the per-head probe at the selected checkpoint.", run=name,
                    figures=[loss and Lines(f"Loss on {loss['batch_about']}",
                                            [Series(c, loss["steps"], probe_column(loss, c)) for c in loss["columns"]],
                                            run=name, ylabel="loss (nats)"),
                             Heads.of(f"{probe} (layer x head)", name, run, probe)])


def generic_headline(source: Source, runs: RunsData) -> Headline:
    """Logged losses and the per-head probe of the selected checkpoint, of the run the page opens on."""
    name = opened_run(source)
    run = runs[name]
    evals = [k for k in run["metrics"] if "loss" in k]
    probe = head_probe(run)
    return Headline(f"{source.analysis or 'Run'} {name}: losses and heads",
                    "Logged losses and the per-head probe of the selected checkpoint.", run=name,
                    figures=[Lines("Losses", [Series.of_metric(run, k) for k in evals[:8]], run=name, ylabel="loss"),
                             Heads.of(f"{probe} (layer x head)", name, run, probe)])
