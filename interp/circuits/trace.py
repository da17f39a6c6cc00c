"""Circuit graphs of a run over training, in one call: the probe of a method at every
checkpoint (cached like every probe), one `CircuitGraph` per checkpoint, saved in the run
as a graph set of the probe and batch (`interp.circuits.graph`): a trace on another batch
adds a set beside the key's others and leaves the key's default (what `load_graphs` and the
explorer read) alone, unless it is traced with `make_default=True`, as an analysis does.

    batch = repeated_patch_batch(32, period=24, d_vocab=64, generator=generator(0, 2))  # interp.batches
    traced = trace(run, "path", batch, mean_logprob("in_repeat"))
    traced.graphs[0].diff(traced.graphs[-1]).summary()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from interp.batches import SOURCE_KEY
from interp.checkpoints import CheckpointSource, open_checkpoints
from interp.circuits.attribution import edge_attribution_probe
from interp.circuits.common import PatchMetric
from interp.circuits.graph import CircuitGraph, GraphSource, ModelShape, SavedGraphs, graphs_from_table, save_graphs
from interp.circuits.paths import path_patching_probe
from interp.circuits.weights import composition_probe
from interp.devices import resolve_device
from interp.model import Batch
from interp.probe_cache import batch_hash, numerics
from interp.probe_table import ProbeTable
from interp.probing import Probe, probe

GraphMethod = Literal["path", "eap", "composition"]
GRAPH_METHODS: tuple[GraphMethod, ...] = ("path", "eap", "composition")


@dataclass(frozen=True)
class Traced:
    """A method's probe table, its graphs (one per checkpoint) and where they were saved."""

    table: ProbeTable
    graphs: list[CircuitGraph]
    saved: SavedGraphs

    @property
    def folder(self) -> Path:
        """The graph set's folder, `<run>/circuits/<key>/<set id>/`."""
        return self.saved.graph_set.folder


def graph_probe(method: GraphMethod, metric: PatchMetric | None = None, ig_steps: int = 1) -> Probe:
    """The probe whose edge columns weight `method`'s graph (`ig_steps`: EAP's, see `edge_attribution`)."""
    if method == "composition":
        return composition_probe()
    if metric is None:
        raise ValueError(f"metric: method {method!r} patches the model and needs a metric")
    if method == "path":
        return path_patching_probe(metric)
    if method == "eap":
        return edge_attribution_probe(metric, ig_steps)
    raise ValueError(f"method: expected one of {GRAPH_METHODS}, got {method!r}")


def trace(run: CheckpointSource | str | Path, method: GraphMethod, batch: Batch | None = None,
          metric: PatchMetric | None = None, steps: Sequence[int] | None = None, key: str | None = None,
          device: str | torch.device | None = None, progress: bool = False, ig_steps: int = 1,
          make_default: bool = False) -> Traced:
    """`method`'s circuit graph at each checkpoint (default: all) of `run`, saved in the graph
    set of this probe and batch, `<run>/circuits/<key>/<set id>/` (key default: the method).
    Path patching and EAP weigh an edge by the change of `metric` it causes (estimates) when
    the sender's write comes from the batch's `source_tokens` (EAP with `ig_steps` > 1:
    EAP-IG); composition needs neither batch nor metric. The set becomes the key's default if
    it is the key's first, or with `make_default` (an analysis tracing its own graphs)."""
    run = open_checkpoints(run) if isinstance(run, str | Path) else run
    key = key or method
    if method != "composition" and (batch is None or SOURCE_KEY not in batch):
        raise ValueError(f"batch: method {method!r} needs a batch with 'tokens' and {SOURCE_KEY!r}")
    method_probe = graph_probe(method, metric, ig_steps)
    probe_batch = None if method == "composition" else batch
    table = probe(run, {key: method_probe}, probe_batch, steps=steps, device=device, progress=progress)
    if method == "composition":
        graphs = graphs_from_table(table, key, method, ModelShape.of(run.model_config), "composition score")
    else:  # path patching stores patched values: an edge's weight is the change from the base run
        meaning = ("change" if method == "path" else "first-order estimate of the change") + \
            f" of {metric.name} when the edge carries the source run's write"
        graphs = graphs_from_table(table, key, method, ModelShape.of(run.model_config), meaning,
                                   relative_to="base" if method == "path" else None)
    source = GraphSource(method_probe.name, batch_hash(probe_batch), numerics(run, resolve_device(device)))
    return Traced(table, graphs, save_graphs(run, key, graphs, source, make_default=make_default))


__all__ = ["GRAPH_METHODS", "GraphMethod", "Traced", "graph_probe", "trace"]
