"""How a command ends when something goes wrong: one line and exit code 2 for an expected
error, the traceback for a bug, 130 and the resume command for Ctrl-C.

Expected are the toolkit's own errors (`interp.errors.InterpError`) and what the machine
reports: an `OSError` with an errno (a full disk, a read-only or forbidden path, ...), a
failed allocation, and torch's text of a checkpoint write that failed on a full disk.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import multiprocessing
import os
import re
import shutil
import sys
import threading
import traceback
from concurrent.futures import InvalidStateError
from pathlib import Path

from interp.errors import ErrorRecord
from interp.parallel import JobsFailed

# Every command imports this module, so it imports no command's module (they load torch and
# TransformerLens): `interp.cli.run`, `interp.cli.sweep` and `interp.memory` are imported
# where an error of theirs is reported, once they are loaded anyway.

EXIT_FAILED = 1  # a check failed (`info --verify`) or a job raised an unexpected error
EXIT_ERROR = 2  # an expected error: bad input, a refused directory, a full disk ... (argparse's code too)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE

# torch.save on a full disk raises a RuntimeError without an errno: "[enforce fail at
# inline_container.cc:672] . unexpected pos 28352 vs 28244", after "PytorchStreamWriter failed
# writing file ..." or "basic_ios::clear: iostream error".
_TORCH_WRITE_FAILED = re.compile(r"unexpected pos \d+ vs \d+|PytorchStreamWriter failed writing|basic_ios::clear")


def _free_space(where: Path | None) -> str:
    from interp.memory import format_bytes

    probe_at = where
    while probe_at is not None and not probe_at.exists() and probe_at != probe_at.parent:
        probe_at = probe_at.parent
    try:
        return format_bytes(shutil.disk_usage(probe_at or Path.cwd()).free)
    except OSError:
        return "unknown"


def _os_error(number: int, strerror: str, filename: str | None, where: Path | None) -> str:
    target = filename or (f"under {where}" if where else "a file")
    if number in (errno.ENOSPC, errno.EDQUOT):
        cause = "no space left on device" if number == errno.ENOSPC else "disk quota exceeded"
        return f"{cause} while writing {target} ({_free_space(Path(filename) if filename else where)} free)"
    if number == errno.EROFS:
        return f"read-only file system: cannot write {target}"
    if number in (errno.EACCES, errno.EPERM):
        return f"permission denied: {target}"
    if number == errno.ENOMEM:
        return "out of memory: the machine could not allocate what this config needs"
    return f"{strerror or errno.errorcode.get(number, 'error')}: {target}"


def _disk_full(error: ErrorRecord) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT) or bool(_TORCH_WRITE_FAILED.search(error.message))


def explain(error: ErrorRecord, where: Path | None = None) -> str | None:
    """One line naming the cause of an expected error; None for an unexpected one (a bug).
    `where` is the directory being written."""
    message = error.message
    if error.expected:
        return " ".join(message.split()) if "\n" in message else message
    if error.errno is not None:
        return _os_error(error.errno, error.strerror, error.filename, where)
    if _TORCH_WRITE_FAILED.search(message):
        return (f"writing a checkpoint under {where or 'the run directory'} failed, most likely no space left on "
                f"device ({_free_space(where)} free; torch: {message.splitlines()[0].strip()})")
    if error.out_of_memory == "device":
        return f"out of GPU memory ({message.splitlines()[0]}); reduce train.batch_size or the model size"
    if error.out_of_memory == "host":
        return "out of memory: the machine could not allocate what this config needs; reduce the model or batch size"
    return None


def _written_dir(args: argparse.Namespace) -> Path | None:
    """The directory the command writes (or reads), which an error about a file under it names."""
    if args.command == "run":
        from interp.cli.run import output_dir

        return output_dir(args)
    if args.command == "sweep":
        from interp.cli.sweep import sweep_dir

        return sweep_dir(args)
    return Path(args.dir) if hasattr(args, "dir") else None


def _resume_command(args: argparse.Namespace) -> str:
    from interp.cli.run import resume_command

    return resume_command(args)


def report_error(err: Exception, args: argparse.Namespace) -> int | None:
    """Print an expected error's line (and with --debug its traceback); its exit code. None
    for a bug, which the caller re-raises so that its traceback shows."""
    error = ErrorRecord.of(err)
    message = explain(error, _written_dir(args))
    if message is None:
        return None
    if args.debug:
        print(error.traceback, file=sys.stderr, end="")
    # A full disk can strike after runs were trained (figures, report): resuming redoes only what is missing.
    hint = f"; once space is freed, resume with: {_resume_command(args)}" \
        if _disk_full(error) and args.command == "run" else ""
    print(f"interp {args.command}: error: {message}{hint}", file=sys.stderr)
    return EXIT_ERROR


def report_jobs_failed(err: JobsFailed, args: argparse.Namespace) -> int:
    """A line per failed job; the traceback of each unexpected one (of all with --debug)."""
    where = _written_dir(args)
    lines, unexpected, resumable = [], [], False
    for index, error in sorted(err.errors.items()):
        explained = explain(error, where)
        if explained is None:
            unexpected.append(index)
        resumable |= explained is None or error.resumable
        lines.append(f"{err.labels[index]}: {explained or error}")
    for index in unexpected:  # a bug: its traceback matters (the log of each job's traceback is silenced)
        print(err.errors[index].traceback, file=sys.stderr, end="")
    if args.debug:
        for index in sorted(set(err.errors) - set(unexpected)):
            print(err.errors[index].traceback, file=sys.stderr, end="")
    hint = f"; once the cause is fixed, resume with: {_resume_command(args)}" \
        if resumable and args.command == "run" else ""
    head = f"interp {args.command}: error: "
    if len(lines) == 1:
        print(f"{head}{lines[0]}{hint}", file=sys.stderr)
    else:
        print(f"{head}{len(lines)} of {err.total} jobs failed (the others finished):", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)
        if hint:
            print(f"  {hint.lstrip('; ')}", file=sys.stderr)
    return EXIT_FAILED if unexpected else EXIT_ERROR


def report_interrupt(err: KeyboardInterrupt, args: argparse.Namespace) -> int:
    """Ctrl-C: the workers stopped, one line (with the command that resumes `interp run`)."""
    if args.debug:
        traceback.print_exception(err)
    _stop_workers()
    hint = {"run": f"; resume with: {_resume_command(args)}" if args.command == "run" else "",
            "sweep": "; run the same command again to finish the sweep (finished points are kept)"}
    print(f"interp {args.command}: interrupted{hint.get(args.command, '')}", file=sys.stderr)
    return EXIT_INTERRUPTED


def end_broken_pipe() -> int:
    """`interp list | head`: the reader left; end quietly, as a killed pipe writer does."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
    return EXIT_BROKEN_PIPE


class QuietJobTracebacks(logging.Filter):
    """Drops `run_all`'s log of each failed job's traceback: the CLI reports the failures
    itself (a line each, the traceback of an unexpected one, all of them with --debug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("job %d failed")


def _stop_workers() -> None:
    """End this process's worker processes after Ctrl-C.

    Workers of a local pool get the Ctrl-C too, but survive it (a job's KeyboardInterrupt is
    sent back as its result and the worker takes the next job), and the pool's exit handler
    would wait for them to finish their runs. A worker ended here loses only the work after
    its run's last checkpoint, which `--resume` redoes."""
    children = multiprocessing.active_children()
    if not children:
        return
    previous = threading.excepthook

    def quiet(hook: threading.ExceptHookArgs) -> None:
        # Python 3.11: the manager thread of the pool these workers leave broken sets an error on
        # futures the interrupted pool had cancelled, and dies printing InvalidStateError.
        if not issubclass(hook.exc_type, InvalidStateError):
            previous(hook)

    threading.excepthook = quiet
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout=10)
