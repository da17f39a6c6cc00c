"""Training throughput: the project's trainer vs a plain PyTorch transformer.

Three variants train the same shape, batch size, optimizer and data for the same
number of steps; each is timed end to end, from nothing to a trained model:

- trainer: `interp.train.train(...)` with the induction data source, including
  building the TransformerBridge, the step-0 and final checkpoints (fsync'd,
  hashed), the metrics log and everything else it does (`checkpoint_log=0`,
  `checkpoint_every=0`, `progress=False`). Nothing is subtracted.
- plain: a nanoGPT-style model written below (token + position `nn.Embedding`;
  per layer LayerNorm -> fused qkv `nn.Linear` -> `scaled_dot_product_attention`
  (causal) -> out `nn.Linear` + residual; final LayerNorm; unembed `nn.Linear`),
  trained in a bare loop that draws its batches from the same
  `RepeatedSegments.batch`, so both pay the same data-generation cost.
- bridge: the TransformerBridge built by the project, trained in the same bare
  loop through `model(tokens)` (every hook point on the path). This shows what
  the trainer would cost without `interp.model.fused_forward`.

Variants are interleaved (the order rotates each round) after one unmeasured
warm-up round, and the median over rounds is reported. Target: trainer/plain >= 0.9.

    python benchmarks/train_throughput.py            # quick preset shape
    python benchmarks/train_throughput.py --large    # d_model=128, n_ctx=128
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, median, spread, sync, table, write_result  # noqa: E402

from interp.devices import resolve_device  # noqa: E402
from interp.model import ModelConfig, build_model, trainable_parameters  # noqa: E402
from interp.seeding import BATCHES, generator  # noqa: E402
from interp.train import TrainConfig, train  # noqa: E402
from tasks.induction import RepeatedSegments, RepeatedSegmentsConfig  # noqa: E402

TARGET = 0.9
VARIANTS = ("trainer", "plain", "bridge")


# --- the plain model -----------------------------------------------------------------


class PlainBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_head: int, d_mlp: int, attn_only: bool):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * n_heads * d_head)
        self.out = nn.Linear(n_heads * d_head, d_model)
        self.mlp = None
        if not attn_only:
            self.ln2 = nn.LayerNorm(d_model)
            self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.GELU(), nn.Linear(d_mlp, d_model))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, _ = h.shape
        qkv = self.qkv(self.ln1(h)).view(b, t, 3, self.n_heads, self.d_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.out(z.transpose(1, 2).reshape(b, t, -1))
        if self.mlp is not None:
            h = h + self.mlp(self.ln2(h))
        return h


class PlainTransformer(nn.Module):
    """nanoGPT-style transformer of a `ModelConfig`'s shape (standard positions, LayerNorm).

    The unembedding has no bias, like the bridge's (whose unembed bias is a
    fixed zero buffer), so both have the same number of trainable parameters.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.positional != "standard" or cfg.normalization != "LN":
            raise ValueError("the plain model implements standard positions and LayerNorm only")
        self.tok = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.n_ctx, cfg.d_model)
        d_mlp = cfg.d_mlp or 4 * cfg.d_model
        self.blocks = nn.ModuleList(
            PlainBlock(cfg.d_model, cfg.n_heads, cfg.head_dim, d_mlp, cfg.attn_only) for _ in range(cfg.n_layers)
        )
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok(tokens) + self.pos.weight[: tokens.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.unembed(self.ln_f(h))


# --- the measured variants -----------------------------------------------------------


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def bare_loop(model: nn.Module, params, forward, data, steps: int, batch_size: int, device,
              precision: str = "fp32") -> float:
    """A minimal training loop; returns the last loss. `precision="bf16"` runs the forward
    pass and loss under bfloat16 autocast, as the trainer's `precision="bf16"` does."""
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    loss_value = float("nan")
    for step in range(steps):
        tokens = data.batch(step, batch_size, generator)["tokens"].to(device)
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            loss = next_token_loss(forward(tokens), tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = loss.item()
    return loss_value


def run_variant(name: str, steps: int, batch_size: int, cfg: ModelConfig, data, device, scratch: Path, tag: str,
                precision: str = "fp32"):
    """(wall seconds, process CPU seconds, final training loss) of one end-to-end run of `steps`
    steps (`trainer-1-step`: one step) in `precision` ("fp32" or "bf16" autocast)."""
    gc.collect()
    sync(device)
    cpu_start = time.process_time()
    if name in ("trainer", "trainer-1-step"):
        run_dir = scratch / f"run_{tag}"
        train_cfg = TrainConfig(
            steps=steps if name == "trainer" else 1,
            batch_size=batch_size,
            optimizer="adamw",
            lr=1e-3,
            checkpoint_log=0,
            checkpoint_every=0,
            precision=precision,
        )
        start = time.perf_counter()
        run = train(run_dir, cfg, train_cfg, data, device=device, progress=False)
        sync(device)
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        loss = [r for r in run.metrics() if "train/loss" in r][-1]["train/loss"]
        shutil.rmtree(run_dir)
        return wall, cpu, loss
    start = time.perf_counter()
    if name == "plain":
        torch.manual_seed(cfg.seed)
        model = PlainTransformer(cfg).to(device)
        params = list(model.parameters())
        forward = model
    elif name == "bridge":
        model = build_model(cfg, device=device)
        params = trainable_parameters(model)
        forward = model  # TransformerBridge.__call__: the hooked forward
    else:
        raise ValueError(name)
    loss = bare_loop(model, params, forward, data, steps, batch_size, device, precision)
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu_start, loss


def data_time(data, steps: int, batch_size: int) -> float:
    """Seconds the trainer spends drawing its batches (with its per-step generators)."""
    start = time.perf_counter()
    for step in range(steps):
        data.batch(step, batch_size, generator(0, BATCHES, step))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", action="store_true", help="d_model=128, n_ctx=128 (default steps 32)")
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=None, help="default 64 (128 with --large)")
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--d-vocab", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=None, help="default 64 (128 with --large)")
    parser.add_argument("--mlp", action="store_true", help="add MLPs (attn_only=False)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="steps per measured run (default 150; 32 with --large)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured warm-up rounds")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1; 0 keeps torch's default). On a small shared CPU box, "
        "multi-threaded ops stall whenever another process holds a core, so timings with >1 thread "
        "measure the scheduler rather than the code",
    )
    parser.add_argument("--scratch", default=None, help="where the trainer's run dirs go (default: a temp dir)")
    parser.add_argument(
        "--out", default=None, help="result JSON (default benchmarks/results/train_throughput[_large].json)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if trainer/plain < target")
    args = parser.parse_args(argv)

    d_model = args.d_model or (128 if args.large else 64)
    n_ctx = args.n_ctx or (128 if args.large else 64)
    args.steps = args.steps or (32 if args.large else 150)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = ModelConfig(
        n_layers=args.n_layers,
        d_model=d_model,
        n_heads=args.n_heads,
        d_vocab=args.d_vocab,
        n_ctx=n_ctx,
        attn_only=not args.mlp,
    )
    data = RepeatedSegments(RepeatedSegmentsConfig(d_vocab=cfg.d_vocab, seq_len=cfg.n_ctx))
    tokens_per_run = args.steps * args.batch_size * cfg.n_ctx

    n_plain = sum(p.numel() for p in PlainTransformer(cfg).parameters())
    n_bridge = sum(p.numel() for p in trainable_parameters(build_model(cfg, device="cpu")))
    if n_plain != n_bridge:
        raise AssertionError(f"shapes differ: plain has {n_plain} parameters, the bridge {n_bridge}")

    shape = (
        f"n_layers={cfg.n_layers} d_model={cfg.d_model} n_heads={cfg.n_heads} d_vocab={cfg.d_vocab} "
        f"n_ctx={cfg.n_ctx} attn_only={cfg.attn_only}"
    )
    print(f"train_throughput: {shape}; {n_plain} params; batch {args.batch_size}; AdamW lr 1e-3")
    print(
        f"{args.steps} steps per run ({tokens_per_run} tokens); {args.warmup} warm-up + {args.rounds} "
        f"measured rounds, interleaved; device {device}, {torch.get_num_threads()} torch threads"
    )

    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench_train_"))
    scratch.mkdir(parents=True, exist_ok=True)
    walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpus: dict[str, list[float]] = {v: [] for v in VARIANTS}
    losses: dict[str, list[float]] = {v: [] for v in VARIANTS}
    data_walls: list[float] = []
    fixed_walls: list[float] = []  # train(steps=1): the trainer's cost per run beyond its steps
    try:
        for r in range(args.warmup + args.rounds):
            measured = r >= args.warmup
            order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
            parts = []
            for name in order:
                wall, cpu, loss = run_variant(name, args.steps, args.batch_size, cfg, data, device, scratch,
                                              f"{r}_{name}")
                parts.append(f"{name} {tokens_per_run / wall:,.0f} tok/s")
                if measured:
                    walls[name].append(wall)
                    cpus[name].append(cpu)
                    losses[name].append(loss)
            if measured:
                data_walls.append(data_time(data, args.steps, args.batch_size))
                fixed_walls.append(run_variant("trainer-1-step", args.steps, args.batch_size, cfg, data, device,
                                               scratch, f"{r}_1")[0])
            label = f"round {r - args.warmup + 1}" if measured else "warm-up"
            print(f"  {label:>8}: " + ", ".join(parts), flush=True)
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)

    tput = {v: [tokens_per_run / w for w in walls[v]] for v in VARIANTS}
    cpu_tput = {v: [tokens_per_run / c for c in cpus[v]] for v in VARIANTS}
    med = {v: median(tput[v]) for v in VARIANTS}
    cpu_med = {v: median(cpu_tput[v]) for v in VARIANTS}
    paired = {v: [a / b for a, b in zip(tput[v], tput["plain"], strict=True)] for v in ("trainer", "bridge")}
    ratio = {v: med[v] / med["plain"] for v in ("trainer", "bridge")}
    cpu_ratio = {v: cpu_med[v] / cpu_med["plain"] for v in ("trainer", "bridge")}
    data_share = median(data_walls) / median(walls["plain"])

    labels = {
        "trainer": "trainer (interp.train.train, end to end)",
        "plain": "plain PyTorch loop",
        "bridge": "bridge model(tokens), plain loop",
    }
    rows = [
        [
            labels[v],
            f"{med[v]:,.0f}",
            spread([x / 1e3 for x in tput[v]]) + "k",
            f"{median(walls[v]) * 1e3 / args.steps:.2f}",
            f"{med[v] / med['plain']:.2f}",
            f"{cpu_med[v]:,.0f}",
            f"{cpu_med[v] / cpu_med['plain']:.2f}",
            f"{median(losses[v]):.3f}",
        ]
        for v in VARIANTS
    ]
    print()
    print(
        table(
            [
                "variant",
                "tokens/s wall (median)",
                "range",
                "ms/step",
                "vs plain",
                "tokens/s CPU time",
                "vs plain",
                "final loss",
            ],
            rows,
        )
    )
    print()
    ok = ratio["trainer"] >= TARGET
    print(
        f"trainer/plain = {ratio['trainer']:.3f} wall-clock (paired per-round median "
        f"{median(paired['trainer']):.3f}; by CPU time {cpu_ratio['trainer']:.3f}); "
        f"target >= {TARGET}: {'PASS' if ok else 'FAIL'}"
    )
    print(
        f"bridge/plain  = {ratio['bridge']:.3f} wall-clock (paired per-round median "
        f"{median(paired['bridge']):.3f}; by CPU time {cpu_ratio['bridge']:.3f}): the hooked bridge "
        f"forward is why the trainer uses interp.model.fused_forward"
    )
    plain_step = median(walls["plain"]) / args.steps
    print(
        f"trainer fixed cost per run: train(steps=1) takes {1e3 * median(fixed_walls):.0f} ms (build the bridge, "
        f"write config, step-0 and final checkpoints, 1 step) vs {1e3 * plain_step:.1f} ms per plain step; "
        f"it weighs less in longer runs"
    )
    print(
        f"data generation (RepeatedSegments.batch) is {100 * data_share:.0f}% of the plain loop's time, "
        f"paid by every variant"
    )
    print(
        "tokens/s CPU time = tokens / process CPU seconds: less sensitive to other processes on the "
        "machine, but blind to time spent waiting on I/O (the trainer's checkpoint fsyncs)"
    )

    result = {
        "benchmark": "train_throughput",
        "model": {
            "n_layers": cfg.n_layers,
            "d_model": cfg.d_model,
            "n_heads": cfg.n_heads,
            "d_vocab": cfg.d_vocab,
            "n_ctx": cfg.n_ctx,
            "attn_only": cfg.attn_only,
            "trainable_parameters": n_plain,
        },
        "batch_size": args.batch_size,
        "steps_per_run": args.steps,
        "tokens_per_run": tokens_per_run,
        "optimizer": "adamw",
        "lr": 1e-3,
        "rounds": args.rounds,
        "warmup_rounds": args.warmup,
        "environment": environment(device),
        "tokens_per_s": {v: {"median": med[v], "samples": tput[v]} for v in VARIANTS},
        "wall_s": {v: walls[v] for v in VARIANTS},
        "cpu_s": {v: cpus[v] for v in VARIANTS},
        "tokens_per_cpu_s": {v: {"median": cpu_med[v], "samples": cpu_tput[v]} for v in VARIANTS},
        "final_loss": {v: losses[v] for v in VARIANTS},
        "ratio": {"trainer/plain": ratio["trainer"], "bridge/plain": ratio["bridge"]},
        "paired_ratio_median": {"trainer/plain": median(paired["trainer"]), "bridge/plain": median(paired["bridge"])},
        "cpu_time_ratio": {"trainer/plain": cpu_ratio["trainer"], "bridge/plain": cpu_ratio["bridge"]},
        "trainer_1_step_wall_s": {"median": median(fixed_walls), "samples": fixed_walls},
        "data_generation_s": {"median": median(data_walls), "share_of_plain": data_share},
        "target": {"trainer/plain": TARGET, "met": ok},
    }
    default_name = "train_throughput_large" if args.large else "train_throughput"
    path = write_result(default_name, result, args.out)
    print(f"wrote {path}")
    if args.check and not ok:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
