"""Accidents of issue 19 at the command line and around it, each reproduced.

A refused `--out` leaves every file as it was; a full disk, a read-only path, a config
that cannot fit in memory, a bad flag and Ctrl-C end in one line naming the cause (no
traceback unless `--debug`); figures are written atomically; `interp info --verify`
checks hashes and completeness; `interp run --help` and `interp list` say what there is.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import RandomTokens, tiny_model_config, tiny_train_config
from matplotlib.figure import Figure
from safetensors import SafetensorError

import interp.cli.run as cli_run
from interp import files
from interp.analysis import accept_output_dir, get_analysis, resolve_config
from interp.cli import main
from interp.cli.errors import explain
from interp.cli.parser import build_parser
from interp.configs import to_dict
from interp.errors import ErrorRecord, InputError, UnknownNameError
from interp.memory import (
    InsufficientMemoryError,
    available_memory_bytes,
    check_memory,
    estimate_memory,
    parameter_count,
)
from interp.model import ModelConfig, build_model, model_state_dict
from interp.parallel import JobsFailed
from interp.run_layout import LOCK_FILE, MANIFEST_FILE
from interp.train import TrainHooks, train
from interp.viz import save_figure

ROOT = Path(__file__).parents[1]
ANALYSIS = "induction-heads"
TINY = ["--preset", "tiny", "--quiet", "--device", "cpu"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def strict_json(path: Path):
    def refuse(name: str):
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def digests(directory: Path) -> dict[str, str]:
    """sha256 of every file below `directory` (the lock file aside: taking it writes a pid)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny induction-heads analysis (seed 3), shared read-only; copy it to change it."""
    out = tmp_path_factory.mktemp("errors") / "analysis"
    assert main(["run", ANALYSIS, *TINY, "--seed", "3", "--out", str(out)]) == 0
    return out


@pytest.fixture
def analysis_copy(finished: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "analysis"
    shutil.copytree(finished, dest)
    return dest


# --- case 5: --out that is not ours; nothing rewritten before a run is accepted -------------------


def test_out_with_the_users_files_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.json").write_text('{"my": "numbers"}\n')
    (out / "report.md").write_text("# my report\n")
    before = digests(out)
    assert main(["run", ANALYSIS, *TINY, "--out", str(out)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "is not empty" in lines[0] and "--force" in lines[0] and "report.md" in lines[0]
    assert digests(out) == before and not (out / "analysis.json").exists()


def test_out_of_another_analysis_is_refused(tmp_path, capsys):
    out = tmp_path / "other"
    out.mkdir()
    (out / "analysis.json").write_text(json.dumps({"analysis": "fact-learning", "preset": "tiny", "config": {}}))
    before = digests(out)
    assert main(["run", ANALYSIS, *TINY, "--out", str(out)]) == 2
    assert "'fact-learning'" in capsys.readouterr().err
    assert digests(out) == before


def test_force_accepts_a_foreign_directory_and_an_empty_one_needs_nothing(tmp_path):
    record = {"analysis": ANALYSIS, "preset": "tiny", "config": {}}
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty"):
        accept_output_dir(foreign, record, resume=False, force=False)
    accept_output_dir(foreign, record, resume=False, force=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / LOCK_FILE).write_text("123\n")  # a lock file (of a killed writer) is not content
    accept_output_dir(empty, record, resume=False, force=False)
    accept_output_dir(tmp_path / "missing", record, resume=False, force=False)


def test_a_refused_rerun_leaves_every_file_byte_identical(analysis_copy, capsys):
    before = digests(analysis_copy)
    # a different config, without --resume: refused before anything is written
    assert main(["run", ANALYSIS, *TINY, "--seed", "3", "--out", str(analysis_copy), "--set", "train.lr=0.01"]) == 2
    assert "--resume" in capsys.readouterr().err
    # the same config without --resume: refused too (its runs exist)
    assert main(["run", ANALYSIS, *TINY, "--seed", "3", "--out", str(analysis_copy)]) == 2
    capsys.readouterr()
    # --resume with a different config: refused, naming the field that differs
    assert main(["run", ANALYSIS, *TINY, "--seed", "3", "--out", str(analysis_copy), "--set", "train.lr=0.01",
                 "--resume"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "train.lr" in lines[0] and "analysis.json" in lines[0]
    assert digests(analysis_copy) == before


def test_resume_of_a_finished_analysis_rewrites_its_outputs_unchanged(analysis_copy):
    results = strict_json(analysis_copy / "results.json")
    assert main(["run", ANALYSIS, *TINY, "--seed", "3", "--out", str(analysis_copy), "--resume"]) == 0
    again = strict_json(analysis_copy / "results.json")
    assert {k: v for k, v in again.items() if k != "wall_seconds"} == \
        {k: v for k, v in results.items() if k != "wall_seconds"}


def test_a_second_writer_of_an_analysis_fails_fast(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    with open(out / LOCK_FILE, "w") as held:  # another process's lock (flock is per open file)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"{os.getpid()}\n")
        held.flush()
        assert main(["run", ANALYSIS, *TINY, "--out", str(out)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "in use by pid" in lines[0]
    assert not (out / "analysis.json").exists()


# --- case 6: disk full, read-only paths, memory -------------------------------------------------


def test_save_figure_leaves_no_partial_file_on_a_full_disk(tmp_path, monkeypatch):
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    path = tmp_path / "figures" / "curve.png"
    save_figure(fig, path)
    good = path.read_bytes()
    assert good.startswith(PNG_MAGIC)

    def full_disk(self, fname, **kwargs):
        fname.write(PNG_MAGIC + b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(OSError, match="No space left") as info:
        save_figure(fig, path)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)  # names the figure
    assert path.read_bytes() == good  # the old figure, not a torn one
    assert sorted(p.name for p in path.parent.iterdir()) == ["curve.png"]  # no temporary file left
    with pytest.raises(OSError):
        save_figure(fig, tmp_path / "figures" / "new.png")
    assert not (tmp_path / "figures" / "new.png").exists()


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare") or sys.platform != "linux":
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null"],
                           capture_output=True)
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs `unshare -rm` and tmpfs mounts")


def _interp_in_tmpfs(tmp_path: Path, mount_options: str, out: str, *args: str) -> subprocess.CompletedProcess:
    """`interp run` writing into a fresh tmpfs mounted at tmp_path/disk (in a private mount
    namespace, so nothing outlives the command); the tmpfs is listed into tmp_path/listing
    before it goes away."""
    disk = tmp_path / "disk"
    disk.mkdir()
    command = shlex.join([sys.executable, "-m", "interp.cli", "run", ANALYSIS, *TINY, "--out", str(disk / out),
                          *args])
    listing = tmp_path / "listing"
    script = (f"mount -t tmpfs -o {mount_options} tmpfs {shlex.quote(str(disk))} || exit 99; {command}; rc=$?; "
              f"cp -r {shlex.quote(str(disk))} {shlex.quote(str(listing))} 2>/dev/null; exit $rc")
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.mark.slow
@needs_tmpfs
# The tiny run writes ~600 KB (runs ~300 KB, figures ~300 KB): 200 KB fills up while a checkpoint
# is saved (torch's "unexpected pos"), 450 KB while the figures are drawn (PIL's OSError).
@pytest.mark.parametrize("size", ["200k", "450k"])
def test_disk_full_gives_one_line_and_no_partial_file(tmp_path, size):
    done = _interp_in_tmpfs(tmp_path, f"size={size}", "x")
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "no space left on device" in lines[0]
    assert "Traceback" not in done.stderr and "--resume" in lines[0]
    for png in (tmp_path / "listing").rglob("*.png"):
        assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 100, png


@pytest.mark.slow
@needs_tmpfs
def test_a_read_only_out_gives_one_line(tmp_path):
    done = _interp_in_tmpfs(tmp_path, "ro", "x")
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "read-only file system" in lines[0] and str(tmp_path / "disk") in lines[0], lines


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory anyway")
def test_a_directory_without_write_permission_gives_one_line(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["run", ANALYSIS, *TINY, "--out", str(locked / "x")]) == 2
    finally:
        locked.chmod(0o755)
    lines = error_lines(capsys)
    assert len(lines) == 1 and "permission denied" in lines[0]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 28352 vs 28244"),
         "no space left on device"),
        (OSError(errno.ENOSPC, "No space left on device", "/d/runs/main/metrics.jsonl"),
         "no space left on device while writing /d/runs/main/metrics.jsonl"),
        (OSError(errno.EROFS, "Read-only file system", "/d/x"), "read-only file system: cannot write /d/x"),
        (PermissionError(errno.EACCES, "Permission denied", "/d/x"), "permission denied: /d/x"),
        (files.NonFiniteError("training diverged at step 3: the loss is nan"), "training diverged at step 3"),
        (MemoryError(), "out of memory"),
    ],
)
def test_job_errors_are_explained_in_one_line(error, expected, tmp_path):
    """A job's error reaches the CLI as an `ErrorRecord` (plain data), explained from its fields."""
    assert expected in explain(ErrorRecord.of(error), where=tmp_path)


def test_an_unexpected_job_error_is_not_explained_away():
    assert explain(ErrorRecord.of(ZeroDivisionError("division by zero"))) is None
    assert explain(ErrorRecord.of(RuntimeError("shape mismatch"))) is None
    # builtin errors are bugs too: only the toolkit's own (InterpError) are expected
    assert explain(ErrorRecord.of(ValueError("bad"))) is None and explain(ErrorRecord.of(KeyError("k"))) is None
    assert explain(ErrorRecord.of(InputError("x: expected y"))) == "x: expected y"
    assert explain(ErrorRecord.of(UnknownNameError("unknown analysis 'z'"))) == "unknown analysis 'z'"


def test_a_failed_job_is_reported_in_one_line_with_the_resume_command(tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise JobsFailed({0: ErrorRecord("OSError", "[Errno 28] No space left on device", "Traceback ...\n",
                                         errno=errno.ENOSPC, strerror="No space left on device")}, {0: "main"}, 1)

    monkeypatch.setattr(cli_run, "run_analysis", fail)
    out = tmp_path / "out"
    assert main(["run", ANALYSIS, *TINY, "--out", str(out)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("interp run: error: main: no space left on device")
    assert lines[0].endswith(f"interp run {ANALYSIS} --preset tiny --out {out} --device cpu --quiet --resume")


def test_a_config_that_needs_terabytes_is_refused_before_allocating(tmp_path, capsys):
    huge = ModelConfig(n_layers=2, d_model=2**20, n_heads=4, attn_only=True)
    assert estimate_memory(huge).parameters > 10**13
    with pytest.raises(InsufficientMemoryError, match=r"needs about .* TB .* is available on cpu; reduce d_model"):
        build_model(huge, device="cpu")  # raised at all: allocating 10^13 parameters would fail otherwise
    out = tmp_path / "big"
    assert main(["run", ANALYSIS, *TINY, "--out", str(out), "--set", f"model.d_model={2**20}"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "needs about" in lines[0] and "TB" in lines[0] and "available" in lines[0]
    assert not out.exists()  # refused before the output directory was made


def test_training_memory_is_checked_before_the_output_is_written(tmp_path, capsys):
    out = tmp_path / "wide"
    assert main(["run", ANALYSIS, *TINY, "--out", str(out), "--set", "train.batch_size=100000000"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "activations at batch_size=100000000" in lines[0] and "reduce batch_size" in lines[0]
    assert not out.exists()


def test_cuda_memory_is_checked_against_free_device_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * 10**9, 8 * 10**9))
    assert available_memory_bytes("cuda") == 2 * 10**9
    with pytest.raises(InsufficientMemoryError, match=r"but 2\.0 GB is available on cuda; reduce d_vocab"):
        check_memory(ModelConfig(d_vocab=10**7, d_model=64), "cuda")  # the weights alone
    with pytest.raises(InsufficientMemoryError, match=r"activations at batch_size=8 61\.4 GB.*reduce batch_size=8"):
        check_memory(ModelConfig(d_vocab=10**7, d_model=64), "cuda", batch_size=8)
    check_memory(ModelConfig(), "cuda", batch_size=8)


@pytest.mark.parametrize("kw", [
    dict(n_layers=2, d_model=64, n_heads=4, d_vocab=200, n_ctx=64, attn_only=True),
    dict(n_layers=3, d_model=48, n_heads=4, d_head=8, d_mlp=100, d_vocab=100, n_ctx=32, normalization="none"),
    dict(n_layers=1, d_model=32, n_heads=2, d_vocab=50, n_ctx=16, positional="rotary", normalization="RMS",
         d_input=8),
])
def test_the_parameter_count_of_the_estimate_is_exact(kw):
    cfg = ModelConfig(**kw)
    assert parameter_count(cfg) == sum(v.numel() for v in model_state_dict(build_model(cfg, "cpu")).values())


# --- case 7: expected errors are one line naming the field; Ctrl-C; --debug ------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seed", "-1"], "argument --seed: expected an integer in [0, 2**63), got -1"),
        (["--set", "seed=-1"], "seed: expected an integer in [0, 2**63)"),
        (["--set", "train.seed=-1"], "train.seed: expected an integer in [0, 2**63)"),
        (["--set", "train.lr=-1"], "train.lr: expected a positive learning rate"),
        (["--set", "model.n_heads=3"], "model.d_model: expected a multiple of n_heads=3"),
        (["--set", "task.seq_len=0"], "task.seq_len: expected a positive integer"),
        (["--set", "model.d_vocab=100000000"], "model.d_vocab: expected a value this analysis keeps"),
        (["--device", "bogus"], "--device: expected cpu, cuda, cuda:N, mps or auto, got 'bogus'"),
        (["--workers", "-2"], "argument --workers: expected an integer >= 0"),
    ],
)
def test_bad_run_input_names_the_dotted_field(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", ANALYSIS, "--preset", "tiny", "--quiet", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_names_the_flag(tmp_path, capsys):
    assert main(["run", ANALYSIS, "--preset", "tiny", "--out", str(tmp_path / "o"), "--device", "cuda"]) == 2
    assert "--device: expected cpu: this machine has no CUDA device" in capsys.readouterr().err


def test_probe_flags_are_checked(finished, capsys):
    assert main(["probe", str(finished), "induction", "--sequences", "0"]) == 2
    assert "argument --sequences: expected an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["probe", str(finished), "induction", "--device", "tpu"]) == 2
    assert "--device" in capsys.readouterr().err


def test_an_invalid_config_json_is_named(analysis_copy, capsys):
    config = analysis_copy / "runs" / "main" / "config.json"
    config.write_text('{"model": ')
    assert main(["info", str(analysis_copy)]) == 2
    assert f"{config} is not valid JSON" in capsys.readouterr().err
    before = digests(analysis_copy)
    assert main(["run", ANALYSIS, *TINY, "--seed", "3", "--out", str(analysis_copy), "--resume"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and str(config) in lines[0]
    assert digests(analysis_copy) == before


def test_debug_shows_the_traceback(tmp_path, capsys):
    argv = ["run", ANALYSIS, "--preset", "tiny", "--out", str(tmp_path / "o"), "--set", "train.lr=-1"]
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err
    for debug in (["--debug", *argv], [*argv, "--debug"]):
        assert main(debug) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and err.rstrip().endswith("train.lr: expected a positive learning rate, got -1.0")


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli_run, "run_analysis", bug)
    with pytest.raises(ZeroDivisionError):
        main(["run", ANALYSIS, "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("bug", [ValueError("bug"), KeyError("bug"), FileNotFoundError("bug"), ImportError("bug")])
def test_a_builtin_error_is_a_bug_and_keeps_its_traceback(bug, monkeypatch, tmp_path, capsys):
    """Before: every ValueError, KeyError, OSError and ImportError was taken for bad input and
    printed as one line; only the toolkit's own errors (`InterpError`) are expected now."""
    def raising(*args, **kwargs):
        raise bug

    monkeypatch.setattr(cli_run, "run_analysis", raising)
    with pytest.raises(type(bug)):
        main(["run", ANALYSIS, "--out", str(tmp_path / "o")])
    assert "error:" not in capsys.readouterr().err


def test_a_builtin_error_of_a_job_shows_its_traceback_and_exit_1(monkeypatch, tmp_path, capsys):
    def failed(*args, **kwargs):
        raise JobsFailed({0: ErrorRecord("KeyError", "'bug'", "Traceback (bug)\n")}, {0: "main"}, 1)

    monkeypatch.setattr(cli_run, "run_analysis", failed)
    assert main(["run", ANALYSIS, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "Traceback (bug)" in err and "main: KeyError: 'bug'" in err


def test_ctrl_c_prints_one_line_with_the_resume_command(monkeypatch, tmp_path, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_run, "run_analysis", interrupted)
    out = tmp_path / "my runs" / "x"
    argv = ["run", ANALYSIS, "--preset", "tiny", "--out", str(out), "--seed", "3", "--set", "train.lr=0.01",
            "--workers", "2"]
    assert main(argv) == 130
    lines = error_lines(capsys)
    assert len(lines) == 1
    command = lines[0].split("resume with: ", 1)[1]
    assert command == shlex.join(["interp", "run", ANALYSIS, "--preset", "tiny", "--out", str(out), "--seed", "3",
                                  "--workers", "2", "--set", "train.lr=0.01", "--resume"])
    resumed = build_parser().parse_args(shlex.split(command)[1:])
    assert (resumed.name, resumed.preset, resumed.out, resumed.seed, resumed.set, resumed.resume) == \
        (ANALYSIS, "tiny", str(out), 3, ["train.lr=0.01"], True)


@pytest.mark.slow
def test_a_real_ctrl_c_ends_in_one_line_and_the_command_resumes(tmp_path):
    """SIGINT to the process group, as a terminal sends it, once the first checkpoint is
    written; the printed command is accepted by the directory it left."""
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "interp.cli", "run", ANALYSIS, "--preset", "quick", "--quiet", "--device", "cpu",
            "--out", str(out), "--set", "train.steps=2000"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (out / "runs" / "main" / MANIFEST_FILE).exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted; resume with: " in lines[0], stderr
    resumed = build_parser().parse_args(shlex.split(lines[0].split("resume with: ", 1)[1])[1:])
    config = resolve_config(get_analysis(ANALYSIS), resumed.preset, dict(s.split("=") for s in resumed.set))
    accept_output_dir(Path(resumed.out), {"analysis": ANALYSIS, "preset": resumed.preset, "config": to_dict(config)},
                      resume=resumed.resume, force=False)


# --- case 9: help, list, analysis directories --------------------------------------------------


def test_run_help_lists_the_analyses_and_their_presets(capsys):
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--force" in out
    for name in ("induction-heads", "fact-learning", "icl-transience"):
        assert name in out
    assert "quick, tiny, gpu" in out


def test_list_says_what_each_preset_trains(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    tiny = next(line for line in out.splitlines() if line.strip().startswith("tiny"))
    assert "x d_model" in tiny and "steps x batch" in tiny


def test_every_option_has_help_text():
    def walk(parser: argparse.ArgumentParser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action.choices.values():
                    yield from walk(choice)
            else:
                yield parser.prog, action

    missing = [f"{prog} {action.option_strings or action.dest}" for prog, action in walk(build_parser())
               if not action.help]
    assert not missing


def test_every_command_that_reads_checkpoints_says_it_takes_a_suite():
    """A checkpoint suite is accepted wherever a run is: each such command's help says so,
    for the command and for its directory argument."""
    commands = {name: sub for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)
                for name, sub in action.choices.items()}
    summaries = {choice.dest: choice.help for action in build_parser()._actions
                 if isinstance(action, argparse._SubParsersAction) for choice in action._choices_actions}
    for name in ("info", "probe", "llc", "circuit", "plot", "view"):
        directory = next(a for a in commands[name]._actions if a.dest == "dir")
        assert "suite" in directory.help, name
        assert "suite" in summaries[name], name
        assert "--cache" in commands[name]._option_string_actions, name

def test_an_analysis_directory_with_several_runs_names_them(analysis_copy, capsys):
    shutil.copytree(analysis_copy / "runs" / "main", analysis_copy / "runs" / "other")
    assert main(["probe", str(analysis_copy), "induction"]) == 2
    err = capsys.readouterr().err
    assert "holds 2 runs" in err and str(analysis_copy / "runs" / "main") in err
    assert main(["probe", str(analysis_copy / "runs" / "other"), "prev-token", "--layers", "0"]) == 0


# --- interp info --verify ----------------------------------------------------------------------


def test_verify_passes_a_finished_analysis(finished, capsys):
    assert main(["info", str(finished), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "verify: OK" in out and "status: complete" in out and "results.json written" in out


def test_verify_names_a_flipped_byte(analysis_copy, capsys):
    weights = next((analysis_copy / "runs" / "main" / "checkpoints").glob("step_*/weights.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert main(["info", str(analysis_copy)]) == 0  # without --verify nothing is hashed
    assert main(["info", str(analysis_copy), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "verify: FAILED" in out and f"{weights} does not match its sha256" in out


def test_verify_reports_an_incomplete_run(analysis_copy, capsys):
    """A run killed after its checkpoint at step 6 of 12 (what a kill leaves: that checkpoint
    holds weights and training state) in an analysis that never wrote its results."""
    run = analysis_copy / "runs" / "main"
    shutil.rmtree(run)

    def interrupt(done: int, model, loss: float) -> None:
        if done == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(run, tiny_model_config(), tiny_train_config(steps=12, checkpoint_every=3), RandomTokens(),
              device="cpu", progress=False, hooks=TrainHooks(callbacks=[interrupt]))
    (analysis_copy / "results.json").unlink()
    assert main(["info", str(analysis_copy)]) == 0
    out = capsys.readouterr().out
    assert "status: INCOMPLETE: last checkpoint at step 6" in out and "INCOMPLETE: no results.json" in out
    assert main(["info", str(analysis_copy), "--verify"]) == 1
    assert "verify: FAILED" in capsys.readouterr().out


def test_verify_reports_a_missing_manifest(analysis_copy, capsys):
    (analysis_copy / "runs" / "main" / MANIFEST_FILE).unlink()
    assert main(["info", str(analysis_copy), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "verify: FAILED" in out and "manifest.json is missing" in out


def test_verify_goes_on_past_an_unreadable_config(analysis_copy, capsys):
    shutil.copytree(analysis_copy / "runs" / "main", analysis_copy / "runs" / "other")
    config = analysis_copy / "runs" / "main" / "config.json"
    config.write_text("{")
    assert main(["info", str(analysis_copy), "--verify"]) == 1
    out = capsys.readouterr().out
    assert f"{config} is unreadable" in out and out.count("verify: OK") == 1


def test_verify_reports_non_finite_json(analysis_copy, capsys):
    metrics = analysis_copy / "runs" / "main" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[1] = '{"step": 1, "train/loss": NaN}'  # what json.dumps writes for a NaN unless told not to
    metrics.write_text("\n".join(lines) + "\n")
    assert main(["info", str(analysis_copy), "--verify"]) == 1
    assert "metrics.jsonl: line 2" in capsys.readouterr().out


# --- a lock file linked elsewhere, a refused --out, weights on a full disk -------------------------

LOCKING_COMMANDS = {
    "probe": (["probe", "{out}", "induction", "--seed", "7", "--device", "cpu"], "runs/main"),
    # path patching on the command's own batch: a new graph set (the analysis's are saved: nothing to lock for)
    "circuit": (["circuit", "{out}", "--method", "path", "--steps", "0", "--device", "cpu"], "runs/main"),
    "view": (["view", "{out}", "--device", "cpu"], "runs/main"),
    "run --resume": (["run", ANALYSIS, *TINY, "--seed", "3", "--out", "{out}", "--resume"], "runs/main"),
    "run --resume, the analysis's lock": (["run", ANALYSIS, *TINY, "--seed", "3", "--out", "{out}", "--resume"],
                                          "."),
}


@pytest.mark.parametrize("command", LOCKING_COMMANDS)
def test_a_lock_file_linked_elsewhere_is_refused_by_every_command_that_locks(analysis_copy, tmp_path, capsys,
                                                                            command):
    """Before: each command exited 0 having emptied the file `.lock` linked to."""
    argv, folder = LOCKING_COMMANDS[command]
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lock = analysis_copy / folder / LOCK_FILE
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    assert main([arg.replace("{out}", str(analysis_copy)) for arg in argv]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and f"{lock.parent.resolve() / LOCK_FILE} is a symbolic link" in lines[0], lines
    assert victim.read_text() == "precious\n"


def test_a_refused_out_is_left_without_a_lock_file(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["run", ANALYSIS, *TINY, "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_full_disk_while_weights_are_written_gives_one_line(tmp_path, monkeypatch, capsys):
    """Before: safetensors' SafetensorError ("... (os error 28)") was no OSError: a traceback, exit 1."""
    def full_disk(tensors, path):
        Path(path).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(files, "save_file", full_disk)
    out = tmp_path / "out"
    assert main(["run", ANALYSIS, *TINY, "--out", str(out)]) == 2
    lines = error_lines(capsys)
    weights = out / "runs" / "main" / "checkpoints" / "step_000000" / "weights.safetensors"
    assert len(lines) == 1 and f"no space left on device while writing {weights}" in lines[0], lines
    assert lines[0].endswith("--resume")
    assert list((out / "runs" / "main" / "checkpoints").iterdir()) == []  # no partial checkpoint


def test_a_safetensors_io_error_is_an_os_error_naming_the_file(tmp_path, monkeypatch):
    """`save_safetensors` raises safetensors' I/O error as the OSError it is, so a job's full disk
    reaches the CLI with its errno and file, not as text to parse."""
    def full_disk(tensors, path):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(files, "save_file", full_disk)
    with pytest.raises(OSError) as info:
        files.save_safetensors({"x": torch.zeros(1)}, tmp_path / "w.safetensors")
    assert "no space left on device" in explain(ErrorRecord.of(info.value), where=tmp_path)


@pytest.mark.slow
@needs_tmpfs
def test_a_disk_that_fills_up_while_weights_are_written_gives_one_line(tmp_path):
    # 20 KB: analysis.json, config.json and metrics.jsonl take a page each, the first weights (14 KB) do not fit
    done = _interp_in_tmpfs(tmp_path, "size=20k", "x")
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no space left on device while writing" in lines[0], done.stderr
    assert "weights.safetensors" in lines[0] and "--resume" in lines[0]
