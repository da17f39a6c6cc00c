"""interp.parallel: results in order, one torch thread per worker, errors surface."""

from __future__ import annotations

import pytest
import torch
from helpers import square_and_threads

from interp.parallel import map_processes


def test_two_workers_keep_order_and_split_threads():
    results = map_processes(square_and_threads, [3, 1, 2, 0], workers=2, torch_threads=1)
    assert [r[0] for r in results] == [9, 1, 4, 0]
    assert {r[1] for r in results} == {1}


def test_one_worker_runs_in_process_with_current_threads():
    assert map_processes(square_and_threads, [2], workers=1) == [(4, torch.get_num_threads())]
    assert map_processes(square_and_threads, [], workers=2) == []


def test_a_failing_job_raises_its_error():
    with pytest.raises(ValueError, match="negative job -1"):
        map_processes(square_and_threads, [1, -1, 2], workers=2, torch_threads=1)


def test_bad_worker_count():
    with pytest.raises(ValueError, match="workers"):
        map_processes(square_and_threads, [1], workers=-1)
