"""Per-checkpoint measurements: circuit scores and the probes built on them."""

from interp.metrics import circuits

__all__ = ["circuits"]
