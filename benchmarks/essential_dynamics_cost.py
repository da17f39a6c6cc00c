"""Cost of essential dynamics over a run's checkpoints (issue 31 targets on 2 CPU cores):

- the first call (one forward per checkpoint, each output vector saved, PCA, turning points):
  <= 10 s on the induction quick run (about 30 checkpoints, 2 layers, d_model 64);
- the same call again, the outputs read back from the probe's saved files: <= 1 s.

Measured on a copy of the run with its probe caches removed, so the first call computes
everything. The batch: `--sequences` sequences of `n_ctx / 2` random tokens repeated twice
(the induction analysis's probe batch), log-softmax at every scored position.

    python benchmarks/essential_dynamics_cost.py RUN_DIR   # e.g. runs/induction/runs/main (the quick preset)
"""

from __future__ import annotations

import argparse
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
from interp.metrics.essential_dynamics import essential_dynamics  # noqa: E402
from interp.run_layout import PROBES_DIR  # noqa: E402
from interp.seeding import generator  # noqa: E402

TARGET_FIRST_S, TARGET_CACHED_S = 10.0, 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory (the induction quick preset's: runs/<out>/runs/main)")
    parser.add_argument("--sequences", type=int, default=32, help="sequences in the fixed batch (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds, each on a fresh copy (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default=None,
                        help="result file (default benchmarks/results/essential_dynamics_cost.json)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    first, cached = [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(scratch) / "run"
            shutil.copytree(args.run, copy, ignore=shutil.ignore_patterns(PROBES_DIR, ".lock"))
            cfg = Run.open(copy).model_config
            batch = {"tokens": repeated_tokens(args.sequences, cfg.n_ctx // 2, cfg.d_vocab, generator(0, 31))}
            start = time.perf_counter()
            dynamics = essential_dynamics(copy, batch, device="cpu")
            first.append(time.perf_counter() - start)
            start = time.perf_counter()
            again = essential_dynamics(copy, batch, device="cpu")
            cached.append(time.perf_counter() - start)
            assert (again.coords == dynamics.coords).all(), "the cached call changed the trajectory"
    n_scored = args.sequences * (cfg.n_ctx - 1)
    print(f"{len(dynamics.steps)} checkpoints, model {cfg.n_layers} layers (d_model {cfg.d_model}), batch "
          f"{args.sequences} x {cfg.n_ctx}: {n_scored * cfg.d_vocab:,} outputs per checkpoint")
    print(table(["", "median (s)", "range (s)", "target (s)"],
                [["first call", f"{median(first):.2f}", spread(first), TARGET_FIRST_S],
                 ["cached call", f"{median(cached):.3f}", spread(cached), TARGET_CACHED_S]]))
    explained = ", ".join(f"{v:.3f}" for v in dynamics.explained)
    turns = ", ".join(f"{t.step} ({t.angle:.0f} deg)" for t in dynamics.turning_points) or "none"
    print(f"explained variance of the top components: {explained}; turning points: {turns}")
    result = {"environment": environment(torch.device("cpu")), "checkpoints": len(dynamics.steps),
              "outputs_per_checkpoint": n_scored * cfg.d_vocab, "first_s": first, "cached_s": cached,
              "first_median_s": median(first), "cached_median_s": median(cached),
              "explained": dynamics.explained.tolist(),
              "turning_points": [[t.step, t.angle] for t in dynamics.turning_points]}
    print(f"wrote {write_result('essential_dynamics_cost', result, args.out)}")
    missed = median(first) > TARGET_FIRST_S or median(cached) > TARGET_CACHED_S
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
