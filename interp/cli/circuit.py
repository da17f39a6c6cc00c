"""`interp circuit`: a circuit method traced over a run's checkpoints, its graphs saved in the run."""

from __future__ import annotations

import argparse
from pathlib import Path

from interp import seeding
from interp.cli.checks import check_device, check_period, plan_chunks
from interp.cli.runs import model_config, one_run
from interp.probing import probe


def cmd_circuit(args: argparse.Namespace) -> None:
    """A circuit method at every checkpoint (cached), on repeated random tokens whose source
    run resamples the first copy (the induction circuit's test); graphs saved in the run as a
    graph set of this probe and batch, beside (never over) the key's other sets."""
    from interp.batches import repeated_patch_batch
    from interp.circuits import graph as circuit_graph
    from interp.circuits.common import mean_logprob
    from interp.circuits.readout import dla_probe, logit_lens_probe
    from interp.circuits.trace import graph_probe, trace

    run = one_run(Path(args.dir), args.cache)
    model_cfg = model_config(run)
    period = check_period(args.period, model_cfg)
    device = check_device(args.device)
    metric = mean_logprob("in_repeat")
    if args.method in ("dla", "logit-lens"):
        made = dla_probe("in_repeat") if args.method == "dla" else logit_lens_probe("in_repeat")
    else:
        made = graph_probe(args.method, None if args.method == "composition" else metric, args.ig_steps)
    # Before the batch is built: the method's own passes beyond one forward (`Probe.memory`) count.
    plan_chunks(model_cfg, {args.method: made}, args.sequences, 2 * period, device)
    batch = repeated_patch_batch(args.sequences, period, model_cfg.d_vocab,
                                 seeding.generator(args.seed, seeding.CLI_BATCHES))
    if args.method in ("dla", "logit-lens"):
        key = args.method.replace("-", "_")
        table = probe(run, {key: made}, batch, steps=args.steps, device=device, progress=True).select(key)
        shown = [c for c in table.columns if args.method == "dla" or c.endswith("/top1")]
        print(f"{'dla: direct logit of the repeated token' if args.method == 'dla' else 'logit lens: top-1 rate'} "
              "per checkpoint")
        print("step    " + " ".join(f"{c:>14s}" for c in shown))
        for step, row in zip(table.steps, table.values, strict=True):
            values = dict(zip(table.columns, row, strict=True))
            print(f"{int(step):<7d} " + " ".join(f"{values[c]:14.3f}" for c in shown))
        return
    traced = trace(run, args.method, None if args.method == "composition" else batch, metric, steps=args.steps,
                   device=device, progress=True, ig_steps=args.ig_steps,
                   key="eap-ig" if args.method == "eap" and args.ig_steps > 1 else None,
                   make_default=args.make_default)
    print(f"{args.method}: {traced.graphs[0].metric}")
    for graph in traced.graphs:
        top = ", ".join(f"{edge} {weight:+.3f}" for edge, weight in graph.strongest(3))
        print(f"  step {graph.step:<7d} {top}")
    if len(traced.graphs) > 1:
        print("\n".join(circuit_graph.CircuitDiff.between(traced.graphs[0], traced.graphs[-1]).summary()))
    saved = traced.saved.graph_set
    kind = "a new graph set" if traced.saved.created else "the existing graph set of this probe and batch"
    role = "the key's default" if saved.default else "not the key's default"
    print(f"wrote {len(traced.graphs)} graphs to {saved.folder} ({kind} {saved.set_id}, {role})")
    if not saved.default:
        default = circuit_graph.read_graph_set(traced.saved.cache_dir, saved.key)
        print(f"the default graph set of {saved.key!r} (what `interp view` and load_graphs read) stays "
              f"{default.summary()}")
