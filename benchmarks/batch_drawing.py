"""Batch drawing: how long one training batch of icl-transience (`tasks.fewshot.FewShot`) and
fact-learning (`tasks.biographies.Biographies`) takes to draw, today's code against a base
commit's, as a share of one training step of the same preset's model.

For each analysis and each of its presets `quick`, `gpu` and `paper` (those it has), the main
run's data source draws the batches of steps 0..`--draws`-1 (each from the trainer's generator
`generator(seed, BATCHES, step)`), after `--warmup` untimed draws, with the current code and with
the base commit's (`git show BASE:tasks/<file>.py`, imported as a module) in turn, over `--rounds`
rounds whose order rotates, so a slow stretch of the machine hits both. The two must give
identical batches (checked on every draw: the code is faster, the data stream is the same). Draws
follow one another (warm caches). A training step is `interp.train.Stepper.step` (forward,
backward, optimizer) of the preset's model on one of those batches, timed over
`--train-steps` steps, the first a warm-up, on the same device and threads (the fact-learning
`paper` model takes about a minute a step on one CPU thread: a few steps only). The trainer's
seeding of each step's generator is the same for both variants and is not timed.

Prints, per preset: milliseconds per batch before and after (median), the ratio, the training
step's milliseconds and the batch's share of it. Targets: icl-transience `paper` and
fact-learning `paper` at least 10x faster than the base; every preset's batch under 10% of its
training step.

    python benchmarks/batch_drawing.py                     # ~4 min -> results/batch_drawing.json
    python benchmarks/batch_drawing.py --base ''           # current code only (no git)
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, median, spread, sync, table, write_result  # noqa: E402

from analyses import fact_learning, icl_transience  # noqa: E402
from interp.devices import resolve_device  # noqa: E402
from interp.model import build_model, training_batch  # noqa: E402
from interp.seeding import BATCHES, generator  # noqa: E402
from interp.train import Stepper  # noqa: E402
from tasks import biographies, fewshot  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BASE = "b58f2e6"  # the commit before batch drawing was vectorised
PRESET_NAMES = ("quick", "gpu", "paper")
SPEEDUP_TARGET = 10.0  # icl-transience and fact-learning `paper`
SHARE_TARGET = 0.10  # of a training step, every preset


@dataclass(frozen=True)
class Analysis:
    """How an analysis's main run builds its data source from a preset, from a task module
    (today's or the base commit's)."""

    name: str
    presets: dict[str, Any]
    module: Any
    source: Callable[[Any, Any], Any]  # (task module, preset) -> data source


ANALYSES = (
    Analysis("icl-transience", icl_transience.PRESETS, fewshot, lambda m, cfg: m.FewShot(cfg.data)),
    Analysis("fact-learning", fact_learning.PRESETS, biographies,
             lambda m, cfg: m.Biographies(replace(cfg.data, seed=cfg.seed))),
)


def base_module(module: Any, commit: str, folder: Path) -> Any:
    """`module`'s file as it was at `commit`, imported under another name."""
    relative = Path(module.__file__).resolve().relative_to(ROOT).as_posix()
    shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{relative}"], capture_output=True, text=True)
    if shown.returncode != 0:
        raise SystemExit(f"--base: cannot read {relative} at {commit!r} ({shown.stderr.strip()}); "
                         "pass --base '' to time the current code only")
    path = folder / f"base_{Path(relative).stem}.py"
    path.write_text(shown.stdout)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = loaded  # dataclasses resolve their module by name
    spec.loader.exec_module(loaded)
    return loaded


def same_batch(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def time_draws(sources: dict[str, Any], batch_size: int, seed: int, draws: int, rounds: int, warmup: int
               ) -> tuple[dict[str, list[float]], bool, dict[str, torch.Tensor]]:
    """Milliseconds per draw of each source: in each round every source draws the batches of steps
    0..`draws`-1 in turn (the order rotating from round to round; each source's first `warmup`
    draws of a round are not timed), and whether they all drew the same batches; and a batch."""
    times: dict[str, list[float]] = {name: [] for name in sources}
    identical = True
    for round_index in range(rounds):
        order = list(sources)[round_index % len(sources):] + list(sources)[:round_index % len(sources)]
        drawn: dict[str, list[dict[str, torch.Tensor]]] = {}
        for name in order:
            drawn[name] = []
            for step in range(-warmup, draws):
                stream = generator(seed, BATCHES, step % draws)  # the trainer's seeding: not timed
                started = time.perf_counter()
                batch = sources[name].batch(step % draws, batch_size, stream)
                if step >= 0:
                    times[name].append((time.perf_counter() - started) * 1000)
                    drawn[name].append(batch)
        first, *others = drawn.values()
        identical &= all(same_batch(a, b) for other in others for a, b in zip(first, other, strict=True))
    return times, identical, first[-1]


def time_train_step(cfg: Any, batch: dict[str, torch.Tensor], steps: int, device: torch.device) -> list[float]:
    """Milliseconds per `Stepper.step` of the preset's model on `batch`: `steps` steps, the first
    left out when there are more (warm-up; a `paper` step on a CPU takes a minute, so few are run)."""
    model = build_model(cfg.model, device=device)
    stepper = Stepper(model, cfg.train)
    model.train()
    batch = training_batch(batch, device)
    out = []
    for step in range(steps):
        sync(device)
        started = time.perf_counter()
        float(stepper.step(step, batch).loss)  # reading the loss waits for the step
        out.append((time.perf_counter() - started) * 1000)
    return out[1:] if steps > 1 else out


def time_seeding(draws: int) -> list[float]:
    """Milliseconds per `generator(seed, BATCHES, step)`: what the trainer pays per step besides the batch."""
    out = []
    for step in range(draws):
        started = time.perf_counter()
        generator(0, BATCHES, step)
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=20, help="batches per preset, variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed draws before each round's")
    parser.add_argument("--train-steps", type=int, default=2,
                        help="training steps per preset, the first a warm-up when there are more (0: none)")
    parser.add_argument("--base", default=BASE, help=f"commit of the 'before' code (default {BASE}; '' for none)")
    parser.add_argument("--presets", default=",".join(PRESET_NAMES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="device of the training step (batches are drawn on the CPU)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    wanted = args.presets.split(",")
    rows, results, missed = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for analysis in ANALYSES:
            base = base_module(analysis.module, args.base, Path(folder)) if args.base else None
            for preset in (p for p in PRESET_NAMES if p in wanted and p in analysis.presets):
                cfg = analysis.presets[preset]
                built = time.perf_counter()
                sources = {"after": analysis.source(analysis.module, cfg)}
                construct_ms = (time.perf_counter() - built) * 1000
                if base is not None:
                    sources["before"] = analysis.source(base, cfg)
                times, identical, batch = time_draws(sources, cfg.train.batch_size, cfg.train.seed, args.draws,
                                                     args.rounds, args.warmup)
                step_ms = time_train_step(cfg, batch, args.train_steps, device) if args.train_steps else []
                after = median(times["after"])
                before = median(times["before"]) if base is not None else None
                speedup = before / after if before is not None else None
                share = after / median(step_ms) if step_ms else None
                result = {"analysis": analysis.name, "preset": preset, "batch_size": cfg.train.batch_size,
                          "ms_per_batch": times, "ms_per_train_step": step_ms, "speedup": speedup,
                          "share_of_step": share, "identical": identical, "construct_ms": construct_ms}
                results.append(result)
                rows.append([f"{analysis.name} {preset}", cfg.train.batch_size,
                             "-" if before is None else f"{before:.3g}", f"{after:.3g}", spread(times["after"]),
                             "-" if speedup is None else f"{speedup:.1f}x",
                             f"{median(step_ms):.4g}" if step_ms else "-", f"{100 * share:.2g}%" if step_ms else "-",
                             "yes" if identical else "NO"])
                if preset == "paper" and speedup is not None and speedup < SPEEDUP_TARGET:
                    missed.append(f"{analysis.name} paper: {speedup:.1f}x faster, target {SPEEDUP_TARGET:g}x")
                if share is not None and share >= SHARE_TARGET:
                    missed.append(f"{analysis.name} {preset}: {100 * share:.2g}% of a step, target "
                                  f"< {100 * SHARE_TARGET:g}%")
                if not identical:
                    missed.append(f"{analysis.name} {preset}: the batches differ from the base commit's")
    seeding = time_seeding(max(args.draws, 100))
    print(f"batch_drawing: {args.draws} batches x {args.rounds} rounds per variant, {args.threads} torch thread(s), "
          f"base {args.base or 'none'}, training step on {device}")
    print(table(["preset", "batch", "before ms", "after ms", "after range", "speed-up", "step ms", "batch/step",
                 "identical"], rows))
    print(f"seeding a step's generator (both variants, not in the table): {median(seeding):.3g} ms")
    for line in missed:
        print(f"MISSED: {line}")
    path = write_result("batch_drawing", {"base": args.base, "draws": args.draws, "rounds": args.rounds,
                                          "results": results, "ms_per_seeding": seeding, "missed": missed,
                                          "environment": environment(device)}, args.out)
    print(f"wrote {path}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
