"""Run independent jobs (one training run, or one sweep point, each) on several
processes: a local pool (`map_processes`, `imap_processes`, `LocalBackend`) or a
Ray cluster (`RayBackend`). Analyses and sweeps take any `Backend`.

Each worker process gets `torch_threads` intra-op threads (default: the cores
divided among the workers), because two processes that each use every core
run several times slower than one after the other. Workers are spawned, so
`fn` must be a module-level function and its arguments picklable. A local pool
stays up for later calls in the same process (an analysis that runs its jobs in
stages pays the workers' start-up and imports, ~10 s, once); it ends with the process.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

from interp.devices import available_cores, set_threads, torch_threads
from interp.errors import ErrorRecord, MissingDependencyError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _init_worker(threads: int) -> None:
    set_threads(threads)


_pools: dict[tuple[int, int], ProcessPoolExecutor] = {}


def _pool(workers: int, threads: int) -> ProcessPoolExecutor:
    """The process pool of this size, started on first use and kept for later calls."""
    if (workers, threads) not in _pools:
        context = multiprocessing.get_context("spawn")
        _pools[workers, threads] = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                                       initargs=(threads,))
    return _pools[workers, threads]


@atexit.register
def _shutdown_pools() -> None:
    for pool in _pools.values():
        pool.shutdown(cancel_futures=True)
    _pools.clear()


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
    pool = _pool(workers, threads)
    futures = {pool.submit(fn, item): index for index, item in enumerate(items)}
    try:
        for future in as_completed(futures):
            yield futures[future], future.result()
    except BrokenProcessPool:
        _pools.pop((workers, threads), None)  # a worker died; the next call starts a new pool
        raise
    finally:
        for future in futures:  # the caller stopped early: its queued jobs are not run
            future.cancel()


def map_processes(fn: Callable[[Any], T], items: Sequence[Any], workers: int = 0, torch_threads: int = 0) -> list[T]:
    """`[fn(item) for item in items]`, computed by `workers` processes.

    `workers=0` uses one per core (at most one per item); `workers=1` runs in
    this process. Failing jobs raise `JobsFailed` once every job has ended.
    """
    return run_all(fn, items, LocalBackend(workers, torch_threads))


# --- backends: where a list of independent jobs runs ---------------------------------------------


class Backend(Protocol):
    def imap(self, fn: Callable[[Any], T], items: Sequence[Any]) -> Iterator[tuple[int, T]]:
        """`(index, fn(items[index]))` for every item, as they finish."""
        ...


@dataclass(frozen=True)
class LocalBackend:
    """A pool of `workers` processes on this machine (0: one per core), each with
    `torch_threads` threads (0: the cores divided among the workers)."""

    workers: int = 0
    torch_threads: int = 0

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers: expected an integer >= 0, got {self.workers}")
        if self.torch_threads < 0:
            raise ValueError(f"torch_threads: expected an integer >= 0, got {self.torch_threads}")

    def imap(self, fn: Callable[[Any], T], items: Sequence[Any]) -> Iterator[tuple[int, T]]:
        workers = min(self.workers or available_cores(), max(1, len(items)))
        if workers == 1:  # in this process, with its threads unless told otherwise
            for index, item in enumerate(items):
                yield index, _with_threads(fn, item, self.torch_threads) if self.torch_threads else fn(item)
            return
        yield from imap_processes(fn, items, workers, self.torch_threads or max(1, available_cores() // workers))


def _with_threads(fn: Callable[[Any], T], item: Any, threads: int) -> T:
    with torch_threads(threads):
        return fn(item)


@dataclass(frozen=True)
class RayBackend:
    """Ray tasks (one per job) of `cpus_per_job` CPUs (and `gpus_per_job` GPUs), each with
    `torch_threads` threads (0: `cpus_per_job`). `address` is a running cluster
    (`"auto"`, `"ray://host:10001"`); None starts a local instance for these jobs."""

    address: str | None = None
    cpus_per_job: int = 1
    gpus_per_job: float = 0.0
    torch_threads: int = 0
    init_kwargs: dict[str, Any] = field(default_factory=dict)

    def imap(self, fn: Callable[[Any], T], items: Sequence[Any]) -> Iterator[tuple[int, T]]:
        try:
            import ray
        except ImportError as err:
            raise MissingDependencyError("the ray backend needs Ray: pip install 'interp-dynamics[ray]'") from err
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, **self.init_kwargs)
        try:
            remote = ray.remote(num_cpus=self.cpus_per_job, num_gpus=self.gpus_per_job)(_with_threads)
            threads = self.torch_threads or self.cpus_per_job
            index_of = {remote.remote(fn, item, threads): i for i, item in enumerate(items)}
            pending = list(index_of)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield index_of[done[0]], ray.get(done[0])
        finally:
            if started:
                ray.shutdown()


class JobsFailed(RuntimeError):
    """Some jobs of `run_all` raised; every other job ran to its end, so a re-run
    with resume repeats only these. `errors` maps the failed jobs' indices to what
    they raised, `labels` to their names; `total` jobs ran."""

    def __init__(self, errors: dict[int, ErrorRecord], labels: dict[int, str], total: int):
        self.errors, self.labels, self.total = errors, labels, total
        listed = "; ".join(f"{labels[i]}: {errors[i]}" for i in sorted(errors))
        super().__init__(f"{len(errors)} of {total} jobs failed (the others finished): {listed}")


@dataclass(frozen=True)
class _Outcome:
    value: Any = None
    error: ErrorRecord | None = None


def _capture(fn: Callable[[Any], T], item: Any) -> _Outcome:
    try:
        return _Outcome(value=fn(item))
    except Exception as err:  # noqa: BLE001 - reported with the others in JobsFailed
        return _Outcome(error=ErrorRecord.of(err))


def run_all(fn: Callable[[Any], T], items: Sequence[Any], backend: Backend) -> list[T]:
    """`[fn(item) for item in items]` on `backend`, in the order of `items`.

    A failing job does not stop the others: once all have ended, `JobsFailed`
    names every failure (by the item's `name` attribute where it has one)."""
    outcomes: dict[int, _Outcome] = dict(backend.imap(partial(_capture, fn), items))
    errors = {i: outcome.error for i, outcome in sorted(outcomes.items()) if outcome.error is not None}
    if errors:
        for i, error in errors.items():
            logger.warning("job %d failed:\n%s", i, error.traceback)
        labels = {i: str(getattr(items[i], "name", "") or f"job {i}") for i in errors}
        raise JobsFailed(errors, labels, len(items))
    return [outcomes[i].value for i in range(len(items))]
