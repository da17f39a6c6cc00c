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
from interp.cli.runs import model_config, one_run
from interp.errors import InputError
from interp.metrics.llc import LLCSettings, llc_probe
from interp.model import Batch
from interp.probing import ProbeTable, probe
from interp.suites import CheckpointSuite

LLC_KEY = "llc"
"""The key `interp llc` caches its estimates under (`probes/llc.jsonl`), one computation per
sampler setting and batch."""


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
    source = one_run(Path(args.dir))
    settings = LLCSettings(lr=args.lr, gamma=args.gamma, nbeta=args.nbeta, chains=args.chains, draws=args.draws,
                           burn_in=args.burn_in, batch_size=args.batch_size, seed=args.seed)
    device = check_device(args.device)
    rows = llc_rows(source, args.batch, args.sequences, args.seed)
    table = probe(source, {LLC_KEY: llc_probe(settings)}, rows, steps=args.steps, device=device,
                  progress=True).select(LLC_KEY)
    print(f"LLC by SGLD: {settings.chains} chains x {settings.draws} draws after {settings.burn_in} burn-in, "
          f"lr {settings.lr:g}, gamma {settings.gamma:g}, nbeta {settings.effective_nbeta:.4g}, "
          f"minibatches of {settings.batch_size} from {len(next(iter(rows.values())))} rows")
    print(f"{'step':>7s} {'llc':>9s} {'std':>8s} {'loss':>8s}  trustworthy")
    for step, llc, std, loss, trusted in zip(table.steps, table["llc"], table["llc_std"], table["init_loss"],
                                             table["trustworthy"], strict=True):
        print(f"{int(step):7d} {llc:9.3f} {std:8.3f} {loss:8.4f}  {'yes' if trusted else 'NO'}")
    untrusted = int((table["trustworthy"] == 0).sum())
    if untrusted:
        print(f"{untrusted} of {len(table.steps)} estimates are not trustworthy (a chain diverged, the loss trace "
              "drifts after burn-in, or chains disagree): try a smaller --lr, a larger --gamma or more --burn-in")
    _print_stages(source, table, rows, device)
    if args.csv:
        table.to_csv(args.csv)
        print(f"wrote {args.csv}")


DYNAMICS_ROWS = 32
"""Rows of the LLC's data whose outputs trace the essential-dynamics trajectory."""


def _print_stages(source: Run | CheckpointSuite, table: ProbeTable, rows: Batch, device: str | None) -> None:
    """The LLC curve's stages and each boundary's nearest other change point, where the curve
    has enough finite estimates to segment."""
    from interp.metrics.essential_dynamics import essential_dynamics
    from interp.metrics.stages import change_points, llc_stages

    finite = np.isfinite(table["llc"]) & np.isfinite(table["llc_std"])
    if finite.sum() < 3:
        print("stages: fewer than 3 finite LLC estimates; none segmented")
        return
    steps = table.steps[finite]
    stages = llc_stages(steps, table["llc"][finite], table["llc_std"][finite])
    loss = [(m["step"], m["train/loss"]) for m in source.metrics() if "train/loss" in m]
    dynamics = essential_dynamics(source, {k: t[:DYNAMICS_ROWS] for k, t in rows.items()}, steps=steps.tolist(),
                                  device=device) if len(steps) >= 5 else None
    found = change_points(stages, checkpoint_steps=steps.tolist(),
                          loss=tuple(zip(*loss, strict=True)) if len(loss) >= 2 else None, dynamics=dynamics)
    print(f"stages (LLC noise band {stages.noise:.3g}): "
          + ", ".join(f"{s.kind} {s.start}-{s.end}" for s in stages.stages))
    for match in found.matches:
        nearest = "no other change point" if match.nearest is None else \
            f"nearest: {match.nearest.source} at {match.nearest.step} ({match.distance:.1f} checkpoints away; " \
            f"{match.nearest.detail})"
        print(f"  boundary at {match.boundary.step}: {match.boundary.kind}; {nearest}")
    others = [row for row in found.rows if row.source != "llc stage"]
    if others:
        print("other change points: " + "; ".join(f"{row.source} at {row.step}" for row in others))
