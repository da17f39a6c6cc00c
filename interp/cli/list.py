"""`interp list`: the registered analyses, their presets and each preset's sizes."""

from __future__ import annotations

import argparse
from typing import Any

from interp.analysis import analysis_names, get_analysis, load_all
from interp.model import ModelConfig
from interp.train_config import TrainConfig


def preset_summary(config: Any) -> str:
    """What a preset is for, as its config says it: the model and training sizes of its
    `model` and `train` fields (some analyses derive further runs or steps from its task)."""
    model, train = getattr(config, "model", None), getattr(config, "train", None)
    parts = []
    if isinstance(model, ModelConfig):
        kind = ", attention-only" if model.attn_only else ""
        layers = f"{model.n_layers} layer{'s' if model.n_layers != 1 else ''}"
        parts.append(f"model {layers} x d_model {model.d_model} ({model.n_heads} heads{kind}), "
                     f"vocab {model.d_vocab}, context {model.n_ctx}")
    if isinstance(train, TrainConfig):
        parts.append(f"train {train.steps} steps x batch {train.batch_size}")
    return "; ".join(parts) if parts else type(config).__name__


def cmd_list(args: argparse.Namespace) -> None:
    loaded, broken = load_all()
    for name, analysis in loaded.items():
        print(f"{name:24s} {analysis.description}")
        for preset, config in analysis.presets.items():
            print(f"{'':24s}   {preset:8s} {preset_summary(config)}")
    for name, why in broken.items():
        print(f"{name:24s} BROKEN: {why}")


def analyses_epilog() -> str:
    """The registered analyses and their presets, for `interp run --help` (imports each)."""
    lines = ["analyses and their presets (`interp list` gives each preset's sizes):"]
    for name in analysis_names():
        try:
            presets = ", ".join(get_analysis(name).presets)
        except ImportError as err:
            presets = f"BROKEN: {err}"
        lines.append(f"  {name:24s} {presets}")
    return "\n".join(lines)
