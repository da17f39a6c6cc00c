"""Circuit graphs (serialisation, diff, drawing) and the circuit probes over a run's
checkpoints: weight-only probes without a batch or a forward pass, caching, saved graph sets
(one per probe and batch, a key's default, the old layout) and the `interp circuit` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import D_VOCAB, N_CTX
from test_probing import ForwardCounter

from interp.batches import repeated_patch_batch
from interp.checkpoints import Run
from interp.circuits.common import mean_logprob
from interp.circuits.cross_checkpoint import cross_checkpoint_probe
from interp.circuits.graph import (
    LEGACY_SET,
    CircuitDiff,
    CircuitGraph,
    GraphSetId,
    ModelShape,
    list_graph_sets,
    load_graphs,
    read_graph_set,
)
from interp.circuits.readout import dla_probe, logit_lens_probe
from interp.circuits.trace import trace
from interp.circuits.weights import composition_probe, copying_probe, qk_matching_probe
from interp.cli import main
from interp.ids import EMBED, LOGITS, EdgeId, HeadId, MlpId, parse_node
from interp.probing import batch_hash, probe
from interp.view.circuits import saved_circuits
from interp.viz import plot_circuit, plot_circuit_diff

SHAPE = ModelShape(n_layers=2, n_heads=2, attn_only=False)


def edge(text: str) -> EdgeId:
    return EdgeId.parse(text)


def test_node_and_edge_identities_round_trip():
    for text in ("embed", "logits", "MLP3", "L1H2"):
        assert str(parse_node(text)) == text
    for text in ("L0H1->L1H2.k", "embed->MLP0", "L1H2->logits", "MLP0->L1H0.q"):
        assert str(EdgeId.parse(text)) == text
    for bad in ("L0H1->L1H2", "embed->L0H0", "logits->MLP0", "L0H1->embed", "L0H1->MLP0.k", "L0H1->L1H2.z"):
        with pytest.raises(ValueError, match="edge|node"):
            EdgeId.parse(bad)


def test_model_shape_enumerates_the_direct_edges():
    edges = SHAPE.edges()
    assert len(edges) == len(set(edges))
    # L0 heads read embed (3 inputs x 2 heads); MLP0 reads embed + L0; L1 heads read embed, L0, MLP0; MLP1 and
    # the logits read everything before them.
    assert len(edges) == 2 * 3 * 1 + 3 + 2 * 3 * 4 + 6 + 7
    assert edge("MLP0->L1H1.v") in edges and edge("L1H0->MLP1") in edges
    assert edge("L1H0->L1H1.k") not in edges  # same layer: reads the residual before the layer
    assert ModelShape(2, 2, attn_only=True).senders_before(LOGITS) == [EMBED, HeadId(0, 0), HeadId(0, 1),
                                                                       HeadId(1, 0), HeadId(1, 1)]


def test_graph_round_trips_through_strict_json():
    graph = CircuitGraph("path", 40, SHAPE, {edge("L0H1->L1H0.k"): -0.5, edge("MLP1->logits"): math.nan}, "m")
    text = json.dumps(graph.to_json(), allow_nan=False)
    back = CircuitGraph.from_json(json.loads(text))
    assert back.step == 40 and back.shape == SHAPE and back.metric == "m"
    assert back.weights[edge("L0H1->L1H0.k")] == -0.5 and math.isnan(back.weights[edge("MLP1->logits")])
    with pytest.raises(ValueError, match="not edges"):
        CircuitGraph("path", 0, ModelShape(1, 1, True), {edge("L0H1->L1H0.k"): 1.0})


def test_diff_names_appearing_vanishing_flipped_edges_and_swapped_roles():
    before = CircuitGraph("path", 0, SHAPE, {edge("L0H0->L1H0.k"): 1.0, edge("L0H1->L1H1.v"): 0.8,
                                             edge("embed->MLP0"): 0.5, edge("MLP0->logits"): 0.01})
    after = CircuitGraph("path", 9, SHAPE, {edge("L0H0->L1H1.v"): 0.8, edge("L0H1->L1H0.k"): 1.0,
                                            edge("embed->MLP0"): -0.5, edge("MLP0->logits"): 0.9})
    diff = CircuitDiff.between(before, after)
    assert set(diff.appeared) == {edge("L0H0->L1H1.v"), edge("L0H1->L1H0.k"), edge("MLP0->logits")}
    assert set(diff.vanished) == {edge("L0H0->L1H0.k"), edge("L0H1->L1H1.v")}
    assert diff.sign_flipped == {edge("embed->MLP0"): (0.5, -0.5)}
    assert diff.role_swaps == [(HeadId(0, 0), HeadId(0, 1))]  # L0H0 and L0H1 traded receivers
    assert diff.largest_changes[0][1] == pytest.approx(1.0) or abs(diff.largest_changes[0][1]) == pytest.approx(1.0)
    json.dumps(diff.to_json(), allow_nan=False)
    assert diff.summary()[0].startswith("3 edges appear, 2 vanish, 1 change sign")


def test_circuit_figures_draw():
    graph = CircuitGraph("eap", 0, SHAPE, {e: 0.1 * (i % 5 - 2) for i, e in enumerate(SHAPE.edges())})
    later = CircuitGraph("eap", 5, SHAPE, {e: 0.1 * (i % 3 - 1) for i, e in enumerate(SHAPE.edges())})
    assert plot_circuit(graph).axes and plot_circuit_diff(graph, later).axes


# --- over a run's checkpoints -------------------------------------------------------------------


def patch_batch(seed: int = 0):
    return repeated_patch_batch(3, N_CTX // 2, D_VOCAB, torch.Generator().manual_seed(seed))


def files_of(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder`: its bytes and modification time (a rewrite changes the latter)."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_weight_only_probes_need_no_batch_and_no_forward(run_copy: Run, monkeypatch):
    counter = ForwardCounter(monkeypatch)
    probes = {"composition": composition_probe(), "copying": copying_probe(), "qk": qk_matching_probe()}
    table = probe(run_copy, probes)
    assert counter.forwards == 0 and counter.run_with_cache == 0
    assert table.steps.tolist() == run_copy.steps
    grid = table.head_grid("copying", 2, 2)
    assert grid.shape == (len(run_copy.steps), 2, 2) and ((grid >= -1) & (grid <= 1)).all()
    with pytest.raises(ValueError, match="batch"):
        probe(run_copy, {"dla": dla_probe()})


def test_trace_saves_one_graph_per_checkpoint_and_a_second_call_is_cached(run_copy: Run, monkeypatch):
    traced = trace(run_copy, "path", patch_batch(), mean_logprob("in_repeat"))
    assert [g.step for g in traced.graphs] == run_copy.steps
    assert load_graphs(run_copy.path, "path") == traced.graphs
    saved = traced.saved.graph_set
    assert traced.saved.created and saved.default and traced.folder == run_copy.path / "circuits" / "path" / \
        str(saved.set_id)
    index = json.loads((traced.folder / "index.json").read_text())
    assert index["method"] == "path" and index["batch"] == batch_hash(patch_batch())
    assert "in_repeat" in index["probe"] and index["metric"] == traced.graphs[0].metric
    assert [(c["step"], c["checkpoint"]) for c in index["checkpoints"]] == \
        [(s, run_copy.checkpoint_hash(s)) for s in run_copy.steps]
    assert index["numerics"] == "float32/cpu" and all(len(c["sha256"]) == 64 for c in index["checkpoints"])
    before = files_of(run_copy.path / "circuits")
    counter = ForwardCounter(monkeypatch)
    again = trace(run_copy, "path", patch_batch(), mean_logprob("in_repeat"))
    assert counter.forwards == 0 and again.graphs == traced.graphs
    # Idempotent: the same id and folder, and not one file rewritten.
    assert not again.saved.created and again.saved.graph_set == saved
    assert files_of(run_copy.path / "circuits") == before


def test_a_trace_on_another_batch_adds_a_set_and_never_changes_the_analysis_set(run_copy: Run):
    metric = mean_logprob("in_repeat")
    user_first = trace(run_copy, "path", patch_batch(1), metric, steps=[8])
    assert user_first.saved.graph_set.default  # a key's first set is its default ...
    analysis = trace(run_copy, "path", patch_batch(0), metric, steps=[0, 8], make_default=True)
    assert analysis.saved.created and analysis.saved.graph_set.default  # ... until an analysis claims the key
    assert analysis.folder != user_first.folder
    analysis_files = files_of(analysis.folder)
    later = trace(run_copy, "path", patch_batch(2), metric, steps=[8])  # `--steps 8` on another batch
    assert later.saved.created and not later.saved.graph_set.default
    assert files_of(analysis.folder) == analysis_files
    assert load_graphs(run_copy.path, "path") == analysis.graphs
    sets = list_graph_sets(run_copy.path, "path")
    assert [s.set_id for s in sets][0] == analysis.saved.graph_set.set_id and len(sets) == 3
    assert {s.batch for s in sets} == {batch_hash(patch_batch(i)) for i in range(3)}
    assert sets[0].steps == [0, 8] and all(s.method == "path" for s in sets)
    assert load_graphs(run_copy.path, "path", graph_set=str(later.saved.graph_set.set_id)) == later.graphs
    assert load_graphs(run_copy.path, "path", graph_set=user_first.saved.graph_set.set_id) == user_first.graphs
    with pytest.raises(ValueError, match="graph_set"):
        load_graphs(run_copy.path, "path", graph_set="0123456789abcdef")
    with pytest.raises(ValueError, match="graph_set"):
        GraphSetId.parse("../path")
    # The explorer shows the default set, and says the others exist.
    shown, notes = saved_circuits(run_copy)
    assert [(c["key"], c["graph_set"], c["steps"]) for c in shown] == [
        ("path", str(analysis.saved.graph_set.set_id), [0, 8])]
    assert shown[0]["source"] == f"circuits/path/{analysis.saved.graph_set.set_id}"
    assert any("also saved" in n and str(later.saved.graph_set.set_id) in n for n in notes)


def test_old_layout_is_read_in_place_as_the_default_set(run_copy: Run):
    """A key written before graph sets (`circuits/<key>/step_<N>.json` and an index of method,
    metric and steps) is the set `legacy`, batch unknown, and stays the default."""
    shape = ModelShape.of(run_copy.model_config)
    old = [CircuitGraph("path", step, shape, {e: 0.1 * (i + step) for i, e in enumerate(shape.edges()[:4])}, "m")
           for step in (0, 8)]
    folder = run_copy.path / "circuits" / "path"
    folder.mkdir(parents=True)
    for graph in old:
        (folder / f"step_{graph.step}.json").write_text(json.dumps(graph.to_json()))
    (folder / "index.json").write_text(json.dumps({"format": "interp.circuit/1", "key": "path", "method": "path",
                                                   "metric": "m", "steps": [0, 8]}))
    legacy = read_graph_set(run_copy.path, "path")
    assert (legacy.set_id, legacy.batch, legacy.probe, legacy.steps, legacy.default) == (LEGACY_SET, None, None,
                                                                                          [0, 8], True)
    assert load_graphs(run_copy.path, "path") == old
    old_files = files_of(folder)
    new = trace(run_copy, "path", patch_batch(), mean_logprob("in_repeat"), steps=[8])
    assert new.saved.created and not new.saved.graph_set.default
    assert {k: v for k, v in files_of(folder).items() if "/" not in k and k != "sets.json"} == old_files
    assert load_graphs(run_copy.path, "path") == old
    assert load_graphs(run_copy.path, "path", graph_set="legacy") == old
    assert load_graphs(run_copy.path, "path", graph_set=new.saved.graph_set.set_id) == new.graphs
    shown, _ = saved_circuits(run_copy)
    assert shown[0]["graph_set"] == "legacy" and shown[0]["source"] == "circuits/path"


def test_eap_and_readout_probes_run_through_the_runner(run_copy: Run):
    batch = patch_batch()
    eap = trace(run_copy, "eap", batch, mean_logprob("in_repeat"), steps=[0, 8])
    assert len(eap.graphs) == 2 and all(math.isfinite(w) for w in eap.graphs[1].weights.values())
    table = probe(run_copy, {"dla": dla_probe("in_repeat"), "lens": logit_lens_probe("in_repeat")}, batch,
                  steps=[0, 8])
    assert "dla/L1H0" in table.columns and "lens/final_post/top1" in table.columns
    heads = sum(table[f"dla/{h}"] for h in ("L0H0", "L0H1", "L1H0", "L1H1"))
    assert (heads + table["dla/embed"] + table["dla/MLP0"] + table["dla/MLP1"] + table["dla/other"]
            == pytest.approx(table["dla/total"], abs=1e-5))


def test_cross_checkpoint_probe_against_a_fixed_step(run_copy: Run):
    batch = patch_batch()
    source = cross_checkpoint_probe(lambda device: run_copy.load(0, device=device), run_copy.checkpoint_hash(0),
                                    mean_logprob("in_repeat"))
    table = probe(run_copy, {"x": source}, batch, steps=[0, 8]).select("x")
    assert table["source"][1] == pytest.approx(table["base"][0], abs=1e-6)  # A itself
    at_zero = {c: v for c, v in zip(table.columns, table.values[0], strict=True)}
    assert all(v == pytest.approx(at_zero["base"], abs=1e-6) for v in at_zero.values())  # A = B: identity
    assert str(MlpId(1)) in table.columns and "logits" in table.columns


def test_cli_circuit_writes_graphs_and_prints_a_summary(run_copy: Run, capsys):
    assert main(["circuit", str(run_copy.path), "--method", "composition"]) == 0
    out = capsys.readouterr().out
    saved = read_graph_set(run_copy.path, "composition")
    assert "wrote 5 graphs" in out and "L0H" in out
    assert f"{saved.folder} (a new graph set {saved.set_id}, the key's default)" in out
    assert (saved.folder / "index.json").exists() and (saved.folder.parent / "sets.json").exists()
    assert main(["circuit", str(run_copy.path), "--method", "composition"]) == 0
    assert f"(the existing graph set of this probe and batch {saved.set_id}" in capsys.readouterr().out
    assert main(["circuit", str(run_copy.path), "--method", "dla", "--steps", "0", "8"]) == 0
    assert "L1H0" in capsys.readouterr().out
    assert main(["circuit", str(run_copy.path), "--method", "path", "--period", "99"]) == 2
    assert "--period" in capsys.readouterr().err


def test_cli_circuit_on_another_batch_leaves_the_analysis_graphs_shown(run_copy: Run, capsys):
    analysis = trace(run_copy, "path", patch_batch(), mean_logprob("in_repeat"), steps=[0, 8], make_default=True)
    analysis_files = files_of(analysis.folder)
    assert main(["circuit", str(run_copy.path), "--method", "path", "--steps", "8"]) == 0
    out = capsys.readouterr().out
    cli_set = next(s for s in list_graph_sets(run_copy.path, "path") if not s.default)
    assert f"{cli_set.folder} (a new graph set {cli_set.set_id}, not the key's default)" in out
    assert f"stays {analysis.saved.graph_set.set_id} (default)" in out
    assert files_of(analysis.folder) == analysis_files
    assert load_graphs(run_copy.path, "path") == analysis.graphs
    assert saved_circuits(run_copy)[0][0]["graph_set"] == str(analysis.saved.graph_set.set_id)
