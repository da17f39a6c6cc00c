"""Where a computation runs: the device a `--device` value or `None` names, and how many CPU
threads torch uses for it (`set_threads`, `torch_threads`, `default_threads`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from interp.errors import InputError

if TYPE_CHECKING:
    import torch

# torch is imported in the functions: the command line imports this module (through
# interp.parallel) and starts without torch.


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None`/`"auto"`: CUDA when present, else CPU."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def available_cores() -> int:
    """The cores this process may run on (its affinity mask: a container's or a job's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_threads() -> int:
    """torch's intra-op threads for a command that computes in this process: the cores it may
    run on that other processes leave idle (its cores less the one-minute load average, at
    least 1). torch's own default, every core, spins its threads on cores that are busy: on
    a 2-core machine under a load of 3, path patching cost 23.3 s of CPU per checkpoint with 2
    threads against 9.4 s with 1, and `interp probe` / `interp circuit --method eap` took as
    long or longer in wall time with 2 (docs/performance.md#threads)."""
    cores = available_cores()
    try:
        busy = os.getloadavg()[0]
    except (OSError, AttributeError):  # no load average on this platform: every core
        return cores
    return max(1, min(cores, int(cores - busy + 0.5)))


def set_threads(threads: int) -> None:
    """Use `threads` torch intra-op threads in this process from now on (`torch.set_num_threads`;
    the inter-op pool is left alone: the toolkit runs no inter-op parallel work)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads: expected an integer >= 1, got {threads!r}")
    import torch

    torch.set_num_threads(threads)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """`set_threads(threads)` for the block, then the previous count again."""
    import torch

    previous = torch.get_num_threads()
    set_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
