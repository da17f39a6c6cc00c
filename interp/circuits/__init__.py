"""Circuit analysis over training: weight-level scores (`weights`), activation patching
(`activation`), path patching (`paths`), edge attribution (`attribution`),
cross-checkpoint patching (`cross_checkpoint`) and readouts (`readout`) as probes over a
run's checkpoints, and circuit graphs (`graph`) traced (`trace`) and diffed across training."""
