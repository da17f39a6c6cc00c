"""Per-checkpoint measurements: attention-head scores and probes, head ablations, the
model's output (loss, token-set mass), forgetting/recovery statistics of loss matrices,
drift of weights and activations across checkpoints, and low-rank fits and completion of
forgetting matrices."""

from interp.metrics import ablation, drift, heads, lowrank, outputs, recovery

__all__ = ["ablation", "drift", "heads", "lowrank", "outputs", "recovery"]
