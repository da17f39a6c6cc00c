"""`interp sweep`: an analysis over a grid of overrides x seeds, and its table."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from interp.analysis import get_analysis
from interp.cli.checks import check_device
from interp.cli.run import backend
from interp.sweep import SWEEP_KEEP, parse_grid, run_sweep


def sweep_dir(args: argparse.Namespace) -> Path:
    return Path(args.out or f"runs/sweep-{args.name}")


def cmd_sweep(args: argparse.Namespace) -> None:
    grid = parse_grid(args.grid)
    seeds = list(range(args.seeds)) if args.seed_list is None else args.seed_list
    out = sweep_dir(args)
    metrics = [m for m in args.metrics.split(",") if m] if args.metrics else []
    table = run_sweep(args.name, out, args.preset, grid, seeds, backend(args), device=check_device(args.device),
                      metrics=metrics, keep=replace(SWEEP_KEEP, weights=args.keep))
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
