"""Typed identities: a head, an MLP, the embedding and logits, an edge between them, a
checkpoint of a run.

Each identity (`Identity`) has one text form, written by `str()` and read back by its
class's `parse()`, wherever it is stored (results.json, probe columns, graph files,
figure labels), so nothing else in the code builds or splits these strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

_HEAD = re.compile(r"L(\d+)H(\d+)")
_MLP = re.compile(r"MLP(\d+)")


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


@dataclass(frozen=True, order=True)
class MlpId:
    """The MLP of layer `layer`; written `"MLP1"`."""

    layer: int

    def __post_init__(self) -> None:
        if self.layer < 0:
            raise ValueError(f"mlp: expected a layer >= 0, got {self.layer}")

    def __str__(self) -> str:
        return f"MLP{self.layer}"

    @classmethod
    def parse(cls, text: str) -> MlpId:
        match = _MLP.fullmatch(text)
        if match is None:
            raise ValueError(f"mlp: expected 'MLP<layer>' such as 'MLP1', got {text!r}")
        return cls(int(match[1]))


@dataclass(frozen=True, order=True)
class Terminal:
    """The token embedding (with positions and input vectors: everything the residual
    stream starts from) or the logits (the unembedding's read of the final residual)."""

    name: Literal["embed", "logits"]

    def __post_init__(self) -> None:
        if self.name not in ("embed", "logits"):
            raise ValueError(f"node: expected 'embed' or 'logits', got {self.name!r}")

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, text: str) -> Terminal:
        if text not in ("embed", "logits"):
            raise ValueError(f"node: expected 'embed' or 'logits', got {text!r}")
        return cls(text)  # type: ignore[arg-type]


EMBED = Terminal("embed")
LOGITS = Terminal("logits")

Node = HeadId | MlpId | Terminal
"""A node of a circuit graph: something that writes to or reads from the residual stream."""

def parse_node(text: str) -> Node:
    """The node written `text` (`"L1H3"`, `"MLP0"`, `"embed"`, `"logits"`)."""
    if text in ("embed", "logits"):
        return Terminal.parse(text)
    if _MLP.fullmatch(text):
        return MlpId.parse(text)
    if HeadId.is_head(text):
        return HeadId.parse(text)
    raise ValueError(f"node: expected 'embed', 'logits', 'MLP<layer>' or 'L<layer>H<head>', got {text!r}")


HeadInput = Literal["q", "k", "v"]
HEAD_INPUTS: tuple[HeadInput, ...] = ("q", "k", "v")
_EDGE = re.compile(r"(.+)->([^.]+)(?:\.([qkv]))?")


@dataclass(frozen=True, order=True)
class EdgeId:
    """The path from `sender`'s write to the residual stream into `receiver`'s input: a
    head's query, key or value input (`input`), an MLP's input or the logits (`input`
    None). Written `"L0H1->L1H2.k"`, `"embed->MLP0"`, `"L1H2->logits"`."""

    sender: Node
    receiver: Node
    input: HeadInput | None = None

    def __post_init__(self) -> None:
        if isinstance(self.sender, Terminal) and self.sender != EMBED:
            raise ValueError(f"edge: the logits send nothing, got sender {self.sender}")
        if self.receiver == EMBED:
            raise ValueError("edge: the embedding receives nothing")
        if isinstance(self.receiver, HeadId) != (self.input is not None):
            raise ValueError(f"edge: a head receiver needs an input 'q', 'k' or 'v' and other receivers none, "
                             f"got {self.receiver} with input {self.input!r}")
        if self.input is not None and self.input not in HEAD_INPUTS:
            raise ValueError(f"edge: expected input 'q', 'k' or 'v', got {self.input!r}")

    def __str__(self) -> str:
        suffix = f".{self.input}" if self.input else ""
        return f"{self.sender}->{self.receiver}{suffix}"

    def __repr__(self) -> str:
        return f"EdgeId({str(self)!r})"

    @classmethod
    def parse(cls, text: str) -> EdgeId:
        match = _EDGE.fullmatch(text)
        if match is None:
            raise ValueError(f"edge: expected 'SENDER->RECEIVER[.q|.k|.v]' such as 'L0H1->L1H2.k', got {text!r}")
        return cls(parse_node(match[1]), parse_node(match[2]), match[3])  # type: ignore[arg-type]

    @classmethod
    def is_edge(cls, text: str) -> bool:
        try:
            cls.parse(text)
        except ValueError:
            return False
        return True


Identity = HeadId | MlpId | Terminal | EdgeId | CheckpointRef
"""Every typed identity; each is stored as its text form `str(identity)`, read back by `type.parse`."""
