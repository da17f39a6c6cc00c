"""The run directory: listing, strict hash-verified loading, crash leftovers,
metrics reading, refusing to overwrite, config-checked resume and init_from."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from helpers import RandomTokens, assert_state_equal, tiny_model_config, tiny_train_config
from safetensors import SafetensorError

from interp import files, locking
from interp.checkpoints import Run
from interp.cli.info import verify_run
from interp.files import loads_json, read_json, read_jsonl, save_safetensors, sha256_file
from interp.locking import run_lock
from interp.model import build_model, fused_forward, load_model_state_dict
from interp.run_layout import LOCK_FILE, MANIFEST_FILE, STATE_FILE, WEIGHTS_FILE, CheckpointError, RunDamagedError
from interp.train import TrainHooks, train

EXPECTED_STEPS = [0, 2, 4, 6, 8]


def test_run_lists_steps_and_config(trained_run):
    run = trained_run.run
    assert run.steps == EXPECTED_STEPS
    assert run.model_config == trained_run.model_cfg
    config = run.config
    assert config["train"]["steps"] == 8
    assert {"versions", "device"} <= set(config)
    assert "steps=5" in repr(run)


def test_manifest_hashes_match_files(trained_run):
    run = trained_run.run
    for step in run.steps:
        for name in (WEIGHTS_FILE, STATE_FILE):
            assert run.manifest[str(step)][name] == sha256_file(run.checkpoint_dir(step) / name)
        assert run.checkpoint_hash(step) == run.manifest[str(step)][WEIGHTS_FILE]
    # training changes the weights, so no two checkpoints share a hash
    assert len({run.checkpoint_hash(s) for s in run.steps}) == len(run.steps)


@pytest.mark.parametrize("step", EXPECTED_STEPS)
def test_loaded_weights_are_the_trained_weights(trained_run, step):
    assert_state_equal(trained_run.run.load_state_dict(step), trained_run.states[step])


@pytest.mark.parametrize("step", EXPECTED_STEPS)
def test_load_round_trip_gives_identical_logits(trained_run, step):
    model = trained_run.run.load(step, device="cpu")
    assert not model.training
    tokens = trained_run.tokens
    with torch.no_grad():
        assert torch.equal(fused_forward(model, {"tokens": tokens}), trained_run.fused_logits[step])
        assert torch.equal(model(tokens), trained_run.bridge_logits[step])


def test_load_default_is_last_step_and_iteration_covers_all(trained_run):
    run = trained_run.run
    tokens = trained_run.tokens
    with torch.no_grad():
        assert torch.equal(fused_forward(run.load(device="cpu"), {"tokens": tokens}), trained_run.fused_logits[8])
    seen = []
    for step, model in run:
        seen.append(step)
        with torch.no_grad():
            assert torch.equal(fused_forward(model, {"tokens": tokens}), trained_run.fused_logits[step])
    assert seen == EXPECTED_STEPS


def test_two_loads_and_manual_strict_load_agree(trained_run):
    run = trained_run.run
    a, b = run.load(4, device="cpu"), run.load(4, device="cpu")
    manual = build_model(trained_run.model_cfg, device="cpu").eval()
    load_model_state_dict(manual, run.load_state_dict(4))
    tokens = trained_run.tokens
    with torch.no_grad():
        la = a(tokens)
        assert torch.equal(la, b(tokens))
        assert torch.equal(la, manual(tokens))


def test_state_pt_loads_with_weights_only(trained_run):
    run = trained_run.run
    path = run.checkpoint_dir(4) / STATE_FILE
    state = torch.load(path, weights_only=True)
    assert state["step"] == 4
    assert set(state) == {"step", "optimizer", "loss_sum", "loss_count", "stopped"}
    assert state["optimizer"]["state"], "adam state after 4 steps must not be empty"
    via_run = run.load_training_state(4)
    assert via_run["step"] == 4
    assert via_run["loss_count"] == state["loss_count"]


# --- integrity -------------------------------------------------------------------------


def flip_byte(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["middle", "last"])
def test_one_changed_byte_is_refused(run_copy, where):
    path = run_copy.checkpoint_dir(4) / WEIGHTS_FILE
    size = path.stat().st_size
    flip_byte(path, size // 2 if where == "middle" else size - 1)
    with pytest.raises(CheckpointError) as info:
        run_copy.load(4, device="cpu")
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError):
        run_copy.load_state_dict(4)
    # other checkpoints still load
    run_copy.load(2, device="cpu")


def test_changed_state_file_is_refused(run_copy):
    path = run_copy.checkpoint_dir(6) / STATE_FILE
    flip_byte(path, path.stat().st_size // 2)
    with pytest.raises(CheckpointError) as info:
        run_copy.load_training_state(6)
    assert str(path) in str(info.value)


def test_missing_file_is_refused(run_copy):
    path = run_copy.checkpoint_dir(2) / WEIGHTS_FILE
    path.unlink()
    with pytest.raises(CheckpointError) as info:
        run_copy.load(2, device="cpu")
    assert str(path) in str(info.value)


def test_missing_step_lists_available_steps(trained_run):
    run = trained_run.run
    with pytest.raises(CheckpointError) as info:
        run.load(3, device="cpu")
    message = str(info.value)
    assert "3" in message
    assert str(EXPECTED_STEPS) in message
    with pytest.raises(CheckpointError):
        run.load_training_state(99)


def test_open_non_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        Run.open(tmp_path)
    with pytest.raises(FileNotFoundError):
        Run.open(tmp_path / "does-not-exist")


def test_leftovers_outside_the_manifest_are_ignored(run_copy):
    checkpoints = run_copy.path / "checkpoints"
    # a checkpoint killed while being written
    tmp = checkpoints / ".tmp_step_000005"
    tmp.mkdir()
    (tmp / WEIGHTS_FILE).write_bytes(b"partial")
    # a complete-looking directory that was never committed to the manifest
    shutil.copytree(run_copy.checkpoint_dir(4), checkpoints / "step_000005")
    shutil.copytree(run_copy.checkpoint_dir(6), checkpoints / "step_000007")
    # a stray temporary manifest
    (run_copy.path / f".{MANIFEST_FILE}.tmp").write_text("{not json")

    reopened = Run.open(run_copy.path)
    assert reopened.steps == EXPECTED_STEPS
    with pytest.raises(CheckpointError):
        reopened.load(5, device="cpu")
    assert [s for s, _ in reopened] == EXPECTED_STEPS


def test_run_without_manifest_has_no_steps(tmp_path):
    run = Run.create(tmp_path / "fresh", {"model": {}})
    assert Run.open(run.path).steps == []
    assert run.metrics() == []


# --- metrics ----------------------------------------------------------------------------


def test_read_jsonl_drops_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n{"step": 3, "a"')
    assert read_jsonl(path) == [{"step": 1, "a": 1.0}, {"step": 2, "a": 2.0}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_metrics_and_series(run_copy):
    rows = run_copy.metrics()
    assert [r["step"] for r in rows] == list(range(1, 9))  # log_every=1, no evaluators
    steps, losses = run_copy.series("train/loss")
    assert steps.tolist() == list(range(1, 9))
    assert np.isfinite(losses).all()
    with pytest.raises(KeyError, match="train/loss"):
        run_copy.series("nope")
    # a torn last line (killed mid-append) does not break reading
    with open(run_copy.path / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "train/lo')
    assert run_copy.metrics() == rows


# --- writing rules ----------------------------------------------------------------------


def test_train_refuses_existing_run_without_resume(run_copy, trained_run):
    manifest_before = (run_copy.path / MANIFEST_FILE).read_text()
    with pytest.raises(FileExistsError):
        train(run_copy.path, trained_run.model_cfg, trained_run.train_cfg, RandomTokens(), device="cpu", progress=False)
    assert (run_copy.path / MANIFEST_FILE).read_text() == manifest_before


@pytest.mark.parametrize(
    "change",
    [
        dict(train=dict(lr=0.5)),
        dict(train=dict(steps=10)),
        dict(model=dict(d_model=32)),
        dict(model=dict(seed=1)),
    ],
)
def test_resume_with_different_config_is_refused(run_copy, trained_run, change):
    model_cfg = tiny_model_config(**change.get("model", {}))
    train_cfg = tiny_train_config(**change.get("train", {}))
    with pytest.raises(ValueError, match="config differs"):
        train(run_copy.path, model_cfg, train_cfg, RandomTokens(), resume=True, device="cpu", progress=False)


def test_resume_with_different_config_extra_is_refused(run_copy, trained_run):
    with pytest.raises(ValueError, match="config differs"):
        train(
            run_copy.path,
            trained_run.model_cfg,
            trained_run.train_cfg,
            RandomTokens(),
            resume=True,
            config_extra={"task": "other"},
            device="cpu",
            progress=False,
        )


def test_resume_of_finished_run_returns_it_unchanged(run_copy, trained_run):
    manifest_before = (run_copy.path / MANIFEST_FILE).read_text()
    metrics_before = run_copy.metrics()
    run = train(
        run_copy.path,
        trained_run.model_cfg,
        trained_run.train_cfg,
        RandomTokens(),
        resume=True,
        device="cpu",
        progress=False,
    )
    assert run.steps == EXPECTED_STEPS
    assert (run_copy.path / MANIFEST_FILE).read_text() == manifest_before
    assert run.metrics() == metrics_before


# --- init_from ----------------------------------------------------------------------------


@pytest.mark.parametrize("parent_step", [4, None])
def test_init_from_loads_parent_weights(trained_run, tmp_path, parent_step):
    spec = str(trained_run.path) + ("" if parent_step is None else f"@{parent_step}")
    expected_step = 8 if parent_step is None else parent_step
    child_cfg = tiny_train_config(steps=2, init_from=spec, lr=1e-2)
    child = train(tmp_path / "child", trained_run.model_cfg, child_cfg, RandomTokens(), device="cpu", progress=False)
    assert child.steps == [0, 2]
    assert_state_equal(child.load_state_dict(0), trained_run.states[expected_step])
    # the child's step-0 checkpoint is byte-for-byte the parent's weights file
    assert child.checkpoint_hash(0) == trained_run.run.checkpoint_hash(expected_step)
    recorded = child.config["init_from"]
    assert recorded["step"] == expected_step
    assert recorded["sha256"] == trained_run.run.checkpoint_hash(expected_step)
    # and the child then trains away from it
    after = child.load_state_dict(2)
    assert any(not torch.equal(after[k], trained_run.states[expected_step][k]) for k in after)


def test_init_from_step_0_references_the_parent_checkpoint_instead_of_copying_it(trained_run, tmp_path):
    """A fine-tuning run's step 0 is its parent's checkpoint: listed with the parent's hash, read from the
    parent's file (relative to the child, so the folder may move), resumed from, verified, never deleted."""
    parent_path = tmp_path / "analysis" / "runs" / "parent"
    shutil.copytree(trained_run.path, parent_path)
    cfg = tiny_train_config(steps=4, init_from=f"{parent_path}@4", lr=1e-2)

    def fine_tune(path, **kwargs):
        return train(path, trained_run.model_cfg, cfg, RandomTokens(), device="cpu", progress=False, **kwargs)

    def killed_after_step_1(done: int, model, loss: float) -> None:
        if done == 1:
            raise KeyboardInterrupt

    whole = fine_tune(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):  # killed before its second checkpoint: it resumes from the shared step 0
        fine_tune(parent_path.parent / "child", hooks=TrainHooks(callbacks=[killed_after_step_1]))
    child = Run.open(parent_path.parent / "child")
    assert child.steps == [0] and not (child.checkpoint_dir(0) / WEIGHTS_FILE).exists()
    assert json.loads((child.path / MANIFEST_FILE).read_text())["shared"] == {"0": "../parent@4"}
    assert child.file_path(0, WEIGHTS_FILE).resolve() == (parent_path / "checkpoints/step_000004" / WEIGHTS_FILE)
    assert child.checkpoint_hash(0) == trained_run.run.checkpoint_hash(4)
    assert_state_equal(child.load_state_dict(0), trained_run.states[4])
    child = fine_tune(child.path, resume=True)
    for step in (0, 2, 4):
        assert_state_equal(child.load_state_dict(step), whole.load_state_dict(step))
    assert child.metrics() == whole.metrics()
    assert verify_run(child) == ([], [])
    assert (parent_path / "checkpoints/step_000004" / WEIGHTS_FILE).exists()  # never released with the child's

    moved = tmp_path / "moved"
    (tmp_path / "analysis").rename(moved)
    assert_state_equal(Run.open(moved / "runs" / "child").load_state_dict(0), trained_run.states[4])
    shutil.rmtree(moved / "runs" / "parent")
    failures, _ = verify_run(Run.open(moved / "runs" / "child"))
    assert len(failures) == 1 and "step_000004" in failures[0] and "shared with ../parent@4" in failures[0]


def test_init_from_a_run_without_checkpoints(tmp_path, trained_run):
    empty = Run.create(tmp_path / "empty", {"model": {}})
    cfg = tiny_train_config(steps=2, init_from=str(empty.path))
    with pytest.raises(ValueError, match="no checkpoints"):
        train(tmp_path / "child", trained_run.model_cfg, cfg, RandomTokens(), device="cpu", progress=False)


def test_init_from_missing_step_is_a_checkpoint_error(tmp_path, trained_run):
    cfg = tiny_train_config(steps=2, init_from=f"{trained_run.path}@3")
    with pytest.raises(CheckpointError, match=r"available steps"):
        train(tmp_path / "child", trained_run.model_cfg, cfg, RandomTokens(), device="cpu", progress=False)


# --- the writer lock cannot be pointed at another file -------------------------------------------


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "hard link", "directory", "fifo"])
def test_a_lock_file_that_is_not_a_regular_file_of_its_own_is_refused(tmp_path, kind):
    """Before: `.lock` was opened through a link, truncated and given the pid: a shared or
    downloaded run could empty any file the user can write."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = run_dir / LOCK_FILE
    if kind == "symlink":
        lock.symlink_to(victim)
    elif kind == "dangling symlink":
        lock.symlink_to(tmp_path / "created.txt")
    elif kind == "hard link":
        os.link(victim, lock)
    elif kind == "directory":
        lock.mkdir()
    else:
        os.mkfifo(lock)
    refused = pytest.raises(RunDamagedError, match="is a symbolic link|is not a regular file|has 2 names")
    with refused as info, run_lock(run_dir):
        pytest.fail("the lock was taken")
    assert str(run_dir.resolve() / LOCK_FILE) in str(info.value) and "\n" not in str(info.value)
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "created.txt").exists()


def test_a_lock_file_created_for_a_failed_block_is_removed_and_an_older_one_kept(tmp_path):
    """A refused `--out` keeps no stray `.lock`; a finished block's lock file stays (empty)."""
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="refused"), run_lock(fresh):
        raise ValueError("refused")
    assert list(fresh.iterdir()) == []
    with run_lock(fresh):
        pass
    assert (fresh / LOCK_FILE).read_text() == ""
    with pytest.raises(ValueError, match="refused"), run_lock(fresh):
        raise ValueError("refused")
    assert (fresh / LOCK_FILE).exists()  # that block did not create it


def test_a_lock_file_removed_while_it_is_taken_is_not_the_one_held(tmp_path, monkeypatch):
    """A writer that opened `.lock` just before a failed writer removed it must lock the file
    the name leads to now: holding the removed one would let a third writer in beside it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    real, opened = locking._open_lock, []

    def removed_after_the_first_open(path):
        fd, created = real(path)
        if not opened:
            path.unlink()
        opened.append(fd)
        return fd, created

    monkeypatch.setattr(locking, "_open_lock", removed_after_the_first_open)
    with run_lock(run_dir):
        assert len(opened) == 2
        with open(run_dir / LOCK_FILE, "rb") as third, pytest.raises(BlockingIOError):
            fcntl.flock(third, fcntl.LOCK_EX | fcntl.LOCK_NB)


# --- strict reading and writing --------------------------------------------------------------------


def test_the_strict_reader_refuses_numbers_that_overflow_to_infinity(tmp_path):
    """Before: `1e999` (valid JSON syntax) read as infinity, past the refusal of `Infinity`."""
    with pytest.raises(ValueError, match="1e999 is too large for a float"):
        loads_json('{"lr": 1e999}')
    assert loads_json("[1e308, -1e308, 1e-999, 2.5]") == [1e308, -1e308, 0.0, 2.5]
    path = tmp_path / "config.json"
    path.write_text('{"train": {"lr": -1E+400}}')
    with pytest.raises(RunDamagedError, match=re.escape(f"{path} is not valid JSON (-1E+400 is too large")):
        read_json(path)


class _MakesDirectory:
    """A pickle that runs code when loaded: `os.mkdir(path)`."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_state_file_that_would_run_code_is_refused_without_torchs_advice(run_copy, tmp_path):
    """Before: torch's message, advising to re-load with weights_only=False (running the code)."""
    marker = tmp_path / "ran"
    path = run_copy.checkpoint_dir(8) / STATE_FILE
    torch.save({"step": 8, "x": _MakesDirectory(str(marker))}, path)
    manifest = json.loads((run_copy.path / MANIFEST_FILE).read_text())
    manifest["checkpoints"]["8"][STATE_FILE] = sha256_file(path)  # hashes that match: only the pickle is refused
    (run_copy.path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(RunDamagedError) as info:
        Run.open(run_copy.path).load_training_state(8)
    message = str(info.value)
    assert message.startswith(f"{path}: refused to unpickle (") and "GLOBAL posix.mkdir" in message
    assert "weights_only" not in message and "\n" not in message
    assert not marker.exists()


def test_safetensors_io_errors_are_raised_as_the_oserror_they_are(tmp_path, monkeypatch):
    def full_disk(tensors, path):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(files, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left on device") as info:
        save_safetensors({"w": torch.zeros(2)}, tmp_path / ".tmp" / WEIGHTS_FILE, tmp_path / WEIGHTS_FILE)
    assert info.value.errno == 28 and info.value.filename == str(tmp_path / WEIGHTS_FILE)

    def other(tensors, path):
        raise SafetensorError("Error while serializing: header too large")

    monkeypatch.setattr(files, "save_file", other)
    with pytest.raises(SafetensorError, match="header too large"):  # not an I/O error: raised as it is
        save_safetensors({"w": torch.zeros(2)}, tmp_path / WEIGHTS_FILE)
