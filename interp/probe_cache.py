"""The probe cache on disk: `probes/<key>.jsonl` in a run's cache folders (`interp.cache_dirs`),
one JSON row per result of a probe at a checkpoint, keyed by the probe's name, the batch's
contents (`batch_hash`), the checkpoint's hash and the numerics (`numerics`), and digested
(`row_digest`) so that an edited row is recomputed rather than returned. A probe's key is the
cache file's stem, so it must be a plain file name (`check_probe_keys`). The cache is strict
JSON: a NaN or infinite probe value is stored as null and read back as NaN. Writing takes the
cache folder's lock (`hold_cache_lock`); readers draw one computation per curve
(`cached_computations`). Files a probe saves of its own lie in `probe_artifacts`.
`interp.probing.probe` computes what the cache lacks.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from interp.cache_dirs import cache_dirs, lock_cache_dir
from interp.checkpoints import CheckpointSource
from interp.devices import resolve_device
from interp.errors import InputError
from interp.files import JsonlScan, append_jsonl, atomic_write_bytes, dumps_json, scan_jsonl
from interp.locking import RunInUseError
from interp.model import Batch
from interp.probe_table import ProbeTable
from interp.run_layout import PROBES_DIR

if TYPE_CHECKING:  # interp.probing imports this module; Probe only annotates here
    from interp.probing import Probe

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


def repair_cache(path: Path, scan: JsonlScan) -> None:
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


def record_result(path: Path | None, found: CacheKey, values: Mapping[str, float]) -> dict[str, float]:
    """Append `values`, the result keyed `found`, to the cache file `path` as a digested row (None:
    results are not cached); return them as a later, cached call reads them (non-finite as NaN)."""
    stored = _stored(values)
    if path is not None:
        probe_name, batch_id, weights, row_numerics, step = found
        record = {"step": step, "probe": probe_name, "batch": batch_id, "weights": weights,
                  "numerics": row_numerics, "values": stored}
        append_jsonl(path, [{**record, "digest": row_digest(record)}])
    return _loaded(stored)


def probe_artifacts(run: CheckpointSource, key: str, probe_obj: Probe, batch: Batch | None,
                    device: str | torch.device | None = None, cache_dir: Path | None = None) -> Path:
    """The directory where probe `key` saves files of its own (`interp.probing.ProbeContext.artifacts`):
    `probes/<key>/<id>/` in `cache_dir` (default: the first of the run's cache folders,
    `interp.cache_dirs`, that holds it, else the run), `<id>` a hash of the probe's name, the
    batch and the numerics the probe runs in on `device` (default: as `interp.probing.probe` chooses)."""
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


def hold_cache_lock(run: CheckpointSource, held: ExitStack) -> Path | None:
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
