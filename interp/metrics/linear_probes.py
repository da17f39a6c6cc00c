"""Linear probes over training: what a layer's activations linearly encode, and when.

A linear probe reads a property out of one hook's activations at chosen positions and fits
it at every checkpoint (`interp.metrics.probe_fitting`: logistic or ridge regression with
grouped splits and the control task). `linear_probe(LinearProbeSettings(...))` returns an
`interp.probing.Probe`, so it rides the one runner (one forward per checkpoint shared with
every other probe asked for at the same time) and its cache (`probes/<key>.jsonl`):

    month = LinearProbeSettings(hook_name("resid_post", 1), positions="name_last", labels="birth_month",
                                groups="person", fit=FitSettings(seed=1))
    probes = {"month": linear_probe(month)}
    table = probe(run, probes, batch)          # batch: tokens + the three keys named above
    table["month/accuracy"], table["month/selectivity"]
    load_directions(run, "month", probes["month"], batch).drift(period=...)

Positions, labels, groups, an explicit test split and the control task's types are batch
keys, so the probe's cache key (its name, `LinearProbeSettings.name`, and a hash of the batch)
covers their contents. The fit's random draws depend on the batch alone, never on the
activations: the same examples are held out at every checkpoint, so the rows of a table
differ only by model.

**The step-0 baseline.** `probe()` visits every checkpoint, so the step-0 row (random
initialisation for a run trained from scratch; the parent's weights for a fine-tuning run)
is the baseline: what the architecture makes decodable before any learning.
`baseline_row` / `over_baseline` read it and refuse a table without it.

Directions. A fit's direction (`ProbeFit.direction`, in the activation basis) is saved per
checkpoint inside `probe()` as `probes/<key>/<id>/step_<N>.npy` (float32; `<id>` hashes the
probe's name and the batch), and `direction_drift` measures how it moves: the cosine between
consecutive checkpoints, to the final direction, and between the same phase of different
cycles of a periodic schedule. The cosine of two multi-class directions is the mean of their
per-class row cosines. A sign flip of the labels flips the direction; a rescaling of the
activations does not change a cosine.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from safetensors.torch import load_file
from torch import Tensor

from interp.checkpoints import CheckpointSource, open_checkpoints
from interp.errors import InputError, MissingFileError, UnknownNameError
from interp.files import atomic_write_json, atomic_write_npy, read_json, save_safetensors
from interp.hooks import hook_name
from interp.metrics.probe_fitting import FitSettings, Kind, ProbeFit, fit_probe
from interp.model import Batch
from interp.probe_cache import probe_artifacts
from interp.probe_table import ProbeTable
from interp.probing import Probe, ProbeContext
from interp.run_layout import PROBES_DIR

VERSION = 1
"""Part of every linear probe's name: a change of the fitting procedure (`interp.metrics.probe_fitting`)
invalidates cached results."""
META_FILE = "meta.json"


# --- settings: what a probe reads and how it is fitted -------------------------------------------


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
    run = open_checkpoints(run) if isinstance(run, str | Path) else run
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


__all__ = ["DirectionDrift", "LinearProbeSettings", "ProbeDirections", "ProbeExamples", "baseline_row",
           "direction_cosines", "direction_drift", "linear_probe", "load_batch", "load_directions", "over_baseline",
           "probe_examples", "save_batch", "save_direction", "select_positions"]
