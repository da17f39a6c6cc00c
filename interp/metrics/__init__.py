"""Per-checkpoint measurements: circuit scores and probes, forgetting/recovery
statistics of loss matrices, drift of weights and activations across checkpoints, and
low-rank fits and completion of forgetting matrices."""

from interp.metrics import circuits, drift, lowrank, recovery

__all__ = ["circuits", "drift", "lowrank", "recovery"]
