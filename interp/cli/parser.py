"""The `interp` argument parser: every command, its options and their checks.

It imports no command's module: each command names its function as "module:function", which
`interp.cli.main` imports only to run it, so `interp --help` starts in a fraction of a second
instead of the seconds torch and TransformerLens take to import."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from interp.cli.errors import EXIT_FAILED
from interp.configs import MAX_SEED
from interp.hooks import hook_name
from interp.metrics.llc_settings import LLC_KEY, LLCSettings

BUILTIN_PROBES = {"prev-token": "prev", "induction": "induction"}
"""`interp probe RUN <name>` -> the key its results are cached under: the induction-heads
analysis's keys for the same probes, so one cache file holds both (`interp plot`, `interp view`)."""
LINEAR_PROBE = "linear"  # `interp probe RUN linear ...`: a linear probe on a saved batch (`_probe_linear`)
REFINED_KEY = "rllc"
"""The key of `interp llc --per-head`/`--per-component`: each component's refined LLC."""

DESCRIPTION = """\
The `interp` command: list and run analyses, inspect, verify, probe and plot runs.

Expected errors (bad input, a refused directory, a full disk, a run in use, Ctrl-C)
end in one line on stderr naming the cause, with exit code 2 (130 for Ctrl-C, which
also prints the command that resumes an interrupted `interp run`); `--debug` adds the
traceback. Anything else is a bug and shows its traceback.
"""

# --- argument types: bad values are named by argparse ("argument --seed: expected ...") ------------


def _int_in(low: int, high: int | None = None, expected: str = "") -> Callable[[str], int]:
    expected = expected or (f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


def _float_at_least(low: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number >= {low}, got {text!r}") from None
        if not value >= low or value == float("inf"):  # `not >=` also refuses NaN
            raise argparse.ArgumentTypeError(f"expected a finite number >= {low}, got {text}")
        return value

    return parse


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):  # also refuses NaN
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


SEED = _int_in(0, MAX_SEED, "an integer in [0, 2**63)")
COUNT = _int_in(1)
OPTIONAL_COUNT = _int_in(0)


class _HelpOnDemand(argparse.Action):
    """`-h` of a command whose help names what takes seconds to import (the analyses, a hook
    name from TransformerLens): `complete(parser)` adds it, only when the help is asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None,  # noqa: A002 - argparse's name
                 complete: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)
        self.complete = complete

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if self.complete is not None:
            self.complete(parser)
        parser.print_help()
        parser.exit()


def _list_analyses(parser: argparse.ArgumentParser) -> None:
    from interp.cli.list import analyses_epilog  # imports every analysis

    parser.epilog = analyses_epilog()


def _add_cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="a checkpoint suite's results cache root, shared by suites (default: SUITE/interp-cache); "
                        "the suite's sub-folder is found by its checkpoints' content, so a moved or copied suite "
                        "keeps its results")


def _add_backend_args(p: argparse.ArgumentParser, job: str, default_workers: str = "one per core") -> None:
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help=f"where each independent {job} runs (default: local processes)")
    p.add_argument("--workers", type=OPTIONAL_COUNT, default=0,
                   help=f"local processes, not part of the config (default 0: {default_workers})")
    p.add_argument("--threads", type=OPTIONAL_COUNT, default=0,
                   help=f"torch threads per {job} (default: cores / workers locally, --cpus-per-job on Ray)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--cpus-per-job", type=COUNT, default=1, help="Ray CPUs per job (default 1)")
    p.add_argument("--gpus-per-job", type=_float_at_least(0.0), default=0.0, help="Ray GPUs per job (default 0)")


def _add_threads_arg(p: argparse.ArgumentParser) -> None:
    """`--threads` of a command that computes in this process (`run` and `sweep` have their own: per job)."""
    p.add_argument("--threads", dest="torch_threads", type=COUNT, default=None, metavar="N",
                   help="torch CPU threads (default: the cores that other processes leave idle, by the load "
                        "average, at least 1: torch's own default of every core costs more CPU, and as much or "
                        "more time, on a busy machine; docs/performance.md#threads)")


def build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before and after the subcommand; SUPPRESS keeps a subcommand's
    # absent flag from resetting one given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error (default: one line naming the cause)")
    parser = argparse.ArgumentParser(prog="interp", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log library progress messages")
    parser.add_argument("--debug", action="store_true", default=False,
                        help="show the traceback of an error (default: one line naming the cause)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("list", parents=[common], help="list the analyses, their presets and each preset's sizes") \
        .set_defaults(fn="interp.cli.list:cmd_list")

    p = sub.add_parser("run", parents=[common], add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="run an analysis end to end (train, probe, plot, report)",
                       description="Run an analysis end to end: train its runs into OUT/runs/, probe them, "
                                   "write OUT/figures/, OUT/report.md and OUT/results.json.")
    p.add_argument("-h", "--help", action=_HelpOnDemand, complete=_list_analyses,
                   help="show this help, with the analyses and presets, and exit")
    p.add_argument("name", help="analysis name (listed below and by `interp list`)")
    p.add_argument("--preset", default="quick", help="named configuration (default: quick; listed below)")
    p.add_argument("--out", help="output directory (default: runs/NAME); a non-empty directory that holds no "
                                 "output of this analysis is refused unless --force")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps, auto (default: CUDA if present)")
    p.add_argument("--seed", type=SEED, default=None,
                   help="one seed for model init, data and evaluation, in [0, 2**63) (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set train.lr=1e-3 --set model.d_model=128 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out (the same preset and overrides)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty --out that holds no output of this analysis (its files may be "
                        "overwritten)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--plan", action="store_true",
                   help="train nothing, write nothing: print what the preset would train and cost (runs, parameters, "
                        "tokens, FLOPs, memory, disk, and wall time from a few timed steps on --device)")
    _add_backend_args(p, "training run of the analysis", "the preset's count where it sets one, else one per core")
    p.set_defaults(fn="interp.cli.run:cmd_run")

    p = sub.add_parser("sweep", parents=[common],
                       help="run an analysis over a grid of overrides x seeds (resumable)")
    p.add_argument("name", help="analysis name (see `interp list`)")
    p.add_argument("--preset", default="quick", help="named configuration (default: quick)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="swept config key and its values, e.g. --grid train.lr=1e-3,2e-3 (repeatable: a product)")
    p.add_argument("--seeds", type=COUNT, default=1, help="seeds 0..N-1 for every grid point (default 1)")
    p.add_argument("--seed-list", type=SEED, nargs="+", default=None, help="explicit seeds instead of --seeds")
    p.add_argument("--out", help="sweep directory (default: runs/sweep-NAME); re-run it to finish a sweep")
    _add_backend_args(p, "point")
    p.add_argument("--device", default=None, help="device for every point (default: CUDA if present)")
    p.add_argument("--metrics", default="", help="comma-separated results to tabulate and plot (default: headline)")
    p.add_argument("--keep", choices=["all", "log", "final", "none"], default="final",
                   help="checkpoint weights each complete point's runs keep (default: final; training states go)")
    p.set_defaults(fn="interp.cli.sweep:cmd_sweep")

    p = sub.add_parser("info", parents=[common],
                       help="summarize a run directory (or every run below a directory, or a checkpoint suite); "
                            "--verify checks it")
    p.add_argument("dir", help="a run directory, an analysis or sweep directory (every run below it), or a "
                               "checkpoint-suite folder (its cached loss curve too)")
    p.add_argument("--verify", action="store_true",
                   help="check every checkpoint against its sha256, that its weights are finite, and that each run "
                        f"is complete and undamaged; exit code {EXIT_FAILED} if anything fails")
    _add_cache_arg(p)
    p.set_defaults(fn="interp.cli.info:cmd_info")

    p = sub.add_parser("probe", parents=[common], add_help=False,
                       help="compute a built-in head score or a linear probe at every checkpoint of a run or "
                            "checkpoint suite")
    probe_help = p.add_argument("-h", "--help", action=_HelpOnDemand, help="show this help message and exit")
    p.add_argument("dir", help="a run directory, an analysis directory that holds one run, or a checkpoint-suite "
                               "folder (step<N> or checkpoint-<N> sub-folders saved by transformers; "
                               "hf:OWNER/NAME: a hub model)")
    p.add_argument("metric", choices=(*BUILTIN_PROBES, LINEAR_PROBE),
                   help="the head score (previous-token or induction attention), or a linear probe (needs --batch, "
                        "--hook, --positions, --labels)")
    p.add_argument("--layers", type=OPTIONAL_COUNT, nargs="+", default=None, help="layers to score (default: all)")
    p.add_argument("--steps", type=OPTIONAL_COUNT, nargs="+", default=None, help="checkpoint steps (default: all)")
    p.add_argument("--period", type=OPTIONAL_COUNT, default=0,
                   help="repeat period of the probe tokens (default 0: n_ctx/2, at most 256)")
    p.add_argument("--sequences", type=COUNT, default=32,
                   help="probe sequences (default 32), computed in chunks where they do not fit in memory at once")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the probe tokens (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: CUDA if present)")
    p.add_argument("--csv", help="also write the table to this CSV file")
    linear = p.add_argument_group("linear probe (metric `linear`; --seed seeds its split and control task)")
    linear.add_argument("--batch", help="a batch file (safetensors, `linear_probes.save_batch`): tokens and the keys")
    hook = linear.add_argument("--hook", nargs="+", help="hook(s) to probe")
    # hook_name imports TransformerLens: its example is spelled when the help is shown
    probe_help.complete = lambda _: setattr(hook, "help", f"hook(s) to probe, e.g. {hook_name('resid_post', 1)}")
    linear.add_argument("--positions", help="batch key: bool mask [batch, pos] or a position per row")
    linear.add_argument("--labels", help="batch key: integer classes or real values, per row or per position")
    linear.add_argument("--groups", help="batch key: the unit a probe could memorise (default: the batch row)")
    linear.add_argument("--split", help="batch key: an explicit bool test mask (default: a grouped random split)")
    linear.add_argument("--control-types", help="batch key: the control task's types (default: the token)")
    linear.add_argument("--kind", choices=("auto", "classification", "regression"), default="auto",
                        help="default auto: integer labels are classes, floats are values")
    linear.add_argument("--cycle", type=OPTIONAL_COUNT, default=0,
                        help="steps per cycle of a periodic schedule: also print same-phase direction cosines")
    _add_threads_arg(p)
    _add_cache_arg(p)
    p.set_defaults(fn="interp.cli.probe:cmd_probe")

    defaults = LLCSettings(draws=60, burn_in=40, batch_size=32)  # as benchmarks/llc_cost.py measures them
    p = sub.add_parser("llc", parents=[common],
                       help="estimate the local learning coefficient (SGLD, devinterp) at every checkpoint of a run "
                            "or checkpoint suite",
                       description="The local learning coefficient (Lau et al. 2023) at every checkpoint, by SGLD on "
                                   "rows of the run's training distribution (drawn by its analysis) or of --batch; "
                                   f"cached in the run as probes/{LLC_KEY}.jsonl per sampler setting.")
    p.add_argument("dir", help="a run directory, an analysis directory that holds one run, or a checkpoint-suite "
                               "folder (with --batch)")
    p.add_argument("--steps", type=OPTIONAL_COUNT, nargs="+", default=None, help="checkpoint steps (default: all)")
    p.add_argument("--batch", help="a batch file (safetensors, `linear_probes.save_batch`) of rows to sample from "
                                   "(default: rows of the run's training distribution, from its analysis)")
    p.add_argument("--sequences", type=COUNT, default=1024,
                   help="rows drawn from the training distribution without --batch (default 1024)")
    p.add_argument("--chains", type=COUNT, default=defaults.chains, help=f"SGLD chains (default {defaults.chains})")
    p.add_argument("--draws", type=_int_in(3), default=defaults.draws,
                   help=f"draws per chain after burn-in (default {defaults.draws})")
    p.add_argument("--burn-in", type=OPTIONAL_COUNT, default=defaults.burn_in,
                   help=f"steps per chain before the draws (default {defaults.burn_in})")
    p.add_argument("--lr", type=_positive, default=defaults.lr, help=f"SGLD step size (default {defaults.lr:g})")
    p.add_argument("--gamma", type=_float_at_least(0.0), default=defaults.gamma,
                   help=f"localization strength (default {defaults.gamma:g})")
    p.add_argument("--nbeta", type=_positive, default=None,
                   help="inverse temperature times n (default: batch size / log(batch size), devinterp's choice)")
    p.add_argument("--batch-size", type=_int_in(2), default=defaults.batch_size,
                   help=f"rows per SGLD step (default {defaults.batch_size})")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the rows, minibatches and noise (default 0)")
    refined = p.add_mutually_exclusive_group()
    refined.add_argument("--per-head", action="store_true",
                         help="also each head's refined LLC (Wang et al. 2024: only its weights sampled)")
    refined.add_argument("--per-component", action="store_true",
                         help="also the refined LLC of every head, MLP, the embeddings and the unembedding")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: CUDA if present)")
    p.add_argument("--csv", help=f"also write the table (with the refined columns under {REFINED_KEY}/) to this "
                                 "CSV file")
    _add_threads_arg(p)
    _add_cache_arg(p)
    p.set_defaults(fn="interp.cli.llc:cmd_llc")

    p = sub.add_parser("circuit", parents=[common],
                       help="trace a circuit method over a run's or checkpoint suite's checkpoints (graphs saved "
                            "in the run, as a graph set of this batch beside the others)")
    p.add_argument("dir", help="a run directory, an analysis directory that holds one run, or a checkpoint-suite "
                               "folder")
    p.add_argument("--method", choices=("path", "eap", "composition", "dla", "logit-lens"), required=True,
                   help="path patching, edge attribution (EAP), weight composition, direct logit attribution or "
                        "the logit lens")
    p.add_argument("--steps", type=OPTIONAL_COUNT, nargs="+", default=None, help="checkpoint steps (default: all)")
    p.add_argument("--period", type=OPTIONAL_COUNT, default=0,
                   help="repeat period of the patching tokens (default 0: n_ctx/2, at most 256)")
    p.add_argument("--sequences", type=COUNT, default=32,
                   help="patching sequences (default 32), computed in chunks where they do not fit in memory at once")
    p.add_argument("--ig-steps", type=COUNT, default=1,
                   help="eap: integrated-gradient steps (default 1: plain EAP; more: EAP-IG, saved as eap-ig)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the patching tokens (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: CUDA if present)")
    p.add_argument("--make-default", action="store_true",
                   help="make these graphs the key's default set, the one `interp view` shows (default: only a "
                        "key's first set is; an analysis's own graphs stay shown)")
    _add_threads_arg(p)
    _add_cache_arg(p)
    p.set_defaults(fn="interp.cli.circuit:cmd_circuit")

    p = sub.add_parser("plot", parents=[common],
                       help="plot logged metrics and cached probes of a run (a checkpoint suite's loss curve too) "
                            "into its figures/")
    p.add_argument("dir", help="a run directory, an analysis or sweep directory (every run below it), or a "
                               "checkpoint-suite folder")
    p.add_argument("--logx", action="store_true", help="logarithmic step axis")
    _add_cache_arg(p)
    p.set_defaults(fn="interp.cli.plot:cmd_plot")

    p = sub.add_parser("view", parents=[common],
                       help="write DIR/view/index.html: an interactive, offline explorer of a run, analysis or "
                            "checkpoint suite with a checkpoint slider")
    p.add_argument("dir", help="a run directory, an analysis directory (its runs and its headline view) or a "
                               "checkpoint-suite folder (step<N> sub-folders saved by transformers; its page has a "
                               "loss curve)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.add_argument("--device", default=None, help="device for the example's attention patterns (default: CUDA "
                                                  "if present)")
    p.add_argument("--text", action="append", default=[], metavar="TEXT",
                   help="an example of your own in the Tokens tab: words of the run's vocab.json, or text for a "
                        "suite's tokenizer (repeatable)")
    p.add_argument("--tokens", action="append", default=[], metavar="IDS",
                   help="an example of your own as comma-separated token ids, e.g. 3,17,5 (repeatable)")
    p.add_argument("--example-batch", default=None, metavar="FILE",
                   help='examples of your own: strict JSON {"tokens": [[id, ...], ...]} or a .safetensors file '
                        "with a 'tokens' tensor [batch, pos]")
    loss = p.add_mutually_exclusive_group()
    loss.add_argument("--loss-text", action="append", default=[], metavar="TEXT",
                      help="the loss curve's batch: text for the suite's tokenizer, all of one token length "
                           "(repeatable; default for a suite: random tokens repeated twice)")
    loss.add_argument("--loss-batch", default=None, metavar="FILE",
                      help="the loss curve's batch: a safetensors file with 'tokens' [batch, pos] "
                           "(interp.metrics.linear_probes.save_batch)")
    _add_threads_arg(p)
    _add_cache_arg(p)
    p.set_defaults(fn="interp.cli.view:cmd_view")
    return parser
