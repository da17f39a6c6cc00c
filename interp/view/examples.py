"""Your own inputs in the explorer: token sequences given as `--text`, `--tokens` or
`--example-batch FILE`, checked against each run, and what the token strip shows of them.

At each (thinned) checkpoint and for each example, one forward pass
(`interp.circuits.readout.position_readout`) gives per position the loss of the next token,
the top-k predictions, the logit lens of every residual-stream entry and the direct logit
attribution of every head and MLP. It is cached in the run like the attention patterns
(`interp.view.patterns.example_patterns`): `token_readouts/<example id>/<checkpoint sha256[:16]>.npz`
with its sha256 beside it, written under the run's lock (a read-only run's: outside it).

`--loss-text`/`--loss-batch` (`LossInput`) choose the batch of the page's loss curve
(`interp.metrics.loss_curve`), a checkpoint suite's by default.

An example batch file is either strict JSON `{"tokens": [[id, ...], ...]}` or a
`.safetensors` file holding a `tokens` integer tensor `[batch, pos]` (or `[pos]`), the key a
`Batch` uses. `--text` needs a tokenizer: a checkpoint suite's, or a run's `vocab.json` (a word list, e.g.
the biographies task's), splitting the text on white space; runs of synthetic tasks have none.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interp.checkpoints import CheckpointSource, Run
from interp.circuits.readout import position_readout
from interp.devices import resolve_device
from interp.errors import InputError
from interp.files import atomic_write_bytes, loads_json, read_json
from interp.hooks import hook_name
from interp.memory import check_forward_memory, parameter_count
from interp.metrics.loss_curve import LossBatch, file_loss_batch, repeated_loss_batch, text_loss_batch
from interp.view.checkpoint_cache import (
    READOUTS_DIR,
    cached_file_problem,
    cached_per_checkpoint,
    checkpoint_file_id,
    record_digest,
    thin,
)
from interp.view.patterns import Example, token_labels

logger = logging.getLogger(__name__)

TOP_K = 5  # predictions kept per position
MAX_STRIP_LEN = 128  # tokens of one example (bounded: the page holds every position at every shown step)
MAX_USER_EXAMPLES = 8  # examples of one view, over --text, --tokens and --example-batch
MAX_STRIP_STEPS = 40  # checkpoints per run whose readouts the page holds (evenly spread, first and last kept)
STRIP_BUDGET = 2 * 2**20  # bytes of token strips in one page, over all its runs (the opened run always has its own)
_ARRAYS = ("losses", "top_ids", "top_probs", "lens_probs", "lens_ranks", "lens_top", "dla")
_INTEGER = {"top_ids", "lens_ranks", "lens_top"}


@dataclass(frozen=True)
class ExampleInput:
    """One example as the user gave it: token ids or text (tokenized per run), and `flag`, the
    option or file entry it came from (named in errors)."""

    flag: str
    tokens: tuple[int, ...] | None = None
    text: str | None = None


def parse_tokens(value: str, flag: str = "--tokens") -> ExampleInput:
    """`"3,17,5"` as an example (ids are checked against each run later, by `resolve_examples`)."""
    parts = [p.strip() for p in value.split(",")]
    if not value.strip() or any(not p.lstrip("-").isdigit() for p in parts):
        raise InputError(f"{flag}: expected comma-separated token ids like 3,17,5, got {value!r}")
    return ExampleInput(flag, tokens=tuple(int(p) for p in parts))


def read_example_batch(path: str | Path) -> list[ExampleInput]:
    """The examples of an example batch file: strict JSON `{"tokens": [[id, ...], ...]}` or a
    `.safetensors` file with a `tokens` integer tensor `[batch, pos]` or `[pos]`."""
    path = Path(path)
    flag = f"--example-batch {path}"
    if not path.is_file():
        raise InputError(f"{flag}: no such file (expected a .json or .safetensors file of token ids)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise InputError(f"{flag}: not a readable safetensors file ({err})") from None
        tokens = tensors.get("tokens")
        if tokens is None or tokens.dim() not in (1, 2) or tokens.is_floating_point() or tokens.is_complex():
            raise InputError(f"{flag}: expected an integer tensor 'tokens' of shape [batch, pos] or [pos], got "
                             + ("none" if tokens is None else f"{tokens.dtype} of shape {list(tokens.shape)}"))
        rows = tokens.reshape(-1, tokens.shape[-1]).tolist()
    else:
        try:
            record = loads_json(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as err:
            raise InputError(f"{flag}: not strict JSON ({err})") from None
        rows = record.get("tokens") if isinstance(record, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, list) and all(
                isinstance(t, int) and not isinstance(t, bool) for t in r) for r in rows):
            raise InputError(f'{flag}: expected {{"tokens": [[id, ...], ...]}} (lists of integer token ids)')
    if not rows:
        raise InputError(f"{flag}: expected at least one sequence of token ids, got none")
    return [ExampleInput(f"{flag} sequence {i}", tokens=tuple(int(t) for t in row)) for i, row in enumerate(rows)]


def resolve_examples(run: Run, inputs: Sequence[ExampleInput]) -> list[Example]:
    """`inputs` as examples of `run`, each checked (empty, too long, ids outside the vocabulary,
    text without a tokenizer: an `InputError` naming its flag) before anything is computed."""
    if len(inputs) > MAX_USER_EXAMPLES:
        raise InputError(f"{inputs[MAX_USER_EXAMPLES].flag}: expected at most {MAX_USER_EXAMPLES} examples in one "
                         f"view, got {len(inputs)}")
    cfg = run.model_config
    longest = min(cfg.n_ctx, MAX_STRIP_LEN)
    out = []
    for given in inputs:
        tokens = _tokenize(run, given) if given.text is not None else given.tokens or ()
        if not tokens:
            raise InputError(f"{given.flag}: expected at least one token, got none")
        if len(tokens) > longest:
            raise InputError(f"{given.flag}: expected at most {longest} tokens (the model's n_ctx is {cfg.n_ctx}, the "
                             f"page's limit {MAX_STRIP_LEN}), got {len(tokens)}")
        bad = next((t for t in tokens if not 0 <= t < cfg.d_vocab), None)
        if bad is not None:
            raise InputError(f"{given.flag}: expected token ids in 0..{cfg.d_vocab - 1} (the vocabulary of "
                             f"{run.path.name}), got {bad}")
        what = f"text {given.text!r}" if given.text is not None else f"{len(tokens)} given tokens"
        out.append(Example(tuple(tokens), 0, token_labels(run, tokens), f"your input ({what}; {given.flag})"))
    return out


def _tokenize(run: CheckpointSource, given: ExampleInput) -> tuple[int, ...]:
    """`given.text` by the source's tokenizer (a checkpoint suite's), else split on white space,
    each word looked up in the run's `vocab.json`."""
    path = run.path / "vocab.json"
    vocab = read_json(path) if path.exists() else None
    if not isinstance(vocab, list) and run.tokenizer is not None:
        return tuple(int(t) for t in run.tokenizer(given.text)["input_ids"])
    if not isinstance(vocab, list):
        raise InputError(f"{given.flag}: run {run.path.name} has no tokenizer (no vocab.json: a run of a synthetic "
                         "task has none); give token ids instead: --tokens 3,17,5 or --example-batch FILE")
    index = {word: i for i, word in enumerate(vocab) if isinstance(word, str)}
    missing = next((w for w in given.text.split() if w not in index), None)
    if missing is not None:
        raise InputError(f"{given.flag}: expected words of the vocabulary of {run.path.name} (vocab.json), got "
                         f"{missing!r}")
    return tuple(index[w] for w in given.text.split())


@dataclass(frozen=True)
class LossInput:
    """The batch of a page's loss curve as the user gave it: texts (`--loss-text`, tokenized by
    the source's tokenizer, of one token length) or a batch file (`--loss-batch`, safetensors)."""

    texts: tuple[str, ...] = ()
    batch_file: Path | None = None


def resolve_loss_batch(run: CheckpointSource, given: LossInput | None, default: bool) -> LossBatch | None:
    """The batch of `run`'s loss curve: the user's (checked against the model before anything is
    computed), else with `default` (a checkpoint suite) random tokens repeated twice, else none."""
    if given is not None and given.texts and given.batch_file is not None:
        raise InputError("--loss-text, --loss-batch: expected one of them, got both")
    if given is not None and given.texts:
        return text_loss_batch(run, given.texts)
    if given is not None and given.batch_file is not None:
        return file_loss_batch(run, given.batch_file)
    return repeated_loss_batch(run.model_config) if default else None


# --- readouts per checkpoint, cached in the run ------------------------------------------------


def _readout_file(cache_dir: Path, run: Run, example: Example, step: int) -> Path:
    return cache_dir / READOUTS_DIR / example.key / f"{checkpoint_file_id(run, step)}.npz"


def _load_readout(path: Path, length: int) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    problem = cached_file_problem(path)
    if problem is not None:  # a cache: an untrusted file costs a recomputation, never a wrong strip
        logger.warning("%s; recomputed", problem)
        return None
    try:
        with np.load(path, allow_pickle=False) as loaded:
            arrays = {k: loaded[k] for k in loaded.files}
    except (OSError, ValueError) as err:
        logger.warning("%s: unreadable (%s); recomputed", path, err)
        return None
    if set(arrays) != {*_ARRAYS, "lens_labels", "components"} or arrays["losses"].shape != (length,):
        return None
    return arrays


def token_readouts(run: Run, example: Example, steps: Sequence[int], device: str | torch.device | None = None,
                   cache: bool = True) -> list[dict[str, np.ndarray]]:
    """`example`'s `position_readout` at each of `steps` (batch axis dropped, float32 and int64
    arrays, with `lens_labels` and `components`), from the run's cache where present; the rest is
    computed and, with `cache`, stored as the attention patterns are (`example_patterns`)."""
    found = cached_per_checkpoint(
        run, steps, lambda cache_dir, step: _load_readout(_readout_file(cache_dir, run, example, step),
                                                          len(example.tokens)),
        lambda todo, cache_dir: _compute(run, example, todo, device, cache_dir), cache, "token readouts")
    return [found[s] for s in steps]


def _compute(run: Run, example: Example, steps: list[int], device: Any,
             cache_dir: Path | None) -> dict[int, dict[str, np.ndarray]]:
    device = resolve_device(device)
    cfg = run.model_config
    # run_with_cache records every hook; the folded copy doubles the parameters (counted as a pass of its own).
    hooks = [hook_name(kind, layer) for layer in range(cfg.n_layers) for kind in ("resid_pre", "attn_out", "z",
                                                                                 "pattern")]
    check_forward_memory(cfg, example.batch(), hooks, device,
                         own_passes={"folded copy of the model": 4 * parameter_count(cfg)})
    batch = {k: v.to(device) for k, v in example.batch().items()}
    out: dict[int, dict[str, np.ndarray]] = {}
    model = None
    for step in steps:
        model = run.load(step, device=device, into=model)
        readout = position_readout(model, batch, TOP_K)
        arrays = {name: getattr(readout, name)[..., 0, :].cpu().numpy() if name in ("lens_probs", "lens_ranks",
                                                                                      "lens_top", "dla")
                  else getattr(readout, name)[0].cpu().numpy() for name in _ARRAYS}
        arrays = {k: v.astype(np.int64 if k in _INTEGER else np.float32) for k, v in arrays.items()}
        arrays["lens_labels"] = np.array(readout.lens_labels)
        arrays["components"] = np.array(readout.components)
        if cache_dir is not None:
            path = _readout_file(cache_dir, run, example, step)
            path.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            atomic_write_bytes(path, buffer.getvalue())
            record_digest(path)
        out[step] = arrays
    return out


# --- what the page holds -------------------------------------------------------------------------


def strip_steps(run: Run) -> list[int]:
    return [run.steps[i] for i in thin(len(run.steps), MAX_STRIP_STEPS)]


def _id_dtype(d_vocab: int) -> str:
    return "<u2" if d_vocab <= 2**16 else "<i4"


def strip_bytes(run: Run, examples: Sequence[Example]) -> int:
    """Bytes (base64) of the token strips `strip_data` puts in the page for `run`."""
    cfg = run.model_config
    ids = 2 if _id_dtype(cfg.d_vocab) == "<u2" else 4
    components = cfg.n_layers * cfg.n_heads + (0 if cfg.attn_only else cfg.n_layers) + 2
    per_position = 2 + TOP_K * (2 + ids) + (cfg.n_layers + 1) * (2 + 2 * ids) + components * 2
    return len(strip_steps(run)) * sum(len(e.tokens) for e in examples) * per_position * 4 // 3


def _encode(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array.astype(dtype)).tobytes()).decode("ascii")


def strip_data(run: Run, examples: Sequence[tuple[str, Example]], device: str | torch.device | None = None,
               cache: bool = True) -> dict[str, Any]:
    """The token strips of `(source, example)` pairs (`source`: "task" or "input") at
    `strip_steps(run)`: per example and step, base64 little-endian arrays (float16 values;
    token ids and ranks as `id_dtype`) of `losses [pos]`, `top_ids`/`top_probs [pos, k]`,
    `lens_probs`/`lens_ranks`/`lens_top [entry, pos]` and `dla [component, pos]`; and `vocab`,
    the label of every token id shown."""
    cfg = run.model_config
    steps = strip_steps(run)
    id_dtype = _id_dtype(cfg.d_vocab)
    shown: set[int] = set()
    records, lens_labels, components = [], [], []
    for source, example in examples:
        readouts = token_readouts(run, example, steps, device=device, cache=cache)
        lens_labels, components = readouts[0]["lens_labels"].tolist(), readouts[0]["components"].tolist()
        for r in readouts:
            shown.update(r["top_ids"].ravel().tolist())
            shown.update(r["lens_top"].ravel().tolist())
        shown.update(example.tokens)
        largest = max(float(np.nanmax(r["losses"])) for r in readouts)
        records.append({
            "id": example.key, "source": source, "description": example.description, "tokens": list(example.tokens),
            "labels": list(example.labels), "loss_max": round(largest, 3),
            **{name: [_encode(r[name], id_dtype if name in _INTEGER else "<f2") for r in readouts]
               for name in _ARRAYS}})
    ordered = sorted(shown)
    return {"steps": steps, "k": TOP_K, "id_dtype": "uint16" if id_dtype == "<u2" else "int32",
            "lens": lens_labels, "components": components,
            "vocab": dict(zip((str(t) for t in ordered), token_labels(run, ordered), strict=True)),
            "examples": records}


def add_token_strips(runs: dict[str, dict[str, Any]], source_runs: dict[str, Run], order: Sequence[str],
                     task_example: Any, inputs: dict[str, list[Example]],
                     device: str | torch.device | None = None) -> None:
    """Put each run's token strips (`strip_data`: its task example, then the user's) in its page
    data as `strip`, runs in `order` while `STRIP_BUDGET` lasts (the first always); the rest get
    `strip: None` and a note."""
    budget = STRIP_BUDGET
    for i, name in enumerate(order):
        run = source_runs[name]
        examples = [("task", task_example(run)), *(("input", e) for e in inputs[name])]
        cost = strip_bytes(run, [e for _, e in examples])
        if not run.steps:  # its checkpoint policy kept no weights (the job's results are its own files)
            runs[name]["strip"] = None
            runs[name]["notes"].append("no token strips: this run keeps no weights (its checkpoint policy)")
            continue
        if i and cost > budget:
            runs[name]["strip"] = None
            runs[name]["notes"].append("no token strips in this page (its size budget went to other runs)")
            continue
        budget -= cost
        runs[name]["strip"] = strip_data(run, examples, device=device)
