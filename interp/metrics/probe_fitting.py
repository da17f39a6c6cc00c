"""Fitting one linear probe on features: pure numpy and scikit-learn, no model and no run.

`fit_probe(features, labels, groups, types=..., settings=FitSettings(...))` fits a
scikit-learn model: logistic regression for class labels, ridge regression for real values,
on standardised inputs, with the penalty chosen by grouped cross-validation on the training
split. `interp.metrics.linear_probes` fits it at every checkpoint; a change here that changes
results bumps its `VERSION`, so cached results are not read back.

The controls that make a probe result trustworthy are on by default:

- **Grouped splits.** Examples are grouped by the unit a probe could memorise (the batch
  row by default; a person when decoding that person's attribute, a window of positions when
  decoding document identity, a class when decoding its label: each analysis states its
  choice), and a group is never on both sides of the test split nor of a cross-validation
  fold. An explicit split that puts a group on both sides is refused, as are too few groups.
- **The control task** (Hewitt & Liang 2019): each input type (by default the token at the
  probed position) is given a label drawn at random from the training labels' distribution;
  the same probe (same penalty) is fitted to it, and `selectivity = accuracy - control
  accuracy` (R² for values). A probe that passes by memorising types has low selectivity.

Every random draw (the split, the folds, the control labels) comes from `interp.seeding`
streams of the probe's `seed`, and depends on the examples' groups, labels and types alone,
never on the features: the same examples are held out at every checkpoint.

The direction of a fit is its coefficient matrix mapped back to the activation basis (`coef /
scale` of the standardisation): `[1, d]` for a binary classifier (towards the larger label) or
a regressor, `[n_classes, d]` for a multi-class one (one row per class, in sorted label order).

`k`-sparse binary probes use TransformerLens's `tools.analysis.sparse_probing` (which picks
`k` coordinates by their train-split class-mean difference, and holds out whole groups);
there the penalty is TransformerLens's fixed `l2_strength`, not cross-validated, and the
control fit makes its own grouped split (stratified on the control labels).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from threadpoolctl import threadpool_limits

from interp import seeding
from interp.configs import require
from interp.errors import InputError

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression, Ridge

Kind = Literal["auto", "classification", "regression"]

SPLIT, FOLDS, CONTROL = 0, 1, 2
"""A probe's draws from its `seed` (`interp.seeding`): `(seed, LINEAR_PROBES, SPLIT)` the test
split, `(seed, LINEAR_PROBES, FOLDS)` the cross-validation folds and `(seed, LINEAR_PROBES,
CONTROL)` the control task's labels."""

DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""Inverse penalties of logistic regression tried by cross-validation (standardised inputs)."""
DEFAULT_ALPHAS = (1e-1, 1.0, 10.0, 100.0, 1000.0)
"""Ridge penalties tried by cross-validation (standardised inputs)."""


# --- settings: how a probe is fitted -------------------------------------------------------------


@dataclass(frozen=True)
class FitSettings:
    """How a linear probe is fitted (see `fit_probe`).

    `control`: fit the control task too; `test_size`: the share of groups a random split holds
    out; `folds`: grouped cross-validation folds; `Cs` / `alphas`: the penalties tried for
    logistic / ridge regression; `k`: fit a k-sparse binary probe (TransformerLens's) with the
    fixed penalty `l2_strength` instead; `seed`: the split, folds and control labels;
    `max_iter`: of each logistic fit."""

    control: bool = True
    test_size: float = field(default=0.25, metadata={"key": "test"})
    folds: int = 3
    Cs: tuple[float, ...] = DEFAULT_CS
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    k: int | None = None
    l2_strength: float = field(default=1e-2, metadata={"key": "l2"})
    seed: int = 0
    max_iter: int = 200

    def __post_init__(self) -> None:
        require(self.k is None or isinstance(self.k, int) and not isinstance(self.k, bool) and self.k >= 1, "k",
                "a positive number of coordinates", self.k)
        require(isinstance(self.folds, int) and self.folds >= 2, "folds", "an integer >= 2", self.folds)
        object.__setattr__(self, "Cs", tuple(self.Cs))  # a list is accepted; the frozen settings hold a tuple
        object.__setattr__(self, "alphas", tuple(self.alphas))


# --- the grouped split -------------------------------------------------------------------------


def grouped_split(groups: Int[np.ndarray, " example"], *, test_size: float = 0.25, folds: int = 3, seed: int = 0,
                  test: Bool[np.ndarray, " example"] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(train, test)` example indices with no group on both sides.

    Without `test`, whole groups are held out at random (`GroupShuffleSplit`, about
    `test_size` of the groups). An explicit `test` mask that puts a group on both sides is
    refused (a probe could pass by memorising it), as is a split that leaves fewer than
    `folds` groups to cross-validate on or fewer than 2 groups to test on."""
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if test is None:
        if not 0 < test_size < 1:
            raise InputError(f"test_size: expected a fraction in (0, 1), got {test_size}")
        state = int(seeding.rng(seed, seeding.LINEAR_PROBES, SPLIT).integers(2**31))
        if n_groups < folds + 2:
            raise InputError(f"groups: {n_groups} distinct groups; a grouped split with {folds} cross-validation "
                             f"folds needs at least {folds + 2} (each group is held out whole)")
        from sklearn.model_selection import GroupShuffleSplit  # scikit-learn loads (seconds) only when a probe fits

        train, held = next(GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=state)
                           .split(groups, groups=groups))
    else:
        test = np.asarray(test, dtype=bool)
        if test.shape != groups.shape:
            raise InputError(f"split: test mask of shape {test.shape} does not match the {groups.shape} examples")
        train, held = np.flatnonzero(~test), np.flatnonzero(test)
        both = np.intersect1d(groups[train], groups[held])
        if len(both):
            raise InputError(f"split: groups {both[:5].tolist()}{' ...' if len(both) > 5 else ''} have examples in "
                             f"both train and test ({len(both)} groups); a probe could pass by memorising them")
    n_train, n_test = len(np.unique(groups[train])), len(np.unique(groups[held]))
    if n_train < folds or n_test < 2:
        raise InputError(f"groups: the split leaves {n_train} groups to train on and {n_test} to test on; need at "
                         f"least {folds} (the cross-validation folds) and 2")
    return np.sort(train), np.sort(held)


# --- one fit -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeFit:
    """One linear probe fitted at one checkpoint (or on any activations).

    `score` is the test accuracy (classification) or R² (regression); `control_score` the same
    probe's score on the control task; `chance` the test accuracy of always answering the most
    frequent training class (NaN for regression); `penalty` the chosen C (logistic), alpha
    (ridge) or TransformerLens's l2 strength (sparse). `direction` `[output, feature]` is in
    the activation basis (see the module's docstring)."""

    kind: Literal["classification", "regression"]
    score: float
    control_score: float
    chance: float
    train_score: float
    penalty: float
    direction: Float[np.ndarray, "output feature"]
    intercept: Float[np.ndarray, " output"]
    classes: np.ndarray
    train_index: Int[np.ndarray, " train"] = field(repr=False)
    test_index: Int[np.ndarray, " test"] = field(repr=False)
    k: int = 0

    @property
    def selectivity(self) -> float:
        return self.score - self.control_score

    @property
    def n_train(self) -> int:
        return len(self.train_index)

    @property
    def n_test(self) -> int:
        return len(self.test_index)

    def values(self) -> dict[str, float]:
        """The probe's columns: `accuracy, control_accuracy, selectivity, chance, train_accuracy,
        C, n_classes` (classification) or `r2, control_r2, selectivity, train_r2, alpha`
        (regression), with `n_train, n_test` (and `k`, `l2_strength` for a sparse probe)."""
        if self.kind == "regression":
            out = {"r2": self.score, "control_r2": self.control_score, "selectivity": self.selectivity,
                   "train_r2": self.train_score, "alpha": self.penalty}
        else:
            out = {"accuracy": self.score, "control_accuracy": self.control_score, "selectivity": self.selectivity,
                   "chance": self.chance, "train_accuracy": self.train_score, "n_classes": float(len(self.classes))}
            out["l2_strength" if self.k else "C"] = self.penalty
        out |= {"n_train": float(self.n_train), "n_test": float(self.n_test)}
        if self.k:
            out["k"] = float(self.k)
        return out


def resolve_kind(labels: np.ndarray, kind: Kind) -> Literal["classification", "regression"]:
    if kind == "auto":
        return "regression" if np.asarray(labels).dtype.kind == "f" else "classification"
    if kind not in ("classification", "regression"):
        raise InputError(f"kind: expected 'auto', 'classification' or 'regression', got {kind!r}")
    return kind


def control_labels(labels: np.ndarray, types: Int[np.ndarray, " example"], train: np.ndarray,
                   seed: int = 0) -> np.ndarray:
    """The control task (Hewitt & Liang 2019): every type gets one label drawn from the empirical
    distribution of the training labels, and each example the label of its type."""
    unique, inverse = np.unique(types, return_inverse=True)
    rng = seeding.rng(seed, seeding.LINEAR_PROBES, CONTROL)
    drawn = np.asarray(labels)[train][rng.integers(len(train), size=len(unique))]
    return drawn[inverse]


def _model(kind: str, penalty: float, max_iter: int, warm: bool = False) -> LogisticRegression | Ridge:
    from sklearn.linear_model import LogisticRegression, Ridge

    if kind == "regression":
        return Ridge(alpha=penalty)
    return LogisticRegression(C=penalty, max_iter=max_iter, warm_start=warm)


def _score(model: LogisticRegression | Ridge, features: np.ndarray, labels: np.ndarray) -> float:
    return float(model.score(features, labels))


def _validation_score(model: LogisticRegression | Ridge, features: np.ndarray, labels: np.ndarray) -> float:
    """What cross-validation maximises: R² for ridge, minus the log-loss for logistic regression
    (a proper score: accuracy is flat over a wide range of penalties and would pick a strongly
    shrunk, biased direction)."""
    from sklearn.linear_model import Ridge

    if isinstance(model, Ridge):
        return _score(model, features, labels)
    proba = model.predict_proba(features)
    column = np.searchsorted(model.classes_, labels)
    known = (column < len(model.classes_)) & (model.classes_[np.minimum(column, len(model.classes_) - 1)] == labels)
    picked = np.where(known, proba[np.arange(len(labels)), np.minimum(column, proba.shape[1] - 1)], 0.0)
    return float(np.mean(np.log(np.clip(picked, 1e-15, None))))


def _cross_validate(kind: str, features: np.ndarray, labels: np.ndarray, groups: np.ndarray, grid: Sequence[float],
                    settings: FitSettings) -> float:
    """The penalty of `grid` with the best mean validation score (`_validation_score`) over
    grouped folds of the training examples. Each fold standardises on its own training part.
    The grid is walked from the strongest penalty to the weakest, logistic fits warm-starting
    from the previous one, and the walk stops at the first penalty that scores below the best
    so far: the validation curve of a penalty is unimodal in practice, and the weak penalties
    past its peak are the slowest fits (on data with nothing to decode, all of them)."""
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    order = sorted(grid) if kind == "classification" else sorted(grid, reverse=True)  # strongest penalty first
    state = int(seeding.rng(settings.seed, seeding.LINEAR_PROBES, FOLDS).integers(2**31))
    parts = []
    for fit_rows, val_rows in GroupKFold(n_splits=settings.folds, shuffle=True, random_state=state).split(
            features, labels, groups):
        if kind == "classification" and len(np.unique(labels[fit_rows])) < 2:
            continue  # a fold with one class cannot rank the penalties
        scaler = StandardScaler().fit(features[fit_rows])
        parts.append((scaler.transform(features[fit_rows]), labels[fit_rows], scaler.transform(features[val_rows]),
                      labels[val_rows], _model(kind, order[0], settings.max_iter, warm=True)))
    if not parts:
        raise InputError("labels: every cross-validation fold's training part holds a single class")
    scores: list[float] = []
    for penalty in order:
        total = 0.0
        for fit_x, fit_y, val_x, val_y, model in parts:
            model.set_params(**({"alpha": penalty} if kind == "regression" else {"C": penalty}))
            total += _validation_score(model.fit(fit_x, fit_y), val_x, val_y)
        scores.append(total / len(parts))
        if scores[-1] < max(scores):
            break
    return float(order[int(np.argmax(scores))])


def fit_probe(features: Float[np.ndarray, "example feature"], labels: np.ndarray,
              groups: Int[np.ndarray, " example"] | None = None, *, kind: Kind = "auto",
              types: Int[np.ndarray, " example"] | None = None, test: Bool[np.ndarray, " example"] | None = None,
              settings: FitSettings = FitSettings()) -> ProbeFit:
    """Fit one linear probe with its controls (see the module's docstring), as `settings` say.

    `groups` (default: every example its own group) decides the grouped split and folds;
    `types` (default: every example its own type) the control task; `test` an explicit test
    mask. `settings.k` fits a k-sparse binary probe with TransformerLens's `fit_sparse_probe`
    instead. Deterministic: the same inputs and `settings.seed` give the same fit."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    n = len(labels)
    if features.ndim != 2 or features.shape[0] != n:
        raise InputError(f"features: expected [example, feature] with {n} examples, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise InputError("features: activations are not all finite")
    groups = np.arange(n) if groups is None else np.asarray(groups)
    types = np.arange(n) if types is None else np.asarray(types)
    if groups.shape != (n,) or types.shape != (n,):
        raise InputError(f"groups, types: expected one per example ({n}), got {groups.shape} and {types.shape}")
    kind_ = resolve_kind(labels, kind)
    if kind_ == "regression":
        labels = labels.astype(np.float64)
        if not np.isfinite(labels).all():
            raise InputError("labels: regression targets are not all finite")
    elif labels.dtype.kind not in "iub":
        raise InputError(f"labels: classification needs integer labels, got {labels.dtype} (kind='regression' for "
                         "real values)")
    if settings.k is not None:
        if test is not None:
            raise InputError("split: a sparse probe (k) makes its own grouped split; an explicit one is not supported")
        return _fit_sparse(features, labels, groups, types, kind_, settings)
    train, held = grouped_split(groups, test_size=settings.test_size, folds=settings.folds, seed=settings.seed,
                                test=test)
    if kind_ == "classification" and len(np.unique(labels[train])) < 2:
        raise InputError(f"labels: the training split holds one class ({labels[train][0]}); a classifier needs two")
    if kind_ == "regression" and np.ptp(labels[train]) == 0:
        raise InputError("labels: the training targets are constant; R² is undefined")
    grid = settings.alphas if kind_ == "regression" else settings.Cs
    if not grid or min(grid) <= 0:
        raise InputError(f"{'alphas' if kind_ == 'regression' else 'Cs'}: expected positive penalties, got {grid}")
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler

    with threadpool_limits(limits=1), warnings.catch_warnings():
        # One thread (BLAS and OpenMP): these are many small fits, where threads only contend
        # (up to 10x slower on a busy 2-core machine). Weak penalties may stop at max_iter on
        # separable data; the chosen penalty is what the validation score says.
        warnings.simplefilter("ignore", ConvergenceWarning)
        penalty = _cross_validate(kind_, features[train], labels[train], groups[train], grid, settings)
        scaler = StandardScaler().fit(features[train])
        train_x, test_x = scaler.transform(features[train]), scaler.transform(features[held])
        model = _model(kind_, penalty, settings.max_iter).fit(train_x, labels[train])
        score, train_score = _score(model, test_x, labels[held]), _score(model, train_x, labels[train])
        control_score = math.nan
        if settings.control:
            shuffled = control_labels(labels, types, train, settings.seed)
            if kind_ == "classification" and len(np.unique(shuffled[train])) < 2:
                control_score = float(np.mean(shuffled[held] == shuffled[train][0]))  # one class: constant answer
            elif kind_ == "regression" and np.ptp(shuffled[train]) == 0:
                control_score = _r2(np.full(len(held), shuffled[train][0]), shuffled[held])
            else:
                control_model = _model(kind_, penalty, settings.max_iter).fit(train_x, shuffled[train])
                control_score = _score(control_model, test_x, shuffled[held])
    coef = np.atleast_2d(model.coef_) / scaler.scale_[None, :]
    intercept = np.atleast_1d(model.intercept_) - coef @ scaler.mean_
    classes = getattr(model, "classes_", np.array([]))
    chance = _chance(labels, train, held) if kind_ == "classification" else math.nan
    return ProbeFit(kind_, score, control_score, chance, train_score, penalty, coef, intercept, classes, train, held)


def _r2(predicted: np.ndarray, target: np.ndarray) -> float:
    total = float(((target - target.mean()) ** 2).sum())
    return 1 - float(((target - predicted) ** 2).sum()) / total if total > 0 else math.nan


def _chance(labels: np.ndarray, train: np.ndarray, held: np.ndarray) -> float:
    values, counts = np.unique(labels[train], return_counts=True)
    return float(np.mean(labels[held] == values[np.argmax(counts)]))


def _fit_sparse(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, types: np.ndarray, kind: str,
                settings: FitSettings) -> ProbeFit:
    """A k-sparse binary probe: TransformerLens's `fit_sparse_probe` (train-split feature
    selection, standardisation and grouped split), for the labels and the control task."""
    from transformer_lens.tools.analysis.sparse_probing import fit_sparse_probe

    classes = np.unique(labels)
    if kind != "classification" or len(classes) != 2:
        raise InputError(f"k: a sparse probe needs binary class labels, got {kind} with {len(classes)} classes")
    x, g = torch.from_numpy(features), torch.from_numpy(groups.astype(np.int64))
    split_seed = int(seeding.rng(settings.seed, seeding.LINEAR_PROBES, SPLIT).integers(2**62))
    k = settings.k

    def fit(y: np.ndarray):
        return fit_sparse_probe(x, torch.from_numpy((y == classes[1]).astype(np.int64)), k=k, groups=g,
                                test_fraction=settings.test_size, preprocess="standardize",
                                l2_strength=settings.l2_strength, seed=split_seed, max_iter=settings.max_iter)

    result = fit(labels)
    train, held = result.train_indices.numpy(), result.test_indices.numpy()
    control_score = math.nan
    if settings.control:
        shuffled = control_labels(labels, types, train, settings.seed)
        try:
            control_score = fit(shuffled).metrics.accuracy if len(np.unique(shuffled)) == 2 else math.nan
        except ValueError:  # the control labels leave a class in fewer than two groups
            control_score = math.nan
    direction = np.zeros((1, features.shape[1]))
    selected = result.selected_features.numpy()
    direction[0, selected] = result.coefficients.numpy() / result.preprocess_scale.numpy()
    intercept = np.array([float(result.intercept) - direction[0, selected] @ result.preprocess_mean.numpy()])
    predicted = (features[train] @ direction[0] + intercept[0] > 0)
    train_score = float(np.mean(predicted == (labels[train] == classes[1])))
    return ProbeFit("classification", float(result.metrics.accuracy), float(control_score),
                    _chance(labels, train, held), train_score, settings.l2_strength, direction, intercept, classes,
                    train, held, k=k)


__all__ = ["CONTROL", "DEFAULT_ALPHAS", "DEFAULT_CS", "FOLDS", "SPLIT", "FitSettings", "Kind", "ProbeFit",
           "control_labels", "fit_probe", "grouped_split", "resolve_kind"]
