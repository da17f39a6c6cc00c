"""GPU check: one short run that proves the CUDA path and measures what the GPU presets cost.

GPU machines are lent rarely and briefly, so this script does everything worth knowing
about a GPU in one command, inside a hard time budget (`--budget-s`, default 480 s):

1. environment: the device, CUDA / torch / TransformerLens versions, memory;
2. tiny presets: every registered analysis's `tiny` preset on the device, each one
   `interp run NAME --preset tiny --device DEVICE --quiet` in its own process with a time
   limit; a failure (exit status, stderr tail) is collected, not fatal;
3. throughput: trainer vs plain PyTorch tokens/s in fp32 and bf16 on the induction-heads
   `quick` and `gpu` shapes, with the variants of `benchmarks/train_throughput.py`;
4. slices: for every analysis with a `gpu` or `paper` preset, its plan (`interp.plan`, the
   table `interp run --plan` prints): the first steps of each run shape it trains (the
   analysis's own jobs: model, training config, data and evaluators), one evaluation and one
   checkpoint, extrapolated to the whole preset and set beside the estimate of
   docs/performance.md.

Every stage checks the time left before each item (and the slices between steps) and stops
cleanly. `summary.json` (strict JSON) and `summary.md` under `--out` are rewritten after
every item and say what was reached and what was skipped, so a run killed from outside
still leaves its summary. Exit status 1 when any item failed, else 0.

    python benchmarks/gpu_check.py --out gpu_check                     # on a GPU machine
    python benchmarks/gpu_check.py --device cpu --smoke --out /tmp/gc  # the CPU smoke test (seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import PlainTransformer, run_variant  # noqa: E402

from interp.analysis import Analysis, json_safe, load_all  # noqa: E402
from interp.bridge import installed_version  # noqa: E402
from interp.devices import resolve_device  # noqa: E402
from interp.model import build_model, trainable_parameters  # noqa: E402
from interp.plan import AnalysisPlan, plan_analysis, plan_json, plan_text  # noqa: E402

STAGES = ("environment", "tiny_presets", "throughput", "slices")
# Share of the time left when a stage starts that the stage may use; what it leaves goes to the
# next. The slices come last and may use the rest: they stop between steps.
STAGE_SHARE = {"tiny_presets": 0.45, "throughput": 0.35, "slices": 1.0}
RESERVE_S = 3.0  # kept back from every stage for writing the summary
SMOKE_TINY = ("induction-heads",)  # the smoke run's one tiny preset: a subprocess costs seconds of imports
LARGE_PRESETS = ("gpu", "paper")
STDERR_TAIL_CHARS = 4000


@dataclass(frozen=True)
class DocsEstimate:
    """An estimated wall time on one GPU from docs/performance.md ("GPU presets"), as text
    and as a range in seconds (None where the docs give no number)."""

    preset: str
    text: str
    low_s: float | None
    high_s: float | None

    @property
    def mid_s(self) -> float | None:
        return None if self.low_s is None or self.high_s is None else (self.low_s + self.high_s) / 2


HOUR = 3600.0
# docs/performance.md, table "GPU presets", column "estimated time on one H100" (written before
# any GPU run: these are the numbers the slices are checked against).
DOCS_ESTIMATES: dict[str, DocsEstimate] = {
    "induction-heads": DocsEstimate("gpu", "~5 min", 300.0, 300.0),
    "lowrank-forgetting": DocsEstimate("gpu", "~30 min", 1800.0, 1800.0),
    "fact-learning": DocsEstimate("paper", "1-1.5 h", 1 * HOUR, 1.5 * HOUR),
    # "~3-4 h per run; a day for the analysis" with its 7 runs on one GPU.
    "icl-transience": DocsEstimate("paper", "~3-4 h per run, 7 runs (a day)", 7 * 3 * HOUR, 7 * 4 * HOUR),
    "anticipatory-recovery": DocsEstimate("paper", "minutes", None, None),
}


# --- the budget and the summary ------------------------------------------------------------------


class Budget:
    """The hard overall time limit: every stage and item asks it how much time is left.
    `spent_s` was used before it started (the script's imports)."""

    def __init__(self, total_s: float, spent_s: float = 0.0):
        self.total_s = total_s
        self.started = time.perf_counter() - spent_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.total_s - RESERVE_S - self.elapsed()

    def stage_deadline(self, share: float) -> float:
        """The `time.perf_counter()` value a stage allowed `share` of the time left must end by."""
        return time.perf_counter() + share * max(0.0, self.left())


def seconds_to(deadline: float) -> float:
    return deadline - time.perf_counter()


class BudgetExceeded(BaseException):  # noqa: N818 - read as "raise BudgetExceeded"
    """Raised by `hard_stop`'s alarm in whatever runs when the time is up (a data set being
    built, an evaluation). A BaseException, so the items' `except Exception` lets it through."""


@contextlib.contextmanager
def hard_stop(seconds: float) -> Iterator[None]:
    """Interrupt the body with `BudgetExceeded` after `seconds`: the stages check the time
    between items and steps, and this catches what runs too long inside one (main thread
    only; without SIGALRM the checks alone bound the time)."""
    if not hasattr(signal, "SIGALRM") or seconds <= 0:
        yield
        return

    def alarm(signum: int, frame: Any) -> None:
        raise BudgetExceeded

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def process_age_s() -> float:
    """Seconds since this process started (Linux; 0 where unknown): importing torch and
    TransformerLens takes seconds, and the budget is for the whole command."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks since boot
        return max(0.0, float(Path("/proc/uptime").read_text().split()[0]) - started)
    except (OSError, ValueError, IndexError):
        return 0.0


class Summary:
    """What the check has found so far; `save` rewrites `summary.json` and `summary.md`."""

    def __init__(self, out: Path, args: dict[str, Any], budget: Budget):
        self.out, self.budget = out, budget
        self.data: dict[str, Any] = {
            "check": "gpu_check",
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "args": args,
            "budget": {"budget_s": budget.total_s},
            "reached": [],
            "skipped": [],
            "failures": [],
            **{stage: {"status": "not reached", "items": []} for stage in STAGES if stage != "environment"},
            "environment": {"status": "not reached"},
        }

    def stage(self, name: str) -> dict[str, Any]:
        return self.data[name]

    def skip(self, stage: str, item: str, reason: str) -> None:
        self.data["skipped"].append({"stage": stage, "item": item, "reason": reason})
        print(f"  skipped {stage}/{item}: {reason}", flush=True)

    def fail(self, stage: str, item: str, error: str) -> None:
        self.data["failures"].append({"stage": stage, "item": item, "error": error[-STDERR_TAIL_CHARS:]})

    def record(self, stage: str, item: dict[str, Any], line: str) -> None:
        """One finished item of `stage`: kept, printed, and the summary saved at once (a hard stop
        later still leaves it on disk)."""
        self.data[stage]["items"].append(item)
        print(f"  {line}", flush=True)
        self.save()

    def reached(self, stage: str, status: str) -> None:
        self.data[stage]["status"] = status
        if status in ("done", "partial") and stage not in self.data["reached"]:
            self.data["reached"].append(stage)

    def save(self) -> None:
        self.data["budget"].update({"elapsed_s": round(self.budget.elapsed(), 1),
                                    "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        # Strict JSON: a NaN or infinity (an undefined ratio) is written as null, never as NaN.
        text = json.dumps(json_safe(self.data), indent=2, allow_nan=False) + "\n"
        atomic_write_text(self.out / "summary.json", text)
        atomic_write_text(self.out / "summary.md", markdown(self.data))


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- 1. environment ------------------------------------------------------------------------------


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, the device and its memory; `error` when the device cannot be used."""
    env: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformer_lens": installed_version(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        # fp32 matmuls on tensor cores (TF32) are off by default: the fp32 numbers below are true fp32.
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        if not torch.cuda.is_available():
            env["error"] = (f"CUDA is not available (torch {torch.__version__}, built with CUDA "
                            f"{torch.version.cuda}, {torch.cuda.device_count()} devices)")
            return env
        props = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        env.update({"device_name": props.name, "capability": f"{props.major}.{props.minor}",
                    "multiprocessors": props.multi_processor_count, "memory_total_gib": round(total / 2**30, 2),
                    "memory_free_gib": round(free / 2**30, 2), "bf16_supported": torch.cuda.is_bf16_supported(),
                    "cudnn": torch.backends.cudnn.version(), "driver": nvidia_driver()})
    else:
        env["device_name"] = platform.processor() or platform.machine()
        try:
            env["memory_total_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 2)
        except (ValueError, OSError, AttributeError):  # not every platform names these
            env["memory_total_gib"] = None
    return env


def nvidia_driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found.stdout.strip().splitlines()[0] if found.returncode == 0 and found.stdout.strip() else None


# --- 2. tiny presets, one subprocess each --------------------------------------------------------


def run_subprocess(cmd: Sequence[str], timeout_s: float, log_prefix: Path,
                   env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `cmd` with a time limit; stdout and stderr go to `<log_prefix>.stdout/.stderr.txt`.

    The child leads its own process group, so a timeout kills whatever it started too (a
    worker pool) and only that. Returns status ("ok", "failed" or "timeout"), exit code,
    wall time and, unless ok, the tail of stderr."""
    log_prefix.parent.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = log_prefix.with_suffix(".stdout.txt"), log_prefix.with_suffix(".stderr.txt")
    started = time.perf_counter()
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(list(cmd), stdout=stdout, stderr=stderr, env=env, start_new_session=True)
        code: int | None = None
        try:
            code = proc.wait(timeout=max(0.1, timeout_s))
        except subprocess.TimeoutExpired:
            pass
        finally:
            if proc.poll() is None:  # timed out, or the budget ran out while waiting
                with contextlib.suppress(ProcessLookupError):  # the group may be gone already
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    wall = time.perf_counter() - started
    result: dict[str, Any] = {"status": "ok" if code == 0 else "timeout" if code is None else "failed",
                              "returncode": code, "wall_s": round(wall, 2)}
    if code != 0:
        tail = stderr_path.read_text(errors="replace")[-STDERR_TAIL_CHARS:]
        result["stderr_tail"] = tail if code is not None else f"killed after {timeout_s:.0f} s\n{tail}"
    return result


def interp_command() -> list[str]:
    """`interp`, the console script beside this Python (else the module), so the child runs
    exactly what a user's `interp run` runs, in the same environment."""
    script = Path(sys.executable).parent / "interp"
    return [str(script)] if script.exists() else [sys.executable, "-m", "interp.cli"]


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        # torch reads these at start-up: a child on a busy small machine then computes on one core.
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def tiny_stage(summary: Summary, names: Sequence[str], device: str, deadline: float, timeout_s: float,
               out: Path, threads: int, keep_runs: bool) -> None:
    for name in names:
        left = seconds_to(deadline)
        if left < 5:
            summary.skip("tiny_presets", name, f"budget: {max(0.0, left):.0f} s left in the stage")
            continue
        run_dir = out / "tiny" / name
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [*interp_command(), "run", name, "--preset", "tiny", "--device", device, "--quiet",
               "--out", str(run_dir)]
        limit = min(timeout_s, left)
        print(f"  tiny {name} (limit {limit:.0f} s) ...", flush=True)
        item: dict[str, Any] = {"analysis": name, "command": " ".join(cmd),
                                **run_subprocess(cmd, limit, out / "tiny" / f"{name}.log", child_env(threads))}
        results = run_dir / "results.json"
        if item["status"] == "ok" and results.exists():
            reported = json.loads(results.read_text())
            item["ran_on"], item["analysis_wall_s"] = reported.get("device"), reported.get("wall_seconds")
            # The point of the stage: the run must really have used the device asked for.
            if str(item["ran_on"]).split(":")[0] != torch.device(device).type:
                item["status"] = "failed"
                item["stderr_tail"] = f"asked for {device}, results.json says it ran on {item['ran_on']}"
        elif item["status"] == "ok":
            item["status"], item["stderr_tail"] = "failed", "exit status 0 but no results.json"
        if item["status"] == "ok" and not keep_runs:
            shutil.rmtree(run_dir / "runs", ignore_errors=True)  # checkpoints: only the results travel back
        else:
            summary.fail("tiny_presets", name, item.get("stderr_tail", ""))
        summary.record("tiny_presets", item, f"tiny {name}: {item['status']} in {item['wall_s']:.1f} s")


# --- 3. throughput: trainer vs plain PyTorch ------------------------------------------------------


@dataclass(frozen=True)
class ThroughputShape:
    name: str
    preset: str  # an induction-heads preset: its model, batch size and task
    steps: int  # steps per measured run


THROUGHPUT_SHAPES = (ThroughputShape("quick", "quick", 300), ThroughputShape("gpu", "gpu", 150))
SMOKE_THROUGHPUT_SHAPES = (ThroughputShape("tiny", "tiny", 5),)
PRECISIONS = ("fp32", "bf16")
VARIANTS = ("trainer", "plain")


def throughput_stage(summary: Summary, shapes: Sequence[ThroughputShape], device: torch.device, deadline: float,
                     rounds: int, warmup_steps: int) -> None:
    from analyses.induction_heads import PRESETS
    from tasks.induction import RecurringPairs

    scratch = Path(tempfile.mkdtemp(prefix="gpu_check_tput_"))
    try:
        for shape in shapes:
            preset = PRESETS[shape.preset]
            cfg, batch_size, data = preset.model, preset.train.batch_size, RecurringPairs(preset.task)
            n_plain = sum(p.numel() for p in PlainTransformer(cfg).parameters())
            n_bridge = sum(p.numel() for p in trainable_parameters(build_model(cfg, device="cpu")))
            for precision in PRECISIONS:
                item_name = f"{shape.name}/{precision}"
                if seconds_to(deadline) < 2:
                    summary.skip("throughput", item_name, "budget: the stage's time is spent")
                    continue
                print(f"  throughput {item_name} ...", flush=True)
                try:
                    item = measure_throughput(shape, cfg, batch_size, data, device, precision, deadline, rounds,
                                              warmup_steps, scratch)
                except Exception as err:  # noqa: BLE001 - a failing item is reported, the check goes on
                    summary.fail("throughput", item_name, traceback.format_exc())
                    item = {"shape": shape.name, "precision": precision, "status": "failed",
                            "error": f"{type(err).__name__}: {err}"}
                item["parameters"] = {"plain": n_plain, "bridge": n_bridge}
                if item.get("skipped_runs"):
                    summary.skip("throughput", item_name, f"budget: {item['skipped_runs']} measured runs not started")
                summary.record("throughput", item, f"throughput {item_name}: {item.get('status')} "
                               f"trainer/plain {fmt(item.get('trainer/plain'), '.3f')}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def measure_throughput(shape: ThroughputShape, cfg: Any, batch_size: int, data: Any, device: torch.device,
                       precision: str, deadline: float, rounds: int, warmup_steps: int,
                       scratch: Path) -> dict[str, Any]:
    """Interleaved rounds of `train_throughput.run_variant` (trainer end to end, plain loop) and
    the trainer's fixed cost (`trainer-1-step`), after an unmeasured warm-up of each variant."""
    tokens_per_step = batch_size * cfg.n_ctx
    warm_walls = {}
    for name in VARIANTS:  # first use of these shapes on the device: kernels, workspaces, autocast
        warm_walls[name] = run_variant(name, warmup_steps, batch_size, cfg, data, device, scratch, f"w_{name}",
                                       precision)[0]
    # A measured run is started only if it should end in time, judged by the warm-up's pace.
    expected = {name: 1.5 * wall / warmup_steps * shape.steps for name, wall in warm_walls.items()}
    walls: dict[str, list[float]] = {name: [] for name in (*VARIANTS, "trainer-1-step")}
    skipped = 0
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[: r % len(VARIANTS)]
        for name in (*order, "trainer-1-step"):
            if seconds_to(deadline) < expected.get(name, warm_walls["trainer"]):
                skipped += 1
                continue
            steps = 1 if name == "trainer-1-step" else shape.steps
            walls[name].append(run_variant(name, steps, batch_size, cfg, data, device, scratch, f"{r}_{name}",
                                           precision)[0])
    item: dict[str, Any] = {"shape": shape.name, "precision": precision, "steps": shape.steps,
                            "batch_size": batch_size, "n_ctx": cfg.n_ctx, "d_model": cfg.d_model,
                            "n_layers": cfg.n_layers, "rounds_measured": min(len(walls[v]) for v in VARIANTS),
                            "wall_s": walls, "skipped_runs": skipped}
    if not all(walls[v] for v in VARIANTS):
        item["status"] = "skipped"
        return item
    tput = {v: shape.steps * tokens_per_step / statistics.median(walls[v]) for v in VARIANTS}
    ms_per_step = {v: 1e3 * statistics.median(walls[v]) / shape.steps for v in VARIANTS}
    item.update({"status": "done", "tokens_per_s": tput, "ms_per_step": ms_per_step,
                 "trainer/plain": tput["trainer"] / tput["plain"]})
    if walls["trainer-1-step"]:
        # The trainer's steps alone: its end-to-end time minus a 1-step run's (bridge, config, checkpoints).
        fixed = statistics.median(walls["trainer-1-step"])
        steady = statistics.median(walls["trainer"]) - fixed
        item["trainer_fixed_s"] = fixed
        item["trainer_steady_tokens_per_s"] = (shape.steps - 1) * tokens_per_step / steady if steady > 0 else None
    return item


# --- 4. slices of the gpu / paper presets -------------------------------------------------------


def slices_stage(summary: Summary, analyses: dict[str, Analysis], device: torch.device, deadline: float,
                 max_steps: int, smoke: bool) -> None:
    """Each analysis's `gpu`/`paper` preset planned on the device (`interp.plan`, as `interp run
    --plan` does): the first steps of each run shape it declares, extrapolated to the preset."""
    todo = []
    for name, analysis in analyses.items():
        large = [p for p in LARGE_PRESETS if p in analysis.presets]
        if not large:
            continue
        if analysis.run_shapes is None:
            summary.skip("slices", name, f"no run shapes for its {large[0]} preset: give it Analysis.run_shapes")
            continue
        todo.append((name, large[0]))
    for index, (name, preset) in enumerate(todo):
        left = seconds_to(deadline)
        if left < 5:
            summary.skip("slices", f"{name} --preset {preset}", f"budget: {max(0.0, left):.0f} s left")
            continue
        measured = "tiny" if smoke else preset
        print(f"  slice {name} --preset {measured} ...", flush=True)
        try:
            cfg = analyses[name].presets[measured]
            timed = [s for s in analyses[name].run_shapes(cfg) if not s.measure_as]
            # Each analysis gets an equal share of what is left, each of its timed shapes an equal part of that.
            seconds = left / (len(todo) - index) / max(1, len(timed))
            plan = plan_analysis(analyses[name], measured, cfg, device, slice_seconds=seconds, max_steps=max_steps)
            print(plan_text(plan), flush=True)
            item = slice_item(name, preset, plan)
        except Exception as err:  # noqa: BLE001 - a failing analysis is reported, the check goes on
            summary.fail("slices", name, traceback.format_exc())
            item = {"analysis": name, "preset": preset, "status": "failed", "error": f"{type(err).__name__}: {err}"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        summary.record("slices", item, f"slice {name}: {item['status']}, estimated "
                       f"{hms(item.get('estimate_s'))} (docs: {item.get('docs_estimate', '-')})")


def slice_item(name: str, preset: str, plan: AnalysisPlan) -> dict[str, Any]:
    data = plan_json(plan)
    total = plan.seconds
    docs = DOCS_ESTIMATES.get(name)
    item: dict[str, Any] = {"analysis": name, "preset": preset, "measured_preset": plan.preset, "status": "done",
                            "parts": data.pop("shapes"), **data, "estimate_s": total, "estimate": hms(total),
                            "plan": plan_text(plan), "docs_estimate": docs.text if docs else None,
                            "docs_source": "docs/performance.md, GPU presets (one H100)"}
    if plan.preset != preset:
        item["note"] = f"smoke: the {plan.preset} preset stands in for {preset}; no comparison with the docs"
    elif docs is not None and docs.mid_s and total is not None:
        item["estimate_over_docs"] = total / docs.mid_s
    return item


# --- the summary as Markdown ---------------------------------------------------------------------


def fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def hms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * HOUR:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / HOUR:.1f} h"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(fmt(c) for c in row) + " |" for row in rows), ""]


def markdown(data: dict[str, Any]) -> str:
    env, budget = data["environment"], data["budget"]
    lines = [f"# GPU check: {env.get('device_name', env.get('device', '?'))} ({env.get('device', '?')}), "
             f"{data['started']}", "",
             f"Budget {budget['budget_s']:.0f} s, used {budget.get('elapsed_s', 0):.0f} s. Reached: "
             f"{', '.join(data['reached']) or 'nothing'}. Skipped items: {len(data['skipped'])}. "
             f"Failures: {len(data['failures'])}.", ""]
    if data["args"].get("smoke"):
        lines += ["Smoke mode: tiny shapes and few steps; the numbers say nothing about any GPU.", ""]
    lines += ["## Environment", "", *md_table(["key", "value"], [[k, v] for k, v in env.items()])]
    tiny = data["tiny_presets"]
    lines += [f"## Tiny presets ({tiny['status']})", "", *md_table(
        ["analysis", "status", "wall s", "ran on", "analysis s"],
        [[i["analysis"], i["status"], i.get("wall_s"), i.get("ran_on"), i.get("analysis_wall_s")]
         for i in tiny["items"]])]
    tput = data["throughput"]
    lines += [f"## Throughput: trainer vs plain PyTorch ({tput['status']})", "", *md_table(
        ["shape", "precision", "trainer tok/s", "plain tok/s", "trainer/plain", "trainer steady tok/s",
         "plain ms/step", "trainer fixed s"],
        [[i["shape"], i["precision"], *(i.get("tokens_per_s", {}).get(v) for v in VARIANTS), i.get("trainer/plain"),
          i.get("trainer_steady_tokens_per_s"), i.get("ms_per_step", {}).get("plain"), i.get("trainer_fixed_s")]
         for i in tput["items"]])]
    slices = data["slices"]
    lines += [f"## Slices of the gpu / paper presets ({slices['status']})", "",
              "Training only (per run: setup, model build, steps, evaluations, checkpoints); probes, figures "
              "and reports are not counted. The docs' estimates are for one H100 (docs/performance.md).", "",
              *md_table(["analysis", "preset", "estimated", "docs estimate", "estimate / docs"],
                        [[i["analysis"], i.get("measured_preset", i["preset"]), i.get("estimate"),
                          i.get("docs_estimate"), i.get("estimate_over_docs")] for i in slices["items"]])]
    part_rows = [[i["analysis"], p["label"], p["runs"], p["batch_size"], p["precision"], t.get("steps_measured"),
                  t.get("first_step_s"), t.get("step_s") and 1e3 * t["step_s"], t.get("data_s") and 1e3 * t["data_s"],
                  t.get("eval_s"), t.get("checkpoint_s"), t.get("setup_s"), t.get("finish_s"),
                  t.get("peak_memory_bytes") and t["peak_memory_bytes"] / 2**30, hms(p["seconds_per_run"]),
                  hms(p["seconds"])]
                 for i in slices["items"] for p in i.get("parts", []) for t in [p["timing"] or {}]]
    if part_rows:
        lines += ["Per run shape (`ms/step` includes drawing the batch; `data ms` is that alone):", "",
                  *md_table(["analysis", "part", "runs", "batch", "precision", "steps timed", "first step s",
                             "ms/step", "data ms", "eval s", "ckpt s", "setup s", "finish s", "peak GiB", "per run",
                             "all runs"], part_rows)]
    for i in slices["items"]:
        if i.get("plan"):
            lines += [f"### Plan: {i['analysis']} --preset {i.get('measured_preset', i['preset'])}", "", "```",
                      i["plan"], "```", ""]
    if data["skipped"]:
        lines += ["## Skipped", "", *md_table(["stage", "item", "reason"],
                                              [[s["stage"], s["item"], s["reason"]] for s in data["skipped"]])]
    if data["failures"]:
        lines += ["## Failures", ""]
        for f in data["failures"]:
            lines += [f"### {f['stage']} / {f['item']}", "", "```", f["error"].strip(), "```", ""]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for summary.json, summary.md and the tiny runs' logs")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes and few steps: checks the script itself in seconds (one tiny preset)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="hard limit for the whole check (default 480)")
    parser.add_argument("--stages", default=",".join(STAGES[1:]),
                        help=f"comma-separated stages to run after the environment (default: {','.join(STAGES[1:])})")
    parser.add_argument("--analyses", default="", help="comma-separated analyses for tiny presets and slices "
                        "(default: all registered; with --smoke: induction-heads)")
    parser.add_argument("--tiny-timeout-s", type=float, default=150.0, help="time limit of one tiny preset")
    parser.add_argument("--slice-steps", type=int, default=0, help="most measured steps per run shape "
                        "(default 40; 3 with --smoke)")
    parser.add_argument("--rounds", type=int, default=0, help="measured throughput rounds (default 2; 1 with --smoke)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads here and in the tiny presets' processes (default 0: torch's default)")
    parser.add_argument("--keep-runs", action="store_true", help="keep the tiny presets' run directories")
    args = parser.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES[1:]))
    if unknown:
        parser.error(f"--stages: unknown {unknown}; choose from {list(STAGES[1:])}")
    args.stages = stages
    args.slice_steps = args.slice_steps or (3 if args.smoke else 40)
    args.rounds = args.rounds or (1 if args.smoke else 2)
    return args


def main(argv: Sequence[str] | None = None, spent_s: float = 0.0) -> int:
    """Run the check; `spent_s` seconds of the budget are already used (the command's imports)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s, spent_s)
    device = resolve_device(args.device)
    summary = Summary(out, {k: v for k, v in vars(args).items()}, budget)
    print(f"gpu_check: device {device}, budget {args.budget_s:.0f} s, smoke {args.smoke}, out {out}", flush=True)

    env = environment(device)
    summary.data["environment"] = {"status": "done", **env}
    summary.reached("environment", "done")
    summary.save()
    if "error" in env:
        summary.fail("environment", str(device), env["error"])
        for stage in STAGES[1:]:
            summary.reached(stage, "skipped")
            summary.skip(stage, "all", "the device is not usable")
        summary.save()
        print(f"gpu_check: {env['error']}", flush=True)
        return 1

    loaded, broken = load_all()
    for name, why in broken.items():
        summary.fail("registry", name, why)
    selected = [a for a in args.analyses.split(",") if a]
    for name in sorted(set(selected) - set(loaded) - set(broken)):
        summary.fail("registry", name, f"not a registered analysis; registered: {sorted(loaded)}")
    selected = [a for a in selected if a in loaded]
    tiny_names = selected or (list(SMOKE_TINY) if args.smoke else sorted(loaded))
    slice_names = selected or sorted(loaded)  # with --smoke too: their tiny presets are cheap in-process

    def run_stage(stage: str, deadline: float) -> None:
        if stage == "tiny_presets":
            tiny_stage(summary, tiny_names, str(device), deadline, args.tiny_timeout_s, out, args.threads,
                       args.keep_runs)
        elif stage == "throughput":
            shapes = SMOKE_THROUGHPUT_SHAPES if args.smoke else THROUGHPUT_SHAPES
            throughput_stage(summary, shapes, device, deadline, args.rounds, 2 if args.smoke else 10)
        else:
            slices_stage(summary, {name: loaded[name] for name in slice_names}, device, deadline, args.slice_steps,
                         args.smoke)

    pending = list(STAGES[1:])
    try:
        with hard_stop(budget.left()):
            while pending:
                stage = pending[0]
                if stage not in args.stages:
                    summary.reached(stage, "skipped")
                    summary.skip(stage, "all", "not selected (--stages)")
                elif budget.left() < 2:
                    summary.reached(stage, "skipped")
                    summary.skip(stage, "all", f"budget: {budget.elapsed():.0f} s of {args.budget_s:.0f} s used")
                else:
                    if stage == "tiny_presets":  # not chosen is not cut short: recorded before the count
                        for name in sorted(set(loaded) - set(tiny_names)):
                            summary.skip(stage, name, "not selected (--analyses)" if selected else
                                         "smoke mode runs one tiny preset: each process spends seconds on imports")
                    deadline = budget.stage_deadline(STAGE_SHARE[stage])
                    print(f"{stage}: up to {seconds_to(deadline):.0f} s", flush=True)
                    skipped_before, failed_before = len(summary.data["skipped"]), len(summary.data["failures"])
                    run_stage(stage, deadline)
                    summary.reached(stage, "partial" if len(summary.data["skipped"]) > skipped_before else "done")
                    if len(summary.data["failures"]) > failed_before:
                        summary.stage(stage)["failures"] = len(summary.data["failures"]) - failed_before
                    summary.save()
                pending.pop(0)
    except BudgetExceeded:
        # The stage that was running keeps the items it finished; the ones after it never start.
        if pending:
            stopped = pending.pop(0)
            summary.reached(stopped, "partial")
            summary.skip(stopped, "rest", f"budget: stopped by the hard time limit at {budget.elapsed():.0f} s")
        for stage in pending:
            summary.reached(stage, "skipped")
            summary.skip(stage, "all", "budget: the hard time limit was reached before it")

    summary.save()
    failures = summary.data["failures"]
    print(f"gpu_check: {len(failures)} failures, {len(summary.data['skipped'])} skipped, "
          f"{budget.elapsed():.0f} s; summary: {out / 'summary.md'}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(spent_s=process_age_s()))
