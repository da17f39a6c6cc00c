"""The memory policy (MemAvailable, cgroup v2 and v1 limits, ulimit), read from fake /proc
and /sys trees; the forward-pass estimate behind `probe()` and `collect_activations`, which
refuse a batch that cannot fit in one line before any checkpoint loads; and the training
estimate's saved activations against what autograd really saves."""

from __future__ import annotations

import functools
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import N_CTX, tiny_model_config

import interp.memory as memory_module
from interp.checkpoints import Run
from interp.cli import main
from interp.memory import (
    FLOAT_BYTES,
    AvailableMemory,
    InsufficientMemoryError,
    available_memory,
    check_memory,
    estimate_forward,
    estimate_memory,
    hook_numel,
    parameter_count,
)
from interp.model import ModelConfig, build_model, forward, masked_mean_loss
from interp.probing import collect_activations, probe

GB = 10**9
V1_UNLIMITED = "9223372036854771712"  # what cgroup v1 writes for "no limit"
V1_MOUNT = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory"
V2_MOUNT = "41 31 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw"


def fake_root(tmp_path: Path, cgroup: list[str], mountinfo: list[str], files: dict[str, str],
              available_kb: int = 16 * 10**6, status: str = "VmSize:\t 2000000 kB\nVmData:\t 1000000 kB\n") -> Path:
    """A tree with /proc/meminfo, /proc/self/{cgroup,mountinfo,status} and `files` (paths from /)."""
    root = tmp_path / "root"
    contents = {"proc/meminfo": f"MemTotal: 32000000 kB\nMemAvailable: {available_kb} kB\n",
                "proc/self/cgroup": "\n".join(cgroup) + "\n", "proc/self/mountinfo": "\n".join(mountinfo) + "\n",
                "proc/self/status": status, **files}
    for name, text in contents.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def v1_group(folder: str, limit: str, usage: int, inactive: int = 0) -> dict[str, str]:
    return {f"{folder}/memory.limit_in_bytes": limit + "\n", f"{folder}/memory.usage_in_bytes": f"{usage}\n",
            f"{folder}/memory.stat": f"cache 5\ntotal_inactive_file {inactive}\n"}


# --- the policy: each source, from a fake tree ---------------------------------------------------


def test_only_physical_memory_bounds_a_process_without_limits(tmp_path):
    root = fake_root(tmp_path, ["0::/"], [V2_MOUNT], {"sys/fs/cgroup/memory.current": "1\n"}, available_kb=5 * 10**6)
    assert available_memory("cpu", root) == memory_module.AvailableMemory(5 * 1024 * 10**6,
                                                                         "free physical memory (MemAvailable)")


def test_a_cgroup_v1_limit_bounds_the_process(tmp_path):
    # As on a cgroup v1 host (older Docker, Slurm): memory in its own hierarchy, a v2 one mounted beside it.
    group = "sys/fs/cgroup/memory/process_api/abc"
    root = fake_root(tmp_path, ["4:memory:/process_api/abc", "1:cpu:/", "0::/"],
                     [V1_MOUNT, "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw"],
                     {**v1_group("sys/fs/cgroup/memory", V1_UNLIMITED, 5 * GB),
                      **v1_group(group, str(2 * GB), GB // 2, inactive=GB // 10)})
    found = available_memory("cpu", root)
    # usage less the inactive page cache, which the kernel reclaims before it kills
    assert found.free == 2 * GB - (GB // 2 - GB // 10)
    assert found.source == "the cgroup v1 memory limit of 2.0 GB"


def test_a_cgroup_v1_limit_above_the_process_binds_too(tmp_path):
    # Slurm: the job's cgroup holds the limit, the step the process runs in has none of its own.
    job = "sys/fs/cgroup/memory/slurm/job_7"
    root = fake_root(tmp_path, ["4:memory:/slurm/job_7/step_0"], [V1_MOUNT],
                     {**v1_group(job, str(3 * GB), GB), **v1_group(f"{job}/step_0", V1_UNLIMITED, GB // 2)})
    assert available_memory("cpu", root).free == 2 * GB


def test_a_cgroup_v1_limit_without_a_limit_leaves_physical_memory(tmp_path):
    root = fake_root(tmp_path, ["4:memory:/process_api/abc"], [V1_MOUNT],
                     v1_group("sys/fs/cgroup/memory/process_api/abc", V1_UNLIMITED, GB))
    assert available_memory("cpu", root).source == "free physical memory (MemAvailable)"


def test_a_container_sees_its_own_cgroup_v1_at_the_mount_point(tmp_path):
    # Docker without a cgroup namespace: /proc/self/cgroup names /docker/<id>, mounted as the root.
    mount = "35 31 0:32 /docker/f00 /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory"
    root = fake_root(tmp_path, ["9:memory:/docker/f00"], [mount], v1_group("sys/fs/cgroup/memory", str(GB), GB // 4))
    assert available_memory("cpu", root).free == 3 * GB // 4


def test_a_cgroup_v2_limit_bounds_the_process(tmp_path):
    files = {"sys/fs/cgroup/user.slice/memory.max": f"{3 * GB}\n",
             "sys/fs/cgroup/user.slice/memory.current": f"{GB}\n",
             "sys/fs/cgroup/user.slice/run.scope/memory.max": "max\n",
             "sys/fs/cgroup/user.slice/run.scope/memory.current": f"{GB // 2}\n",
             "sys/fs/cgroup/user.slice/run.scope/memory.stat": f"anon 1\ninactive_file {GB // 4}\n"}
    root = fake_root(tmp_path, ["0::/user.slice/run.scope"], [V2_MOUNT], files)
    found = available_memory("cpu", root)
    assert (found.free, found.source) == (2 * GB, "the cgroup v2 memory limit of 3.0 GB")


def test_without_mountinfo_the_usual_cgroup_v2_mount_is_read(tmp_path):
    root = fake_root(tmp_path, ["0::/box"], [], {"sys/fs/cgroup/box/memory.max": f"{GB}\n",
                                                 "sys/fs/cgroup/box/memory.current": f"{GB // 2}\n"})
    (root / "proc/self/mountinfo").unlink()
    assert available_memory("cpu", root).free == GB // 2


@pytest.mark.parametrize(("limit", "flag", "headroom"), [
    ("RLIMIT_AS", "-v", 4 * GB - 2_000_000 * 1024),  # against VmSize
    ("RLIMIT_DATA", "-d", 4 * GB - 1_000_000 * 1024),  # against VmData
])
def test_a_ulimit_bounds_the_process(tmp_path, monkeypatch, limit, flag, headroom):
    real = resource.getrlimit
    number = getattr(resource, limit)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (4 * GB, resource.RLIM_INFINITY) if which == number
                        else (resource.RLIM_INFINITY, resource.RLIM_INFINITY) if which in
                        (resource.RLIMIT_AS, resource.RLIMIT_DATA) else real(which))
    root = fake_root(tmp_path, ["0::/"], [V2_MOUNT], {})
    found = available_memory("cpu", root)
    assert (found.free, found.source) == (headroom, f"ulimit {flag} ({limit}) of 4.0 GB")


def test_the_tightest_bound_wins(tmp_path):
    root = fake_root(tmp_path, ["4:memory:/a", "0::/b"], [V1_MOUNT, V2_MOUNT],
                     {**v1_group("sys/fs/cgroup/memory/a", str(3 * GB), GB),
                      "sys/fs/cgroup/b/memory.max": f"{4 * GB}\n", "sys/fs/cgroup/b/memory.current": f"{GB}\n"},
                     available_kb=10**6)
    assert available_memory("cpu", root).source == "free physical memory (MemAvailable)"
    (root / "proc/meminfo").write_text(f"MemAvailable: {10**8} kB\n")
    assert available_memory("cpu", root) == memory_module.AvailableMemory(2 * GB,
                                                                          "the cgroup v1 memory limit of 3.0 GB")


def test_this_machine_has_a_bound():
    found = available_memory("cpu")
    assert found is not None and found.free > 0


def test_a_training_refusal_names_the_bound(tmp_path, monkeypatch):
    root = fake_root(tmp_path, ["4:memory:/a"], [V1_MOUNT], v1_group("sys/fs/cgroup/memory/a", str(2 * GB), 0))
    monkeypatch.setattr(memory_module, "available_memory", functools.partial(available_memory, root=root))
    with pytest.raises(InsufficientMemoryError, match=r"but 2\.0 GB is available on cpu; reduce batch_size=8, .* "
                                                      r"\(memory bounded by the cgroup v1 memory limit of 2\.0 GB\)$"):
        check_memory(ModelConfig(d_vocab=10**6, d_model=16, n_heads=2, n_ctx=16, attn_only=True), "cpu", batch_size=8)


# --- the estimates --------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [
    dict(n_layers=2, d_model=32, n_heads=4, d_vocab=50, n_ctx=8),
    dict(n_layers=1, d_model=24, n_heads=2, d_head=8, d_mlp=40, d_vocab=30, n_ctx=6, attn_only=False,
         positional="rotary", normalization="RMS"),
    dict(n_layers=2, d_model=16, n_heads=2, d_vocab=11, n_ctx=12, attn_only=True),
])
def test_each_hooks_size_is_read_from_its_name(kw):
    cfg = ModelConfig(**kw)
    tokens = torch.randint(0, cfg.d_vocab, (3, cfg.n_ctx - 1))
    with torch.no_grad():
        _, cache = build_model(cfg, "cpu").run_with_cache(tokens)
    assert len(cache) > 20
    for name, value in cache.items():
        assert hook_numel(cfg, name, 3, cfg.n_ctx - 1) == value.numel(), name


@pytest.mark.parametrize("kw", [
    dict(n_layers=2, d_model=64, n_heads=4, d_vocab=300, n_ctx=32),
    dict(n_layers=3, d_model=32, n_heads=4, d_head=16, d_mlp=200, d_vocab=40, n_ctx=24),
    dict(n_layers=2, d_model=16, n_heads=2, d_vocab=2000, n_ctx=16, attn_only=True),
])
def test_the_training_estimate_counts_what_autograd_saves(kw):
    """The estimate's activations, less the two logit-sized gradients at the start of the
    backward pass, are the tensors autograd saves on the fused path (within 5%)."""
    cfg = ModelConfig(**kw)
    model = build_model(cfg, "cpu")
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    batch = {"tokens": torch.randint(0, cfg.d_vocab, (8, cfg.n_ctx))}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        masked_mean_loss(forward(model, batch), batch)
    d_mlp = 0 if cfg.attn_only else cfg.d_mlp or 4 * cfg.d_model
    backward = 2 * 8 * cfg.n_ctx * max(cfg.d_vocab, d_mlp) * FLOAT_BYTES
    estimate = estimate_memory(cfg, 8)
    assert estimate.optimizer == 3 * parameter_count(cfg) * FLOAT_BYTES
    assert abs((estimate.activations - backward) / sum(saved.values()) - 1) < 0.05


def test_the_forward_estimate_grows_with_the_batch_and_the_hooks():
    cfg = ModelConfig(n_layers=2, d_model=64, n_heads=4, d_vocab=100, n_ctx=32)
    alone = estimate_forward(cfg, 0, 0)
    assert alone.total == alone.load == 3 * parameter_count(cfg) * FLOAT_BYTES  # a state dict beside a build
    patterns = ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    one = estimate_forward(cfg, 1000, 32, patterns)
    assert one.cached == 2 * 1000 * 4 * 32 * 32 * FLOAT_BYTES and one.largest_hook == patterns[1]
    assert estimate_forward(cfg, 2000, 32, patterns).total > 1.9 * one.total - alone.parameters
    assert estimate_forward(cfg, 1000, 32, patterns, kept_copies=3).kept == 3 * one.cached


# --- probe() and collect_activations refuse before loading -----------------------------------------


@pytest.fixture
def two_gb(tmp_path, monkeypatch) -> None:
    """This process behind a 2 GB cgroup v1 limit (a fake tree), whatever the host has."""
    root = fake_root(tmp_path, ["4:memory:/job"], [V1_MOUNT], v1_group("sys/fs/cgroup/memory/job", str(2 * GB), 0))
    monkeypatch.setattr(memory_module, "available_memory", functools.partial(available_memory, root=root))


@pytest.fixture
def no_loading(monkeypatch) -> None:
    def load(*args, **kwargs):
        raise AssertionError("a checkpoint was loaded")

    monkeypatch.setattr(Run, "load", load)
    monkeypatch.setattr(Run, "load_state_dict", load)


def huge_batch(n: int) -> dict[str, torch.Tensor]:
    """n sequences that allocate nothing: one row, expanded."""
    return {"tokens": torch.zeros(1, N_CTX, dtype=torch.long).expand(n, -1)}


def test_a_probe_batch_that_cannot_fit_is_refused_before_loading(run_copy, two_gb, no_loading):
    """Probes that are no mean over rows run on the whole batch (a chunked one:
    tests/test_memory_chunks.py)."""
    from dataclasses import replace

    from interp.metrics import heads, outputs

    probes = {"ind": replace(heads.induction_probe([0, 1], N_CTX // 2), mean_over=None),
              "loss": replace(outputs.loss_probe(), mean_over=None)}
    with pytest.raises(InsufficientMemoryError) as err:
        probe(run_copy, probes, huge_batch(10**6), device="cpu")
    message = str(err.value)
    assert "\n" not in message
    assert f"on a batch of 1000000 sequences x {N_CTX} positions needs about" in message
    assert "but 2.0 GB is available on cpu; reduce the batch (memory bounded by the cgroup v1 memory limit of " \
           "2.0 GB)" in message
    assert "2 cached hook(s)" in message and "blocks.1.attn.hook_pattern" in message
    assert not (run_copy.path / "probes").exists() or not any((run_copy.path / "probes").iterdir())


def test_a_batch_that_fits_is_probed(run_copy, two_gb):
    from interp.metrics import outputs

    table = probe(run_copy, {"loss": outputs.loss_probe()}, huge_batch(4), steps=[0], device="cpu")
    assert table.values.shape == (1, 1)


def test_collect_activations_refuses_when_the_kept_activations_cannot_fit(run_copy, two_gb, no_loading):
    hook = "blocks.0.hook_resid_post"
    # [n, 12, 16] float32 per step: 0.77 KB a sequence; five steps kept, filled chunk by chunk
    n = 1_000_000
    with pytest.raises(InsufficientMemoryError, match=r"keeps 5 copies of their activations \(3\.8 GB\) .*; "
                                                      r"reduce the batch or the steps"):
        collect_activations(run_copy, hook, huge_batch(n), device="cpu")


def test_collect_activations_in_chunks_equals_one_forward(run_copy, monkeypatch):
    """A batch whose forward does not fit is collected a few rows at a time, exactly."""
    hook, steps = "blocks.1.hook_resid_mid", run_copy.steps[:2]
    batch = {"tokens": torch.randint(0, run_copy.model_config.d_vocab, (23, N_CTX),
                                     generator=torch.Generator().manual_seed(0))}
    whole = collect_activations(run_copy, hook, batch, steps=steps, device="cpu")
    cfg = run_copy.model_config
    kept = estimate_forward(cfg, 23, N_CTX, [hook], kept_copies=len(steps))
    one = estimate_forward(cfg, 1, N_CTX, [hook])
    free = kept.parameters + kept.kept + 10 * (one.cached + one.transient)  # five rows in half of what is left
    assert free > kept.load
    monkeypatch.setattr(memory_module, "available_memory", lambda device=None: AvailableMemory(free, "a test"))
    assert memory_module.forward_chunk_rows(cfg, batch, [hook], "cpu", kept_copies=len(steps)) == 5
    seen: list[int] = []
    real = type(run_copy.load(0, device="cpu")).run_with_cache
    monkeypatch.setattr(type(run_copy.load(0, device="cpu")), "run_with_cache",
                        lambda self, tokens, **kw: (seen.append(len(tokens)), real(self, tokens, **kw))[1])
    chunked = collect_activations(run_copy, hook, batch, steps=steps, device="cpu")
    assert seen == [5, 5, 5, 5, 3] * len(steps)
    assert chunked.shape == whole.shape == (len(steps), 23, N_CTX, cfg.d_model)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)


def test_the_cli_refuses_a_probe_that_cannot_fit_with_exit_2(run_copy, no_loading, monkeypatch, capsys):
    """The tiny model cannot even load (a batch that does not fit at once is computed in chunks,
    and one sequence that does not fit is refused: tests/test_memory_chunks.py)."""
    load = estimate_forward(run_copy.model_config, 0, N_CTX).load
    monkeypatch.setattr(memory_module, "available_memory", lambda device=None: AvailableMemory(load - 1, "a test"))
    assert main(["probe", str(run_copy.path), "induction", "--sequences", "1000000", "--device", "cpu"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interp probe: error: loading the model (d_vocab=")
    assert lines[0].endswith("is available on cpu (memory bounded by a test)")


def test_training_behind_a_cgroup_v1_limit_is_refused_with_exit_2(tmp_path, monkeypatch, capsys):
    """The review's case: the tiny preset with a vocabulary of a million (about 2.1 GB to train)
    under a 2 GB cgroup v1 limit, half a gigabyte of it in use; it used to be killed."""
    root = fake_root(tmp_path, ["4:memory:/job"], [V1_MOUNT],
                     v1_group("sys/fs/cgroup/memory/job", str(2 * GB), GB // 2))
    monkeypatch.setattr(memory_module, "available_memory", functools.partial(available_memory, root=root))
    out = tmp_path / "out"
    assert main(["run", "induction-heads", "--preset", "tiny", "--set", "task.d_vocab=1000000", "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "needs about 2.1 GB" in lines[0] and "but 1.5 GB is available on cpu" in lines[0]
    assert lines[0].endswith("(memory bounded by the cgroup v1 memory limit of 2.0 GB)")
    assert not out.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_real_address_space_limit_is_refused_in_one_line_not_killed(run_copy):
    """The kernel's own RLIMIT_AS, 1 GB above what the process maps after its imports: the
    probe is refused (exit 2) instead of failing to allocate."""
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "import interp.cli, interp.cli.probe\n"  # the command's imports (torch, TransformerLens) before the limit
        "size = next(int(line.split()[1]) * 1024 for line in Path('/proc/self/status').read_text().splitlines()"
        " if line.startswith('VmSize:'))\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 10**9, resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
        # A probe that runs on the whole batch (a chunked one would compute the million rows in chunks).
        "import dataclasses, interp.metrics.heads as heads\n"
        "made = heads.induction_probe\n"
        "heads.induction_probe = lambda *a: dataclasses.replace(made(*a), mean_over=None)\n"
        f"sys.exit(interp.cli.main(['probe', {str(run_copy.path)!r}, 'induction', '--sequences', '1000000', "
        "'--device', 'cpu']))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "1000000 sequences x 12 positions" in lines[0]
    assert "(memory bounded by ulimit -v (RLIMIT_AS) of " in lines[0]


def test_the_tiny_model_config_fits_here():
    check_memory(tiny_model_config(), "cpu", batch_size=4)


# --- a circuit method's own passes, the explorer's patterns ---------------------------------------


def test_the_explorers_pattern_pass_is_checked_before_loading(run_copy, no_loading, monkeypatch):
    from interp.view.patterns import example_for, example_patterns

    monkeypatch.setattr(memory_module, "available_memory", lambda device=None: AvailableMemory(10**4, "a test"))
    with pytest.raises(InsufficientMemoryError, match=r"memory bounded by a test\)$"):
        example_patterns(run_copy, example_for(run_copy), device="cpu", cache=False)
