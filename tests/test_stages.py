"""Essential dynamics and LLC stages: known-answer trajectories and curves, bad input, and the
cached output trajectory of a tiny real run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import fixed_tokens

from interp.circuits.graph import CircuitGraph, ModelShape
from interp.errors import InputError
from interp.metrics.drift import pca
from interp.metrics.essential_dynamics import (
    essential_dynamics,
    output_probe,
    output_trajectory,
    trajectory_dynamics,
    turn_angles,
)
from interp.metrics.stages import change_points, graph_changes, llc_stages
from interp.model import scored_positions
from interp.probing import ProbeTable, probe_artifacts

# --- essential dynamics: a known trajectory ------------------------------------------------------


def polyline(corners: np.ndarray, turns: list[int], n: int) -> np.ndarray:
    """`n` points along straight segments through `corners`, reaching corner k at index turns[k-1]."""
    knots = [0, *turns, n - 1]
    return np.stack([np.interp(np.arange(n), knots, corners[:, d]) for d in range(corners.shape[1])], axis=1)


def embedded(path: np.ndarray, dim: int, noise: float, seed: int) -> np.ndarray:
    """`path` placed in `dim` dimensions by a random isometry, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, path.shape[1])))
    return path @ basis.T + noise * rng.normal(size=(len(path), dim))


CORNERS = np.array([[0, 0, 0], [10, 0, 0], [10, 6, 0], [10, 6, 4]], dtype=float)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_turning_points_of_a_polyline_are_its_corners(seed):
    turns, n = [10, 20], 30
    path = polyline(CORNERS, turns, n)
    steps = np.arange(n) * 100
    dim, noise = 400, 0.05
    dynamics = trajectory_dynamics(steps, embedded(path, dim, noise, seed))
    found = [t.index for t in dynamics.turning_points]
    assert len(found) == len(turns)
    assert all(abs(f - t) <= 1 for f, t in zip(found, turns, strict=True))
    # The embedding is an isometry: each component carries the 3-D path's variance along it
    # plus the isotropic noise's share (sigma^2 per dimension).
    _, fractions = pca(path, 3)
    path_variance = np.var(path, axis=0).sum()
    expected = (fractions * path_variance + noise**2) / (path_variance + dim * noise**2)
    np.testing.assert_allclose(dynamics.explained, expected, atol=0.01)
    assert dynamics.coords.shape == (n, 3) and dynamics.turning_points[0].step == steps[found[0]]


def test_a_straight_trajectory_has_no_turning_point():
    path = polyline(CORNERS[:2], [], 25)
    dynamics = trajectory_dynamics(np.arange(25), embedded(path, 200, 0.02, 0))
    assert dynamics.turning_points == ()
    assert dynamics.explained[0] > 0.99


def test_turn_angles_know_a_right_angle_and_a_reversal():
    square = np.array([[0, 0], [1, 0], [2, 0], [2, 1], [2, 2]], dtype=float)
    assert turn_angles(square, span=2)[2] == pytest.approx(90)
    back = np.array([[0.0], [1.0], [2.0], [1.0], [0.0]])
    assert turn_angles(back, span=1)[2] == pytest.approx(180)
    paused = np.array([[0, 0], [1, 0], [1, 0], [1, 1]], dtype=float)  # a secant of length 0: no angle
    assert np.isnan(turn_angles(paused, span=1)[1])


@pytest.mark.parametrize("steps, rows, field", [
    ([0, 2, 1], np.zeros((3, 4)), "steps"),
    ([0, 1, 2], np.zeros((2, 4)), "rows"),
    ([0, 1, 2], np.array([[0, 1.0], [np.nan, 1], [2, 2]]), "rows"),
])
def test_bad_trajectories_are_refused_naming_the_field(steps, rows, field):
    with pytest.raises(InputError, match=f"^{field}:"):
        trajectory_dynamics(steps, rows, n_components=1)


def test_too_many_components_is_refused():
    with pytest.raises(InputError, match="^n_components:"):
        trajectory_dynamics([0, 1, 2], np.eye(3), n_components=4)


# --- essential dynamics of a real run ----------------------------------------------------------


def test_output_trajectory_of_a_run_is_its_log_softmax_and_is_cached(run_copy, trained_run, monkeypatch):
    batch = {"tokens": trained_run.tokens}
    steps, rows = output_trajectory(run_copy, batch)
    assert steps.tolist() == run_copy.steps
    mask = scored_positions(batch)
    for step, row in zip(steps, rows, strict=True):
        expected = trained_run.bridge_logits[int(step)].float().log_softmax(-1)[mask].numpy().ravel()
        np.testing.assert_allclose(row, expected, atol=1e-4)
    directory = probe_artifacts(run_copy, "essential_dynamics", output_probe(), batch)
    assert sorted(p.name for p in directory.glob("step_*.npy")) == [f"step_{s:06d}.npy" for s in steps]

    def no_loading(*args, **kwargs):
        raise AssertionError("a cached call loaded a checkpoint")

    monkeypatch.setattr(type(run_copy), "load", no_loading)
    again_steps, again = output_trajectory(run_copy, batch)
    np.testing.assert_array_equal(again, rows)
    dynamics = essential_dynamics(run_copy, batch, n_components=2)
    assert dynamics.explained.sum() <= 1 + 1e-9 and dynamics.coords.shape == (len(steps), 2)


def test_a_removed_output_file_is_computed_again(run_copy, trained_run):
    batch = {"tokens": trained_run.tokens}
    _, rows = output_trajectory(run_copy, batch)
    directory = probe_artifacts(run_copy, "essential_dynamics", output_probe(), batch)
    (directory / f"step_{run_copy.steps[1]:06d}.npy").unlink()
    _, again = output_trajectory(run_copy, batch)
    np.testing.assert_allclose(again, rows, atol=1e-6)
    assert (directory / f"step_{run_copy.steps[1]:06d}.npy").exists()


def test_logits_are_the_other_output(run_copy, trained_run):
    batch = {"tokens": fixed_tokens(2)}
    _, rows = output_trajectory(run_copy, batch, steps=[run_copy.steps[-1]], output="logits")
    with torch.no_grad():
        logits = run_copy.load(run_copy.steps[-1], device="cpu")(batch["tokens"])
    np.testing.assert_allclose(rows[0], logits[scored_positions(batch)].numpy().ravel(), atol=1e-4)
    with pytest.raises(InputError, match="^output:"):
        output_probe("probs")  # type: ignore[arg-type]


# --- LLC stages -------------------------------------------------------------------------------

STEPS = np.unique(np.concatenate([[0], np.geomspace(1, 10_000, 40).astype(int)]))  # 38 checkpoints
RISE_END, FALL_START, FALL_END = 12, 22, 32


def rise_plateau_fall() -> np.ndarray:
    """10 -> 30 by checkpoint 12, flat to 22, down to 20 by 32, flat to the end."""
    return np.interp(np.arange(len(STEPS)), [0, RISE_END, FALL_START, FALL_END, len(STEPS) - 1], [10, 30, 30, 20, 20])


@pytest.mark.parametrize("seed", range(5))
def test_stages_of_a_rise_plateau_fall(seed):
    noise = 0.5
    llc = rise_plateau_fall() + np.random.default_rng(seed).normal(0, noise, len(STEPS))
    stages = llc_stages(STEPS, llc, np.full(len(STEPS), noise))
    assert [s.kind for s in stages.stages] == ["rising", "plateau", "falling", "plateau"]
    found = [b.index for b in stages.boundaries]
    assert all(abs(f - t) <= 1 for f, t in zip(found, [RISE_END, FALL_START, FALL_END], strict=True))
    assert [b.kind for b in stages.boundaries] == ["plateau start", "plateau end", "plateau start"]
    assert stages.stages[0].start == 0 and stages.stages[-1].end == STEPS[-1]
    assert all(a.end == b.start for a, b in zip(stages.stages, stages.stages[1:], strict=False))
    assert stages.boundaries[0].change > stages.noise


def test_a_peak_is_a_maximum_between_a_rise_and_a_fall():
    llc = np.interp(np.arange(len(STEPS)), [0, 18, len(STEPS) - 1], [5, 25, 8])
    stages = llc_stages(STEPS, llc, np.full(len(STEPS), 0.3))
    assert [s.kind for s in stages.stages] == ["rising", "falling"]
    (peak,) = stages.boundaries
    assert peak.kind == "maximum" and abs(peak.index - 18) <= 1 and peak.change > 10


@pytest.mark.parametrize("seed", range(10))
def test_noise_within_the_standard_error_is_one_stage(seed):
    llc = 7 + np.random.default_rng(seed).normal(0, 0.5, len(STEPS))
    stages = llc_stages(STEPS, llc, np.full(len(STEPS), 0.5))
    assert [s.kind for s in stages.stages] == ["plateau"] and stages.boundaries == ()


def test_the_noise_is_estimated_from_the_curve_without_a_standard_error():
    llc = rise_plateau_fall() + np.random.default_rng(0).normal(0, 0.5, len(STEPS))
    stages = llc_stages(STEPS, llc)
    assert [s.kind for s in stages.stages] == ["rising", "plateau", "falling", "plateau"]
    assert 0.25 * 4 < stages.noise < 1.0 * 4  # noise_factor 4 times an estimate of 0.5


@pytest.mark.parametrize("steps, llc, std, field", [
    ([0, 20, 10, 30], [1, 2, 3, 4], None, "steps"),
    ([0, 10, 20, 30], [1, 2, 3], None, "llc"),
    ([0, 10, 20, 30], [1, 2, np.nan, 4], None, "llc"),
    ([0, 10, 20, 30], [1, 2, 3, 4], [0.1, 0.1], "llc_std"),
    ([0, 10, 20, 30], [1, 2, 3, 4], [0.1, -0.1, 0.1, 0.1], "llc_std"),
])
def test_bad_llc_curves_are_refused_naming_the_field(steps, llc, std, field):
    with pytest.raises(InputError, match=f"^{field}:"):
        llc_stages(steps, llc, std)


# --- change points side by side ---------------------------------------------------------------


def graph(step: int, weight: float) -> CircuitGraph:
    shape = ModelShape(2, 1, attn_only=True)
    edges = shape.edges()
    return CircuitGraph("path", step, shape, {edges[0]: 1.0, edges[1]: weight})


def test_graph_changes_are_relative_weight_changes():
    changes = graph_changes([graph(0, 0.0), graph(100, 0.0), graph(200, 3.0)])
    assert [(c.before, c.after) for c in changes] == [(0, 100), (100, 200)]
    assert changes[0].relative == 0 and changes[1].relative == pytest.approx(3 / 4)
    assert changes[1].appeared == 1 and changes[1].vanished == 0


def test_change_points_put_each_boundary_beside_its_nearest_other_change():
    noise = 0.5
    llc = rise_plateau_fall() + np.random.default_rng(0).normal(0, noise, len(STEPS))
    stages = llc_stages(STEPS, llc, np.full(len(STEPS), noise))
    loss = 3 - 2 / (1 + np.exp(-(np.arange(len(STEPS)) - FALL_START + 0.5)))  # below 2 from checkpoint 22
    graphs = [graph(int(s), 0.0 if i < RISE_END else 2.0) for i, s in enumerate(STEPS)]  # changes at 12
    table = ProbeTable(STEPS, ("ind/L1H0",), np.clip(np.arange(len(STEPS)) - 25.0, 0, 10)[:, None])  # half way at 30
    dynamics = trajectory_dynamics(STEPS, embedded(polyline(CORNERS, [10, 20], len(STEPS)), 100, 0.01, 0))
    points = change_points(stages, loss=(STEPS, loss), graphs=graphs, n_graph_changes=1, probes=table,
                           dynamics=dynamics)
    sources = {row.source for row in points.rows}
    assert sources == {"llc stage", "loss phase", "circuit graph", "probe half-way", "essential dynamics"}
    assert [r.step for r in points.rows] == sorted(r.step for r in points.rows)
    by_source = {row.source: row for row in points.rows if row.source != "llc stage"}
    assert by_source["circuit graph"].step == STEPS[RISE_END] and by_source["probe half-way"].step == STEPS[30]
    assert by_source["loss phase"].step == STEPS[FALL_START]
    first, second, third = points.matches
    assert first.nearest is not None and first.nearest.source in ("circuit graph", "essential dynamics")
    assert first.distance is not None and first.distance <= 2
    assert second.nearest is not None and second.distance is not None and second.distance <= 2
    assert all(m.nearest is not None and m.distance == pytest.approx(
        abs(float(np.interp(m.nearest.step, STEPS, np.arange(len(STEPS)))) - m.boundary.index)) for m in points.matches)
    assert points.to_json()["matches"][0]["boundary"]["kind"] == "plateau start"
    assert third.nearest is not None


def test_change_points_without_other_sources_match_nothing():
    stages = llc_stages(STEPS, rise_plateau_fall(), np.full(len(STEPS), 0.5))
    points = change_points(stages)
    assert all(m.nearest is None and m.distance is None for m in points.matches)
    with pytest.raises(InputError, match="^loss:"):
        change_points(stages, loss=(STEPS, np.zeros(3)))


def test_an_llc_tables_noise_is_the_standard_error_of_its_healthy_chains_mean():
    from interp.metrics.development import llc_standard_error, llc_table_stages
    from interp.probing import ProbeTable

    steps = np.arange(0, 60, 5)
    llc = np.where(steps < 30, 1.0, 3.0)
    chains = np.stack([llc - 0.3, llc + 0.3, llc - 0.1, np.where(steps == 10, np.nan, llc + 0.1)], axis=1)
    std = np.nanstd(chains, axis=1)
    table = ProbeTable(steps, ("llc", "llc_std", *(f"llc_chain{c}" for c in range(4))),
                       np.column_stack([llc, std, chains]))
    healthy = np.where(steps == 10, 3, 4)  # a diverged chain is no sample of the mean
    np.testing.assert_allclose(llc_standard_error(table), std / np.sqrt(healthy))
    staged = llc_table_stages(table)
    assert staged.boundaries and staged.boundaries == llc_stages(steps, llc, std / np.sqrt(healthy)).boundaries
    assert llc_table_stages(ProbeTable(steps[:2], ("llc", "llc_std"), np.ones((2, 2)))) is None


def _development_with_boundaries(boundaries: list[int]):
    from interp.metrics.development import Development
    from interp.metrics.stages import ChangePoints, StageBoundary, Stages

    steps = np.array([0, 100, 200, 400, 800, 1600])
    llc = np.array([1.0, 2.0, 5.0, 4.0, 4.0, 3.0])
    table = ProbeTable(steps, ("llc", "llc_std", "trustworthy"),
                       np.stack([llc, np.full(6, 0.1), np.array([1, 1, 0, 1, 1, 1])], axis=1))
    stages = Stages(steps, llc, 0.1, (), tuple(StageBoundary(int(s), int(np.searchsorted(steps, s)), "maximum",
                                                             5.0, 1.0) for s in boundaries))
    return Development(table, stages, None, ChangePoints((), ()))


def test_distance_to_the_nearest_stage_boundary_counts_checkpoints():
    """Between checkpoints 200 and 400 the distance is fractional; steps are not the unit."""
    found = _development_with_boundaries([200, 1600])
    assert found.checkpoints_to_nearest_boundary(200) == 0
    assert found.checkpoints_to_nearest_boundary(300) == pytest.approx(0.5)
    assert found.checkpoints_to_nearest_boundary(0) == pytest.approx(2)
    assert found.checkpoints_to_nearest_boundary(800) == pytest.approx(1)  # 1600 is one checkpoint on
    assert _development_with_boundaries([]).checkpoints_to_nearest_boundary(300) is None


def test_development_summary_reads_the_curve():
    from interp.metrics.llc import LLCSettings

    summary = _development_with_boundaries([200]).summary(LLCSettings(nbeta=10.0))
    assert (summary.llc_init, summary.llc_final, summary.llc_peak, summary.llc_peak_step) == (1.0, 3.0, 5.0, 200)
    assert (summary.llc_trusted, summary.llc_checkpoints, summary.stage_boundaries) == (5, 6, ["200 maximum"])
    assert "5 of 6 estimates trustworthy" in summary.describe() and "200 maximum" in summary.describe()
