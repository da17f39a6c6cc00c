"""Busy and read-only runs: a writer that needs a run's lock only briefly (a probe caching its
results, a circuit saving its graphs, training starting while a probe writes the run) waits for
the holder, with a message, before giving up; a run this process cannot write keeps its caches
in a per-user folder outside it (`interp.cache_dirs`), which readers look in after the run."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import D_VOCAB, N_CTX, RandomTokens, tiny_model_config, tiny_train_config
from test_circuit_graph import files_of
from test_probing import ForwardCounter

from interp import cache_dirs, locking
from interp.batches import repeated_tokens
from interp.checkpoints import Run
from interp.circuits.graph import load_graphs, read_graph_set
from interp.circuits.trace import trace
from interp.cli import main
from interp.errors import InputError
from interp.locking import RunInUseError, brief_wait
from interp.metrics import heads
from interp.probing import cached_computations, probe
from interp.run_layout import LOCK_FILE, MANIFEST_FILE, PROBES_DIR
from interp.train import train
from interp.view import example_for, example_patterns
from interp.view.circuits import saved_circuits

PERIOD = N_CTX // 2


def batch() -> dict[str, torch.Tensor]:
    return {"tokens": repeated_tokens(3, PERIOD, D_VOCAB, torch.Generator().manual_seed(0))}


def induction() -> dict:
    return {"ind": heads.induction_probe(layers=[1], period=PERIOD)}


def hold_lock(directory: Path, seconds: float, tmp_path: Path) -> subprocess.Popen:
    """Another process holding the lock of `directory` for `seconds` from when it returns."""
    ready = tmp_path / f"holding-{time.monotonic_ns()}"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import pathlib, time\nfrom interp.locking import run_lock\n"
        f"with run_lock({str(directory)!r}):\n"
        f"    pathlib.Path({str(ready)!r}).touch()\n    time.sleep({seconds})\n")])
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert holder.poll() is None and time.monotonic() < deadline, "the lock holder did not start"
        time.sleep(0.02)
    return holder


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


@pytest.fixture(autouse=True)
def default_wait(monkeypatch):
    monkeypatch.delenv(locking.BRIEF_WAIT_ENV, raising=False)


def read_only(monkeypatch) -> None:
    """As where this process cannot write the run (chmod, a read-only mount): root writes through
    mode bits, so the check itself is replaced."""
    monkeypatch.setattr(cache_dirs, "is_writable", lambda directory: False)


# --- waiting for a brief holder ------------------------------------------------------------------


def test_the_brief_wait_is_30_s_unless_INTERP_LOCK_WAIT_says_otherwise(monkeypatch):
    assert brief_wait() == locking.BRIEF_WAIT_S == 30
    monkeypatch.setenv("INTERP_LOCK_WAIT", "2.5")
    assert brief_wait() == 2.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("INTERP_LOCK_WAIT", bad)
        with pytest.raises(InputError, match=f"INTERP_LOCK_WAIT: expected a number of seconds >= 0, got '{bad}'"):
            brief_wait()


def test_a_probe_waits_for_a_brief_holder_then_caches(run_copy, tmp_path, caplog):
    expected = probe(run_copy, induction(), batch(), use_cache=False)
    cache = run_copy.path / PROBES_DIR / "ind.jsonl"
    cache.unlink()
    holder = hold_lock(run_copy.path, 1.5, tmp_path)
    try:
        with caplog.at_level(logging.WARNING):
            got = probe(run_copy, induction(), batch())
    finally:
        holder.wait(timeout=60)
    np.testing.assert_array_equal(got.values, expected.values)
    assert cache.exists()  # cached, once the holder let go
    assert [m for m in messages(caplog) if "waiting" in m or "without caching" in m] == \
        [f"waiting for {run_copy.path} (held by pid {holder.pid}) for up to 30 s"]


def test_saving_circuit_graphs_waits_for_a_brief_holder(run_copy, tmp_path):
    holder = hold_lock(run_copy.path, 1.5, tmp_path)
    try:
        traced = trace(run_copy, "composition")
    finally:
        holder.wait(timeout=60)
    assert traced.saved.created and load_graphs(run_copy.path, "composition") == traced.graphs


def test_training_starts_once_a_probe_holding_its_run_lets_go(tmp_path, caplog):
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir, 1.5, tmp_path)  # a lock file alone is no run: training starts it
    try:
        with caplog.at_level(logging.WARNING):
            run = train(run_dir, tiny_model_config(), tiny_train_config(steps=2), RandomTokens(), device="cpu",
                        progress=False)
    finally:
        holder.wait(timeout=60)
    assert run.steps == [0, 2]
    assert f"waiting for {run_dir} (held by pid {holder.pid}) for up to 30 s" in messages(caplog)


def test_training_refuses_a_run_held_past_the_wait(tmp_path, monkeypatch):
    monkeypatch.setattr(locking, "BRIEF_WAIT_S", 0.3)
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir, 60, tmp_path)
    try:
        with pytest.raises(RunInUseError) as refused:
            train(run_dir, tiny_model_config(), tiny_train_config(steps=2), RandomTokens(), device="cpu",
                  progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert str(refused.value) == f"run directory {run_dir} is in use by pid {holder.pid} (waited 0.3 s)"
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # nothing was written


# --- read-only runs: caches outside them ---------------------------------------------------------


def test_the_folder_outside_is_keyed_by_the_manifest_content_not_the_path(run_copy, tmp_path, private_cache_dir):
    copy = Path(shutil.copytree(run_copy.path, tmp_path / "elsewhere" / "copy"))
    digest = hashlib.sha256((run_copy.path / MANIFEST_FILE).read_bytes()).hexdigest()[:16]
    assert cache_dirs.outside_cache_dir(run_copy.path) == cache_dirs.outside_cache_dir(copy) \
        == private_cache_dir / digest
    assert cache_dirs.outside_cache_dir(tmp_path) is None  # no manifest: nothing to key by
    assert cache_dirs.is_writable(tmp_path / "not" / "made")  # judged by the nearest existing parent


def test_a_read_only_run_is_probed_once_with_its_cache_outside(run_copy, tmp_path, private_cache_dir, monkeypatch,
                                                               caplog):
    expected = probe(Run.open(shutil.copytree(run_copy.path, tmp_path / "writable")), induction(), batch())
    before = files_of(run_copy.path)
    read_only(monkeypatch)
    counter = ForwardCounter(monkeypatch)
    first = probe(run_copy, induction(), batch())
    computed = counter.run_probes
    second = probe(run_copy, induction(), batch())
    assert computed == len(run_copy.steps) and counter.run_probes == computed  # the second call: all cached
    np.testing.assert_array_equal(first.values, expected.values)
    np.testing.assert_array_equal(second.values, expected.values)
    assert files_of(run_copy.path) == before  # nothing written in the run, not even a lock file
    outside = cache_dirs.outside_cache_dir(run_copy.path)
    assert outside.parent == private_cache_dir and (outside / PROBES_DIR / "ind.jsonl").exists()
    # readers find it: the curves' reader, a copy of the same run at another path, `info --verify`
    assert cached_computations(run_copy, "ind")[0].table.steps.tolist() == run_copy.steps
    copy = Run.open(shutil.copytree(run_copy.path, tmp_path / "copy"))
    np.testing.assert_array_equal(probe(copy, induction(), batch()).values, expected.values)
    assert counter.run_probes == computed
    assert main(["info", str(run_copy.path), "--verify"]) == 0

    # the same integrity checks as in a run: an edited row outside is recomputed, naming the file
    cache = outside / PROBES_DIR / "ind.jsonl"
    lines = cache.read_text().splitlines()
    row = json.loads(lines[0])
    row["values"] = {name: 0.5 for name in row["values"]}
    cache.write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    assert main(["info", str(run_copy.path), "--verify"]) != 0
    with caplog.at_level(logging.WARNING, logger="interp.probe_cache"):
        again = probe(run_copy, induction(), batch())
    np.testing.assert_array_equal(again.values, expected.values)
    assert counter.run_probes == computed + 1
    assert any(str(cache) in m and "edited" in m for m in messages(caplog))
    assert files_of(run_copy.path) == before


def test_circuit_on_a_read_only_run_that_is_fully_cached_writes_nothing(run_copy, private_cache_dir, monkeypatch,
                                                                       capsys):
    assert main(["circuit", str(run_copy.path), "--method", "composition"]) == 0
    capsys.readouterr()
    before = files_of(run_copy.path)
    read_only(monkeypatch)
    assert main(["circuit", str(run_copy.path), "--method", "composition"]) == 0
    assert "the existing graph set of this probe and batch" in capsys.readouterr().out
    assert files_of(run_copy.path) == before and not any(private_cache_dir.iterdir())


def test_circuit_on_a_read_only_uncached_run_saves_its_graphs_outside(run_copy, monkeypatch, capsys):
    before = files_of(run_copy.path)
    read_only(monkeypatch)
    assert main(["circuit", str(run_copy.path), "--method", "composition"]) == 0
    outside = cache_dirs.outside_cache_dir(run_copy.path)
    saved = read_graph_set(run_copy.path, "composition")  # found outside: the run has no graphs
    assert saved.folder.is_relative_to(outside / "circuits" / "composition")
    assert f"wrote 5 graphs to {saved.folder} (a new graph set" in capsys.readouterr().out
    assert files_of(run_copy.path) == before
    assert len(load_graphs(run_copy.path, "composition")) == 5
    assert saved_circuits(run_copy)[0][0]["source"] == saved.folder.as_posix()
    assert main(["info", str(run_copy.path), "--verify"]) == 0
    saved_files = files_of(outside)
    assert main(["circuit", str(run_copy.path), "--method", "composition"]) == 0  # again: nothing to write
    assert "the existing graph set of this probe and batch" in capsys.readouterr().out
    assert files_of(outside) == saved_files and files_of(run_copy.path) == before


def test_the_explorer_caches_a_read_only_runs_patterns_outside(run_copy, monkeypatch):
    before = files_of(run_copy.path)
    read_only(monkeypatch)
    example = example_for(run_copy, 6)
    computed = example_patterns(run_copy, example)
    outside = cache_dirs.outside_cache_dir(run_copy.path)
    stored = files_of(outside)
    assert any(name.startswith("patterns/") and name.endswith(".npy") for name in stored)
    counter = ForwardCounter(monkeypatch)
    np.testing.assert_array_equal(example_patterns(run_copy, example), computed)
    assert counter.forwards == 0 and files_of(outside) == stored and files_of(run_copy.path) == before
