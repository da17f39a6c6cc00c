"""tasks.forgetting: domain structure, corpus splits, fine-tuning tasks and their replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.configs import ConfigError
from interp.replay import Replay
from tasks.forgetting import (
    DOMAINS,
    FIRST_CONTENT,
    SEP,
    FineTuningConfig,
    FineTuningTask,
    TaskFamilyConfig,
    TaskSpec,
    UpstreamConfig,
    UpstreamCorpus,
    task_specs,
)

CFG = UpstreamConfig(corpus_size=600, pool_size=100, heldout_size=50)
CORPUS = UpstreamCorpus(CFG)


def domain_rows(name: str) -> np.ndarray:
    return CORPUS.sequences.numpy()[CORPUS.domain_of == DOMAINS.index(name)]


def test_every_sequence_starts_with_its_domain_marker_and_the_splits_are_disjoint():
    assert CORPUS.sequences.shape == (600, CFG.seq_len)
    assert (CORPUS.sequences[:, 0].numpy() == CORPUS.domain_of).all()
    assert CORPUS.pool == slice(0, 100) and CORPUS.heldout == slice(100, 150)
    assert np.bincount(CORPUS.domain_of).argmax() == 0  # markov is the most frequent domain


def test_domain_structure():
    half = (CFG.seq_len - 2) // 2
    for row in domain_rows("copy"):
        assert row[1 + half] == SEP and (row[1 : 1 + half] == row[2 + half : 2 + 2 * half]).all()
    for row in domain_rows("reverse"):
        assert (row[1 : 1 + half] == row[2 + half : 2 + 2 * half][::-1]).all()
    for row in domain_rows("arithmetic"):
        a, b, c = row[1:22].reshape(-1, 3).T - FIRST_CONTENT  # 7 whole triples, then a truncated one
        assert ((a + b) % CFG.modulus == c).all()
    table = {tuple(k): v for k, v in zip(CORPUS.domains.fact_keys.tolist(), CORPUS.domains.fact_values, strict=True)}
    for row in domain_rows("facts"):
        for k1, k2, v in row[1:22].reshape(-1, 3) - FIRST_CONTENT:
            assert table[(k1, k2)] == v
    for row in domain_rows("markov"):
        content = row[1:] - FIRST_CONTENT
        assert all(b in CORPUS.domains.successors[a] for a, b in zip(content[:-1], content[1:], strict=True))


def test_fine_tuning_task_rewrites_the_answer_through_its_permutation():
    spec = TaskSpec(domain_weights=(0.0, 0.0, 1.0, 0.0, 0.0), strength=0.5, steps=10, lr=1e-3, seed=7)
    task = FineTuningTask(CORPUS.domains, spec)
    moved = (task.permutation != np.arange(CFG.n_content)).sum()
    assert moved == round(0.5 * CFG.n_content)
    batch = task.batch(0, 8, torch.Generator().manual_seed(0))
    tokens, mask = batch["tokens"].numpy(), batch["loss_mask"].numpy()
    prompt = task.prompt_len
    assert (tokens[:, 0] == 2).all()
    half = (CFG.seq_len - 2) // 2
    segment = tokens[:, 1 : 1 + half] - FIRST_CONTENT
    assert (tokens[:, 2 + half : 2 + 2 * half] - FIRST_CONTENT == task.permutation[segment]).all()
    assert mask[:, prompt - 1 : -1].all() and not mask[:, : prompt - 1].any() and not mask[:, -1].any()
    again = task.batch(0, 8, torch.Generator().manual_seed(0))["tokens"].numpy()
    assert (again == tokens).all()


def test_task_specs_are_seeded_and_in_range():
    cfg = TaskFamilyConfig(n_tasks=20)
    specs = task_specs(cfg)
    assert specs == task_specs(cfg)
    assert all(len(s.domain_weights) == 5 and sum(s.domain_weights) == pytest.approx(1.0) for s in specs)
    focused = task_specs(TaskFamilyConfig(n_tasks=20, domain_concentration=0.05))
    assert np.mean([max(s.domain_weights) for s in focused]) > np.mean([max(s.domain_weights) for s in specs])
    assert all(0.2 <= s.strength <= 0.8 and s.steps in cfg.steps_choices for s in specs)


@pytest.mark.parametrize("field, value", [("frequencies", (1.0, 2.0)), ("d_vocab", 10), ("corpus_size", 100)])
def test_bad_upstream_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        UpstreamConfig(**{field: value})


def test_bad_task_family_config_names_the_field():
    with pytest.raises(ConfigError, match="strength_range"):
        TaskFamilyConfig(strength_range=(0.5, 0.2))
    with pytest.raises(ConfigError, match="domain_concentration"):
        TaskFamilyConfig(domain_concentration=0.0)


def test_domain_means_average_pool_values_by_domain():
    values = np.arange(CFG.pool_size, dtype=float)
    domains = CORPUS.domain_of[CORPUS.pool]
    means = CORPUS.domain_means(values)
    assert set(means) == {DOMAINS[d] for d in np.unique(domains)}
    assert means["markov"] == pytest.approx(values[domains == 0].mean())


def test_fine_tuning_config_serves_the_task_with_replay_only_when_asked():
    spec = task_specs(TaskFamilyConfig(n_tasks=1))[0]
    generator = torch.Generator().manual_seed(0)
    plain = FineTuningConfig(CFG, spec).data()
    assert isinstance(plain, FineTuningTask) and plain.batch(0, 8, generator)["tokens"].shape[0] == 8
    replayed = FineTuningConfig(CFG, spec, replay_ratio=0.5, replay_seed=3).data()
    batch = replayed.batch(0, 8, torch.Generator().manual_seed(0))
    assert isinstance(replayed, Replay) and batch["tokens"].shape[0] == 12
    assert batch["loss_mask"][8:].all() and not batch["loss_mask"][:8, 0].any()  # pool rows: every position scored
    first = np.zeros(CFG.pool_size)
    first[7] = 1.0
    weighted = FineTuningConfig(CFG, spec, 0.125, tuple(first), replay_seed=3).data()
    assert weighted.replayed(0, 8).tolist() == [7]
    with pytest.raises(ConfigError, match="replay_weights"):
        FineTuningConfig(CFG, spec, 0.5, (1.0, 2.0))
    with pytest.raises(ConfigError, match="replay_ratio"):
        FineTuningConfig(CFG, spec, 1.5)
