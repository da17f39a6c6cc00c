"""Circuit analysis: known answers on a hand-wired 2-layer induction circuit, identities of
patching on random models, and the methods we wrote ourselves pinned to TransformerLens's
own on a model where both run (a tiny GPT-2 loaded with `boot_transformers`)."""

from __future__ import annotations

import math
import warnings
from functools import partial

import numpy as np
import pytest
import torch
from helpers import D_VOCAB, N_CTX

from interp.batches import SOURCE_KEY
from interp.circuits.activation import activation_patch
from interp.circuits.attribution import edge_attribution
from interp.circuits.common import PatchMetric, mean_logprob
from interp.circuits.cross_checkpoint import cross_checkpoint_patch
from interp.circuits.graph import ModelShape
from interp.circuits.paths import path_patch, path_patch_edges
from interp.circuits.readout import direct_logit_attributions, logit_lens_readout
from interp.circuits.weights import composition_scores, copying_scores, qk_matching_scores
from interp.ids import EMBED, LOGITS, EdgeId, HeadId, MlpId
from interp.model import ModelConfig, build_model, load_model_state_dict, model_state_dict

# --- a hand-wired induction circuit ---------------------------------------------------------
#
# Residual stream: four blocks of one-hot coordinates, TOKEN, POS (the position), PREV (the
# previous token, written by layer 0) and OUT (the output, read by the unembedding).
# L0H0 attends from position p to p-1 (through POS) and copies the token there into PREV;
# L1H0 attends from a query holding token t to the key whose PREV holds t (K-composition
# with L0H0) and copies that key's token into OUT; the unembedding gives logit C to it.

V, N, PERIOD = 8, 8, 4
D = 4 * V
SHARP = 1000.0  # attention scores; every softmax is one-hot to float precision
C = 5.0
TOKEN, POS, PREV, OUT = (slice(i * V, (i + 1) * V) for i in range(4))
A_TOKENS, B_TOKENS = [0, 1, 2, 3], [4, 5, 6, 7]


def _eye(rows: slice, cols: slice, scale: float = 1.0, shift: int = 0) -> torch.Tensor:
    """A d_model x d_model matrix mapping coordinate rows.start + i to cols.start + i - shift."""
    out = torch.zeros(D, D)
    for i in range(V):
        if 0 <= i - shift < V:
            out[rows.start + i, cols.start + i - shift] = scale
    return out


def hand_wired_model():
    model = build_model(ModelConfig(n_layers=2, d_model=D, n_heads=1, d_head=D, attn_only=True, normalization="none",
                                    d_vocab=V, n_ctx=N), device="cpu")
    state = {k: torch.zeros_like(v) for k, v in model_state_dict(model).items()}
    state["embed.weight"][:, TOKEN] = torch.eye(V)
    state["pos_embed.weight"][:, POS] = torch.eye(N)
    weights = {  # W (d_model x d_head, as x @ W); nn.Linear stores the transpose
        "blocks.0.attn.q": _eye(POS, POS, SHARP, shift=1), "blocks.0.attn.k": _eye(POS, POS),
        "blocks.0.attn.v": _eye(TOKEN, TOKEN), "blocks.0.attn.o": _eye(TOKEN, PREV),
        "blocks.1.attn.q": _eye(TOKEN, TOKEN, SHARP), "blocks.1.attn.k": _eye(PREV, TOKEN),
        "blocks.1.attn.v": _eye(TOKEN, TOKEN), "blocks.1.attn.o": _eye(TOKEN, OUT),
    }
    for name, w in weights.items():
        state[f"{name}.weight"] = w.T.contiguous()
    state["unembed.weight"][:, OUT] = C * torch.eye(V)
    load_model_state_dict(model, state)
    return model.eval()


def induction_batch() -> dict[str, torch.Tensor]:
    tokens = torch.tensor([A_TOKENS * 2])
    scored = torch.zeros(1, N, dtype=torch.bool)
    scored[:, PERIOD + 1 : 2 * PERIOD - 1] = True  # exact positions: one matching key each
    return {"tokens": tokens, SOURCE_KEY: torch.tensor([B_TOKENS + A_TOKENS]), "scored": scored}


def logprob(logits_of_target: float, logits: list[float]) -> float:
    return logits_of_target - math.log(sum(math.exp(x) for x in logits))


GOOD = logprob(C, [C] + [0.0] * (V - 1))  # the copied token is the target
WRONG = logprob(0.0, [C] + [0.0] * (V - 1))  # another token was copied


def test_hand_wired_circuit_predicts_the_repeat_exactly():
    model, batch = hand_wired_model(), induction_batch()
    assert path_patch_edges(model, batch, mean_logprob("scored"), [])["base"] == pytest.approx(GOOD, abs=1e-5)


def test_composition_scores_of_the_hand_wired_circuit():
    scores = composition_scores(hand_wired_model())
    sender, receiver = HeadId(0, 0), HeadId(1, 0)
    # ||W_OV0 W_K1 W_Q1^T||_F / (||W_OV0||_F ||W_K1 W_Q1^T||_F) = s sqrt(V) / (sqrt(V) s sqrt(V))
    assert scores[EdgeId(sender, receiver, "k")] == pytest.approx(1 / math.sqrt(V), abs=1e-6)
    assert scores[EdgeId(sender, receiver, "q")] == pytest.approx(0.0, abs=1e-6)
    assert scores[EdgeId(sender, receiver, "v")] == pytest.approx(0.0, abs=1e-6)


def test_copying_and_qk_matching_scores_of_the_hand_wired_circuit():
    model = hand_wired_model()
    copying = copying_scores(model)
    assert copying[HeadId(1, 0)] == pytest.approx(1.0, abs=1e-6)  # W_E W_OV W_U = C I
    assert math.isnan(copying[HeadId(0, 0)])  # writes R, which the unembedding never reads
    matching = qk_matching_scores(model)
    assert matching[EdgeId(HeadId(0, 0), HeadId(1, 0), "k")] == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(matching[HeadId(1, 0)])  # its query never meets a raw token in a key


def _uniform_logprob(context: list[int], target: int) -> float:
    """Log-prob of `target` when the head attends uniformly over `context` and copies each token."""
    counts = np.bincount(context, minlength=V)
    logits = [C * c / len(context) for c in counts]
    return logprob(logits[target], logits)


def test_path_patching_of_the_hand_wired_circuit_matches_the_derivation():
    model, batch = hand_wired_model(), induction_batch()
    metric = mean_logprob("scored")
    prev, induction = HeadId(0, 0), HeadId(1, 0)
    base, source = batch["tokens"][0].tolist(), batch[SOURCE_KEY][0].tolist()
    positions = [p for p in range(N) if batch["scored"][0, p]]

    def patched(edge: EdgeId) -> float:
        return path_patch(model, batch, metric, [edge])

    # Keys' previous tokens come from the source (B...): no key matches the query, attention
    # turns uniform over the base tokens seen so far, and copies their mixture.
    expected = np.mean([_uniform_logprob(base[: p + 1], base[p + 1]) for p in positions])
    assert patched(EdgeId(prev, induction, "k")) == pytest.approx(expected, abs=1e-5)
    # Values from the source: the right key, the wrong token.
    assert patched(EdgeId(EMBED, induction, "v")) == pytest.approx(WRONG, abs=1e-5)
    # The query reads the second copy, the same in both runs: nothing changes.
    assert patched(EdgeId(EMBED, induction, "q")) == pytest.approx(GOOD, abs=1e-5)
    # The induction head's whole write from the source run, where it finds no match either.
    expected = np.mean([_uniform_logprob(source[: p + 1], base[p + 1]) for p in positions])
    assert patched(EdgeId(induction, LOGITS)) == pytest.approx(expected, abs=1e-5)


def test_chained_edges_carry_the_source_write_of_the_sender():
    """embed->L0H0.v alone makes L0H0 write the source's previous tokens in the patched run,
    and its unpatched edge into L1H0's key carries that (ACDC): the key path's value. Also
    patching the chained edge L0H0->L1H0.k hands the key L0H0's source write, which is the
    same write: the value must not move. (Adding the source-minus-base change on top of the
    already changed write, `2 source - base`, gave each query's earlier base match a score of
    -SHARP instead: uniform attention over the other keys.)"""
    model, batch = hand_wired_model(), induction_batch()
    metric = mean_logprob("scored")
    prev, induction = HeadId(0, 0), HeadId(1, 0)
    base = batch["tokens"][0].tolist()
    positions = [p for p in range(N) if batch["scored"][0, p]]
    uniform = np.mean([_uniform_logprob(base[: p + 1], base[p + 1]) for p in positions])
    upstream, downstream = EdgeId(EMBED, prev, "v"), EdgeId(prev, induction, "k")
    assert path_patch(model, batch, metric, [upstream]) == pytest.approx(uniform, abs=1e-5)
    assert path_patch(model, batch, metric, [upstream, downstream]) == pytest.approx(uniform, abs=1e-5)
    assert path_patch(model, batch, metric, [downstream, upstream, downstream]) == pytest.approx(uniform, abs=1e-5)


def test_readouts_of_the_hand_wired_circuit():
    model, batch = hand_wired_model(), induction_batch()
    dla = direct_logit_attributions(model, batch, "scored")
    assert dla[str(HeadId(1, 0))] == pytest.approx(C * (1 - 1 / V), abs=1e-4)  # centred logit C - C/V
    assert dla[str(HeadId(0, 0))] == pytest.approx(0.0, abs=1e-5)
    assert dla["embed"] == pytest.approx(0.0, abs=1e-5)
    lens = logit_lens_readout(model, batch, "scored")
    assert lens["0_pre/logprob"] == pytest.approx(-math.log(V), abs=1e-5)  # nothing in O yet
    assert lens["1_pre/logprob"] == pytest.approx(-math.log(V), abs=1e-5)  # layer 0 writes R only
    assert lens["final_post/logprob"] == pytest.approx(GOOD, abs=1e-5)
    assert lens["final_post/top1"] == 1.0


# --- identities on random models -----------------------------------------------------------

VARIANTS = [
    ModelConfig(n_layers=2, d_model=16, n_heads=2, attn_only=True, d_vocab=D_VOCAB, n_ctx=N_CTX),
    ModelConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=D_VOCAB, n_ctx=N_CTX, positional="rotary"),
    ModelConfig(n_layers=3, d_model=16, n_heads=2, d_vocab=D_VOCAB, n_ctx=N_CTX, normalization="RMS"),
]


def random_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"tokens": torch.randint(0, D_VOCAB, (3, N_CTX), generator=g),
            SOURCE_KEY: torch.randint(0, D_VOCAB, (3, N_CTX), generator=g)}


def random_model(cfg: ModelConfig, seed: int = 0):
    return build_model(ModelConfig(**{**cfg.__dict__, "seed": seed}), device="cpu").eval()


@pytest.mark.parametrize("cfg", VARIANTS, ids=["attn-only", "rotary-mlp", "rms-3-layers"])
def test_patching_a_run_into_itself_changes_nothing(cfg):
    model, batch = random_model(cfg), random_batch()
    same = {**batch, SOURCE_KEY: batch["tokens"]}
    values = path_patch_edges(model, same, mean_logprob())
    assert max(abs(v - values["base"]) for v in values.values()) < 1e-5
    patched = activation_patch(model, same, mean_logprob(), "head_out")
    assert max(abs(v - patched["base"]) for v in patched.values()) < 1e-5
    for ig_steps in (1, 3):
        attribution = edge_attribution(model, same, mean_logprob(), ig_steps)
        assert max(abs(v) for k, v in attribution.items() if k != "base") == 0.0


def test_eap_ig_differs_from_eap_and_needs_a_step():
    model, batch = random_model(VARIANTS[1]), random_batch()
    plain, integrated = edge_attribution(model, batch, mean_logprob()), edge_attribution(model, batch,
                                                                                         mean_logprob(), 4)
    assert plain["base"] == integrated["base"] and plain.keys() == integrated.keys()
    assert any(abs(plain[k] - integrated[k]) > 1e-6 for k in plain if k != "base")
    with pytest.raises(ValueError, match="ig_steps"):
        edge_attribution(model, batch, mean_logprob(), 0)


@pytest.mark.parametrize("cfg", VARIANTS, ids=["attn-only", "rotary-mlp", "rms-3-layers"])
def test_all_paths_out_of_a_head_together_equal_patching_the_head(cfg):
    model, batch, metric = random_model(cfg), random_batch(), mean_logprob()
    shape = ModelShape.of(model.cfg)
    by_head = activation_patch(model, batch, metric, "head_out")
    for sender in (HeadId(0, 1), HeadId(1, 0)):
        together = path_patch(model, batch, metric, [e for e in shape.edges() if e.sender == sender])
        assert together == pytest.approx(by_head[str(sender)], abs=1e-5)


@pytest.mark.parametrize("cfg", VARIANTS, ids=["attn-only", "rotary-mlp", "rms-3-layers"])
def test_patching_the_whole_residual_stream_restores_the_source_metric(cfg):
    model, batch, metric = random_model(cfg), random_batch(), mean_logprob()
    patched = activation_patch(model, batch, metric, "resid_pre")
    for layer in range(cfg.n_layers):
        assert patched[str(layer)] == pytest.approx(patched["source"], abs=1e-6)


@pytest.mark.parametrize("mode", ["weights", "activations"])
@pytest.mark.parametrize("cfg", VARIANTS, ids=["attn-only", "rotary-mlp", "rms-3-layers"])
def test_cross_checkpoint_patching_identities(cfg, mode):
    early, late, batch, metric = random_model(cfg, 1), random_model(cfg, 2), random_batch(), mean_logprob()
    every = ModelShape.of(late.cfg).nodes()
    with torch.no_grad():
        own_early, own_late = float(metric.fn(early(batch["tokens"]), batch)), float(metric.fn(late(batch["tokens"]),
                                                                                             batch))
    assert cross_checkpoint_patch(late, late, batch, metric, every, mode) == pytest.approx(own_late, abs=1e-5)
    assert cross_checkpoint_patch(early, late, batch, metric, every, mode) == pytest.approx(own_early, abs=1e-5)
    assert cross_checkpoint_patch(early, late, batch, metric, [], mode) == pytest.approx(own_late, abs=1e-5)
    assert cross_checkpoint_patch(early, late, batch, metric, [HeadId(1, 0)], mode) != pytest.approx(own_late)


def test_cross_checkpoint_weights_move_exactly_the_component():
    cfg = VARIANTS[1]
    early, late = random_model(cfg, 1), random_model(cfg, 2)
    scratch = random_model(cfg, 3)
    cross_checkpoint_patch(early, late, random_batch(), mean_logprob(), [HeadId(1, 0), MlpId(0)], scratch=scratch)
    mixed, a, b = model_state_dict(scratch), model_state_dict(early), model_state_dict(late)
    width = cfg.head_dim
    assert torch.equal(mixed["blocks.1.attn.q.weight"][:width], a["blocks.1.attn.q.weight"][:width])
    assert torch.equal(mixed["blocks.1.attn.q.weight"][width:], b["blocks.1.attn.q.weight"][width:])
    assert torch.equal(mixed["blocks.1.attn.o.weight"][:, :width], a["blocks.1.attn.o.weight"][:, :width])
    assert torch.equal(mixed["blocks.1.attn.o.bias"], b["blocks.1.attn.o.bias"])  # shared: moves with all heads
    assert torch.equal(mixed["blocks.0.mlp.in.weight"], a["blocks.0.mlp.in.weight"])
    assert torch.equal(mixed["blocks.0.ln2.weight"], a["blocks.0.ln2.weight"])
    assert torch.equal(mixed["embed.weight"], b["embed.weight"])


def _reference_path_patch(model, batch, metric, edges) -> float:
    """ACDC's definition, slowly and with plain hooks: each patched receiver input is rebuilt
    as the sum of its senders' writes, each from the source run where its edge is patched
    and from this very run otherwise, plus the attention output biases of the layers before."""
    shape, patched = ModelShape.of(model.cfg), set(edges)
    names = ("attn.hook_z",) if shape.attn_only else ("attn.hook_z", "hook_mlp_out")
    writes = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.{name}" for layer in range(shape.n_layers)
                                            for name in names]
    with torch.no_grad():
        source = dict(model.run_with_cache(batch[SOURCE_KEY], names_filter=writes)[1].items())
    live: dict[str, torch.Tensor] = {}

    def record(value, hook, name):
        live[name] = value.clone()

    def write(acts, sender):
        if sender == EMBED:
            return acts["blocks.0.hook_resid_pre"]
        if isinstance(sender, HeadId):
            return acts[f"blocks.{sender.layer}.attn.hook_z"][:, :, sender.head] @ model.W_O[sender.layer, sender.head]
        return acts[f"blocks.{sender.layer}.hook_mlp_out"]

    def rebuilt(receiver, edge_input, chosen):
        senders = shape.senders_before(receiver)
        total = sum(model.b_O[layer] for layer in sorted({s.layer for s in senders if isinstance(s, HeadId)}))
        for sender in senders:
            total = total + write(source if EdgeId(sender, receiver, edge_input) in chosen else live, sender)
        return total

    def patch_head(value, hook, head, edge_input):
        value = value.clone()
        weight, bias = (getattr(model, f"{p}_{edge_input.upper()}")[head.layer, head.head] for p in "Wb")
        resid = rebuilt(head, edge_input, set())  # the decomposition is exact: nothing patched, nothing moves
        torch.testing.assert_close(resid, live[f"blocks.{head.layer}.hook_resid_pre"], atol=1e-5, rtol=0)
        value[:, :, head.head] = model.blocks[head.layer].ln1(rebuilt(head, edge_input, patched)) @ weight + bias
        return value

    def patch_input(value, hook, receiver):
        torch.testing.assert_close(rebuilt(receiver, None, set()), value, atol=1e-5, rtol=0)
        return rebuilt(receiver, None, patched)

    fwd = [(name, partial(record, name=name)) for name in writes]
    fwd += [(f"blocks.{layer}.hook_resid_pre", partial(record, name=f"blocks.{layer}.hook_resid_pre"))
            for layer in range(1, shape.n_layers)]
    for receiver, edge_input in sorted({(e.receiver, e.input) for e in edges}, key=str):
        if isinstance(receiver, HeadId):
            fwd.append((f"blocks.{receiver.layer}.attn.hook_{edge_input}",
                        partial(patch_head, head=receiver, edge_input=edge_input)))
        else:
            name = f"blocks.{receiver.layer}.ln2.hook_in" if isinstance(receiver, MlpId) else "ln_final.hook_in"
            fwd.append((name, partial(patch_input, receiver=receiver)))
    with torch.no_grad(), model.hooks(fwd_hooks=fwd):
        return float(metric.fn(model(batch["tokens"]), batch))


@pytest.mark.parametrize("cfg", VARIANTS, ids=["attn-only", "rotary-mlp", "rms-3-layers"])
def test_path_patching_of_chained_edges_equals_the_acdc_reference(cfg):
    model, batch, metric = random_model(cfg), random_batch(), mean_logprob()
    shape = ModelShape.of(model.cfg)
    last = shape.n_layers - 1
    # A chain embed -> L0H1 -> L1H0 -> ... -> logits, with a second sender into the same input
    # (embed -> L1H0.k) and an MLP link where there are MLPs.
    chain = [EdgeId(EMBED, HeadId(0, 1), "v"), EdgeId(HeadId(0, 1), HeadId(1, 0), "k"),
             EdgeId(EMBED, HeadId(1, 0), "k"), EdgeId(HeadId(1, 0), LOGITS), EdgeId(HeadId(0, 1), LOGITS)]
    if not cfg.attn_only:
        chain += [EdgeId(HeadId(0, 1), MlpId(0)), EdgeId(MlpId(0), HeadId(1, 0), "q"),
                  EdgeId(HeadId(1, 0), MlpId(last)), EdgeId(MlpId(last), LOGITS)]
    g = torch.Generator().manual_seed(0)
    edges = shape.edges()
    sampled = [edges[i] for i in torch.randperm(len(edges), generator=g)[: len(edges) // 3].tolist()]
    assert {e.receiver for e in sampled} & {e.sender for e in sampled}  # chained
    for chosen in (chain, sampled):
        assert path_patch(model, batch, metric, chosen) == pytest.approx(
            _reference_path_patch(model, batch, metric, chosen), abs=1e-5)
    # One edge alone: the reference agrees with the single-edge path patching as before.
    for edge in chain:
        assert path_patch(model, batch, metric, [edge]) == pytest.approx(
            _reference_path_patch(model, batch, metric, [edge]), abs=1e-5)


def test_bad_inputs_are_named():
    model = random_model(VARIANTS[0])
    with pytest.raises(KeyError, match="source_tokens"):
        path_patch_edges(model, {"tokens": random_batch()["tokens"]}, mean_logprob())
    with pytest.raises(ValueError, match="not an edge"):
        path_patch(model, random_batch(), mean_logprob(), [EdgeId(HeadId(1, 0), HeadId(1, 1), "k")])
    with pytest.raises(ValueError, match="kind"):
        activation_patch(model, random_batch(), mean_logprob(), "nonsense")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="moved"):
        cross_checkpoint_patch(model, model, random_batch(), mean_logprob(), [MlpId(0)])  # attention-only


# --- pinned to TransformerLens where its own implementation runs --------------------------------


@pytest.fixture(scope="module")
def gpt2_bridge(tmp_path_factory):
    """A tiny random GPT-2, saved with `transformers` and loaded offline: its joint-QKV
    attention has the per-head input hooks TransformerLens's path patching and edge
    attribution need (our native bridges do not)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=32)).save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TransformerBridge.boot_transformers(str(folder), device="cpu")
    return model.eval()


def _gpt2_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"tokens": torch.randint(0, 50, (3, 8), generator=g), SOURCE_KEY: torch.randint(0, 50, (3, 8), generator=g)}


LAST_LOGIT = PatchMetric("logit3", lambda logits, batch: logits[:, -1, 3].float().mean())


@pytest.mark.parametrize("edge_input", ["q", "k", "v"])
def test_path_patching_equals_transformer_lens_direct_path(gpt2_bridge, edge_input):
    from transformer_lens import patching

    batch = _gpt2_batch()
    _, base_cache = gpt2_bridge.run_with_cache(batch["tokens"])
    _, source_cache = gpt2_bridge.run_with_cache(batch[SOURCE_KEY])
    theirs = patching.get_act_patch_direct_path(gpt2_bridge, batch["tokens"], source_cache, base_cache,
                                                lambda logits: LAST_LOGIT.fn(logits, batch), 0, 1, edge_input,
                                                verbose=False)
    ours = [path_patch(gpt2_bridge, batch, LAST_LOGIT, [EdgeId(HeadId(0, 1), HeadId(1, h), edge_input)])
            for h in range(4)]
    np.testing.assert_allclose(ours, theirs[1].tolist(), atol=1e-5)


def test_edge_attribution_equals_transformer_lens_eap(gpt2_bridge):
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch

    batch = _gpt2_batch()
    # Theirs scores each pair separately and averages over pairs; ours differentiates the batch mean.
    result = attribution_patch(gpt2_bridge, batch[SOURCE_KEY], batch["tokens"], lambda logits: logits[0, -1, 3],
                               EdgeAttributionConfig(granularity="edge"))

    def node(n):
        if n.kind == "embed":
            return EMBED
        if n.kind == "logits":
            return LOGITS
        if n.kind in ("mlp_out", "mlp_in"):
            return MlpId(n.layer)
        return HeadId(n.layer, n.head)

    theirs: dict[EdgeId, float] = {}
    for (writer, reader), score in result.edge_scores.items():  # per position: summed
        edge = EdgeId(node(writer), node(reader), reader.kind[0] if reader.kind.endswith("_input") else None)
        theirs[edge] = theirs.get(edge, 0.0) + score
    ours = edge_attribution(gpt2_bridge, batch, LAST_LOGIT)
    assert set(theirs) == set(ModelShape.of(gpt2_bridge.cfg).edges())
    scale = max(abs(v) for v in theirs.values())
    for edge, score in theirs.items():
        assert ours[str(edge)] == pytest.approx(score, abs=1e-6 * scale + 1e-9)


def test_path_patching_follows_a_parallel_block(tmp_path):
    """GPT-NeoX (Pythia) blocks read attention and MLP from the same residual: a layer's heads
    send nothing to its own MLP, and all paths out of a sender still equal patching it."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    GPTNeoXForCausalLM(GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                     vocab_size=50, max_position_embeddings=32, use_parallel_residual=True)
                       ).save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TransformerBridge.boot_transformers(str(tmp_path), device="cpu").eval()
    shape = ModelShape.of(model.cfg)
    assert shape.parallel and EdgeId(HeadId(0, 0), MlpId(0)) not in shape.edges()
    batch = _gpt2_batch()
    heads, mlps = (activation_patch(model, batch, LAST_LOGIT, kind) for kind in ("head_out", "mlp_out"))
    for sender, alone in ((HeadId(0, 1), heads["L0H1"]), (HeadId(1, 2), heads["L1H2"]), (MlpId(0), mlps["0"])):
        together = path_patch(model, batch, LAST_LOGIT, [e for e in shape.edges() if e.sender == sender])
        assert together == pytest.approx(alone, abs=1e-5)
