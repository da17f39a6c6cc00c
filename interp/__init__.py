"""interp: train small TransformerLens models with checkpoints and probe how
their circuits form, fade and come back.

    from interp import Run, probe, seeding
    from interp.batches import repeated_tokens
    from interp.metrics import heads

    run = Run.open("runs/induction/runs/main")  # the main run of `interp run induction-heads`
    batch = {"tokens": repeated_tokens(8, 16, run.model_config.d_vocab, seeding.generator(0, 1))}
    table = probe(run, {"ind": heads.induction_probe(layers=[1], period=16)}, batch)
"""

from interp.checkpoints import CheckpointSource, Run
from interp.configs import ConfigError
from interp.model import ModelConfig, build_model
from interp.probing import Probe, ProbeTable, probe
from interp.run_layout import CheckpointError
from interp.suites import CheckpointSuite, open_suite
from interp.train import TrainConfig, TrainHooks, train

__all__ = [
    "CheckpointError",
    "CheckpointSource",
    "CheckpointSuite",
    "ConfigError",
    "ModelConfig",
    "Probe",
    "ProbeTable",
    "Run",
    "TrainConfig",
    "TrainHooks",
    "build_model",
    "open_suite",
    "probe",
    "train",
]
