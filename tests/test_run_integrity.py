"""Run directories that cannot be silently corrupted (issue 19): one writer per run
directory, damage reported by name and never trained over, training that stops at
the first non-finite number, strict JSON everywhere, and a probe cache that survives
a torn line. Each test reproduces one accident of the issue."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers import RandomTokens, assert_state_equal, tiny_model_config, tiny_train_config

import interp.checkpoints as checkpoints
from interp.analysis import json_safe
from interp.batches import repeated_tokens
from interp.checkpoints import Run
from interp.cli import main
from interp.configs import ConfigError, with_overrides
from interp.files import JsonlError, NonFiniteError, append_jsonl, atomic_write_json, read_jsonl
from interp.locking import RunInUseError, run_lock
from interp.metrics import outputs
from interp.model import ModelConfig
from interp.probing import Probe, probe
from interp.run_layout import CONFIG_FILE, LOCK_FILE, MANIFEST_FILE, METRICS_FILE, CheckpointError, RunDamagedError
from interp.train import CheckpointPolicy, TrainConfig, TrainHooks, train

TESTS = Path(__file__).parent


def run_train(path, train_cfg=None, **kwargs) -> Run:
    return train(path, tiny_model_config(), train_cfg or tiny_train_config(), RandomTokens(), device="cpu",
                 progress=False, **kwargs)


def strict_json(text: str):
    """Parse as a strict JSON parser would: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def assert_strict_json_files(root: Path) -> int:
    """Every .json / .jsonl file under `root` parses strictly; returns how many were checked."""
    count = 0
    for path in sorted(root.rglob("*.json")):
        strict_json(path.read_text())
        count += 1
    for path in sorted(root.rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            strict_json(line)
        count += 1
    return count


def snapshot_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Run:
    """The finished tiny run (steps 0..8, checkpoints every 2, a row every step), keeping every
    checkpoint's training state, so a test can cut it back to any checkpoint as a kill would."""
    return run_train(tmp_path_factory.mktemp("ref") / "run", keep=CheckpointPolicy(state="all"))


@pytest.fixture
def finished(reference, tmp_path) -> Run:
    """A private copy of the finished reference run."""
    shutil.copytree(reference.path, tmp_path / "run")
    return Run.open(tmp_path / "run")


# --- 1. one writer per run directory ----------------------------------------------------------

WORKER = """
import sys, time, pathlib
sys.path.insert(0, {tests!r})
import torch
from helpers import RandomTokens, threads_for_tests, tiny_model_config, tiny_train_config
torch.set_num_threads(threads_for_tests())  # as in the tests' process (conftest): runs compared bitwise
from interp.locking import RunInUseError
from interp.train import TrainHooks, train

run_dir, lr, ready, release = sys.argv[1:]

def hold(done, model, loss):
    if done == 1:  # checkpoint 1 and its row are written: wait, holding the run, until released
        pathlib.Path(ready).write_text("")
        deadline = time.time() + 300
        while not pathlib.Path(release).exists() and time.time() < deadline:
            time.sleep(0.02)

try:
    train(run_dir, tiny_model_config(), tiny_train_config(lr=float(lr), steps=4, checkpoint_every=1),
          RandomTokens(), hooks=TrainHooks(callbacks=[hold]), device="cpu", progress=False)
except RunInUseError as err:
    print(err, file=sys.stderr)
    sys.exit(3)
"""


def start_writer(run_dir: Path, lr: float, ready: Path, release: Path) -> subprocess.Popen:
    code = WORKER.format(tests=str(TESTS))
    # A writer waits this long for the lock (it may be a probe's, held briefly) before failing.
    env = {**os.environ, "INTERP_LOCK_WAIT": "1"}
    return subprocess.Popen([sys.executable, "-c", code, str(run_dir), str(lr), str(ready), str(release)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(condition, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.mark.slow
def test_two_writers_started_together_one_proceeds_the_other_fails_after_a_brief_wait(tmp_path):
    """Before: both exited 0, leaving a config of one run and checkpoints and rows of both."""
    run_dir, ready, release = tmp_path / "run", tmp_path / "ready", tmp_path / "release"
    writers = {lr: start_writer(run_dir, lr, ready, release) for lr in (1e-2, 3e-2)}
    try:
        # the loser ends on its own, while the winner still holds the run (it waits for `release`)
        wait_for(lambda: any(p.poll() is not None for p in writers.values()))
        (loser_lr, loser), = [(lr, p) for lr, p in writers.items() if p.poll() is not None]
        (winner_lr, winner), = [(lr, p) for lr, p in writers.items() if p is not loser]
        err = loser.stderr.read()
        assert loser.returncode == 3, err
        assert err.strip().splitlines() == [f"waiting for {run_dir} (held by pid {winner.pid}) for up to 1 s",
                                            f"run directory {run_dir} is in use by pid {winner.pid} (waited 1 s)"]
        assert winner.poll() is None

        # a reader during training is never blocked
        wait_for(ready.exists)
        reading = Run.open(run_dir)
        assert reading.steps == [0, 1]
        reading.load(1, device="cpu")
        assert reading.series("train/loss")[0].tolist() == [1]
    finally:
        release.touch()
        for process in writers.values():
            process.wait(timeout=300)
    assert winner.returncode == 0, winner.stderr.read()

    done = Run.open(run_dir)
    assert done.config["train"]["lr"] == winner_lr != loser_lr
    assert [r["step"] for r in done.metrics()] == [1, 2, 3, 4]
    alone = run_train(tmp_path / "alone", tiny_train_config(lr=winner_lr, steps=4, checkpoint_every=1))
    assert done.steps == alone.steps
    for step in done.steps:
        assert_state_equal(done.load_state_dict(step), alone.load_state_dict(step))
    assert done.metrics() == alone.metrics()


@pytest.mark.slow
def test_the_lock_of_a_killed_writer_is_taken_over_and_resume_is_bitwise_identical(tmp_path):
    run_dir, ready, release = tmp_path / "run", tmp_path / "ready", tmp_path / "release"
    writer = start_writer(run_dir, 1e-2, ready, release)
    try:
        wait_for(ready.exists)
        assert (run_dir / LOCK_FILE).read_text().strip() == str(writer.pid)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
    cfg = tiny_train_config(lr=1e-2, steps=4, checkpoint_every=1)
    resumed = run_train(run_dir, cfg, resume=True)  # the kernel dropped the dead writer's lock
    alone = run_train(tmp_path / "alone", cfg)
    assert resumed.steps == alone.steps
    for step in alone.steps:
        assert_state_equal(resumed.load_state_dict(step), alone.load_state_dict(step))
    assert resumed.metrics() == alone.metrics()


def test_the_lock_is_exclusive_across_threads_and_reentrant_in_one(tmp_path):
    errors: list[Exception] = []
    with run_lock(tmp_path / "run"):
        with run_lock(tmp_path / "run"):  # nested in the holder: a callback probing its own run
            pass

        def other():
            try:
                with run_lock(tmp_path / "run"):
                    pass
            except RunInUseError as err:
                errors.append(err)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert len(errors) == 1 and f"is in use by pid {os.getpid()}" in str(errors[0])
    with run_lock(tmp_path / "run"):  # released
        pass
    assert (tmp_path / "run" / LOCK_FILE).read_text() == ""  # no pid left to mislead


def test_concurrent_atomic_writes_never_share_a_temporary_file(tmp_path):
    """Before: every writer of `x.json` used `.x.json.tmp`, so concurrent writers hit ENOENT."""
    path = tmp_path / "x.json"
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(150):
                atomic_write_json(path, {"writer": n, "i": i})
        except BaseException as err:  # noqa: BLE001 - any failure is the finding
            errors.append(err)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert set(strict_json(path.read_text())) == {"writer", "i"}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary file left behind


def test_a_training_callback_may_probe_its_own_run(tmp_path):
    seen = []

    def probe_now(done, model, loss):
        if done == 2:
            run = Run.open(tmp_path / "run")
            table = probe(run, {"loss": outputs.loss_probe()}, {"tokens": torch.zeros(2, 12, dtype=torch.long)},
                          steps=[2], device="cpu")
            seen.append(table.values.shape)

    run_train(tmp_path / "run", tiny_train_config(steps=4), hooks=TrainHooks(callbacks=[probe_now]))
    assert seen == [(1, 1)]


# --- 2. a directory with any trace of a run is an existing run -----------------------------------


def test_a_run_without_manifest_is_refused_not_overwritten(finished):
    """Before: without manifest.json the run looked new; a plain run with another config
    overwrote config.json and every checkpoint and appended a second run's rows."""
    (finished.path / MANIFEST_FILE).unlink()
    before = snapshot_files(finished.path)
    other = tiny_train_config(lr=0.05)
    with pytest.raises(FileExistsError, match="already holds a run") as info:
        run_train(finished.path, other)
    assert "manifest.json is missing" in str(info.value)
    with pytest.raises(RunDamagedError, match="manifest.json is missing") as info:
        run_train(finished.path, tiny_train_config(), resume=True)
    assert "step_000002" not in str(info.value) and "[0, 2, 4, 6, 8]" in str(info.value)
    assert snapshot_files(finished.path) == before


def test_load_of_a_run_without_manifest_entries_is_a_clear_error(finished):
    """Before: IndexError."""
    (finished.path / MANIFEST_FILE).unlink()
    with pytest.raises(CheckpointError, match="has no checkpoints: manifest.json lists none"):
        finished.load()


@pytest.mark.parametrize("trace", [CONFIG_FILE, "checkpoints", METRICS_FILE])
def test_any_single_trace_makes_an_existing_run(tmp_path, trace):
    path = tmp_path / "run"
    path.mkdir()
    if trace == "checkpoints":
        (path / trace).mkdir()
    else:
        (path / trace).write_text("{}\n" if trace == CONFIG_FILE else '{"step": 1}\n')
    with pytest.raises(FileExistsError, match="already holds a run"):
        run_train(path)


def test_killed_while_being_created_resumes_as_a_new_run(tmp_path, reference):
    """`Run.create` makes checkpoints/ before config.json: a kill in between leaves just that."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    resumed = run_train(tmp_path / "run", resume=True)
    assert_state_equal(resumed.load_state_dict(8), reference.load_state_dict(8))
    assert resumed.metrics() == reference.metrics()


def test_a_log_with_a_step_logged_twice_differently_is_refused_by_name(finished):
    """Before: `Run.metrics()` returned both rows of a step, so a curve zigzagged between two runs."""
    path = finished.path / METRICS_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    other = {**rows[2], "train/loss": rows[2]["train/loss"] + 1.0}  # another run's row for the same step
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, other]))
    with pytest.raises(RunDamagedError, match=rf"{METRICS_FILE} logs steps \[{rows[2]['step']}\] more than once"):
        finished.metrics()
    with pytest.raises(RunDamagedError, match="more than once"):
        finished.series("train/loss")
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, rows[2]]))  # the same row again: harmless
    assert len(finished.metrics()) == len(rows) + 1


def test_a_log_lacking_rows_before_the_last_checkpoint_is_reported_and_refused(finished):
    """Before (issue 4): a log cut short read as a complete one, and resume of the finished
    run rewrote the results from an early step with exit code 0."""
    path = finished.path / METRICS_FILE
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + lines[3][:9])  # killed mid-way, long ago: rows 4..8 are gone
    with pytest.raises(RunDamagedError, match=r"lacks the rows of steps \[4, 5, 6, 7, 8\]"):
        finished.metrics()
    with pytest.raises(RunDamagedError, match="lacks the rows"):
        finished.series("train/loss")
    before = snapshot_files(finished.path)
    with pytest.raises(RunDamagedError, match=r"cannot resume .*metrics.jsonl lacks the rows of steps \[4, 5"):
        run_train(finished.path, resume=True)
    assert snapshot_files(finished.path) == before
    assert finished.inspect().damage()


def test_a_torn_last_line_is_reported_and_resume_repairs_it(finished, caplog):
    path = finished.path / METRICS_FILE
    intact = path.read_bytes()
    with open(path, "a") as f:
        f.write('{"step": 9, "train/lo')
    with caplog.at_level(logging.WARNING):
        rows = finished.metrics()
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert f"{path}: line 9 is torn" in caplog.text
    assert finished.inspect().repairs() == [f"{path}: line 9 is torn (killed mid-append)"]
    run_train(finished.path, resume=True)  # finished: repaired, returned as is
    assert path.read_bytes() == intact
    assert finished.inspect().problems() == []


def test_rows_of_two_runs_in_one_log_are_refused(finished):
    path = finished.path / METRICS_FILE
    rows = read_jsonl(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows[:4], {**rows[3], "train/loss": 9.0}, *rows[4:]]))
    with pytest.raises(RunDamagedError, match=r"logs steps \[4\] more than once with different values"):
        run_train(finished.path, resume=True)


def test_checkpoints_the_manifest_does_not_list_are_refused(finished):
    shutil.copytree(finished.checkpoint_dir(2), finished.path / "checkpoints" / "step_000003")
    with pytest.raises(RunDamagedError, match=r"holds steps \[3\], but .*manifest.json does not list them"):
        run_train(finished.path, resume=True)


def test_a_kill_between_checkpoint_0_and_its_manifest_resumes(tmp_path, reference, monkeypatch):
    """The one uncommitted directory a kill leaves (no manifest yet) is redone, not refused."""
    real = checkpoints.atomic_write_json

    def dying(path, obj):
        if path.name == MANIFEST_FILE:
            raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(checkpoints, "atomic_write_json", dying)
    with pytest.raises(KeyboardInterrupt):
        run_train(tmp_path / "run")
    monkeypatch.setattr(checkpoints, "atomic_write_json", real)
    state = Run(tmp_path / "run").inspect()
    assert state.step_dirs == [0] and state.steps == [] and state.damage() == []
    resumed = run_train(tmp_path / "run", resume=True)
    assert resumed.steps == reference.steps
    assert_state_equal(resumed.load_state_dict(8), reference.load_state_dict(8))
    assert resumed.metrics() == reference.metrics()


def test_leftover_temporary_files_are_removed_on_resume(tmp_path, reference):
    from interp.train import TrainHooks as Hooks

    def interrupt(done, model, loss):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_train(tmp_path / "run", hooks=Hooks(callbacks=[interrupt]))
    stale = [tmp_path / "run" / ".manifest.json.123.abcd.tmp",
             tmp_path / "run" / "checkpoints" / ".tmp_step_000006.1.a"]
    stale[0].write_text("{")
    stale[1].mkdir()
    assert Run(tmp_path / "run").inspect().leftovers == stale
    resumed = run_train(tmp_path / "run", resume=True)
    assert not any(p.exists() for p in stale)
    assert_state_equal(resumed.load_state_dict(8), reference.load_state_dict(8))


# --- 3. non-finite numbers ---------------------------------------------------------------------


class StepTokens(RandomTokens):
    """RandomTokens that remember the step of the batch they last served (the step being trained)."""

    step = -1

    def batch(self, step: int, batch_size: int, generator: torch.Generator):
        self.step = step
        return super().batch(step, batch_size, generator)


def poisoned_at(step: int, where: str, data: StepTokens) -> TrainHooks:
    """Hooks that make step `step` (0-based) non-finite, whatever the CPU's rounding: a NaN added
    to the residual stream in its forward pass (`where="loss"`), or the weights set to infinity
    just before it (`where="weights"`, by a callback, after that step's checkpoint is written)."""
    if where == "loss":
        def add_nan(act, hook):
            return act + math.nan if data.step == step else act
        return TrainHooks(fwd_hooks=[("blocks.0.hook_resid_pre", add_nan)])

    def break_weights(done: int, model, loss: float) -> None:
        if done == step:
            with torch.no_grad():
                next(model.parameters()).fill_(math.inf)
    return TrainHooks(callbacks=[break_weights])


@pytest.mark.parametrize("where", ["loss", "weights"])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_diverging_run_stops_at_the_first_non_finite_step(tmp_path, optimizer, where):
    """Before: lr=1e3 trained to NaN and exited 0, with NaN checkpoints that hash-verified and
    `NaN` / `Infinity` in metrics.jsonl. Step 6 is made non-finite on purpose, so the outcome does
    not depend on rounding. Every later step is NaN too; in the "loss" case steps 4-7 are read at
    once (a row and a checkpoint every 4 steps) and the error still names step 6, the first."""
    cfg = tiny_train_config(optimizer=optimizer, steps=12, checkpoint_every=4, log_every=4)
    data = StepTokens()
    with pytest.raises(NonFiniteError, match=r"training diverged at step 6: the training loss is nan; lower the "
                                             r"learning rate \(train.lr=0.01\); the run is intact up to its last "
                                             r"checkpoint, step 4$") as info:
        train(tmp_path / "run", tiny_model_config(), cfg, data, hooks=poisoned_at(6, where, data), device="cpu",
              progress=False)
    assert len(str(info.value).splitlines()) == 1
    run = Run.open(tmp_path / "run")
    assert run.steps == [0, 4]  # nothing checkpointed after the first non-finite step
    for step in run.steps:
        assert all(torch.isfinite(v).all() for v in run.load_state_dict(step).values())
    assert [r["step"] for r in run.metrics()] == [4]
    assert all(math.isfinite(r["train/loss"]) for r in run.metrics())
    assert assert_strict_json_files(run.path) >= 3
    assert run.inspect().damage() == []


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_huge_learning_rate_never_leaves_a_non_finite_checkpoint(tmp_path, optimizer):
    """lr=1e3 may diverge or not, depending on the CPU's rounding: either way no checkpoint, row
    or file holds a non-finite number, and a run that stops says where, in one line."""
    cfg = tiny_train_config(optimizer=optimizer, lr=1e3, steps=30, checkpoint_every=1)
    try:
        run_train(tmp_path / "run", cfg)
    except NonFiniteError as err:
        assert re.fullmatch(r".*: training diverged (at|before) step \d+: .* \(train.lr=1000\); .*", str(err)), err
    run = Run.open(tmp_path / "run")
    assert run.steps and run.steps == list(range(run.steps[-1] + 1))
    for step in run.steps:
        assert all(torch.isfinite(v).all() for v in run.load_state_dict(step).values())
    assert all(math.isfinite(r["train/loss"]) for r in run.metrics())
    assert assert_strict_json_files(run.path) >= 3
    assert run.inspect().damage() == []


class GradBomb(torch.autograd.Function):
    """Identity forward; an infinite gradient backward: the loss stays finite."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


def test_a_non_finite_gradient_stops_training_even_when_the_loss_is_finite(tmp_path):
    calls = []

    def bomb_at_step_5(act, hook):
        calls.append(1)
        return GradBomb.apply(act) if len(calls) == 6 else act  # the forward of step 5 (0-based)

    hooks = TrainHooks(fwd_hooks=[("blocks.0.hook_resid_pre", bomb_at_step_5)])
    with pytest.raises(NonFiniteError, match=r"at step 5: the gradient norm is (inf|nan)") as info:
        run_train(tmp_path / "run", hooks=hooks)
    assert "last checkpoint, step 4" in str(info.value)
    run = Run.open(tmp_path / "run")
    assert run.steps == [0, 2, 4]
    assert [r["step"] for r in run.metrics()] == [1, 2, 3, 4]


def test_a_non_finite_evaluation_is_not_logged(tmp_path):
    hooks = TrainHooks(evaluators={"val": lambda model: {"ratio": math.nan}})
    with pytest.raises(NonFiniteError, match="the evaluation val/ratio is nan at step 0"):
        run_train(tmp_path / "run", hooks=hooks)
    assert not (tmp_path / "run" / METRICS_FILE).exists() or read_jsonl(tmp_path / "run" / METRICS_FILE) == []


@dataclass(frozen=True)
class Experiment:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@pytest.mark.parametrize("key", ["train.lr", "train.weight_decay", "train.grad_clip", "model.init_range"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
def test_configs_refuse_non_finite_numbers_naming_the_dotted_field(key, value):
    """Before: `--set train.lr=inf` passed validation."""
    with pytest.raises(ConfigError) as info:
        with_overrides(Experiment(), {key: value})
    assert info.value.field == key
    assert str(info.value) == f"{key}: expected a finite number, got {value!r}"


def test_direct_construction_refuses_non_finite_numbers():
    for value in (math.inf, math.nan):
        with pytest.raises(ConfigError, match="^lr: expected a finite number"):
            TrainConfig(lr=value)
    with pytest.raises(ConfigError, match="^steps: expected a value of type int"):
        with_overrides(TrainConfig(), {"steps": math.inf})


def test_cli_names_the_non_finite_override_in_one_line(capsys, tmp_path):
    argv = ["run", "induction-heads", "--preset", "tiny", "--set", "train.lr=inf", "--out", str(tmp_path / "o"),
            "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "train.lr: expected a finite number, got 'inf'" in err
    assert not (tmp_path / "o").exists()


def test_every_json_writer_refuses_nan_and_infinity(tmp_path):
    with pytest.raises(NonFiniteError, match=r"x.json: refusing to write a non-finite number"):
        atomic_write_json(tmp_path / "x.json", {"a": [1.0, math.nan]})
    assert not (tmp_path / "x.json").exists()
    append_jsonl(tmp_path / "m.jsonl", [{"step": 1, "a": 1.0}])
    with pytest.raises(NonFiniteError):
        append_jsonl(tmp_path / "m.jsonl", [{"step": 2, "a": 2.0}, {"step": 3, "a": math.inf}])
    assert read_jsonl(tmp_path / "m.jsonl") == [{"step": 1, "a": 1.0}]  # not even the finite row went in
    # results.json goes through json_safe: an undefined statistic is null
    strict_json(json.dumps(json_safe({"r": math.nan, "xs": [1.0, -math.inf]}), allow_nan=False))


def test_json_with_nan_written_by_old_versions_is_refused_by_name(finished):
    path = finished.path / METRICS_FILE
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = '{"step": 3, "train/loss": NaN, "lr": 0.01}\n'
    path.write_text("".join(lines))
    with pytest.raises(JsonlError, match=rf"{path}: line 3 is not a JSON object \(NaN is not JSON\)"):
        finished.metrics()


# --- 4. read_jsonl does not stop silently ----------------------------------------------------------


def test_read_jsonl_raises_on_a_bad_middle_line_naming_file_and_line(tmp_path):
    """Before: the rows silently ended at the bad line."""
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "a"\n{"step": 3}\n')
    with pytest.raises(JsonlError, match=rf"^{path}: line 2 is not a JSON object"):
        read_jsonl(path)


def test_read_jsonl_reports_a_torn_last_line(tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}')  # even a parsable last line without its newline is torn
    with caplog.at_level(logging.WARNING):
        assert read_jsonl(path) == [{"step": 1}]
    assert "line 2 is torn" in caplog.text


def test_an_append_after_a_torn_line_starts_a_line_of_its_own(tmp_path):
    """Before: the first appended row was glued onto the torn line, so both were lost."""
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "a')
    append_jsonl(path, [{"step": 2, "a": 2.0}])
    assert read_jsonl(path) == [{"step": 1}, {"step": 2, "a": 2.0}]


# --- 8. smaller accidents ------------------------------------------------------------------------------


def test_a_kill_before_checkpoint_0_leaves_no_duplicate_step_0_row(tmp_path, monkeypatch):
    """Before: the step-0 row was logged again on resume."""
    evaluators = {"ev": lambda model: {"one": 1.0}}
    cfg = tiny_train_config(eval_every=2)
    reference = run_train(tmp_path / "reference", cfg, hooks=TrainHooks(evaluators=evaluators))
    real = Run.save_checkpoint

    def dying(self, step, model, state, weights_of=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(Run, "save_checkpoint", dying)
    with pytest.raises(KeyboardInterrupt):
        run_train(tmp_path / "run", cfg, hooks=TrainHooks(evaluators=evaluators))
    monkeypatch.setattr(Run, "save_checkpoint", real)
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / METRICS_FILE)] == [0]  # logged, not checkpointed
    resumed = run_train(tmp_path / "run", cfg, hooks=TrainHooks(evaluators=evaluators), resume=True)
    assert resumed.metrics() == reference.metrics()
    assert_state_equal(resumed.load_state_dict(8), reference.load_state_dict(8))


def test_a_repeated_step_0_row_of_older_versions_is_repaired_on_resume(finished, reference):
    path = finished.path / METRICS_FILE
    rows = read_jsonl(path)
    (finished.path / MANIFEST_FILE).write_text(json.dumps({"checkpoints": {
        s: v for s, v in finished.manifest.items() if int(s) <= 4}}))
    for step in (6, 8):
        shutil.rmtree(finished.checkpoint_dir(step))
    path.write_text("".join(json.dumps(r) + "\n" for r in [rows[0], rows[0], *rows[1:4]]))
    assert finished.inspect().repeated_rows == [1]
    resumed = run_train(finished.path, resume=True)
    assert resumed.metrics() == reference.metrics()


def cache_probe_batch() -> dict[str, torch.Tensor]:
    return {"tokens": repeated_tokens(2, 6, 11, torch.Generator().manual_seed(0))}


def test_a_torn_probe_cache_line_does_not_disable_the_cache(finished, monkeypatch):
    """Before: a kill mid-append glued the next record onto the torn line; the reader stopped
    there, so every later record was recomputed and appended again on every run."""
    probes = {"loss": outputs.loss_probe()}
    first = probe(finished, probes, cache_probe_batch(), steps=[0, 2], device="cpu")
    cache = finished.path / "probes" / "loss.jsonl"
    with open(cache, "a") as f:
        f.write('{"step": 4, "probe": "lo')  # killed mid-append
    computed: list[int] = []
    real_load = Run.load

    def counting_load(self, step=None, *args, **kwargs):
        computed.append(step)
        return real_load(self, step, *args, **kwargs)

    monkeypatch.setattr(Run, "load", counting_load)
    again = probe(finished, probes, cache_probe_batch(), steps=[0, 2], device="cpu")
    assert computed == [] and (again.values == first.values).all()  # served from the cache
    more = probe(finished, probes, cache_probe_batch(), steps=[0, 2, 4, 6], device="cpu")
    assert computed == [4, 6]
    size = cache.stat().st_size
    for _ in range(3):
        computed.clear()
        assert (probe(finished, probes, cache_probe_batch(), steps=[0, 2, 4, 6], device="cpu").values
                == more.values).all()
        assert computed == [] and cache.stat().st_size == size  # the cache no longer grows
    assert len(read_jsonl(cache)) == 4


def test_a_probe_cache_damaged_by_older_versions_is_repaired(finished):
    probes = {"loss": outputs.loss_probe()}
    probe(finished, probes, cache_probe_batch(), steps=[0], device="cpu")
    cache = finished.path / "probes" / "loss.jsonl"
    good = cache.read_text()
    cache.write_text('{"step": 2, "pro' + good)  # a torn line with the next record glued on
    probe(finished, probes, cache_probe_batch(), steps=[0, 2], device="cpu")
    assert [r["step"] for r in read_jsonl(cache)] == [0, 2]


def test_probe_values_that_are_not_finite_are_cached_as_null(finished):
    probes = {"odd": Probe("odd", (), lambda ctx: {"nan": math.nan, "one": 1.0})}
    table = probe(finished, probes, cache_probe_batch(), steps=[0], device="cpu")
    cached = probe(finished, probes, cache_probe_batch(), steps=[0], device="cpu")
    assert math.isnan(table["odd/nan"][0]) and math.isnan(cached["odd/nan"][0]) and cached["odd/one"][0] == 1.0
    assert read_jsonl(finished.path / "probes" / "odd.jsonl")[0]["values"] == {"nan": None, "one": 1.0}


@pytest.mark.parametrize("key", ["../../x", "a/b", ".hidden", "", "x.jsonl", "-rf"])
def test_probe_keys_must_be_plain_file_names(finished, tmp_path, key):
    """Before: `probe(run, {"../../x": ...})` wrote outside probes/."""
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="is not a plain name"):
        probe(finished, {key: outputs.loss_probe()}, cache_probe_batch(), steps=[0], device="cpu")
    assert sorted(tmp_path.rglob("*")) == before


def test_inspect_summarises_a_killed_run(tmp_path):
    def interrupt(done, model, loss):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_train(tmp_path / "run", hooks=TrainHooks(callbacks=[interrupt]))
    state = Run(tmp_path / "run").inspect()
    assert state.exists and state.steps == [0, 2, 4] and state.problems() == []
    assert not Run(tmp_path / "nothing").inspect().exists
    with run_lock(tmp_path / "locked"):  # a lock file alone is no run
        state = Run(tmp_path / "locked").inspect()
        assert not state.exists and state.problems() == []
