"""Linear probes over training: what a layer's activations linearly encode, and when.

A linear probe reads a property out of one hook's activations at chosen positions with a
scikit-learn model: logistic regression for class labels, ridge regression for real values,
on standardised inputs, with the penalty chosen by grouped cross-validation on the training
split. `linear_probe(LinearProbeSettings(...))` returns an `interp.probing.Probe`, so it rides
the one runner (one forward per checkpoint shared with every other probe asked for at the same
time) and its cache (`probes/<key>.jsonl`):

    month = LinearProbeSettings(hook_name("resid_post", 1), positions="name_last", labels="birth_month",
                                groups="person", fit=FitSettings(seed=1))
    probes = {"month": linear_probe(month)}
    table = probe(run, probes, batch)          # batch: tokens + the three keys named above
    table["month/accuracy"], table["month/selectivity"]
    load_directions(run, "month", probes["month"], batch).drift(period=...)

Positions, labels, groups, an explicit test split and the control task's types are batch
keys, so the probe's cache key (its name, `LinearProbeSettings.name`, and a hash of the batch)
covers their contents.

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
- **The step-0 baseline.** `probe()` visits every checkpoint, so the step-0 row (random
  initialisation for a run trained from scratch; the parent's weights for a fine-tuning run)
  is the baseline: what the architecture makes decodable before any learning.
  `baseline_row` / `over_baseline` read it and refuse a table without it.

Every random draw (the split, the folds, the control labels) comes from `interp.seeding`
streams of the probe's `seed`, and depends on the batch alone, never on the activations: the
same examples are held out at every checkpoint, so the rows of a table differ only by model.

Directions. The direction of a fit is its coefficient matrix mapped back to the activation
basis (`coef / scale` of the standardisation): `[1, d]` for a binary classifier (towards the
larger label) or a regressor, `[n_classes, d]` for a multi-class one (one row per class, in
sorted label order). Inside `probe()` it is saved per checkpoint as
`probes/<key>/<id>/step_<N>.npy` (float32; `<id>` hashes the probe's name and the batch), and
`direction_drift` measures how it moves: the cosine between consecutive checkpoints, to the
final direction, and between the same phase of different cycles of a periodic schedule. The
cosine of two multi-class directions is the mean of their per-class row cosines. A sign flip
of the labels flips the direction; a rescaling of the activations does not change a cosine.

`k`-sparse binary probes use TransformerLens's `tools.analysis.sparse_probing` (which picks
`k` coordinates by their train-split class-mean difference, and holds out whole groups);
there the penalty is TransformerLens's fixed `l2_strength`, not cross-validated, and the
control fit makes its own grouped split (stratified on the control labels).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from safetensors.torch import load_file
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GroupKFold, GroupShuffleSplit
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import Tensor

from interp import seeding
from interp.checkpoints import CheckpointSource, Run
from interp.configs import require
from interp.errors import InputError, MissingFileError, UnknownNameError
from interp.files import atomic_write_json, atomic_write_npy, read_json, save_safetensors
from interp.hooks import hook_name
from interp.model import Batch
from interp.probing import Probe, ProbeContext, ProbeTable, probe_artifacts
from interp.run_layout import PROBES_DIR

Kind = Literal["auto", "classification", "regression"]

SPLIT, FOLDS, CONTROL = 0, 1, 2
"""A probe's draws from its `seed` (`interp.seeding`): `(seed, LINEAR_PROBES, SPLIT)` the test
split, `(seed, LINEAR_PROBES, FOLDS)` the cross-validation folds and `(seed, LINEAR_PROBES,
CONTROL)` the control task's labels."""

DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""Inverse penalties of logistic regression tried by cross-validation (standardised inputs)."""
DEFAULT_ALPHAS = (1e-1, 1.0, 10.0, 100.0, 1000.0)
"""Ridge penalties tried by cross-validation (standardised inputs)."""
VERSION = 1
"""Part of every linear probe's name: a change of the fitting procedure invalidates cached results."""
META_FILE = "meta.json"


# --- settings: what a probe reads and how it is fitted -------------------------------------------


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


@dataclass(frozen=True)
class LinearProbeSettings:
    """Everything that decides a linear probe's results: the `hook` it reads and the batch
    keys of its examples (see `probe_examples`), the labels' `kind`, and how it is `fit`.

    `positions`: the probed positions (bool mask `[batch, pos]` or an index per row);
    `labels` (integers: classes, logistic regression; floats: values, ridge; or `kind`);
    `groups`: the unit a probe could memorise (default: the batch row); `split`: an explicit
    bool test mask (default: a grouped random split); `control_types`: the control task's
    types (default: the token at the position)."""

    hook: str
    positions: str
    labels: str
    groups: str | None = None
    kind: Kind = "auto"
    split: str | None = None
    control_types: str | None = field(default=None, metadata={"key": "types"})
    fit: FitSettings = field(default_factory=FitSettings)

    @property
    def name(self) -> str:
        """The probe's name, which keys its cache: `linear(hook=...,positions=...,v=VERSION)`,
        every setting in field order (`fit`'s in its place) under its short key, as cache files
        have always spelled it."""
        settings = dict(_named_settings(self))
        settings["l2"] = self.fit.l2_strength if self.fit.k else None  # only a sparse probe reads it
        return "linear(" + ",".join(f"{key}={value}" for key, value in {**settings, "v": VERSION}.items()) + ")"


def _named_settings(settings: object) -> Iterator[tuple[str, object]]:
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            yield from _named_settings(value)
        else:
            yield f.metadata.get("key", f.name), list(value) if isinstance(value, tuple) else value


# --- examples: what a probe is fitted on -------------------------------------------------------


@dataclass(frozen=True)
class ProbeExamples:
    """One row per probed (sequence, position): the activations and what a probe needs."""

    features: Float[np.ndarray, "example feature"]
    labels: np.ndarray
    """Integer class labels or real values, `[example]`."""
    groups: Int[np.ndarray, " example"]
    """The unit a probe could memorise; a group is never on both sides of a split."""
    types: Int[np.ndarray, " example"]
    """The control task's input types (Hewitt & Liang): examples of a type share a control label."""
    test: Bool[np.ndarray, " example"] | None = None
    """An explicit test split (None: a grouped random split)."""


def _per_example(batch: Batch, key: str, rows: Tensor, cols: Tensor, field_name: str) -> Tensor:
    if key not in batch:
        raise UnknownNameError(f"{field_name}: batch has no key {key!r}; keys: {sorted(batch)}")
    value = batch[key]
    n_rows, n_pos = batch["tokens"].shape[:2]
    if value.shape == (n_rows,):
        return value[rows]
    if value.shape == (n_rows, n_pos):
        return value[rows, cols]
    raise InputError(f"{field_name}: batch[{key!r}] has shape {tuple(value.shape)}; expected [batch] = ({n_rows},) "
                     f"or [batch, pos] = ({n_rows}, {n_pos})")


def select_positions(batch: Batch, positions: str) -> tuple[Tensor, Tensor]:
    """`(rows, cols)` of the probed positions: `batch[positions]` is a bool mask `[batch, pos]`
    or one integer position per row `[batch]` (negative: from the end)."""
    if positions not in batch:
        raise UnknownNameError(f"positions: batch has no key {positions!r}; keys: {sorted(batch)}")
    where = batch[positions]
    n_rows, n_pos = batch["tokens"].shape[:2]
    if where.dtype == torch.bool and where.shape == (n_rows, n_pos):
        rows, cols = where.nonzero(as_tuple=True)
    elif not where.is_floating_point() and where.dtype != torch.bool and where.shape == (n_rows,):
        if bool(((where < -n_pos) | (where >= n_pos)).any()):
            raise InputError(f"positions: batch[{positions!r}] holds positions outside [-{n_pos}, {n_pos})")
        rows, cols = torch.arange(n_rows, device=where.device), where % n_pos
    else:
        raise InputError(f"positions: batch[{positions!r}] ({where.dtype}, shape {tuple(where.shape)}) is neither a "
                         f"bool mask [batch, pos] = ({n_rows}, {n_pos}) nor an integer position per row ({n_rows},)")
    if rows.numel() == 0:
        raise InputError(f"positions: batch[{positions!r}] selects no position")
    return rows, cols


def probe_examples(acts: Tensor, batch: Batch, positions: str, labels: str, groups: str | None = None,
                   split: str | None = None, control_types: str | None = None) -> ProbeExamples:
    """The examples a linear probe is fitted on: `acts` (one hook's activations, `[batch, pos,
    ...]`, trailing dimensions flattened) at the positions `batch[positions]` selects, with the
    labels, groups (default: the batch row), test split (bool, default: none) and control types
    (default: the token at the position) read from the batch, per row `[batch]` or per position
    `[batch, pos]`."""
    n_rows, n_pos = batch["tokens"].shape[:2]
    if acts.dim() < 3 or tuple(acts.shape[:2]) != (n_rows, n_pos):
        raise InputError(f"hook: activations of shape {tuple(acts.shape)} are not [batch, pos, ...] = "
                         f"({n_rows}, {n_pos}, ...) (attention patterns cannot be probed position-wise)")
    rows, cols = select_positions(batch, positions)
    features = acts[rows.to(acts.device), cols.to(acts.device)].reshape(len(rows), -1).float().cpu().numpy()
    label_values = _per_example(batch, labels, rows, cols, "labels").cpu().numpy()
    group_values = (rows if groups is None else _per_example(batch, groups, rows, cols, "groups")).cpu().numpy()
    if group_values.dtype.kind not in "iub":
        raise InputError(f"groups: batch[{groups!r}] must hold integer ids, got {group_values.dtype}")
    type_key = "tokens" if control_types is None else control_types
    types = _per_example(batch, type_key, rows, cols, "control_types").cpu().numpy()
    if types.dtype.kind not in "iub":
        raise InputError(f"control_types: batch[{type_key!r}] must hold integer ids, got {types.dtype}")
    test = None
    if split is not None:
        test = _per_example(batch, split, rows, cols, "split").cpu().numpy()
        if test.dtype != np.bool_:
            raise InputError(f"split: batch[{split!r}] must be a bool test mask, got {test.dtype}")
    return ProbeExamples(features, label_values, group_values.astype(np.int64), types.astype(np.int64), test)


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
    if kind == "regression":
        return Ridge(alpha=penalty)
    return LogisticRegression(C=penalty, max_iter=max_iter, warm_start=warm)


def _score(model: LogisticRegression | Ridge, features: np.ndarray, labels: np.ndarray) -> float:
    return float(model.score(features, labels))


def _validation_score(model: LogisticRegression | Ridge, features: np.ndarray, labels: np.ndarray) -> float:
    """What cross-validation maximises: R² for ridge, minus the log-loss for logistic regression
    (a proper score: accuracy is flat over a wide range of penalties and would pick a strongly
    shrunk, biased direction)."""
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


# --- the probe -----------------------------------------------------------------------------------


def linear_probe(settings: LinearProbeSettings, *, save_directions: bool = True) -> Probe:
    """A linear probe as an `interp.probing.Probe`, for `probe(run, {key: ...}, batch)`: at each
    checkpoint, the examples `settings` select from the batch (`probe_examples`) fitted as
    `settings.fit` says (`fit_probe`). Columns: `ProbeFit.values`. Inside `probe()` the
    direction is saved at every checkpoint (`load_directions`) unless `save_directions` is False."""
    name, hook = settings.name, settings.hook

    def fn(ctx: ProbeContext) -> Mapping[str, float]:
        if ctx.batch is None:
            raise InputError("batch: a linear probe needs a batch with its positions and labels")
        fields = (f"linear probe of {hook} (positions={settings.positions!r}, labels={settings.labels!r}, "
                  f"groups={settings.groups!r})")
        if hook not in ctx.acts:
            raise UnknownNameError(f"hook: {hook!r} is not a hook point of this model "
                                   f"(e.g. {hook_name('resid_post', 0)})")
        try:
            examples = probe_examples(ctx.acts[hook], ctx.batch, settings.positions, settings.labels, settings.groups,
                                      settings.split, settings.control_types)
            fit = fit_probe(examples.features, examples.labels, examples.groups, kind=settings.kind,
                            types=examples.types, test=examples.test, settings=settings.fit)
        except ValueError as err:
            raise InputError(f"{fields}: {err}") from None
        if save_directions and ctx.artifacts is not None and ctx.step is not None:
            save_direction(ctx.artifacts, ctx.step, fit, {"probe": name, "hook": hook})
        return fit.values()

    return Probe(name, (hook,), fn)


# --- directions --------------------------------------------------------------------------------


def direction_file(directory: Path, step: int) -> Path:
    return directory / f"step_{step:06d}.npy"


def save_direction(directory: Path, step: int, fit: ProbeFit, meta: Mapping[str, object]) -> None:
    """Write `fit.direction` (float32) for `step` into `directory`, atomically (call it under the
    run's lock: `probe()` holds it while computing), with a `meta.json` describing the probe."""
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / META_FILE).exists():
        atomic_write_json(directory / META_FILE, {**meta, "kind": fit.kind, "classes": fit.classes.tolist(),
                                                  "shape": list(fit.direction.shape)})
    atomic_write_npy(direction_file(directory, step), fit.direction.astype(np.float32))


@dataclass(frozen=True)
class ProbeDirections:
    """A probe's directions over checkpoints: `directions[i]` `[output, feature]` at `steps[i]`."""

    steps: Int[np.ndarray, " step"]
    directions: Float[np.ndarray, "step output feature"]
    meta: Mapping[str, object] = field(default_factory=dict)

    def drift(self, period: int | None = None, offset: int = 0) -> DirectionDrift:
        return direction_drift(self.directions, self.steps, period=period, offset=offset)


def load_directions(run: CheckpointSource | str | Path, key: str, probe_obj: Probe | None = None,
                    batch: Batch | None = None, steps: Sequence[int] | None = None,
                    device: str | torch.device | None = None) -> ProbeDirections:
    """The directions linear probe `key` saved in `run` (every saved step, or `steps`): a run,
    a run directory or any other checkpoint source `probe()` takes (e.g. a checkpoint suite).

    With the probe and its batch, exactly their directions (those computed on `device`'s
    class, default as `probe()` chooses); without, the only directions
    saved under `key` (several: an error listing them). A step whose result was cached before
    its direction was saved (or whose file was removed) is an error naming the file: probe
    again with `use_cache=False`."""
    run = Run.open(run) if isinstance(run, str | Path) else run
    if probe_obj is not None:
        directory = probe_artifacts(run, key, probe_obj, batch, device)
    else:
        found = sorted(p for p in (run.path / PROBES_DIR / key).glob("*") if (p / META_FILE).exists())
        if len(found) != 1:
            listed = "; ".join(f"{p.name}: {read_json(p / META_FILE).get('probe')}" for p in found) or "none"
            raise InputError(f"key: {len(found)} saved direction sets under {run.path / PROBES_DIR / key} ({listed}); "
                             "pass the probe and its batch to choose")
        directory = found[0]
    if steps is None:
        saved = sorted(int(p.stem[len("step_"):]) for p in directory.glob("step_*.npy"))
        if not saved:
            raise MissingFileError(f"{directory}: no saved directions (probe the run with this probe first)")
        steps = saved
    missing = [direction_file(directory, s) for s in steps if not direction_file(directory, s).exists()]
    if missing:
        raise MissingFileError(f"{missing[0]} is missing ({len(missing)} steps): its result was cached without it; "
                                "probe again with use_cache=False")
    stacked = np.stack([np.load(direction_file(directory, s), allow_pickle=False) for s in steps])
    meta = read_json(directory / META_FILE) if (directory / META_FILE).exists() else {}
    return ProbeDirections(np.asarray(steps), stacked, meta)


@dataclass(frozen=True)
class DirectionDrift:
    """How a probe's direction moves over checkpoints (cosines; see `direction_drift`)."""

    steps: Int[np.ndarray, " step"]
    cosine: Float[np.ndarray, "step step"]
    """Pairwise cosine of the directions (multi-class: mean of the per-class row cosines)."""
    consecutive: Float[np.ndarray, " pair"]
    """`cosine[i, i + 1]`: from each checkpoint to the next."""
    to_final: Float[np.ndarray, " step"]
    """`cosine[i, -1]`: each checkpoint's direction against the last one."""
    period: int | None = None
    offset: int = 0
    same_phase: Float[np.ndarray, " lag"] = field(default_factory=lambda: np.zeros(0))
    """Mean cosine of checkpoints at the same phase of cycles `lag` = 1, 2, ... apart."""
    other_phase: Float[np.ndarray, " lag"] = field(default_factory=lambda: np.zeros(0))
    """The same for checkpoints at different phases, `lag` cycles apart: the reference."""
    same_phase_pairs: Float[np.ndarray, "pair 3"] = field(default_factory=lambda: np.zeros((0, 3)))
    """`(step_a, step_b, cosine)` of every same-phase pair in different cycles."""


def direction_cosines(directions: Float[np.ndarray, "step output feature"]) -> Float[np.ndarray, "step step"]:
    """Pairwise cosine of directions `[step, output, feature]` (or `[step, feature]`): the mean
    over outputs (classes) of the row cosines; a zero row gives NaN."""
    d = np.asarray(directions, dtype=np.float64)
    if d.ndim == 2:
        d = d[:, None, :]
    if d.ndim != 3:
        raise InputError(f"directions: expected [step, output, feature], got shape {d.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = d / np.linalg.norm(d, axis=-1, keepdims=True)
    return np.einsum("iof,jof->ij", unit, unit) / d.shape[1]


def direction_drift(directions: Float[np.ndarray, "step output feature"], steps: Sequence[int] | None = None,
                    period: int | None = None, offset: int = 0) -> DirectionDrift:
    """Cosines of probe directions across checkpoints: consecutive, to the final direction and,
    with a `period` (steps per cycle, e.g. one epoch of a cyclic schedule that starts at step
    `offset`), between the same phase `(step - offset) % period` of different cycles, by how
    many cycles apart they are, with different-phase pairs as the reference."""
    cos = direction_cosines(directions)
    n = len(cos)
    steps_ = np.arange(n) if steps is None else np.asarray(steps)
    if steps_.shape != (n,) or (n > 1 and np.any(np.diff(steps_) <= 0)):
        raise InputError(f"steps: expected {n} increasing steps, got {steps_.tolist()}")
    out = DirectionDrift(steps_, cos, np.diagonal(cos, 1).copy(), cos[:, -1].copy(), period, offset)
    if period is None:
        return out
    if period < 1:
        raise InputError(f"period: expected a positive number of steps, got {period}")
    inside = np.flatnonzero(steps_ >= offset)
    phase, cycle = (steps_ - offset) % period, (steps_ - offset) // period
    lags = int(cycle[inside].max() - cycle[inside].min()) if len(inside) else 0
    same, other = [[] for _ in range(lags)], [[] for _ in range(lags)]
    pairs = []
    for a_i, a in enumerate(inside):
        for b in inside[a_i + 1 :]:
            lag = int(cycle[b] - cycle[a])
            if lag < 1:
                continue
            (same if phase[a] == phase[b] else other)[lag - 1].append(cos[a, b])
            if phase[a] == phase[b]:
                pairs.append((steps_[a], steps_[b], cos[a, b]))
    mean = [float(np.mean(v)) if v else math.nan for v in same]
    reference = [float(np.mean(v)) if v else math.nan for v in other]
    return DirectionDrift(steps_, cos, out.consecutive, out.to_final, period, offset, np.array(mean),
                          np.array(reference), np.array(pairs, dtype=float).reshape(-1, 3))


# --- the step-0 baseline and batch files ---------------------------------------------------------


def baseline_row(table: ProbeTable, key: str) -> dict[str, float]:
    """Probe `key`'s values at step 0, the baseline (random initialisation for a run trained
    from scratch); a table without a step-0 row is refused."""
    if 0 not in table.steps.tolist():
        raise InputError(f"steps: the table has no step-0 row, the baseline of probe {key!r}; probe with steps "
                         "that include 0")
    sub = table.select(key)
    return dict(zip(sub.columns, sub.values[table.steps.tolist().index(0)].tolist(), strict=True))


def over_baseline(table: ProbeTable, key: str, column: str = "accuracy") -> Float[np.ndarray, " step"]:
    """`table[key/column]` minus its step-0 (baseline) value, at every step."""
    return table[f"{key}/{column}"] - baseline_row(table, key)[column]


def save_batch(batch: Batch, path: str | Path) -> None:
    """Write a probe batch (tokens and the keys a probe reads) as a safetensors file, e.g. for
    `interp probe RUN linear --batch FILE`."""
    save_safetensors({k: v.detach().cpu().contiguous() for k, v in batch.items()}, Path(path))


def load_batch(path: str | Path, d_vocab: int | None = None, n_ctx: int | None = None) -> Batch:
    """A batch written by `save_batch` (safetensors: never a pickle), checked: `tokens` holds
    int64 or int32 ids `[batch, pos]`, at least one of each, in `[0, d_vocab)` and at most `n_ctx`
    positions (where given: the model's sizes). Any problem is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no batch file there (expected a safetensors file written by save_batch)")
    try:
        batch = load_file(path)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError, or OSError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path} is not a safetensors file ({reason}); write batches with "
                         "interp.metrics.linear_probes.save_batch (a pickle such as a .pt file is never loaded)"
                         ) from None
    if "tokens" not in batch:
        raise InputError(f"{path} holds no 'tokens' (keys: {sorted(batch)})")
    tokens = batch["tokens"]
    if tokens.dtype not in (torch.int64, torch.int32) or tokens.dim() != 2:
        raise InputError(f"{path}: 'tokens' must hold int64 (or int32) token ids of shape [batch, pos], got "
                         f"{tokens.dtype} of shape {tuple(tokens.shape)}")
    if tokens.numel() == 0:
        raise InputError(f"{path}: 'tokens' is empty (shape {tuple(tokens.shape)}); a batch needs at least one "
                         "row and one position")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or (d_vocab is not None and high >= d_vocab):
        vocab = f"the model's vocabulary [0, d_vocab={d_vocab})" if d_vocab is not None else "[0, d_vocab)"
        raise InputError(f"{path}: 'tokens' holds ids in [{low}, {high}], outside {vocab}")
    if n_ctx is not None and tokens.shape[1] > n_ctx:
        raise InputError(f"{path}: 'tokens' has {tokens.shape[1]} positions, more than the model's context "
                         f"n_ctx={n_ctx}")
    return batch


__all__ = ["DEFAULT_ALPHAS", "DEFAULT_CS", "DirectionDrift", "FitSettings", "LinearProbeSettings", "ProbeDirections",
           "ProbeExamples", "ProbeFit", "baseline_row", "control_labels", "direction_cosines", "direction_drift",
           "fit_probe", "grouped_split", "linear_probe", "load_batch", "load_directions", "over_baseline",
           "probe_examples", "save_batch", "save_direction", "select_positions"]
