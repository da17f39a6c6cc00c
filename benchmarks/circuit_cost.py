"""Cost of the circuit probes over a run's checkpoints (issue targets on 2 CPU cores):

- weight-only (composition, OV copying, QK matching) on every checkpoint: <= 10 s;
- path patching (every edge) + edge attribution (EAP) + direct logit attribution on every
  checkpoint: <= 90 s;
- the same calls again: served from the probe cache (reported, target ~0).

Measured on a copy of the run with its circuit caches removed, so the first pass computes
everything; the batch is the CLI's (`interp circuit`): repeated random tokens, the source
resampling the first copy. Also reports how EAP ranks edges against actual path patching
(Spearman over all edges, per checkpoint): the issue asks for >= 0.8 on a trained model.

    python benchmarks/circuit_cost.py RUN_DIR          # e.g. runs/induction/runs/main (the quick preset)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, table, write_result  # noqa: E402

from interp.batches import repeated_patch_batch  # noqa: E402
from interp.checkpoints import Run  # noqa: E402
from interp.circuits.common import mean_logprob  # noqa: E402
from interp.circuits.graph import CIRCUITS_DIR  # noqa: E402
from interp.circuits.readout import dla_probe  # noqa: E402
from interp.circuits.trace import trace  # noqa: E402
from interp.circuits.weights import composition_probe, copying_probe, qk_matching_probe  # noqa: E402
from interp.probing import probe  # noqa: E402
from interp.run_layout import PROBES_DIR  # noqa: E402
from interp.seeding import generator  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory (the induction quick preset's: runs/<out>/runs/main)")
    parser.add_argument("--sequences", type=int, default=32, help="patching sequences (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/circuit_cost.json)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "run"
        shutil.copytree(args.run, copy, ignore=shutil.ignore_patterns(PROBES_DIR, CIRCUITS_DIR, ".lock"))
        run = Run.open(copy)
        cfg = run.model_config
        period = cfg.n_ctx // 2
        batch = repeated_patch_batch(args.sequences, period, cfg.d_vocab, generator(0, 2))
        metric = mean_logprob("in_repeat")
        weights = {"composition": composition_probe(), "copying": copying_probe(), "qk": qk_matching_probe()}

        def weight_only():
            return probe(run, weights)

        def patching():
            path = trace(run, "path", batch, metric)
            eap = trace(run, "eap", batch, metric)
            probe(run, {"dla": dla_probe("in_repeat")}, batch)
            return path, eap

        steps = run.steps
        first_weights, _ = timed(weight_only)
        first_patching, (path, eap) = timed(patching)
        again_weights, _ = timed(weight_only)
        again_patching, _ = timed(patching)
    rho = [float(spearmanr([p.weights[e] for e in p.weights], [q.weights[e] for e in p.weights]).statistic)
           for p, q in zip(path.graphs, eap.graphs, strict=True)]
    rows = [["weight-only probes", f"{first_weights:.2f}", f"{again_weights:.2f}", "10"],
            ["path + EAP + DLA", f"{first_patching:.2f}", f"{again_patching:.2f}", "90"]]
    print(f"{len(steps)} checkpoints, model {cfg.n_layers} layers x {cfg.n_heads} heads (d_model {cfg.d_model}), "
          f"{len(path.graphs[0].weights)} edges, batch {args.sequences} x {2 * period}")
    print(table(["", "first call (s)", "cached call (s)", "target (s)"], rows))
    print(f"EAP vs path patching, Spearman over all edges: final checkpoint {rho[-1]:.3f}, median {np.median(rho):.3f},"
          f" min {min(rho):.3f} (step {path.graphs[int(np.argmin(rho))].step})")
    result = {"environment": environment(torch.device("cpu")), "checkpoints": len(steps),
              "edges": len(path.graphs[0].weights), "weight_only_s": first_weights,
              "weight_only_cached_s": again_weights, "patching_s": first_patching, "patching_cached_s": again_patching,
              "spearman_eap_path": dict(zip(map(str, steps), rho, strict=True))}
    print(f"wrote {write_result('circuit_cost', result, args.out)}")
    missed = first_weights > 10 or first_patching > 90
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
