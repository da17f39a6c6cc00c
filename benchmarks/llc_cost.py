"""Cost and stability of the LLC over a run's checkpoints (issue 31 targets on 2 CPU cores):

- the LLC at every checkpoint of the induction quick run, 4 chains: <= 5 minutes;
- the stage boundaries found with two sampler seeds: none moves by more than one checkpoint;
- a cached re-run (LLC, stages, essential dynamics, change points): < 1 s;
- each head's refined LLC at every checkpoint: <= 15 minutes (timed on `--refined-steps`
  checkpoints and scaled to all of them, stated as such, unless `--refined-steps all`).

Each seed runs on a fresh copy of the run with its probe caches removed, so the first call
samples everything. The rows are the training distribution's, drawn by the analysis that trained
the run (`Analysis.training_rows`), as `interp llc` draws them.

    python benchmarks/llc_cost.py runs/induction   # an induction-heads analysis folder (quick preset)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, table, write_result  # noqa: E402

from interp import seeding  # noqa: E402
from interp.analysis import analysis_of_run  # noqa: E402
from interp.checkpoints import Run  # noqa: E402
from interp.ids import HeadId  # noqa: E402
from interp.metrics.development import Development, development  # noqa: E402
from interp.metrics.llc import LLCSettings, refined_llc_probe  # noqa: E402
from interp.probing import probe  # noqa: E402
from interp.run_layout import PROBES_DIR  # noqa: E402

TARGET_LLC_S, TARGET_REFINED_S, TARGET_CACHED_S = 300.0, 900.0, 1.0


def boundary_shift(a: Development, b: Development) -> float | None:
    """The largest distance, in checkpoints, from a stage boundary of either run to the nearest
    boundary of the other (None when neither has one; inf when only one has)."""
    steps = a.llc.steps.tolist()
    ours = [steps.index(x.step) for x in a.stages.boundaries] if a.stages else []
    theirs = [steps.index(x.step) for x in b.stages.boundaries] if b.stages else []
    if not ours and not theirs:
        return None
    if not ours or not theirs:
        return float("inf")
    return float(max(max(min(abs(i - j) for j in theirs) for i in ours),
                     max(min(abs(i - j) for i in ours) for j in theirs)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("analysis", help="an induction-heads analysis folder (its runs/main is measured)")
    parser.add_argument("--run", default="main", help="the run under runs/ (default main)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sampler seeds (default 0 1)")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=60)
    parser.add_argument("--burn-in", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--gamma", type=float, default=100.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sequences", type=int, default=1024, help="rows of the training distribution")
    parser.add_argument("--refined-steps", default="4",
                        help="checkpoints timed for the per-head refined LLC, spread over the run (or 'all'; 0: skip)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's choice)")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/llc_cost.json)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    source = Run.open(Path(args.analysis) / "runs" / args.run)
    analysis = analysis_of_run(source)
    if analysis is None or analysis.training_rows is None:
        parser.error(f"{source.path}: no analysis that draws training rows trained this run")
    rows = analysis.training_rows(source, args.sequences, seeding.generator(0, seeding.CLI_BATCHES))
    logged = source.series("train/loss")
    found: dict[int, Development] = {}
    first, cached, refined_s, refined = {}, {}, None, None
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            copy = Path(scratch) / f"run-{seed}"
            shutil.copytree(source.path, copy, ignore=shutil.ignore_patterns(PROBES_DIR, ".lock"))
            run = Run.open(copy)
            settings = LLCSettings(lr=args.lr, gamma=args.gamma, chains=args.chains, draws=args.draws,
                                   burn_in=args.burn_in, batch_size=args.batch_size, seed=seed)
            start = time.perf_counter()
            found[seed] = development(run, rows, settings, loss=logged, device="cpu")
            first[seed] = time.perf_counter() - start
            start = time.perf_counter()
            development(run, rows, settings, loss=logged, device="cpu")
            cached[seed] = time.perf_counter() - start
            print(f"seed {seed}: {first[seed]:.1f} s, cached {cached[seed]:.3f} s", flush=True)
        if args.refined_steps != "0":
            steps = source.steps if args.refined_steps == "all" else \
                [source.steps[int(i)] for i in np.linspace(0, len(source.steps) - 1, int(args.refined_steps))]
            shape = source.model_config
            heads = [HeadId(layer, head) for layer in range(shape.n_layers) for head in range(shape.n_heads)]
            settings = LLCSettings(lr=args.lr, gamma=args.gamma, chains=args.chains, draws=args.draws,
                                   burn_in=args.burn_in, batch_size=args.batch_size, seed=args.seeds[0])
            start = time.perf_counter()
            refined = probe(Run.open(Path(scratch) / f"run-{args.seeds[0]}"), {"rllc": refined_llc_probe(
                settings, heads)}, rows, steps=steps, device="cpu").select("rllc")
            refined_s = (time.perf_counter() - start) * len(source.steps) / len(steps)
            print(f"refined LLC of {len(heads)} heads at {len(steps)} checkpoints: "
                  f"{refined_s * len(steps) / len(source.steps):.1f} s", flush=True)

    seeds = args.seeds
    base = found[seeds[0]]
    llc = np.stack([found[s].llc["llc"] for s in seeds])
    chain_spread = float(np.nanmedian(base.llc["llc_std"] / np.abs(base.llc["llc"])))
    seed_spread = float(np.nanmedian(np.nanstd(llc, axis=0) / np.abs(np.nanmean(llc, axis=0)))) \
        if len(seeds) > 1 else None
    shifts = [boundary_shift(base, found[s]) for s in seeds[1:]]
    print(f"{len(base.llc.steps)} checkpoints of {source.path}; {args.chains} chains x {args.draws} draws after "
          f"{args.burn_in} burn-in, minibatches of {args.batch_size}, lr {args.lr:g}, gamma {args.gamma:g}")
    print(table(["", "seconds", "target (s)"],
                [*[[f"LLC, all checkpoints, seed {s}", f"{first[s]:.1f}", TARGET_LLC_S] for s in seeds],
                 *[[f"cached re-run, seed {s}", f"{cached[s]:.3f}", TARGET_CACHED_S] for s in seeds],
                 *([[f"refined LLC per head (scaled from {args.refined_steps} checkpoints)"
                     if args.refined_steps != "all" else "refined LLC per head", f"{refined_s:.0f}",
                     TARGET_REFINED_S]] if refined_s is not None else [])]))
    for s in seeds:
        boundaries = ", ".join(f"{b.step} {b.kind}" for b in found[s].stages.boundaries) if found[s].stages else "-"
        print(f"seed {s}: {found[s].trusted}/{len(found[s].llc.steps)} trustworthy; boundaries: {boundaries}")
    print(f"spread over chains (median std/|LLC|): {chain_spread:.3f}; over seeds: {seed_spread}; largest "
          f"boundary shift between seeds: {shifts} checkpoints")
    result = {
        "environment": environment(torch.device("cpu")), "run": str(source.path), "checkpoints": len(base.llc.steps),
        "settings": {k: getattr(args, k) for k in ("chains", "draws", "burn_in", "lr", "gamma", "batch_size",
                                                   "sequences")},
        "llc_first_s": first, "cached_s": cached, "refined_s_all_checkpoints": refined_s,
        "refined_steps_timed": args.refined_steps,
        "refined": None if refined is None else {"steps": refined.steps.tolist(), **{
            c[len("llc/"):]: refined[c].tolist() for c in refined.columns if c.startswith("llc/")}},
        "steps": base.llc.steps.tolist(), "llc": {s: found[s].llc["llc"].tolist() for s in seeds},
        "llc_std": {s: found[s].llc["llc_std"].tolist() for s in seeds},
        "trustworthy": {s: found[s].trusted for s in seeds},
        "boundaries": {s: [[b.step, b.kind] for b in found[s].stages.boundaries] if found[s].stages else []
                       for s in seeds},
        "chain_spread": chain_spread, "seed_spread": seed_spread, "boundary_shift": shifts,
        "change_points": base.change_points.to_json(),
    }
    print(f"wrote {write_result('llc_cost', result, args.out)}")
    missed = max(first.values()) > TARGET_LLC_S or max(cached.values()) > TARGET_CACHED_S or \
        (refined_s is not None and refined_s > TARGET_REFINED_S) or any(s is None or s > 1 for s in shifts)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
