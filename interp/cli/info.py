"""`interp info`: what each run (or checkpoint suite) holds and how far it got; with
`--verify`, every checkpoint against its hash, completeness and the strict JSON of its files."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from interp.checkpoints import Run
from interp.cli.errors import EXIT_FAILED
from interp.cli.runs import model_config, one_run, run_dirs
from interp.files import bytes_in, read_json, scan_jsonl
from interp.memory import format_bytes
from interp.probe_cache import cache_rows, probe_cache_files
from interp.run_layout import ANALYSIS_FILE, CONFIG_FILE, STATE_FILE, WEIGHTS_FILE, CheckpointError
from interp.suite_layouts import is_suite_folder
from interp.suites import HUB_PREFIX, CheckpointSuite


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


def kept_files(run: Run) -> str:
    """What a run's checkpoints keep, as a checkpoint policy left them: weights at how many of
    the committed checkpoints, and training states (a resume needs the last one's only)."""
    manifest, steps = run.manifest, run.committed_steps
    states = sum(STATE_FILE in manifest[str(step)] for step in steps)
    return (f"weights at {len(run.steps)} of {len(steps)} checkpoint{'s' * (len(steps) != 1)} and "
            f"{states} training state{'s' * (states != 1)}")


def verify_run(run: Run) -> tuple[list[str], list[str]]:
    """(failures, notes) of a run: every checkpoint's files against their sha256 in the
    manifest and loaded (weights finite), the structure (`Run.inspect`: damage is a failure,
    a killed writer's leftovers a note), completeness, and strict JSON in the probe caches."""
    state = run.inspect()
    failures, notes = list(state.damage()), list(state.repairs())
    manifest = run.manifest if not state.manifest_error else {}
    for step in state.steps:
        if step in state.local_steps and step not in state.step_dirs:
            continue  # named by damage()
        kept = manifest[str(step)]  # only the files the checkpoint policy kept (weights may be another run's)
        try:
            weights = run.load_state_dict(step) if WEIGHTS_FILE in kept else {}
            if STATE_FILE in kept:
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
    for cache in probe_cache_files(run):
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
    from interp.view.checkpoint_cache import pattern_problems  # the explorer's module, read only when asked

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


def _analysis_leftovers(directory: Path) -> list[Path]:
    from interp.analysis import analysis_leftovers  # with --verify only: the analyses' module takes seconds

    return analysis_leftovers(directory)


def _analysis_dirs(path: Path) -> list[Path]:
    if (path / ANALYSIS_FILE).exists():
        return [path]
    return sorted(p.parent for p in path.rglob(ANALYSIS_FILE)) if path.is_dir() else []


def cmd_info(args: argparse.Namespace) -> int:
    """Without --verify a damaged file ends the command with an error naming it; with --verify
    it is one of the failures, and every other run is still checked."""
    path = Path(args.dir)
    if is_suite_folder(path) or str(path).startswith(HUB_PREFIX) or args.cache is not None:
        # a suite's step<N>/config.json files are not run directories (--cache with a run is refused there)
        source = one_run(path, args.cache)
        if isinstance(source, CheckpointSuite):
            return _describe_suite(source, args.verify)
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
        leftovers = _analysis_leftovers(directory) if args.verify else []
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
                print(f"  verify: OK ({kept_files(run)} match their sha256 and load, with finite weights)")
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
    # --verify first: reading the cache hashes changed files again, which would hide them from verify()
    found = suite.verify() if verify else None
    from interp.metrics.loss_curve import LOSS_KEY, cached_loss_curve  # the probe runner: imported only for a suite

    curve = cached_loss_curve(suite)
    if curve is not None:
        loss = curve.columns[LOSS_KEY]
        extra = "".join(f", {name} {values[0]:.4g} -> {values[-1]:.4g}" for name, values in curve.columns.items()
                        if name != LOSS_KEY)
        print(f"  loss: {loss[0]:.4g} at step {curve.steps[0]} -> {loss[-1]:.4g} at step {curve.steps[-1]}{extra} "
              f"({curve.caption()})")
    if found is None:
        return 0
    print("  verify: FAILED" if found.failures else f"  verify: OK ({len(steps)} checkpoints hold readable weights, "
          "none changed under the hash its cached results are keyed by)")
    for line in found.failures:
        print(f"    - {line}")
    if found.unchecked:
        print(f"    note: not checked, in a weight format not loaded here: {', '.join(map(str, found.unchecked[:5]))}"
              + (f" and {len(found.unchecked) - 5} more" if len(found.unchecked) > 5 else ""))
    return EXIT_FAILED if found.failures else 0


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
    print(f"  checkpoints: {len(steps)} ({steps[0] if steps else '-'} .. {steps[-1] if steps else '-'})"
          + ("" if state.manifest_error else f"; {kept_files(run)} kept"))
    print(f"  size: {format_bytes(bytes_in(run.path))} on disk" + "".join(
        f"; step {step}'s weights are {ref}'s (relative to the run)" for step, ref in run.shared_weights().items()))
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
    probes = sorted({p.stem for p in probe_cache_files(run)})
    if probes:
        print(f"  cached probes: {', '.join(probes)}")
