"""The writer lock of a run directory: one process at a time writes a run; readers take no lock."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from interp.errors import InputError
from interp.run_layout import LOCK_FILE, CheckpointError, RunDamagedError

LOG = logging.getLogger(__name__)

BRIEF_WAIT_S = 30.0
"""How long a writer waits for a lock whose holder is expected to let go soon (a probe caching
its results, a circuit saving its graphs, training starting while a probe writes the run)."""
BRIEF_WAIT_ENV = "INTERP_LOCK_WAIT"
"""The environment variable that overrides `BRIEF_WAIT_S` (seconds; 0 fails at once)."""
_POLL_S = 0.1


class RunInUseError(CheckpointError):
    """Another process (or thread) is writing the run directory."""


@dataclass
class _Held:
    fd: int
    created: bool  # this acquisition created the lock file
    pid: int
    thread: int
    depth: int = 1


_HELD: dict[Path, _Held] = {}
_HELD_GUARD = threading.Lock()


def brief_wait() -> float:
    """Seconds to wait for a briefly held lock: `$INTERP_LOCK_WAIT`, else `BRIEF_WAIT_S`."""
    text = os.environ.get(BRIEF_WAIT_ENV, "").strip()
    if not text:
        return BRIEF_WAIT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses nan
        raise InputError(f"{BRIEF_WAIT_ENV}: expected a number of seconds >= 0, got {text!r}")
    return seconds


@contextmanager
def run_lock(path: str | Path, wait: float = 0.0) -> Iterator[None]:
    """Hold the writer lock of run directory `path` (created if missing) for the `with` block.

    The lock is an `fcntl.flock` on `path/.lock`, which holds the writer's pid. A second
    writer fails with `RunInUseError` ("run directory X is in use by pid N") instead of
    interleaving its files with the first one's: at once, or after polling for up to `wait`
    seconds (logging once that it waits, and for whom) where the holder needs the lock only
    briefly (`brief_wait()`). The kernel drops a flock when its process dies, however it
    dies, so the lock of a killed writer is free for the next one: there is no stale lock to
    detect or break. Nested use in the thread that holds the lock is allowed (a training
    callback may probe its own run). Readers take no lock.

    `.lock` is opened by name, never through a link, and written only once it is known to be
    a regular file with no other name: a shared or downloaded run whose `.lock` is a link
    to a file elsewhere is refused (`RunDamagedError`) instead of emptying that file. A lock
    file created for a block that fails is removed again (e.g. from a refused `--out`).
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    key = directory.resolve()
    pid, thread = os.getpid(), threading.get_ident()
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None and held.pid == pid:  # a forked child inherits the dict, not the lock
            if held.thread != thread:
                raise RunInUseError(f"run directory {directory} is in use by pid {pid} (another thread)")
            held.depth += 1
        else:
            held = None
    if held is None:  # outside the guard, which a wait would hold up for every other directory
        acquired = _Held(*_acquire(key / LOCK_FILE, directory, wait), pid, thread)
        with _HELD_GUARD:
            held = _HELD[key] = acquired
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        with _HELD_GUARD:
            held.depth -= 1
            if held.depth == 0:
                del _HELD[key]
                _release(held.fd, key / LOCK_FILE if failed and held.created else None)


def _acquire(lock_path: Path, directory: Path, wait: float) -> tuple[int, bool]:
    """(fd, created) of the flock-held lock file, the pid written in it; polled for up to
    `wait` seconds while another process holds it."""
    deadline = time.monotonic() + wait
    waiting = False
    while True:
        fd, created = _open_lock(lock_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A failed writer removes the lock file it created (`_release`): the file opened here
            # may be one it removed just before, so hold the one the name leads to now.
            if _same_file(fd, lock_path):
                break
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            if time.monotonic() >= deadline:
                waited = f" (waited {wait:g} s)" if wait > 0 else ""
                raise RunInUseError(f"run directory {directory} is in use by {holder}{waited}") from None
            if not waiting:
                LOG.warning("waiting for %s (held by %s) for up to %g s", directory, holder, wait)
                waiting = True
            time.sleep(_POLL_S)
            continue
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        _check_lock_file(os.fstat(fd), lock_path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def _open_lock(lock_path: Path) -> tuple[int, bool]:
    """Open `lock_path` read-write without following a link (and without truncating: nothing
    is written before `_check_lock_file`); (fd, whether this call created the file)."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: a FIFO must not hang
    while True:
        try:
            return os.open(lock_path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            pass
        try:
            return os.open(lock_path, flags), False
        except FileNotFoundError:
            continue  # removed since (a failed writer's own lock file): create it
        except OSError:  # e.g. ELOOP: a link; name what the path is if it is no lock file at all
            with suppress(OSError):
                _check_lock_file(os.lstat(lock_path), lock_path)
            raise


def _check_lock_file(st: os.stat_result, lock_path: Path) -> None:
    """Refuse a lock file that writing a pid into could damage something else."""
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_nlink != 1:
        problem = f"has {st.st_nlink} names (hard links)"
    else:
        return
    raise RunDamagedError(f"{lock_path} {problem}, which no writer of the toolkit leaves: remove it (a run's lock "
                          "file must be a regular file of its own)")


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _lock_holder(fd: int) -> str:
    """'pid N' of the lock's holder; it writes its pid just after taking the lock, so wait briefly."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return f"pid {text}"
        time.sleep(0.025)
    return "another process"


def _release(fd: int, remove: Path | None) -> None:
    """Unlock `fd`; `remove`: the lock file's path, unlinked first (while still held, so a
    writer waiting for it re-opens the name: see `_acquire`)."""
    try:
        os.ftruncate(fd, 0)  # no pid left behind to mislead a reader of the file
        if remove is not None and _same_file(fd, remove):
            remove.unlink()
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

