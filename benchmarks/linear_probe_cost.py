"""Linear probes over training: cost of 32 checkpoints x 3 hooks x 2,000 examples.

Setup (not timed): train a tiny-ish model (2 layers, d_model 64, 4 heads, vocabulary 64,
context 32) on repeated segments (`tasks.induction`, segments of 4-8 tokens, skip-bigram
filler) for 310 steps with a checkpoint every 10 (32 checkpoints, step 0 included), and make
one probe batch of 125 such sequences, positions 16..31 of each probed (2,000 examples). Two
label sets:

- `seen`: whether the token at the position occurred earlier in its sequence (binary; a
  property of the context, not of the token);
- `prev8`: the previous token mod 8 (8 classes: a multi-class logistic regression).

(In 310 steps no induction head forms, so `seen` stays at chance: it measures fits with
nothing to decode, while `prev8` becomes decodable, 0.95, and measures fits with a signal.)

Groups: the sequence (the batch row, the default). Hooks: `blocks.0.hook_resid_post`,
`blocks.1.hook_resid_mid`, `blocks.1.hook_resid_post`. Every linear probe runs with its
defaults: standardised inputs, grouped 3-fold cross-validation of 5 penalties on the
training split, the control task, and its direction saved per checkpoint.

Variants, interleaved over rounds (medians reported):

- `linear`: `probe(run, {3 linear probes + loss_probe}, batch, use_cache=False)`: one
  forward per checkpoint shared by all four probes (counted), every fit, every cache and
  direction write. The time inside `fit_probe` is measured separately (`fits`), the rest
  (checkpoint loading, the forward, example extraction, bookkeeping) is `forward+rest`.
- `forward-only`: the same call with three probes that read the same hooks and return a
  number without fitting: the cost of loading and running the model alone.

Wall time on a shared machine depends on its load: the script prints the 1-minute load
average before each measurement and the process CPU time (`cpu s`, all threads) beside the
wall time.

Target: `linear` <= 30 s on 2 cores (the issue's budget).

    python benchmarks/linear_probe_cost.py            # ~2 min -> results/linear_probe_cost.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, median, spread, table, write_result  # noqa: E402

import interp.metrics.linear_probes as linear_probes  # noqa: E402
from interp import seeding  # noqa: E402
from interp.devices import resolve_device  # noqa: E402
from interp.hooks import hook_name  # noqa: E402
from interp.metrics.outputs import loss_probe  # noqa: E402
from interp.model import ModelConfig  # noqa: E402
from interp.probing import Probe, probe  # noqa: E402
from interp.train import TrainConfig, train  # noqa: E402
from tasks.induction import RepeatedSegments, RepeatedSegmentsConfig  # noqa: E402

TARGET_S = 30.0
HOOKS = (hook_name("resid_post", 0), hook_name("resid_mid", 1), hook_name("resid_post", 1))
MODEL = ModelConfig(n_layers=2, d_model=64, n_heads=4, d_vocab=64, n_ctx=32, seed=0)
TRAIN = TrainConfig(steps=310, batch_size=16, optimizer="adam", lr=3e-3, checkpoint_log=0, checkpoint_every=10,
                    log_every=50)
SEQUENCES, FIRST_PROBED = 125, 16


DATA = RepeatedSegments(RepeatedSegmentsConfig(d_vocab=MODEL.d_vocab, seq_len=MODEL.n_ctx, min_segment=4,
                                               max_segment=8, skip_bigram=0.3))


def make_batch() -> dict[str, torch.Tensor]:
    tokens = DATA.sample(SEQUENCES, seeding.generator(0, 1))["tokens"]
    probed = torch.zeros_like(tokens, dtype=torch.bool)
    probed[:, FIRST_PROBED:] = True
    earlier = torch.tril(torch.ones(MODEL.n_ctx, MODEL.n_ctx, dtype=torch.bool), diagonal=-1)
    seen = ((tokens[:, :, None] == tokens[:, None, :]) & earlier).any(-1).long()
    prev8 = torch.roll(tokens, 1, dims=1) % 8
    return {"tokens": tokens, "probed": probed, "seen": seen, "prev8": prev8}


def null_probe(hook: str) -> Probe:
    return Probe(f"null({hook})", (hook,), lambda ctx: {"mean": float(ctx.acts[hook].float().mean())})


def measure(run_dir: Path, variant: str, labels: str, batch: dict, device: torch.device) -> dict:
    fit_seconds, forwards = [0.0], [0]
    # fit_probe (interp.metrics.probe_fitting) is timed where linear_probe looks it up
    fit, run_with_cache = linear_probes.fit_probe, TransformerBridge.run_with_cache

    def timed_fit(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fit(*args, **kwargs)
        finally:
            fit_seconds[0] += time.perf_counter() - start

    def counted(model_self, *args, **kwargs):
        forwards[0] += 1
        return run_with_cache(model_self, *args, **kwargs)

    if variant == "linear":
        probes = {f"{labels}{i}": linear_probes.linear_probe(linear_probes.LinearProbeSettings(hook, "probed", labels))
                  for i, hook in enumerate(HOOKS)}
    else:
        probes = {f"null{i}": null_probe(hook) for i, hook in enumerate(HOOKS)}
    probes["loss"] = loss_probe()
    linear_probes.fit_probe, TransformerBridge.run_with_cache = timed_fit, counted
    try:
        start, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
        result = probe(run_dir, probes, batch, use_cache=False, device=device)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        linear_probes.fit_probe, TransformerBridge.run_with_cache = fit, run_with_cache
    out = {"variant": variant, "labels": labels, "wall_s": wall, "cpu_s": cpu, "fit_s": fit_seconds[0],
           "forwards": forwards[0], "checkpoints": len(result.steps), "load_before": load}
    if variant == "linear":
        out["accuracy_final"] = {hook: float(result[f"{labels}{i}/accuracy"][-1]) for i, hook in enumerate(HOOKS)}
        out["accuracy_step0"] = {hook: float(result[f"{labels}{i}/accuracy"][0]) for i, hook in enumerate(HOOKS)}
        out["selectivity_final"] = {hook: float(result[f"{labels}{i}/selectivity"][-1]) for i, hook in enumerate(HOOKS)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1, as the other benchmarks: on a busy 2-core machine a second "
                             "thread measures the scheduler; the fits are single-threaded anyway; 0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--labels", nargs="+", default=["seen", "prev8"], choices=["seen", "prev8"])
    parser.add_argument("--out", default=None, help="result file (default: results/linear_probe_cost.json)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if a `linear` median exceeds {TARGET_S} s")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    scratch = Path(tempfile.mkdtemp(prefix="linear_probe_cost_"))
    try:
        run_dir = scratch / "run"
        train(run_dir, MODEL, TRAIN, DATA, device=device, progress=False)
        batch = make_batch()
        n_examples = int(batch["probed"].sum())
        samples: list[dict] = []
        variants = [(v, labels) for labels in args.labels for v in ("linear", "forward-only")]
        measure(run_dir, "forward-only", args.labels[0], batch, device)  # warm-up: imports, allocator
        for r in range(args.rounds):
            shift = r % len(variants)
            for variant, labels in variants[shift:] + variants[:shift]:
                samples.append({"round": r, **measure(run_dir, variant, labels, batch, device)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    rows, summary = [], {}
    baseline = [s for s in samples if s["variant"] == "forward-only"]
    forward_only = median([s["wall_s"] for s in baseline])
    for labels in args.labels:
        mine = [s for s in samples if s["variant"] == "linear" and s["labels"] == labels]
        wall, fits, cpu = (median([s[k] for s in mine]) for k in ("wall_s", "fit_s", "cpu_s"))
        summary[labels] = {"wall_s": wall, "cpu_s": cpu, "fit_s": fits, "forward_rest_s": wall - fits,
                           "fit_share": fits / wall, "forward_only_s": forward_only,
                           "forwards_per_call": mine[0]["forwards"], "checkpoints": mine[0]["checkpoints"],
                           "accuracy_step0": mine[0]["accuracy_step0"], "accuracy_final": mine[0]["accuracy_final"],
                           "selectivity_final": mine[0]["selectivity_final"]}
        rows.append([f"linear ({labels})", f"{wall:.2f}", spread([s["wall_s"] for s in mine]), f"{cpu:.2f}",
                     f"{fits:.2f}", f"{fits / wall:.0%}", f"{wall - fits:.2f}", mine[0]["forwards"]])
    rows.append(["forward-only", f"{forward_only:.2f}", spread([s["wall_s"] for s in baseline]),
                 f"{median([s['cpu_s'] for s in baseline]):.2f}", "-", "-", f"{forward_only:.2f}",
                 baseline[0]["forwards"]])
    loads = [s["load_before"] for s in samples]
    print(f"{summary[args.labels[0]]['checkpoints']} checkpoints x {len(HOOKS)} hooks x {n_examples} examples "
          f"(+ loss_probe in the same call), {args.rounds} rounds, torch threads {torch.get_num_threads()}, "
          f"1-min load average {min(loads):.1f}..{max(loads):.1f} on {os.cpu_count()} cores")
    print(table(["variant", "median s", "range", "cpu s", "fits s", "fit share", "forward+rest s", "forwards"],
                rows))
    for labels, s in summary.items():
        print(f"{labels}: accuracy step 0 -> final: " + ", ".join(
            f"{hook} {s['accuracy_step0'][hook]:.3f} -> {s['accuracy_final'][hook]:.3f}" for hook in HOOKS))
    ok = all(s["wall_s"] <= TARGET_S for s in summary.values())
    print(f"target: linear <= {TARGET_S:.0f} s: {'met' if ok else 'MISSED'}")
    path = write_result("linear_probe_cost", {
        "setup": {"model": asdict(MODEL), "train_steps": TRAIN.steps,
                  "checkpoint_every": TRAIN.checkpoint_every, "hooks": HOOKS, "examples": n_examples,
                  "rounds": args.rounds},
        "environment": environment(device), "samples": samples, "summary": summary, "target_s": TARGET_S,
        "met": ok}, args.out)
    print(f"wrote {path}")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
