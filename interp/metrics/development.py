"""A run's development in one call: the LLC at every checkpoint (`interp.metrics.llc`), the
stages its curve splits training into (`interp.metrics.stages`), the essential-dynamics
trajectory (`interp.metrics.essential_dynamics`) and every stage boundary beside the run's
other change points. `interp llc` and the analyses call this; each piece stays usable alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from interp.checkpoints import CheckpointSource
from interp.circuits.graph import CircuitGraph
from interp.metrics.essential_dynamics import EssentialDynamics, essential_dynamics
from interp.metrics.llc import llc_probe
from interp.metrics.llc_settings import LLC_KEY, LLCSettings
from interp.metrics.stages import ChangePoints, Stages, change_points, llc_stages
from interp.model import Batch
from interp.probe_table import Column, ProbeTable
from interp.probing import probe

DYNAMICS_ROWS = 32
"""Rows of the LLC's data whose outputs trace the essential-dynamics trajectory."""
MIN_STAGE_POINTS = 3
MIN_DYNAMICS_POINTS = 5  # the turning-point angle looks two checkpoints back and forward


@dataclass(frozen=True)
class DevelopmentSummary:
    """The numbers of a `Development` an analysis's results keep (`Development.summary`)."""

    llc_settings: str
    llc_trusted: int
    """Checkpoints whose LLC estimate raised no problem (of `llc_checkpoints`)."""
    llc_checkpoints: int
    llc_init: float
    llc_final: float
    llc_peak: float
    llc_peak_step: int
    stage_boundaries: list[str]
    """"<step> <kind>" of every boundary of the LLC's stages."""
    dynamics_turning_points: list[int]
    dynamics_explained: list[float]

    def describe(self) -> str:
        """The LLC curve and its stages in two sentences, as the numbers have them."""
        return (f"Developmental stages (LLC by SGLD: {self.llc_settings}; {self.llc_trusted} of "
                f"{self.llc_checkpoints} estimates trustworthy): the LLC goes from {self.llc_init:.3g} at "
                f"initialization to {self.llc_final:.3g} at the end, peaking at {self.llc_peak:.3g} at step "
                f"{self.llc_peak_step}. Stage boundaries: {', '.join(self.stage_boundaries) or 'none (one stage)'}; "
                f"essential dynamics turns at steps {self.dynamics_turning_points or 'none'} (top components "
                f"explain {self.dynamics_explained}).")


def boundary_sentence(label: str, step: int | None, distance: float | None) -> str:
    """Whether a stage boundary marks an event of the run (`label` at `step`), as the distance in
    checkpoints to the nearest boundary has it (within one checkpoint: it does)."""
    if step is None:
        return f" {label[0].upper()}{label[1:]} was not found, so there is nothing to compare them with."
    if distance is None:
        return f" No stage boundary, so none marks {label} (step {step})."
    return (f" The nearest stage boundary to {label} (step {step}) is {distance:.1f} checkpoints away"
            + (" (within one checkpoint: a boundary marks it)." if distance <= 1 else
               " (more than one checkpoint: no boundary at it)."))


@dataclass(frozen=True)
class Development:
    llc: ProbeTable
    """Columns `llc, llc_std, init_loss, trustworthy, llc_chain<c>` per checkpoint."""
    stages: Stages | None
    """None where fewer than `MIN_STAGE_POINTS` estimates are finite."""
    dynamics: EssentialDynamics | None
    change_points: ChangePoints

    @property
    def trusted(self) -> int:
        return int((self.llc["trustworthy"] == 1).sum())

    @property
    def boundary_steps(self) -> list[int]:
        return [b.step for b in self.stages.boundaries] if self.stages else []

    def summary(self, settings: LLCSettings) -> DevelopmentSummary:
        llc, steps = self.llc["llc"], self.llc.steps
        peak = int(np.nanargmax(llc)) if np.isfinite(llc).any() else 0
        return DevelopmentSummary(
            llc_settings=settings.canonical(), llc_trusted=self.trusted, llc_checkpoints=len(steps),
            llc_init=float(llc[0]), llc_final=float(llc[-1]), llc_peak=float(llc[peak]), llc_peak_step=int(steps[peak]),
            stage_boundaries=[f"{b.step} {b.kind}" for b in self.stages.boundaries] if self.stages else [],
            dynamics_turning_points=[t.step for t in self.dynamics.turning_points] if self.dynamics else [],
            dynamics_explained=[round(float(v), 4) for v in self.dynamics.explained] if self.dynamics else [])

    def checkpoints_to_nearest_boundary(self, step: int) -> float | None:
        """How far `step` is from the nearest stage boundary, counted in the LLC's checkpoints
        (fractional between two); None without a boundary."""
        grid = np.arange(len(self.llc.steps))
        position = lambda s: float(np.interp(s, self.llc.steps, grid))  # noqa: E731
        return min((abs(position(b) - position(step)) for b in self.boundary_steps), default=None)


def llc_standard_error(table: ProbeTable) -> np.ndarray:
    """The standard error of each checkpoint's LLC, the mean over its healthy chains: their
    spread (`llc_std`) over the square root of their number (the `llc_chain<c>` columns that are
    finite; one chain, or a table without them: the spread itself)."""
    chains = [c for c in table.columns if c.startswith("llc_chain")]
    healthy = np.isfinite(np.stack([table[c] for c in chains], axis=1)).sum(axis=1) if chains else \
        np.ones(len(table.steps))
    return table["llc_std"] / np.sqrt(np.maximum(healthy, 1))


def llc_table_stages(table: ProbeTable) -> Stages | None:
    """`llc_stages` of an LLC probe's table (columns `llc`, `llc_std`, `llc_chain<c>`), the noise
    scaled by each estimate's standard error; None where fewer than `MIN_STAGE_POINTS` estimates
    are finite."""
    error = llc_standard_error(table)
    finite = np.isfinite(table["llc"]) & np.isfinite(error)
    if finite.sum() < MIN_STAGE_POINTS:
        return None
    return llc_stages(table.steps[finite], table["llc"][finite], error[finite])


def development(source: CheckpointSource, rows: Batch, settings: LLCSettings, *, steps: Sequence[int] | None = None,
                loss: tuple[Sequence[int], Sequence[float]] | None = None, graphs: Sequence[CircuitGraph] = (),
                probes: ProbeTable | None = None, probe_columns: Sequence[Column] | None = None,
                device: str | torch.device | None = None, progress: bool | None = None) -> Development:
    """The LLC of `source` at its checkpoints (`steps`, default all) by SGLD on `rows`, its
    stages, the essential dynamics of the first `DYNAMICS_ROWS` rows' outputs, and the change
    points: the stage boundaries beside `loss`'s drop, the largest changes of `graphs`, the
    half-way steps of `probe_columns` of `probes`, and the trajectory's turning points. All of it
    is cached in the run: a second call runs no sampler and no model."""
    table = probe(source, {LLC_KEY: llc_probe(settings)}, rows, steps=steps, device=device,
                  progress=progress).select(LLC_KEY)
    stages = llc_table_stages(table)
    dynamics = essential_dynamics(source, {k: t[:DYNAMICS_ROWS] for k, t in rows.items()},
                                  steps=table.steps.tolist(), device=device) \
        if len(table.steps) >= MIN_DYNAMICS_POINTS else None
    points = change_points(stages, checkpoint_steps=table.steps.tolist(), loss=loss, graphs=graphs, probes=probes,
                           probe_columns=probe_columns, dynamics=dynamics)
    return Development(table, stages, dynamics, points)
