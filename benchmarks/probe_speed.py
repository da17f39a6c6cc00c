"""Probing speed and memory: the probe runner vs a naive per-probe loop.

Setup: train one tiny run (quick-preset shape) that keeps a checkpoint at every
step, 50 checkpoints by default, and make one probe batch of `repeated_tokens`
(32 sequences of length 64, period 32). Three probes are computed at every
checkpoint: `previous_token_probe([0])`, `induction_probe([1], period)` and
`loss_probe()`.

Variants (each computes the same numbers; the script checks they agree):

- runner: `interp.probing.probe(run, probes, batch, use_cache=False)`: one
  `run.load` and one forward per checkpoint, caching only the hooks the probes
  read (`run_with_cache(names_filter=...)`), plus its own bookkeeping (it appends
  every result to `probes/*.jsonl`, fsync'd). Counted, not subtracted.
- naive: for each checkpoint, for each probe: `run.load(step)`, then a full
  `model.run_with_cache(tokens)` (no `names_filter`) and the metric from the
  cache, as a user without the runner would write it.
- naive-shared-load: the naive loop with one `run.load` per checkpoint, still a
  full cache per probe, to split the gain into loading and caching.

All forwards run under `torch.no_grad()` and every variant loads checkpoints with
`run.load` (hash-verified), so only the structure of the loop differs.

Each measurement runs in a fresh process (forked by a multiprocessing forkserver
that has done the imports once), which does a light warm-up (load step 0, one
forward without cache), times the variant and reports
`resource.getrusage(RUSAGE_SELF).ru_maxrss` at the end (peak resident memory of
the process; tracemalloc does not see torch's allocations). Variants
are interleaved across rounds (order rotated); medians are reported. The bytes
of activations cached per forward (sum of `nbytes` over the cache) are measured
once in the parent. Target: runner >= 2x faster than naive.

    python benchmarks/probe_speed.py
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, median, spread, table, write_result  # noqa: E402

from interp.batches import repeated_tokens  # noqa: E402
from interp.checkpoints import Run  # noqa: E402
from interp.devices import resolve_device  # noqa: E402
from interp.hooks import hook_name  # noqa: E402
from interp.metrics.heads import (  # noqa: E402
    induction_probe,
    induction_score,
    per_head,
    previous_token_probe,
    previous_token_score,
)
from interp.metrics.outputs import loss_probe  # noqa: E402
from interp.model import ModelConfig, scored_positions, token_losses  # noqa: E402
from interp.probing import probe  # noqa: E402
from interp.train import TrainConfig, train  # noqa: E402
from tasks.induction import RepeatedSegments, RepeatedSegmentsConfig  # noqa: E402

TARGET = 2.0
VARIANTS = ("runner", "naive", "naive-shared-load")
QUICK = ModelConfig(n_layers=2, d_model=64, n_heads=4, d_vocab=64, n_ctx=64, attn_only=True)


def make_probes(period: int) -> dict:
    return {
        "prev": previous_token_probe([0]),
        "ind": induction_probe([1], period),
        "loss": loss_probe(),
    }


def make_batch(args, d_vocab: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(args.seed)
    repeats = args.seq_len // args.period
    return {"tokens": repeated_tokens(args.batch_size, args.period, d_vocab, generator, repeats=repeats)}


# --- the naive baseline --------------------------------------------------------------


def naive_metric(key: str, model, batch, period: int) -> dict[str, float]:
    """One probe the naive way: a full cache of every hook, then the metric."""
    logits, cache = model.run_with_cache(batch["tokens"])
    if key == "prev":
        out = per_head(previous_token_score(cache[hook_name("pattern", 0)]), 0)
    elif key == "ind":
        out = per_head(induction_score(cache[hook_name("pattern", 1)], period), 1)
    elif key == "loss":
        out = {"loss": float(token_losses(logits, batch)[scored_positions(batch)].mean())}
    else:
        raise ValueError(key)
    return {f"{key}/{name}": v for name, v in out.items()}


def naive(run: Run, keys, batch, period: int, device, shared_load: bool) -> dict[int, dict[str, float]]:
    results: dict[int, dict[str, float]] = {}
    with torch.no_grad():
        for step in run.steps:
            row: dict[str, float] = {}
            shared = run.load(step, device=device) if shared_load else None
            for key in keys:
                model = shared if shared_load else run.load(step, device=device)
                row.update(naive_metric(key, model, batch, period))
            results[step] = row
    return results


# --- one measurement (in a fresh process) -----------------------------------------------


def vm_hwm_kib() -> int | None:
    """Peak RSS of this process image from /proc (Linux), to cross-check ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def measure_variant(args) -> None:
    """Time one variant in this (fresh) process and write wall time, peak RSS and values."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    run = Run.open(args.run_dir)
    batch = {k: v.to(device) for k, v in make_batch(args, run.model_config.d_vocab).items()}
    probes = make_probes(args.period)
    with torch.no_grad():  # warm-up shared by every variant: one load, one forward without cache
        run.load(run.steps[0], device=device)(batch["tokens"])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    start = time.perf_counter()
    if args.variant == "runner":
        result = probe(run, probes, batch, use_cache=False, device=device)
        values = {
            int(s): dict(zip(result.columns, map(float, row), strict=True))
            for s, row in zip(result.steps, result.values, strict=True)
        }
    else:
        values = naive(run, list(probes), batch, args.period, device, shared_load=args.variant == "naive-shared-load")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start

    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    out = {
        "variant": args.variant,
        "wall_s": wall,
        "maxrss_kib": rss_after,
        "maxrss_before_kib": rss_before,
        "vmhwm_kib": vm_hwm_kib(),
        "values": values,
    }
    if device.type == "cuda":
        out["cuda_max_allocated"] = torch.cuda.max_memory_allocated(device)
    Path(args.result_file).write_text(json.dumps(out))


# Every measurement runs in a fresh process forked by a multiprocessing forkserver
# that has imported torch and the project once (the imports take seconds). A
# forked child gets its own rusage, so its `ru_maxrss` is its own peak, starting
# from the server's footprint (the imports). A child started with subprocess or
# the "spawn" method would not do: `ru_maxrss` survives exec and is inherited from
# the process that forked it, so it would report this (larger) parent's peak.
PRELOAD = [
    "torch",
    "interp.checkpoints",
    "interp.probing",
    "interp.metrics.heads",
    "interp.train",
    "tasks.induction",
    "_common",
]


def spawn(ctx, variant: str, args, run_dir: Path, scratch: Path, tag: str) -> dict:
    child_args = argparse.Namespace(
        **{**vars(args), "variant": variant, "run_dir": str(run_dir), "result_file": str(scratch / f"{tag}.json")}
    )
    process = ctx.Process(target=measure_variant, args=(child_args,))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"variant {variant} failed (exit code {process.exitcode})")
    return json.loads(Path(child_args.result_file).read_text())


# --- parent: setup, rounds, report --------------------------------------------------------


def ensure_run(run_dir: Path, n_checkpoints: int, device) -> Run:
    if (run_dir / "config.json").exists():
        run = Run.open(run_dir)
        if len(run.steps) != n_checkpoints:
            raise SystemExit(f"{run_dir} has {len(run.steps)} checkpoints, not {n_checkpoints}; use another --run-dir")
        return run
    data = RepeatedSegments(RepeatedSegmentsConfig(d_vocab=QUICK.d_vocab, seq_len=QUICK.n_ctx))
    cfg = TrainConfig(steps=n_checkpoints - 1, batch_size=32, checkpoint_every=1, checkpoint_log=0)
    return train(run_dir, QUICK, cfg, data, device=device, progress=False)


def cache_bytes(run: Run, probes: dict, batch, device) -> dict[str, int]:
    """Bytes held by one forward's activation cache: filtered (runner) and full (naive)."""
    model = run.load(run.steps[-1], device=device)
    hooks = sorted({h for p in probes.values() for h in p.hooks})
    with torch.no_grad():
        logits, filtered = model.run_with_cache(batch["tokens"], names_filter=hooks)
        _, full = model.run_with_cache(batch["tokens"])
    return {
        "runner": sum(t.nbytes for t in filtered.values()),
        "runner_unique": unique_bytes(filtered.values()),
        "runner_tensors": len(filtered),
        "full": sum(t.nbytes for t in full.values()),
        "full_unique": unique_bytes(full.values()),
        "full_tensors": len(full),
        "logits": logits.nbytes,
    }


def unique_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (many hooks cache the same tensor)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def max_abs_diff(a: dict, b: dict) -> float:
    worst = 0.0
    for step, row in a.items():
        other = b[step]
        if set(row) != set(other):
            raise AssertionError(f"step {step}: columns differ: {sorted(row)} vs {sorted(other)}")
        worst = max(worst, *(abs(row[c] - other[c]) for c in row))
    return worst


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=int, default=50, help="checkpoints in the run (steps = this - 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="probe batch: sequences")
    parser.add_argument("--seq-len", type=int, default=64, help="probe batch: length (a multiple of --period)")
    parser.add_argument("--period", type=int, default=32, help="repeat period of the probe batch")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in every process (default 1; 0 keeps torch's default); see train_throughput.py",
    )
    parser.add_argument("--run-dir", default=None, help="reuse/keep the probed run here (default: a temp dir)")
    parser.add_argument("--out", default=None, help="result JSON (default benchmarks/results/probe_speed.json)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the speedup is below the target")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:
        measure_variant(args)
        return None
    if args.seq_len % args.period or args.seq_len > QUICK.n_ctx or args.period < 2:
        parser.error(f"--seq-len must be a multiple of --period and <= n_ctx={QUICK.n_ctx}")

    device = resolve_device(args.device)
    scratch = Path(tempfile.mkdtemp(prefix="bench_probe_"))
    run_dir = Path(args.run_dir) if args.run_dir else scratch / "run"
    try:
        start = time.perf_counter()
        run = ensure_run(run_dir, args.checkpoints, device)
        setup_s = time.perf_counter() - start
        n_ckpt = len(run.steps)
        probes = make_probes(args.period)
        batch = make_batch(args, QUICK.d_vocab)
        nbytes = cache_bytes(run, probes, {k: v.to(device) for k, v in batch.items()}, device)

        print(
            f"probe_speed: {n_ckpt} checkpoints of the quick shape ({setup_s:.1f}s to train); 3 probes "
            f"(prev-token L0, induction L1, loss); probe batch {args.batch_size}x{args.seq_len} "
            f"(period {args.period})"
        )
        print(
            f"{args.rounds} rounds, variants interleaved, each in a fresh process; device {device}, "
            f"{args.threads or 'default'} torch threads"
        )

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        samples: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for r in range(args.rounds):
            order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
            parts = []
            for name in order:
                res = spawn(ctx, name, args, run_dir, scratch, f"{r}_{name}")
                samples[name].append(res)
                parts.append(f"{name} {res['wall_s']:.2f}s")
            print(f"  round {r + 1}: " + ", ".join(parts), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    reference = samples["runner"][0]["values"]
    agree = {v: max(max_abs_diff(reference, s["values"]) for s in samples[v]) for v in VARIANTS}
    if max(agree.values()) > 1e-4:
        raise AssertionError(f"variants disagree on the probe values: max abs diff {agree}")

    walls = {v: [s["wall_s"] for s in samples[v]] for v in VARIANTS}
    rss = {v: [s["maxrss_kib"] / 1024 for s in samples[v]] for v in VARIANTS}
    rss_delta = {v: [(s["maxrss_kib"] - s["maxrss_before_kib"]) / 1024 for s in samples[v]] for v in VARIANTS}
    wall = {v: median(walls[v]) for v in VARIANTS}
    loads = {"runner": n_ckpt, "naive": 3 * n_ckpt, "naive-shared-load": n_ckpt}
    forwards = {"runner": n_ckpt, "naive": 3 * n_ckpt, "naive-shared-load": 3 * n_ckpt}
    cached = {"runner": nbytes["runner"], "naive": nbytes["full"], "naive-shared-load": nbytes["full"]}
    unique = {
        "runner": nbytes["runner_unique"],
        "naive": nbytes["full_unique"],
        "naive-shared-load": nbytes["full_unique"],
    }
    hwm = {v: [s["vmhwm_kib"] / 1024 for s in samples[v] if s.get("vmhwm_kib")] for v in VARIANTS}
    tensors = {
        "runner": nbytes["runner_tensors"],
        "naive": nbytes["full_tensors"],
        "naive-shared-load": nbytes["full_tensors"],
    }
    mib = 1024 * 1024

    rows = [
        [
            v,
            f"{wall[v]:.2f}",
            spread(walls[v]),
            f"{wall['naive'] / wall[v]:.2f}x",
            loads[v],
            forwards[v],
            f"{1e3 * wall[v] / n_ckpt:.1f}",
            f"{median(rss[v]):.0f}",
            f"{median(rss_delta[v]):+.1f}",
            f"{cached[v] / mib:.2f} ({tensors[v]})",
            f"{unique[v] / mib:.2f}",
        ]
        for v in VARIANTS
    ]
    print()
    print(
        table(
            [
                "variant",
                "wall s",
                "range",
                "speedup",
                "loads",
                "forwards",
                "ms/ckpt",
                "peak RSS MiB",
                "RSS over warm-up",
                "cached MiB/fwd (tensors)",
                "distinct MiB/fwd",
            ],
            rows,
        )
    )
    speedup = wall["naive"] / wall["runner"]
    ok = speedup >= TARGET
    print()
    print(f"speedup runner vs naive = {speedup:.2f}x; target >= {TARGET:.0f}x: {'PASS' if ok else 'FAIL'}")
    print(f"  from sharing the load:   naive -> naive-shared-load  {wall['naive'] / wall['naive-shared-load']:.2f}x")
    gain = wall["naive-shared-load"] / wall["runner"]
    print(f"  from one filtered forward and one reused bridge: naive-shared-load -> runner {gain:.2f}x")
    print(
        f"activations cached per forward (sum of nbytes): runner {nbytes['runner'] / mib:.2f} MiB vs full cache "
        f"{nbytes['full'] / mib:.2f} MiB ({nbytes['full'] / nbytes['runner']:.1f}x); distinct storages "
        f"{nbytes['runner_unique'] / mib:.2f} vs {nbytes['full_unique'] / mib:.2f} MiB (hooks alias tensors); "
        f"logits {nbytes['logits'] / mib:.2f} MiB, not counted"
    )
    if all(hwm.values()):
        worst = max(abs(a - b) for v in VARIANTS for a, b in zip(rss[v], hwm[v], strict=True))
        print(
            f"peak RSS = ru_maxrss of the measuring process (VmHWM agrees within {worst:.1f} MiB); "
            f"RSS over warm-up = its growth past the peak reached by imports + one load and forward"
        )
    print(f"all variants agree on every probe value (max abs diff {max(agree.values()):.1e})")

    result = {
        "benchmark": "probe_speed",
        "model": {
            "n_layers": QUICK.n_layers,
            "d_model": QUICK.d_model,
            "n_heads": QUICK.n_heads,
            "d_vocab": QUICK.d_vocab,
            "n_ctx": QUICK.n_ctx,
            "attn_only": QUICK.attn_only,
        },
        "checkpoints": n_ckpt,
        "probes": {k: p.name for k, p in probes.items()},
        "probe_batch": {"batch_size": args.batch_size, "seq_len": args.seq_len, "period": args.period},
        "rounds": args.rounds,
        "environment": environment(device),
        "wall_s": {v: {"median": wall[v], "samples": walls[v]} for v in VARIANTS},
        "speedup_vs_naive": {v: wall["naive"] / wall[v] for v in VARIANTS},
        "loads": loads,
        "forwards": forwards,
        "peak_rss_mib": {v: {"median": median(rss[v]), "samples": rss[v]} for v in VARIANTS},
        "peak_rss_over_warmup_mib": {v: {"median": median(rss_delta[v]), "samples": rss_delta[v]} for v in VARIANTS},
        "cached_activation_bytes_per_forward": {**{v: cached[v] for v in VARIANTS}, "logits_bytes": nbytes["logits"]},
        "cached_tensors_per_forward": tensors,
        "cached_distinct_storage_bytes_per_forward": unique,
        "vmhwm_mib": {v: hwm[v] for v in VARIANTS},
        "max_abs_diff_vs_runner": agree,
        "target": {"speedup": TARGET, "met": ok},
    }
    path = write_result("probe_speed", result, args.out)
    print(f"wrote {path}")
    if args.check and not ok:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
