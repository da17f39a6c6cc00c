"""Checks of a command's options before it computes: `--device`, `--period`, and the batch
shape a memory check reads."""

from __future__ import annotations

import torch

from interp.configs import ConfigError
from interp.model import ModelConfig

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


def check_period(period: int, model_cfg: ModelConfig) -> int:
    """The repeat period of `interp probe` and `interp circuit` tokens (0: n_ctx/2); a
    `ConfigError` naming `--period` unless two copies fit the model's context."""
    period = period or model_cfg.n_ctx // 2
    if not 2 <= period <= model_cfg.n_ctx // 2:
        raise ConfigError("--period", f"between 2 and n_ctx/2 = {model_cfg.n_ctx // 2}", period)
    return period


def shape_only(sequences: int, positions: int) -> dict[str, torch.Tensor]:
    """A batch of the given shape that allocates nothing (for a memory check before the real one)."""
    return {"tokens": torch.zeros(1, positions, dtype=torch.long, device="meta").expand(sequences, -1)}
