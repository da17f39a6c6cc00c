"""The `interp` command (`parser.DESCRIPTION`): one module per command, the parser, and
`errors`, which ends a command that failed in one line (an expected error) or its traceback
(a bug)."""

from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Callable
from contextlib import ExitStack

from interp.cli.errors import (
    EXIT_ERROR,
    QuietJobTracebacks,
    end_broken_pipe,
    report_error,
    report_interrupt,
    report_jobs_failed,
)
from interp.cli.parser import build_parser
from interp.parallel import JobsFailed


def _command_function(args: argparse.Namespace) -> Callable[[argparse.Namespace], int | None]:
    """The function of the command `args` names ("module:function", set by the parser), its
    module imported now: only the command that runs pays for its imports (torch, TransformerLens)."""
    module, function = args.fn.split(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a bad argument (argparse named it): a code, not an exception
        return exit_.code if isinstance(exit_.code, int) else EXIT_ERROR
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    quiet = QuietJobTracebacks()
    parallel_log = logging.getLogger("interp.parallel")
    if not args.debug:
        parallel_log.addFilter(quiet)
    try:
        command = _command_function(args)
        with ExitStack() as threads:
            if "torch_threads" in args:  # a command that computes here (`_add_threads_arg`), for its duration
                from interp.devices import default_threads, torch_threads

                threads.enter_context(torch_threads(args.torch_threads or default_threads()))
            return command(args) or 0
    except KeyboardInterrupt as err:
        return report_interrupt(err, args)
    except JobsFailed as err:
        return report_jobs_failed(err, args)
    except BrokenPipeError:
        return end_broken_pipe()
    except Exception as err:
        code = report_error(err, args)
        if code is None:
            raise  # a bug: its traceback is what a report needs
        return code
    finally:
        parallel_log.removeFilter(quiet)
