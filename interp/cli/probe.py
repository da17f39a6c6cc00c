"""`interp probe`: a built-in head score or a linear probe at every checkpoint of a run."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from interp import seeding
from interp.batches import repeated_tokens
from interp.checkpoints import Run
from interp.cli.checks import check_device, check_period, plan_chunks
from interp.cli.parser import BUILTIN_PROBES, LINEAR_PROBE
from interp.cli.runs import model_config, one_run
from interp.configs import ConfigError
from interp.metrics import heads
from interp.probing import probe


def cmd_probe(args: argparse.Namespace) -> None:
    run = one_run(Path(args.dir), args.cache)
    if args.metric == LINEAR_PROBE:
        return _probe_linear(run, args)
    model_cfg = model_config(run)
    layers = args.layers if args.layers is not None else list(range(model_cfg.n_layers))
    bad = [layer for layer in layers if not 0 <= layer < model_cfg.n_layers]
    if bad:
        raise ConfigError("--layers", f"layers in [0, {model_cfg.n_layers - 1}]", bad)
    period = check_period(args.period, model_cfg)
    device = check_device(args.device)
    if args.metric == "prev-token":
        probe_obj = heads.previous_token_probe(layers)
    else:
        probe_obj = heads.induction_probe(layers, period)
    key = BUILTIN_PROBES[args.metric]
    plan_chunks(model_cfg, {key: probe_obj}, args.sequences, 2 * period, device)
    tokens = repeated_tokens(args.sequences, period, model_cfg.d_vocab,
                             seeding.generator(args.seed, seeding.CLI_BATCHES))
    table = probe(run, {key: probe_obj}, {"tokens": tokens}, steps=args.steps, device=device,
                  progress=True).select(key)
    print("step  " + " ".join(f"{c:>7s}" for c in table.columns))
    for step, row in zip(table.steps, table.values, strict=True):
        print(f"{int(step):<5d} " + " ".join(f"{v:7.3f}" for v in row))
    if args.csv:
        table.to_csv(args.csv)
        print(f"wrote {args.csv}")


def _probe_linear(run: Run, args: argparse.Namespace) -> None:
    """A linear probe per `--hook` on the batch file `--batch` (written by
    `interp.metrics.linear_probes.save_batch`: tokens plus the keys named by --positions,
    --labels, ...), at every checkpoint; step 0, the random-init baseline, is always included."""
    from interp.metrics import linear_probes, probe_fitting  # scikit-learn: imported only when asked for

    for flag, value in (("--batch", args.batch), ("--hook", args.hook), ("--positions", args.positions),
                        ("--labels", args.labels)):
        if not value:
            raise ConfigError(flag, f"a value for `interp probe DIR {LINEAR_PROBE}`", value)
    shape = model_config(run)
    batch = linear_probes.load_batch(args.batch, d_vocab=shape.d_vocab, n_ctx=shape.n_ctx)
    steps = None if args.steps is None else sorted({*args.steps, *([0] if 0 in run.steps else [])})
    probes = {re.sub(r"[^A-Za-z0-9_.+=-]", "_", f"linear-{args.labels}-{hook}"): linear_probes.linear_probe(
        linear_probes.LinearProbeSettings(hook, args.positions, args.labels, args.groups, kind=args.kind,
                                          split=args.split, control_types=args.control_types,
                                          fit=probe_fitting.FitSettings(seed=args.seed))) for hook in args.hook}
    device = check_device(args.device)
    table = probe(run, probes, batch, steps=steps, device=device, progress=True)
    for (key, probe_obj), hook in zip(probes.items(), args.hook, strict=True):
        sub = table.select(key)
        score = "r2" if "r2" in sub.columns else "accuracy"
        drift = linear_probes.load_directions(run, key, probe_obj, batch, steps=table.steps.tolist(),
                                              device=device).drift(
            period=args.cycle or None)
        print(f"{hook}: {args.labels} at {args.positions} (groups: {args.groups or 'batch row'})")
        print(f"step   {score:>8s}  control  selectivity  cos_prev  cos_final")
        for i, step in enumerate(table.steps):
            previous = drift.consecutive[i - 1] if i else float("nan")
            print(f"{int(step):<6d} {sub[score][i]:8.3f} {sub[f'control_{score}'][i]:8.3f} "
                  f"{sub['selectivity'][i]:12.3f} {previous:9.3f} {drift.to_final[i]:10.3f}"
                  + ("  (init: baseline)" if step == 0 else ""))
        if args.cycle:
            lags = ", ".join(f"{s:.3f} vs {o:.3f}" for s, o in zip(drift.same_phase, drift.other_phase, strict=True))
            print(f"same-phase vs other-phase cosine, 1, 2, ... cycles of {args.cycle} steps apart: {lags}")
    if args.csv:
        table.to_csv(args.csv)
        print(f"wrote {args.csv}")
