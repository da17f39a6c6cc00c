"""Where the results derived from a run's checkpoints are cached (probe caches, circuit graphs,
attention patterns): in the run directory, or, where this process cannot write it (a read-only
or someone else's run), in a per-user folder outside it, `$INTERP_CACHE_DIR/<key>/` (default
`~/.cache/interp/runs/<key>/`), `<key>` the first 16 hex digits of the sha256 of the run's
`manifest.json`. The key is the run's content, not its path, so every copy of a run shares the
folder. It has the run's layout (`probes/`, `circuits/`, `patterns/`, its own `.lock`) and the
same integrity checks; readers look in the run first, then there.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from interp.locking import brief_wait, run_lock
from interp.run_layout import MANIFEST_FILE

CACHE_DIR_ENV = "INTERP_CACHE_DIR"
"""The environment variable naming the folder of caches outside read-only runs."""
DEFAULT_CACHE_ROOT = "~/.cache/interp/runs"


def is_writable(directory: Path) -> bool:
    """Whether this process may create files in `directory` (one not made yet: in its nearest
    existing parent). Root may write where the mode bits say no; a read-only mount stops everyone."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return os.access(existing, os.W_OK)


def outside_cache_dir(run_dir: Path) -> Path | None:
    """The per-user folder of the results of the run in `run_dir` outside it; None for a folder
    without a manifest to key it by (a checkpoint suite's cache, which `open_suite(cache=...)`
    places)."""
    try:
        manifest = (run_dir / MANIFEST_FILE).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    root = Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_ROOT).expanduser()
    return root / hashlib.sha256(manifest).hexdigest()[:16]


def cache_dirs(run_dir: Path) -> list[Path]:
    """The folders a reader of the cached results of `run_dir` (a run, or a checkpoint source's
    `path`) looks in, in order: `run_dir`, then the one outside it where that exists."""
    outside = outside_cache_dir(run_dir)
    return [run_dir, *([outside] if outside is not None and outside.is_dir() else [])]


def writable_cache_dir(run_dir: Path) -> Path:
    """The folder this process caches the results of `run_dir` in: `run_dir` where writable,
    else the one outside it (where there is none, `run_dir`, whose writing then fails as it would)."""
    if is_writable(run_dir):
        return run_dir
    return outside_cache_dir(run_dir) or run_dir


@contextmanager
def lock_cache_dir(run_dir: Path) -> Iterator[Path]:
    """Hold the writer lock of `writable_cache_dir(run_dir)` for the `with` block and give the
    folder; a holder is waited for up to `interp.locking.brief_wait()` seconds (a probe or a
    save holds it briefly), then `RunInUseError`."""
    directory = writable_cache_dir(run_dir)
    with run_lock(directory, wait=brief_wait()):
        yield directory


__all__ = ["CACHE_DIR_ENV", "cache_dirs", "is_writable", "lock_cache_dir", "outside_cache_dir",
           "writable_cache_dir"]
