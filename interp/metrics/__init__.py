"""Per-checkpoint measurements: circuit scores and probes, and forgetting/recovery
statistics of loss matrices."""

from interp.metrics import circuits, recovery

__all__ = ["circuits", "recovery"]
