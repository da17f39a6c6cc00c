"""A checkpoint source's loss at every checkpoint on one fixed batch, cached as a probe, with
what that batch is: the loss curve of a checkpoint suite, which comes without a training log.

`loss_curve(source, loss_batch)` runs `interp.metrics.outputs.loss_probe` at every checkpoint
through the probe runner (one forward each, cached under the key `loss`, `LOSS_KEY`, so a
second call runs no model) and stores the batch's description beside its cached rows, in the
computation's artifact folder (`probes/loss/<id>/batch.json`). `cached_loss_curve(source)`
reads the curve back, description included, without running a model: `interp view`, `plot`
and `info` say which batch a curve is on.

The default batch (`repeated_loss_batch`) is random tokens repeated twice: the second copy is
predictable by induction alone, so its loss (`loss_in_repeat`) drops when induction heads form,
where the loss over all positions moves less. Its size is bounded by the logits one forward
holds (`LOSS_LOGITS_BUDGET`): a 50k vocabulary gets fewer sequences than a toy one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp import seeding
from interp.batches import repeated_tokens
from interp.cache_dirs import lock_cache_dir
from interp.checkpoints import CheckpointSource, ModelSizes
from interp.errors import InputError
from interp.files import atomic_write_json, read_json
from interp.locking import RunInUseError
from interp.metrics.outputs import loss_probe
from interp.model import Batch
from interp.probe_batches import text_batch
from interp.probe_cache import (
    batch_hash,
    cached_computations,
    computation_artifacts,
    probe_artifacts,
    probe_cache_files,
)
from interp.probing import probe
from interp.run_layout import RunDamagedError

logger = logging.getLogger(__name__)

LOSS_KEY = "loss"
"""The probe key of the loss curve: its cache is `probes/loss.jsonl`."""
REPEAT_KEY = "in_repeat"
"""The default batch's bool key of the positions that predict the second copy (after its first token)."""
BATCH_FILE = "batch.json"
"""In the computation's artifact folder: `{"about": ...}`, what the batch is."""
LOSS_PERIOD = 64  # tokens per copy of the default batch (at most half the context)
LOSS_SEQUENCES = 16  # sequences of the default batch where the logits budget allows
LOSS_LOGITS_BUDGET = 128 * 2**20  # bytes of float32 logits of the default batch's forward


@dataclass(frozen=True)
class LossBatch:
    """The batch a loss curve is computed on, and what it is in words (shown with the curve)."""

    batch: Batch
    about: str
    also_on: tuple[str, ...] = ()
    """Bool keys of `batch` whose positions get a loss column of their own (`loss_<key>`)."""


@dataclass(frozen=True)
class LossCurve:
    """The loss at each checkpoint of a source on one batch: `columns` ("loss", `loss_<key>`)
    by name, one value per step; `about` says what the batch is, `batch` is its hash."""

    steps: list[int]
    columns: dict[str, list[float]]
    about: str
    probe: str
    batch: str
    of_steps: int

    def caption(self) -> str:
        """What the curve is, in one line: the batch, the probe, how many checkpoints."""
        return (f"loss at each checkpoint on {self.about}; probe {self.probe}, batch {self.batch}, "
                f"{len(self.steps)} of {self.of_steps} checkpoints")


def repeated_loss_batch(cfg: ModelSizes, seed: int = 0) -> LossBatch:
    """Random tokens repeated twice: `LOSS_PERIOD` per copy (at most half the context), as many
    sequences (at most `LOSS_SEQUENCES`, at least one) as keep one forward's logits within
    `LOSS_LOGITS_BUDGET`; `in_repeat` marks the predictions of the second copy."""
    period = max(1, min(LOSS_PERIOD, cfg.n_ctx // 2))
    per_sequence = 2 * period * cfg.d_vocab * 4
    sequences = max(1, min(LOSS_SEQUENCES, LOSS_LOGITS_BUDGET // per_sequence))
    tokens = repeated_tokens(sequences, period, cfg.d_vocab, seeding.generator(seed, seeding.LOSS_CURVE))
    in_repeat = (torch.arange(2 * period, device=tokens.device) >= period).expand(sequences, -1).clone()
    about = (f"{sequences} sequences of {period} random tokens repeated twice (seed {seed}; loss_{REPEAT_KEY}: the "
             "second copy, predictable by induction)")
    return LossBatch({"tokens": tokens, REPEAT_KEY: in_repeat}, about, (REPEAT_KEY,))


def text_loss_batch(source: CheckpointSource, texts: Sequence[str], flag: str = "--loss-text") -> LossBatch:
    """`texts` tokenized by the source's tokenizer (`interp.probe_batches.text_batch`: they must
    tokenize to one length; a source without a tokenizer is refused, naming `flag`)."""
    try:
        batch = text_batch(source, list(texts))
    except InputError as err:
        raise InputError(f"{flag}: {str(err).removeprefix('batch: ')}") from None
    shown = texts[0] if len(texts[0]) <= 60 else texts[0][:57] + "..."
    n, length = batch["tokens"].shape
    return LossBatch(batch, f"{n} text{'s' if n > 1 else ''} of {length} tokens ({shown!r}"
                            + (f" and {n - 1} more)" if n > 1 else ")"))


def file_loss_batch(source: CheckpointSource, path: str | Path) -> LossBatch:
    """The token ids of a batch file (`interp.metrics.linear_probes.save_batch`, safetensors),
    checked against the model's vocabulary and context."""
    from interp.metrics.linear_probes import load_batch  # scikit-learn: imported only when asked for

    cfg = source.model_config
    batch = load_batch(path, d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx)
    n, length = batch["tokens"].shape
    return LossBatch({"tokens": batch["tokens"].long()}, f"{n} sequences of {length} tokens from {Path(path).name}")


def loss_curve(source: CheckpointSource, loss_batch: LossBatch, device: str | torch.device | None = None,
               progress: bool = False) -> LossCurve:
    """The loss at every checkpoint of `source` on `loss_batch`: computed where not cached
    (one forward per checkpoint, memory checked first), and the batch's description stored beside
    the cache (where the cache can be written)."""
    probe_obj = loss_probe(also_on=loss_batch.also_on)
    table = probe(source, {LOSS_KEY: probe_obj}, loss_batch.batch, device=device, progress=progress)
    _save_about(source, probe_obj, loss_batch, device)
    columns = {c.removeprefix(f"{LOSS_KEY}/"): [float(v) for v in table[c]] for c in table.columns}
    return LossCurve([int(s) for s in table.steps], columns, loss_batch.about, probe_obj.name,
                     batch_hash(loss_batch.batch), len(source.steps))


def _save_about(source: CheckpointSource, probe_obj: Any, loss_batch: LossBatch,
                device: str | torch.device | None) -> None:
    try:
        with lock_cache_dir(source.path) as cache_dir:
            folder = probe_artifacts(source, LOSS_KEY, probe_obj, loss_batch.batch, device, cache_dir)
            path = folder / BATCH_FILE
            if not path.exists():
                folder.mkdir(parents=True, exist_ok=True)
                atomic_write_json(path, {"about": loss_batch.about})
    except (RunInUseError, OSError) as err:  # a description saves words, never a number
        logger.warning("%s: the loss batch's description is not stored (%s)", source.path, err)


def cached_loss_curve(source: CheckpointSource) -> LossCurve | None:
    """The most complete loss curve cached in `source` (`interp.probe_cache.cached_computations`),
    with its batch's description where one was stored (else the batch's hash alone); None
    when nothing is cached. Runs no model, and hashes no checkpoint when there is no cache."""
    if not any(path.stem == LOSS_KEY for path in probe_cache_files(source)):
        return None
    found = cached_computations(source, LOSS_KEY)
    if not found:
        return None
    best = found[0]
    about = f"batch {best.batch} (its description was not stored)"
    path = computation_artifacts(source, best) / BATCH_FILE
    if path.is_file():
        try:
            stored = read_json(path)
            about = stored["about"] if isinstance(stored, dict) and isinstance(stored.get("about"), str) else about
        except RunDamagedError:
            pass  # a damaged description: the hash still names the batch
    columns = {c: [float(v) for v in best.table[c]] for c in best.table.columns}
    return LossCurve([int(s) for s in best.table.steps], columns, about, best.probe, best.batch, best.of_steps)


__all__ = ["BATCH_FILE", "LOSS_KEY", "REPEAT_KEY", "LossBatch", "LossCurve", "cached_loss_curve", "file_loss_batch",
           "loss_curve", "repeated_loss_batch", "text_loss_batch"]
