"""interp.analysis.results_dict: how a typed results dataclass is written to results.json."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from interp.analysis import detail, inline, json_safe, results_dict
from interp.ids import EMBED, LOGITS, CheckpointRef, EdgeId, HeadId, MlpId


@dataclass(frozen=True)
class Row:
    lambda_: float
    score: float


@dataclass(frozen=True)
class Findings:
    edge: EdgeId
    by_head: dict[HeadId, float]


@dataclass(frozen=True)
class Results:
    head: HeadId
    findings: Findings = inline()
    rows: list[Row]
    nodes: list[MlpId | EdgeId]
    checkpoint: CheckpointRef
    grid: np.ndarray
    table: object = detail()


def test_every_identity_is_written_as_its_text_and_read_back_by_parse():
    edge = EdgeId(HeadId(0, 1), HeadId(1, 0), "k")
    results = Results(HeadId(1, 0), Findings(edge, {HeadId(1, 1): 0.5}), [Row(1e-3, np.float64(0.25))],
                      [MlpId(0), EdgeId(EMBED, LOGITS)], CheckpointRef("runs/main", 40), np.array([[1, 2]]),
                      table="left out")
    written = json.loads(json.dumps(json_safe(results_dict(results)), allow_nan=False))
    assert written == {"head": "L1H0", "edge": "L0H1->L1H0.k", "by_head": {"L1H1": 0.5},
                       "rows": [{"lambda": 0.001, "score": 0.25}], "nodes": ["MLP0", "embed->logits"],
                       "checkpoint": "runs/main@40", "grid": [[1, 2]]}
    assert list(written) == ["head", "edge", "by_head", "rows", "nodes", "checkpoint", "grid"]  # inline: in place
    assert EdgeId.parse(written["edge"]) == edge and HeadId.parse(written["head"]) == results.head
    assert CheckpointRef.parse(written["checkpoint"]) == results.checkpoint


def test_results_must_be_a_dataclass_instance():
    with pytest.raises(TypeError, match="results: expected a dataclass"):
        results_dict({"head": "L1H0"})
    with pytest.raises(TypeError, match="results: expected a dataclass"):
        results_dict(Results)
