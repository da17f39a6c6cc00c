"""A probe batch before anything loads: text tokenized into one (`text_batch`), token ids
checked against the model's context and vocabulary (`check_batch_fits`), and the memory the
probes need on it, with the rows per chunk where the whole batch does not fit
(`probe_chunk_rows`, which `interp.probing.probe` and the CLI's checks call)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

import torch

from interp.checkpoints import CheckpointSource
from interp.errors import InputError
from interp.memory import check_forward_memory, forward_chunk_rows
from interp.model import Batch, ModelConfig

if TYPE_CHECKING:  # interp.probing imports this module; Probe only annotates here
    from interp.probing import Probe

Text = str | Sequence[str]
"""A probe batch as text: one string, or several that tokenize to the same length."""


def is_text(batch: object) -> bool:
    """Whether `batch` is `Text` (to tokenize with `text_batch`) rather than token ids."""
    return isinstance(batch, str) or (isinstance(batch, Sequence) and all(isinstance(t, str) for t in batch))


def text_batch(source: CheckpointSource, text: Text) -> Batch:
    """`{"tokens": [n_texts, pos]}`: `text` tokenized by `source`'s tokenizer as it does by
    default (a BOS token only where the tokenizer adds one). Texts are not padded, since padding
    would enter every probe's statistics: they must tokenize to one length."""
    tokenizer = source.tokenizer
    if tokenizer is None:
        raise InputError(f"batch: text needs a tokenizer, and {source!r} has none; give token ids "
                         "({'tokens': tensor})")
    texts = [text] if isinstance(text, str) else list(text)
    ids = [list(tokenizer(t)["input_ids"]) for t in texts]
    lengths = sorted({len(i) for i in ids})
    if not ids or lengths[0] == 0:
        raise InputError(f"batch: expected text that tokenizes to at least one token, got {text!r}")
    if len(lengths) > 1:
        raise InputError(f"batch: the texts tokenize to {lengths} tokens; give texts of one token length "
                         "(probe batches are not padded)")
    return {"tokens": torch.tensor(ids, dtype=torch.long)}


def check_batch_fits(source: CheckpointSource, batch: Batch | None) -> None:
    """Refuse, in one line, token ids the model cannot read: sequences longer than its
    context or ids outside its vocabulary (which would fail deep inside the forward pass)."""
    if batch is None:
        return
    shape = source.model_config
    for key, tensor in batch.items():
        if not key.endswith("tokens"):
            continue
        if tensor.is_floating_point() or tensor.dim() != 2:
            raise InputError(f"batch[{key!r}]: expected integer token ids of shape [batch, pos], got "
                             f"{tensor.dtype} of shape {tuple(tensor.shape)}")
        if tensor.shape[1] > shape.n_ctx:
            raise InputError(f"batch[{key!r}]: sequences of {tensor.shape[1]} tokens are longer than the model's "
                             f"context n_ctx={shape.n_ctx}")
        if tensor.numel() and (int(tensor.min()) < 0 or int(tensor.max()) >= shape.d_vocab):
            raise InputError(f"batch[{key!r}]: token ids must lie in [0, d_vocab={shape.d_vocab}), got "
                             f"[{int(tensor.min())}, {int(tensor.max())}]")


def require_batch(probes: Mapping[str, Probe], batch: Batch | None) -> None:
    """Refuse a missing batch where any of `probes` runs the model."""
    if batch is None and any(p.reads != "weights" for p in probes.values()):
        needing = sorted(key for key, p in probes.items() if p.reads != "weights")
        raise InputError(f"batch: probes {needing} run the model and need a batch, got None")


def check_probe_memory(cfg: ModelConfig, probes: Mapping[str, Probe], batch: Batch | None,
                       device: str | torch.device | None = None) -> None:
    """`InsufficientMemoryError` unless one forward pass on `batch` caching every probe's hooks,
    plus the largest of their own allocations (`Probe.memory`), fits on `device`."""
    runs_model = batch is not None and any(p.reads != "weights" for p in probes.values())
    n_batch, n_pos = batch["tokens"].shape[:2] if runs_model else (0, 0)
    own = {p.name: p.memory(cfg, n_batch, n_pos) for p in probes.values() if p.memory is not None and runs_model}
    check_forward_memory(cfg, batch if runs_model else None, {h for p in probes.values() for h in p.hooks}, device,
                         own_passes=own)


def _memory_at(memory: Callable[[ModelConfig, int, int], int], cfg: ModelConfig, rows: int, positions: int) -> int:
    return memory(cfg, rows, positions)


def probe_chunk_rows(cfg: ModelConfig, probes: Mapping[str, Probe], batch: Batch | None,
                     device: str | torch.device | None = None) -> int:
    """Rows per chunk `interp.probing.probe` computes `probes` on `batch` in (`run_probes`'s `chunk_rows`):
    the whole batch where the probes with a `Probe.mean_over` fit in memory on it, else the
    largest chunk that does (`interp.memory.forward_chunk_rows`: one shared forward caching
    their hooks plus the largest of their own passes, in `CHUNK_MEMORY_FRACTION` of what is
    free). `InsufficientMemoryError` naming the numbers, before anything loads, where the model
    cannot load, a probe without one does not fit on the whole batch, or one row does not fit.
    Only the batch's shape is read: a `shape_only` batch of the CLI's is enough."""
    if batch is None:
        check_probe_memory(cfg, probes, batch, device)
        return 0
    chunked = {key: p for key, p in probes.items() if p.mean_over is not None and p.reads != "weights"}
    check_probe_memory(cfg, {key: p for key, p in probes.items() if key not in chunked}, batch, device)
    n_batch, n_pos = batch["tokens"].shape[:2]
    if not chunked:
        return n_batch
    own = {p.name: partial(_memory_at, p.memory, cfg, positions=n_pos)
           for p in chunked.values() if p.memory is not None}
    return forward_chunk_rows(cfg, batch, {h for p in chunked.values() for h in p.hooks}, device, own_passes=own)
