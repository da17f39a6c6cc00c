"""What the explorer shows, read from a run or analysis directory.

Everything comes from the run's own files: `metrics.jsonl`, the probe caches
`probes/<key>.jsonl`, each key's default circuit graph set `circuits/<key>/` and the attention
patterns of one small example sequence at every checkpoint. Those patterns are the
only thing computed here: one fused forward per checkpoint, stored in the run as
`patterns/<example id>/<checkpoint sha256[:16]>.npy` (float16, `[layer, head, query,
key]`), so a page is regenerated from cached files in about a second.

`open_source` checks a directory before anything is computed or written and names
what is missing (`ViewError`); `view_data` returns the page's data as one JSON tree.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from interp import seeding
from interp.analysis import ANALYSIS_FILE
from interp.batches import repeated_tokens
from interp.cache_dirs import cache_dirs, lock_cache_dir
from interp.checkpoints import CheckpointSource, Run
from interp.devices import resolve_device
from interp.errors import InputError, MissingFileError
from interp.files import atomic_write_bytes, atomic_write_json, atomic_write_npy, is_temporary, read_json, sha256_file
from interp.headline import Source, num, nums
from interp.hooks import hook_name
from interp.ids import EdgeId, HeadId
from interp.locking import RunInUseError
from interp.memory import check_forward_memory
from interp.metrics import spans
from interp.metrics.loss_curve import LOSS_KEY, LossBatch, LossCurve, loss_curve
from interp.model import attention_patterns
from interp.pipeline import RUNS_DIR
from interp.probing import batch_hash, cached_computations, probe_cache_files
from interp.run_layout import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LOCK_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    CheckpointError,
)
from interp.suite_layouts import is_suite_folder
from interp.suites import open_suite
from interp.view.stages import REFINED_QUANTITY, refined_head_probe, stages_data

logger = logging.getLogger(__name__)
T = TypeVar("T")

FORMAT = "interp.view/1"
PATTERNS_DIR = "patterns"
READOUTS_DIR = "token_readouts"  # the token strips' per-position readouts (`interp.view.examples`)
EXAMPLE_FILE = "example.json"
MAX_EXAMPLE_LEN = 64  # positions of the example sequence (bounded: the page holds T x T per head and step)
MAX_PATTERN_STEPS = 80  # checkpoints per run whose patterns the page holds (evenly spread, first and last kept)
PATTERN_BUDGET = 6 * 2**20  # bytes of float16 patterns in one page, over all its runs
MAX_SERIES_POINTS = 1500  # points per logged curve (longer logs are thinned evenly, the last point kept)
MAX_EDGES = 300  # edges per circuit key in the page: the strongest over all steps
VECTOR_INPUTS_NOTE = ("no example attention patterns: this run's model reads input vectors (d_input {d_input}) beside "
                      "its tokens, its analysis gives no example with them, and token ids alone are not its task")


class ViewError(InputError):
    """A directory the explorer cannot show; the message says what is missing."""


# --- numbers ---------------------------------------------------------------------------------


def thin(n: int, limit: int) -> list[int]:
    """Indices of at most `limit` of `n` points, evenly spread, first and last kept."""
    if n <= limit:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, limit)})


# --- what a directory holds ------------------------------------------------------------------


def _visible(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != LOCK_FILE and not is_temporary(p.name))


def open_source(path: str | Path, cache: str | Path | None = None) -> Source:
    """The run, analysis or checkpoint suite at `path`, checked: a `ViewError` (or
    `FileNotFoundError`) names what is missing before anything is computed or written.
    `cache`: a suite's results cache root (`open_suite`), ignored for a run or analysis."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: no such directory (expected a run directory, an analysis directory or a "
                               "checkpoint-suite folder)")
    if not path.is_dir():
        raise ViewError(f"{path} is not a directory (expected a run directory, an analysis directory or a "
                        "checkpoint-suite folder)")
    if (path / ANALYSIS_FILE).exists():
        return _open_analysis(path)
    if is_suite_folder(path):  # its step folders' config.json files are not run directories
        return Source(path, "suite", {path.resolve().name: open_suite(path, cache=cache)})
    if _is_suite_checkpoint(path):
        raise ViewError(f"{path} is one checkpoint of the checkpoint suite {path.parent} (a save_pretrained folder, "
                        f"not a run directory): view the whole suite, `interp view {path.parent}`")
    if any((path / marker).exists() for marker in (CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, CHECKPOINTS_DIR)):
        run = Run(path)
        check_run(run)
        return Source(path, "run", {path.name: run})
    entries = _visible(path)
    if not entries:
        raise ViewError(f"{path} is empty: there is no run ({CONFIG_FILE}, {MANIFEST_FILE}, {CHECKPOINTS_DIR}/), "
                        f"analysis ({ANALYSIS_FILE}) or checkpoint suite (step<N>/ sub-folders) to show")
    below = sorted({p.parent for name in (ANALYSIS_FILE, CONFIG_FILE) for p in path.glob(f"*/{name}")
                    if not _is_suite_checkpoint(p.parent)} | {p for p in path.iterdir() if is_suite_folder(p)})
    hint = f"; view one of the directories below it: {', '.join(str(p) for p in below[:4])}" if below else ""
    raise ViewError(f"{path} is neither a run directory (no {CONFIG_FILE}), an analysis directory (no "
                    f"{ANALYSIS_FILE}) nor a checkpoint-suite folder (no step<N>/ sub-folder with a {CONFIG_FILE})"
                    f"{hint}")


def _is_suite_checkpoint(path: Path) -> bool:
    """Whether `path` is one checkpoint folder of a suite (a `save_pretrained` folder beside the
    others, no run files), which a user may take for a run directory."""
    return (path / CONFIG_FILE).is_file() and not any((path / m).exists() for m in (MANIFEST_FILE, METRICS_FILE,
                                                                                    CHECKPOINTS_DIR)) \
        and is_suite_folder(path.parent)


def _open_analysis(path: Path) -> Source:
    record = read_json(path / ANALYSIS_FILE)  # a damaged file is named (RunDamagedError)
    if not isinstance(record, dict) or not isinstance(record.get("analysis"), str):
        raise ViewError(f"{path / ANALYSIS_FILE} does not name an analysis (no 'analysis' key)")
    name = record["analysis"]
    runs_dir = path / RUNS_DIR
    names = sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and not is_temporary(p.name)) \
        if runs_dir.is_dir() else []
    # An empty folder is no run (made by hand, or by a job killed before it wrote anything): left out, said.
    empty = [n for n in names if not _visible(runs_dir / n)]
    names = [n for n in names if n not in empty]
    notes = tuple(f"{RUNS_DIR}/{n}/ is empty (no run files): not shown" for n in empty)
    if not names:
        raise ViewError(f"{path} is an analysis directory ({name}) with no runs: {runs_dir} is "
                        f"{'empty' if runs_dir.is_dir() else 'missing'} (interrupted before its first run; "
                        f"`interp run {name} --out {path} --resume` continues it)")
    if not (path / "results.json").exists():
        raise ViewError(f"{path / 'results.json'} is missing: analysis {name} did not finish (interrupted, failed or "
                        f"still running); finish it with `interp run {name} --out {path} --resume` (the same preset), "
                        f"or view one of its runs, e.g. `interp view {runs_dir / names[0]}`")
    results = read_json(path / "results.json")
    if not isinstance(results, dict):
        raise ViewError(f"{path / 'results.json'} is not a JSON object")
    runs = {}
    for run_name in names:
        run = Run(runs_dir / run_name)
        check_run(run)
        runs[run_name] = run
    return Source(path, "analysis", runs, record, results, notes)


def check_run(run: Run) -> None:
    """Refuse a run the explorer cannot show, naming what is missing or damaged."""
    state = run.inspect()
    if state.config_error == "missing":
        raise ViewError(f"{run.path / CONFIG_FILE} is missing: {run.path} is not a usable run (killed while it was "
                        "created?)")
    if state.config_error:
        raise ViewError(f"{run.path / CONFIG_FILE} is {state.config_error}")
    damage = state.damage()
    if damage:
        raise ViewError(f"{run.path} is damaged: {damage[0]}" + (f" (and {len(damage) - 1} more; `interp info "
                                                                 f"{run.path} --verify` lists them)"
                                                                 if len(damage) > 1 else ""))
    if not state.steps:
        why = "is missing" if not (run.path / MANIFEST_FILE).exists() else "lists none"
        raise ViewError(f"{run.path} has no checkpoint yet: {run.path / MANIFEST_FILE} {why} (killed before its first "
                        "checkpoint, or still training)")
    try:
        run.model_config  # noqa: B018 - a config that describes no model is named here
    except (KeyError, TypeError, ValueError) as err:
        raise ViewError(f"{run.path / CONFIG_FILE} does not describe a model: {err}") from None


# --- the example sequence and its attention patterns -------------------------------------------


VECTOR_INPUTS = ("vectors", "vector_mask")
"""The batch entries beside `tokens` that a model with `d_input > 0` reads (`interp.model.forward`)."""


@dataclass(frozen=True)
class Example:
    """One sequence on which every checkpoint's attention is shown: `period` distinct random
    tokens repeated twice (previous-token and induction heads show on it in any model), or a
    sequence of the run's task (`period` 0). `inputs`: the one-row input vectors and their mask
    (`VECTOR_INPUTS`) of a model that reads vectors beside its tokens; empty otherwise."""

    tokens: tuple[int, ...]
    period: int
    labels: tuple[str, ...]
    description: str
    inputs: Mapping[str, torch.Tensor] = field(default_factory=dict, compare=False)

    def batch(self) -> dict[str, torch.Tensor]:
        return {"tokens": torch.tensor([self.tokens], dtype=torch.long), **self.inputs}

    @property
    def key(self) -> str:
        """The example's id: the probe runner's hash of its batch (input vectors included)."""
        return batch_hash(self.batch())

    def to_json(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "labels": list(self.labels), "period": self.period,
                "description": self.description, "id": self.key, "vectors": bool(self.inputs)}


def token_labels(run: CheckpointSource, tokens: Sequence[int]) -> tuple[str, ...]:
    """Each token's text: from the run's `vocab.json` (a list of strings) where it has one, else
    from the source's tokenizer (a checkpoint suite's), else its id."""
    vocab: list[Any] = []
    path = run.path / "vocab.json"
    if path.exists():
        try:
            loaded = read_json(path)
            vocab = loaded if isinstance(loaded, list) else []
        except ValueError:
            vocab = []
    tokenizer = None if vocab else run.tokenizer
    if tokenizer is not None:
        return tuple(tokenizer.decode([int(t)]) for t in tokens)
    return tuple(str(vocab[t]) if t < len(vocab) and isinstance(vocab[t], str) else str(t) for t in tokens)


def example_for(run: Run, period: int | None = None, seed: int = 0,
                tokens: Sequence[int] | Mapping[str, torch.Tensor] | None = None,
                description: str = "") -> Example:
    """The example sequence of `run`: `tokens` of its task where given (at most
    `MAX_EXAMPLE_LEN`; `period` 0: not a repeat), as token ids or as a one-row batch with the
    input vectors of a model that reads them (`VECTOR_INPUTS`; their positions are labelled
    x1, x2, ...), else `period` (default: half the context, at most `MAX_EXAMPLE_LEN / 2` and
    the vocabulary) distinct random tokens of its vocabulary, repeated twice: each repeated token
    has one earlier occurrence, an unambiguous induction target."""
    cfg = run.model_config
    if tokens is not None:
        length = min(cfg.n_ctx, MAX_EXAMPLE_LEN)
        inputs: dict[str, torch.Tensor] = {}
        if isinstance(tokens, Mapping):
            batch = tokens
            if "tokens" not in batch or batch["tokens"].dim() != 2 or len(batch["tokens"]) != 1:
                raise InputError("example: expected a one-row batch with 'tokens' [1, pos], got "
                                 f"{ {k: list(v.shape) for k, v in batch.items()} }")
            tokens = batch["tokens"][0].tolist()
            inputs = {k: batch[k][:, :length].detach().cpu() for k in VECTOR_INPUTS if k in batch}
            if cfg.d_input and set(inputs) != set(VECTOR_INPUTS):
                raise InputError(f"example: a model with d_input {cfg.d_input} reads {list(VECTOR_INPUTS)}; the "
                                 f"batch has {sorted(batch)}")
        kept = tuple(int(t) for t in tokens[:length])
        labels = list(token_labels(run, kept))
        if inputs:
            for ordinal, position in enumerate(torch.nonzero(inputs["vector_mask"][0]).flatten().tolist(), 1):
                labels[position] = f"x{ordinal}"
        return Example(kept, 0, tuple(labels), description or f"a sequence of the run's task ({len(kept)} tokens)",
                       inputs)
    longest = min(min(cfg.n_ctx, MAX_EXAMPLE_LEN) // 2, cfg.d_vocab)
    if longest < 2:  # a context too short to repeat anything: its random tokens once
        tokens = repeated_tokens(1, cfg.n_ctx, cfg.d_vocab, seeding.generator(seed, seeding.EXAMPLES), 1)[0].tolist()
        return Example(tuple(tokens), cfg.n_ctx, token_labels(run, tokens), f"{cfg.n_ctx} random tokens (seed {seed})")
    period = longest if not period else max(2, min(int(period), longest))
    generator = seeding.generator(seed, seeding.EXAMPLES)
    drawn = repeated_tokens(1, period, cfg.d_vocab, generator, distinct=True)[0].tolist()
    return Example(tuple(drawn), period, token_labels(run, drawn),
                   f"{period} distinct random tokens repeated twice (seed {seed})")


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def checkpoint_file_id(run: CheckpointSource, step: int) -> str:
    """The checkpoint at `step` in the names of the explorer's cache files: 16 hex digits of its
    sha256 (a run's), else of the sha256 of its identity (a suite's `sha256:...` or
    `model@revision`, which holds characters a file name must not)."""
    identity = run.checkpoint_hash(step)
    if _SHA256_HEX.fullmatch(identity):
        return identity[:16]
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def _pattern_file(cache_dir: Path, run: CheckpointSource, example: Example, step: int) -> Path:
    """Where `example`'s patterns at `step` are cached in `cache_dir`, one of the run's cache
    folders (`interp.cache_dirs`: the run, or the folder outside a read-only one)."""
    return cache_dir / PATTERNS_DIR / example.key / f"{checkpoint_file_id(run, step)}.npy"


def digest_file(path: Path) -> Path:
    """Beside each file of the explorer's caches, the sha256 of its bytes as written: an edited
    file is caught."""
    return path.with_suffix(".sha256")


def record_digest(path: Path) -> None:
    """Write the digest of the file just written at `path` (after it: a cut write is caught)."""
    atomic_write_bytes(digest_file(path), sha256_file(path).encode())


def cached_file_problem(path: Path) -> str | None:
    """Why the cached file `path` is not to be trusted (no digest, or edited since), or None."""
    digest = digest_file(path)
    if not digest.exists():
        return f"{path} has no {digest.name} (written by an older version, or the write was cut short)"
    if digest.read_text().strip() != sha256_file(path):
        return f"{path} was edited after it was written (its sha256 does not match {digest.name})"
    return None


CACHED_FILES = {PATTERNS_DIR: "*/*.npy", READOUTS_DIR: "*/*.npz"}
"""The explorer's per-checkpoint caches in a run's cache folders, and their files."""


def pattern_problems(run: Run) -> list[str]:
    """One line per cached explorer file (attention patterns, token readouts) edited since it was
    written (`interp info --verify`; a file without a digest, from an older version, is simply
    recomputed by the next view)."""
    return [p for cache_dir in cache_dirs(run.path) for folder, files in CACHED_FILES.items()
            for path in sorted((cache_dir / folder).glob(files))
            if digest_file(path).exists() and (p := cached_file_problem(path))]


def cached_per_checkpoint(run: Run, steps: Sequence[int], load: Callable[[Path, int], T | None],
                          compute: Callable[[list[int], Path | None], dict[int, T]], cache: bool = True,
                          what: str = "results") -> dict[int, T]:
    """A per-checkpoint result of the explorer at each of `steps`: `load(cache_dir, step)` from
    the run's cache folders where present (the run's, then the one outside it,
    `interp.cache_dirs`); the rest from `compute(steps, cache_dir)`, which stores each result in
    `cache_dir`, held locked (with `cache`; a read-only run's is outside it). A run another
    process still writes after a brief wait, or one this process cannot write, is computed with
    `cache_dir` None, storing nothing (a warning names `what`)."""
    found: dict[int, T] = {}
    for cache_dir in cache_dirs(run.path):
        for step in steps:
            if step not in found and (value := load(cache_dir, step)) is not None:
                found[step] = value
    todo = [s for s in steps if s not in found]
    if todo and cache:
        try:
            with lock_cache_dir(run.path) as cache_dir:
                found.update(compute(todo, cache_dir))
        except RunInUseError as err:
            logger.warning("%s: %s are computed, not cached", err, what)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            logger.warning("%s is not writable (%s): %s are computed, not cached", run.path, err, what)
    todo = [s for s in steps if s not in found]
    if todo:
        found.update(compute(todo, None))
    return found


def _load_pattern(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    if not path.exists():
        return None
    problem = cached_file_problem(path)
    if problem is not None:  # a cache: an untrusted file costs a recomputation, never a wrong picture
        logger.warning("%s; recomputed", problem)
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:  # a damaged cache file costs a recomputation, never an error
        logger.warning("%s: unreadable (%s); recomputed", path, err)
        return None
    if array.dtype != np.float16 or array.shape != shape:
        return None
    return array


def example_patterns(
    run: Run,
    example: Example,
    steps: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    cache: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """`[step, layer, head, query, key]` float16 attention of `example` at `steps` (default:
    every checkpoint), from the run's pattern cache where present (the run's, then the one
    outside it, `interp.cache_dirs`); the rest is computed (one forward per checkpoint) and,
    with `cache`, stored in the run under its writer lock (a read-only run's: outside it). A
    run that another process still writes after a brief wait is computed without storing."""
    cfg = run.model_config
    steps = list(run.steps if steps is None else steps)
    length = len(example.tokens)
    shape = (cfg.n_layers, cfg.n_heads, length, length)
    found = cached_per_checkpoint(
        run, steps, lambda cache_dir, step: _load_pattern(_pattern_file(cache_dir, run, example, step), shape),
        lambda todo, cache_dir: _compute_patterns(run, example, todo, device, cache_dir, progress), cache, "patterns")
    return np.stack([found[s] for s in steps]) if steps else np.zeros((0, *shape), np.float16)


def _compute_patterns(run: Run, example: Example, steps: list[int], device: Any, cache_dir: Path | None,
                      progress: Callable[[int, int], None] | None) -> dict[int, np.ndarray]:
    """`example`'s patterns at `steps`, each stored in `cache_dir` (held locked) unless None."""
    device = resolve_device(device)
    # Before the first checkpoint loads: one forward recording every layer's pattern, with the
    # float16 patterns of every step kept (a quarter of a float32 copy each).
    check_forward_memory(run.model_config, example.batch(),
                         [hook_name("pattern", layer) for layer in range(run.model_config.n_layers)], device,
                         kept_copies=(len(steps) + 3) // 4)
    batch = {k: v.to(device) for k, v in example.batch().items()}
    if cache_dir is not None:
        folder = cache_dir / PATTERNS_DIR / example.key
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / EXAMPLE_FILE).exists():
            atomic_write_json(folder / EXAMPLE_FILE, example.to_json())
    out: dict[int, np.ndarray] = {}
    model = None
    for i, step in enumerate(steps):
        model = run.load(step, device=device, into=model)
        layers = attention_patterns(model, batch, fused=isinstance(run, Run))  # a suite's model: the bridge's hooks
        array = torch.stack([p[0] for p in layers]).float().cpu().numpy().astype(np.float16)
        if cache_dir is not None:
            path = _pattern_file(cache_dir, run, example, step)
            atomic_write_npy(path, array)
            record_digest(path)
        out[step] = array
        if progress is not None:
            progress(i + 1, len(steps))
    return out


def pattern_scores(patterns: np.ndarray, period: int) -> dict[str, np.ndarray]:
    """`[step, layer, head]` previous-token and induction attention of `[step, layer, head, q, k]`
    patterns of a sequence repeated with `period` (as `interp.metrics.heads` scores them)."""
    p = patterns.astype(np.float32)
    length = p.shape[-1]
    q = np.arange(1, length)
    prev = p[..., q, q - 1].mean(axis=-1) if length > 1 else np.full(p.shape[:3], np.nan)
    q = np.arange(period, length)
    induction = p[..., q, q - period + 1].mean(axis=-1) if len(q) and period >= 2 else np.full(p.shape[:3], np.nan)
    return {"prev_token": prev, "induction": induction}


def encode_patterns(patterns: np.ndarray) -> list[str]:
    """Each step's `[layer, head, q, k]` causal pattern as base64 of its lower triangles
    (q >= k, row by row), little-endian float16: half the bytes of the full square."""
    length = patterns.shape[-1]
    rows, cols = np.tril_indices(length)
    lower = patterns[..., rows, cols].astype("<f2")
    return [base64.b64encode(step.tobytes()).decode("ascii") for step in lower]


# --- metrics, probe caches, circuits -------------------------------------------------------------


def metric_series(run: Run) -> dict[str, dict[str, list[Any]]]:
    """Every numeric logged metric as `{"steps", "values"}` (long logs thinned)."""
    rows = run.metrics()
    keys = sorted({k for r in rows for k, v in r.items() if k != "step" and isinstance(v, int | float)
                   and not isinstance(v, bool)})
    out = {}
    for key in keys:
        picked = [(r["step"], r[key]) for r in rows if key in r and isinstance(r.get("step"), int)]
        keep = thin(len(picked), MAX_SERIES_POINTS)
        out[key] = {"steps": [picked[i][0] for i in keep], "values": [num(picked[i][1]) for i in keep]}
    return out


def head_order(name: str) -> tuple[int, int, str]:
    if HeadId.is_head(name):
        head = HeadId.parse(name)
        return head.layer, head.head, ""
    return 1 << 30, 0, name


def cached_probes(run: Run) -> dict[str, dict[str, Any]]:
    """The probe caches of `run`: for each key, its most complete computation at the current
    checkpoints (`interp.probing.cached_computations`: one probe, batch and numerics, the
    latest on a tie), as `{"probe", "about", "steps", "columns", "values": [step][column], "heads"}`.
    Damaged or edited rows are skipped (a cache can be recomputed)."""
    out: dict[str, dict[str, Any]] = {}
    for key in sorted({cache.stem for cache in probe_cache_files(run)}):
        found = cached_computations(run, key)
        if not found:
            continue
        best = found[0]
        columns = sorted(best.table.columns, key=head_order)
        order = [best.table.columns.index(c) for c in columns]
        out[key] = {
            "probe": best.probe, "about": best.describe(), "steps": [int(s) for s in best.table.steps],
            "columns": columns, "values": [nums(row[order]) for row in best.table.values],
            "heads": bool(columns) and all(HeadId.is_head(c) for c in columns),
        }
        refined = refined_head_probe(out[key])
        if refined is not None:  # a refined LLC's heads, shown as a per-head probe beside its other columns
            out[f"{key}/{REFINED_QUANTITY}"] = refined
    return out


def _edge_record(edge: EdgeId) -> dict[str, Any]:
    return {"edge": str(edge), "sender": str(edge.sender), "receiver": str(edge.receiver), "input": edge.input}


def saved_circuits(run: Run) -> tuple[list[dict[str, Any]], list[str]]:
    """The circuit graphs saved in the run: each key's default graph set (`circuits/<key>/`,
    an analysis's own graphs; see `interp.circuits.graph`) as `{"key", "graph_set", "method",
    "metric", "source", "steps", "nodes", "positions", "edges", "weights": [step][edge]}` with
    its `MAX_EDGES` strongest edges; and notes: a key that could not be read, a key's other
    sets, steps whose checkpoint was rewritten after its graph was computed."""
    from interp.circuits.graph import graph_dir, graph_keys, list_graph_sets, load_graphs  # read only when used

    out, notes = [], []
    for key in graph_keys(run.path):
        folder = graph_dir(run.path, key)
        try:
            sets = list_graph_sets(run.path, key)
            shown = sets[0]  # the default
            graphs = load_graphs(run.path, key, graph_set=shown.set_id)
        except (OSError, ValueError, KeyError, TypeError) as err:
            notes.append(f"{folder}: not shown ({type(err).__name__}: {err})")
            continue
        if not graphs:
            continue
        if len(sets) > 1:
            notes.append(f"{folder}: showing its default graph set {shown.summary()}; also saved: "
                         + "; ".join(s.summary() for s in sets[1:]) + " (load_graphs(..., graph_set=ID))")
        rewritten = shown.rewritten_steps(run)
        if rewritten:
            notes.append(f"{shown.folder}: the graphs at steps {rewritten} were computed on weights since rewritten")
        edges = sorted({e for g in graphs for e in g.weights}, key=str)
        strength = {e: max((abs(g.weights.get(e, 0.0)) for g in graphs if math.isfinite(g.weights.get(e, 0.0))),
                           default=0.0) for e in edges}
        edges = sorted(sorted(edges, key=lambda e: -strength[e])[:MAX_EDGES], key=str)
        shape = graphs[0].shape
        out.append({
            "key": key, "graph_set": str(shown.set_id), "method": graphs[0].method, "metric": graphs[0].metric,
            "source": (shown.folder.relative_to(run.path) if shown.folder.is_relative_to(run.path)
                       else shown.folder).as_posix(), "steps": [g.step for g in graphs],
            **_layout(shape), "edges": [_edge_record(e) for e in edges],
            "weights": [[num(g.weights.get(e)) for e in edges] for g in graphs],
        })
    return out, notes


def _layout(shape: Any) -> dict[str, Any]:
    nodes = shape.nodes()
    return {"nodes": [str(n) for n in nodes], "positions": {str(n): list(shape.position(n)) for n in nodes}}


def attention_circuit(n_layers: int, n_heads: int, steps: Sequence[int],
                      scores: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The fallback circuit graph, from attention metrics on the example sequence: an edge from
    every head to every later-layer head's key input, weighted by the sender's previous-token
    score times the receiver's induction score (K-composition of an induction circuit). Drawn
    with heads only (its edges join heads; an MLP node between two layers would sit on them) and
    on the weights' own scale, `scale` 1 (both scores are attention fractions): near-zero
    weights draw thin, not at the width of the largest."""
    from interp.circuits.graph import ModelShape

    shape = ModelShape(n_layers, n_heads, attn_only=True)
    heads = [HeadId(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    edges = [EdgeId(a, b, "k") for a in heads for b in heads if a.layer < b.layer]
    prev, induction = scores["prev_token"], scores["induction"]
    weights = [[num(prev[i, e.sender.layer, e.sender.head] * induction[i, e.receiver.layer, e.receiver.head])
                for e in edges] for i in range(len(steps))]
    return {"key": "attention", "method": "attention metrics",
            "metric": "previous-token score of the sender x induction score of the receiver, on the example sequence",
            "source": "example attention patterns (no circuits/ graphs saved in this run)", "steps": list(steps),
            **_layout(shape), "edges": [_edge_record(e) for e in edges], "weights": weights, "scale": 1.0}


def phase_marks(series: Mapping[str, Mapping[str, list[Any]]]) -> list[dict[str, Any]]:
    """Phase changes found in the run's evaluation loss curves (`spans.phase_change`: a drop
    of at least 0.5 nats), one mark per curve, at most three."""
    marks = []
    for key, curve in series.items():
        if "loss" not in key or key.startswith("train/"):
            continue
        pairs = [(s, v) for s, v in zip(curve["steps"], curve["values"], strict=True) if v is not None]
        if len(pairs) < 4:
            continue
        step, before, after = spans.phase_change(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
        label = f"phase change in {key} ({before:.2f} -> {after:.2f})"
        if step is None:
            continue
        same = next((m for m in marks if m["step"] == step), None)
        if same is not None:
            same["label"] += f"; {label}"
        else:
            marks.append({"step": int(step), "label": label})
    return sorted(marks, key=lambda m: m["step"])[:3]


# --- one run's data ------------------------------------------------------------------------------


def run_status(run: CheckpointSource) -> str:
    if not isinstance(run, Run):  # a checkpoint suite: no training config says where it was meant to end
        return f"checkpoint suite: {len(run.steps)} checkpoints (steps {run.steps[0]} .. {run.steps[-1]})"
    total = run.config.get("train", {}).get("steps")
    last = run.committed_steps[-1]  # where the run got to, whether or not its weights were kept there
    if last == total:
        return f"complete ({last} steps)"
    try:
        stopped = bool(run.load_training_state(last).get("stopped"))
    except (CheckpointError, OSError, RuntimeError):
        stopped = False
    return f"stopped early at step {last} of {total}" if stopped else \
        f"INCOMPLETE: last checkpoint at step {last} of {total} (interrupted, paused or still training)"


def loss_record(curve: LossCurve) -> dict[str, Any]:
    """A loss curve (`interp.metrics.loss_curve`) as a cached probe of the page, its batch named in `about`."""
    columns = sorted(curve.columns)
    return {"probe": curve.probe, "about": curve.caption(), "batch_about": curve.about, "steps": curve.steps,
            "columns": columns, "values": [nums([curve.columns[c][i] for c in columns])
                                           for i in range(len(curve.steps))], "heads": False}


def run_data(
    run: Run,
    name: str,
    period: int | None = None,
    patterns: bool = True,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    example: Example | None = None,
    loss: LossBatch | None = None,
) -> dict[str, Any]:
    """Everything the page shows of one run or checkpoint suite (see `view_data`); `example`
    default: `example_for(run, period)`; `loss`: a batch whose loss curve the page shows (computed
    where not cached, under the probe key `loss`), as a suite's has."""
    cfg = run.model_config
    steps = run.steps
    series = metric_series(run)
    example = example or example_for(run, period)
    shown_steps = pattern_steps(run, example) if patterns and _readable(cfg, example) else []
    stacked = example_patterns(run, example, shown_steps, device=device, progress=progress) if shown_steps \
        else None
    probes = cached_probes(run)
    loss_series: dict[str, dict[str, list[Any]]] = {}
    if loss is not None:  # the page's own batch, not whichever the cache holds most of
        probes[LOSS_KEY] = loss_record(loss_curve(run, loss, device=device, progress=progress is not None))
        record = probes[LOSS_KEY]
        loss_series = {f"{LOSS_KEY}/{c}": {"steps": record["steps"], "values": [row[j] for row in record["values"]]}
                       for j, c in enumerate(record["columns"])}
    notes: list[str] = []
    if stacked is not None:
        scores = pattern_scores(stacked, example.period)
        for key, grid in scores.items():
            columns = [str(HeadId(layer, h)) for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
            probes[f"example.{key}"] = {
                "probe": f"{key} attention on the example sequence", "steps": shown_steps, "columns": columns,
                "values": [nums(grid[i].reshape(-1)) for i in range(len(shown_steps))], "heads": True}
    else:
        notes.append(VECTOR_INPUTS_NOTE.format(d_input=cfg.d_input) if not _readable(cfg, example)
                     else "no example attention patterns in this page (its size budget went to other runs)")
    patterns_note = None if stacked is not None else notes[-1]
    circuits, circuit_notes = saved_circuits(run)
    notes += circuit_notes
    if not circuits and stacked is not None and cfg.n_layers > 1:
        circuits = [attention_circuit(cfg.n_layers, cfg.n_heads, shown_steps, scores)]
    return {
        "name": name, "path": str(run.path), "steps": steps, "status": run_status(run),
        "model": {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_model": cfg.d_model, "d_vocab": cfg.d_vocab,
                  "n_ctx": cfg.n_ctx, "attn_only": cfg.attn_only},
        "metrics": series, "probes": probes, "marks": phase_marks({**series, **loss_series}),
        "example": example.to_json(), "patterns_note": patterns_note,
        "patterns": None if stacked is None else {
            "steps": shown_steps, "shape": list(stacked.shape[1:]), "encoding": "float16-lower-triangle-base64",
            "data": encode_patterns(stacked)},
        "circuits": circuits, "notes": notes, "stages": stages_data(run, {**series, **loss_series}),
    }


def _readable(cfg: Any, example: Example) -> bool:
    """Whether the model reads `example` as its task: a model with input vectors needs them."""
    return not cfg.d_input or bool(example.inputs)


def _step_pattern_bytes(cfg: Any, length: int) -> int:
    return cfg.n_layers * cfg.n_heads * length * (length + 1)


def pattern_steps(run: CheckpointSource, example: Example) -> list[int]:
    """The checkpoints whose patterns of `example` the page holds: at most `MAX_PATTERN_STEPS`
    and at most what `PATTERN_BUDGET` holds (never fewer than the first and last), evenly
    spread: a large model (a Pythia suite) gets fewer steps, and costs fewer loads."""
    per_step = _step_pattern_bytes(run.model_config, len(example.tokens))
    limit = max(2, min(MAX_PATTERN_STEPS, PATTERN_BUDGET // per_step))
    return [run.steps[i] for i in thin(len(run.steps), limit)]


def pattern_bytes(run: CheckpointSource, example: Example) -> int:
    """Bytes of float16 lower-triangle patterns `run_data` puts in the page for `run`."""
    cfg = run.model_config
    if not _readable(cfg, example):  # no patterns (`VECTOR_INPUTS_NOTE`)
        return 0
    return len(pattern_steps(run, example)) * _step_pattern_bytes(cfg, len(example.tokens))
