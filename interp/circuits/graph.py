"""Circuit graphs: weighted edges between the components of one checkpoint, saved in the
run, and the diff between two checkpoints' graphs.

Nodes are the residual stream's writers and readers (`interp.ids.Node`: the embedding,
each head, each MLP, the logits); an edge (`EdgeId`) is the path from a sender's write
into one input of a receiver (a head's q, k or v, an MLP, the logits). A graph's weights
come from path patching, edge attribution (EAP) or weight-level composition scores: its
`method` says which, and `metric` what the weight measures.

On disk a graph is strict JSON, one file per checkpoint,
`<run>/circuits/<key>/step_<N>.json`, with `<run>/circuits/<key>/index.json` naming the
method, the metric and the saved steps (what the explorer reads).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from interp.checkpoints import atomic_write_bytes, dumps_json
from interp.ids import EMBED, HEAD_INPUTS, LOGITS, EdgeId, HeadId, MlpId, Node

FORMAT = "interp.circuit/1"
CIRCUITS_DIR = "circuits"


@dataclass(frozen=True)
class ModelShape:
    """What a graph's node set depends on."""

    n_layers: int
    n_heads: int
    attn_only: bool
    parallel: bool = False
    """Each layer's MLP reads the same residual as its heads (GPT-NeoX, GPT-J), not theirs."""

    @classmethod
    def of(cls, cfg: Any) -> ModelShape:
        """From a `ModelConfig` or a TransformerLens config (`attn_only`, `parallel_attn_mlp`
        absent: False)."""
        return cls(int(cfg.n_layers), int(cfg.n_heads), bool(getattr(cfg, "attn_only", False)),
                   bool(getattr(cfg, "parallel_attn_mlp", False)))

    def nodes(self) -> list[Node]:
        """Every node in residual-stream order: embed, layer 0's heads, its MLP, ..., logits."""
        out: list[Node] = [EMBED]
        for layer in range(self.n_layers):
            out += [HeadId(layer, h) for h in range(self.n_heads)]
            if not self.attn_only:
                out.append(MlpId(layer))
        return out + [LOGITS]

    def senders_before(self, receiver: Node) -> list[Node]:
        """The nodes whose writes reach `receiver`'s input directly."""
        order = self.nodes()
        # A head reads the residual before its layer's attention (before its layer's first head);
        # so does a parallel block's MLP.
        reads_before_heads = isinstance(receiver, HeadId) or (self.parallel and isinstance(receiver, MlpId))
        first = HeadId(receiver.layer, 0) if reads_before_heads else receiver
        return order[:order.index(first)]

    def edges(self) -> list[EdgeId]:
        """Every direct edge of the model, in receiver order."""
        out: list[EdgeId] = []
        for receiver in self.nodes()[1:]:
            inputs = HEAD_INPUTS if isinstance(receiver, HeadId) else (None,)
            out += [EdgeId(s, receiver, i) for i in inputs for s in self.senders_before(receiver)]
        return out

    def position(self, node: Node) -> tuple[float, float]:
        """(column, row) for drawing: a column for the embedding, each layer's heads, each
        layer's MLP and the logits; heads stacked by index, the rest centred."""
        middle = (self.n_heads - 1) / 2
        per_layer = 1 if self.attn_only else 2
        if node == EMBED:
            return 0.0, middle
        if node == LOGITS:
            return float(1 + per_layer * self.n_layers), middle
        if isinstance(node, HeadId):
            return float(1 + per_layer * node.layer), float(node.head)
        assert isinstance(node, MlpId)
        return float(2 + per_layer * node.layer), middle


@dataclass(frozen=True)
class CircuitGraph:
    """The edges of one checkpoint with their weights."""

    method: str
    step: int
    shape: ModelShape
    weights: Mapping[EdgeId, float]
    metric: str = ""

    def __post_init__(self) -> None:
        known = set(self.shape.edges())
        unknown = [str(e) for e in self.weights if e not in known]
        if unknown:
            raise ValueError(f"edges: {unknown[:3]} are not edges of a model with {self.shape}")

    def strongest(self, k: int) -> list[tuple[EdgeId, float]]:
        """The `k` edges of largest |weight| (NaN weights last)."""
        ordered = sorted(self.weights.items(), key=lambda item: -abs(item[1]) if math.isfinite(item[1]) else math.inf)
        return ordered[:k]

    def kept(self, fraction: float = 0.1) -> dict[EdgeId, float]:
        """Edges whose |weight| reaches `fraction` of the largest |weight|."""
        finite = [abs(w) for w in self.weights.values() if math.isfinite(w)]
        if not finite or max(finite) == 0:
            return {}
        cut = fraction * max(finite)
        return {e: w for e, w in self.weights.items() if math.isfinite(w) and abs(w) >= cut}

    def roles(self, fraction: float = 0.1) -> dict[HeadId, str]:
        """Each head's role: its strongest kept edge, as the head sees it ("sends k to L1H2",
        "reads k from L0H1"); heads with no kept edge have none."""
        best: dict[HeadId, tuple[float, str]] = {}
        for edge, weight in self.kept(fraction).items():
            sends = f"sends {edge.input} to {edge.receiver}" if edge.input else f"writes to {edge.receiver}"
            for head, role in ((edge.sender, sends),
                               (edge.receiver, f"reads {edge.input} from {edge.sender}")):
                if isinstance(head, HeadId) and abs(weight) > best.get(head, (-1.0, ""))[0]:
                    best[head] = (abs(weight), role)
        return {head: role for head, (_, role) in best.items()}

    def diff(self, later: CircuitGraph, fraction: float = 0.1) -> CircuitDiff:
        return CircuitDiff.between(self, later, fraction)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "method": self.method, "metric": self.metric, "step": self.step,
            "model": {"n_layers": self.shape.n_layers, "n_heads": self.shape.n_heads,
                      "attn_only": self.shape.attn_only, "parallel": self.shape.parallel},
            "nodes": [str(n) for n in self.shape.nodes()],
            "edges": [{"edge": str(e), "sender": str(e.sender), "receiver": str(e.receiver), "input": e.input,
                       "weight": w if math.isfinite(w) else None} for e, w in self.weights.items()],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CircuitGraph:
        if data.get("format") != FORMAT:
            raise ValueError(f"format: expected {FORMAT!r}, got {data.get('format')!r}")
        model = data["model"]
        weights = {EdgeId.parse(e["edge"]): math.nan if e["weight"] is None else float(e["weight"])
                   for e in data["edges"]}
        return cls(data["method"], int(data["step"]),
                   ModelShape(int(model["n_layers"]), int(model["n_heads"]), bool(model["attn_only"]),
                              bool(model.get("parallel", False))),
                   weights, data.get("metric", ""))


@dataclass(frozen=True)
class CircuitDiff:
    """How the kept edges (|weight| >= `fraction` of each graph's largest) change from
    `before` to `after`: edges that appear, vanish or change sign, the largest weight
    changes, heads whose role changes and pairs of heads that swap roles."""

    before: int
    after: int
    appeared: dict[EdgeId, float]
    vanished: dict[EdgeId, float]
    sign_flipped: dict[EdgeId, tuple[float, float]]
    largest_changes: list[tuple[EdgeId, float]]
    role_changes: dict[HeadId, tuple[str, str]]
    role_swaps: list[tuple[HeadId, HeadId]] = field(default_factory=list)

    @classmethod
    def between(cls, before: CircuitGraph, after: CircuitGraph, fraction: float = 0.1) -> CircuitDiff:
        if before.shape != after.shape:
            raise ValueError(f"graphs: cannot diff models of different shapes, {before.shape} and {after.shape}")
        kept_before, kept_after = before.kept(fraction), after.kept(fraction)
        order = {edge: i for i, edge in enumerate(before.shape.edges())}

        def ordered(edges: set[EdgeId]) -> list[EdgeId]:
            return sorted(edges, key=order.__getitem__)

        both = set(kept_before) & set(kept_after)
        changes = [(e, after.weights.get(e, 0.0) - before.weights.get(e, 0.0))
                   for e in set(before.weights) | set(after.weights)]
        changes = [(e, d) for e, d in changes if math.isfinite(d)]
        roles_before, roles_after = before.roles(fraction), after.roles(fraction)
        heads = sorted(set(roles_before) | set(roles_after))
        changed = {h: (roles_before.get(h, ""), roles_after.get(h, "")) for h in heads
                   if roles_before.get(h, "") != roles_after.get(h, "")}
        swaps = [(a, b) for i, a in enumerate(heads) for b in heads[i + 1:]
                 if a in changed and b in changed and changed[a][0] and changed[b][0]
                 and changed[a][0] == changed[b][1] and changed[b][0] == changed[a][1]]
        return cls(
            before=before.step, after=after.step,
            appeared={e: kept_after[e] for e in ordered(set(kept_after) - set(kept_before))},
            vanished={e: kept_before[e] for e in ordered(set(kept_before) - set(kept_after))},
            sign_flipped={e: (kept_before[e], kept_after[e]) for e in ordered(both)
                          if kept_before[e] * kept_after[e] < 0},
            largest_changes=sorted(changes, key=lambda item: -abs(item[1]))[:10],
            role_changes=changed, role_swaps=swaps,
        )

    def summary(self) -> list[str]:
        lines = [f"{len(self.appeared)} edges appear, {len(self.vanished)} vanish, "
                 f"{len(self.sign_flipped)} change sign between steps {self.before} and {self.after}"]
        lines += [f"  + {e} ({w:+.3g})" for e, w in list(self.appeared.items())[:5]]
        lines += [f"  - {e} ({w:+.3g})" for e, w in list(self.vanished.items())[:5]]
        lines += [f"  swap: {a} <-> {b}" for a, b in self.role_swaps]
        lines += ["largest weight changes: " + ", ".join(f"{e} {d:+.3g}" for e, d in self.largest_changes[:3])]
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "before": self.before, "after": self.after,
            "appeared": {str(e): w for e, w in self.appeared.items()},
            "vanished": {str(e): w for e, w in self.vanished.items()},
            "sign_flipped": {str(e): list(ws) for e, ws in self.sign_flipped.items()},
            "largest_changes": [[str(e), d] for e, d in self.largest_changes],
            "role_changes": {str(h): list(r) for h, r in self.role_changes.items()},
            "role_swaps": [[str(a), str(b)] for a, b in self.role_swaps],
        }


def graphs_from_table(table: Any, key: str, method: str, shape: ModelShape, metric: str = "",
                      relative_to: str | None = None) -> list[CircuitGraph]:
    """One graph per row of a `ProbeTable` whose columns under `key/` include edges
    (`"L0H1->L1H2.k"`); other columns (baselines) are not edges and are left out.
    `relative_to`: a baseline column whose value is subtracted from every edge's."""
    sub = table.select(key)
    edge_columns = [(i, EdgeId.parse(c)) for i, c in enumerate(sub.columns) if EdgeId.is_edge(c)]
    if not edge_columns:
        raise ValueError(f"table: no edge column under {key!r}; columns: {list(sub.columns)[:5]}")
    baseline = sub[relative_to] if relative_to is not None else np.zeros(len(sub.steps))
    return [CircuitGraph(method, int(step), shape, {e: float(row[i] - base) for i, e in edge_columns}, metric)
            for step, row, base in zip(sub.steps, sub.values, baseline, strict=True)]


def graph_dir(run_dir: str | Path, key: str) -> Path:
    return Path(run_dir) / CIRCUITS_DIR / key


def save_graphs(run: Any, key: str, graphs: Sequence[CircuitGraph]) -> Path:
    """Write each graph to `<run>/circuits/<key>/step_<N>.json` and the index, under the
    run's lock; returns the folder."""
    folder = graph_dir(run.path, key)
    with run.lock():
        folder.mkdir(parents=True, exist_ok=True)
        for graph in graphs:
            path = folder / f"step_{graph.step}.json"
            atomic_write_bytes(path, dumps_json(graph.to_json(), path).encode())
        index = folder / "index.json"
        steps = sorted({g.step for g in graphs} | set(_indexed_steps(index)))
        first = graphs[0]
        atomic_write_bytes(index, dumps_json({"format": FORMAT, "key": key, "method": first.method,
                                              "metric": first.metric, "steps": steps}, index).encode())
    return folder


def _indexed_steps(index: Path) -> list[int]:
    if not index.exists():
        return []
    return [int(s) for s in json.loads(index.read_text())["steps"]]


def load_graphs(run_dir: str | Path, key: str, steps: Iterable[int] | None = None) -> list[CircuitGraph]:
    """The saved graphs of `key` (all, or at `steps`), in step order."""
    folder = graph_dir(run_dir, key)
    index = folder / "index.json"
    if not index.exists():
        raise FileNotFoundError(f"{index}: no circuit graphs saved under the key {key!r}")
    wanted = _indexed_steps(index) if steps is None else sorted(steps)
    return [CircuitGraph.from_json(json.loads((folder / f"step_{s}.json").read_text())) for s in wanted]


__all__ = ["CircuitDiff", "CircuitGraph", "ModelShape", "graphs_from_table", "load_graphs",
           "save_graphs"]
