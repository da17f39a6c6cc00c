"""The toolkit's expected errors, and any exception as plain data.

An `InterpError` is expected: bad input, a damaged or busy run, a resource limit. Its
message is one line naming the field or file and what was expected, and the command line
prints just that line; any other exception is a bug and keeps its traceback. Each class
below is also the builtin error it refines (`InputError` is a `ValueError`, ...), so code
that catches the builtin catches it too.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal


class InterpError(Exception):
    """An expected error of the toolkit: bad input, a damaged or busy run, a resource limit;
    its message is one line naming the field or file and what was expected."""

    resumable: ClassVar[bool] = True
    """Whether repeating the command (`interp run ... --resume`) can succeed once the cause is
    fixed; False where the same input fails the same way again."""

    def __str__(self) -> str:
        # A KeyError shows the repr of its message; the toolkit's message is the text itself.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InputError(InterpError, ValueError):
    """A value the toolkit refuses: an argument, a batch, the content of a file it reads."""

    resumable = False


class UnknownNameError(InterpError, KeyError):
    """A name (an analysis, a preset, a checkpoint step, a batch key, a hook) that is not among
    the available ones, which the message lists."""

    resumable = False


class MissingFileError(InterpError, FileNotFoundError):
    """A file or directory the toolkit was pointed at, or needs, is not there."""


class OutputExistsError(InterpError, FileExistsError):
    """An output directory already holds something a command would overwrite."""

    resumable = False


class MissingDependencyError(InterpError, ImportError):
    """An optional dependency a chosen feature needs is not installed."""



def listing(items: Sequence[object], limit: int = 6) -> str:
    """`items` for a one-line message: `[a, b, c]`, or the first `limit` and how many in all."""
    shown = ", ".join(str(i) for i in items[:limit])
    return f"[{shown}]" if len(items) <= limit else f"[{shown}, ... ({len(items)} in all)]"


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (its type where it has none), to quote in a one-line error."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@dataclass(frozen=True)
class ErrorRecord:
    """An exception as plain data: what a failed job sends back from its worker (an exception
    whose `__init__` takes other arguments than its message does not pickle back), and what
    the command line explains in one line."""

    type_name: str
    message: str
    traceback: str = ""
    expected: bool = False
    """An `InterpError`."""
    resumable: bool = True
    """`InterpError.resumable`; True for any other error (a rerun may pass)."""
    errno: int | None = None
    """An `OSError`'s errno, strerror and filename: the condition the operating system reported."""
    strerror: str = ""
    filename: str | None = None
    out_of_memory: Literal["", "host", "device"] = ""
    """Where an allocation failed: "host" (a `MemoryError`), "device" (torch's `OutOfMemoryError`)."""

    @classmethod
    def of(cls, err: BaseException) -> ErrorRecord:
        os_error = err if isinstance(err, OSError) else None
        torch = sys.modules.get("torch")  # not imported here: torch raised `err` only if something imported it
        return cls(type_name=type(err).__name__, message=str(err),
                   traceback="".join(traceback.format_exception(err)),
                   expected=isinstance(err, InterpError),
                   resumable=err.resumable if isinstance(err, InterpError) else True,
                   errno=os_error.errno if os_error else None,
                   strerror=(os_error.strerror or "") if os_error else "",
                   filename=None if os_error is None or os_error.filename is None else str(os_error.filename),
                   out_of_memory="device" if torch is not None and isinstance(err, torch.OutOfMemoryError)
                   else "host" if isinstance(err, MemoryError) else "")

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"
