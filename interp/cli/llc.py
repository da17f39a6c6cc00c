"""`interp llc`: the local learning coefficient at every checkpoint of a run, with each
estimate's spread over chains and whether to trust it, the stages its curve splits training into,
and those stage boundaries beside the run's other change points (the loss's drop, the turns of
the essential-dynamics trajectory)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from interp import seeding
from interp.analysis import analysis_of_run
from interp.checkpoints import Run
from interp.cli.checks import check_device
from interp.cli.parser import REFINED_KEY
from interp.cli.runs import model_config, one_run
from interp.errors import InputError
from interp.ids import HeadId
from interp.metrics.development import Development, development
from interp.metrics.llc import refined_llc_probe
from interp.metrics.llc_settings import LLCSettings
from interp.model import Batch
from interp.probe_table import ProbeTable
from interp.probing import probe
from interp.suites import CheckpointSuite


def llc_rows(source: Run | CheckpointSuite, batch_file: str | None, sequences: int, seed: int) -> Batch:
    """The rows the sampler draws its minibatches from: the batch file, else `sequences` rows of
    the training distribution of the analysis that trained the run."""
    if batch_file:
        from interp.metrics.linear_probes import load_batch  # scikit-learn: imported only when asked for

        shape = model_config(source)
        return load_batch(batch_file, d_vocab=shape.d_vocab, n_ctx=shape.n_ctx)
    analysis = analysis_of_run(source) if isinstance(source, Run) else None
    if analysis is None or analysis.training_rows is None:
        owner = f"its analysis ({analysis.name})" if analysis is not None else "no analysis"
        raise InputError(f"--batch: {source.path} was trained by {owner} that draws training rows; pass a batch "
                         "file of its training data (safetensors, interp.metrics.linear_probes.save_batch)")
    return analysis.training_rows(source, sequences, seeding.generator(seed, seeding.CLI_BATCHES))


def cmd_llc(args: argparse.Namespace) -> None:
    source = one_run(Path(args.dir), args.cache)
    settings = LLCSettings(lr=args.lr, gamma=args.gamma, nbeta=args.nbeta, chains=args.chains, draws=args.draws,
                           burn_in=args.burn_in, batch_size=args.batch_size, seed=args.seed)
    device = check_device(args.device)
    rows = llc_rows(source, args.batch, args.sequences, args.seed)
    logged = [(m["step"], m["train/loss"]) for m in source.metrics() if "train/loss" in m]
    found = development(source, rows, settings, steps=args.steps, device=device, progress=True,
                        loss=tuple(zip(*logged, strict=True)) if len(logged) >= 2 else None)
    table = found.llc
    print(f"LLC by SGLD: {settings.chains} chains x {settings.draws} draws after {settings.burn_in} burn-in, "
          f"lr {settings.lr:g}, gamma {settings.gamma:g}, nbeta {settings.effective_nbeta:.4g}, "
          f"minibatches of {settings.batch_size} from {len(next(iter(rows.values())))} rows")
    print(f"{'step':>7s} {'llc':>9s} {'std':>8s} {'loss':>8s}  trustworthy")
    for step, llc, std, loss, trusted in zip(table.steps, table["llc"], table["llc_std"], table["init_loss"],
                                             table["trustworthy"], strict=True):
        print(f"{int(step):7d} {llc:9.3f} {std:8.3f} {loss:8.4f}  {'yes' if trusted else 'NO'}")
    if found.trusted < len(table.steps):
        print(f"{len(table.steps) - found.trusted} of {len(table.steps)} estimates are not trustworthy (a chain "
              "diverged, the loss trace drifts after burn-in, or chains disagree): try a smaller --lr, a larger "
              "--gamma or more --burn-in")
    _print_stages(found)
    if args.per_head or args.per_component:
        refined = _print_refined(source, settings, rows, args, device)
        # one CSV: the refined columns beside the whole model's, on the same checkpoints
        table = ProbeTable(table.steps, (*table.columns, *(f"{REFINED_KEY}/{c}" for c in refined.columns)),
                           np.hstack([table.values, refined.values]))
    if args.csv:
        table.to_csv(args.csv)
        print(f"wrote {args.csv}")


def _print_refined(source: Run | CheckpointSuite, settings: LLCSettings, rows: Batch, args: argparse.Namespace,
                   device: str | None) -> ProbeTable:
    """Each head's (or every component's) refined LLC at every checkpoint; `*` marks an estimate
    not to trust."""
    shape = model_config(source)
    components = None if args.per_component else \
        [HeadId(layer, head) for layer in range(shape.n_layers) for head in range(shape.n_heads)]
    refined = probe(source, {REFINED_KEY: refined_llc_probe(settings, components)}, rows, steps=args.steps,
                    device=device, progress=True)
    table = refined.select(REFINED_KEY)
    names = [c[len("llc/"):] for c in table.columns if c.startswith("llc/")]
    print(f"refined LLC per {'component' if args.per_component else 'head'} (* not trustworthy):")
    print(f"{'step':>7s} " + " ".join(f"{n:>9s}" for n in names))
    for i, step in enumerate(table.steps):
        print(f"{int(step):7d} " + " ".join(
            f"{table[f'llc/{n}'][i]:8.3f}{' ' if table[f'trustworthy/{n}'][i] else '*'}" for n in names))
    return table


def _print_stages(found: Development) -> None:
    """The LLC curve's stages and each boundary's nearest other change point."""
    if found.stages is None:
        print("stages: fewer than 3 finite LLC estimates; none segmented")
        return
    print(f"stages (LLC noise band {found.stages.noise:.3g}): "
          + ", ".join(f"{s.kind} {s.start}-{s.end}" for s in found.stages.stages))
    for match in found.change_points.matches:
        nearest = "no other change point" if match.nearest is None else \
            f"nearest: {match.nearest.source} at {match.nearest.step} ({match.distance:.1f} checkpoints away; " \
            f"{match.nearest.detail})"
        print(f"  boundary at {match.boundary.step}: {match.boundary.kind}; {nearest}")
    others = [row for row in found.change_points.rows if row.source != "llc stage"]
    if others:
        print("other change points: " + "; ".join(f"{row.source} at {row.step}" for row in others))
