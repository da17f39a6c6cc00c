"""Per-checkpoint measurements: circuit scores and probes, forgetting/recovery
statistics of loss matrices, and drift of weights and activations across checkpoints."""

from interp.metrics import circuits, drift, recovery

__all__ = ["circuits", "drift", "recovery"]
