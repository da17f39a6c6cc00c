"""Run independent jobs (one training run each) on several local processes.

Each worker process gets `torch_threads` intra-op threads (default: the cores
divided among the workers), because two processes that each use every core
run several times slower than one after the other. Workers are spawned, so
`fn` must be a module-level function and its arguments picklable.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _init_worker(torch_threads: int) -> None:
    torch.set_num_threads(torch_threads)


def imap_processes(fn: Callable[[Any], T], items: Sequence[Any], workers: int = 0,
                   torch_threads: int = 0) -> Iterator[tuple[int, T]]:
    """`(index, fn(items[index]))` for every item, in the order the jobs finish,
    computed by `workers` processes (see `map_processes`)."""
    if workers < 0:
        raise ValueError(f"workers: expected an integer >= 0, got {workers}")
    workers = min(workers or available_cores(), max(1, len(items)))
    if workers == 1:
        for index, item in enumerate(items):
            yield index, fn(item)
        return
    threads = torch_threads or max(1, available_cores() // workers)
    logger.info("running %d jobs on %d processes with %d torch threads each", len(items), workers, threads)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(fn, item): index for index, item in enumerate(items)}
        for future in as_completed(futures):
            yield futures[future], future.result()


def map_processes(fn: Callable[[Any], T], items: Sequence[Any], workers: int = 0, torch_threads: int = 0) -> list[T]:
    """`[fn(item) for item in items]`, computed by `workers` processes.

    `workers=0` uses one per core (at most one per item); `workers=1` runs in
    this process with its current thread count. The first exception raised by
    a job is re-raised here after the running jobs finish.
    """
    results: dict[int, T] = dict(imap_processes(fn, items, workers, torch_threads))
    return [results[i] for i in range(len(items))]
