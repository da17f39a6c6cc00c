"""Circuit graphs: weighted edges between the components of one checkpoint, saved in the
run, and the diff between two checkpoints' graphs.

Nodes are the residual stream's writers and readers (`interp.ids.Node`: the embedding,
each head, each MLP, the logits); an edge (`EdgeId`) is the path from a sender's write
into one input of a receiver (a head's q, k or v, an MLP, the logits). A graph's weights
come from path patching, edge attribution (EAP) or weight-level composition scores: its
`method` says which, and `metric` what the weight measures.

On disk a graph is strict JSON, one file per checkpoint, in a *graph set*: the graphs of
one probe (its name encodes the method, the metric and their parameters) on one batch,
`<run>/circuits/<key>/<set id>/step_<N>.json`, the id derived like `probe_artifacts`'s
(sha256 of the probe name and the batch hash). The set's `index.json` records the method,
the metric, the probe name, the batch hash and, per step, the hash of the checkpoint the
graph was computed on. A trace on another batch makes another set beside it, never touching
this one; the same trace again rewrites nothing. `<run>/circuits/<key>/sets.json` names the
key's default set, the one `load_graphs(run, key)` and the explorer read: the first set
saved under the key, unless a later save asks to be the default (`make_default`; an
analysis does, so its graphs are the ones shown beside its results). A key written in the
old layout (`circuits/<key>/step_<N>.json` with `circuits/<key>/index.json`) is read in
place, unmoved, as the set `legacy` (probe, batch and checkpoint hashes unknown), and stays
the key's default when new sets are saved beside it.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from interp.cache_dirs import cache_dirs, lock_cache_dir
from interp.checkpoints import CheckpointSource
from interp.errors import InputError, MissingFileError
from interp.files import atomic_write_bytes, dumps_json, loads_json, sha256_file
from interp.ids import EMBED, HEAD_INPUTS, LOGITS, EdgeId, HeadId, MlpId, Node

FORMAT = "interp.circuit/1"
"""A graph file's format; also the old layout's per-key `index.json`."""
SET_FORMAT = "interp.circuit-set/1"
KEY_FORMAT = "interp.circuit-key/1"
CIRCUITS_DIR = "circuits"
SET_INDEX = "index.json"
KEY_INDEX = "sets.json"


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
            raise InputError(f"edges: {unknown[:3]} are not edges of a model with {self.shape}")

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
            raise InputError(f"format: expected {FORMAT!r}, got {data.get('format')!r}")
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
            raise InputError(f"graphs: cannot diff models of different shapes, {before.shape} and {after.shape}")
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
        raise InputError(f"table: no edge column under {key!r}; columns: {list(sub.columns)[:5]}")
    baseline = sub[relative_to] if relative_to is not None else np.zeros(len(sub.steps))
    return [CircuitGraph(method, int(step), shape, {e: float(row[i] - base) for i, e in edge_columns}, metric)
            for step, row, base in zip(sub.steps, sub.values, baseline, strict=True)]


# --- graph sets in the run ----------------------------------------------------------------------

_SET_ID = re.compile(r"[0-9a-f]{16}|legacy")


@dataclass(frozen=True, order=True)
class GraphSetId:
    """A graph set's identity under its key, and its folder's name: 16 hex digits of
    sha256(probe name, NUL, batch hash), as `interp.probe_cache.probe_artifacts` names a probe's
    folder; or `legacy`, the graphs a key held in the old layout."""

    text: str

    def __post_init__(self) -> None:
        if not _SET_ID.fullmatch(self.text):
            raise InputError(f"graph_set: expected 16 hex digits or 'legacy', got {self.text!r}")

    def __str__(self) -> str:
        return self.text

    @classmethod
    def parse(cls, text: str | GraphSetId) -> GraphSetId:
        return text if isinstance(text, GraphSetId) else cls(text)


LEGACY_SET = GraphSetId("legacy")


@dataclass(frozen=True)
class GraphSource:
    """What a graph set was computed with: the probe's name (it encodes the method, the metric
    and their parameters), the batch's hash (`interp.probe_cache.batch_hash`; `no-batch` for
    weights only) and the numerics (`interp.probe_cache.numerics`: dtype and device class), as
    the probe cache keys its rows. Equal sources are the same set."""

    probe: str
    batch: str
    numerics: str

    @property
    def set_id(self) -> GraphSetId:
        ident = f"{self.probe}\0{self.batch}\0{self.numerics}"
        return GraphSetId(hashlib.sha256(ident.encode()).hexdigest()[:16])


@dataclass(frozen=True)
class GraphSet:
    """One set of graphs saved under a key, as its index records it."""

    key: str
    set_id: GraphSetId
    method: str
    metric: str
    probe: str | None
    """The probe's name; None for the legacy set (unknown)."""
    batch: str | None
    """The batch's hash; None for the legacy set (unknown)."""
    numerics: str | None
    """The dtype and device class it was computed in; None for the legacy set (unknown)."""
    checkpoints: Mapping[int, str | None]
    """Each saved step's checkpoint hash (`CheckpointSource.checkpoint_hash`) when its graph
    was computed; None where unknown (legacy)."""
    folder: Path
    default: bool
    """The key's default set: the one `load_graphs(run, key)` and the explorer read."""
    digests: Mapping[int, str] = field(default_factory=dict)
    """Each step file's sha256 as written (none for the legacy set): an edited graph is caught."""

    def verify(self, steps: Iterable[int] | None = None) -> list[str]:
        """One line per step file (of `steps`, default all) that is missing or no longer holds
        what was written."""
        problems = []
        for step in sorted(self.digests if steps is None else steps):
            expected, path = self.digests.get(step), self.folder / f"step_{step}.json"
            if expected is None:
                continue
            if not path.exists():
                problems.append(f"{path} is missing")
            elif sha256_file(path) != expected:
                problems.append(f"{path} was edited after it was written (its sha256 does not match {SET_INDEX})")
        return problems

    @property
    def steps(self) -> list[int]:
        return sorted(self.checkpoints)

    def rewritten_steps(self, run: CheckpointSource) -> list[int]:
        """Steps whose graph was computed on weights `run` no longer holds at that step (the
        checkpoint was rewritten since, or is gone); unknown hashes are not counted."""
        current = set(run.steps)
        return [s for s, sha in sorted(self.checkpoints.items())
                if sha is not None and (s not in current or run.checkpoint_hash(s) != sha)]

    def summary(self) -> str:
        batch = "batch unknown (old layout)" if self.batch is None else f"batch {self.batch}"
        return (f"{self.set_id}{' (default)' if self.default else ''}: {self.method}, {self.metric or 'edge weight'}, "
                f"{batch}, {len(self.checkpoints)} steps")


@dataclass(frozen=True)
class SavedGraphs:
    """What `save_graphs` did: the set as its index now reads, whether this call created it
    (False: the same probe and batch were saved before, and their set was updated in place,
    or held these graphs already), and the cache folder it is in: the run, or the folder
    outside a read-only run (`interp.cache_dirs`)."""

    graph_set: GraphSet
    created: bool
    cache_dir: Path


def graph_dir(run_dir: str | Path, key: str) -> Path:
    """The folder of `key`'s graph sets: in the first of the run's cache folders that holds
    the key (the run, then the folder outside it, `interp.cache_dirs`), else in the run."""
    found = [d / CIRCUITS_DIR / key for d in cache_dirs(Path(run_dir))]
    return next((folder for folder in found if folder.is_dir()), found[0])


def _read_object(path: Path) -> dict[str, Any]:
    try:
        data = loads_json(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: expected strict JSON ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _legacy_set(folder: Path, key: str, default: bool) -> GraphSet:
    """The old layout's graphs of `key`: `circuits/<key>/index.json` beside its step files."""
    index = folder / SET_INDEX
    data = _read_object(index)
    if data.get("format") != FORMAT:
        raise InputError(f"{index}: format: expected {FORMAT!r} (the old layout), got {data.get('format')!r}")
    return GraphSet(key, LEGACY_SET, str(data["method"]), str(data.get("metric", "")), None, None, None,
                    {int(s): None for s in data["steps"]}, folder, default)


def _new_set(folder: Path, key: str, set_id: GraphSetId, default: bool) -> GraphSet:
    index = folder / str(set_id) / SET_INDEX
    data = _read_object(index)
    if data.get("format") != SET_FORMAT:
        raise InputError(f"{index}: format: expected {SET_FORMAT!r}, got {data.get('format')!r}")
    return GraphSet(key, set_id, str(data["method"]), str(data["metric"]), str(data["probe"]), str(data["batch"]),
                    str(data["numerics"]), {int(c["step"]): str(c["checkpoint"]) for c in data["checkpoints"]},
                    index.parent, default, {int(c["step"]): str(c["sha256"]) for c in data["checkpoints"]})


def _saved_ids(folder: Path) -> list[GraphSetId]:
    """The ids of the complete sets in `key`'s folder (a set's index is written last)."""
    if not folder.is_dir():
        return []
    return sorted(GraphSetId(p.name) for p in folder.iterdir()
                  if _SET_ID.fullmatch(p.name) and p.name != str(LEGACY_SET) and (p / SET_INDEX).is_file())


def _default_id(folder: Path, key: str, ids: Sequence[GraphSetId]) -> GraphSetId:
    """The id `sets.json` names; without one (the old layout, or a save killed before writing
    it), the legacy set, else the only set."""
    index = folder / KEY_INDEX
    if index.exists():
        data = _read_object(index)
        if data.get("format") != KEY_FORMAT:
            raise InputError(f"{index}: format: expected {KEY_FORMAT!r}, got {data.get('format')!r}")
        named = GraphSetId.parse(str(data["default"]))
        if named not in ids:
            raise InputError(f"{index}: default: expected one of the saved sets {[str(i) for i in ids]}, "
                             f"got {str(named)!r}")
        return named
    if LEGACY_SET in ids:
        return LEGACY_SET
    if len(ids) == 1:
        return ids[0]
    raise InputError(f"{index}: default: no default graph set recorded for the key {key!r}; pass graph_set= "
                     f"one of {[str(i) for i in ids]}")


def list_graph_sets(run_dir: str | Path, key: str) -> list[GraphSet]:
    """The graph sets saved under `key`, the default first, the others by id."""
    folder = graph_dir(run_dir, key)
    ids = _saved_ids(folder) + ([LEGACY_SET] if (folder / SET_INDEX).exists() else [])
    if not ids:
        raise MissingFileError(f"{folder}: no circuit graphs saved under the key {key!r}")
    default = _default_id(folder, key, ids)
    sets = [_legacy_set(folder, key, i == default) if i == LEGACY_SET else _new_set(folder, key, i, i == default)
            for i in ids]
    return sorted(sets, key=lambda s: (not s.default, s.set_id))


def read_graph_set(run_dir: str | Path, key: str, graph_set: GraphSetId | str | None = None) -> GraphSet:
    """The set `graph_set` of `key` (default: the key's default set)."""
    sets = list_graph_sets(run_dir, key)
    if graph_set is None:
        return sets[0]
    wanted = GraphSetId.parse(graph_set)
    for found in sets:
        if found.set_id == wanted:
            return found
    raise InputError(f"graph_set: expected one of {[str(s.set_id) for s in sets]} saved under the key {key!r}, "
                     f"got {str(wanted)!r}")


def graph_keys(run_dir: str | Path) -> list[str]:
    """The keys with saved graphs in the run (or in the folder outside it, `interp.cache_dirs`), sorted."""
    roots = [d / CIRCUITS_DIR for d in cache_dirs(Path(run_dir))]
    return sorted({p.name for root in roots if root.is_dir() for p in root.iterdir()
                   if p.is_dir() and ((p / SET_INDEX).exists() or (p / KEY_INDEX).exists() or _saved_ids(p))})


def save_graphs(run: CheckpointSource, key: str, graphs: Sequence[CircuitGraph], source: GraphSource,
                make_default: bool = False) -> SavedGraphs:
    """Write `graphs` (one per step) into the set of `source` under `key`,
    `<run>/circuits/<key>/<set id>/step_<N>.json`, and its index, under the run's lock
    (a read-only run's: in the folder outside it, `interp.cache_dirs`). Another source makes
    another set and leaves every other set's files as they were; the same source again updates
    its own set (steps added, a step whose checkpoint was rewritten replaced), and a set that
    holds these graphs already is left alone, without taking the lock (so a read-only run
    whose graphs are saved needs no folder outside it). The first set of a key becomes its
    default; `make_default` makes this one the default even when the key has one."""
    if not graphs:
        raise InputError(f"graphs: expected at least one graph to save under {key!r}, got none")
    first = graphs[0]
    mixed = sorted({(g.method, g.metric) for g in graphs} - {(first.method, first.metric)})
    if mixed:
        raise InputError(f"graphs: expected one method and metric in a set, got {(first.method, first.metric)} "
                         f"and {mixed[0]}")
    for directory in cache_dirs(run.path):
        folder = directory / CIRCUITS_DIR / key
        if (folder / str(source.set_id) / SET_INDEX).exists():
            files, _ = _planned_files(run, folder, key, graphs, source, make_default)
            if not _changed(files):
                return SavedGraphs(read_graph_set(directory, key, source.set_id), False, directory)
    with lock_cache_dir(run.path) as directory:
        folder = directory / CIRCUITS_DIR / key
        files, created = _planned_files(run, folder, key, graphs, source, make_default)
        (folder / str(source.set_id)).mkdir(parents=True, exist_ok=True)
        for path, encoded in _changed(files).items():
            atomic_write_bytes(path, encoded)
        return SavedGraphs(read_graph_set(directory, key, source.set_id), created, directory)


def _planned_files(run: CheckpointSource, folder: Path, key: str, graphs: Sequence[CircuitGraph],
                   source: GraphSource, make_default: bool) -> tuple[dict[Path, bytes], bool]:
    """What saving `graphs` into `key`'s folder `folder` writes: each file's content, in
    writing order (the set's index after its graphs: a set is listed only once its graphs are
    all on disk; the key's index last), and whether the set is new."""
    first = graphs[0]
    set_folder = folder / str(source.set_id)
    index = set_folder / SET_INDEX
    created = not index.exists()
    checkpoints: dict[int, str] = {}
    digests: dict[int, str] = {}
    if not created:
        saved = _new_set(folder, key, source.set_id, False)
        found = (saved.method, saved.metric, saved.probe, saved.batch, saved.numerics)
        if found != (first.method, first.metric, source.probe, source.batch, source.numerics):
            raise InputError(f"{index}: method, metric, probe, batch, numerics: expected "
                             f"{(first.method, first.metric)} of {source}, got {found}")
        checkpoints = {s: str(sha) for s, sha in saved.checkpoints.items()}
        digests = dict(saved.digests)
    files: dict[Path, bytes] = {}
    for graph in graphs:
        step_file = set_folder / f"step_{graph.step}.json"
        files[step_file] = dumps_json(graph.to_json(), step_file).encode()
        checkpoints[graph.step] = run.checkpoint_hash(graph.step)
        digests[graph.step] = hashlib.sha256(files[step_file]).hexdigest()
    files[index] = dumps_json({
        "format": SET_FORMAT, "key": key, "id": str(source.set_id), "method": first.method, "metric": first.metric,
        "probe": source.probe, "batch": source.batch, "numerics": source.numerics,
        "checkpoints": [{"step": s, "checkpoint": checkpoints[s], "sha256": digests[s]}
                        for s in sorted(checkpoints)]}, index).encode()
    key_index = folder / KEY_INDEX
    if make_default or not key_index.exists():
        default = source.set_id if make_default or not (folder / SET_INDEX).exists() else LEGACY_SET
        files[key_index] = dumps_json({"format": KEY_FORMAT, "key": key, "default": str(default)}, key_index).encode()
    return files, created


def _changed(files: Mapping[Path, bytes]) -> dict[Path, bytes]:
    """The files that do not hold their planned content yet: saving the same trace again
    leaves its files as they were."""
    return {path: data for path, data in files.items() if not path.exists() or path.read_bytes() != data}


def load_graphs(run_dir: str | Path, key: str, steps: Iterable[int] | None = None,
                graph_set: GraphSetId | str | None = None) -> list[CircuitGraph]:
    """The saved graphs of `key`'s set `graph_set` (default: the key's default set; all its
    steps, or `steps`), in step order."""
    found = read_graph_set(run_dir, key, graph_set)
    wanted = found.steps if steps is None else sorted(steps)
    missing = sorted(set(wanted) - set(found.checkpoints))
    if missing:
        raise InputError(f"steps: expected steps saved in {found.folder}, {found.steps}; {missing} are not")
    edited = found.verify(wanted)
    if edited:
        raise InputError(f"{edited[0]}; trace again to recompute it")
    return [CircuitGraph.from_json(_read_object(found.folder / f"step_{s}.json")) for s in wanted]


__all__ = ["CircuitDiff", "CircuitGraph", "GraphSet", "GraphSetId", "GraphSource", "LEGACY_SET", "ModelShape",
           "SavedGraphs", "graph_dir", "graph_keys", "graphs_from_table", "list_graph_sets", "load_graphs",
           "read_graph_set", "save_graphs"]
