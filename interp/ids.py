"""Typed identities: a head, a checkpoint of a run, and the hook names of a model.

Each identity has one text form, written by `str()` and read back by `parse()`,
so nothing else in the code builds or splits these strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_HEAD = re.compile(r"L(\d+)H(\d+)")


@dataclass(frozen=True, order=True)
class HeadId:
    """Attention head `head` of layer `layer`; written `"L1H3"` (probe columns, results, figures)."""

    layer: int
    head: int

    def __post_init__(self) -> None:
        if self.layer < 0 or self.head < 0:
            raise ValueError(f"head: expected a layer and head >= 0, got layer {self.layer}, head {self.head}")

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    @classmethod
    def parse(cls, text: str) -> HeadId:
        match = _HEAD.fullmatch(text)
        if match is None:
            raise ValueError(f"head: expected 'L<layer>H<head>' such as 'L1H3', got {text!r}")
        return cls(int(match[1]), int(match[2]))

    @classmethod
    def is_head(cls, text: str) -> bool:
        return _HEAD.fullmatch(text) is not None


@dataclass(frozen=True)
class CheckpointRef:
    """The checkpoint at `step` of the run in `run_dir` (None: its last checkpoint);
    written `"run_dir@step"` or `"run_dir"` (the form `TrainConfig.init_from` takes)."""

    run_dir: str
    step: int | None = None

    def __post_init__(self) -> None:
        if not self.run_dir:
            raise ValueError("checkpoint: expected 'run_dir' or 'run_dir@step', got an empty run directory")
        if self.step is not None and self.step < 0:
            raise ValueError(f"checkpoint: expected a step >= 0, got {self.step}")

    def __str__(self) -> str:
        return self.run_dir if self.step is None else f"{self.run_dir}@{self.step}"

    @classmethod
    def parse(cls, text: str) -> CheckpointRef:
        path, sep, step = text.rpartition("@") if "@" in text else (text, "", "")
        if sep and not step.isdigit():
            raise ValueError(f"checkpoint: expected 'run_dir@step' with an integer step, got {text!r}")
        return cls(path, int(step) if sep else None)

    @classmethod
    def of(cls, run_dir: str | Path, step: int | None = None) -> CheckpointRef:
        return cls(str(run_dir), step)


class hooks:  # noqa: N801 - a namespace of hook-name builders, read as `hooks.pattern(1)`
    """TransformerLens hook names, built in one place."""

    @staticmethod
    def pattern(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_pattern"

    @staticmethod
    def resid_pre(layer: int) -> str:
        return f"blocks.{layer}.hook_resid_pre"

    @staticmethod
    def resid_post(layer: int) -> str:
        return f"blocks.{layer}.hook_resid_post"

    @staticmethod
    def head_output(layer: int) -> str:
        """Per-head attention output before the output projection, `[batch, pos, head, d_head]`."""
        return f"blocks.{layer}.attn.hook_z"

    embed = "hook_embed"
    final_norm = "ln_final.hook_normalized"
