"""What the explorer's Stages tab and per-head refined LLC show, read from a run's LLC caches.

Nothing is sampled or run here: the whole model's LLC comes from its probe cache
(`probes/llc.jsonl`, `interp.metrics.development.LLC_KEY`), the stages from `llc_stages` of that
table, the essential-dynamics trajectory from the output vectors its probe saved
(`probes/essential_dynamics/`), and a refined LLC's per-head values from the columns
`llc/<head>` and `trustworthy/<head>` of its cache (`interp.metrics.llc.refined_llc_probe`).
`interp llc DIR [--per-head]` computes them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from interp.checkpoints import Run
from interp.errors import InputError
from interp.headline import num, nums
from interp.ids import HeadId
from interp.metrics.development import LLC_KEY, MIN_DYNAMICS_POINTS, MIN_STAGE_POINTS, llc_table_stages
from interp.metrics.essential_dynamics import (
    ESSENTIAL_DYNAMICS_KEY,
    EssentialDynamics,
    saved_output,
    trajectory_dynamics,
)
from interp.metrics.stages import change_points
from interp.probe_cache import cached_computations, computation_artifacts

REFINED_QUANTITY = "llc"
"""The refined LLC's column of each component (`llc/<component>`), shown as a per-head probe."""
TRUST_QUANTITY = "trustworthy"
DYNAMICS_COMPONENTS = 3
COMPUTE_HINT = "`interp llc {path}` computes the LLC and the essential dynamics"


def refined_head_probe(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The per-head view of a cached probe record (`data.cached_probes`) with columns
    `llc/<head>` (a refined LLC): its heads' values, and `untrusted` ([step][head] True where
    `trustworthy/<head>` is 0); None for any other record."""
    prefix = f"{REFINED_QUANTITY}/"
    heads = [c[len(prefix):] for c in record["columns"] if c.startswith(prefix) and HeadId.is_head(c[len(prefix):])]
    if not heads:
        return None
    where = {c: j for j, c in enumerate(record["columns"])}
    trust = [where.get(f"{TRUST_QUANTITY}/{h}") for h in heads]
    return {
        "probe": f"refined LLC of each head ({record['probe']})", "about": record.get("about", ""),
        "steps": record["steps"], "columns": heads, "heads": True,
        "values": [[row[where[prefix + h]] for h in heads] for row in record["values"]],
        "untrusted": [[j is not None and row[j] == 0 for j in trust] for row in record["values"]],
    }


def _loss_curve(series: Mapping[str, Mapping[str, list[Any]]]) -> tuple[list[int], list[float]] | None:
    """The curve whose drop is a change point: the first evaluation loss, else the training loss."""
    keys = [k for k in series if "loss" in k and not k.startswith("train/")] + \
        [k for k in series if k == "train/loss"]
    for key in keys:
        pairs = [(s, v) for s, v in zip(series[key]["steps"], series[key]["values"], strict=True) if v is not None]
        steps = [s for s, _ in pairs]
        if len(pairs) >= 2 and all(b > a for a, b in zip(steps, steps[1:], strict=False)):
            return steps, [v for _, v in pairs]
    return None


def _dynamics(run: Run, steps: list[int]) -> tuple[EssentialDynamics | None, str | None]:
    """The essential dynamics of the output vectors cached at `steps`, or None and why not."""
    found = cached_computations(run, ESSENTIAL_DYNAMICS_KEY)
    hint = COMPUTE_HINT.format(path=run.path)
    if not found:
        return None, f"no essential-dynamics outputs are cached in this run: {hint}"
    folder = computation_artifacts(run, found[0])
    rows = {s: v for s in steps if (v := saved_output(folder, s)) is not None}
    if len(rows) < MIN_DYNAMICS_POINTS:
        return None, (f"essential-dynamics outputs are saved at {len(rows)} of the LLC's {len(steps)} checkpoints "
                      f"(at least {MIN_DYNAMICS_POINTS} are needed): {hint}")
    kept = sorted(rows)
    try:
        stacked = np.stack([rows[s] for s in kept])
        return trajectory_dynamics(kept, stacked, min(DYNAMICS_COMPONENTS, *stacked.shape)), None
    except (InputError, ValueError) as err:  # damaged or mismatched files: the rest of the view still shows
        return None, f"the saved essential-dynamics outputs in {folder} cannot be used ({err})"


def stages_data(run: Run, series: Mapping[str, Mapping[str, list[Any]]]) -> dict[str, Any] | None:
    """The Stages tab's data of `run` (None without an `llc` cache): the LLC curve with its spread
    over chains and trust, its stages and boundaries (`llc_table_stages` of the cached table), the
    essential-dynamics trajectory where its outputs are cached, and the change points side by
    side (`change_points`: the boundaries, the drop of the loss in `series`, the trajectory's turns)."""
    found = cached_computations(run, LLC_KEY)
    if not found or "llc" not in found[0].table.columns:
        return None
    table = found[0].table
    steps = table.steps
    llc = table["llc"]
    std = table["llc_std"] if "llc_std" in table else np.full(len(steps), np.nan)
    trusted = table["trustworthy"] == 1 if "trustworthy" in table else np.ones(len(steps), bool)
    stages = llc_table_stages(table) if "llc_std" in table else None
    dynamics, dynamics_note = _dynamics(run, [int(s) for s in steps])
    points = change_points(stages, checkpoint_steps=[int(s) for s in steps], loss=_loss_curve(series),
                           dynamics=dynamics)
    nearest = {m.boundary.step: m for m in points.matches}  # one boundary per checkpoint
    rows = []
    for row in points.rows:
        match = nearest.get(row.step) if row.source == "llc stage" else None
        rows.append({"source": row.source, "step": row.step, "detail": row.detail,
                     "nearest": None if match is None or match.nearest is None else
                     f"{match.nearest.source} at step {match.nearest.step} ({match.distance:.1f} checkpoints away)"})
    return {
        "probe": found[0].probe, "about": found[0].describe(), "steps": [int(s) for s in steps],
        "llc": nums(llc), "llc_std": nums(std), "trustworthy": [bool(t) for t in trusted],
        "noise": None if stages is None else num(stages.noise),
        "stages_note": None if stages is not None else
        f"fewer than {MIN_STAGE_POINTS} finite LLC estimates: no stages are segmented",
        "stages": [] if stages is None else [{"start": s.start, "end": s.end, "kind": s.kind} for s in stages.stages],
        "boundaries": [] if stages is None else [{"step": b.step, "kind": b.kind, "llc": num(b.llc),
                                                  "change": num(b.change)} for b in stages.boundaries],
        "dynamics": None if dynamics is None else {
            "steps": [int(s) for s in dynamics.steps], "coords": [nums(c) for c in dynamics.coords],
            "explained": nums(dynamics.explained),
            "turning_points": [{"step": t.step, "angle": num(t.angle)} for t in dynamics.turning_points]},
        "dynamics_note": dynamics_note, "change_points": rows,
    }
