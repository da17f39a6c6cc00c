"""The GPU check (`benchmarks/gpu_check.py`) and the static device check of the GPU path.

No GPU is needed: the script runs end to end in its CPU smoke mode, and an AST scan of the
code a GPU run takes (`interp/`, `tasks/`, `analyses/`) finds the usual CPU-only bugs before
a GPU does: tensors created without a device, pinned memory, DataLoader workers, and host
reads (`.item()`, `.numpy()`, `.cpu()`) in the trainer's per-step function.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SCANNED = ("interp", "tasks", "analyses")

# --- the static check -----------------------------------------------------------------------------

FACTORIES = frozenset({"arange", "zeros", "ones", "empty", "full", "rand", "randn", "randint", "randperm", "eye",
                       "linspace", "tensor"})
HOT_LOOP = ("interp/train_steps.py", "Stepper.step")  # the trainer's per-step function
HOST_READS = frozenset({"item", "numpy", "cpu", "tolist"})


@dataclass(frozen=True)
class Finding:
    path: str
    qualname: str  # the enclosing class/function, e.g. "Stepper.step"; "<module>" at top level
    kind: str  # "factory", "pin_memory", "dataloader_workers", "hot_loop_read" or "numpy_on_device"
    line: int
    code: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} in {self.qualname}: {self.kind}: {self.code}"


# Reviewed call sites where tensors are made on the CPU on purpose, by (file, function, kind):
# data is generated on the CPU from CPU torch.Generators (interp.seeding) and moved by the
# caller (`batch_to` in the trainer, `probe`, an evaluator built for a device). Every entry
# covers all calls of its kind in that function; one that matches nothing fails a test below.
ALLOWED: dict[tuple[str, str, str], str] = {
    ("interp/batches.py", "repeated_patch_batch", "factory"):
        "a patching batch drawn from a CPU generator; probe() moves the batch with batch_to",
    ("interp/metrics/probe_fitting.py", "_fit_sparse", "numpy_on_device"):
        "TransformerLens's sparse probe fitted on CPU tensors made with torch.from_numpy: its results are on the CPU",
    ("interp/probe_batches.py", "text_batch", "factory"):
        "token ids from a tokenizer, a CPU batch; probe() moves it with batch_to",
    ("interp/view/patterns.py", "Example.batch", "factory"):
        "the explorer's example as a CPU batch; moved to the device where its patterns are computed",
    ("tasks/biographies.py", "Biographies.value_batch", "factory"):
        "probe labels built from Python lists on the CPU; probe() moves the batch with batch_to",
    ("tasks/cyclic.py", "CyclicDocuments.identity_batch", "factory"):
        "a CPU probe batch (positions, document ids); probe() moves it with batch_to",
    ("tasks/fewshot.py", "FewShot.answer_batch", "factory"):
        "a CPU probe batch (query masks); probe() moves it with batch_to",
    ("analyses/icl_transience.py", "<module>", "factory"):
        "ICL_ACCURACY wraps a Python float (accuracy is computed on the host) as the patching metric's value",
    ("interp/train_steps.py", "_total_norm", "factory"):
        "no gradients: a CPU 0.0, as torch's own get_total_norm returns (the fallback for torch < 2.6)",
    ("interp/batches.py", "repeated_tokens", "factory"):
        "probe tokens drawn from a CPU generator; probe() moves the batch with batch_to",
    ("interp/probe_cache.py", "batch_hash", "numpy_on_device"):
        "hashes a tensor copied to the CPU on the line before (`.detach().cpu()`)",
    ("tasks/biographies.py", "Biographies.batch", "factory"):
        "draws the batch's numpy seed from the CPU generator",
    ("tasks/biographies.py", "Population.batch", "factory"):
        "draws the batch's numpy seed from the CPU generator",
    ("tasks/fewshot.py", "FewShot.__init__", "factory"):
        "the class and exemplar bank, drawn once on the CPU; batches are gathered from it on the CPU",
    ("tasks/fewshot.py", "FewShot._classes", "factory"):
        "CPU batch generation from the CPU generator (and an empty draw)",
    ("tasks/fewshot.py", "FewShot._draw_excluding", "factory"):
        "CPU batch generation from the CPU generator",
    ("tasks/fewshot.py", "FewShot._distinct_exemplars", "factory"):
        "CPU batch generation from the CPU generator",
    ("tasks/fewshot.py", "FewShot.sample", "factory"):
        "CPU batch generation; the trainer moves the batch with batch_to",
    ("tasks/fewshot.py", "FewShot.evaluation", "factory"):
        "CPU evaluation batches; FewShot.evaluators and the analysis move them with batch_to",
    ("tasks/fewshot.py", "FewShot._iwl", "factory"):
        "CPU batch generation from the CPU generator",
    ("tasks/fewshot.py", "FewShot._assemble", "factory"):
        "CPU batch assembly; moved by the trainer / evaluators with batch_to",
    ("tasks/forgetting.py", "UpstreamCorpus.batch", "factory"):
        "row indices drawn from the CPU generator to index the CPU corpus",
    ("tasks/forgetting.py", "FineTuningTask.batch", "factory"):
        "draws the batch's numpy seed from the CPU generator",
    ("tasks/induction.py", "RepeatedSegments.__init__", "factory"):
        "a fixed token permutation from a seeded CPU generator, used in CPU data generation",
    ("tasks/induction.py", "RepeatedSegments.sample", "factory"):
        "CPU batch generation; the trainer moves the batch with batch_to",
    ("tasks/induction.py", "filler_tokens", "factory"):
        "CPU batch generation from the CPU generator",
    ("tasks/induction.py", "RecurringPairs.__init__", "factory"):
        "a fixed token permutation from a seeded CPU generator, used in CPU data generation",
    ("tasks/induction.py", "RecurringPairs.sample", "factory"):
        "CPU batch generation; the trainer moves the batch with batch_to",
    ("tasks/induction.py", "_randint", "factory"):
        "one integer drawn from the CPU generator",
    ("analyses/induction_heads.py", "probe_batch", "factory"):
        "a mask beside the CPU probe tokens; probe() moves the whole batch with batch_to",
}


class DeviceScanner(ast.NodeVisitor):
    """Finds, in one module, the calls a GPU run trips over (see `Finding.kind`)."""

    def __init__(self, path: str, source: str):
        self.path, self.source = path, source
        self.scope: list[str] = []
        self.findings: list[Finding] = []
        self.torch_names = {"torch"}  # names bound to the torch module (`import torch as th`)
        self.factory_names: set[str] = set()  # factories imported by name (`from torch import zeros`)

    def visit_Import(self, node: ast.Import) -> None:
        self.torch_names |= {alias.asname or alias.name for alias in node.names if alias.name == "torch"}

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module == "torch":
            self.factory_names |= {alias.asname or alias.name for alias in node.names if alias.name in FACTORIES}

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        method = func.attr if isinstance(func, ast.Attribute) else None
        keywords = {k.arg for k in node.keywords}
        # `**options` may carry a device: not flagged.
        if self._is_factory(func) and "device" not in keywords and None not in keywords:
            self._add("factory", node)
        if method == "pin_memory":
            self._add("pin_memory", node)
        called = method or (func.id if isinstance(func, ast.Name) else None)
        if called == "DataLoader" and "num_workers" in keywords:
            self._add("dataloader_workers", node)
        if method in HOST_READS and (self.path, self.qualname) == HOT_LOOP:
            self._add("hot_loop_read", node)
        if method == "numpy" and not _on_cpu(func.value):
            self._add("numpy_on_device", node)
        self.generic_visit(node)

    @property
    def qualname(self) -> str:
        return ".".join(self.scope) or "<module>"

    def _is_factory(self, func: ast.expr) -> bool:
        if isinstance(func, ast.Attribute):
            return func.attr in FACTORIES and isinstance(func.value, ast.Name) and func.value.id in self.torch_names
        return isinstance(func, ast.Name) and func.id in self.factory_names

    def _add(self, kind: str, node: ast.Call) -> None:
        code = ast.get_source_segment(self.source, node) or ast.unparse(node)
        self.findings.append(Finding(self.path, self.qualname, kind, node.lineno, " ".join(code.split())[:100]))


def _on_cpu(receiver: ast.expr) -> bool:
    """Whether `receiver.numpy()` reads a tensor just copied to the host: `x.cpu()` or `x.to("cpu")`."""
    if not isinstance(receiver, ast.Call) or not isinstance(receiver.func, ast.Attribute):
        return False
    if receiver.func.attr == "cpu":
        return True
    return receiver.func.attr == "to" and any(isinstance(a, ast.Constant) and a.value == "cpu" for a in receiver.args)


def scan_source(path: str, source: str) -> list[Finding]:
    scanner = DeviceScanner(path, source)
    scanner.visit(ast.parse(source))
    return scanner.findings


def scan_tree(root: Path = ROOT) -> list[Finding]:
    return [finding for folder in SCANNED for file in sorted((root / folder).rglob("*.py"))
            for finding in scan_source(file.relative_to(root).as_posix(), file.read_text())]


def test_the_gpu_path_makes_tensors_on_explicit_devices_and_never_waits_in_the_step():
    unreviewed = [f for f in scan_tree() if (f.path, f.qualname, f.kind) not in ALLOWED]
    assert not unreviewed, ("device problems on the GPU path (pass device=, move the batch with batch_to, "
                            "or review the site and add it to ALLOWED with a reason):\n"
                            + "\n".join(map(str, unreviewed)))


def test_every_allowed_site_still_exists():
    found = {(f.path, f.qualname, f.kind) for f in scan_tree()}
    stale = sorted(set(ALLOWED) - found)
    assert not stale, f"ALLOWED entries that match no call any more (remove them): {stale}"


def test_the_scanner_finds_each_kind_of_problem():
    source = '''
import torch
from torch import zeros as z
from torch.utils.data import DataLoader

def make(device, **options):
    torch.arange(3)
    z(2)
    torch.ones(2, device=device)
    torch.empty(2, **options)
    torch.zeros_like(device)
    DataLoader([], num_workers=2)
    DataLoader([])
    return device.pin_memory(), device.numpy(), device.cpu().numpy(), device.to("cpu").numpy()

class Stepper:
    def step(self, loss):
        return loss.item(), loss.detach()
'''
    kinds = [(f.qualname, f.kind, f.code) for f in scan_source("interp/train_steps.py", source)]
    assert kinds == [("make", "factory", "torch.arange(3)"), ("make", "factory", "z(2)"),
                     ("make", "dataloader_workers", "DataLoader([], num_workers=2)"),
                     ("make", "pin_memory", "device.pin_memory()"), ("make", "numpy_on_device", "device.numpy()"),
                     ("Stepper.step", "hot_loop_read", "loss.item()")]


# --- the script ---------------------------------------------------------------------------------


def strict_json(text: str) -> Any:
    """`json.loads` that refuses NaN and infinities, as a strict JSON reader does."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_a_failing_or_hanging_subprocess_is_recorded_not_fatal(gpu_check, tmp_path):
    failed = gpu_check.run_subprocess([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); "
                                       "sys.exit(3)"], 30, tmp_path / "fail.log")
    assert failed["status"] == "failed" and failed["returncode"] == 3 and "boom" in failed["stderr_tail"]
    started = time.perf_counter()
    hung = gpu_check.run_subprocess([sys.executable, "-c", "import time; time.sleep(60)"], 1, tmp_path / "hang.log")
    assert hung["status"] == "timeout" and hung["returncode"] is None and time.perf_counter() - started < 60
    ok = gpu_check.run_subprocess([sys.executable, "-c", "print('fine')"], 30, tmp_path / "ok.log")
    assert ok["status"] == "ok" and "stderr_tail" not in ok
    assert (tmp_path / "ok.stdout.txt").read_text().strip() == "fine"


def test_an_exhausted_budget_skips_every_stage_and_says_so(gpu_check, tmp_path):
    assert gpu_check.main(["--device", "cpu", "--smoke", "--budget-s", "1", "--out", str(tmp_path)]) == 0
    summary = strict_json((tmp_path / "summary.json").read_text())
    assert summary["reached"] == ["environment"]
    assert {s["stage"] for s in summary["skipped"]} == {"tiny_presets", "throughput", "slices"}
    assert all(summary[stage]["status"] == "skipped" for stage in ("tiny_presets", "throughput", "slices"))


def test_the_hard_time_limit_stops_a_stage_that_runs_too_long(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "slices_stage", lambda *args: time.sleep(60))  # an item that never ends
    started = time.perf_counter()
    code = gpu_check.main(["--device", "cpu", "--smoke", "--budget-s", "8", "--stages", "slices", "--out",
                           str(tmp_path)])
    assert code == 0 and time.perf_counter() - started < 60  # stopped before the hung item's 60 s, however busy
    summary = strict_json((tmp_path / "summary.json").read_text())
    assert summary["slices"]["status"] == "partial" and summary["reached"] == ["environment", "slices"]
    assert any("hard time limit" in s["reason"] for s in summary["skipped"] if s["stage"] == "slices")


def test_no_cuda_is_reported_as_a_failure_not_a_crash(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--device", "cuda", "--out", str(tmp_path)]) == 1
    summary = strict_json((tmp_path / "summary.json").read_text())
    assert "CUDA is not available" in summary["environment"]["error"]
    assert summary["failures"][0]["stage"] == "environment"


@pytest.mark.slow
def test_cpu_smoke_mode_runs_every_stage_end_to_end(tmp_path):
    """The command a GPU machine runs, on CPU with tiny shapes (~30-45 s on 2 busy cores). Its
    steps and rounds are fixed by --smoke, so the budget is set far beyond them: no stage may be
    cut short by the load of the machine, and the test asserts no wall time (the timeout only
    guards against a hang)."""
    out = tmp_path / "check"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--budget-s", "3600",
                           "--tiny-timeout-s", "1800", "--threads", "1", "--out", str(out)], capture_output=True,
                          text=True, timeout=3600, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = strict_json((out / "summary.json").read_text())
    assert summary["reached"] == ["environment", "tiny_presets", "throughput", "slices"]
    assert summary["failures"] == []
    assert [s for s in summary["skipped"] if "budget" in s["reason"]] == []  # nothing cut short by time
    assert all(summary[stage]["status"] == "done" for stage in ("tiny_presets", "throughput", "slices"))
    env = summary["environment"]
    assert env["device"] == "cpu" and env["torch"] and env["transformer_lens"] and "memory_total_gib" in env

    tiny = summary["tiny_presets"]["items"]
    assert [i["analysis"] for i in tiny] == ["induction-heads"]
    assert tiny[0]["status"] == "ok" and tiny[0]["ran_on"] == "cpu"

    throughput = {(i["shape"], i["precision"]): i for i in summary["throughput"]["items"]}
    assert set(throughput) == {("tiny", "fp32"), ("tiny", "bf16")}
    for item in throughput.values():
        assert item["status"] == "done" and item["trainer/plain"] > 0
        assert min(item["tokens_per_s"].values()) > 0

    slices = {i["analysis"]: i for i in summary["slices"]["items"]}
    assert set(slices) == {"induction-heads", "lowrank-forgetting", "fact-learning", "icl-transience",
                           "anticipatory-recovery"}
    for item in slices.values():
        assert item["status"] == "done" and item["estimate_s"] > 0 and item["docs_estimate"]
        assert all(part["timing"]["steps_measured"] >= 1 and part["seconds"] > 0 for part in item["parts"])
    assert slices["lowrank-forgetting"]["parts"][1]["timing"]["finish_s"] > 0  # each fine-tuning run's scoring

    markdown = (out / "summary.md").read_text()
    for heading in ("## Environment", "## Tiny presets", "## Throughput", "## Slices"):
        assert heading in markdown
