"""The run directory: config, metrics log, checkpoints and their manifest.

Layout (see README):

    config.json          everything needed to re-run
    metrics.jsonl        one JSON object per logged step
    manifest.json        step -> file -> sha256; a checkpoint exists once listed here
    checkpoints/step_000123/weights.safetensors   model weights
    checkpoints/step_000123/state.pt              optimizer state, step, running loss (no code)
    probes/*.jsonl, figures/*.png, report.md, results.json
    .lock                the pid of the process writing the run (see `run_lock`)

Every write is atomic (temporary name, fsync, rename), and a checkpoint is
committed by listing it in the manifest after its directory is in place, so a
run killed at any moment leaves each checkpoint either complete or absent.
Every JSON file is strict JSON: NaN and infinities are refused when written and
when read. One process at a time writes a run (`run_lock`); readers take no lock.
`Run.inspect` tells an intact run from a damaged one without hashing anything.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import math
import os
import pickle
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformer_lens.model_bridge import TransformerBridge

from interp.configs import from_dict
from interp.errors import InputError, InterpError
from interp.model import ModelConfig, build_model, load_model_state_dict, model_state_dict

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"
CHECKPOINTS_DIR = "checkpoints"
PROBES_DIR = "probes"

_STEP_DIR = re.compile(r"step_(\d+)")


class CheckpointError(InterpError, RuntimeError):
    """A checkpoint or run directory is missing, incomplete, damaged or fails its hash check."""


class RunInUseError(CheckpointError):
    """Another process (or thread) is writing the run directory."""


class RunDamagedError(CheckpointError):
    """A run directory is inconsistent in a way no write of the toolkit can leave it."""

    resumable = False


class JsonlError(InterpError, ValueError):
    """A line of a JSONL file that is not a JSON object (not the torn last line of a killed append)."""


class NonFiniteError(InputError):
    """A NaN or infinity where the toolkit only stores finite numbers."""


def step_dirname(step: int) -> str:
    return f"step_{step:06d}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the writer lock ----------------------------------------------------------------------


@dataclass
class _Held:
    fd: int
    created: bool  # this acquisition created the lock file
    pid: int
    thread: int
    depth: int = 1


_HELD: dict[Path, _Held] = {}
_HELD_GUARD = threading.Lock()


@contextmanager
def run_lock(path: str | Path) -> Iterator[None]:
    """Hold the writer lock of run directory `path` (created if missing) for the `with` block.

    The lock is an `fcntl.flock` on `path/.lock`, which holds the writer's pid. A second
    writer fails at once with `RunInUseError` ("run directory X is in use by pid N")
    instead of interleaving its files with the first one's. The kernel drops a flock when
    its process dies, however it dies, so the lock of a killed writer is free for the next
    one: there is no stale lock to detect or break. Nested use in the thread that holds the
    lock is allowed (a training callback may probe its own run). Readers take no lock.

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
            held = _HELD[key] = _Held(*_acquire(key / LOCK_FILE, directory), pid, thread)
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


def _acquire(lock_path: Path, directory: Path) -> tuple[int, bool]:
    """(fd, created) of the flock-held lock file, the pid written in it."""
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
            raise RunInUseError(f"run directory {directory} is in use by {holder}") from None
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


# --- atomic writes and strict JSON ----------------------------------------------------------


def temp_path(path: Path) -> Path:
    """A temporary name beside `path`, unique to this process and call, so that concurrent
    writers (or a writer and the leftovers of a killed one) never share a temporary file."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how safetensors' message of an I/O error ends


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: Path, name: Path | None = None) -> None:
    """`safetensors.torch.save_file`, whose I/O failures (a `SafetensorError`, e.g. "... No space
    left on device (os error 28)") are raised as the `OSError` they are, naming `name`
    (default `path`), so a full disk reads as one, whichever writer hit it."""
    try:
        save_file(dict(tensors), path)
    except SafetensorError as err:
        match = _RUST_OS_ERROR.search(str(err))
        if match is None:
            raise
        number = int(match.group(1))
        raise OSError(number, os.strerror(number), str(name or path)) from err


def atomic_write_npy(path: Path, array: np.ndarray) -> None:
    """An array as a `.npy` file (no pickles), written atomically."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def dumps_json(obj: Any, path: Path, indent: int | None = None) -> str:
    """`obj` as strict JSON: NaN and infinities (which `json` would write as the non-JSON
    `NaN`/`Infinity`) are refused, naming the file they were meant for."""
    try:
        return json.dumps(obj, indent=indent, default=_json_default, allow_nan=False)
    except ValueError as err:
        raise NonFiniteError(f"{path}: refusing to write a non-finite number ({err})") from None


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (dumps_json(obj, path, indent=2) + "\n").encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # e.g. 1e999: valid JSON syntax, but it would read as an infinity
        raise ValueError(f"{text} is too large for a float: it would read as infinity")
    return value


def loads_json(text: str | bytes) -> Any:
    """Strict JSON: `NaN`, `Infinity` and `-Infinity` (which `json.loads` accepts) are refused,
    and so are numbers too large for a float (`1e999`), which would read as infinities."""
    return json.loads(text, parse_constant=_no_constants, parse_float=_finite_float)


def read_json(path: Path) -> Any:
    """A JSON file of the run directory, strictly parsed; damage is reported by file name."""
    try:
        return loads_json(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as err:
        raise RunDamagedError(f"{path} is not valid JSON ({err})") from None


@dataclass(frozen=True)
class JsonlScan:
    """What a JSONL file holds: its complete rows, the lines that do not parse, and a torn
    last line (one without its newline: the append of a killed writer)."""

    path: Path
    rows: list[dict[str, Any]]
    bad_lines: list[tuple[int, str]]
    """(1-based line number, why) of every complete line that is not a JSON object."""
    torn_line: int | None
    """The number of the last line when it lacks its newline, else None."""
    complete_bytes: int
    """The length of the file up to and including its last newline."""

    def first_bad_line_error(self) -> JsonlError:
        number, why = self.bad_lines[0]
        return JsonlError(f"{self.path}: line {number} is not a JSON object ({why}); the file is damaged")


def scan_jsonl(path: Path) -> JsonlScan:
    """Read a JSONL file (missing: empty) without stopping at damage; see `JsonlScan`."""
    data = path.read_bytes() if path.exists() else b""
    end = data.rfind(b"\n") + 1
    lines = data[:end].split(b"\n")[:-1]
    rows: list[dict[str, Any]] = []
    bad: list[tuple[int, str]] = []
    for number, line in enumerate(lines, 1):
        try:
            row = loads_json(line)
        except (ValueError, UnicodeDecodeError) as err:
            bad.append((number, str(err)))
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append((number, f"a {type(row).__name__}"))
    return JsonlScan(path, rows, bad, len(lines) + 1 if end < len(data) else None, end)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file. A torn last line (a writer killed mid-append, or an append still
    under way) is dropped with a warning; any other line that does not parse raises a
    `JsonlError` naming the file and line, instead of silently ending the rows there."""
    scan = scan_jsonl(path)
    if scan.bad_lines:
        raise scan.first_bad_line_error()
    if scan.torn_line is not None:
        logger.warning("%s: line %d is torn (a writer was killed mid-append); it is ignored", path, scan.torn_line)
    return scan.rows


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append `rows` (writers only, under the run's lock). A torn last line left by a killed
    writer is cut first: the first new row would otherwise be glued onto it."""
    data = "".join(dumps_json(row, path) + "\n" for row in rows)  # all rows are checked before any is written
    if data and path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:
            cut_torn_line(path)
    with open(path, "a") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def cut_torn_line(path: Path) -> bool:
    """Remove a torn last line of a JSONL file (writers only, under the run's lock), so the
    next append starts on a line of its own; returns whether there was one."""
    scan = scan_jsonl(path)
    if scan.torn_line is None:
        return False
    with open(path, "r+b") as f:
        f.truncate(scan.complete_bytes)
        f.flush()
        os.fsync(f.fileno())
    return True


def is_temporary(name: str) -> bool:
    """Whether `name` is a temporary file or directory of an atomic write (`temp_path`,
    `Run.save_checkpoint`), which only a killed writer leaves behind."""
    return name.startswith(".tmp_step_") or (name.startswith(".") and name.endswith(".tmp"))


# --- what a run directory holds ---------------------------------------------------------------


def _listing(steps: list[int], limit: int = 6) -> str:
    shown = ", ".join(str(s) for s in steps[:limit])
    return f"[{shown}]" if len(steps) <= limit else f"[{shown}, ... ({len(steps)} in all)]"


def logged_steps(train: Mapping[str, Any], last: int, evaluated: bool) -> tuple[set[int], set[int]] | None:
    """`(required, allowed)`: the steps up to `last` at which the trainer of a run with
    `train` (its `TrainConfig` as in `config.json`) must have logged a row, and those at which
    it may have; None when `train` does not say. Rows come at every `log_every` steps and the
    end, and with evaluators also at step 0 and every `eval_every` steps (where a stop or
    pause condition can end the run)."""
    total, log_every, eval_every = (train.get(k) for k in ("steps", "log_every", "eval_every"))
    if not all(isinstance(v, int) and v > 0 for v in (total, log_every)) or not isinstance(eval_every, int):
        return None
    required = set(range(log_every, last + 1, log_every)) | ({total} if last == total else set())
    evaluations = {0, *(range(eval_every, last + 1, eval_every) if eval_every > 0 else ()), total}
    if evaluated:
        required |= {s for s in evaluations if s <= last}
    allowed = required | {s for s in evaluations if s <= last}
    return required, allowed


_TRAINING_KEYS = {"step", "train/loss", "lr"}


@dataclass(frozen=True)
class RunState:
    """What a run directory holds, read without hashing anything (`Run.inspect`).

    `damage()` lists what no write of the toolkit leaves behind, even when killed (a run
    resumed over it could mix two runs or lose logged rows): `train(resume=True)` refuses
    it. `repairs()` lists the leftovers of a killed writer, which a resume removes
    provably: each belongs to work after the last checkpoint, which is redone."""

    path: Path
    exists: bool
    """The directory holds config.json, checkpoints/, metrics.jsonl or manifest.json."""
    config_error: str | None
    """Why config.json cannot be used (missing or unreadable), or None."""
    manifest_error: str | None
    steps: list[int]
    """Committed checkpoints: the steps manifest.json lists."""
    step_dirs: list[int]
    """Steps with a directory under checkpoints/."""
    metrics: JsonlScan
    missing_rows: list[int] = field(default_factory=list)
    unexpected_rows: list[int] = field(default_factory=list)
    repeated_rows: list[int] = field(default_factory=list)
    """Steps logged more than once, every time with the same values (before checkpoint 0
    was written, earlier versions logged step 0's row again on resume)."""
    conflicting_rows: list[int] = field(default_factory=list)
    stepless_rows: int = 0
    leftovers: list[Path] = field(default_factory=list)
    """Temporary files and directories of interrupted atomic writes."""

    @property
    def last_step(self) -> int | None:
        return self.steps[-1] if self.steps else None

    @property
    def uncommitted(self) -> list[int]:
        """Checkpoint directories manifest.json does not list."""
        return [s for s in self.step_dirs if s not in self.steps]

    @property
    def residue(self) -> int | None:
        """The one uncommitted checkpoint directory that a kill while saving it leaves (it is
        after the last committed step); None when there is none, or more than a kill leaves."""
        uncommitted = self.uncommitted
        last = self.last_step
        if len(uncommitted) == 1 and (last is None or uncommitted[0] > last):
            return uncommitted[0]
        return None

    @property
    def unborn(self) -> bool:
        """Killed while being created: no config.json and nothing trained or logged yet."""
        return (self.config_error == "missing" and self.manifest_error is None and not self.steps
                and not self.uncommitted and not self.metrics.rows and not self.metrics.bad_lines)

    def damage(self) -> list[str]:
        """What a resume cannot repair, each naming its file (empty: none)."""
        path, out = self.path, []
        if self.config_error and not self.unborn:
            out.append(f"{path / CONFIG_FILE} is {self.config_error}")
        if self.manifest_error:
            out.append(f"{path / MANIFEST_FILE} is {self.manifest_error}")
        gone = [s for s in self.steps if s not in self.step_dirs]
        if gone:
            out.append(f"{path / MANIFEST_FILE} lists steps {_listing(gone)} that have no directory under "
                       f"{path / CHECKPOINTS_DIR}")
        if self.uncommitted and self.residue is None:
            where = (f"{path / MANIFEST_FILE} is missing" if not (path / MANIFEST_FILE).exists()
                     else f"{path / MANIFEST_FILE} does not list them")
            out.append(f"{path / CHECKPOINTS_DIR} holds steps {_listing(self.uncommitted)}, but {where}")
        metrics = path / METRICS_FILE
        if self.metrics.bad_lines:
            out.append(str(self.metrics.first_bad_line_error()))
        if self.stepless_rows:
            out.append(f"{metrics}: {self.stepless_rows} rows have no integer step")
        if self.missing_rows:
            out.append(f"{metrics} lacks the rows of steps {_listing(self.missing_rows)}, logged before the last "
                       f"checkpoint (step {self.last_step})")
        if self.conflicting_rows:
            out.append(f"{metrics} logs steps {_listing(self.conflicting_rows)} more than once with different "
                       "values (two runs in one directory?)")
        if self.unexpected_rows:
            out.append(f"{metrics} has rows at steps {_listing(self.unexpected_rows)}, where this run's config "
                       "logs none (two runs in one directory?)")
        return out

    def repairs(self) -> list[str]:
        """The leftovers of a killed writer that a resume removes, each naming its file."""
        out = []
        if self.exists and self.unborn:
            out.append(f"{self.path / CONFIG_FILE} is missing (killed while the run was created)")
        if self.metrics.torn_line is not None:
            out.append(f"{self.path / METRICS_FILE}: line {self.metrics.torn_line} is torn (killed mid-append)")
        if self.repeated_rows:
            out.append(f"{self.path / METRICS_FILE} repeats the rows of steps {_listing(self.repeated_rows)}")
        if self.residue is not None:
            out.append(f"{self.path / CHECKPOINTS_DIR / step_dirname(self.residue)} was never listed in "
                       f"{MANIFEST_FILE} (killed while saving it)")
        if self.leftovers:
            out.append(f"{len(self.leftovers)} temporary files of interrupted writes, e.g. {self.leftovers[0]}")
        return out

    def problems(self) -> list[str]:
        """Everything out of the ordinary: `damage()`, then `repairs()`."""
        return self.damage() + self.repairs()


def _check_rows(rows: list[dict[str, Any]], config: Mapping[str, Any] | None, last: int | None) -> dict[str, Any]:
    """The row problems of a metrics log against its run's config and last checkpoint."""
    stepless = sum(not isinstance(r.get("step"), int) for r in rows)
    by_step: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        if isinstance(row.get("step"), int) and (last is None or row["step"] <= last):
            by_step.setdefault(row["step"], []).append(row)
    repeated = sorted(s for s, rs in by_step.items() if len(rs) > 1 and all(r == rs[0] for r in rs))
    conflicting = sorted(s for s, rs in by_step.items() if len(rs) > 1 and any(r != rs[0] for r in rs))
    missing: list[int] = []
    unexpected: list[int] = []
    train = config.get("train") if isinstance(config, Mapping) else None
    if last is not None and isinstance(train, Mapping):
        evaluated = any(set(r) - _TRAINING_KEYS for r in rows)
        expected = logged_steps(train, last, evaluated)
        if expected is not None:
            required, allowed = expected
            missing = sorted(required - set(by_step))
            unexpected = sorted(set(by_step) - allowed)
    return dict(missing_rows=missing, unexpected_rows=unexpected, repeated_rows=repeated,
                conflicting_rows=conflicting, stepless_rows=stepless)


class ModelShape(Protocol):
    """The sizes of a checkpoint source's model that probes and figures need (a run's
    `ModelConfig`, a suite's `interp.suites.SuiteModelConfig`)."""

    @property
    def n_layers(self) -> int: ...
    @property
    def n_heads(self) -> int: ...
    @property
    def d_model(self) -> int: ...
    @property
    def d_vocab(self) -> int: ...
    @property
    def n_ctx(self) -> int: ...


class CheckpointSource(Protocol):
    """What the probe runner (`interp.probing.probe`, which runs every kind of probe) and the
    CLI read from a sequence of checkpoints: a run directory (`Run`) or a checkpoint suite in
    Hugging Face format, such as Pythia's revisions (`interp.suites.CheckpointSuite`).

    Results derived from the checkpoints (the probe cache `probes/`, `figures/`) live under
    `path`, written under `lock()`; `checkpoint_hash(step)` identifies a checkpoint's weights,
    so a cached result is reused only for the weights it was computed on."""

    path: Path
    """The directory of results derived from these checkpoints (a run: the run directory)."""
    dtype: torch.dtype
    """The floating-point type the checkpoints load in: it changes every number computed
    from them, so it is part of a cached result's key."""

    @property
    def steps(self) -> list[int]:
        """The checkpoints' training steps, ascending."""
        ...

    @property
    def config(self) -> dict[str, Any]:
        """The source's configuration as a JSON object (a run: its config.json)."""
        ...

    @property
    def model_config(self) -> ModelShape: ...

    @property
    def tokenizer(self) -> Any | None:
        """The tokenizer of a source with one, so probe batches may be text; None otherwise."""
        ...

    def load(self, step: int | None = None, device: str | torch.device | None = None,
             into: TransformerBridge | None = None) -> TransformerBridge:
        """The model at `step` (default: the last), in eval mode; `into`, a model this source
        loaded, is reused, so walking the checkpoints keeps one model in memory."""
        ...

    def checkpoint_hash(self, step: int) -> str: ...

    def lock(self) -> AbstractContextManager[None]: ...

    def metrics(self) -> list[dict[str, Any]]:
        """The training log, one row per logged step (a suite: none)."""
        ...


class Run:
    """A run directory opened for reading (and, by the trainer, for writing).

    >>> run = Run.open("runs/induction")
    >>> run.steps, run.model_config
    >>> model = run.load(step=run.steps[-1])
    """

    dtype = torch.float32
    """Checkpoints load in float32 (a bfloat16-trained run keeps float32 master weights)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def open(cls, path: str | Path) -> Run:
        run = cls(path)
        if not (run.path / CONFIG_FILE).exists():
            raise FileNotFoundError(f"{run.path} is not a run directory: no {CONFIG_FILE}")
        return run

    @classmethod
    def create(cls, path: str | Path, config: dict[str, Any]) -> Run:
        run = cls(path)
        (run.path / CHECKPOINTS_DIR).mkdir(parents=True, exist_ok=True)
        atomic_write_json(run.path / CONFIG_FILE, config)
        return run

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, steps={len(self.steps)})"

    def lock(self) -> AbstractContextManager[None]:
        """This run's writer lock (`run_lock`), as a context manager."""
        return run_lock(self.path)

    @property
    def tokenizer(self) -> None:
        """None: the toolkit's runs are tokenizer-less (probe batches are token ids)."""
        return None

    # --- reading ---
    @property
    def config(self) -> dict[str, Any]:
        return read_json(self.path / CONFIG_FILE)

    @property
    def model_config(self) -> ModelConfig:
        return from_dict(ModelConfig, self.config["model"])

    @property
    def manifest(self) -> dict[str, dict[str, str]]:
        path = self.path / MANIFEST_FILE
        if not path.exists():
            return {}
        manifest = read_json(path)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("checkpoints"), dict):
            raise RunDamagedError(f"{path} has no 'checkpoints' mapping")
        return manifest["checkpoints"]

    @property
    def steps(self) -> list[int]:
        return sorted(int(s) for s in self.manifest)

    def checkpoint_dir(self, step: int) -> Path:
        return self.path / CHECKPOINTS_DIR / step_dirname(step)

    def _entry(self, step: int) -> dict[str, str]:
        manifest = self.manifest
        if str(step) not in manifest:
            raise CheckpointError(f"no checkpoint at step {step} in {self.path}; available steps: {self.steps}")
        return manifest[str(step)]

    def _verified_file(self, step: int, name: str) -> Path:
        expected = self._entry(step)[name]
        path = self.checkpoint_dir(step) / name
        if not path.exists():
            raise CheckpointError(f"checkpoint file missing: {path}")
        if sha256_file(path) != expected:
            raise CheckpointError(f"checkpoint file {path} does not match its sha256 in {MANIFEST_FILE}")
        return path

    def last_step(self) -> int:
        """The last committed checkpoint's step; a run without one is an error that says so."""
        steps = self.steps
        if not steps:
            raise CheckpointError(f"{self.path} has no checkpoints: {MANIFEST_FILE} lists none "
                                  f"({'it is missing' if not (self.path / MANIFEST_FILE).exists() else 'empty'})")
        return steps[-1]

    def load_state_dict(self, step: int) -> dict[str, torch.Tensor]:
        return load_file(self._verified_file(step, WEIGHTS_FILE))

    def load(
        self, step: int | None = None, device: str | torch.device | None = None, into: TransformerBridge | None = None
    ) -> TransformerBridge:
        """The model at `step` (default: last), hash-verified, in eval mode.

        `into` reuses a model of this run's config (its weights are overwritten),
        which skips building a bridge: most of the cost of walking checkpoints.
        """
        step = self.last_step() if step is None else step
        state = self.load_state_dict(step)
        model = build_model(self.model_config, device=device) if into is None else into
        load_model_state_dict(model, state)
        return model.eval()

    def load_training_state(self, step: int) -> dict[str, Any]:
        """Optimizer state and step (the data position), loaded without unpickling code."""
        path = self._verified_file(step, STATE_FILE)
        try:
            return torch.load(path, weights_only=True)
        except pickle.UnpicklingError as err:
            # torch's message advises loading with weights_only=False, i.e. running the file's code: leave that out.
            detail = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line),
                          "it holds more than tensors and plain data")
            raise RunDamagedError(f"{path}: refused to unpickle ({detail}); the toolkit's {STATE_FILE} holds only "
                                  "tensors and plain data, so this file was not written by it") from None

    def checkpoint_hash(self, step: int) -> str:
        return self._entry(step)[WEIGHTS_FILE]

    def __iter__(self) -> Iterator[tuple[int, TransformerBridge]]:
        for step in self.steps:
            yield step, self.load(step)

    def metrics(self) -> list[dict[str, Any]]:
        """Every logged row of `metrics.jsonl` (each has a `step`).

        A torn last line (a writer killed mid-append) is left out with a warning; a damaged
        line, a log that lacks rows logged before the last checkpoint, or one that logs a step
        twice with different values, raises an error naming the file instead of handing back a
        shortened or mixed curve."""
        path = self.path / METRICS_FILE
        # The manifest first: a checkpoint is listed only after its rows are on disk, so rows read
        # after it cover it even while a writer goes on (read the other way, a checkpoint
        # committed in between would seem to lack its rows).
        steps = self.steps
        rows = read_jsonl(path)
        config = self.config if (self.path / CONFIG_FILE).exists() else None
        problems = _check_rows(rows, config, steps[-1] if steps else None)
        if problems["missing_rows"]:
            raise RunDamagedError(f"{path} lacks the rows of steps {_listing(problems['missing_rows'])}, logged before "
                                  f"the last checkpoint (step {steps[-1]}); the log is damaged")
        if problems["conflicting_rows"]:  # a curve through them would zigzag between two runs
            raise RunDamagedError(f"{path} logs steps {_listing(problems['conflicting_rows'])} more than once with "
                                  "different values (two runs in one directory?); the log is damaged")
        return rows

    def series(self, key: str, until: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one logged metric (up to step `until` if given)."""
        metrics = self.metrics()
        rows = [r for r in metrics if key in r and (until is None or r["step"] <= until)]
        if not rows:
            keys = sorted({k for r in metrics for k in r} - {"step"})
            raise KeyError(f"metric {key!r} is not in {self.path / METRICS_FILE}; logged: {keys}")
        return np.array([r["step"] for r in rows]), np.array([r[key] for r in rows], dtype=float)

    def inspect(self) -> RunState:
        """What this directory holds and whether it is consistent (`RunState`); reads the
        config, manifest and metrics log and lists the checkpoints, without hashing."""
        path = self.path
        names = {CONFIG_FILE, CHECKPOINTS_DIR, METRICS_FILE, MANIFEST_FILE}
        exists = path.is_dir() and any((path / name).exists() for name in names)
        config: Any = None
        config_error = None
        if not (path / CONFIG_FILE).exists():
            config_error = "missing"
        else:
            try:
                config = self.config
            except RunDamagedError as err:
                config_error = f"unreadable: {err}"
        manifest_error, steps = None, []
        try:
            steps = self.steps
        except (RunDamagedError, ValueError) as err:
            manifest_error = f"unreadable: {err}"
        checkpoints = path / CHECKPOINTS_DIR
        entries = sorted(checkpoints.iterdir()) if checkpoints.is_dir() else []
        step_dirs = sorted(int(m.group(1)) for e in entries if (m := _STEP_DIR.fullmatch(e.name)) and e.is_dir())
        leftovers = [e for d in (path, checkpoints, path / PROBES_DIR) if d.is_dir()
                     for e in sorted(d.iterdir()) if is_temporary(e.name)]
        scan = scan_jsonl(path / METRICS_FILE)
        rows = _check_rows(scan.rows, config, steps[-1] if steps else None)
        return RunState(path, exists, config_error, manifest_error, steps, step_dirs, scan, leftovers=leftovers,
                        **rows)

    # --- writing (by the holder of the run's lock) ---
    def save_checkpoint(self, step: int, model: TransformerBridge, state: dict[str, Any]) -> None:
        weights = {k: v.detach().contiguous().cpu() for k, v in model_state_dict(model).items()}
        # A checkpoint is what later analyses trust: one with NaN or infinite weights would
        # load, hash-verify and probe as if it were a trained model.
        bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise NonFiniteError(f"{self.path}: the weights at step {step} are not finite ({', '.join(bad[:3])}"
                                 f"{', ...' if len(bad) > 3 else ''}); the checkpoint was not written")
        final = self.checkpoint_dir(step)
        tmp = final.with_name(f".tmp_{final.name}.{os.getpid()}.{secrets.token_hex(4)}")
        tmp.mkdir(parents=True)
        try:
            save_safetensors(weights, tmp / WEIGHTS_FILE, final / WEIGHTS_FILE)
            torch.save(state, tmp / STATE_FILE)
            for name in (WEIGHTS_FILE, STATE_FILE):
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
            hashes = {name: sha256_file(tmp / name) for name in (WEIGHTS_FILE, STATE_FILE)}
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(final.parent)
        manifest = self.manifest
        manifest[str(step)] = hashes
        atomic_write_json(self.path / MANIFEST_FILE, {"checkpoints": manifest})

    def truncate_metrics(self, after_step: int | None) -> None:
        """Keep only the rows logged up to `after_step` (None: none), each once: rows after the
        last checkpoint are work lost by a kill, redone on resume, and a torn line goes too."""
        rows: list[dict[str, Any]] = []
        kept: dict[int, dict[str, Any]] = {}
        for row in scan_jsonl(self.path / METRICS_FILE).rows:
            step = row.get("step")
            if after_step is None or not isinstance(step, int) or step > after_step or kept.get(step) == row:
                continue
            kept.setdefault(step, row)
            rows.append(row)
        path = self.path / METRICS_FILE
        data = "".join(dumps_json(r, path) + "\n" for r in rows).encode()
        if not path.exists() or path.read_bytes() != data:  # a finished run's log is left untouched
            atomic_write_bytes(path, data)

    def log_metrics(self, rows: list[dict[str, Any]]) -> None:
        append_jsonl(self.path / METRICS_FILE, rows)

    def remove_leftovers(self, state: RunState) -> None:
        """Delete the temporary files and the uncommitted checkpoint directory a killed writer
        left (`state.repairs()`); only the holder of the run's lock may call this."""
        for path in state.leftovers:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if state.residue is not None:
            shutil.rmtree(self.checkpoint_dir(state.residue), ignore_errors=True)
