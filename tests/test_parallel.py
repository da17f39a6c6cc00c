"""interp.parallel: results in order, one torch thread per worker, failures isolated and named."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import NamedFile, square_and_threads, worker_pid, write_file_unless_failing

from interp.parallel import JobsFailed, LocalBackend, map_processes, run_all


def test_two_workers_keep_order_and_split_threads():
    results = map_processes(square_and_threads, [3, 1, 2, 0], workers=2, torch_threads=1)
    assert [r[0] for r in results] == [9, 1, 4, 0]
    assert {r[1] for r in results} == {1}


def test_a_second_call_reuses_the_started_workers():
    first = set(map_processes(worker_pid, range(6), workers=2, torch_threads=1))
    second = set(map_processes(worker_pid, range(6), workers=2, torch_threads=1))
    assert os.getpid() not in first and second <= first


def test_one_worker_runs_in_process_with_current_threads():
    assert map_processes(square_and_threads, [2], workers=1) == [(4, torch.get_num_threads())]
    assert map_processes(square_and_threads, [], workers=2) == []


def test_a_failing_job_raises_its_error():
    with pytest.raises(JobsFailed, match="1 of 3 jobs failed.*job 1: ValueError: negative job -1") as info:
        map_processes(square_and_threads, [1, -1, 2], workers=2, torch_threads=1)
    assert list(info.value.errors) == [1]
    assert "square_and_threads" in info.value.errors[1].traceback


@pytest.mark.parametrize("backend", [LocalBackend(workers=1), LocalBackend(workers=2, torch_threads=1)])
def test_failing_jobs_do_not_stop_the_others(tmp_path, backend):
    """Every job runs even when earlier ones fail, and the failures are named."""
    jobs = [NamedFile(str(tmp_path / name)) for name in ("fail-a", "ok-b", "fail-c", "ok-d")]
    with pytest.raises(JobsFailed) as info:
        run_all(write_file_unless_failing, jobs, backend)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok-b", "ok-d"]
    assert sorted(info.value.errors) == [0, 2]
    assert str(tmp_path / "fail-a") in str(info.value) and str(tmp_path / "fail-c") in str(info.value)


def test_bad_worker_count():
    with pytest.raises(ValueError, match="workers"):
        map_processes(square_and_threads, [1], workers=-1)


class Reversed:
    """A backend that finishes the jobs in reverse order."""

    def imap(self, fn, items):
        for index in reversed(range(len(items))):
            yield index, fn(items[index])


def test_run_all_returns_results_in_item_order_whatever_the_backend():
    assert [r[0] for r in run_all(square_and_threads, [1, 2, 3], Reversed())] == [1, 4, 9]
    assert [r[0] for r in run_all(square_and_threads, [1, 2, 3], LocalBackend(workers=2, torch_threads=1))] == [1, 4, 9]


def test_one_local_worker_with_explicit_threads_sets_them_for_the_job():
    assert run_all(square_and_threads, [2], LocalBackend(workers=1, torch_threads=1)) == [(4, 1)]
    with pytest.raises(ValueError, match="torch_threads"):
        LocalBackend(torch_threads=-1)
