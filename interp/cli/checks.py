"""Checks of a command's options before it computes: `--device`, `--period`, and the batch
shape a memory check reads, and the chunks a probe batch is computed in (`plan_chunks`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from interp.configs import ConfigError
from interp.model import ModelConfig

if TYPE_CHECKING:
    from interp.probing import Probe

DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device(spec: str | None) -> str | None:
    """`spec` if it names a device this machine has (None/"auto": the default); a
    `ConfigError` naming `--device` otherwise, before anything is written or spawned."""
    if spec is None or spec == "auto":
        return spec
    expected = "cpu, cuda, cuda:N, mps or auto"
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError("--device", expected, spec) from None
    if device.type not in DEVICE_TYPES:
        raise ConfigError("--device", expected, spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device", "cpu: this machine has no CUDA device (or torch was built without CUDA)",
                              spec)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError("--device", f"one of cuda:0 .. cuda:{count - 1}", spec)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device", "cpu: MPS is not available on this machine", spec)
    return spec


DEFAULT_PERIOD = 256
"""The longest default repeat period of `interp probe` and `interp circuit` tokens. An induction
head attends from a repeated token to the one after its earlier copy however far back that is, so
on random tokens a longer period adds queries, not a different measurement: 256 queries a sequence
times 32 sequences already pin a head's mean attention far below the differences the scores show,
while a context-long batch costs memory with the square of its length (a 2048-token model's
attention patterns at period 1024 take 16 times those at 256)."""


def check_period(period: int, model_cfg: ModelConfig) -> int:
    """The repeat period of `interp probe` and `interp circuit` tokens (0: n_ctx/2, at most
    `DEFAULT_PERIOD`); a `ConfigError` naming `--period` unless two copies fit the model's context."""
    period = period or min(model_cfg.n_ctx // 2, DEFAULT_PERIOD)
    if not 2 <= period <= model_cfg.n_ctx // 2:
        raise ConfigError("--period", f"between 2 and n_ctx/2 = {model_cfg.n_ctx // 2}", period)
    return period


def plan_chunks(model_cfg: ModelConfig, probes: Mapping[str, Probe], sequences: int, positions: int,
                device: str | None) -> None:
    """Before the batch is built or a checkpoint loads: refuse in one line, naming the numbers,
    what cannot fit even one sequence at a time, and say when the batch is computed in chunks
    (`interp.probe_batches.probe_chunk_rows`; the results and their cache are those of the whole batch)."""
    from interp.probe_batches import probe_chunk_rows  # the probe runner's: only for a command that computes

    rows = probe_chunk_rows(model_cfg, probes, shape_only(sequences, positions), device)
    if rows < sequences:
        print(f"memory: {sequences} sequences of {positions} tokens do not fit at once; computing them in chunks "
              f"of {rows} (the same results)")


def shape_only(sequences: int, positions: int) -> dict[str, torch.Tensor]:
    """A batch of the given shape that allocates nothing (for a memory check before the real one)."""
    return {"tokens": torch.zeros(1, positions, dtype=torch.long, device="meta").expand(sequences, -1)}
