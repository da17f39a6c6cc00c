"""Developmental stages of a run from its local-learning-coefficient curve, and the stage
boundaries beside the run's other change points.

Hoogland et al. 2024 ("The developmental landscape of in-context learning") bound stages by the
critical points of the LLC over log training steps: where dLLC/dlog t changes sign (a maximum
or minimum) or goes to zero (the curve flattens into a plateau). `llc_stages` finds both on the
smoothed curve, with the estimate's noise as the scale of what counts as a change:

- the noise `h` is `noise_factor` times the LLC's standard error (`llc_std`: for an estimate
  that is the mean over SGLD chains, their spread over the square root of their number,
  `interp.metrics.development.llc_standard_error`; without it, estimated from the curve's second
  differences), and at least
  `flat_fraction` of the smoothed curve's range;
- a plateau is a run of at least `min_plateau` checkpoints whose smoothed values stay within a
  band `h` wide (found left to right, each as long as it goes);
- between plateaus, a maximum or minimum counts only once the curve has moved `h` away from it
  on both sides (a zigzag filter), so a wiggle within the noise is no critical point.

The stages are the plateaus and the monotone stretches between those boundaries. Steps enter
only through their order: the smoothing and the plateau lengths count checkpoints, which runs
space logarithmically early on (`interp.train_config.TrainConfig.checkpoint_log`), i.e. nearly even in log t.
A rise slower than `h` per `min_plateau` checkpoints reads as a staircase of plateaus.

`change_points` sets the boundaries beside the loss's phase changes (`interp.metrics.spans`),
the steps where the circuit graphs change most (`interp.circuits.graph`), the step where each
probe column is half way to its final value, and the essential-dynamics turning points
(`interp.metrics.essential_dynamics`), with each boundary's nearest other change point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Literal

import numpy as np
from jaxtyping import Float, Int

from interp.circuits.graph import CircuitGraph
from interp.errors import InputError
from interp.metrics.essential_dynamics import EssentialDynamics
from interp.metrics.spans import halfway_step, phase_boundaries, phase_change, smooth
from interp.probe_table import Column, ProbeTable

StageKind = Literal["rising", "falling", "plateau"]
BoundaryKind = Literal["maximum", "minimum", "plateau start", "plateau end"]


@dataclass(frozen=True)
class Stage:
    """Checkpoints `start` to `end` (steps; a stage shares its end with the next one's start)."""

    start: int
    end: int
    kind: StageKind
    llc_start: float
    llc_end: float
    """The smoothed LLC at the stage's two ends."""


@dataclass(frozen=True)
class StageBoundary:
    """Where one stage ends and the next begins, and the evidence: `kind` (a critical point of
    the LLC or a plateau edge), the smoothed LLC there, and `change`, the LLC change across the
    neighbouring non-plateau stage (for a maximum or minimum, the smaller of the two sides:
    its prominence), to compare with `Stages.noise`."""

    step: int
    index: int
    kind: BoundaryKind
    llc: float
    change: float


@dataclass(frozen=True)
class Stages:
    steps: Int[np.ndarray, " step"]
    smoothed: Float[np.ndarray, " step"]
    noise: float
    """The band `h` within which the smoothed LLC counts as unchanged."""
    stages: tuple[Stage, ...]
    boundaries: tuple[StageBoundary, ...]


def _check_curve(steps: np.ndarray, values: np.ndarray, field: str) -> None:
    if steps.ndim != 1 or len(steps) < 2:
        raise InputError(f"steps: expected a 1-D array of at least 2 steps, got shape {steps.shape}")
    if np.any(np.diff(steps) <= 0):
        raise InputError(f"steps: expected strictly increasing steps, got {steps.tolist()}")
    if values.shape != steps.shape:
        raise InputError(f"{field}: expected one value per step ({len(steps)}), got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise InputError(f"{field}: expected finite values, got NaN or infinite at steps "
                         f"{steps[~np.isfinite(values)].tolist()}")


def curve_noise(values: Float[np.ndarray, " n"]) -> float:
    """The standard deviation of independent noise on a curve that is locally linear, from its
    second differences (variance 6 sigma^2), robustly (median absolute value): corners of the
    curve are few and do not move the median."""
    second = np.diff(np.asarray(values, dtype=np.float64), 2)
    return float(1.4826 * np.median(np.abs(second)) / math.sqrt(6)) if len(second) else 0.0


def _trend(values: np.ndarray) -> float:
    """How far the least-squares line through `values` (one per index) moves from end to end."""
    return abs(float(np.polyfit(np.arange(len(values)), values, 1)[0])) * (len(values) - 1)


def _plateaus(values: np.ndarray, band: float, min_length: int) -> list[tuple[int, int]]:
    """Inclusive index ranges of at least `min_length` points whose values stay within `band`
    and whose fitted line moves by at most half of it (a slow trend is no plateau), the longest
    first and then the longest in what is left on either side: a greedy scan from the left
    would start a plateau on the rounded corner before it and end it early."""
    found: list[tuple[int, int]] = []
    todo = [(0, len(values) - 1)]
    while todo:
        low, high = todo.pop()
        best = (0, low, low)
        for start in range(low, high + 1):
            end, bottom, top = start, values[start], values[start]
            while end < high and max(top, values[end + 1]) - min(bottom, values[end + 1]) <= band:
                end += 1
                bottom, top = min(bottom, values[end]), max(top, values[end])
            length = end - start + 1
            if length >= max(min_length, best[0]) and _trend(values[start:end + 1]) <= band / 2:
                best = max(best, (length, -start, end))
        length, start, end = best[0], -best[1], best[2]
        if length >= min_length:
            found.append((start, end))
            todo += [(low, start - 1), (end + 1, high)]
    return sorted(found)


def _extrema(values: np.ndarray, band: float) -> list[tuple[int, BoundaryKind]]:
    """Interior maxima and minima that the curve leaves by more than `band` on both sides."""
    found: list[tuple[int, BoundaryKind]] = []
    low = high = 0
    direction = 0  # +1 rising from the last minimum, -1 falling from the last maximum
    for i in range(1, len(values)):
        if direction >= 0 and values[i] > values[high]:
            high = i
        if direction <= 0 and values[i] < values[low]:
            low = i
        if direction >= 0 and values[high] - values[i] > band:
            if direction == 1:
                found.append((high, "maximum"))
            direction, low = -1, i
        elif direction <= 0 and values[i] - values[low] > band:
            if direction == -1:
                found.append((low, "minimum"))
            direction, high = 1, i
    return found


def _absorb_small_changes(pieces: list[tuple[int, int, StageKind]], values: np.ndarray,
                          band: float) -> list[tuple[int, int, StageKind]]:
    """`pieces` with every rise or fall of at most `band` beside a plateau made part of it (a
    stage moves the LLC by more than the noise), and plateaus that then meet merged."""
    out: list[tuple[int, int, StageKind]] = []
    for index, (start, end, kind) in enumerate(pieces):
        beside_plateau = (index > 0 and pieces[index - 1][2] == "plateau") or \
            (index + 1 < len(pieces) and pieces[index + 1][2] == "plateau")
        if kind != "plateau" and beside_plateau and abs(values[end] - values[start]) <= band:
            kind = "plateau"
        if out and kind == "plateau" and out[-1][2] == "plateau":
            start = out.pop()[0]
        out.append((start, end, kind))
    return out


def _boundary_kind(before: StageKind, after: StageKind) -> BoundaryKind:
    if after == "plateau":
        return "plateau start"
    if before == "plateau":
        return "plateau end"
    return "maximum" if before == "rising" else "minimum"


def llc_stages(steps: Sequence[int], llc: Sequence[float], llc_std: Sequence[float] | None = None,
               window: int = 3, noise_factor: float = 4.0, min_plateau: int = 3,
               flat_fraction: float = 0.05) -> Stages:
    """The stages of an LLC curve (see the module's docstring): `llc[i]` estimated at checkpoint
    `steps[i]`, `llc_std[i]` its standard error (None: estimated from the curve), smoothed by a
    centred moving average of `window` checkpoints."""
    steps_array, values = np.asarray(steps), np.asarray(llc, dtype=np.float64)
    _check_curve(steps_array, values, "llc")
    if llc_std is not None:
        std = np.asarray(llc_std, dtype=np.float64)
        _check_curve(steps_array, std, "llc_std")
        if np.any(std < 0):
            raise InputError("llc_std: expected standard errors >= 0, got a negative value")
    if window < 1 or min_plateau < 2 or noise_factor < 0 or not 0 <= flat_fraction < 1:
        raise InputError(f"window, min_plateau, noise_factor, flat_fraction: expected >= 1, >= 2, >= 0 and in [0, 1), "
                         f"got {window}, {min_plateau}, {noise_factor}, {flat_fraction}")
    smoothed = smooth(values, window)
    sigma = float(np.median(std)) if llc_std is not None else curve_noise(values)
    band = max(noise_factor * sigma, flat_fraction * float(np.ptp(smoothed)))

    # Stages as inclusive index ranges, each sharing its last index with the next one's first.
    pieces: list[tuple[int, int, StageKind]] = []

    def monotone(start: int, end: int) -> None:
        edges = [start, *(start + i for i, _ in _extrema(smoothed[start:end + 1], band)), end]
        pieces.extend((a, b, "rising" if smoothed[b] >= smoothed[a] else "falling") for a, b in pairwise(edges))

    done = 0
    for first, last in _plateaus(smoothed, band, min_plateau):
        if first > done:
            monotone(done, first)
        pieces.append((first, last, "plateau"))
        done = last
    if done < len(smoothed) - 1:
        monotone(done, len(smoothed) - 1)
    pieces = _absorb_small_changes(pieces, smoothed, band)

    def change(piece: tuple[int, int, StageKind]) -> float:
        return 0.0 if piece[2] == "plateau" else abs(float(smoothed[piece[1]] - smoothed[piece[0]]))

    stages = tuple(Stage(int(steps_array[a]), int(steps_array[b]), kind, float(smoothed[a]), float(smoothed[b]))
                   for a, b, kind in pieces)
    boundaries = tuple(
        StageBoundary(int(steps_array[before[1]]), int(before[1]), kind, float(smoothed[before[1]]),
                      min(change(before), change(after)) if kind in ("maximum", "minimum")
                      else max(change(before), change(after)))
        for before, after in pairwise(pieces)
        for kind in [_boundary_kind(before[2], after[2])])
    return Stages(steps_array, smoothed, band, stages, boundaries)


# --- change points side by side ------------------------------------------------------------------

ChangeSource = Literal["llc stage", "loss phase", "circuit graph", "probe half-way", "essential dynamics"]


@dataclass(frozen=True)
class ChangePoint:
    """One change point of a run: what found it, at which step, and what changed there."""

    source: ChangeSource
    step: int
    detail: str


@dataclass(frozen=True)
class BoundaryMatch:
    """A stage boundary, the nearest change point from another source, and how far apart they
    are in checkpoints (fractional between checkpoints; None without another change point)."""

    boundary: StageBoundary
    nearest: ChangePoint | None
    distance: float | None


@dataclass(frozen=True)
class ChangePoints:
    rows: tuple[ChangePoint, ...]
    """Every change point, by step (the stage boundaries under source "llc stage")."""
    matches: tuple[BoundaryMatch, ...]

    def to_json(self) -> dict[str, object]:
        return {"rows": [asdict(row) for row in self.rows], "matches": [asdict(m) for m in self.matches]}


@dataclass(frozen=True)
class GraphChange:
    """How much the circuit graph changes from checkpoint `before` to `after`: the summed
    |weight change| over the larger of the two graphs' summed |weights| (0 same, 2 opposite)."""

    before: int
    after: int
    relative: float
    appeared: int
    vanished: int


def graph_changes(graphs: Sequence[CircuitGraph], fraction: float = 0.1) -> list[GraphChange]:
    """The `GraphChange` between each pair of consecutive graphs (ordered by step); appeared and
    vanished count the kept edges (`CircuitGraph.kept(fraction)`) as `CircuitDiff` does."""
    ordered = sorted(graphs, key=lambda g: g.step)
    out = []
    for before, after in pairwise(ordered):
        edges = set(before.weights) | set(after.weights)
        moved = sum(abs(after.weights.get(e, 0.0) - before.weights.get(e, 0.0)) for e in edges
                    if math.isfinite(after.weights.get(e, 0.0) - before.weights.get(e, 0.0)))
        scale = max(sum(abs(w) for w in g.weights.values() if math.isfinite(w)) for g in (before, after))
        diff = before.diff(after, fraction)
        out.append(GraphChange(before.step, after.step, moved / scale if scale > 0 else 0.0,
                               len(diff.appeared), len(diff.vanished)))
    return out


def _checkpoint_position(step: int, checkpoint_steps: np.ndarray) -> float:
    return float(np.interp(step, checkpoint_steps, np.arange(len(checkpoint_steps))))


def change_points(stages: Stages | None = None, *, checkpoint_steps: Sequence[int] | None = None,
                  loss: tuple[Sequence[int], Sequence[float]] | None = None, loss_baseline: float | None = None,
                  loss_delta: float = 0.1, loss_window: int = 1, graphs: Sequence[CircuitGraph] = (),
                  n_graph_changes: int = 3, probes: ProbeTable | None = None,
                  probe_columns: Sequence[Column] | None = None,
                  dynamics: EssentialDynamics | None = None) -> ChangePoints:
    """The run's change points side by side: the stage boundaries of `stages`; the loss curve's
    drop (`spans.phase_change`) and, with `loss_baseline`, its phase-1 and plateau ends
    (`spans.phase_boundaries` with `loss_delta`, `loss_window`); the `n_graph_changes` largest
    `graph_changes` of `graphs`, at the later step; the half-way step (`spans.halfway_step`) of
    each of `probe_columns` (default: all) of `probes`; the turning points of `dynamics`. Each
    stage boundary is matched with its nearest change point from another source, the distance
    counted in the checkpoints `checkpoint_steps` (default: the stages' steps)."""
    rows: list[ChangePoint] = []
    if stages is not None:
        rows += [ChangePoint("llc stage", b.step, f"{b.kind} (LLC {b.llc:.4g}, change {b.change:.3g} vs noise "
                                                  f"{stages.noise:.3g})") for b in stages.boundaries]
    if loss is not None:
        loss_steps, loss_values = np.asarray(loss[0]), np.asarray(loss[1], dtype=np.float64)
        _check_curve(loss_steps, loss_values, "loss")
        step, before, after = phase_change(loss_steps, loss_values)
        if step is not None:
            rows.append(ChangePoint("loss phase", step,
                                    f"loss drop from {before:.3g} to {after:.3g} (midpoint crossed)"))
        if loss_baseline is not None:
            phase1_end, plateau_end = phase_boundaries(loss_steps, loss_values, loss_baseline, loss_delta, loss_window)
            rows += [ChangePoint("loss phase", s, text) for s, text in
                     ((phase1_end, f"within {loss_delta} of the baseline {loss_baseline:.3g}"),
                      (plateau_end, f"more than {loss_delta} below the baseline {loss_baseline:.3g}")) if s is not None]
    if graphs:
        largest = sorted(graph_changes(graphs), key=lambda c: -c.relative)[:n_graph_changes]
        rows += [ChangePoint("circuit graph", c.after, f"graph change {c.relative:.3g} since step {c.before} "
                                                        f"({c.appeared} edges appear, {c.vanished} vanish)")
                 for c in largest]
    if probes is not None:
        for column in probes.columns if probe_columns is None else probe_columns:
            values = probes[column]
            step = halfway_step(probes.steps, values)
            if step is not None:
                rows.append(ChangePoint("probe half-way", step, f"{column} half way from {values[0]:.3g} to "
                                                                 f"{values[-1]:.3g}"))
    if dynamics is not None:
        rows += [ChangePoint("essential dynamics", t.step, f"trajectory turns {t.angle:.0f} degrees")
                 for t in dynamics.turning_points]
    rows.sort(key=lambda row: row.step)

    matches: list[BoundaryMatch] = []
    if stages is not None:
        grid = np.asarray(stages.steps if checkpoint_steps is None else checkpoint_steps)
        if grid.ndim != 1 or len(grid) < 1 or np.any(np.diff(grid) <= 0):
            raise InputError(f"checkpoint_steps: expected strictly increasing steps, got {grid.tolist()}")
        others = [row for row in rows if row.source != "llc stage"]
        for boundary in stages.boundaries:
            here = _checkpoint_position(boundary.step, grid)
            distances = [abs(_checkpoint_position(row.step, grid) - here) for row in others]
            best = int(np.argmin(distances)) if distances else None
            matches.append(BoundaryMatch(boundary, None if best is None else others[best],
                                         None if best is None else distances[best]))
    return ChangePoints(tuple(rows), tuple(matches))
