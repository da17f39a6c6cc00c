"""The `interp` command: list and run analyses, inspect, probe and plot runs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from interp.analysis import get_analysis, load_all, run_analysis
from interp.checkpoints import CheckpointError, Run
from interp.configs import ConfigError, parse_overrides
from interp.ids import HeadId
from interp.metrics import circuits
from interp.parallel import Backend, JobsFailed, LocalBackend, RayBackend
from interp.probing import probe
from interp.sweep import parse_grid, run_sweep
from interp.train import step_generator
from interp.viz import plot_curves, plot_head_curves, save_figure

BUILTIN_PROBES = ("prev-token", "induction")


def _find_runs(path: Path) -> list[Run]:
    """The run at `path`, or every run directory below it (an analysis output)."""
    if (path / "config.json").exists() and (path / "manifest.json").exists():
        return [Run.open(path)]
    runs = [Run.open(p.parent) for p in sorted(path.rglob("manifest.json"))]
    if not runs:
        raise FileNotFoundError(f"{path}: no run directory (config.json + manifest.json) found")
    return runs


def cmd_list(args: argparse.Namespace) -> None:
    loaded, broken = load_all()
    for name, analysis in loaded.items():
        print(f"{name:24s} {analysis.description}")
        print(f"{'':24s} presets: {', '.join(analysis.presets)}")
    for name, why in broken.items():
        print(f"{name:24s} BROKEN: {why}")


def cmd_run(args: argparse.Namespace) -> None:
    overrides = parse_overrides(args.set)
    if args.seed is not None:
        overrides["seed"] = str(args.seed)
    out = Path(args.out or f"runs/{args.name}")
    results = run_analysis(args.name, out, args.preset, overrides, device=args.device,
                           progress=not args.quiet, resume=args.resume, backend=_backend(args))
    print(json.dumps(results, indent=2))
    print(f"\nreport: {out / 'report.md'}\nfigures: {out / 'figures'}")


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
    table = run_sweep(args.name, out, args.preset, grid, seeds, _backend(args), device=args.device, metrics=metrics)
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


def cmd_info(args: argparse.Namespace) -> None:
    for run in _find_runs(Path(args.dir)):
        config = run.config
        model = config["model"]
        print(f"run {run.path}")
        print(f"  model: {model['n_layers']} layers, d_model={model['d_model']}, {model['n_heads']} heads, "
              f"vocab={model['d_vocab']}, n_ctx={model['n_ctx']}, attn_only={model['attn_only']}")
        train_cfg = config["train"]
        print(f"  train: {train_cfg['steps']} steps, {train_cfg['optimizer']} lr={train_cfg['lr']}, "
              f"batch={train_cfg['batch_size']}, seed={train_cfg['seed']}")
        steps = run.steps
        print(f"  checkpoints: {len(steps)} ({steps[0] if steps else '-'} .. {steps[-1] if steps else '-'})")
        rows = run.metrics()
        last: dict[str, float] = {}
        for row in rows:
            last.update({k: v for k, v in row.items() if k != "step"})
        for key, value in sorted(last.items()):
            print(f"  {key:28s} {value:.4g} (last logged)")
        probes = sorted(p.stem for p in (run.path / "probes").glob("*.jsonl"))
        if probes:
            print(f"  cached probes: {', '.join(probes)}")


def cmd_probe(args: argparse.Namespace) -> None:
    run = _find_runs(Path(args.dir))[0]
    model_cfg = run.model_config
    layers = args.layers if args.layers is not None else list(range(model_cfg.n_layers))
    bad = [layer for layer in layers if not 0 <= layer < model_cfg.n_layers]
    if bad:
        raise ConfigError("--layers", f"layers in [0, {model_cfg.n_layers - 1}]", bad)
    period = args.period or model_cfg.n_ctx // 2
    if not 2 <= period <= model_cfg.n_ctx // 2:
        raise ConfigError("--period", f"between 2 and n_ctx/2 = {model_cfg.n_ctx // 2}", period)
    tokens = circuits.repeated_tokens(args.sequences, period, model_cfg.d_vocab, step_generator(args.seed, 0, 2))
    if args.metric == "prev-token":
        probe_obj = circuits.previous_token_probe(layers)
    else:
        probe_obj = circuits.induction_probe(layers, period)
    key = args.metric.replace("-", "_")
    table = probe(run, {key: probe_obj}, {"tokens": tokens}, steps=args.steps, device=args.device,
                  progress=True).select(key)
    print("step  " + " ".join(f"{c:>7s}" for c in table.columns))
    for step, row in zip(table.steps, table.values, strict=True):
        print(f"{int(step):<5d} " + " ".join(f"{v:7.3f}" for v in row))
    if args.csv:
        table.to_csv(args.csv)
        print(f"wrote {args.csv}")


def cmd_plot(args: argparse.Namespace) -> None:
    for run in _find_runs(Path(args.dir)):
        rows = run.metrics()
        groups: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = defaultdict(dict)
        for key in sorted({k for r in rows for k in r} - {"step"}):
            groups[key.split("/")[0] if "/" in key else key][key] = run.series(key)
        fig_dir = run.path / "figures"
        for group, series in groups.items():
            path = save_figure(plot_curves(series, title=f"{run.path.name}: {group}", logx=args.logx),
                               fig_dir / f"metrics_{group}.png")
            print(f"wrote {path}")
        for cache in sorted((run.path / "probes").glob("*.jsonl")):
            path = _plot_cached_probe(run, cache, fig_dir, args.logx)
            if path:
                print(f"wrote {path}")


def _plot_cached_probe(run: Run, cache: Path, fig_dir: Path, logx: bool) -> Path | None:
    """Per-head curves of a cached `L{l}H{h}` probe (latest probe name and batch)."""
    rows = [json.loads(line) for line in cache.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    latest = (rows[-1]["probe"], rows[-1]["batch"])
    by_step = {r["step"]: r["values"] for r in rows if (r["probe"], r["batch"]) == latest}
    names = sorted(next(iter(by_step.values())))
    if not all(HeadId.is_head(n) for n in names):
        return None
    cfg = run.model_config
    steps = np.array(sorted(by_step))
    grid = np.full((len(steps), cfg.n_layers, cfg.n_heads), np.nan)
    for i, step in enumerate(steps):
        for name, value in by_step[step].items():
            head = HeadId.parse(name)
            grid[i, head.layer, head.head] = value
    title = f"{run.path.name}: {latest[0]}"
    return save_figure(plot_head_curves(grid, steps, title=title, logx=logx), fig_dir / f"probe_{cache.stem}.png")


def _add_backend_args(p: argparse.ArgumentParser, job: str) -> None:
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help=f"where each independent {job} runs (default: local processes)")
    p.add_argument("--workers", type=int, default=0, help="local processes (default: one per core)")
    p.add_argument("--threads", type=int, default=0,
                   help=f"torch threads per {job} (default: cores / workers locally, --cpus-per-job on Ray)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--cpus-per-job", type=int, default=1, help="Ray CPUs per job")
    p.add_argument("--gpus-per-job", type=float, default=0.0, help="Ray GPUs per job")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interp", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log library progress messages")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list the available analyses and their presets").set_defaults(fn=cmd_list)

    p = sub.add_parser("run", help="run an analysis end to end (train, probe, plot, report)")
    p.add_argument("name", help="analysis name (see `interp list`)")
    p.add_argument("--preset", default="quick", help="named configuration (default: quick)")
    p.add_argument("--out", help="output directory (default: runs/NAME)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if present)")
    p.add_argument("--seed", type=int, default=None, help="one seed for model init, data and evaluation")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set train.lr=1e-3 --set model.d_model=128")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_backend_args(p, "training run of the analysis")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("sweep", help="run an analysis over a grid of overrides x seeds (resumable)")
    p.add_argument("name", help="analysis name (see `interp list`)")
    p.add_argument("--preset", default="quick", help="named configuration (default: quick)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="swept config key and its values, e.g. --grid train.lr=1e-3,2e-3 (repeatable: a product)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 for every grid point (default 1)")
    p.add_argument("--seed-list", type=int, nargs="+", default=None, help="explicit seeds instead of --seeds")
    p.add_argument("--out", help="sweep directory (default: runs/sweep-NAME); re-run it to finish a sweep")
    _add_backend_args(p, "point")
    p.add_argument("--device", default=None, help="device for every point (default: CUDA if present)")
    p.add_argument("--metrics", default="", help="comma-separated results to tabulate and plot (default: headline)")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("info", help="summarize a run directory (or every run below a directory)")
    p.add_argument("dir")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("probe", help="compute a built-in head score at every checkpoint of a run")
    p.add_argument("dir")
    p.add_argument("metric", choices=BUILTIN_PROBES)
    p.add_argument("--layers", type=int, nargs="+", default=None)
    p.add_argument("--steps", type=int, nargs="+", default=None, help="checkpoint steps (default: all)")
    p.add_argument("--period", type=int, default=0, help="repeat period of the probe tokens (default n_ctx/2)")
    p.add_argument("--sequences", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.set_defaults(fn=cmd_probe)

    p = sub.add_parser("plot", help="plot logged metrics and cached probes of a run into its figures/")
    p.add_argument("dir")
    p.add_argument("--logx", action="store_true")
    p.set_defaults(fn=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        args.fn(args)
    except (ConfigError, CheckpointError, KeyError, FileNotFoundError, FileExistsError, ValueError, ImportError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"interp {args.command}: error: {message}", file=sys.stderr)
        return 2
    except JobsFailed as err:
        print(f"interp {args.command}: error: {err}\n(tracebacks above; run again with --resume to repeat only "
              "the failed runs)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
