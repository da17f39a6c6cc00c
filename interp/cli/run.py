"""`interp run`: an analysis end to end, and the command that resumes it."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from interp.analysis import get_analysis, resolve_config, run_analysis
from interp.cli.checks import check_device
from interp.configs import parse_overrides
from interp.devices import default_threads, resolve_device, set_threads
from interp.parallel import Backend, LocalBackend, RayBackend
from interp.plan import plan_analysis, plan_text


def output_dir(args: argparse.Namespace) -> Path:
    return Path(args.out or f"runs/{args.name}")


def cmd_run(args: argparse.Namespace) -> None:
    overrides = parse_overrides(args.set)
    if args.seed is not None:
        overrides["seed"] = str(args.seed)
    if args.plan:
        print_plan(args, overrides)
        return
    out = output_dir(args)
    results = run_analysis(args.name, out, args.preset, overrides, device=check_device(args.device),
                           progress=not args.quiet, resume=args.resume, backend=backend(args), force=args.force)
    print(json.dumps(results, indent=2))
    print(f"\nreport: {out / 'report.md'}\nfigures: {out / 'figures'}")


def print_plan(args: argparse.Namespace, overrides: dict[str, str]) -> None:
    """`interp run --plan`: the preset's plan on the device, timed in this process; nothing is written."""
    analysis = get_analysis(args.name)
    config = resolve_config(analysis, args.preset, overrides)
    set_threads(args.threads or default_threads())  # the slice is timed here, on the cores others leave idle
    print(plan_text(plan_analysis(analysis, args.preset, config, resolve_device(check_device(args.device)))))


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
        value = str(output_dir(args)) if attr == "out" else getattr(args, attr, default)
        if value is not None and value != default:
            parts += [option, str(value)]
    for pair in args.set:
        parts += ["--set", pair]
    parts += [flag for flag, on in (("--quiet", args.quiet), ("--force", args.force)) if on]
    return shlex.join([*parts, "--resume"])


def backend(args: argparse.Namespace) -> Backend | None:
    """The backend the command line asks for (`interp run` and `interp sweep`); None leaves
    the choice to the library."""
    if args.backend == "ray":
        return RayBackend(address=args.address, cpus_per_job=args.cpus_per_job, gpus_per_job=args.gpus_per_job,
                          torch_threads=args.threads)
    if args.workers or args.threads:
        return LocalBackend(workers=args.workers, torch_threads=args.threads)
    return None
