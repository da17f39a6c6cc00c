"""Writing and reading the toolkit's files: atomic writes, strict JSON and JSONL, hashing.

Every write is atomic (a temporary name beside the file, fsync, rename), so a writer killed at
any moment leaves each file either whole or as it was; the temporary files it may leave behind
are named so that `is_temporary` tells them apart. Every JSON file is strict JSON: NaN and
infinities are refused when written and when read.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from interp.errors import InputError, InterpError
from interp.run_layout import RunDamagedError

logger = logging.getLogger(__name__)


class JsonlError(InterpError, ValueError):
    """A line of a JSONL file that is not a JSON object (not the torn last line of a killed append)."""


class NonFiniteError(InputError):
    """A NaN or infinity where the toolkit only stores finite numbers."""



def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)



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
    fsync_dir(path.parent)


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


def pickle_refusal(err: Exception) -> str:
    """Why `torch.load(weights_only=True)` refused a pickle, in a few words: the global it asked
    for. (torch's own message advises loading with weights_only=False, i.e. running the file's
    code: that is left out.)"""
    return next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line),
                "it holds more than tensors and plain data")


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


def bytes_in(path: Path) -> int:
    """The bytes of every file under `path` (not following links: what the folder itself takes)."""
    return sum(entry.lstat().st_size for entry in path.rglob("*") if not entry.is_dir() or entry.is_symlink())


def is_temporary(name: str) -> bool:
    """Whether `name` is a temporary file or directory of an atomic write (`temp_path`,
    `Run.save_checkpoint`), which only a killed writer leaves behind."""
    return name.startswith(".tmp_step_") or (name.startswith(".") and name.endswith(".tmp"))

