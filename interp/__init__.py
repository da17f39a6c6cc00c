"""interp: train small TransformerLens models with checkpoints and probe how
their circuits form, fade and come back.

    from interp import Run, probe, seeding
    from interp.batches import repeated_tokens
    from interp.metrics import heads

    run = Run.open("runs/induction/runs/main")  # the main run of `interp run induction-heads`
    batch = {"tokens": repeated_tokens(8, 16, run.model_config.d_vocab, seeding.generator(0, 1))}
    table = probe(run, {"ind": heads.induction_probe(layers=[1], period=16)}, batch)
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from interp.checkpoints import CheckpointSource, Run
    from interp.configs import ConfigError
    from interp.model import ModelConfig, build_model
    from interp.probe_table import ProbeTable
    from interp.probing import Probe, probe
    from interp.run_layout import CheckpointError
    from interp.suites import CheckpointSuite, open_suite
    from interp.train import TrainHooks, train
    from interp.train_config import TrainConfig

# Each public name and the module that defines it, imported on first use (PEP 562): importing
# `interp` (which `interp.cli` and every submodule do) costs nothing until a name is used.
_SOURCES = {
    "CheckpointError": "interp.run_layout",
    "CheckpointSource": "interp.checkpoints",
    "CheckpointSuite": "interp.suites",
    "ConfigError": "interp.configs",
    "ModelConfig": "interp.model",
    "Probe": "interp.probing",
    "ProbeTable": "interp.probe_table",
    "Run": "interp.checkpoints",
    "TrainConfig": "interp.train_config",
    "TrainHooks": "interp.train",
    "build_model": "interp.model",
    "open_suite": "interp.suites",
    "probe": "interp.probing",
    "train": "interp.train",
}

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


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:  # AttributeError lets `from interp import seeding` import the submodule
        raise AttributeError(f"module 'interp' has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """`interp.train` is the function, as when this file imported it eagerly: importing the
    submodule `interp.train` (which binds it on its package) must not hide the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SOURCES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
