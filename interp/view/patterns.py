"""The example sequence of a run and its attention patterns at the checkpoints a page shows.

The example is `period` distinct random tokens repeated twice, or a sequence of the run's task
(`example_for`). Its patterns take one fused forward per checkpoint and are cached in the run as
`patterns/<example id>/<checkpoint sha256[:16]>.npy` (float16, `[layer, head, query, key]`;
`interp.view.checkpoint_cache`), so a page is regenerated from cached files in about a second.
`pattern_steps` and `pattern_bytes` bound how many checkpoints' patterns a page holds;
`encode_patterns` writes them for the page.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interp import seeding
from interp.batches import repeated_tokens
from interp.checkpoints import CheckpointSource, Run
from interp.devices import resolve_device
from interp.errors import InputError
from interp.files import atomic_write_json, atomic_write_npy, read_json
from interp.hooks import hook_name
from interp.memory import check_forward_memory
from interp.model import attention_patterns
from interp.probe_cache import batch_hash
from interp.view.checkpoint_cache import (
    PATTERNS_DIR,
    cached_file_problem,
    cached_per_checkpoint,
    checkpoint_file_id,
    record_digest,
    thin,
)

logger = logging.getLogger(__name__)

EXAMPLE_FILE = "example.json"
MAX_EXAMPLE_LEN = 64  # positions of the example sequence (bounded: the page holds T x T per head and step)
MAX_PATTERN_STEPS = 80  # checkpoints per run whose patterns the page holds (evenly spread, first and last kept)
PATTERN_BUDGET = 6 * 2**20  # bytes of float16 patterns in one page, over all its runs


# --- the example sequence ----------------------------------------------------------------------


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


# --- its attention patterns, cached per checkpoint ---------------------------------------------


def _pattern_file(cache_dir: Path, run: CheckpointSource, example: Example, step: int) -> Path:
    """Where `example`'s patterns at `step` are cached in `cache_dir`, one of the run's cache
    folders (`interp.cache_dirs`: the run, or the folder outside a read-only one)."""
    return cache_dir / PATTERNS_DIR / example.key / f"{checkpoint_file_id(run, step)}.npy"


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


# --- what the page holds -------------------------------------------------------------------------


def reads_example(cfg: Any, example: Example) -> bool:
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
    if not reads_example(cfg, example):  # no patterns (`interp.view.data.VECTOR_INPUTS_NOTE`)
        return 0
    return len(pattern_steps(run, example)) * _step_pattern_bytes(cfg, len(example.tokens))
