"""A Pythia-70m-sized checkpoint suite with the CLI's default settings (issue 33 targets):

- `interp probe SUITE induction`, `interp circuit SUITE --method eap` and `interp view SUITE`
  each finish within 16 GB of peak memory (the process's maximum resident set, as
  `/usr/bin/time -v` reports it), with default settings;
- the CLI's induction scores equal a one-sequence-at-a-time computation of the same batch;
- a copy of the suite in another folder re-probes with zero checkpoint loads.

The suite is built here: GPT-NeoX with Pythia-70m's configuration (6 layers, 8 heads,
d_model 512, d_mlp 2048, vocabulary 50304, context 2048) and random weights, saved by
`transformers` as step0/, step1000/, step2000/ (about 280 MB each).

    python benchmarks/suite_memory.py              # builds the suite in a temporary folder
    python benchmarks/suite_memory.py --keep DIR   # builds it in DIR and keeps it
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, table, write_result  # noqa: E402

from interp import seeding, suites  # noqa: E402
from interp.batches import repeated_tokens  # noqa: E402
from interp.cli.checks import check_period  # noqa: E402
from interp.metrics import heads  # noqa: E402
from interp.probing import probe  # noqa: E402

STEPS = (0, 1000, 2000)
TARGET_PEAK_GB = 16.0
PYTHIA_70M = {"hidden_size": 512, "num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 2048,
              "vocab_size": 50304, "max_position_embeddings": 2048, "rotary_pct": 0.25,
              "use_parallel_residual": True, "tie_word_embeddings": False}


def build_suite(folder: Path) -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(**PYTHIA_70M)
    config.architectures = ["GPTNeoXForCausalLM"]
    for step in STEPS:
        torch.manual_seed(step)
        GPTNeoXForCausalLM(config).save_pretrained(folder / f"step{step}")


def timed(command: list[str]) -> dict[str, float | str]:
    """Wall seconds and peak resident memory of one CLI command (`/usr/bin/time -v`)."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return {"command": " ".join(command[1:]), "wall_s": round(wall, 1), "peak_gb": round(peak_kb / 2**20, 2),
            "stdout_tail": done.stdout[-600:]}


def one_at_a_time(suite_dir: Path, period: int, sequences: int, seed: int) -> np.ndarray:
    """The induction scores of the CLI's batch, each sequence probed alone and the scores averaged."""
    suite = suites.open_suite(suite_dir)
    model_cfg = suite.model_config
    tokens = repeated_tokens(sequences, period, suite.model_config.d_vocab,
                             seeding.generator(seed, seeding.CLI_BATCHES))
    probes = {"induction": heads.induction_probe(range(model_cfg.n_layers), period)}
    rows = [probe(suite, probes, {"tokens": tokens[i:i + 1]}, use_cache=False, device="cpu").values
            for i in range(sequences)]
    return np.mean(rows, axis=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", default=None, help="build the suite in this folder and keep it")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="suite-memory-"))
    suite_dir = root / "pythia-70m-sized"
    if not (suite_dir / f"step{STEPS[-1]}").is_dir():
        build_suite(suite_dir)
    interp = [sys.executable, "-m", "interp.cli"]
    csv_path = root / "induction.csv"
    runs = [timed([*interp, "probe", str(suite_dir), "induction", "--csv", str(csv_path)]),
            timed([*interp, "circuit", str(suite_dir), "--method", "eap"]),
            timed([*interp, "view", str(suite_dir)])]
    for row in runs:
        print(f"{row['command']}: {row['wall_s']} s, peak {row['peak_gb']} GB")

    with csv_path.open() as f:
        cli_rows = list(csv.DictReader(f))
    model_cfg = suites.open_suite(suite_dir).model_config
    period = check_period(0, model_cfg)  # the CLI's default period for this model
    columns = [c for c in cli_rows[0] if c != "step"]
    cli_scores = np.array([[float(r[c]) for c in columns] for r in cli_rows])
    alone = one_at_a_time(suite_dir, period, 32, 0)
    gap = float(np.max(np.abs(cli_scores - alone[:, :cli_scores.shape[1]])))
    print(f"induction scores, CLI vs one sequence at a time: max |difference| {gap:.2e}")

    copy = root / "copied-suite"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(suite_dir, copy)
    loads = 0
    real = suites._from_pretrained

    def counting(*a, **k):
        nonlocal loads
        loads += 1
        return real(*a, **k)

    suites._from_pretrained = counting
    tokens = repeated_tokens(32, period, model_cfg.d_vocab, seeding.generator(0, seeding.CLI_BATCHES))
    induction = heads.induction_probe(range(model_cfg.n_layers), period)
    probe(copy, {"induction": induction}, {"tokens": tokens}, device="cpu")
    suites._from_pretrained = real
    print(f"re-probe of a copy: {loads} checkpoint loads")

    commands = [{k: v for k, v in r.items() if k != "stdout_tail"} for r in runs]
    result = {"environment": environment(torch.device("cpu")), "commands": commands,
              "target_peak_gb": TARGET_PEAK_GB, "max_peak_gb": max(r["peak_gb"] for r in runs),
              "induction_gap_vs_one_at_a_time": gap, "copy_reprobe_loads": loads, "period": period}
    write_result("suite_memory", result)
    print(table(["command", "wall s", "peak GB"], [[r["command"], r["wall_s"], r["peak_gb"]] for r in runs]))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if result["max_peak_gb"] <= TARGET_PEAK_GB and gap < 1e-5 and loads == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
