"""The `interp` command: list and run analyses, inspect, verify, probe and plot runs.

Expected errors (bad input, a refused directory, a full disk, a run in use, Ctrl-C)
end in one line on stderr naming the cause, with exit code 2 (130 for Ctrl-C, which
also prints the command that resumes an interrupted `interp run`); `--debug` adds the
traceback. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import multiprocessing
import os
import re
import shlex
import shutil
import sys
import threading
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import InvalidStateError
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interp import seeding
from interp.analysis import (
    ANALYSIS_FILE,
    MAX_SEED,
    analysis_leftovers,
    analysis_names,
    get_analysis,
    load_all,
    run_analysis,
)
from interp.checkpoints import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    PROBES_DIR,
    CheckpointError,
    Run,
    read_json,
    scan_jsonl,
)
from interp.configs import ConfigError, parse_overrides
from interp.ids import HeadId
from interp.metrics import circuits
from interp.model import InsufficientMemoryError, ModelConfig, check_forward_memory, format_bytes
from interp.parallel import Backend, JobsFailed, LocalBackend, RayBackend
from interp.probing import cache_rows, cached_computations, probe
from interp.suites import CheckpointSuite, is_suite_folder, open_suite
from interp.sweep import parse_grid, run_sweep
from interp.train import TrainConfig
from interp.viz import plot_curves, plot_head_curves, save_figure

BUILTIN_PROBES = {"prev-token": "prev", "induction": "induction"}
"""`interp probe RUN <name>` -> the key its results are cached under: the induction-heads
analysis's keys for the same probes, so one cache file holds both (`interp plot`, `interp view`)."""
LINEAR_PROBE = "linear"  # `interp probe RUN linear ...`: a linear probe on a saved batch (`_probe_linear`)
EXIT_FAILED = 1  # a check failed (`info --verify`) or a job raised an unexpected error
EXIT_ERROR = 2  # an expected error: bad input, a refused directory, a full disk ... (argparse's code too)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE
RUN_MARKERS = (CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, CHECKPOINTS_DIR)
DEVICE_TYPES = ("cpu", "cuda", "mps")


# --- argument types: bad values are named by argparse ("argument --seed: expected ...") ------------


def _int_in(low: int, high: int | None = None, expected: str = "") -> Callable[[str], int]:
    expected = expected or (f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


def _float_at_least(low: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number >= {low}, got {text!r}") from None
        if not value >= low or value == float("inf"):  # `not >=` also refuses NaN
            raise argparse.ArgumentTypeError(f"expected a finite number >= {low}, got {text}")
        return value

    return parse


SEED = _int_in(0, MAX_SEED, "an integer in [0, 2**63)")
COUNT = _int_in(1)
OPTIONAL_COUNT = _int_in(0)


def check_device(spec: str | None) -> str | None:
    """`spec` if it names a device this machine has (None/"auto": the default); a
    `ConfigError` naming `--device` otherwise, before anything is written or spawned."""
    if spec is None or spec == "auto":
        return spec
    expected = "cpu, cuda, cuda:N, mps or auto"
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError("--device", expected, spec) from None
    if device.type not in DEVICE_TYPES:
        raise ConfigError("--device", expected, spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device", "cpu: this machine has no CUDA device (or torch was built without CUDA)",
                              spec)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError("--device", f"one of cuda:0 .. cuda:{count - 1}", spec)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device", "cpu: MPS is not available on this machine", spec)
    return spec


# --- finding and opening runs ------------------------------------------------------------------


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in RUN_MARKERS)


def run_dirs(path: Path) -> list[Path]:
    """The run directory `path`, or every run directory below it (an analysis or sweep
    output), including incomplete ones (any of config.json, manifest.json, metrics.jsonl,
    checkpoints/ makes a run)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no run directory (no such directory)")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory (expected a run or analysis directory)")
    if _is_run_dir(path):
        return [path]
    found = {p.parent for marker in RUN_MARKERS for p in path.rglob(marker)}
    # checkpoints/step_N/ holds no marker, but a run's own subdirectories must not count twice
    runs = sorted(p for p in found if not any(q in p.parents for q in found))
    if runs:
        return runs
    if (path / ANALYSIS_FILE).exists():
        raise FileNotFoundError(f"{path} is an analysis directory with no runs yet (they go in {path / 'runs'}/<name>)")
    raise FileNotFoundError(f"{path}: no run directory (config.json + manifest.json) found")


def find_runs(path: Path) -> list[Run | CheckpointSuite]:
    """Every run at or below `path` that has a config (see `run_dirs`), or the checkpoint suite
    `path` is (`step<N>` sub-folders saved by `transformers`; its results go to its interp-cache/)."""
    if is_suite_folder(path):
        return [open_suite(path)]
    dirs = run_dirs(path)
    runs = [Run(p) for p in dirs if (p / CONFIG_FILE).exists()]
    if not runs:
        raise FileNotFoundError(f"{path}: no run directory with a {CONFIG_FILE} found (below it: "
                                f"{', '.join(str(p) for p in dirs[:3])}); `interp info --verify` says what is wrong")
    return runs


def one_run(path: Path) -> Run | CheckpointSuite:
    """The run `path` names: a run directory, an analysis directory with exactly one run, or a
    checkpoint-suite folder.

    `Run.open` on an analysis directory fails ("no config.json"); here such a directory
    is accepted when it holds one run, and otherwise the error lists the runs to choose from."""
    runs = find_runs(path)
    if len(runs) > 1:
        listed = ", ".join(str(r.path) for r in runs[:5]) + (f", ... ({len(runs)} in all)" if len(runs) > 5 else "")
        raise FileNotFoundError(f"{path} holds {len(runs)} runs; name one of them: {listed}")
    return runs[0]


def model_config(run: Run) -> ModelConfig:
    """The run's model config; a config.json that does not describe one is named."""
    try:
        return run.model_config
    except (ConfigError, KeyError, TypeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise ConfigError(f"{run.path / CONFIG_FILE}: model", "a valid model config", str(message)) from None


# --- list -------------------------------------------------------------------------------------


def preset_summary(config: Any) -> str:
    """What a preset is for, as its config says it: the model and training sizes of its
    `model` and `train` fields (some analyses derive further runs or steps from its task)."""
    model, train = getattr(config, "model", None), getattr(config, "train", None)
    parts = []
    if isinstance(model, ModelConfig):
        kind = ", attention-only" if model.attn_only else ""
        layers = f"{model.n_layers} layer{'s' if model.n_layers != 1 else ''}"
        parts.append(f"model {layers} x d_model {model.d_model} ({model.n_heads} heads{kind}), "
                     f"vocab {model.d_vocab}, context {model.n_ctx}")
    if isinstance(train, TrainConfig):
        parts.append(f"train {train.steps} steps x batch {train.batch_size}")
    return "; ".join(parts) if parts else type(config).__name__


def cmd_list(args: argparse.Namespace) -> None:
    loaded, broken = load_all()
    for name, analysis in loaded.items():
        print(f"{name:24s} {analysis.description}")
        for preset, config in analysis.presets.items():
            print(f"{'':24s}   {preset:8s} {preset_summary(config)}")
    for name, why in broken.items():
        print(f"{name:24s} BROKEN: {why}")


def analyses_epilog() -> str:
    """The registered analyses and their presets, for `interp run --help` (imports each)."""
    lines = ["analyses and their presets (`interp list` gives each preset's sizes):"]
    for name in analysis_names():
        try:
            presets = ", ".join(get_analysis(name).presets)
        except ImportError as err:
            presets = f"BROKEN: {err}"
        lines.append(f"  {name:24s} {presets}")
    return "\n".join(lines)


class _RunHelp(argparse.Action):
    """`-h` of `interp run`: lists the analyses too, which imports them (seconds), so only on demand."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:  # noqa: A002 - argparse's name
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.epilog = analyses_epilog()
        parser.print_help()
        parser.exit()


# --- run and sweep ----------------------------------------------------------------------------


def _out(args: argparse.Namespace) -> Path:
    return Path(args.out or f"runs/{args.name}")


def cmd_run(args: argparse.Namespace) -> None:
    overrides = parse_overrides(args.set)
    if args.seed is not None:
        overrides["seed"] = str(args.seed)
    out = _out(args)
    results = run_analysis(args.name, out, args.preset, overrides, device=check_device(args.device),
                           progress=not args.quiet, resume=args.resume, backend=_backend(args), force=args.force)
    print(json.dumps(results, indent=2))
    print(f"\nreport: {out / 'report.md'}\nfigures: {out / 'figures'}")


# (option, attribute, default) of `interp run`, in the order a resume command repeats them.
_RUN_OPTIONS = (("--preset", "preset", None), ("--out", "out", None), ("--seed", "seed", None),
                ("--device", "device", None), ("--backend", "backend", "local"), ("--workers", "workers", 0),
                ("--threads", "threads", 0), ("--address", "address", None), ("--cpus-per-job", "cpus_per_job", 1),
                ("--gpus-per-job", "gpus_per_job", 0.0))


def resume_command(args: argparse.Namespace) -> str:
    """The `interp run` command that continues this one: the same analysis, preset, output,
    seed, overrides and options, with `--resume`."""
    parts = ["interp", "run", args.name]
    for option, attr, default in _RUN_OPTIONS:
        value = str(_out(args)) if attr == "out" else getattr(args, attr, default)
        if value is not None and value != default:
            parts += [option, str(value)]
    for pair in args.set:
        parts += ["--set", pair]
    parts += [flag for flag, on in (("--quiet", args.quiet), ("--force", args.force)) if on]
    return shlex.join([*parts, "--resume"])


def _backend(args: argparse.Namespace) -> Backend | None:
    """The backend the command line asks for; None leaves the choice to the library."""
    if args.backend == "ray":
        return RayBackend(address=args.address, cpus_per_job=args.cpus_per_job, gpus_per_job=args.gpus_per_job,
                          torch_threads=args.threads)
    if args.workers or args.threads:
        return LocalBackend(workers=args.workers, torch_threads=args.threads)
    return None


def cmd_sweep(args: argparse.Namespace) -> None:
    grid = parse_grid(args.grid)
    seeds = list(range(args.seeds)) if args.seed_list is None else args.seed_list
    out = Path(args.out or f"runs/sweep-{args.name}")
    metrics = [m for m in args.metrics.split(",") if m] if args.metrics else []
    table = run_sweep(args.name, out, args.preset, grid, seeds, _backend(args), device=check_device(args.device),
                      metrics=metrics)
    keys = metrics or list(get_analysis(args.name).headline)
    print("point".ljust(40) + "status   " + " ".join(f"{k[:14]:>14s}" for k in keys))
    for row in table:
        values = row.get("results", {})
        cells = " ".join(f"{values[k]:14.4g}" if values.get(k) is not None else f"{'-':>14s}" for k in keys)
        note = " (done before)" if row["skipped"] else ""
        print(f"{row['point'][:39]:40s}{row['status']:9s}{cells}{note}")
        if row["status"] == "failed":
            print(f"    {row['error']}")
    failed = sum(r["status"] == "failed" for r in table)
    print(f"\n{len(table)} points, {failed} failed; table: {out / 'sweep.jsonl'}; figures: {out / 'figures'}")


# --- info and verify --------------------------------------------------------------------------


def run_status(run: Run) -> tuple[str, bool]:
    """(one line on how far the run got, whether it is complete), without hashing the weights
    (only the last checkpoint's small training state, which says whether the run stopped early)."""
    try:
        return _run_status(run)
    except (CheckpointError, ValueError, OSError) as err:
        return f"DAMAGED: {err}", False


def _run_status(run: Run) -> tuple[str, bool]:
    state = run.inspect()
    if state.config_error:
        return f"not usable: {run.path / CONFIG_FILE} is {state.config_error}", False
    total = run.config.get("train", {}).get("steps")
    last = state.last_step
    if last is None:
        return "INCOMPLETE: no checkpoint committed yet (killed early, or manifest.json is missing)", False
    if last == total:
        return f"complete: final checkpoint at step {last}", True
    stopped = bool(run.load_training_state(last).get("stopped"))
    if stopped:
        return f"complete: stopped early at step {last} of {total} (its stop condition)", True
    return (f"INCOMPLETE: last checkpoint at step {last} of {total} (interrupted or paused; `interp run ... "
            "--resume` continues it)"), False


def verify_run(run: Run) -> tuple[list[str], list[str]]:
    """(failures, notes) of a run: every checkpoint's files against their sha256 in the
    manifest and loaded (weights finite), the structure (`Run.inspect`: damage is a failure,
    a killed writer's leftovers a note), completeness, and strict JSON in the probe caches."""
    state = run.inspect()
    failures, notes = list(state.damage()), list(state.repairs())
    for step in state.steps:
        if step not in state.step_dirs:
            continue  # named by damage()
        try:
            weights = run.load_state_dict(step)
            run.load_training_state(step)
        except CheckpointError as err:
            failures.append(str(err))
            continue
        except Exception as err:  # noqa: BLE001 - a file that matches its hash but does not load is reported
            failures.append(f"{run.checkpoint_dir(step)} does not load: {type(err).__name__}: {err}")
            continue
        bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            failures.append(f"{run.checkpoint_dir(step)}: weights are not finite ({', '.join(bad[:3])})")
    if state.config_error is None and not state.manifest_error:
        status, complete = run_status(run)
        if not complete:
            failures.append(status)
    elif state.unborn:
        failures.append(f"INCOMPLETE: killed while being created (no {CONFIG_FILE} yet); nothing was trained")
    for cache in sorted((run.path / PROBES_DIR).glob("*.jsonl")):
        scan = scan_jsonl(cache)
        if scan.bad_lines:
            failures.append(str(scan.first_bad_line_error()))
        if scan.torn_line is not None:
            notes.append(f"{cache}: line {scan.torn_line} is torn (the next probe of this run repairs it)")
        rows = cache_rows(scan)
        if rows.tampered:
            lines = ", ".join(str(i + 1) for i in rows.tampered[:6]) + (", ..." if len(rows.tampered) > 6 else "")
            failures.append(f"{cache}: row(s) {lines} were edited after they were written (their digest does not "
                            "match); the next probe recomputes them")
        if rows.legacy:
            notes.append(f"{cache}: {len(rows.legacy)} row(s) written before rows carried a digest and their "
                         "numerics: shown by `interp view`/`plot`, recomputed by `probe`")
    failures += _graph_failures(run)
    from interp.view.data import pattern_problems  # the explorer's module, read only when asked

    failures += pattern_problems(run)
    return failures, notes


def _graph_failures(run: Run) -> list[str]:
    """Saved circuit graphs that are missing or were edited since they were written."""
    from interp.circuits.graph import graph_keys, list_graph_sets  # the circuit module, read only when asked

    failures = []
    for key in graph_keys(run.path):
        try:
            for graph_set in list_graph_sets(run.path, key):
                failures += graph_set.verify()
        except (OSError, ValueError, KeyError, TypeError) as err:
            failures.append(f"{run.path}: the circuit graphs of {key!r} do not read ({err})")
    return failures


def _analysis_dirs(path: Path) -> list[Path]:
    if (path / ANALYSIS_FILE).exists():
        return [path]
    return sorted(p.parent for p in path.rglob(ANALYSIS_FILE)) if path.is_dir() else []


def cmd_info(args: argparse.Namespace) -> int:
    """Without --verify a damaged file ends the command with an error naming it; with --verify
    it is one of the failures, and every other run is still checked."""
    path = Path(args.dir)
    if is_suite_folder(path):  # its step<N>/config.json files are not run directories
        return _describe_suite(open_suite(path), args.verify)
    failed = False
    for directory in _analysis_dirs(path):
        try:
            record = read_json(directory / ANALYSIS_FILE)
            results = (directory / "results.json").exists()
            if results and args.verify:
                read_json(directory / "results.json")  # strict JSON, or an error naming the file
        except (CheckpointError, ValueError) as err:
            if not args.verify:
                raise
            print(f"analysis {directory}: FAILED: {err}")
            failed = True
            continue
        print(f"analysis {directory}: {record.get('analysis')} (preset {record.get('preset')}); "
              + ("results.json written" if results else "INCOMPLETE: no results.json (interrupted, or it failed)"))
        failed |= args.verify and not results
        leftovers = analysis_leftovers(directory) if args.verify else []
        if leftovers:
            print(f"    note: {len(leftovers)} temporary file(s) of interrupted writes, e.g. {leftovers[0]} (the next "
                  "run of the analysis, e.g. with --resume, removes them)")
    for run_dir in run_dirs(path):
        run = Run(run_dir)
        print(f"run {run.path}")
        try:
            if (run.path / CONFIG_FILE).exists():
                _describe(run)
            else:
                print(f"  no {CONFIG_FILE}: not a usable run")
        except (CheckpointError, ValueError, KeyError) as err:
            if not args.verify:
                raise
            print(f"  unreadable: {err}")  # --verify lists what is wrong below
        if args.verify:
            failures, notes = verify_run(run)
            if failures:
                failed = True
                print("  verify: FAILED")
                for line in failures:
                    print(f"    - {line}")
            else:
                print(f"  verify: OK ({len(run.steps)} checkpoints match their sha256 and load with finite weights)")
            for line in notes:
                print(f"    note: {line}")
    return EXIT_FAILED if failed else 0


def _describe_suite(suite: CheckpointSuite, verify: bool) -> int:
    cfg = suite.model_config
    print(f"suite {suite.source}: {cfg.architecture}, {cfg.n_layers} layers, d_model={cfg.d_model}, "
          f"{cfg.n_heads} heads, vocab={cfg.d_vocab}, n_ctx={cfg.n_ctx}")
    steps = suite.steps
    print(f"  checkpoints: {len(steps)} ({steps[0]} .. {steps[-1]}); tokenizer: "
          f"{'yes' if suite.tokenizer is not None else 'none'}")
    print(f"  results cache: {suite.path}")
    if not verify:
        return 0
    failures = suite.verify()
    print("  verify: FAILED" if failures else f"  verify: OK ({len(steps)} checkpoints hold readable weights; a "
          "suite folder keeps no hashes to check them against)")
    for line in failures:
        print(f"    - {line}")
    return EXIT_FAILED if failures else 0


def _describe(run: Run) -> None:
    config = run.config
    model = model_config(run)
    print(f"  model: {model.n_layers} layers, d_model={model.d_model}, {model.n_heads} heads, "
          f"vocab={model.d_vocab}, n_ctx={model.n_ctx}, attn_only={model.attn_only}")
    train_cfg = config.get("train", {})
    print(f"  train: {train_cfg.get('steps')} steps, {train_cfg.get('optimizer')} lr={train_cfg.get('lr')}, "
          f"batch={train_cfg.get('batch_size')}, seed={train_cfg.get('seed')}")
    state = run.inspect()
    steps = state.steps
    print(f"  checkpoints: {len(steps)} ({steps[0] if steps else '-'} .. {steps[-1] if steps else '-'})")
    print(f"  status: {run_status(run)[0]}")
    damage = state.damage()
    if damage:
        print(f"  DAMAGED: {damage[0]}" + (f" (and {len(damage) - 1} more; see --verify)" if len(damage) > 1 else ""))
    last: dict[str, float] = {}
    for row in state.metrics.rows:
        last.update({k: v for k, v in row.items() if k != "step"})
    for key, value in sorted(last.items()):
        shown = f"{value:.4g}" if isinstance(value, int | float) else str(value)
        print(f"  {key:28s} {shown} (last logged)")
    probes = sorted(p.stem for p in (run.path / PROBES_DIR).glob("*.jsonl"))
    if probes:
        print(f"  cached probes: {', '.join(probes)}")


# --- probe and plot ---------------------------------------------------------------------------


def cmd_probe(args: argparse.Namespace) -> None:
    run = one_run(Path(args.dir))
    if args.metric == LINEAR_PROBE:
        return _probe_linear(run, args)
    model_cfg = model_config(run)
    layers = args.layers if args.layers is not None else list(range(model_cfg.n_layers))
    bad = [layer for layer in layers if not 0 <= layer < model_cfg.n_layers]
    if bad:
        raise ConfigError("--layers", f"layers in [0, {model_cfg.n_layers - 1}]", bad)
    period = args.period or model_cfg.n_ctx // 2
    if not 2 <= period <= model_cfg.n_ctx // 2:
        raise ConfigError("--period", f"between 2 and n_ctx/2 = {model_cfg.n_ctx // 2}", period)
    device = check_device(args.device)
    if args.metric == "prev-token":
        probe_obj = circuits.previous_token_probe(layers)
    else:
        probe_obj = circuits.induction_probe(layers, period)
    check_forward_memory(model_cfg, _shape_only(args.sequences, 2 * period), probe_obj.hooks, device)
    tokens = circuits.repeated_tokens(args.sequences, period, model_cfg.d_vocab,
                                      seeding.generator(args.seed, seeding.CLI_BATCHES))
    key = BUILTIN_PROBES[args.metric]
    table = probe(run, {key: probe_obj}, {"tokens": tokens}, steps=args.steps, device=device,
                  progress=True).select(key)
    print("step  " + " ".join(f"{c:>7s}" for c in table.columns))
    for step, row in zip(table.steps, table.values, strict=True):
        print(f"{int(step):<5d} " + " ".join(f"{v:7.3f}" for v in row))
    if args.csv:
        table.to_csv(args.csv)
        print(f"wrote {args.csv}")


def _shape_only(sequences: int, positions: int) -> dict[str, torch.Tensor]:
    """A batch of the given shape that allocates nothing (for a memory check before the real one)."""
    return {"tokens": torch.zeros(1, positions, dtype=torch.long, device="meta").expand(sequences, -1)}


def _probe_linear(run: Run, args: argparse.Namespace) -> None:
    """A linear probe per `--hook` on the batch file `--batch` (written by
    `interp.metrics.linear_probes.save_batch`: tokens plus the keys named by --positions,
    --labels, ...), at every checkpoint; step 0, the random-init baseline, is always included."""
    from interp.metrics import linear_probes  # scikit-learn: imported only when asked for

    for flag, value in (("--batch", args.batch), ("--hook", args.hook), ("--positions", args.positions),
                        ("--labels", args.labels)):
        if not value:
            raise ConfigError(flag, f"a value for `interp probe DIR {LINEAR_PROBE}`", value)
    shape = model_config(run)
    batch = linear_probes.load_batch(args.batch, d_vocab=shape.d_vocab, n_ctx=shape.n_ctx)
    steps = None if args.steps is None else sorted({*args.steps, *([0] if 0 in run.steps else [])})
    probes = {re.sub(r"[^A-Za-z0-9_.+=-]", "_", f"linear-{args.labels}-{hook}"): linear_probes.linear_probe(
        linear_probes.LinearProbeSettings(hook, args.positions, args.labels, args.groups, kind=args.kind,
                                          split=args.split, control_types=args.control_types,
                                          fit=linear_probes.FitSettings(seed=args.seed))) for hook in args.hook}
    device = check_device(args.device)
    table = probe(run, probes, batch, steps=steps, device=device, progress=True)
    for (key, probe_obj), hook in zip(probes.items(), args.hook, strict=True):
        sub = table.select(key)
        score = "r2" if "r2" in sub.columns else "accuracy"
        drift = linear_probes.load_directions(run, key, probe_obj, batch, steps=table.steps.tolist(),
                                              device=device).drift(
            period=args.cycle or None)
        print(f"{hook}: {args.labels} at {args.positions} (groups: {args.groups or 'batch row'})")
        print(f"step   {score:>8s}  control  selectivity  cos_prev  cos_final")
        for i, step in enumerate(table.steps):
            previous = drift.consecutive[i - 1] if i else float("nan")
            print(f"{int(step):<6d} {sub[score][i]:8.3f} {sub[f'control_{score}'][i]:8.3f} "
                  f"{sub['selectivity'][i]:12.3f} {previous:9.3f} {drift.to_final[i]:10.3f}"
                  + ("  (init: baseline)" if step == 0 else ""))
        if args.cycle:
            lags = ", ".join(f"{s:.3f} vs {o:.3f}" for s, o in zip(drift.same_phase, drift.other_phase, strict=True))
            print(f"same-phase vs other-phase cosine, 1, 2, ... cycles of {args.cycle} steps apart: {lags}")
    if args.csv:
        table.to_csv(args.csv)
        print(f"wrote {args.csv}")


def cmd_circuit(args: argparse.Namespace) -> None:
    """A circuit method at every checkpoint (cached), on repeated random tokens whose source
    run resamples the first copy (the induction circuit's test); graphs saved in the run as a
    graph set of this probe and batch, beside (never over) the key's other sets."""
    from interp.circuits import graph as circuit_graph
    from interp.circuits.patching import mean_logprob
    from interp.circuits.readout import dla_probe, logit_lens_probe
    from interp.circuits.trace import repeated_patch_batch, trace

    run = one_run(Path(args.dir))
    model_cfg = model_config(run)
    period = args.period or model_cfg.n_ctx // 2
    if not 2 <= period <= model_cfg.n_ctx // 2:
        raise ConfigError("--period", f"between 2 and n_ctx/2 = {model_cfg.n_ctx // 2}", period)
    device = check_device(args.device)
    # One forward's worth (patching's extra copies of component writes are not counted yet).
    check_forward_memory(model_cfg, _shape_only(args.sequences, 2 * period), (), device)
    batch = repeated_patch_batch(args.sequences, period, model_cfg.d_vocab,
                                 seeding.generator(args.seed, seeding.CLI_BATCHES))
    metric = mean_logprob("in_repeat")
    if args.method in ("dla", "logit-lens"):
        key = args.method.replace("-", "_")
        made = dla_probe("in_repeat") if args.method == "dla" else logit_lens_probe("in_repeat")
        table = probe(run, {key: made}, batch, steps=args.steps, device=device, progress=True).select(key)
        shown = [c for c in table.columns if args.method == "dla" or c.endswith("/top1")]
        print(f"{'dla: direct logit of the repeated token' if args.method == 'dla' else 'logit lens: top-1 rate'} "
              "per checkpoint")
        print("step    " + " ".join(f"{c:>14s}" for c in shown))
        for step, row in zip(table.steps, table.values, strict=True):
            values = dict(zip(table.columns, row, strict=True))
            print(f"{int(step):<7d} " + " ".join(f"{values[c]:14.3f}" for c in shown))
        return
    traced = trace(run, args.method, None if args.method == "composition" else batch, metric, steps=args.steps,
                   device=device, progress=True, ig_steps=args.ig_steps,
                   key="eap-ig" if args.method == "eap" and args.ig_steps > 1 else None,
                   make_default=args.make_default)
    print(f"{args.method}: {traced.graphs[0].metric}")
    for graph in traced.graphs:
        top = ", ".join(f"{edge} {weight:+.3f}" for edge, weight in graph.strongest(3))
        print(f"  step {graph.step:<7d} {top}")
    if len(traced.graphs) > 1:
        print("\n".join(circuit_graph.CircuitDiff.between(traced.graphs[0], traced.graphs[-1]).summary()))
    saved = traced.saved.graph_set
    kind = "a new graph set" if traced.saved.created else "the existing graph set of this probe and batch"
    role = "the key's default" if saved.default else "not the key's default"
    print(f"wrote {len(traced.graphs)} graphs to {saved.folder} ({kind} {saved.set_id}, {role})")
    if not saved.default:
        default = circuit_graph.read_graph_set(run.path, saved.key)
        print(f"the default graph set of {saved.key!r} (what `interp view` and load_graphs read) stays "
              f"{default.summary()}")


def cmd_plot(args: argparse.Namespace) -> None:
    for run in find_runs(Path(args.dir)):
        rows = run.metrics()
        groups: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = defaultdict(dict)
        for key in sorted({k for r in rows for k in r} - {"step"}):
            groups[key.split("/")[0] if "/" in key else key][key] = run.series(key)
        fig_dir = run.path / "figures"
        for group, series in groups.items():
            path = save_figure(plot_curves(series, title=f"{run.path.name}: {group}", logx=args.logx),
                               fig_dir / f"metrics_{group}.png")
            print(f"wrote {path}")
        for cache in sorted((run.path / PROBES_DIR).glob("*.jsonl")):
            drawn = _plot_cached_probe(run, cache.stem, fig_dir, args.logx)
            if drawn:
                print(f"wrote {drawn[0]}: {drawn[1]}")


def _plot_cached_probe(run: Run, key: str, fig_dir: Path, logx: bool) -> tuple[Path, str] | None:
    """Per-head curves of a cached `L{l}H{h}` probe: its most complete computation (one batch
    and numerics, never a mix); the figure's path and which computation it draws."""
    found = cached_computations(run, key)
    if not found or not all(HeadId.is_head(c) for c in found[0].table.columns):
        return None
    best = found[0]
    cfg = model_config(run)
    grid = best.table.head_grid(None, cfg.n_layers, cfg.n_heads)
    about = best.describe() + (f"; {len(found) - 1} other computation(s) in the cache not drawn" if len(found) > 1
                               else "")
    title = f"{run.path.name}: {best.probe} (batch {best.batch})"
    return save_figure(plot_head_curves(grid, best.table.steps, title=title, logx=logx),
                       fig_dir / f"probe_{key}.png"), about


# --- view ------------------------------------------------------------------------------------


def cmd_view(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    from interp.view import write_view  # the explorer: imported only by this command

    bars: dict[str, Any] = {}

    def progress(run: str, done: int, total: int) -> None:
        bar = bars.get(run) or bars.setdefault(run, tqdm(total=total, desc=f"attention patterns, {run}", leave=False))
        bar.update(done - bar.n)
        if done == total:
            bar.close()

    page = write_view(Path(args.dir), device=check_device(args.device), progress=progress)
    print(f"wrote {page} ({format_bytes(page.stat().st_size)}); open it in a browser (it works offline)")
    if args.open:
        import webbrowser

        webbrowser.open(page.resolve().as_uri())


# --- the parser -------------------------------------------------------------------------------


def _add_backend_args(p: argparse.ArgumentParser, job: str, default_workers: str = "one per core") -> None:
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help=f"where each independent {job} runs (default: local processes)")
    p.add_argument("--workers", type=OPTIONAL_COUNT, default=0,
                   help=f"local processes, not part of the config (default 0: {default_workers})")
    p.add_argument("--threads", type=OPTIONAL_COUNT, default=0,
                   help=f"torch threads per {job} (default: cores / workers locally, --cpus-per-job on Ray)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--cpus-per-job", type=COUNT, default=1, help="Ray CPUs per job (default 1)")
    p.add_argument("--gpus-per-job", type=_float_at_least(0.0), default=0.0, help="Ray GPUs per job (default 0)")


def build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before and after the subcommand; SUPPRESS keeps a subcommand's
    # absent flag from resetting one given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error (default: one line naming the cause)")
    parser = argparse.ArgumentParser(prog="interp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log library progress messages")
    parser.add_argument("--debug", action="store_true", default=False,
                        help="show the traceback of an error (default: one line naming the cause)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("list", parents=[common], help="list the analyses, their presets and each preset's sizes") \
        .set_defaults(fn=cmd_list)

    p = sub.add_parser("run", parents=[common], add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="run an analysis end to end (train, probe, plot, report)",
                       description="Run an analysis end to end: train its runs into OUT/runs/, probe them, "
                                   "write OUT/figures/, OUT/report.md and OUT/results.json.")
    p.add_argument("-h", "--help", action=_RunHelp, help="show this help, with the analyses and presets, and exit")
    p.add_argument("name", help="analysis name (listed below and by `interp list`)")
    p.add_argument("--preset", default="quick", help="named configuration (default: quick; listed below)")
    p.add_argument("--out", help="output directory (default: runs/NAME); a non-empty directory that holds no "
                                 "output of this analysis is refused unless --force")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps, auto (default: CUDA if present)")
    p.add_argument("--seed", type=SEED, default=None,
                   help="one seed for model init, data and evaluation, in [0, 2**63) (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set train.lr=1e-3 --set model.d_model=128 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out (the same preset and overrides)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty --out that holds no output of this analysis (its files may be "
                        "overwritten)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_backend_args(p, "training run of the analysis", "the preset's count where it sets one, else one per core")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("sweep", parents=[common],
                       help="run an analysis over a grid of overrides x seeds (resumable)")
    p.add_argument("name", help="analysis name (see `interp list`)")
    p.add_argument("--preset", default="quick", help="named configuration (default: quick)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="swept config key and its values, e.g. --grid train.lr=1e-3,2e-3 (repeatable: a product)")
    p.add_argument("--seeds", type=COUNT, default=1, help="seeds 0..N-1 for every grid point (default 1)")
    p.add_argument("--seed-list", type=SEED, nargs="+", default=None, help="explicit seeds instead of --seeds")
    p.add_argument("--out", help="sweep directory (default: runs/sweep-NAME); re-run it to finish a sweep")
    _add_backend_args(p, "point")
    p.add_argument("--device", default=None, help="device for every point (default: CUDA if present)")
    p.add_argument("--metrics", default="", help="comma-separated results to tabulate and plot (default: headline)")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("info", parents=[common],
                       help="summarize a run directory (or every run below a directory); --verify checks it")
    p.add_argument("dir", help="a run directory, or an analysis or sweep directory (every run below it)")
    p.add_argument("--verify", action="store_true",
                   help="check every checkpoint against its sha256, that its weights are finite, and that each run "
                        f"is complete and undamaged; exit code {EXIT_FAILED} if anything fails")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("probe", parents=[common],
                       help="compute a built-in head score or a linear probe at every checkpoint of a run")
    p.add_argument("dir", help="a run directory, an analysis directory that holds one run, or a checkpoint-suite "
                               "folder (step<N> sub-folders saved by transformers)")
    p.add_argument("metric", choices=(*BUILTIN_PROBES, LINEAR_PROBE),
                   help="the head score (previous-token or induction attention), or a linear probe (needs --batch, "
                        "--hook, --positions, --labels)")
    p.add_argument("--layers", type=OPTIONAL_COUNT, nargs="+", default=None, help="layers to score (default: all)")
    p.add_argument("--steps", type=OPTIONAL_COUNT, nargs="+", default=None, help="checkpoint steps (default: all)")
    p.add_argument("--period", type=OPTIONAL_COUNT, default=0,
                   help="repeat period of the probe tokens (default 0: n_ctx/2)")
    p.add_argument("--sequences", type=COUNT, default=32, help="probe sequences (default 32)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the probe tokens (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: CUDA if present)")
    p.add_argument("--csv", help="also write the table to this CSV file")
    linear = p.add_argument_group("linear probe (metric `linear`; --seed seeds its split and control task)")
    linear.add_argument("--batch", help="a batch file (safetensors, `linear_probes.save_batch`): tokens and the keys")
    linear.add_argument("--hook", nargs="+", help="hook(s) to probe, e.g. blocks.1.hook_resid_post")
    linear.add_argument("--positions", help="batch key: bool mask [batch, pos] or a position per row")
    linear.add_argument("--labels", help="batch key: integer classes or real values, per row or per position")
    linear.add_argument("--groups", help="batch key: the unit a probe could memorise (default: the batch row)")
    linear.add_argument("--split", help="batch key: an explicit bool test mask (default: a grouped random split)")
    linear.add_argument("--control-types", help="batch key: the control task's types (default: the token)")
    linear.add_argument("--kind", choices=("auto", "classification", "regression"), default="auto",
                        help="default auto: integer labels are classes, floats are values")
    linear.add_argument("--cycle", type=OPTIONAL_COUNT, default=0,
                        help="steps per cycle of a periodic schedule: also print same-phase direction cosines")
    p.set_defaults(fn=cmd_probe)

    p = sub.add_parser("circuit", parents=[common],
                       help="trace a circuit method over a run's checkpoints (graphs saved in the run, as a "
                            "graph set of this batch beside the others)")
    p.add_argument("dir", help="a run directory, or an analysis directory that holds one run")
    p.add_argument("--method", choices=("path", "eap", "composition", "dla", "logit-lens"), required=True,
                   help="path patching, edge attribution (EAP), weight composition, direct logit attribution or "
                        "the logit lens")
    p.add_argument("--steps", type=OPTIONAL_COUNT, nargs="+", default=None, help="checkpoint steps (default: all)")
    p.add_argument("--period", type=OPTIONAL_COUNT, default=0,
                   help="repeat period of the patching tokens (default 0: n_ctx/2)")
    p.add_argument("--sequences", type=COUNT, default=32, help="patching sequences (default 32)")
    p.add_argument("--ig-steps", type=COUNT, default=1,
                   help="eap: integrated-gradient steps (default 1: plain EAP; more: EAP-IG, saved as eap-ig)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the patching tokens (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: CUDA if present)")
    p.add_argument("--make-default", action="store_true",
                   help="make these graphs the key's default set, the one `interp view` shows (default: only a "
                        "key's first set is; an analysis's own graphs stay shown)")
    p.set_defaults(fn=cmd_circuit)

    p = sub.add_parser("plot", parents=[common],
                       help="plot logged metrics and cached probes of a run into its figures/")
    p.add_argument("dir", help="a run directory, an analysis or sweep directory (every run below it), or a "
                               "checkpoint-suite folder")
    p.add_argument("--logx", action="store_true", help="logarithmic step axis")
    p.set_defaults(fn=cmd_plot)

    p = sub.add_parser("view", parents=[common],
                       help="write DIR/view/index.html: an interactive, offline explorer with a checkpoint slider")
    p.add_argument("dir", help="a run directory or an analysis directory (its runs and its headline view)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.add_argument("--device", default=None, help="device for the example's attention patterns (default: CUDA "
                                                  "if present)")
    p.set_defaults(fn=cmd_view)
    return parser


# --- errors -----------------------------------------------------------------------------------

# Job errors reach the CLI as "Type: message" text (`JobsFailed`); these types are expected.
_EXPECTED = {"ConfigError", "CheckpointError", "RunInUseError", "RunDamagedError", "JsonlError", "NonFiniteError",
             "FileExistsError", "FileNotFoundError", "NotADirectoryError", "IsADirectoryError", "PermissionError",
             "OSError", "KeyError", "ValueError", "InsufficientMemoryError", "OutOfMemoryError", "MemoryError",
             "AnalysisImportError", "ImportError"}
# Job errors after which resuming the same command can succeed (once the cause is fixed).
_NOT_RESUMABLE = {"ConfigError", "ValueError", "KeyError", "NonFiniteError", "FileExistsError", "RunDamagedError"}
# torch.save on a full disk: "[enforce fail at inline_container.cc:672] . unexpected pos 28352 vs 28244",
# after "PytorchStreamWriter failed writing file ..." or "basic_ios::clear: iostream error".
_TORCH_WRITE_FAILED = re.compile(r"unexpected pos \d+ vs \d+|PytorchStreamWriter failed writing|basic_ios::clear")
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\] ([^:]*)(?:: '(.*?)')?")
# safetensors' Rust I/O errors: "IoError(Os { code: 28, ...})" (older) or "... (os error 28)"
_RUST_IO = re.compile(r"Os \{ code: (\d+)|\(os error (\d+)\)")


def _free_space(where: Path | None) -> str:
    probe_at = where
    while probe_at is not None and not probe_at.exists() and probe_at != probe_at.parent:
        probe_at = probe_at.parent
    try:
        return format_bytes(shutil.disk_usage(probe_at or Path.cwd()).free)
    except OSError:
        return "unknown"


def _os_error(number: int | None, strerror: str, filename: str | None, where: Path | None) -> str | None:
    target = filename or (f"under {where}" if where else "a file")
    if number in (errno.ENOSPC, errno.EDQUOT):
        cause = "no space left on device" if number == errno.ENOSPC else "disk quota exceeded"
        return f"{cause} while writing {target} ({_free_space(Path(filename) if filename else where)} free)"
    if number == errno.EROFS:
        return f"read-only file system: cannot write {target}"
    if number in (errno.EACCES, errno.EPERM):
        return f"permission denied: {target}"
    if number == errno.ENOMEM:
        return "out of memory: the machine could not allocate what this config needs"
    if number is not None:
        return f"{strerror or errno.errorcode.get(number, 'error')}: {target}"
    return None


def explain(type_name: str, message: str, err: BaseException | None = None, where: Path | None = None) -> str | None:
    """One line naming the cause of an expected error; None for an unexpected one (a bug).
    `err` is the live exception where there is one (else only its type name and message,
    as a job's error reaches the CLI); `where` is the directory being written."""
    if isinstance(err, OSError) or (err is None and type_name in _EXPECTED and _ERRNO_TEXT.match(message)):
        if isinstance(err, OSError):
            number, strerror, filename = err.errno, err.strerror or "", err.filename
        else:
            match = _ERRNO_TEXT.match(message)
            assert match is not None
            number, strerror, filename = int(match.group(1)), match.group(2), match.group(3)
        explained = _os_error(number, strerror, None if filename is None else str(filename), where)
        if explained is not None:
            return explained
    if _TORCH_WRITE_FAILED.search(message):
        free = _free_space(where)
        return (f"writing a checkpoint under {where or 'the run directory'} failed, most likely no space left on "
                f"device ({free} free; torch: {message.splitlines()[0].strip()})")
    rust = _RUST_IO.search(message)
    if rust:
        explained = _os_error(int(rust.group(1) or rust.group(2)), "I/O error", None, where)
        if explained:
            return f"{explained} (saving weights)"
    if isinstance(err, torch.OutOfMemoryError) or type_name == "OutOfMemoryError":
        return f"out of GPU memory ({message.splitlines()[0]}); reduce train.batch_size or the model size"
    if isinstance(err, InsufficientMemoryError) or type_name == "InsufficientMemoryError":
        return message
    if isinstance(err, MemoryError) or type_name == "MemoryError":
        return "out of memory: the machine could not allocate what this config needs; reduce the model or batch size"
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    if isinstance(err, ConfigError | CheckpointError | ValueError | KeyError | ImportError | OSError) or (
            err is None and type_name in _EXPECTED):
        return " ".join(message.split()) if "\n" in message else message
    return None


def _job_label(err: JobsFailed, index: int) -> str:
    """The failed job's name as `JobsFailed` lists it ("...: main: OSError: ...")."""
    labels = getattr(err, "labels", None)
    if isinstance(labels, dict) and index in labels:
        return str(labels[index])
    match = re.search(r"(?:\): |; )([^;]*?): " + re.escape(err.errors[index]), str(err))
    return match.group(1) if match else f"job {index}"


def _report_jobs_failed(err: JobsFailed, args: argparse.Namespace, where: Path | None) -> int:
    lines, unexpected, resumable = [], [], False
    for index in sorted(err.errors):
        type_name, _, message = err.errors[index].partition(": ")
        explained = explain(type_name, message, where=where)
        if explained is None:
            unexpected.append(index)
        if explained is None or type_name not in _NOT_RESUMABLE:
            resumable = True
        lines.append(f"{_job_label(err, index)}: {explained or err.errors[index]}")
    for index in unexpected:  # a bug: its traceback matters (the log of each job's traceback is silenced)
        print(err.tracebacks.get(index, ""), file=sys.stderr, end="")
    if args.debug:
        for index in sorted(set(err.errors) - set(unexpected)):
            print(err.tracebacks.get(index, ""), file=sys.stderr, end="")
    hint = ""
    if resumable and args.command == "run":
        hint = f"; once the cause is fixed, resume with: {resume_command(args)}"
    head = f"interp {args.command}: error: "
    total = re.match(r"\d+ of (\d+)", str(err))
    if len(lines) == 1:
        print(f"{head}{lines[0]}{hint}", file=sys.stderr)
    else:
        print(f"{head}{len(lines)} of {total.group(1) if total else '?'} jobs failed (the others finished):",
              file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)
        if hint:
            print(f"  {hint.lstrip('; ')}", file=sys.stderr)
    return EXIT_FAILED if unexpected else EXIT_ERROR


class _QuietJobTracebacks(logging.Filter):
    """Drops `run_all`'s log of each failed job's traceback: the CLI reports the failures
    itself (a line each, the traceback of an unexpected one, all of them with --debug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("job %d failed")


def _where(args: argparse.Namespace) -> Path | None:
    if args.command == "run":
        return _out(args)
    if args.command == "sweep":
        return Path(args.out or f"runs/sweep-{args.name}")
    return Path(args.dir) if hasattr(args, "dir") else None


def _stop_workers() -> None:
    """End this process's worker processes after Ctrl-C.

    Workers of a local pool get the Ctrl-C too, but survive it (a job's KeyboardInterrupt is
    sent back as its result and the worker takes the next job), and the pool's exit handler
    would wait for them to finish their runs. A worker ended here loses only the work after
    its run's last checkpoint, which `--resume` redoes."""
    children = multiprocessing.active_children()
    if not children:
        return
    previous = threading.excepthook

    def quiet(hook: threading.ExceptHookArgs) -> None:
        # Python 3.11: the manager thread of the pool these workers leave broken sets an error on
        # futures the interrupted pool had cancelled, and dies printing InvalidStateError.
        if not issubclass(hook.exc_type, InvalidStateError):
            previous(hook)

    threading.excepthook = quiet
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a bad argument (argparse named it): a code, not an exception
        return exit_.code if isinstance(exit_.code, int) else EXIT_ERROR
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    quiet = _QuietJobTracebacks()
    parallel_log = logging.getLogger("interp.parallel")
    if not args.debug:
        parallel_log.addFilter(quiet)
    head = f"interp {args.command}"
    try:
        return args.fn(args) or 0
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        _stop_workers()
        hint = {"run": f"; resume with: {resume_command(args)}" if args.command == "run" else "",
                "sweep": "; run the same command again to finish the sweep (finished points are kept)"}
        print(f"{head}: interrupted{hint.get(args.command, '')}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except JobsFailed as err:
        return _report_jobs_failed(err, args, _where(args))
    except BrokenPipeError:  # `interp list | head`: the reader left; end quietly, as a killed pipe writer does
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return EXIT_BROKEN_PIPE
    except Exception as err:
        message = explain(type(err).__name__, str(err), err, _where(args))
        if message is None:
            raise  # a bug: its traceback is what a report needs
        if args.debug:
            traceback.print_exc()
        # A full disk can strike after runs were trained (figures, report): resuming redoes only what is missing.
        disk_full = (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) \
            or bool(_TORCH_WRITE_FAILED.search(str(err)))
        hint = f"; once space is freed, resume with: {resume_command(args)}" if disk_full and args.command == "run" \
            else ""
        print(f"{head}: error: {message}{hint}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        parallel_log.removeFilter(quiet)


if __name__ == "__main__":
    sys.exit(main())
