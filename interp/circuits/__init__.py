"""Circuit analysis over training: weight-level scores, patching, attribution and readouts
as probes over a run's checkpoints, and circuit graphs diffed across training."""
