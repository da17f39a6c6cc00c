"""Sweep speed: the process pool vs the same points one after another.

Runs one sweep of `--points` seeds of an analysis twice, into two fresh
directories, in the same invocation:

- sequential: `LocalBackend(workers=1)`, each point in this process with every
  core's thread (what a loop over `interp run` does);
- pool: `LocalBackend(workers=--workers)`, the default backend (one process per
  core, the cores divided among them).

Both run the same points with the same analysis settings (its own pool set to one
worker, as in every sweep). Order alternates with `--rounds > 1`. Target: pool
time / sequential time <= 0.65.

    python benchmarks/sweep_speed.py                      # 8 induction-heads points, quick, 1000 steps
    python benchmarks/sweep_speed.py --set train.steps=8000   # full quick points (~30 min)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, median, table, write_result  # noqa: E402

from interp.configs import parse_overrides  # noqa: E402
from interp.parallel import (
    LocalBackend,  # noqa: E402
    available_cores,  # noqa: E402
)
from interp.sweep import run_sweep  # noqa: E402

TARGET = 0.65


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--analysis", default="induction-heads")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--set", action="append", default=["train.steps=1000"], metavar="KEY=VALUE",
                        help="override for every point (default: train.steps=1000)")
    parser.add_argument("--points", type=int, default=8, help="seeds 0..N-1 (default 8)")
    parser.add_argument("--workers", type=int, default=0, help="pool processes (default: one per core)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", default=None, help="result file (default: results/sweep_speed.json)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args()

    overrides = parse_overrides(args.set)
    grid = {key: [value] for key, value in overrides.items()}
    seeds = list(range(args.points))
    variants = {"sequential": LocalBackend(workers=1, torch_threads=available_cores()),
                "pool": LocalBackend(workers=args.workers)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, list] = {}
    print(f"sweep_speed: {args.points} points of {args.analysis} --preset {args.preset} {overrides}; "
          f"{available_cores()} cores")
    for round_index in range(args.rounds):
        order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
        for name in order:
            work = Path(tempfile.mkdtemp(prefix=f"sweep_speed_{name}_"))
            started = time.perf_counter()
            table_rows = run_sweep(args.analysis, work, args.preset, grid, seeds, variants[name])
            times[name].append(time.perf_counter() - started)
            failed = [r["point"] for r in table_rows if r["status"] != "ok"]
            if failed:
                raise SystemExit(f"{name}: points failed: {failed}")
            results[name] = [r["results"] for r in table_rows]
            shutil.rmtree(work)
            print(f"   round {round_index + 1}: {name} {times[name][-1]:.1f} s")
    same = results["sequential"] == results["pool"]
    ratio = median(times["pool"]) / median(times["sequential"])
    print()
    base = median(times["sequential"])
    print(table(["variant", "wall s (median)", "per point s", "vs sequential"],
                [[name, f"{median(t):.1f}", f"{median(t) / args.points:.1f}", f"{median(t) / base:.3f}"]
                 for name, t in times.items()]))
    print(f"\npool/sequential = {ratio:.3f}; target <= {TARGET}: {'PASS' if ratio <= TARGET else 'MISS'}; "
          f"identical results: {same}")
    path = write_result("sweep_speed", {
        "analysis": args.analysis, "preset": args.preset, "overrides": overrides, "points": args.points,
        "workers": args.workers or available_cores(), "seconds": times,
        "ratio_pool_over_sequential": ratio, "target": TARGET, "identical_results": same,
        "environment": environment(torch.device("cpu")),
    }, args.out)
    print(f"wrote {path}")
    return 1 if args.check and ratio > TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
