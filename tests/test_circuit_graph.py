"""Circuit graphs (serialisation, diff, drawing) and the circuit probes over a run's
checkpoints: weight-only probes without a batch or a forward pass, caching, saved graphs
and the `interp circuit` command."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import D_VOCAB, N_CTX
from test_probing import ForwardCounter

from interp.checkpoints import Run
from interp.circuits.graph import CircuitDiff, CircuitGraph, ModelShape, load_graphs
from interp.circuits.patching import cross_checkpoint_probe, mean_logprob
from interp.circuits.readout import dla_probe, logit_lens_probe
from interp.circuits.trace import repeated_patch_batch, trace
from interp.circuits.weights import composition_probe, copying_probe, qk_matching_probe
from interp.cli import main
from interp.ids import EMBED, LOGITS, EdgeId, HeadId, MlpId, parse_node
from interp.probing import probe
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


def patch_batch():
    return repeated_patch_batch(3, N_CTX // 2, D_VOCAB, torch.Generator().manual_seed(0))


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
    index = json.loads((traced.folder / "index.json").read_text())
    assert index["steps"] == run_copy.steps and index["method"] == "path"
    counter = ForwardCounter(monkeypatch)
    again = trace(run_copy, "path", patch_batch(), mean_logprob("in_repeat"))
    assert counter.forwards == 0 and again.graphs == traced.graphs


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
    assert "wrote 5 graphs" in out and "L0H" in out
    assert (run_copy.path / "circuits" / "composition" / "index.json").exists()
    assert main(["circuit", str(run_copy.path), "--method", "dla", "--steps", "0", "8"]) == 0
    assert "L1H0" in capsys.readouterr().out
    assert main(["circuit", str(run_copy.path), "--method", "path", "--period", "99"]) == 2
    assert "--period" in capsys.readouterr().err
