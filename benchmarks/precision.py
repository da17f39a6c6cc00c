"""Mixed precision: the trainer's step in float32 and under bfloat16 autocast, against
a plain PyTorch loop doing the same, on the fact-learning model (`--preset quick`:
2 layers, d_model 128, batch 16 biographies of 71 tokens; `--preset paper` on a GPU:
8 layers, d_model 512, batch 640).

Variants, each training the same model from the same initialization on the same
batches for `--steps` steps, in alternating order over `--rounds` rounds:

- plain fp32 / plain bf16: `model(tokens)`, masked cross-entropy, fused AdamW, with
  `torch.autocast(dtype=torch.bfloat16)` around the forward pass for bf16;
- trainer fp32 / trainer bf16: `interp.train.Stepper` with `precision="fp32"` / `"bf16"`.

Prints the median milliseconds per step and each ratio to plain fp32. bfloat16 is for
GPUs: CPUs without bfloat16 matrix units run it several times slower.

    python benchmarks/precision.py [--device cuda] [--preset paper --batch-size 128]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, median, spread, sync, table, write_result  # noqa: E402

from analyses.fact_learning import PRESETS  # noqa: E402
from interp.devices import resolve_device  # noqa: E402
from interp.model import build_model, masked_mean_loss, training_batch  # noqa: E402
from interp.seeding import BATCHES, generator  # noqa: E402
from interp.train import Stepper  # noqa: E402
from tasks.biographies import Biographies  # noqa: E402


def time_trainer(precision: str):
    def run(cfg, batches, device) -> float:
        model = build_model(cfg.model, device=device)
        stepper = Stepper(model, replace(cfg.train, precision=precision))
        model.train()
        sync(device)
        started = time.perf_counter()
        for step, batch in enumerate(batches):
            stepper.step(step, batch)
        sync(device)
        return (time.perf_counter() - started) / len(batches) * 1000

    return run


def time_plain(bf16: bool):
    def run(cfg, batches, device) -> float:
        model = build_model(cfg.model, device=device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2),
                                      weight_decay=cfg.train.weight_decay, fused=True)
        model.train()
        sync(device)
        started = time.perf_counter()
        for batch in batches:
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                loss = masked_mean_loss(model(batch["tokens"]), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        return (time.perf_counter() - started) / len(batches) * 1000

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    parser.add_argument("--batch-size", type=int, default=0, help="default: the preset's")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = PRESETS[args.preset]
    cfg = replace(cfg, train=replace(cfg.train, batch_size=args.batch_size or cfg.train.batch_size))
    bios = Biographies(cfg.data)
    batches = [training_batch(bios.batch(s, cfg.train.batch_size, generator(0, BATCHES, s)), device)
               for s in range(args.steps)]
    variants = {"plain fp32": time_plain(False), "plain bf16": time_plain(True),
                "trainer fp32": time_trainer("fp32"), "trainer bf16": time_trainer("bf16")}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn(cfg, batches[:5], device)
    for round_index in range(args.rounds):
        order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
        for name in order:
            times[name].append(variants[name](cfg, batches, device))
    base = median(times["plain fp32"])
    print(f"precision: fact-learning --preset {args.preset}, batch {cfg.train.batch_size}, {args.steps} steps x "
          f"{args.rounds} rounds on {device} ({args.threads} torch thread(s) on CPU)")
    print(table(["variant", "ms/step (median)", "range", "vs plain fp32"],
                [[name, f"{median(t):.2f}", spread(t), f"{median(t) / base:.3f}"] for name, t in times.items()]))
    path = write_result("precision", {"preset": args.preset, "batch_size": cfg.train.batch_size, "steps": args.steps,
                                      "ms_per_step": times, "environment": environment(device)}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
