"""Run probes over the checkpoints of a run, or of any `CheckpointSource` such as a
checkpoint suite (`interp.suites`): one forward pass per checkpoint.

A `Probe` declares the hook names it reads and maps a `ProbeContext` (the
cached activations, the logits, the batch and the model) to a flat dict of named
numbers. `probe()` takes the union of the hooks of every probe still to be
computed at a checkpoint, runs `run_with_cache(names_filter=...)` once, and
hands the same activations to each probe; a probe that runs forward passes of its
own (patching, readouts) or reads only the weights says so (`Probe.reads`), and a
checkpoint whose probes all do gets no shared forward. Results are cached per checkpoint in
`probes/<key>.jsonl`, keyed by the probe's name, the batch contents and the
checkpoint's hash, so re-probing a finished run costs nothing. A probe's key is
the cache file's stem, so it must be a plain file name. A run this process cannot write
keeps its cache in a folder outside it (`interp.cache_dirs`), which readers look in after the
run's own. Writing the cache takes that folder's lock, waiting briefly for another holder
(`interp.locking.brief_wait`); a fully cached call writes nothing, and a call on a run another
process still writes after the wait computes without caching (with a warning naming the
holder) rather than failing.
The cache is strict JSON: a NaN or infinite probe value is stored as null and
read back as NaN. The batch may be text where the source has a tokenizer (`text_batch`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from interp.cache_dirs import cache_dirs, lock_cache_dir
from interp.checkpoints import CheckpointSource, open_checkpoints
from interp.devices import resolve_device
from interp.errors import InputError, UnknownNameError
from interp.files import JsonlScan, append_jsonl, atomic_write_bytes, dumps_json, scan_jsonl
from interp.ids import HeadId, Identity
from interp.locking import RunInUseError
from interp.memory import check_forward_memory, forward_chunk_rows
from interp.model import Batch, ModelConfig, batch_rows, batch_to, input_hooks
from interp.run_layout import PROBES_DIR

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge


@dataclass(frozen=True)
class ProbeContext:
    """What a probe reads at one checkpoint. Without the shared forward pass (no probe asked
    for reads `"activations"`) `acts` is empty and `logits` is None."""

    acts: Mapping[str, Tensor]
    logits: Tensor | None
    batch: Batch | None
    model: TransformerBridge
    step: int | None = None
    """The checkpoint's step (None outside `probe()`)."""
    artifacts: Path | None = None
    """A directory of the run's cache (`probe_artifacts`, not yet created) where this probe may
    save files of its own, e.g. `step_000123.npy`; `probe()` holds the cache's lock while the
    probe runs. None outside `probe()` or where the results are not cached: nothing to save."""


ProbeReads = Literal["activations", "batch", "weights"]


@dataclass(frozen=True)
class MeanOver:
    """How a probe's values on a batch combine from its values on chunks of the batch's rows:
    every value the probe returns is a mean over `unit`s of the batch (its rows, or the positions
    a mask selects) of a quantity each row computes alone, and `count(chunk)` is how many of them
    a chunk holds. The batch's value is then the count-weighted mean of its chunks' values: the
    whole batch's value up to float rounding. A chunk that holds none is skipped."""

    unit: str
    count: Callable[[Batch], int]


ROWS = MeanOver("rows", lambda batch: len(batch["tokens"]))
"""A mean over the batch's rows, each with the same number of terms (e.g. the induction score)."""


def mean_over_positions(unit: str, mask: Callable[[Batch], Tensor]) -> MeanOver:
    """A mean over the positions `mask(batch)` (a bool `[batch, pos]` tensor) selects."""
    return MeanOver(unit, lambda batch: int(mask(batch).sum()))


@dataclass(frozen=True)
class Probe:
    """`name` identifies the probe and its parameters (it keys the cache);
    `hooks` are the activation names `fn` reads from `ctx.acts`. `reads` is what `fn` needs:
    `"activations"`, the runner's one shared forward pass on the batch (`ctx.acts`,
    `ctx.logits`); `"batch"`, the batch and `ctx.model`, for a probe that runs its own forward
    passes (patching, readouts: the shared one would be wasted on it); `"weights"`, `ctx.model`
    alone (neither a batch nor a forward pass). `memory(model config, batch size, positions)`:
    the bytes `fn` allocates beyond one forward pass on the batch (a circuit method's extra
    passes, gradients or second model), which `probe()` checks before loading (None: nothing
    beyond it). `mean_over`: how its values combine over chunks of rows (`MeanOver`), so a batch
    too large for memory runs in chunks; None for a probe whose values are not such a mean (a
    fitted linear probe, a mean ablation's batch mean, SGLD), which runs on the whole batch."""

    name: str
    hooks: tuple[str, ...]
    fn: Callable[[ProbeContext], Mapping[str, float]]
    reads: ProbeReads = "activations"
    memory: Callable[[ModelConfig, int, int], int] | None = None
    mean_over: MeanOver | None = None


Column = str | Identity
"""A column of a `ProbeTable`: its name, or the identity (a head, an edge, ...) it is named by."""


@dataclass(frozen=True)
class ProbeTable:
    """Probe results: one row per step, one column per `"<key>/<metric>"`. A column is read
    by its name or, where a probe names it by an identity, by that identity:
    `table.select("head_patch")[HeadId(0, 1)]` reads `"head_patch/L0H1"`."""

    steps: np.ndarray
    columns: tuple[str, ...]
    values: np.ndarray

    def __getitem__(self, column: Column) -> np.ndarray:
        name = str(column)  # an identity's column is named by its text form
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; columns: {list(self.columns)}")
        return self.values[:, self.columns.index(name)]

    def __contains__(self, column: object) -> bool:
        return isinstance(column, Column) and str(column) in self.columns

    def select(self, prefix: str) -> ProbeTable:
        """Columns under `prefix/`, with the prefix stripped."""
        keep = [i for i, c in enumerate(self.columns) if c.startswith(prefix + "/")]
        if not keep:
            raise KeyError(f"no column under {prefix!r}; columns: {list(self.columns)}")
        names = tuple(self.columns[i][len(prefix) + 1 :] for i in keep)
        return ProbeTable(self.steps, names, self.values[:, keep])

    def head_grid(self, prefix: str | None, n_layers: int, n_heads: int) -> np.ndarray:
        """`[step, layer, head]` array of an `"L{l}H{h}"`-keyed probe under `prefix/` (None: the
        columns are head names already), NaN where absent. Columns under `prefix/` named by other
        components (`MLP0`, `embed`: a refined LLC probe's) are not heads and are left out."""
        grid = np.full((len(self.steps), n_layers, n_heads), np.nan)
        sub = self if prefix is None else self.select(prefix)
        for name, column in zip(sub.columns, sub.values.T, strict=True):
            if not HeadId.is_head(name):
                continue
            head = HeadId.parse(name)
            grid[:, head.layer, head.head] = column
        return grid

    def to_rows(self) -> list[dict[str, float]]:
        return [
            {"step": int(step), **dict(zip(self.columns, row, strict=True))}
            for step, row in zip(self.steps, self.values, strict=True)
        ]

    def to_csv(self, path: str | Path) -> None:
        header = "step," + ",".join(self.columns)
        np.savetxt(path, np.column_stack([self.steps, self.values]), delimiter=",", header=header, comments="")


LOG = logging.getLogger(__name__)

NO_BATCH = "no-batch"
"""The batch id of probes that read only the weights."""


def batch_hash(batch: Batch | None) -> str:
    if batch is None:
        return NO_BATCH
    digest = hashlib.sha256()
    for key in sorted(batch):
        tensor = batch[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


_SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*")


def check_probe_keys(probes: Mapping[str, Probe]) -> None:
    """Refuse keys that are not plain file names: a key names its cache file
    `probes/<key>.jsonl`, so `"../x"` would write outside the run's `probes/`."""
    for key in probes:
        if not isinstance(key, str) or not _SAFE_KEY.fullmatch(key) or key.endswith(".jsonl"):
            raise InputError(f"probes: key {key!r} is not a plain name (letters, digits and _ . + = -, not starting "
                             "with . or -); it names the cache file probes/<key>.jsonl")


def numerics(source: CheckpointSource, device: torch.device) -> str:
    """What besides the weights and the batch changes a probe's numbers: the dtype the
    checkpoints load in and the device class (CPU and CUDA kernels round differently),
    e.g. `"float32/cpu"`."""
    return f"{str(source.dtype).removeprefix('torch.')}/{device.type}"


CacheKey = tuple[str, str, str, str, int]
"""(probe name, batch hash, checkpoint hash, numerics, step)."""


def _stored(values: Mapping[str, float]) -> dict[str, float | None]:
    """Values as the cache stores them: strict JSON, so an undefined (non-finite) value is null."""
    return {name: v if math.isfinite(v) else None for name, v in values.items()}


def _loaded(values: Mapping[str, float | None]) -> dict[str, float]:
    return {name: math.nan if v is None else float(v) for name, v in values.items()}


def row_digest(row: Mapping[str, object]) -> str:
    """The sha256 of a cache row's contents (every field but the digest), canonical JSON."""
    body = {k: v for k, v in row.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()


@dataclass(frozen=True)
class CacheRows:
    """The rows of one probe cache file, sorted by what can be trusted."""

    results: dict[CacheKey, dict[str, float]]
    """Verified results: the row's digest matches its contents."""
    order: dict[CacheKey, int]
    """Each result's (and legacy row's) row index: which computation was written last."""
    tampered: list[int]
    """0-based indices of rows whose digest does not match: edited since they were written."""
    legacy: dict[CacheKey, dict[str, float]]
    """Rows written before rows had a digest and numerics (numerics `"unrecorded"`): shown by
    readers of the cache, never returned for a computation."""


UNRECORDED = "unrecorded"


def _row_key(row: Mapping[str, object], numerics_of_row: str) -> CacheKey:
    key = (row["probe"], row["batch"], row["weights"], numerics_of_row, row["step"])
    if not all(isinstance(part, str) for part in key[:4]) or not isinstance(key[4], int):
        raise TypeError("not a cache key")
    return key  # type: ignore[return-value]


def cache_rows(scan: JsonlScan) -> CacheRows:
    """The results in a scanned cache file; rows that are not results are skipped (a cache can
    always be recomputed, so damage costs a recomputation, never an error)."""
    out = CacheRows({}, {}, [], {})
    for index, row in enumerate(scan.rows):
        try:
            if "digest" not in row and "numerics" not in row:
                legacy = _row_key(row, UNRECORDED)
                out.legacy[legacy], out.order[legacy] = _loaded(row["values"]), index
                continue
            key = _row_key(row, row["numerics"])
            values = _loaded(row["values"])
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        if row.get("digest") != row_digest(row):
            out.tampered.append(index)
            continue
        out.results[key] = values
        out.order[key] = index
    return out


def _repair_cache(path: Path, scan: JsonlScan) -> None:
    """Make a cache file appendable and trustworthy again (under the run's lock): a torn last
    line would glue the next record onto it, a bad line would be read past forever, and an
    edited row would warn on every read; all three are dropped."""
    tampered = set(cache_rows(scan).tampered)
    if scan.torn_line is None and not scan.bad_lines and not tampered:
        return
    for index in sorted(tampered):  # its result is missing from the cache now, so it is recomputed
        LOG.warning("%s: row %d was edited after it was written (its digest does not match); recomputing it",
                    path, index + 1)
    data = "".join(dumps_json(row, path) + "\n" for i, row in enumerate(scan.rows) if i not in tampered)
    atomic_write_bytes(path, data.encode())


def run_probes(model: TransformerBridge, probes: Mapping[str, Probe], batch: Batch | None, step: int | None = None,
               artifacts: Mapping[str, Path] | None = None, chunk_rows: int | None = None) -> dict[str, float]:
    """Evaluate probes on one model with a single cached forward pass (none when no probe
    reads its activations). `step` and `artifacts` (per key) fill the context's fields.
    `chunk_rows` (`probe_chunk_rows`): the probes with a `Probe.mean_over` run on chunks of
    that many rows, one shared forward per chunk, without artifacts; the others on the whole batch."""
    _check_batch(probes, batch)
    n_rows = 0 if batch is None else len(batch["tokens"])
    if batch is None or chunk_rows is None or chunk_rows >= n_rows:
        return _run_together(model, probes, batch, step, artifacts)
    chunked = {key: p for key, p in probes.items() if p.mean_over is not None and p.reads != "weights"}
    whole = {key: p for key, p in probes.items() if key not in chunked}
    values = _run_together(model, whole, batch, step, artifacts) if whole else {}
    return {**values, **_run_chunked(model, chunked, batch, step, chunk_rows)}


def _run_together(model: TransformerBridge, probes: Mapping[str, Probe], batch: Batch | None, step: int | None,
                  artifacts: Mapping[str, Path] | None) -> dict[str, float]:
    """`probes` on `batch` at once, with one shared forward pass where any reads its activations."""
    if batch is None or not any(p.reads == "activations" for p in probes.values()):
        # Without gradients, as beside the shared forward (a probe that needs them enables them).
        with torch.no_grad():
            return _flatten(probes, ProbeContext(acts={}, logits=None, batch=batch, model=model, step=step), artifacts)
    hooks = sorted({h for p in probes.values() for h in p.hooks})
    with torch.no_grad(), model.hooks(fwd_hooks=input_hooks(model, batch)):
        logits, cache = model.run_with_cache(batch["tokens"], names_filter=hooks)
        return _flatten(probes, ProbeContext(acts=cache, logits=logits, batch=batch, model=model, step=step), artifacts)


def _run_chunked(model: TransformerBridge, probes: Mapping[str, Probe], batch: Batch, step: int | None,
                 chunk_rows: int) -> dict[str, float]:
    """`probes` (each with a `mean_over`) on `batch`, `chunk_rows` rows at a time: each value the
    count-weighted mean of its chunks' values (`MeanOver`). A probe no chunk holds a unit of runs
    on the whole batch, where it gives what it gives there (usually its own error)."""
    sums: dict[str, dict[str, float]] = {}
    counts = dict.fromkeys(probes, 0)
    n_rows = len(batch["tokens"])
    for start in range(0, n_rows, chunk_rows):
        chunk = batch_rows(batch, start, start + chunk_rows)
        weights = {key: p.mean_over.count(chunk) for key, p in probes.items() if p.mean_over is not None}
        present = {key: p for key, p in probes.items() if weights[key] > 0}
        if not present:
            continue
        values = _run_together(model, present, chunk, step, None)
        for key in present:
            own = {name[len(key) + 1:]: v for name, v in values.items() if name.startswith(key + "/")}
            if key in sums and sums[key].keys() != own.keys():
                raise ValueError(f"probe {key!r} returned other metrics on rows {start}.. than on earlier rows; "
                                 "a probe whose metrics depend on the rows cannot be chunked (mean_over=None)")
            total = sums.setdefault(key, dict.fromkeys(own, 0.0))
            for name, value in own.items():
                total[name] += weights[key] * value
            counts[key] += weights[key]
    out = {f"{key}/{name}": total / counts[key] for key, by_name in sums.items() for name, total in by_name.items()}
    unseen = {key: p for key, p in probes.items() if not counts[key]}
    return {**out, **(_run_together(model, unseen, batch, step, None) if unseen else {})}


def _flatten(probes: Mapping[str, Probe], ctx: ProbeContext,
             artifacts: Mapping[str, Path] | None = None) -> dict[str, float]:
    own = {key: ctx if artifacts is None else replace(ctx, artifacts=artifacts.get(key)) for key in probes}
    return {f"{key}/{name}": float(v) for key, p in probes.items() for name, v in p.fn(own[key]).items()}


def probe_artifacts(run: CheckpointSource, key: str, probe_obj: Probe, batch: Batch | None,
                    device: str | torch.device | None = None, cache_dir: Path | None = None) -> Path:
    """The directory where probe `key` saves files of its own (`ProbeContext.artifacts`):
    `probes/<key>/<id>/` in `cache_dir` (default: the first of the run's cache folders,
    `interp.cache_dirs`, that holds it, else the run), `<id>` a hash of the probe's name, the
    batch and the numerics the probe runs in on `device` (default: as `probe()` chooses)."""
    return _artifacts_folder(run, key, probe_obj.name, batch_hash(batch), numerics(run, resolve_device(device)),
                             cache_dir)


def _artifacts_folder(run: CheckpointSource, key: str, probe_name: str, batch_id: str, run_numerics: str,
                      cache_dir: Path | None) -> Path:
    ident = f"{probe_name}\0{batch_id}\0{run_numerics}"
    inside = Path(PROBES_DIR, key, hashlib.sha256(ident.encode()).hexdigest()[:16])
    if cache_dir is None:
        cache_dir = next((d for d in cache_dirs(run.path) if (d / inside).is_dir()), run.path)
    return cache_dir / inside


def probe_cache_files(run: CheckpointSource) -> list[Path]:
    """Every probe cache file of `run`, `probes/<key>.jsonl`: the run's own, then those in the
    cache folder outside it (`interp.cache_dirs`)."""
    return [path for directory in cache_dirs(run.path) for path in sorted((directory / PROBES_DIR).glob("*.jsonl"))]


Text = str | Sequence[str]
"""A probe batch as text: one string, or several that tokenize to the same length."""


def _is_text(batch: object) -> bool:
    return isinstance(batch, str) or (isinstance(batch, Sequence) and all(isinstance(t, str) for t in batch))


def text_batch(source: CheckpointSource, text: Text) -> Batch:
    """`{"tokens": [n_texts, pos]}`: `text` tokenized by `source`'s tokenizer as it does by
    default (a BOS token only where the tokenizer adds one). Texts are not padded, since padding
    would enter every probe's statistics: they must tokenize to one length."""
    tokenizer = source.tokenizer
    if tokenizer is None:
        raise InputError(f"batch: text needs a tokenizer, and {source!r} has none; give token ids "
                         "({'tokens': tensor})")
    texts = [text] if isinstance(text, str) else list(text)
    ids = [list(tokenizer(t)["input_ids"]) for t in texts]
    lengths = sorted({len(i) for i in ids})
    if not ids or lengths[0] == 0:
        raise InputError(f"batch: expected text that tokenizes to at least one token, got {text!r}")
    if len(lengths) > 1:
        raise InputError(f"batch: the texts tokenize to {lengths} tokens; give texts of one token length "
                         "(probe batches are not padded)")
    return {"tokens": torch.tensor(ids, dtype=torch.long)}


def check_batch_fits(source: CheckpointSource, batch: Batch | None) -> None:
    """Refuse, in one line, token ids the model cannot read: sequences longer than its
    context or ids outside its vocabulary (which would fail deep inside the forward pass)."""
    if batch is None:
        return
    shape = source.model_config
    for key, tensor in batch.items():
        if not key.endswith("tokens"):
            continue
        if tensor.is_floating_point() or tensor.dim() != 2:
            raise InputError(f"batch[{key!r}]: expected integer token ids of shape [batch, pos], got "
                             f"{tensor.dtype} of shape {tuple(tensor.shape)}")
        if tensor.shape[1] > shape.n_ctx:
            raise InputError(f"batch[{key!r}]: sequences of {tensor.shape[1]} tokens are longer than the model's "
                             f"context n_ctx={shape.n_ctx}")
        if tensor.numel() and (int(tensor.min()) < 0 or int(tensor.max()) >= shape.d_vocab):
            raise InputError(f"batch[{key!r}]: token ids must lie in [0, d_vocab={shape.d_vocab}), got "
                             f"[{int(tensor.min())}, {int(tensor.max())}]")


def _check_batch(probes: Mapping[str, Probe], batch: Batch | None) -> None:
    if batch is None and any(p.reads != "weights" for p in probes.values()):
        needing = sorted(key for key, p in probes.items() if p.reads != "weights")
        raise InputError(f"batch: probes {needing} run the model and need a batch, got None")


def check_probe_memory(cfg: ModelConfig, probes: Mapping[str, Probe], batch: Batch | None,
                       device: str | torch.device | None = None) -> None:
    """`InsufficientMemoryError` unless one forward pass on `batch` caching every probe's hooks,
    plus the largest of their own allocations (`Probe.memory`), fits on `device`."""
    runs_model = batch is not None and any(p.reads != "weights" for p in probes.values())
    n_batch, n_pos = batch["tokens"].shape[:2] if runs_model else (0, 0)
    own = {p.name: p.memory(cfg, n_batch, n_pos) for p in probes.values() if p.memory is not None and runs_model}
    check_forward_memory(cfg, batch if runs_model else None, {h for p in probes.values() for h in p.hooks}, device,
                         own_passes=own)


def _memory_at(memory: Callable[[ModelConfig, int, int], int], cfg: ModelConfig, rows: int, positions: int) -> int:
    return memory(cfg, rows, positions)


def probe_chunk_rows(cfg: ModelConfig, probes: Mapping[str, Probe], batch: Batch | None,
                     device: str | torch.device | None = None) -> int:
    """Rows per chunk `probe()` computes `probes` on `batch` in (`run_probes`'s `chunk_rows`):
    the whole batch where the probes with a `Probe.mean_over` fit in memory on it, else the
    largest chunk that does (`interp.memory.forward_chunk_rows`: one shared forward caching
    their hooks plus the largest of their own passes, in `CHUNK_MEMORY_FRACTION` of what is
    free). `InsufficientMemoryError` naming the numbers, before anything loads, where the model
    cannot load, a probe without one does not fit on the whole batch, or one row does not fit.
    Only the batch's shape is read: a `shape_only` batch of the CLI's is enough."""
    if batch is None:
        check_probe_memory(cfg, probes, batch, device)
        return 0
    chunked = {key: p for key, p in probes.items() if p.mean_over is not None and p.reads != "weights"}
    check_probe_memory(cfg, {key: p for key, p in probes.items() if key not in chunked}, batch, device)
    n_batch, n_pos = batch["tokens"].shape[:2]
    if not chunked:
        return n_batch
    own = {p.name: partial(_memory_at, p.memory, cfg, positions=n_pos)
           for p in chunked.values() if p.memory is not None}
    return forward_chunk_rows(cfg, batch, {h for p in chunked.values() for h in p.hooks}, device, own_passes=own)


def probe(
    run: CheckpointSource | str | Path,
    probes: Mapping[str, Probe],
    batch: Batch | Text | None = None,
    steps: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    use_cache: bool = True,
    progress: bool = False,
) -> ProbeTable:
    """Compute `probes` at each checkpoint (default: all) of `run`: a `Run`, a run directory or
    any other `CheckpointSource` (a checkpoint suite, `interp.suites.open_suite`).

    Returns a step x metric `ProbeTable` with columns `"<key>/<metric>"`. `batch` may be
    None when every probe reads only the weights (`Probe.reads`), and text (one
    string or several of one token length) when the source has a tokenizer.
    """
    check_probe_keys(probes)
    _check_batch(probes, batch)
    run = open_checkpoints(run) if isinstance(run, str | Path) else run
    batch = text_batch(run, batch) if _is_text(batch) else batch
    check_batch_fits(run, batch)
    chunk_rows = probe_chunk_rows(run.model_config, probes, batch, device)
    if batch is not None and chunk_rows < len(batch["tokens"]):
        LOG.info("probing %d sequences in chunks of %d (the whole batch does not fit in memory at once)",
                 len(batch["tokens"]), chunk_rows)
    device = resolve_device(device)
    steps = list(run.steps if steps is None else steps)
    missing = sorted(set(steps) - set(run.steps))
    if missing:
        raise UnknownNameError(f"steps {missing} have no checkpoint in {run!r}; available: {run.steps}")
    batch_id = batch_hash(batch)
    hashes = {step: run.checkpoint_hash(step) for step in steps}

    run_numerics = numerics(run, device)

    def cache_key(key: str, step: int) -> CacheKey:
        return (probes[key].name, batch_id, hashes[step], run_numerics, step)

    cached: dict[CacheKey, dict[str, float]] = {}
    if use_cache:
        for directory in cache_dirs(run.path):
            for key in probes:
                cached.update(cache_rows(scan_jsonl(directory / PROBES_DIR / f"{key}.jsonl")).results)
    todo = [step for step in steps if any(cache_key(key, step) not in cached for key in probes)]
    if todo:  # only a call that computes something writes, and takes its cache folder's lock for it
        with ExitStack() as held:
            cache_dir = _hold_cache_lock(run, held)
            probe_dir = None if cache_dir is None else cache_dir / PROBES_DIR
            if probe_dir is not None:
                probe_dir.mkdir(exist_ok=True)
                for key in probes:  # again: the last writer may have changed them
                    scan = scan_jsonl(probe_dir / f"{key}.jsonl")
                    _repair_cache(probe_dir / f"{key}.jsonl", scan)
                    if use_cache:
                        cached.update(cache_rows(scan).results)
            artifacts = None if cache_dir is None else \
                {key: probe_artifacts(run, key, p, batch, device, cache_dir) for key, p in probes.items()}
            _compute(run, probes, batch, todo, cached, cache_key, device, progress, probe_dir, artifacts, chunk_rows)

    rows = [{f"{key}/{n}": v for key in probes for n, v in cached[cache_key(key, step)].items()} for step in steps]
    columns = tuple(sorted({c for row in rows for c in row}))
    table = np.array([[row.get(c, np.nan) for c in columns] for row in rows], dtype=float)
    return ProbeTable(np.array(steps), columns, table.reshape(len(steps), len(columns)))


@dataclass(frozen=True)
class CachedComputation:
    """One computation held in a probe cache: one probe on one batch in one numerics, at the
    checkpoints of its source that it covers (rows of weights since rewritten are left out)."""

    key: str
    probe: str
    batch: str
    numerics: str
    table: ProbeTable
    """Step x metric, columns as the probe names them (no `key/` prefix)."""
    of_steps: int
    """How many checkpoints the source has: the computation covers `len(table.steps)` of them."""

    def describe(self) -> str:
        return (f"{self.probe} on batch {self.batch} ({self.numerics}), "
                f"{len(self.table.steps)} of {self.of_steps} checkpoints")


def cached_computations(run: CheckpointSource, key: str) -> list[CachedComputation]:
    """Every computation in `probes/<key>.jsonl` (the run's, then the one in its cache folder
    outside it) at `run`'s current checkpoints, the most complete first (the latest written on
    a tie): what a reader of the cache draws from, one computation per curve, never a mix of
    batches or precisions."""
    current = {run.checkpoint_hash(step): step for step in run.steps}
    groups: dict[tuple[str, str, str], dict[int, dict[str, float]]] = {}
    latest: dict[tuple[str, str, str], int] = {}
    written_before = 0  # rows of an earlier folder's file count as written before this one's
    for directory in cache_dirs(run.path):
        scan = scan_jsonl(directory / PROBES_DIR / f"{key}.jsonl")
        rows = cache_rows(scan)
        for found, values in [*rows.results.items(), *rows.legacy.items()]:
            probe_name, batch_id, weights, row_numerics, step = found
            if current.get(weights) != step:
                continue
            group = (probe_name, batch_id, row_numerics)
            groups.setdefault(group, {}).setdefault(step, values)
            latest[group] = max(latest.get(group, -1), written_before + rows.order[found])
        written_before += len(scan.rows)
    out = []
    for group in sorted(groups, key=lambda g: (-len(groups[g]), -latest[g])):
        by_step = groups[group]
        steps = sorted(by_step)
        columns = tuple(sorted({c for v in by_step.values() for c in v}))
        values = np.array([[by_step[s].get(c, np.nan) for c in columns] for s in steps], dtype=float)
        out.append(CachedComputation(key, *group, ProbeTable(np.array(steps), columns,
                                                             values.reshape(len(steps), len(columns))),
                                     len(current)))
    return out


def computation_artifacts(run: CheckpointSource, computation: CachedComputation) -> Path:
    """The folder where the probe of a cached `computation` saved files of its own
    (`probe_artifacts` of its probe, batch and numerics): a reader of the cache finds them
    without the batch."""
    return _artifacts_folder(run, computation.key, computation.probe, computation.batch, computation.numerics, None)


def _hold_cache_lock(run: CheckpointSource, held: ExitStack) -> Path | None:
    """Take the lock of the folder `run`'s cache is written in (`interp.cache_dirs`) into
    `held` and return the folder; None (results computed, not cached, with a warning) where
    another process holds it past the brief wait or it cannot be written: a reader needs the
    cache only to save time."""
    try:
        return held.enter_context(lock_cache_dir(run.path))
    except RunInUseError as err:
        LOG.warning("%s; probing without caching the results", err)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        LOG.warning("%s is not writable (%s); probing without caching the results", err.filename or run.path,
                    err.strerror)
    return None


def _compute(run: CheckpointSource, probes: Mapping[str, Probe], batch: Batch | None, steps: list[int],
             cached: dict[CacheKey, dict[str, float]], cache_key: Callable[[str, int], CacheKey],
             device: torch.device, progress: bool, probe_dir: Path | None,
             artifacts: Mapping[str, Path] | None, chunk_rows: int) -> None:
    """Compute what `cached` lacks at `steps` into it, appending each result to its cache file;
    `chunk_rows`: see `run_probes` (the cache key does not depend on it)."""
    device_batch = None if batch is None else batch_to(batch, device)
    model: TransformerBridge | None = None
    for step in tqdm(steps, disable=not progress, desc="probing", leave=False):
        todo = {k: p for k, p in probes.items() if cache_key(k, step) not in cached}
        if not todo:
            continue
        model = run.load(step, device=device, into=model)
        values = run_probes(model, todo, device_batch, step=step, artifacts=artifacts, chunk_rows=chunk_rows)
        for key in todo:
            own = _stored({name[len(key) + 1 :]: v for name, v in values.items() if name.startswith(key + "/")})
            probe_name, batch_id, weights, run_numerics, _ = found = cache_key(key, step)
            cached[found] = _loaded(own)  # as a later, cached call will read it
            record = {"step": step, "probe": probe_name, "batch": batch_id, "weights": weights,
                      "numerics": run_numerics, "values": own}
            if probe_dir is not None:
                append_jsonl(probe_dir / f"{key}.jsonl", [{**record, "digest": row_digest(record)}])


def collect_activations(
    run: CheckpointSource | str | Path,
    hook: str,
    batch: Batch | Text,
    steps: Sequence[int] | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """One activation tensor per checkpoint, stacked: `[len(steps), *shape]`.

    For measurements that compare checkpoints with each other (activation
    drift, similarity across training), which per-checkpoint probes cannot
    express. One filtered forward per checkpoint into one reused model, in chunks of rows
    where the whole batch's forward would not fit (`forward_chunk_rows`: exact, since rows
    do not interact); refused only where the activations kept for every step cannot fit.
    """
    run = open_checkpoints(run) if isinstance(run, str | Path) else run
    batch = text_batch(run, batch) if _is_text(batch) else batch
    check_batch_fits(run, batch)
    steps = list(run.steps if steps is None else steps)
    chunk = forward_chunk_rows(run.model_config, batch, [hook], device, kept_copies=len(steps))
    device = resolve_device(device)
    device_batch = batch_to(batch, device)
    n_rows = batch["tokens"].shape[0]
    model: TransformerBridge | None = None
    stacked: np.ndarray | None = None  # filled chunk by chunk: one copy of every step's activations
    for index, step in enumerate(steps):
        model = run.load(step, device=device, into=model)
        if hook not in model.hook_dict:
            raise UnknownNameError(f"hook: {hook!r} is not a hook point of this model")
        for start in range(0, n_rows, chunk):
            rows = batch_rows(device_batch, start, start + chunk)
            with torch.no_grad(), model.hooks(fwd_hooks=input_hooks(model, rows)):
                _, cache = model.run_with_cache(rows["tokens"], names_filter=[hook])
            acts = cache[hook].float().cpu().numpy()
            if stacked is None:
                stacked = np.empty((len(steps), n_rows, *acts.shape[1:]), dtype=acts.dtype)
            stacked[index, start:start + len(acts)] = acts
    return np.zeros((0, n_rows)) if stacked is None else stacked


__all__ = ["ROWS", "CachedComputation", "Column", "MeanOver", "Probe", "ProbeContext", "ProbeReads", "ProbeTable",
           "batch_hash", "cache_rows", "cached_computations", "check_probe_memory", "collect_activations",
           "mean_over_positions", "numerics", "probe", "probe_artifacts", "probe_cache_files", "probe_chunk_rows",
           "run_probes", "text_batch"]
