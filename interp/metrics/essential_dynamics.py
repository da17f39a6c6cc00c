"""Essential dynamics (Hoogland et al. 2024, "The developmental landscape of in-context
learning"): the model's outputs on one fixed batch at every checkpoint, centred and reduced by
PCA across checkpoints; the trajectory in the top components and its turning points.

The outputs of a checkpoint are the log-softmax (default) or the logits at the batch's scored
positions, flattened into one vector. Log-softmax by default: adding a constant to one
position's logits changes no prediction, and log-softmax removes that freedom, so only changes
of what the model predicts move the trajectory.

The vectors are computed by a probe (`output_probe`) through `interp.probing.probe`: one shared
forward per checkpoint, each vector saved as `step_<N>.npy` in the probe's artifact folder
(`ProbeContext.artifacts`) and its cache row in `probes/<key>.jsonl`, so a second call loads
the saved vectors instead of running the model. PCA is `interp.metrics.drift.pca` (through the
checkpoints' Gram matrix: cheap however long the vectors are).

Turning points: the paper reads developmental stages off the turns and cusps of the PC
trajectory (it smooths the PC curves and draws their osculating circles; a cusp of the evolute
is where the curvature peaks). Here the top-k trajectory is smoothed with a Gaussian over
checkpoints (`sigma`, default 1), the turn at each checkpoint is the angle between the secant
from `span` checkpoints before and the secant to `span` checkpoints after (default 2: wider than
the smoothing, which rounds a corner over about two checkpoints, so the whole turn shows at
one), and a turning point is a local maximum of that angle above `min_angle` degrees: the
discrete, unit-free form of a curvature peak.
Secants shorter than `min_move` of the trajectory's diameter carry no direction (a pause, or
noise) and give no angle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float, Int

from interp.checkpoints import CheckpointSource, open_checkpoints
from interp.errors import InputError
from interp.files import atomic_write_npy
from interp.metrics.drift import pca
from interp.model import Batch, scored_positions
from interp.probe_batches import Text, text_batch
from interp.probe_cache import probe_artifacts
from interp.probing import Probe, ProbeContext, probe

OutputKind = Literal["log_softmax", "logits"]
OUTPUT_KINDS: tuple[OutputKind, ...] = ("log_softmax", "logits")
ESSENTIAL_DYNAMICS_KEY = "essential_dynamics"
"""The probe key (`probes/<key>.jsonl`) the outputs are cached under by default."""


def _output_file(directory: Path, step: int) -> Path:
    return directory / f"step_{step:06d}.npy"


def output_vector(logits: torch.Tensor, batch: Batch, output: OutputKind = "log_softmax") -> np.ndarray:
    """The flattened float32 outputs at `batch`'s scored positions (`interp.model.scored_positions`)."""
    if output not in OUTPUT_KINDS:
        raise InputError(f"output: expected one of {list(OUTPUT_KINDS)}, got {output!r}")
    values = logits.float().log_softmax(-1) if output == "log_softmax" else logits.float()
    return values[scored_positions(batch)].cpu().numpy().astype(np.float32).ravel()


def output_probe(output: OutputKind = "log_softmax", into: dict[int, np.ndarray] | None = None) -> Probe:
    """The probe that saves each checkpoint's `output_vector` in its artifact folder (inside
    `probe()`) and into `into` (step -> vector, for a call whose results cannot be cached).
    Its column `rms` is the vector's root mean square."""
    if output not in OUTPUT_KINDS:
        raise InputError(f"output: expected one of {list(OUTPUT_KINDS)}, got {output!r}")

    def fn(ctx: ProbeContext) -> dict[str, float]:
        if ctx.batch is None or ctx.logits is None:
            raise InputError("batch: essential dynamics needs a batch to run the model on")
        vector = output_vector(ctx.logits, ctx.batch, output)
        if ctx.step is not None:
            if into is not None:
                into[ctx.step] = vector
            if ctx.artifacts is not None:
                ctx.artifacts.mkdir(parents=True, exist_ok=True)
                atomic_write_npy(_output_file(ctx.artifacts, ctx.step), vector)
        return {"rms": float(np.sqrt(np.mean(np.square(vector, dtype=np.float64)))) if vector.size else 0.0}

    return Probe(name=f"essential_dynamics({output})", hooks=(), fn=fn)


def saved_output(directory: Path, step: int) -> np.ndarray | None:
    """The output vector `output_probe` saved at `step` in its artifact folder `directory`; None if none."""
    path = _output_file(directory, step)
    return np.load(path, allow_pickle=False) if path.exists() else None


def output_trajectory(run: CheckpointSource | str | Path, batch: Batch | Text, steps: Sequence[int] | None = None,
                      output: OutputKind = "log_softmax", device: str | torch.device | None = None,
                      key: str = ESSENTIAL_DYNAMICS_KEY,
                      ) -> tuple[Int[np.ndarray, " step"], Float[np.ndarray, "step dim"]]:
    """`(steps, outputs)`: `output_vector` at each checkpoint (default: all) of `run`, one row
    per step, computed once and then read from the probe's saved files. A step cached without
    its file (removed, or computed where it could not be saved) is computed again."""
    run = open_checkpoints(run) if isinstance(run, str | Path) else run
    batch = batch if isinstance(batch, Mapping) else text_batch(run, batch)
    steps = list(run.steps if steps is None else steps)
    if not steps:
        raise InputError("steps: expected at least one checkpoint step, got none")
    computed: dict[int, np.ndarray] = {}
    probe_obj = output_probe(output, into=computed)
    probe(run, {key: probe_obj}, batch, steps=steps, device=device)
    directory = probe_artifacts(run, key, probe_obj, batch, device)

    rows = {step: computed[step] if step in computed else saved_output(directory, step) for step in steps}
    missing = [step for step, row in rows.items() if row is None]
    if missing:
        probe(run, {key: probe_obj}, batch, steps=missing, device=device, use_cache=False)
        rows.update({step: computed[step] for step in missing})
    return np.asarray(steps), np.stack([rows[step] for step in steps])


@dataclass(frozen=True)
class TurningPoint:
    """A checkpoint where the trajectory turns: `angle` degrees between the secant arriving and
    the secant leaving (0: straight on, 180: back the way it came)."""

    step: int
    index: int
    angle: float


@dataclass(frozen=True)
class EssentialDynamics:
    """The output trajectory of a run in its top principal components."""

    steps: Int[np.ndarray, " step"]
    coords: Float[np.ndarray, "step k"]
    """Each checkpoint's coordinates on the top components (the centred outputs projected)."""
    explained: Float[np.ndarray, " k"]
    """Each component's fraction of the variance across checkpoints."""
    smoothed: Float[np.ndarray, "step k"]
    """`coords` smoothed as the turning points were found."""
    turn_angles: Float[np.ndarray, " step"]
    """The turn at each checkpoint in degrees (NaN at the ends and where a secant is too short)."""
    turning_points: tuple[TurningPoint, ...]


def _check_trajectory(steps: np.ndarray, rows: np.ndarray) -> None:
    if rows.ndim != 2 or len(rows) != len(steps):
        raise InputError(f"rows: expected a [step, dim] array with one row per step ({len(steps)}), "
                         f"got shape {rows.shape}")
    if np.any(np.diff(steps) <= 0):
        raise InputError(f"steps: expected strictly increasing steps, got {steps.tolist()}")
    if not np.all(np.isfinite(rows)):
        raise InputError("rows: expected finite outputs, got NaN or infinite values")


def gaussian_smooth(values: Float[np.ndarray, "n ..."], sigma: float) -> np.ndarray:
    """`values` smoothed along the first axis by a Gaussian of `sigma` samples, the kernel
    renormalised where it is cut by the ends (so a constant stays constant); `sigma` 0: unchanged."""
    values = np.asarray(values, dtype=np.float64)
    if sigma <= 0:
        return values
    offsets = np.arange(len(values))
    weights = np.exp(-0.5 * ((offsets[:, None] - offsets[None, :]) / sigma) ** 2)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.tensordot(weights, values, axes=1)


def turn_angles(points: Float[np.ndarray, "n k"], span: int = 2, min_move: float = 0.01) -> Float[np.ndarray, " n"]:
    """The angle (degrees) at each point between the secant from `span` points before and the
    secant to `span` points after; NaN at the ends and where either secant is shorter than
    `min_move` times the largest distance between two points."""
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    angles = np.full(n, np.nan)
    if n < 2 * span + 1:
        return angles
    diameter = max(float(np.linalg.norm(points - p, axis=1).max()) for p in points)
    for i in range(span, n - span):
        before, after = points[i] - points[i - span], points[i + span] - points[i]
        lengths = np.linalg.norm(before), np.linalg.norm(after)
        if min(lengths) <= min_move * diameter:
            continue
        cosine = float(before @ after) / (lengths[0] * lengths[1])
        angles[i] = float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))
    return angles


def turning_points(steps: Sequence[int], angles: Float[np.ndarray, " n"], min_angle: float = 30.0,
                   separation: int = 1) -> tuple[TurningPoint, ...]:
    """The local maxima of `angles` above `min_angle` degrees, at least `separation` + 1 points
    apart (of two closer maxima the larger turn is kept)."""
    angles = np.asarray(angles, dtype=np.float64)
    filled = np.where(np.isnan(angles), -np.inf, angles)
    candidates = [i for i in range(len(filled)) if filled[i] > min_angle
                  and filled[i] >= filled[max(i - 1, 0)] and filled[i] >= filled[min(i + 1, len(filled) - 1)]]
    kept: list[int] = []
    for i in sorted(candidates, key=lambda c: -filled[c]):
        if all(abs(i - j) > separation for j in kept):
            kept.append(i)
    return tuple(TurningPoint(int(steps[i]), i, float(angles[i])) for i in sorted(kept))


def trajectory_dynamics(steps: Sequence[int], rows: Float[np.ndarray, "step dim"], n_components: int = 3,
                        sigma: float = 1.0, span: int = 2, min_angle: float = 30.0,
                        min_move: float = 0.01) -> EssentialDynamics:
    """The essential dynamics of any trajectory, one row per step (e.g. `output_trajectory`'s):
    PCA across steps, the trajectory in the top `n_components`, smoothed by a Gaussian of
    `sigma` checkpoints, and its turning points (`turn_angles` with `span` and `min_move`,
    `turning_points` above `min_angle` degrees)."""
    steps_array, rows = np.asarray(steps), np.asarray(rows)
    _check_trajectory(steps_array, rows)
    if not 1 <= n_components <= min(rows.shape):
        raise InputError(f"n_components: expected 1..{min(rows.shape)} (steps and output size), got {n_components}")
    if span < 1 or sigma < 0 or not 0 <= min_move < 1:
        raise InputError(f"span, sigma, min_move: expected span >= 1, sigma >= 0, 0 <= min_move < 1, got "
                         f"{span}, {sigma}, {min_move}")
    coords, explained = pca(rows, n_components)
    smoothed = gaussian_smooth(coords, sigma)
    angles = turn_angles(smoothed, span, min_move)
    return EssentialDynamics(steps_array, coords, explained, smoothed, angles,
                             turning_points(steps_array, angles, min_angle, separation=span))


def essential_dynamics(run: CheckpointSource | str | Path, batch: Batch | Text, steps: Sequence[int] | None = None,
                       n_components: int = 3, output: OutputKind = "log_softmax",
                       device: str | torch.device | None = None, sigma: float = 1.0, span: int = 2,
                       min_angle: float = 30.0, min_move: float = 0.01) -> EssentialDynamics:
    """The essential dynamics of `run` (a run, its directory or any `CheckpointSource`) on the
    fixed `batch`: `output_trajectory` (cached) reduced by `trajectory_dynamics`."""
    found_steps, rows = output_trajectory(run, batch, steps, output, device)
    return trajectory_dynamics(found_steps, rows, n_components, sigma, span, min_angle, min_move)
