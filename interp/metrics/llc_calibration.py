"""Choosing the SGLD settings of an LLC estimate the way the devinterp docs recommend: try a grid
of step sizes (and localizations, inverse temperatures) at one checkpoint, keep the settings
whose estimate raises no problem (no chain diverged or went non-finite, the loss trace is flat
after burn-in, the chains agree, the LLC is not negative), and take the largest step size among
them: it mixes fastest for the same number of draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from torch import nn

from interp.errors import InputError
from interp.metrics.llc import Data, LLCEstimate, LLCSettings, LossFn, WeightMasks, estimate_llc


@dataclass(frozen=True)
class CalibrationTrial:
    """One point of the grid: its settings and the estimate they gave."""

    settings: LLCSettings
    estimate: LLCEstimate

    @property
    def passed(self) -> bool:
        return self.estimate.trustworthy


@dataclass(frozen=True)
class Calibration:
    trials: tuple[CalibrationTrial, ...]
    """Every setting tried, in grid order (lr, then gamma, then nbeta)."""
    chosen: LLCSettings | None
    """The largest step size that passed (ties: the smallest gamma, then the first nbeta
    listed); None when none passed."""
    reason: str
    """Why `chosen` was chosen, or why none passed (each trial's first problem)."""

    @property
    def passed(self) -> bool:
        return self.chosen is not None

    @property
    def chosen_estimate(self) -> LLCEstimate | None:
        return next((t.estimate for t in self.trials if t.settings == self.chosen), None)


def _grid_values(name: str, values: Sequence, allow_none: bool = False) -> tuple:
    values = tuple(values)
    if not values or any(v is None and not allow_none for v in values):
        raise InputError(f"{name}: expected a non-empty sequence of numbers, got {values!r}")
    return values


def calibrate_llc(model: nn.Module, loss: LossFn, data: Data, base_settings: LLCSettings,
                  lrs: Sequence[float] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2), gammas: Sequence[float] | None = None,
                  nbetas: Sequence[float | None] | None = None, masks: WeightMasks | None = None) -> Calibration:
    """Estimate the LLC of `model` on `data` with `base_settings` at every (lr, gamma, nbeta)
    of the grid (`gammas`/`nbetas` None: the base's only) and choose as the module says.
    `masks`: calibrate a refined LLC (as `estimate_llc` takes them). Bad values in the grid
    raise `InputError`/`ValueError` naming the field before anything is sampled."""
    grid = [replace(base_settings, lr=lr, gamma=gamma, nbeta=nbeta)
            for lr in _grid_values("lrs", lrs)
            for gamma in _grid_values("gammas", (base_settings.gamma,) if gammas is None else gammas)
            for nbeta in _grid_values("nbetas", (base_settings.nbeta,) if nbetas is None else nbetas, True)]
    trials = tuple(CalibrationTrial(s, estimate_llc(model, loss, data, s, masks)) for s in grid)
    passing = [t for t in trials if t.passed]
    if not passing:
        failures = "; ".join(f"lr={t.settings.lr:g}, gamma={t.settings.gamma:g}, "
                             f"nbeta={t.settings.effective_nbeta:.3g}: {t.estimate.problems[0]}" for t in trials)
        return Calibration(trials, None, f"none passed: {failures}")
    order = {id(t): i for i, t in enumerate(trials)}
    best = min(passing, key=lambda t: (-t.settings.lr, t.settings.gamma, order[id(t)]))
    llc = best.estimate.llc
    reason = (f"largest step size that passed ({len(passing)} of {len(trials)} settings did): lr={best.settings.lr:g}, "
              f"gamma={best.settings.gamma:g}, nbeta={best.settings.effective_nbeta:.3g}, "
              f"LLC {llc:.4g} +- {best.estimate.llc_std:.2g}")
    return Calibration(trials, best.settings, reason)
