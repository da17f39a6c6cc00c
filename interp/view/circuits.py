"""The circuit graphs the explorer shows of a run: those saved in it (`circuits/<key>/`,
`saved_circuits`), else one drawn from attention metrics on the example sequence (`attention_circuit`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from interp.checkpoints import Run
from interp.headline import num
from interp.ids import EdgeId, HeadId

MAX_EDGES = 300  # edges per circuit key in the page: the strongest over all steps


def _edge_record(edge: EdgeId) -> dict[str, Any]:
    return {"edge": str(edge), "sender": str(edge.sender), "receiver": str(edge.receiver), "input": edge.input}


def saved_circuits(run: Run) -> tuple[list[dict[str, Any]], list[str]]:
    """The circuit graphs saved in the run: each key's default graph set (`circuits/<key>/`,
    an analysis's own graphs; see `interp.circuits.graph`) as `{"key", "graph_set", "method",
    "metric", "source", "steps", "nodes", "positions", "edges", "weights": [step][edge]}` with
    its `MAX_EDGES` strongest edges; and notes: a key that could not be read, a key's other
    sets, steps whose checkpoint was rewritten after its graph was computed."""
    from interp.circuits.graph import graph_dir, graph_keys, list_graph_sets, load_graphs  # read only when used

    out, notes = [], []
    for key in graph_keys(run.path):
        folder = graph_dir(run.path, key)
        try:
            sets = list_graph_sets(run.path, key)
            shown = sets[0]  # the default
            graphs = load_graphs(run.path, key, graph_set=shown.set_id)
        except (OSError, ValueError, KeyError, TypeError) as err:
            notes.append(f"{folder}: not shown ({type(err).__name__}: {err})")
            continue
        if not graphs:
            continue
        if len(sets) > 1:
            notes.append(f"{folder}: showing its default graph set {shown.summary()}; also saved: "
                         + "; ".join(s.summary() for s in sets[1:]) + " (load_graphs(..., graph_set=ID))")
        rewritten = shown.rewritten_steps(run)
        if rewritten:
            notes.append(f"{shown.folder}: the graphs at steps {rewritten} were computed on weights since rewritten")
        edges = sorted({e for g in graphs for e in g.weights}, key=str)
        strength = {e: max((abs(g.weights.get(e, 0.0)) for g in graphs if math.isfinite(g.weights.get(e, 0.0))),
                           default=0.0) for e in edges}
        edges = sorted(sorted(edges, key=lambda e: -strength[e])[:MAX_EDGES], key=str)
        shape = graphs[0].shape
        out.append({
            "key": key, "graph_set": str(shown.set_id), "method": graphs[0].method, "metric": graphs[0].metric,
            "source": (shown.folder.relative_to(run.path) if shown.folder.is_relative_to(run.path)
                       else shown.folder).as_posix(), "steps": [g.step for g in graphs],
            **_layout(shape), "edges": [_edge_record(e) for e in edges],
            "weights": [[num(g.weights.get(e)) for e in edges] for g in graphs],
        })
    return out, notes


def _layout(shape: Any) -> dict[str, Any]:
    nodes = shape.nodes()
    return {"nodes": [str(n) for n in nodes], "positions": {str(n): list(shape.position(n)) for n in nodes}}


def attention_circuit(n_layers: int, n_heads: int, steps: Sequence[int],
                      scores: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The fallback circuit graph, from attention metrics on the example sequence: an edge from
    every head to every later-layer head's key input, weighted by the sender's previous-token
    score times the receiver's induction score (K-composition of an induction circuit). Drawn
    with heads only (its edges join heads; an MLP node between two layers would sit on them) and
    on the weights' own scale, `scale` 1 (both scores are attention fractions): near-zero
    weights draw thin, not at the width of the largest."""
    from interp.circuits.graph import ModelShape

    shape = ModelShape(n_layers, n_heads, attn_only=True)
    heads = [HeadId(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    edges = [EdgeId(a, b, "k") for a in heads for b in heads if a.layer < b.layer]
    prev, induction = scores["prev_token"], scores["induction"]
    weights = [[num(prev[i, e.sender.layer, e.sender.head] * induction[i, e.receiver.layer, e.receiver.head])
                for e in edges] for i in range(len(steps))]
    return {"key": "attention", "method": "attention metrics",
            "metric": "previous-token score of the sender x induction score of the receiver, on the example sequence",
            "source": "example attention patterns (no circuits/ graphs saved in this run)", "steps": list(steps),
            **_layout(shape), "edges": [_edge_record(e) for e in edges], "weights": weights, "scale": 1.0}
