"""Memory estimates against measured peaks: `estimate_memory` (training) and
`estimate_forward` (a probe's forward pass), each plus the process's own baseline, against
the "Maximum resident set size" that `/usr/bin/time -v` reports for a fresh process doing
the work.

- baseline: a process that only imports python, torch, TransformerLens and the library
  (`interp.train`, `interp.probing`), which every process running the library pays before
  any estimate is checked.
- `train` shapes: `interp.train.train` for `--steps` steps on uniform random tokens into a
  temporary run directory (checkpoints at the first and last step), compared to
  `estimate_memory(cfg, batch_size).total` + baseline. Peaks grow over the first few steps
  (the allocator keeps freed memory) and level off by about the fifth.
- `probe` shapes: `interp.probing.probe` at one checkpoint of a run made beforehand (in
  another process) with the previous-token probe on every layer (their attention patterns
  cached) and the loss probe (a log-softmax of the logits), compared to
  `estimate_forward(cfg, batch, pos, hooks).total` + baseline.

Shapes: `tiny-vocab1e6` is the `induction-heads` tiny preset with a vocabulary of a
million (an adversarial review's case: 2 layers, d_model 16, attention only, context 16,
batch 8); `mid` is 4 layers, d_model 256, 8 heads, an MLP, vocabulary 4096, context 256
at batch 64; `mid-probe` probes that model's shape at context 128 with 256 sequences;
`small-path` and `small-eap` run path patching and edge attribution (`Probe.memory` counted)
on 128 repeated-token sequences of context 64 through 2 layers, d_model 128, vocabulary 4096.

Target (`--check`, exit 1 when missed): every estimate + baseline within 25% of the peak.

    python benchmarks/memory_estimate.py            # ~3 min -> results/memory_estimate.json
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, table, write_result  # noqa: E402

from interp.memory import estimate_forward, estimate_memory, format_bytes  # noqa: E402
from interp.model import ModelConfig  # noqa: E402

SHAPES = {
    "tiny-vocab1e6": ("train", dict(n_layers=2, d_model=16, n_heads=2, attn_only=True, d_vocab=10**6, n_ctx=16), 8),
    "mid": ("train", dict(n_layers=4, d_model=256, n_heads=8, d_vocab=4096, n_ctx=256), 64),
    "mid-probe": ("probe", dict(n_layers=4, d_model=256, n_heads=8, d_vocab=4096, n_ctx=128), 256),
    "small-path": ("path", dict(n_layers=2, d_model=128, n_heads=4, d_vocab=4096, n_ctx=64), 128),
    "small-eap": ("eap", dict(n_layers=2, d_model=128, n_heads=4, d_vocab=4096, n_ctx=64), 128),
}
CIRCUIT_KINDS = ("path", "eap")  # `probe()` with the method's probe on repeated tokens and their resample
BASELINE = "import torch, transformer_lens, interp.train, interp.probing"
TOLERANCE = 0.25


def peak_rss(argv: list[str]) -> int:
    """Bytes of the largest resident size of the process `argv`, by `/usr/bin/time -v`."""
    done = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed: {done.stderr[-2000:]}")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    if match is None:
        raise RuntimeError(f"no peak in /usr/bin/time's output: {done.stderr[-500:]}")
    return int(match.group(1)) * 1024


def random_tokens(cfg: ModelConfig):
    class RandomTokens:
        def batch(self, step: int, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
            return {"tokens": torch.randint(0, cfg.d_vocab, (batch_size, cfg.n_ctx), generator=generator)}

    return RandomTokens()


def probes_of(cfg: ModelConfig):
    from interp.metrics.heads import previous_token_probe
    from interp.metrics.outputs import loss_probe

    return {"prev": previous_token_probe(range(cfg.n_layers)), "loss": loss_probe()}


def worker(mode: str, shape: str, run_dir: str, steps: int, threads: int) -> None:
    """What is measured: runs in its own process."""
    from interp.probing import probe
    from interp.train import TrainConfig, train

    torch.set_num_threads(threads)
    _kind, kw, batch_size = SHAPES[shape]
    cfg = ModelConfig(**kw)
    if mode == "train":
        train(run_dir, cfg, TrainConfig(steps=steps, batch_size=batch_size, checkpoint_log=0, log_every=steps),
              random_tokens(cfg), device="cpu", progress=False)
    elif mode == "make-run":  # one step at batch 1: the run `probe` reads
        train(run_dir, cfg, TrainConfig(steps=1, batch_size=1, checkpoint_log=0), random_tokens(cfg), device="cpu",
              progress=False)
    elif mode in CIRCUIT_KINDS:
        probe(run_dir, {mode: circuit_probe(mode)}, circuit_batch(cfg, batch_size), steps=[1], device="cpu",
              use_cache=False)
    else:
        tokens = torch.randint(0, cfg.d_vocab, (batch_size, cfg.n_ctx), generator=torch.Generator().manual_seed(0))
        probe(run_dir, probes_of(cfg), {"tokens": tokens}, steps=[1], device="cpu", use_cache=False)


def circuit_probe(method: str):
    from interp.circuits.common import mean_logprob
    from interp.circuits.trace import graph_probe

    return graph_probe(method, mean_logprob("in_repeat"))


def circuit_batch(cfg: ModelConfig, batch_size: int) -> dict[str, torch.Tensor]:
    from interp.batches import repeated_patch_batch

    return repeated_patch_batch(batch_size, cfg.n_ctx // 2, cfg.d_vocab, torch.Generator().manual_seed(0))


def estimate(shape: str) -> int:
    kind, kw, batch_size = SHAPES[shape]
    cfg = ModelConfig(**kw)
    if kind == "train":
        return estimate_memory(cfg, batch_size).total
    if kind in CIRCUIT_KINDS:
        return estimate_forward(cfg, batch_size, cfg.n_ctx, own=circuit_probe(kind).memory(cfg, batch_size,
                                                                                            cfg.n_ctx)).total
    hooks = {h for p in probes_of(cfg).values() for h in p.hooks}
    return estimate_forward(cfg, batch_size, cfg.n_ctx, hooks).total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="training steps per shape (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    parser.add_argument("--out", help="result file (default results/memory_estimate.json)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 unless every ratio is within {TOLERANCE:.0%}")
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "SHAPE", "RUN_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, steps=args.steps, threads=args.threads)
        return 0

    me = [sys.executable, __file__, "--steps", str(args.steps), "--threads", str(args.threads), "--worker"]
    baseline = peak_rss([sys.executable, "-c", BASELINE])
    print(f"baseline (python, torch, TransformerLens, interp imported): {format_bytes(baseline)}")
    rows, results = [], {}
    for shape in args.shapes:
        kind = SHAPES[shape][0]
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = str(Path(tmp) / "run")
            if kind != "train":
                subprocess.run([*me, "make-run", shape, run_dir], check=True)
            measured = peak_rss([*me, kind, shape, run_dir])
        estimated = estimate(shape)
        predicted = estimated + baseline
        ratio = predicted / measured
        results[shape] = {"kind": kind, "model": SHAPES[shape][1], "batch_size": SHAPES[shape][2],
                          "estimate": estimated, "baseline": baseline, "predicted": predicted,
                          "measured_peak": measured, "ratio": ratio}
        rows.append([shape, kind, format_bytes(estimated), format_bytes(predicted), format_bytes(measured),
                     f"{ratio:.2f}"])
        print(table(["shape", "kind", "estimate", "+ baseline", "measured peak", "ratio"], rows[-1:]), flush=True)
    print()
    print(table(["shape", "kind", "estimate", "+ baseline", "measured peak", "ratio"], rows))
    missed = [s for s, r in results.items() if abs(r["ratio"] - 1) > TOLERANCE]
    print(f"target: (estimate + baseline) / measured peak within 1 +- {TOLERANCE}: "
          f"{'missed by ' + ', '.join(missed) if missed else 'met'}")
    out = write_result("memory_estimate", {"environment": environment(torch.device("cpu")), "steps": args.steps,
                                           "threads": args.threads, "results": results}, args.out)
    print(f"wrote {out}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
