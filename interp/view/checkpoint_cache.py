"""The explorer's per-checkpoint caches in a run: the example sequences' attention patterns
(`interp.view.patterns`) and the token strips' readouts (`interp.view.examples`).

Each result is one file per checkpoint, named by the checkpoint's hash (`checkpoint_file_id`)
and stored with the sha256 of its bytes beside it (`record_digest`), so an edited file is caught
(`cached_file_problem`; `pattern_problems` for `interp info --verify`). `cached_per_checkpoint`
loads what the run's cache folders hold and computes the rest under the run's lock; `thin`
picks the evenly spread checkpoints (and logged points) a page holds.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from interp.cache_dirs import cache_dirs, lock_cache_dir
from interp.checkpoints import CheckpointSource, Run
from interp.files import atomic_write_bytes, sha256_file
from interp.locking import RunInUseError

logger = logging.getLogger(__name__)
T = TypeVar("T")

PATTERNS_DIR = "patterns"  # the example sequences' attention patterns (`interp.view.patterns`)
READOUTS_DIR = "token_readouts"  # the token strips' per-position readouts (`interp.view.examples`)


def thin(n: int, limit: int) -> list[int]:
    """Indices of at most `limit` of `n` points, evenly spread, first and last kept."""
    if n <= limit:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, limit)})


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def checkpoint_file_id(run: CheckpointSource, step: int) -> str:
    """The checkpoint at `step` in the names of the explorer's cache files: 16 hex digits of its
    sha256 (a run's), else of the sha256 of its identity (a suite's `sha256:...` or
    `model@revision`, which holds characters a file name must not)."""
    identity = run.checkpoint_hash(step)
    if _SHA256_HEX.fullmatch(identity):
        return identity[:16]
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def digest_file(path: Path) -> Path:
    """Beside each file of the explorer's caches, the sha256 of its bytes as written: an edited
    file is caught."""
    return path.with_suffix(".sha256")


def record_digest(path: Path) -> None:
    """Write the digest of the file just written at `path` (after it: a cut write is caught)."""
    atomic_write_bytes(digest_file(path), sha256_file(path).encode())


def cached_file_problem(path: Path) -> str | None:
    """Why the cached file `path` is not to be trusted (no digest, or edited since), or None."""
    digest = digest_file(path)
    if not digest.exists():
        return f"{path} has no {digest.name} (written by an older version, or the write was cut short)"
    if digest.read_text().strip() != sha256_file(path):
        return f"{path} was edited after it was written (its sha256 does not match {digest.name})"
    return None


CACHED_FILES = {PATTERNS_DIR: "*/*.npy", READOUTS_DIR: "*/*.npz"}
"""The explorer's per-checkpoint caches in a run's cache folders, and their files."""


def pattern_problems(run: Run) -> list[str]:
    """One line per cached explorer file (attention patterns, token readouts) edited since it was
    written (`interp info --verify`; a file without a digest, from an older version, is simply
    recomputed by the next view)."""
    return [p for cache_dir in cache_dirs(run.path) for folder, files in CACHED_FILES.items()
            for path in sorted((cache_dir / folder).glob(files))
            if digest_file(path).exists() and (p := cached_file_problem(path))]


def cached_per_checkpoint(run: Run, steps: Sequence[int], load: Callable[[Path, int], T | None],
                          compute: Callable[[list[int], Path | None], dict[int, T]], cache: bool = True,
                          what: str = "results") -> dict[int, T]:
    """A per-checkpoint result of the explorer at each of `steps`: `load(cache_dir, step)` from
    the run's cache folders where present (the run's, then the one outside it,
    `interp.cache_dirs`); the rest from `compute(steps, cache_dir)`, which stores each result in
    `cache_dir`, held locked (with `cache`; a read-only run's is outside it). A run another
    process still writes after a brief wait, or one this process cannot write, is computed with
    `cache_dir` None, storing nothing (a warning names `what`)."""
    found: dict[int, T] = {}
    for cache_dir in cache_dirs(run.path):
        for step in steps:
            if step not in found and (value := load(cache_dir, step)) is not None:
                found[step] = value
    todo = [s for s in steps if s not in found]
    if todo and cache:
        try:
            with lock_cache_dir(run.path) as cache_dir:
                found.update(compute(todo, cache_dir))
        except RunInUseError as err:
            logger.warning("%s: %s are computed, not cached", err, what)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            logger.warning("%s is not writable (%s): %s are computed, not cached", run.path, err, what)
    todo = [s for s in steps if s not in found]
    if todo:
        found.update(compute(todo, None))
    return found
