"""Which cache folder a checkpoint suite's probe results go to, and the identity of each of its
checkpoints, which keys them.

A hub suite's checkpoint is its model and revision (`EleutherAI/pythia-70m@step1000`: a
published revision does not change), cached under `<cache root>/<owner>--<name>/`. A local
checkpoint is the sha256 of its step folder's config and weight files (a user's own run may be
saved again), remembered in `weight_hashes.json` with each file's size, mtime, ctime and inode so
that re-probing a finished suite hashes nothing; a file whose ctime moved (every write moves it,
and `touch`/`os.utime` cannot set it back) is hashed again, and `content_changes` (for `verify`)
re-hashes them all.

A local suite's cache is found by content, not by path: `weight_hashes.json` also records the
hash of every checkpoint the cache folder has seen, and opening picks the sub-folder of the
cache root that shares the most of the suite's checkpoint hashes (more than half of the fewer
of the two), else starts one named after the folder. The default root is `<folder>/interp-cache`
(it moves with the folder; `default_cache()` where the folder is read-only), so a moved or
copied suite, or one opened from another path under a shared `cache=` root, finds its results:
a copy's files are hashed once (their inodes differ), none is loaded.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from interp.cache_dirs import is_writable
from interp.files import atomic_write_json, loads_json, sha256_file
from interp.locking import RunInUseError, run_lock
from interp.suite_layouts import HF_CONFIG_FILE, SuiteError, weight_files

DEFAULT_CACHE = "interp-cache"
"""The cache root of a folder's probe results when `open_suite` is given none: `<folder>/interp-cache`."""
HASHES_FILE = "weight_hashes.json"
"""In a local suite's cache folder: the sha256 of each checkpoint file (by `FILE_IDENTITY`) and of
each checkpoint, which is how a moved or copied suite finds this cache folder."""
FILE_IDENTITY = ("size", "mtime_ns", "ctime_ns", "inode")
"""What a remembered hash is trusted by: any change (a write moves ctime even when mtime is set
back, a replacement changes the inode) hashes the file again."""


def default_cache() -> Path:
    """Where a hub suite's results are cached by default (and a read-only folder's):
    `$XDG_CACHE_HOME/interp/suites`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "interp" / "suites"


def folder_cache_root(folder: Path) -> Path:
    """A suite folder's default cache root: `<folder>/interp-cache`, or `default_cache()` where
    the folder is read-only."""
    return folder / DEFAULT_CACHE if is_writable(folder) else default_cache()


def hub_cache_folder(root: Path, model: str) -> Path:
    """A hub suite's cache folder under the cache root, named by its model: `<owner>--<name>`."""
    return root / model.replace("/", "--")


class ContentKeyedCache:
    """A local suite's cache folder, found by its checkpoints' content, and those checkpoints'
    hashes, remembered in the folder's `weight_hashes.json` (see the module docstring)."""

    def __init__(self, root: Path, source: str, step_dirs: Mapping[int, Path]):
        self._root = root
        self._source = source
        self._step_dirs = step_dirs
        self._path: Path | None = None
        self._hashes: dict[str, dict[str, Any]] | None = None
        self._recorded: dict[str, str] = {}

    @property
    def path(self) -> Path:
        """The sub-folder of the cache root that holds these checkpoints' results, found when first
        needed (`_find_cache`: may hash a moved copy's files once)."""
        if self._path is None:
            self._path = self._find_cache()
        return self._path

    def checkpoint_hash(self, step: int) -> str:
        """The sha256 of the step folder's config and weight files, remembered for the next call
        and the next process."""
        self._file_hashes()
        digest, hashed = self._digest(step)
        if hashed or self._recorded.get(str(step)) != digest:
            self._recorded[str(step)] = digest
            self._save_file_hashes()
        return digest

    def content_changes(self, step: int) -> list[str]:
        """The step's config and weight files hashed again, one line per problem: a missing file,
        or one whose content no longer matches the hash remembered for its size and mtime."""
        memo = self._file_hashes()
        problems = []
        for file in self._identity_files(step):
            known = memo.get(_memo_key(step, file))
            if not file.is_file():
                problems.append(f"{file} is missing")
                continue
            stat = file.stat()
            if known and (known["size"], known["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns) \
                    and sha256_file(file) != known["sha256"]:
                problems.append(f"{file}: its content changed since it was hashed, though its size and mtime "
                                f"did not (cached results of step {step} are computed again)")
        return problems

    def _digest(self, step: int, hash_unknown: bool = True) -> tuple[str | None, bool]:
        """(the checkpoint's hash, whether a file had to be hashed) by the loaded memo; without
        `hash_unknown`, (None, False) where a file's hash is not remembered for its identity."""
        memo = self._hashes if self._hashes is not None else {}
        hashed = False
        parts = []
        for file in self._identity_files(step):
            key = _memo_key(step, file)
            try:
                identity = _file_identity(file.stat())
            except FileNotFoundError:
                raise SuiteError(f"{file} is missing") from None
            known = memo.get(key)
            if known and all(known[k] == identity[k] for k in FILE_IDENTITY):
                digest = known["sha256"]
            elif not hash_unknown:
                return None, False
            else:
                digest = sha256_file(file)
                memo[key] = {**identity, "sha256": digest}
                hashed = True
            parts.append(f"{file.name} {digest}")
        self._hashes = memo
        return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest(), hashed

    def _identity_files(self, step: int) -> list[Path]:
        """The files whose content is a step's identity: its config and weights."""
        folder = self._step_dirs[step]
        return [folder / HF_CONFIG_FILE, *weight_files(folder)]

    def _find_cache(self) -> Path:
        """The sub-folder of the cache root for this local suite: among those whose
        `weight_hashes.json` records checkpoint hashes, the one sharing the most with this
        suite's (more than half of the fewer of the two; a re-saved or added checkpoint still
        matches, another suite that shares only its initialization does not); else a new one
        named after the folder. A file whose identity a candidate's memo knows is not hashed,
        so an unmoved suite (or one moved on its file system) hashes nothing."""
        root = self._root
        memos = {d: _read_memo(d) for d in sorted(root.iterdir()) if d.is_dir()} if root.is_dir() else {}
        candidates = {d: memo for d, memo in memos.items() if memo[1]}
        if candidates:
            self._hashes = {}
            for step in self._step_dirs:
                for file in self._identity_files(step):
                    if not file.is_file():
                        continue  # named missing by _digest
                    key, identity = _memo_key(step, file), _file_identity(file.stat())
                    known = [files[key] for files, _ in candidates.values() if key in files]
                    match = next((e for e in known if all(e[k] == identity[k] for k in FILE_IDENTITY)), None)
                    if match is not None:
                        self._hashes[key] = match
            # What the memos know for free first (an unmoved suite, or one with a changed checkpoint,
            # hashes nothing here, and `verify` can still tell a changed file), else hash every checkpoint.
            known = {str(step): digest for step in self._step_dirs if (digest := self._digest(step, False)[0])}
            best = _sharing_most(candidates, known) if known else None
            ours = known if best is not None else {str(step): str(self._digest(step)[0]) for step in self._step_dirs}
            best = best or _sharing_most(candidates, ours)
            if best is not None:
                files, recorded = candidates[best]
                self._hashes = {**files, **self._hashes}
                self._recorded = {**recorded, **ours}
                if (self._hashes, self._recorded) != candidates[best]:
                    self._path = best
                    self._save_file_hashes()
                return best
            self._recorded = ours
        name = Path(self._source).resolve().name or "suite"
        # A folder of this name that records no checkpoints (an interrupted first probe) is taken over.
        taken = {d.name for d, memo in memos.items() if memo[1]} | {p.name for p in root.glob("*") if not p.is_dir()} \
            if root.is_dir() else set()
        candidates_names = itertools.chain([name], (f"{name}-{i}" for i in itertools.count(2)))
        new = root / next(n for n in candidates_names if n not in taken)
        if self._recorded:
            self._path = new
            self._save_file_hashes()
        return new

    def _file_hashes(self) -> dict[str, dict[str, Any]]:
        path = self.path  # found first: finding it may load the memo
        if self._hashes is None:
            self._hashes, self._recorded = _read_memo(path)
        return self._hashes

    def _save_file_hashes(self) -> None:
        try:
            with run_lock(self.path):
                atomic_write_json(self.path / HASHES_FILE, {"files": self._hashes or {}, "checkpoints": self._recorded})
        except RunInUseError:
            pass  # another process writes this cache now; the memo only saves hashing, so the next call stores it


def _file_identity(stat: os.stat_result) -> dict[str, int]:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino}


def _memo_key(step: int, file: Path) -> str:
    """A file's key in `weight_hashes.json`: by step and name, not path, so it holds wherever the suite is."""
    return f"step{step}/{file.name}"


def _sharing_most(candidates: Mapping[Path, tuple[Any, dict[str, str]]], ours: Mapping[str, str]) -> Path | None:
    """The cache folder whose recorded checkpoint hashes share the most with `ours`, if more than
    half of the fewer of the two; None otherwise."""
    def shared(folder: Path) -> int:
        return len(set(ours.values()) & set(candidates[folder][1].values()))

    best = max(candidates, key=shared)
    return best if 2 * shared(best) > min(len(ours), len(candidates[best][1])) else None


def _read_memo(cache: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(file hashes by `_memo_key`, checkpoint hashes by step) of a cache folder's
    `weight_hashes.json`; a missing or damaged memo is empty (it costs a re-hash, never an error)."""
    path = cache / HASHES_FILE
    try:
        stored = loads_json(path.read_bytes()) if path.is_file() else {}
    except (ValueError, UnicodeDecodeError):
        stored = {}
    stored = stored if isinstance(stored, dict) else {}
    files = stored.get("files") if isinstance(stored.get("files"), dict) else {}
    recorded = stored.get("checkpoints") if isinstance(stored.get("checkpoints"), dict) else {}
    # An entry without ctime and inode (an older memo) is hashed again.
    return ({key: entry for key, entry in files.items()
             if isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
             and all(isinstance(entry.get(k), int) for k in FILE_IDENTITY)},
            {step: digest for step, digest in recorded.items() if isinstance(digest, str)})


__all__ = ["DEFAULT_CACHE", "FILE_IDENTITY", "HASHES_FILE", "ContentKeyedCache", "default_cache", "folder_cache_root",
           "hub_cache_folder"]
