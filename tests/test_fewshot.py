"""The bursty few-shot task: sequence layout, what each evaluation set puts in
context, scoring on hand-built logits, and config errors."""

from __future__ import annotations

import pytest
import torch

from interp.configs import ConfigError
from interp.model import IGNORE_INDEX, ModelConfig, build_model, forward
from interp.probing import run_probes
from tasks.fewshot import (
    EVAL_KINDS,
    HEAD_CIRCUITS,
    FewShot,
    FewShotConfig,
    accuracy,
    circuit_probes,
    context_label_mass,
    evaluate,
)

CFG = FewShotConfig(n_classes=40, n_heldout_classes=8, n_labels=10, exemplars_per_class=6, dim=8, context_pairs=4,
                    burstiness=2)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def context_vectors(batch):
    return batch["vectors"][:, 0:-1:2]


def test_layout_of_a_training_batch():
    task = FewShot(CFG)
    batch = task.sample(16, gen())
    n_pos = CFG.n_ctx
    assert batch["tokens"].shape == (16, n_pos) and batch["vectors"].shape == (16, n_pos, CFG.dim)
    assert (batch["tokens"][:, 0::2] == task.placeholder).all()
    assert (batch["tokens"][:, 1::2] < CFG.labels).all()
    assert batch["vector_mask"][:, 0::2].all() and not batch["vector_mask"][:, 1::2].any()
    assert (batch["targets"][:, :-1] == IGNORE_INDEX).all()
    assert torch.equal(batch["targets"][:, -1], batch["answer"])
    assert torch.equal(batch["answer"], task.class_labels[batch["query_class"]])
    assert batch["query_mask"][:, -1].all() and batch["query_mask"].sum() == 16


def test_bursty_sequences_hold_the_query_class_with_distinct_exemplars():
    task = FewShot(CFG)
    batch = task.sample(64, gen(1))
    assert (batch["match_mask"].sum(1) >= CFG.burstiness).all()
    matching_labels = batch["tokens"][batch["match_mask"]]
    assert torch.equal(matching_labels, batch["answer"].repeat_interleave(batch["match_mask"].sum(1)))
    query = batch["vectors"][:, -1]
    identical = (context_vectors(batch) == query[:, None]).all(-1)
    assert not identical.any()


def test_negative_control_copies_the_query_from_context():
    task = FewShot(FewShotConfig(**{**CFG.__dict__, "query_copies_context": True}))
    for batch in (task.sample(32, gen(2)), task.evaluation("icl_novel", 32, gen(2))):
        identical = (context_vectors(batch) == batch["vectors"][:, -1][:, None]).all(-1)
        assert identical.any(1).all()


def test_same_generator_same_batch():
    a, b = FewShot(CFG).sample(8, gen(5)), FewShot(CFG).sample(8, gen(5))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_zipf_sampling_prefers_low_classes():
    task = FewShot(FewShotConfig(**{**CFG.__dict__, "zipf_exponent": 1.5}))
    classes = task.sample(2000, gen(3))["query_class"]
    assert (classes == 0).float().mean() > 5 * (classes == 20).float().mean()


@pytest.mark.parametrize("kind", EVAL_KINDS)
def test_evaluation_sets(kind):
    task = FewShot(CFG)
    batch = task.evaluation(kind, 64, gen(4))
    in_context = batch["context_labels"].gather(1, batch["answer"][:, None]).squeeze(1)
    true_label = task.class_labels[batch["query_class"]]
    n_matching = batch["match_mask"].sum(1)
    if kind == "icl_novel":
        assert (batch["query_class"] >= CFG.n_classes).all()
    elif kind != "train":
        assert (batch["query_class"] < CFG.n_classes).all()
    if kind in ("icl_novel", "icl_permuted", "flip"):
        assert in_context.all() and (n_matching == CFG.context_pairs // 2).all()
        assert (batch["context_labels"][:, :-1].sum(1) == 2).all()
    if kind in ("icl_novel", "icl_permuted"):
        assert (batch["answer"] != true_label).all()
    if kind == "flip":
        assert (batch["answer"] != true_label).all()
        assert batch["context_labels"].gather(1, true_label[:, None]).all()
    if kind == "iwl":
        assert not in_context.any() and (n_matching == 0).all()
        assert torch.equal(batch["answer"], true_label)
    if kind == "ciwl":
        assert in_context.all() and (n_matching == 0).all()
        assert torch.equal(batch["answer"], true_label)


def test_unknown_evaluation_kind():
    with pytest.raises(ValueError, match="kind"):
        FewShot(CFG).evaluation("icl", 4, gen())


def test_closed_and_full_accuracy_and_label_mass_on_hand_built_logits():
    task = FewShot(CFG)
    batch = task.evaluation("icl_permuted", 4, gen(6))
    logits = torch.full((4, CFG.n_ctx, CFG.d_vocab), -10.0)
    outside = (~batch["context_labels"][:, :-1]).float().argmax(1)
    logits[torch.arange(4), -1, outside] = 5.0  # a label not in context wins overall...
    logits[torch.arange(4), -1, batch["answer"]] = 4.0  # ...the answer wins among the context labels
    assert accuracy(logits, batch, closed=True) == 1.0
    assert accuracy(logits, batch, closed=False) == 0.0
    mass = context_label_mass(logits, batch)
    expected = torch.tensor(4.0).exp() / (torch.tensor(4.0).exp() + torch.tensor(5.0).exp())
    assert mass == pytest.approx(float(expected), abs=1e-3)


def test_evaluators_score_one_fixed_batch_per_evaluation_set():
    task = FewShot(CFG)
    model = build_model(ModelConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=CFG.d_vocab, n_ctx=CFG.n_ctx,
                                    d_input=CFG.dim), device="cpu").eval()
    evaluators = task.evaluators(8, gen(3), torch.device("cpu"))
    assert list(evaluators) == list(EVAL_KINDS)
    generator = gen(3)
    batches = {kind: task.evaluation(kind, 8, generator) for kind in EVAL_KINDS}
    with torch.no_grad():
        for kind, evaluator in evaluators.items():
            logits, scores = forward(model, batches[kind]), evaluator(model)
            assert scores == evaluate(model, batches[kind])
            assert scores["closed"] == accuracy(logits, batches[kind], closed=True)
            assert scores["full"] == accuracy(logits, batches[kind], closed=False)
            assert set(scores) == {"closed", "full", "label_mass", "loss"}
    values = run_probes(model, circuit_probes([0, 1]), batches["icl_novel"])
    assert set(values) == {f"{name}/L{layer}H{head}" for name in HEAD_CIRCUITS for layer in (0, 1)
                           for head in (0, 1)} | {"label_mass/mass"}
    assert CFG.describe().startswith("40 classes with 10 labels, 6 exemplars per class")


@pytest.mark.parametrize(("field", "value"), [("context_pairs", 5), ("burstiness", 3), ("n_labels", 3),
                                               ("exemplars_per_class", 2), ("noise", -1.0), ("n_classes", 4),
                                               ("bursty_fraction", 1.5), ("n_heldout_classes", 1)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        FewShotConfig(**{**CFG.__dict__, field: value})


def test_the_answer_batch_joins_iwl_and_novel_class_icl_sequences():
    task = FewShot(CFG)
    batch = task.answer_batch(5, gen(3))
    iwl = task.evaluation("iwl", 5, gen(3))
    assert batch["tokens"].shape == (10, CFG.n_ctx)
    assert torch.equal(batch["vectors"][:5], iwl["vectors"])  # the IWL half is drawn first, then the ICL half
    assert batch["iwl_query"][:5, -1].all() and not batch["iwl_query"][5:].any()
    assert batch["icl_query"][5:, -1].all() and not batch["icl_query"][:5].any()
    assert batch["iwl_query"].sum() == batch["icl_query"].sum() == 5
    # the IWL half's answer is the query class's own label; the ICL half's queries are novel classes
    assert torch.equal(batch["answer"][:5], task.class_labels[batch["query_class"][:5]])
    assert (batch["query_class"][5:] >= CFG.n_classes).all()
