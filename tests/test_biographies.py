"""tasks.biographies: population, templates, annotations, distributions, baseline, signatures and evaluation."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from interp.configs import ConfigError
from interp.metrics import spans
from interp.model import ModelConfig
from interp.pattern_substitution import reference_patterns
from interp.replay import Replay
from interp.train import TrainConfig, train
from tasks.biographies import (
    ATTRIBUTES,
    MONTHS,
    RECALL_SIGNATURES,
    Biographies,
    BiographiesConfig,
    RecallSignatures,
    Vocabulary,
    attribute_evaluator,
    evaluate_attributes,
    model_shape,
    recall_masks,
    recall_signatures,
)

CFG = BiographiesConfig(n_individuals=50, n_unseen=10, n_finetune=10, seed=3)
TASK = Biographies(CFG)


def test_names_are_unique_and_splits_disjoint():
    names = {tuple(n) for n in TASK.names}
    assert len(names) == 70
    assert set(TASK.trained) | set(TASK.unseen) | set(TASK.finetune) == set(range(70))
    assert TASK.unseen[0] == 50 and TASK.finetune[0] == 60


def test_biography_annotations_match_the_words():
    bio = TASK.biography(7, np.random.default_rng(0))
    words = TASK.vocab.decode(bio["tokens"]).split()
    assert words[0] == "<bos>" and words.count(".") == 6
    for a, attribute in enumerate(ATTRIBUTES):
        value = [w for w, s in zip(words, bio["attribute_of"].tolist(), strict=True) if s == a]
        assert value == TASK.values[7][attribute]
    names = [w for w, m in zip(words, bio["name_mask"].tolist(), strict=True) if m]
    assert names == TASK.names[7] * 6
    assert sorted(set(bio["sentence_of"].tolist()) - {-1}) == list(range(6))


def sentence_templates(task: Biographies, bio) -> list[tuple[str, ...]]:
    """Each sentence's words with the name and value removed: its template's own words."""
    words = task.vocab.words
    out = []
    for sentence in range(6):
        keep = (bio["sentence_of"] == sentence) & ~bio["name_mask"] & (bio["attribute_of"] < 0)
        out.append(tuple(words[t] for t in bio["tokens"][keep].tolist() if words[t] != "."))
    return out


def test_heldout_templates_are_never_used_in_training():
    def bare(templates):
        return {tuple(w for w in t if w != "{name}") for ts in templates.values() for t in ts}

    train, heldout = bare(TASK.train_templates), bare(TASK.eval_templates)
    assert not train & heldout
    rng = np.random.default_rng(1)
    used = {t for i in range(200) for t in sentence_templates(TASK, TASK.biography(i % 50, rng))}
    assert used <= train and len(used) > 30
    used_eval = {t for i in range(50) for t in sentence_templates(TASK, TASK.biography(i, rng, heldout=True))}
    assert used_eval <= heldout


def test_batch_is_padded_masked_and_pure():
    batch = TASK.batch(4, 5, torch.Generator().manual_seed(9))
    assert batch["tokens"].shape == (5, TASK.seq_len)
    assert (batch["loss_mask"] == (batch["tokens"] != 0)).all()
    again = TASK.batch(4, 5, torch.Generator().manual_seed(9))
    assert all(torch.equal(batch[k], again[k]) for k in batch)


def test_distributions_and_warmup_curriculum():
    power = Biographies(BiographiesConfig(n_individuals=50, distribution="power_law", alpha=1.0))
    p = power.probabilities()
    assert p[0] / p[1] == pytest.approx(2.0) and p.sum() == pytest.approx(1.0)
    celeb = Biographies(BiographiesConfig(n_individuals=50, distribution="celebrities", n_celebrities=5,
                                          celebrity_boost=4.0))
    assert celeb.probabilities()[0] / celeb.probabilities()[10] == pytest.approx(4.0)
    warm = Biographies(BiographiesConfig(n_individuals=50, warmup_individuals=10, warmup_steps=100))
    assert len(warm.probabilities(99)) == 10 and len(warm.probabilities(100)) == 50


def test_baseline_of_uniform_pools_approaches_log_pool_sizes():
    big = Biographies(BiographiesConfig(n_individuals=20000, n_unseen=0, n_finetune=0, first_names=100,
                                        middle_names=100, last_names=100))
    expected = np.mean([math.log(12) + math.log(28) + math.log(50), math.log(100), math.log(100), math.log(50),
                        math.log(30), math.log(60)])
    assert big.baseline() == pytest.approx(expected, abs=0.02)


def test_date_pools_set_the_birth_date_values_and_baseline():
    small = Biographies(BiographiesConfig(n_individuals=3000, n_unseen=0, n_finetune=0, months=3, days=5, years=2))
    months, days, years = ({small.values[i]["birth_date"][k] for i in small.trained} for k in range(3))
    assert months == {"January", "February", "March"} and days == {str(d) for d in range(1, 6)}
    assert years == {"1950", "1951"}
    default = Biographies(replace(small.cfg, months=12, days=28))
    # The baseline is a mean over the six attributes; only the birth date's entropy changed.
    date_entropy_drop = math.log(12 / 3) + math.log(28 / 5)
    assert small.baseline() == pytest.approx(default.baseline() - date_entropy_drop / 6, abs=0.01)
    assert len(small.vocab) == len(default.vocab) - (28 - 5)  # every month name stays a word


@pytest.mark.parametrize("field, value", [("distribution", "zipf"), ("heldout_templates", 6), ("alpha", -1.0),
                                          ("n_individuals", 10**6), ("months", 13), ("days", 29), ("days", 0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        BiographiesConfig(**{field: value})


KEYWORDS = {"birth_date": "birthday", "birth_city": "birthplace", "current_city": "residence",
            "university": "university", "major": "major", "company": "employer"}


def test_the_word_before_every_value_is_its_attribute_keyword():
    rng = np.random.default_rng(2)
    for heldout in (False, True):
        bio = TASK.biography(4, rng, heldout=heldout)
        words = TASK.vocab.decode(bio["tokens"]).split()
        starts = spans.span_start_positions(bio["attribute_of"][None])[0]
        for position in torch.nonzero(starts).flatten().tolist():
            attribute = ATTRIBUTES[int(bio["attribute_of"][position + 1])]
            assert words[position] == KEYWORDS[attribute]


def test_recall_masks_on_a_known_biography():
    batch = TASK.sample(np.array([5]), np.random.default_rng(0))
    masks = recall_masks(batch)
    words = TASK.vocab.words
    tokens = batch["tokens"][0]
    assert sorted(words[t] for t in tokens[masks["attribute_query"][0]]) == sorted(KEYWORDS.values())
    assert [words[t] for t in tokens[masks["last_name"][0]]] == [TASK.names[5][2]] * 6
    assert not (masks["name"] & masks["text"]).any() and not masks["text"][0, 0]
    assert masks["text"][0].sum() + masks["name"][0].sum() == batch["loss_mask"][0].sum() - 1  # all but BOS
    last = int(torch.nonzero(masks["last_name"][0])[3])
    assert [words[t] for t in tokens[masks["same_name"][0, last]]] == TASK.names[5][:2]


def test_population_draws_only_its_people_and_replay_pools_merge_with_it():
    source = TASK.population(TASK.finetune[:3])
    batch = source.batch(0, 16, torch.Generator().manual_seed(0))
    assert set(batch["individual"].tolist()) <= set(TASK.finetune[:3].tolist())
    pool = TASK.sample(TASK.trained[:4], np.random.default_rng(0))
    merged = Replay(source, pool, 0.5).batch(0, 4, torch.Generator().manual_seed(0))
    assert merged["tokens"].shape[0] == 6 and set(merged) == set(batch)
    with pytest.raises(ValueError, match="people"):
        TASK.population(np.array([], dtype=int))


def test_vocabulary_round_trip_and_model_shape(tmp_path):
    TASK.vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json").words == TASK.vocab.words
    assert model_shape(CFG) == (len(TASK.vocab), TASK.seq_len)
    assert model_shape(replace(CFG, n_individuals=7)) == model_shape(CFG)


def test_recall_signatures_and_the_attribute_evaluator_on_a_short_run(tmp_path):
    d_vocab, n_ctx = model_shape(CFG)
    model_cfg = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=d_vocab, n_ctx=n_ctx)
    run = train(tmp_path / "run", model_cfg, TrainConfig(steps=2, batch_size=4, checkpoint_log=0), TASK,
                device="cpu", progress=False)
    batch = TASK.sample(TASK.trained[:3], np.random.default_rng(0), heldout=True)
    signatures = recall_signatures(run, batch, device="cpu")
    assert signatures.steps == [0, 2] and set(signatures.values) == set(RECALL_SIGNATURES)
    assert signatures.to_json() == {"steps": [0, 2], **signatures.values}  # signatures.json
    for name in RECALL_SIGNATURES:
        assert set(signatures.values[name]) == {"layer0", "layer1"}
        assert all(0 <= v <= 1 for values in signatures.values[name].values() for v in values)
    model = run.load(device="cpu")
    assert attribute_evaluator(batch, "cpu")(model) == evaluate_attributes(model, batch)
    # Patterns taken from the model itself change nothing.
    assert attribute_evaluator(batch, "cpu", reference_patterns(model))(model) == pytest.approx(
        evaluate_attributes(model, batch))


def test_draw_trained_and_heldout_batch_are_pure_functions_of_their_stream():
    people = TASK.draw_trained(8, 0, 1)
    assert len(set(people.tolist())) == 8 and people.tolist() == sorted(people.tolist())
    assert set(people.tolist()) <= set(TASK.trained.tolist())
    assert (TASK.draw_trained(8, 0, 1) == people).all() and not (TASK.draw_trained(8, 0, 2) == people).all()
    batch = TASK.heldout_batch(people, 0, 1)
    assert batch["individual"].tolist() == people.tolist()
    again = TASK.heldout_batch(people, 0, 1)
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    heldout = {tuple(w for w in t if w != "{name}") for ts in TASK.eval_templates.values() for t in ts}
    for row in range(len(people)):
        bio = {k: batch[k][row] for k in ("tokens", "attribute_of", "name_mask", "sentence_of")}
        assert set(sentence_templates(TASK, bio)) <= heldout


def test_with_replay_mixes_a_fixed_pool_of_trained_biographies_into_a_source():
    source = TASK.population(TASK.finetune)
    batch = TASK.with_replay(source, 0.5, 6, 0, 3).batch(0, 4, torch.Generator().manual_seed(0))
    individuals = batch["individual"].tolist()
    assert len(individuals) == 6  # 0.5 replayed biographies per new one, appended
    assert set(individuals[:4]) <= set(TASK.finetune.tolist()) and set(individuals[4:]) <= set(TASK.trained.tolist())
    again = TASK.with_replay(source, 0.5, 6, 0, 3).batch(0, 4, torch.Generator().manual_seed(0))
    assert all(torch.equal(batch[k], again[k]) for k in batch)


def test_signatures_at_the_nearest_checkpoint():
    signatures = RecallSignatures([0, 10, 20], {name: {"layer0": [0.1, 0.123456, 0.3]} for name in RECALL_SIGNATURES})
    assert signatures.at(12) == {name: {"layer0": 0.1235} for name in RECALL_SIGNATURES}
    assert signatures.at(5)["sharpness"] == {"layer0": 0.1}  # a tie: the earlier checkpoint
    assert signatures.at(99)["sharpness"] == {"layer0": 0.3}
    assert signatures.at(None) == {}


def test_the_value_batch_labels_each_person_with_the_index_of_the_value():
    people = TASK.draw_trained(6, 0, 4)
    batch = TASK.value_batch(people, "university", 0, 4)
    assert torch.equal(batch["tokens"], TASK.heldout_batch(people, 0, 4)["tokens"])
    assert batch["value_query"].sum(dim=1).tolist() == [1] * 6  # one university sentence per biography
    assert batch["last_name"].sum(dim=1).tolist() == [len(ATTRIBUTES)] * 6  # the name in every sentence
    words = TASK.vocab.words
    for row, person in enumerate(people):
        query = int(batch["value_query"][row].nonzero())
        assert words[batch["tokens"][row, query]] == "university"
        assert words[batch["tokens"][row, query + 1]] == TASK.pools["university"][batch["value"][row]]
        assert TASK.values[person]["university"] == [TASK.pools["university"][batch["value"][row]]]
        assert words[batch["surname"][row]] == TASK.names[person][2]
    months = TASK.value_batch(people, "birth_date", 0, 4)["value"]
    assert [MONTHS[m] for m in months] == [TASK.values[p]["birth_date"][0] for p in people]

