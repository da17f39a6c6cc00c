"""Run probes over the checkpoints of a run, or of any `CheckpointSource` such as a
checkpoint suite (`interp.suites`): one forward pass per checkpoint.

A `Probe` declares the hook names it reads and maps a `ProbeContext` (the
cached activations, the logits, the batch and the model) to a flat dict of named
numbers. `probe()` takes the union of the hooks of every probe still to be
computed at a checkpoint, runs `run_with_cache(names_filter=...)` once, and
hands the same activations to each probe; a probe that runs forward passes of its
own (patching, readouts) or reads only the weights says so (`Probe.reads`), and a
checkpoint whose probes all do gets no shared forward. Results are cached per checkpoint in
`probes/<key>.jsonl` (`interp.probe_cache`), keyed by the probe's name, the batch contents and
the checkpoint's hash, so re-probing a finished run costs nothing. A probe's key is
the cache file's stem, so it must be a plain file name. A run this process cannot write
keeps its cache in a folder outside it (`interp.cache_dirs`), which readers look in after the
run's own. Writing the cache takes that folder's lock, waiting briefly for another holder
(`interp.locking.brief_wait`); a fully cached call writes nothing, and a call on a run another
process still writes after the wait computes without caching (with a warning naming the
holder) rather than failing. The batch may be text where the source has a tokenizer
(`interp.probe_batches.text_batch`), and runs in chunks of rows where it does not fit in memory
at once (`interp.probe_batches.probe_chunk_rows`). Results come as a `ProbeTable`
(`interp.probe_table`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from interp.cache_dirs import cache_dirs
from interp.checkpoints import CheckpointSource, open_checkpoints
from interp.devices import resolve_device
from interp.errors import UnknownNameError
from interp.files import scan_jsonl
from interp.memory import forward_chunk_rows
from interp.model import Batch, ModelConfig, batch_rows, batch_to, input_hooks
from interp.probe_batches import (
    Text,
    check_batch_fits,
    check_probe_memory,
    is_text,
    probe_chunk_rows,
    require_batch,
    text_batch,
)
from interp.probe_cache import (
    CachedComputation,
    CacheKey,
    batch_hash,
    cache_rows,
    cached_computations,
    check_probe_keys,
    hold_cache_lock,
    numerics,
    probe_artifacts,
    probe_cache_files,
    record_result,
    repair_cache,
)
from interp.probe_table import Column, ProbeTable
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


LOG = logging.getLogger(__name__)


def run_probes(model: TransformerBridge, probes: Mapping[str, Probe], batch: Batch | None, step: int | None = None,
               artifacts: Mapping[str, Path] | None = None, chunk_rows: int | None = None) -> dict[str, float]:
    """Evaluate probes on one model with a single cached forward pass (none when no probe
    reads its activations). `step` and `artifacts` (per key) fill the context's fields.
    `chunk_rows` (`probe_chunk_rows`): the probes with a `Probe.mean_over` run on chunks of
    that many rows, one shared forward per chunk, without artifacts; the others on the whole batch."""
    require_batch(probes, batch)
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
    require_batch(probes, batch)
    run = open_checkpoints(run) if isinstance(run, str | Path) else run
    batch = text_batch(run, batch) if is_text(batch) else batch
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
            cache_dir = hold_cache_lock(run, held)
            probe_dir = None if cache_dir is None else cache_dir / PROBES_DIR
            if probe_dir is not None:
                probe_dir.mkdir(exist_ok=True)
                for key in probes:  # again: the last writer may have changed them
                    scan = scan_jsonl(probe_dir / f"{key}.jsonl")
                    repair_cache(probe_dir / f"{key}.jsonl", scan)
                    if use_cache:
                        cached.update(cache_rows(scan).results)
            artifacts = None if cache_dir is None else \
                {key: probe_artifacts(run, key, p, batch, device, cache_dir) for key, p in probes.items()}
            _compute(run, probes, batch, todo, cached, cache_key, device, progress, probe_dir, artifacts, chunk_rows)

    rows = [{f"{key}/{n}": v for key in probes for n, v in cached[cache_key(key, step)].items()} for step in steps]
    columns = tuple(sorted({c for row in rows for c in row}))
    table = np.array([[row.get(c, np.nan) for c in columns] for row in rows], dtype=float)
    return ProbeTable(np.array(steps), columns, table.reshape(len(steps), len(columns)))


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
            own = {name[len(key) + 1 :]: v for name, v in values.items() if name.startswith(key + "/")}
            path = None if probe_dir is None else probe_dir / f"{key}.jsonl"
            found = cache_key(key, step)
            cached[found] = record_result(path, found, own)


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
    batch = text_batch(run, batch) if is_text(batch) else batch
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


# The public surface, with the names users import from here that live in interp.probe_table,
# interp.probe_cache and interp.probe_batches.
__all__ = ["ROWS", "CachedComputation", "Column", "MeanOver", "Probe", "ProbeContext", "ProbeReads", "ProbeTable",
           "batch_hash", "cache_rows", "cached_computations", "check_probe_memory", "collect_activations",
           "mean_over_positions", "numerics", "probe", "probe_artifacts", "probe_cache_files", "probe_chunk_rows",
           "run_probes", "text_batch"]
