"""Optimizer step: the trainer's fused AdamW vs PyTorch's default AdamW, on the
few-shot model of the transient-ICL quick preset (2 layers, d_model 64, 8 heads,
MLPs, input projection; batch 32 of 5-position sequences).

Both variants train the same model from the same initialization on the same
batches for `--steps` steps; each round runs both, alternating the order:

- trainer: `interp.train.Stepper` (fused forward, masked loss, the project's
  optimizer: `torch.optim.AdamW(..., fused=True)`);
- default AdamW: the same forward, loss and parameter groups (weight decay on the
  attention only) with `torch.optim.AdamW`'s default implementation (a per-tensor
  update loop on CPU).

Prints the median milliseconds per step and the ratio; target: the trainer is
not slower (ratio <= 1).

    python benchmarks/optimizer_step.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, median, spread, table, write_result  # noqa: E402

from analyses.icl_transience import PRESETS  # noqa: E402
from interp.model import build_model, forward, masked_mean_loss, named_trainable_parameters  # noqa: E402
from interp.seeding import BATCHES, generator  # noqa: E402
from interp.train import Stepper, decayed  # noqa: E402
from tasks.fewshot import FewShot  # noqa: E402


def time_trainer(cfg, batches) -> float:
    model = build_model(cfg.model, device="cpu")
    stepper = Stepper(model, cfg.train)
    model.train()
    started = time.perf_counter()
    for step, batch in enumerate(batches):
        stepper.step(step, batch)
    return (time.perf_counter() - started) / len(batches) * 1000


def time_default_optimizer(cfg, batches) -> float:
    model = build_model(cfg.model, device="cpu")
    named = named_trainable_parameters(model)
    groups = [{"params": [p for n, p in named if decayed(cfg.train, n)], "weight_decay": cfg.train.weight_decay},
              {"params": [p for n, p in named if not decayed(cfg.train, n)], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr)
    model.train()
    started = time.perf_counter()
    for batch in batches:
        loss = masked_mean_loss(forward(model, batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / len(batches) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = PRESETS["quick"]
    task = FewShot(cfg.data)
    batches = [task.batch(s, cfg.train.batch_size, generator(0, BATCHES, s)) for s in range(args.steps)]
    variants = {"trainer (fused AdamW)": time_trainer, "default AdamW": time_default_optimizer}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn(cfg, batches[:20])
    for round_index in range(args.rounds):
        order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
        for name in order:
            times[name].append(variants[name](cfg, batches))
    base = median(times["default AdamW"])
    print(f"optimizer_step: {args.steps} steps x {args.rounds} rounds, {args.threads} torch thread(s)")
    print(table(["variant", "ms/step (median)", "range", "vs default"],
                [[name, f"{median(t):.2f}", spread(t), f"{median(t) / base:.3f}"] for name, t in times.items()]))
    ratio = median(times["trainer (fused AdamW)"]) / base
    print(f"\ntrainer/default = {ratio:.3f} (lower is faster)")
    path = write_result("optimizer_step", {"steps": args.steps, "ms_per_step": times, "ratio": ratio,
                                           "environment": environment(torch.device("cpu"))}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
