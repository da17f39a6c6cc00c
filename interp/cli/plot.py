"""`interp plot`: logged metrics, cached per-head probes and the cached loss curve of each run
(or checkpoint suite), into its figures/."""

from __future__ import annotations

import argparse
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np

from interp.checkpoints import Run
from interp.cli.runs import find_runs, model_config
from interp.ids import HeadId
from interp.metrics.loss_curve import LOSS_KEY, cached_loss_curve
from interp.probe_cache import cached_computations, probe_cache_files
from interp.suites import CheckpointSuite
from interp.viz import plot_curves, plot_head_curves, save_figure


def cmd_plot(args: argparse.Namespace) -> None:
    for run in find_runs(Path(args.dir), args.cache):
        rows = run.metrics()
        groups: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = defaultdict(dict)
        for key in sorted({k for r in rows for k in r} - {"step"}):
            logged = [r for r in rows if key in r]
            groups[key.split("/")[0] if "/" in key else key][key] = (
                np.array([r["step"] for r in logged]), np.array([r[key] for r in logged], dtype=float))
        fig_dir = run.path / "figures"
        for group, series in groups.items():
            path = save_figure(plot_curves(series, title=f"{run.path.name}: {group}", logx=args.logx),
                               fig_dir / f"metrics_{group}.png")
            print(f"wrote {path}")
        for key in sorted({cache.stem for cache in probe_cache_files(run)}):
            drawn = _plot_cached_probe(run, key, fig_dir, args.logx)
            if drawn:
                print(f"wrote {drawn[0]}: {drawn[1]}")
        curve = cached_loss_curve(run)
        if curve is not None:
            series = {name: (np.array(curve.steps), np.array(values)) for name, values in curve.columns.items()}
            title = textwrap.fill(f"{run.path.name}: loss on {curve.about}", 72)
            path = save_figure(plot_curves(series, title=title, ylabel="loss (nats)", logx=args.logx,
                                           markers=len(curve.steps) <= 20), fig_dir / f"{LOSS_KEY}.png")
            print(f"wrote {path}: {curve.caption()}")


def _plot_cached_probe(run: Run | CheckpointSuite, key: str, fig_dir: Path, logx: bool) -> tuple[Path, str] | None:
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
