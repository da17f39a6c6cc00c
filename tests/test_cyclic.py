"""tasks.cyclic: document sources, orders, batches and the loss matrix from a real run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import tiny_model_config

from interp.configs import ConfigError
from interp.model import build_model
from interp.train import TrainConfig, TrainHooks, train
from tasks.cyclic import CyclicDocuments, CyclicDocumentsConfig, identity_layout, loss_matrix

SMALL = dict(n_docs=6, doc_len=8, d_vocab=11, epochs=3, steps_per_doc=2)


def test_cyclic_order_repeats_the_first_epoch():
    schedule = CyclicDocuments(CyclicDocumentsConfig(**SMALL)).schedule()
    np.testing.assert_array_equal(schedule, np.tile(np.arange(6), 3))


def test_shuffled_order_keeps_document_zero_first_and_permutes_each_epoch():
    task = CyclicDocuments(CyclicDocumentsConfig(**{**SMALL, "epochs": 6}, order="shuffled"))
    epochs = task.schedule().reshape(6, 6)
    np.testing.assert_array_equal(epochs[0], np.arange(6))
    assert (epochs[:, 0] == 0).all()
    assert all(sorted(e) == list(range(6)) for e in epochs)
    assert any(not np.array_equal(e, np.arange(6)) for e in epochs[1:])


def test_partial_order_shuffles_only_within_blocks():
    task = CyclicDocuments(CyclicDocumentsConfig(**{**SMALL, "epochs": 4}, order="partial", block=3))
    for epoch in task.schedule().reshape(4, 6):
        assert sorted(epoch[:3]) == [0, 1, 2] and sorted(epoch[3:]) == [3, 4, 5]


def test_batch_serves_the_scheduled_document_for_every_step_of_its_episode():
    task = CyclicDocuments(CyclicDocumentsConfig(**SMALL, order="shuffled"))
    schedule, g = task.schedule(), torch.Generator()
    for step in range(len(schedule) * 2):
        tokens = task.batch(step, 3, g)["tokens"]
        assert tokens.shape == (3, 8)
        assert (tokens == task.documents[schedule[step // 2]]).all()


def test_markov_documents_use_only_branching_successors():
    cfg = CyclicDocumentsConfig(n_docs=200, doc_len=32, d_vocab=16, branching=2, source="markov")
    docs = CyclicDocuments(cfg).documents
    successors: dict[int, set[int]] = {}
    for doc in docs.tolist():
        for a, b in zip(doc[:-1], doc[1:], strict=True):
            successors.setdefault(a, set()).add(b)
    assert max(len(s) for s in successors.values()) <= 2


def test_documents_and_orders_are_seeded():
    a = CyclicDocuments(CyclicDocumentsConfig(**SMALL, order="shuffled", seed=1))
    b = CyclicDocuments(CyclicDocumentsConfig(**SMALL, order="shuffled", seed=1))
    c = CyclicDocuments(CyclicDocumentsConfig(**SMALL, order="shuffled", seed=2))
    assert torch.equal(a.documents, b.documents) and np.array_equal(a.schedule(), b.schedule())
    assert not torch.equal(a.documents, c.documents)


@pytest.mark.parametrize(("field", "value"), [("order", "random"), ("source", "books"), ("doc_len", 1), ("n_docs", 0)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        CyclicDocumentsConfig(**{**SMALL, field: value})


def test_episodic_training_yields_a_full_loss_matrix(tmp_path):
    cfg = CyclicDocumentsConfig(**SMALL)
    task = CyclicDocuments(cfg)
    model_cfg = dataclasses.replace(tiny_model_config(), d_vocab=cfg.d_vocab, n_ctx=cfg.doc_len)
    train_cfg = TrainConfig(steps=cfg.total_steps, batch_size=1, optimizer="adam", lr=1e-2, episode_steps=2,
                            reset_optimizer_each_episode=True, eval_every=2, checkpoint_log=0)
    run = train(tmp_path / "run", model_cfg, train_cfg, task, hooks=TrainHooks(evaluators={"docs": task.evaluator()}),
                device="cpu", progress=False)
    losses = loss_matrix(run.metrics(), cfg.n_docs, cfg.steps_per_doc)
    assert losses.shape == (cfg.epochs * cfg.n_docs + 1, cfg.n_docs)
    # training on a document lowers its loss within its episode
    schedule = task.schedule()
    drops = [losses[e + 1, d] < losses[e, d] for e, d in enumerate(schedule)]
    assert np.mean(drops) > 0.9


def test_only_serves_one_document_at_every_step():
    data = CyclicDocuments(CyclicDocumentsConfig(n_docs=4, doc_len=6, d_vocab=50, epochs=2, steps_per_doc=2))
    source = data.only(2)
    for step in (0, 5, 17):
        batch = source.batch(step, 3, torch.Generator())
        assert torch.equal(batch["tokens"], data.documents[2].expand(3, -1))
    with pytest.raises(ValueError, match="doc"):
        data.only(4)


def test_document_losses_are_the_evaluator_numbers_in_order():
    cfg = CyclicDocumentsConfig(**SMALL)
    task = CyclicDocuments(cfg)
    model = build_model(dataclasses.replace(tiny_model_config(), d_vocab=cfg.d_vocab, n_ctx=cfg.doc_len), "cpu")
    with torch.no_grad():
        losses = task.document_losses(model)
        expected = task.evaluator()(model)
    assert losses.shape == (cfg.n_docs,)
    np.testing.assert_allclose(losses, [expected[f"doc{i}"] for i in range(cfg.n_docs)])


def test_the_identity_batch_labels_each_document_and_groups_positions_into_windows():
    assert identity_layout(64) == (8, 4) and identity_layout(8) == (2, 1)  # at least 5 windows probed
    data = CyclicDocuments(CyclicDocumentsConfig(**{**SMALL, "doc_len": 64}))
    batch = data.identity_batch()
    assert torch.equal(batch["tokens"], data.documents) and batch["doc"].tolist() == list(range(6))
    assert batch["probed"].sum(dim=1).tolist() == [56] * 6 and not batch["probed"][:, :8].any()
    assert batch["window"][0, 8:16].tolist() == [2, 2, 2, 2, 3, 3, 3, 3]
    assert (batch["window"] == batch["window"][0]).all()  # one window spans every document
