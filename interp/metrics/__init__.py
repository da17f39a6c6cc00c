"""Per-checkpoint measurements: attention-head scores and probes, head ablations, the
model's output (loss, token-set mass), forgetting/recovery statistics of loss matrices,
drift of weights and activations across checkpoints, and low-rank fits and completion of
forgetting matrices."""

import importlib
from types import ModuleType

__all__ = ["ablation", "drift", "heads", "lowrank", "outputs", "recovery"]


def __getattr__(name: str) -> ModuleType:
    # `interp.metrics.heads` after `import interp.metrics`: each submodule imported on first use
    # (they import torch), so a light module here (`llc_settings`) stays light.
    if name not in __all__:
        raise AttributeError(f"module 'interp.metrics' has no attribute {name!r}")
    return importlib.import_module(f"interp.metrics.{name}")
