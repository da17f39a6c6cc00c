"""Linear probes (interp.metrics.probe_fitting, interp.metrics.linear_probes): known answers on
synthetic activations (Bayes accuracy, chance under permuted labels, grouped splits that refuse
leaks, the control task, direction cosines under a known rotation), and the probe inside the
one-forward runner and CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import D_VOCAB, N_CTX
from scipy.stats import norm
from transformer_lens.model_bridge import TransformerBridge

from interp.cli import main
from interp.hooks import hook_name
from interp.metrics import outputs
from interp.metrics.linear_probes import (
    LinearProbeSettings,
    baseline_row,
    direction_drift,
    linear_probe,
    load_directions,
    over_baseline,
    probe_examples,
    save_batch,
)
from interp.metrics.probe_fitting import FitSettings, fit_probe, grouped_split
from interp.probing import probe, probe_artifacts


def two_gaussians(n: int, d: int, mu: float, seed: int, direction: np.ndarray | None = None):
    """Classes 0/1 at -mu*u and +mu*u with unit isotropic noise: Bayes accuracy Phi(mu)."""
    rng = np.random.default_rng(seed)
    u = np.eye(d)[0] if direction is None else direction
    labels = rng.integers(0, 2, n)
    features = rng.normal(size=(n, d)) + mu * np.outer(np.where(labels == 1, 1.0, -1.0), u)
    return features, labels


# --- known answers on synthetic activations ------------------------------------------------------


def test_planted_binary_signal_reaches_bayes_accuracy():
    features, labels = two_gaussians(12000, 32, mu=1.0, seed=0)
    fit = fit_probe(features, labels, settings=FitSettings(test_size=0.5))
    assert fit.kind == "classification"
    assert abs(fit.score - norm.cdf(1.0)) < 0.02
    assert abs(fit.control_score - 0.5) < 0.03  # every example its own type: random labels
    assert fit.selectivity > 0.3
    assert abs(fit.chance - 0.5) < 0.03
    assert fit.direction.shape == (1, 32)
    assert fit.direction[0, 0] > 0 and abs(fit.direction[0, 0]) > 5 * np.abs(fit.direction[0, 1:]).max()


def test_planted_multiclass_signal_reaches_bayes_accuracy():
    rng = np.random.default_rng(1)
    d, k, n = 16, 4, 12000
    means = 1.2 * np.eye(d)[:k]
    labels = rng.integers(0, k, n)
    features = rng.normal(size=(n, d)) + means[labels]
    # Equal isotropic covariances and priors: the Bayes rule is the nearest mean.
    big = rng.integers(0, k, 200000)
    sample = rng.normal(size=(len(big), d)) + means[big]
    bayes = float(np.mean(np.argmin(((sample[:, None, :] - means[None]) ** 2).sum(-1), axis=1) == big))
    fit = fit_probe(features, labels, settings=FitSettings(test_size=0.5))
    assert abs(fit.score - bayes) < 0.02
    assert fit.direction.shape == (k, d) and fit.classes.tolist() == [0, 1, 2, 3]
    assert fit.values()["n_classes"] == 4


def test_planted_linear_value_reaches_bayes_r2():
    rng = np.random.default_rng(2)
    n, d = 8000, 24
    w = rng.normal(size=d) / np.sqrt(d)
    features = rng.normal(size=(n, d))
    values = features @ w + 0.5 * rng.normal(size=n)
    bayes = float(w @ w / (w @ w + 0.25))
    fit = fit_probe(features, values, settings=FitSettings(test_size=0.5))
    assert fit.kind == "regression"
    assert abs(fit.score - bayes) < 0.02
    assert set(fit.values()) >= {"r2", "control_r2", "selectivity", "alpha"}
    cosine = fit.direction[0] @ w / np.linalg.norm(fit.direction[0]) / np.linalg.norm(w)
    assert cosine > 0.99


def test_permuted_labels_are_at_chance_with_no_selectivity():
    features, labels = two_gaussians(8000, 32, mu=1.0, seed=3)
    permuted = np.random.default_rng(4).permutation(labels)
    fit = fit_probe(features, permuted, settings=FitSettings(test_size=0.5))
    assert abs(fit.score - fit.chance) < 0.03
    assert abs(fit.selectivity) < 0.04


def entity_data(n_entities: int, per_entity: int, d: int, seed: int):
    """Each entity has its own random feature vector (its identity) and one random label:
    nothing generalises from one entity to another."""
    rng = np.random.default_rng(seed)
    entity = np.repeat(np.arange(n_entities), per_entity)
    identity = rng.normal(size=(n_entities, d))
    features = identity[entity] + 0.3 * rng.normal(size=(len(entity), d))
    labels = rng.integers(0, 2, n_entities)[entity]
    return features, labels, entity


def test_a_grouped_split_stops_memorisation_of_entities():
    features, labels, entity = entity_data(100, 10, 128, seed=5)
    leaky = fit_probe(features, labels)  # every example its own group: an entity on both sides
    grouped = fit_probe(features, labels, entity)
    assert leaky.score > 0.9  # memorised
    assert abs(grouped.score - 0.5) < 0.2  # nothing to generalise (25 test entities: a coarse estimate)
    assert not set(entity[grouped.train_index]) & set(entity[grouped.test_index])


def test_the_control_task_exposes_memorisation():
    """Hewitt & Liang: with types that identify the entity, a probe that passes by memorising
    types does as well on random per-type labels, so its selectivity is near zero."""
    features, labels, entity = entity_data(100, 10, 128, seed=6)
    fit = fit_probe(features, labels, types=entity)
    assert fit.score > 0.9 and fit.control_score > 0.85
    assert abs(fit.selectivity) < 0.1


def test_a_leaking_split_is_refused_and_too_few_groups_too():
    groups = np.repeat(np.arange(10), 5)
    test = np.zeros(50, dtype=bool)
    test[:12] = True  # group 2 (rows 10..14) is cut in two
    with pytest.raises(ValueError, match=r"split: groups \[2\] have examples in both train and test"):
        grouped_split(groups, test=test)
    train, held = grouped_split(groups, test=np.isin(groups, [0, 1]))
    assert set(groups[held]) == {0, 1} and not set(groups[train]) & {0, 1}
    with pytest.raises(ValueError, match="groups: 4 distinct groups"):
        grouped_split(np.repeat(np.arange(4), 5), folds=3)
    features, labels = two_gaussians(50, 4, 1.0, seed=0)
    with pytest.raises(ValueError, match="split: groups"):
        fit_probe(features, labels, groups, test=test)


def test_fits_are_deterministic_and_the_seed_moves_the_split():
    features, labels = two_gaussians(600, 8, 1.0, seed=7)
    a, b = (fit_probe(features, labels, settings=FitSettings(seed=3)) for _ in range(2))
    assert a.values() == b.values() and np.array_equal(a.direction, b.direction)
    assert not np.array_equal(fit_probe(features, labels, settings=FitSettings(seed=4)).test_index, a.test_index)


def test_directions_rotated_by_a_known_angle_give_its_cosine():
    theta = np.deg2rad(30)
    directions = []
    for i in range(4):
        u = np.zeros(16)
        u[:2] = np.cos(i * theta), np.sin(i * theta)
        features, labels = two_gaussians(20000, 16, 1.5, seed=10 + i, direction=u)
        directions.append(fit_probe(features, labels, settings=FitSettings(test_size=0.5)).direction)
    drift = direction_drift(np.stack(directions), steps=[0, 10, 20, 30])
    assert np.allclose(drift.consecutive, np.cos(theta), atol=0.02)
    assert np.allclose(drift.to_final, np.cos(theta * np.arange(3, -1, -1)), atol=0.03)


def test_same_phase_cosines_across_cycles():
    """Directions that recur with the phase of a cycle: same-phase pairs in different cycles
    have cosine 1, other phases their own; a multi-class direction averages its rows."""
    rng = np.random.default_rng(8)
    phase_directions = rng.normal(size=(4, 2, 32))  # 4 phases, 2 classes
    steps = np.arange(13) * 10  # period 40: phases 0, 10, 20, 30; three full cycles and step 120
    directions = phase_directions[(steps // 10) % 4]
    drift = direction_drift(directions, steps, period=40)
    assert drift.same_phase.shape == (3,) and np.allclose(drift.same_phase, 1.0)
    assert np.all(np.abs(drift.other_phase) < 0.5)
    assert len(drift.same_phase_pairs) == 4 * 3 + 1 + 2  # C(3,2) per phase + phase 0 in 4 cycles (6 pairs)
    flipped = direction_drift(-directions[:2])
    assert np.allclose(flipped.consecutive, drift.cosine[0, 1])


def test_sparse_probe_uses_transformer_lens():
    features, labels = two_gaussians(2000, 32, mu=1.0, seed=9)
    features[:, 5] += np.where(labels == 1, 1.0, -1.0)
    fit = fit_probe(features, labels, np.arange(2000) // 4, settings=FitSettings(k=2))
    assert fit.k == 2 and set(np.flatnonzero(fit.direction[0])) == {0, 5}
    assert fit.score > 0.9 and abs(fit.control_score - 0.5) < 0.1
    assert {"accuracy", "control_accuracy", "selectivity", "l2_strength", "k"} <= set(fit.values())
    with pytest.raises(ValueError, match="k: a sparse probe needs binary class labels"):
        fit_probe(features, np.arange(2000) % 3, np.arange(2000) // 4, settings=FitSettings(k=2))


# --- examples from a batch -----------------------------------------------------------------------


def test_examples_read_positions_labels_and_groups_from_the_batch():
    tokens = torch.arange(24).view(4, 6) % 5
    acts = torch.arange(4 * 6 * 2, dtype=torch.float32).view(4, 6, 2)
    batch = {"tokens": tokens, "last": torch.tensor([5, -1, 0, 2]), "mask": tokens == 0,
             "row_label": torch.tensor([1, 0, 1, 0]), "pos_value": tokens.float() * 0.5,
             "person": torch.tensor([7, 7, 8, 9])}
    ex = probe_examples(acts, batch, "last", "row_label", "person")
    assert ex.features.tolist() == [acts[0, 5].tolist(), acts[1, 5].tolist(), acts[2, 0].tolist(), acts[3, 2].tolist()]
    assert ex.labels.tolist() == [1, 0, 1, 0] and ex.groups.tolist() == [7, 7, 8, 9]
    assert ex.types.tolist() == [tokens[0, 5], tokens[1, 5], tokens[2, 0], tokens[3, 2]]
    ex = probe_examples(acts, batch, "mask", "pos_value")
    rows, cols = (tokens == 0).nonzero(as_tuple=True)
    assert ex.groups.tolist() == rows.tolist() and ex.labels.tolist() == [0.0] * len(rows)
    with pytest.raises(KeyError, match="labels: batch has no key 'nope'"):
        probe_examples(acts, batch, "mask", "nope")
    with pytest.raises(ValueError, match=r"positions: batch\['row_label'\] holds positions outside \[-6, 6\)"):
        probe_examples(acts, {**batch, "row_label": torch.tensor([9, 0, 0, 0])}, "row_label", "row_label")
    with pytest.raises(ValueError, match="hook: activations of shape"):
        probe_examples(torch.zeros(4, 2, 6, 6), batch, "mask", "row_label")


# --- inside the runner --------------------------------------------------------------------------


def labelled_batch(n: int = 48, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tokens; label: the parity of the token at every position after the first."""
    tokens = torch.randint(0, D_VOCAB, (n, N_CTX), generator=torch.Generator().manual_seed(seed))
    positions = torch.ones(n, N_CTX, dtype=torch.bool)
    positions[:, 0] = False
    return {"tokens": tokens, "probed": positions, "parity": tokens % 2}


@pytest.fixture
def forwards(monkeypatch) -> list[int]:
    calls = [0]
    original = TransformerBridge.run_with_cache

    def counted(model_self, *args, **kwargs):
        calls[0] += 1
        return original(model_self, *args, **kwargs)

    monkeypatch.setattr(TransformerBridge, "run_with_cache", counted)
    return calls


def test_linear_probes_share_one_forward_per_checkpoint_and_save_directions(run_copy, forwards):
    batch = labelled_batch()
    probes = {"parity0": linear_probe(LinearProbeSettings(hook_name("resid_post", 0), "probed", "parity")),
              "parity1": linear_probe(LinearProbeSettings(hook_name("resid_post", 1), "probed", "parity",
                                                       fit=FitSettings(folds=2))),
              "loss": outputs.loss_probe()}
    table = probe(run_copy, probes, batch, device="cpu")
    steps = run_copy.steps
    assert forwards[0] == len(steps) and table.steps.tolist() == steps
    assert {"parity0/accuracy", "parity0/control_accuracy", "parity0/selectivity", "parity0/chance", "parity0/C",
            "parity1/accuracy", "loss/loss"} <= set(table.columns)
    assert np.all(table["parity0/n_test"] > 0) and np.all(table["parity0/n_classes"] == 2)
    # the token parity is in the embedding: decodable at init (the step-0 baseline row) already
    base = baseline_row(table, "parity0")
    assert base["accuracy"] > 0.75
    assert np.allclose(over_baseline(table, "parity0"), table["parity0/accuracy"] - base["accuracy"])
    # the control types are the tokens themselves, so memorising the token passes the control too
    assert np.all(np.abs(table["parity0/selectivity"]) < 0.9)

    saved = load_directions(run_copy, "parity0", probes["parity0"], batch)
    assert saved.steps.tolist() == steps and saved.directions.shape == (len(steps), 1, 16)
    assert saved.meta["hook"] == "blocks.0.hook_resid_post"
    assert load_directions(run_copy, "parity1").directions.shape == (len(steps), 1, 16)  # the only set under the key
    drift = saved.drift()
    assert drift.consecutive.shape == (len(steps) - 1,) and np.isclose(drift.to_final[-1], 1.0)
    directory = probe_artifacts(run_copy, "parity0", probes["parity0"], batch)
    assert sorted(p.name for p in directory.glob("*.npy")) == [f"step_{s:06d}.npy" for s in steps]

    forwards[0] = 0
    again = probe(run_copy, probes, batch, device="cpu")  # cached: no forward, the same numbers
    assert forwards[0] == 0 and np.array_equal(again.values, table.values, equal_nan=True)


# Names written by `linear_probe(hook, positions, labels, groups, kind=..., seed=..., ...)` before its
# settings became one object: the same settings keep their name, so their cached rows still hit.
NAMES_BEFORE_THE_SETTINGS_OBJECT = [
    (LinearProbeSettings("blocks.0.hook_resid_post", "probed", "parity"),
     "linear(hook=blocks.0.hook_resid_post,positions=probed,labels=parity,groups=None,kind=auto,split=None,"
     "types=None,control=True,test=0.25,folds=3,Cs=[0.001, 0.01, 0.1, 1.0, 10.0],"
     "alphas=[0.1, 1.0, 10.0, 100.0, 1000.0],k=None,l2=None,seed=0,max_iter=200,v=1)"),
    (LinearProbeSettings("blocks.1.hook_resid_mid", "iwl_query", "answer", groups="query_class",
                         control_types="query_class", fit=FitSettings(seed=3)),
     "linear(hook=blocks.1.hook_resid_mid,positions=iwl_query,labels=answer,groups=query_class,kind=auto,"
     "split=None,types=query_class,control=True,test=0.25,folds=3,Cs=[0.001, 0.01, 0.1, 1.0, 10.0],"
     "alphas=[0.1, 1.0, 10.0, 100.0, 1000.0],k=None,l2=None,seed=3,max_iter=200,v=1)"),
    (LinearProbeSettings("blocks.1.hook_resid_post", "icl_query", "answer", fit=FitSettings(control=False)),
     "linear(hook=blocks.1.hook_resid_post,positions=icl_query,labels=answer,groups=None,kind=auto,split=None,"
     "types=None,control=False,test=0.25,folds=3,Cs=[0.001, 0.01, 0.1, 1.0, 10.0],"
     "alphas=[0.1, 1.0, 10.0, 100.0, 1000.0],k=None,l2=None,seed=0,max_iter=200,v=1)"),
    (LinearProbeSettings("blocks.0.hook_resid_post", "probed", "prev", "sequence", kind="classification",
                         split="test", control_types="types",
                         fit=FitSettings(test_size=0.5, folds=2, Cs=[1, 10], alphas=(0.5,), k=2, l2_strength=0.1,
                                         seed=7, max_iter=50)),
     "linear(hook=blocks.0.hook_resid_post,positions=probed,labels=prev,groups=sequence,kind=classification,"
     "split=test,types=types,control=True,test=0.5,folds=2,Cs=[1, 10],alphas=[0.5],k=2,l2=0.1,seed=7,"
     "max_iter=50,v=1)"),
    (LinearProbeSettings("h", "p", "l", fit=FitSettings(k=3)),
     "linear(hook=h,positions=p,labels=l,groups=None,kind=auto,split=None,types=None,control=True,test=0.25,"
     "folds=3,Cs=[0.001, 0.01, 0.1, 1.0, 10.0],alphas=[0.1, 1.0, 10.0, 100.0, 1000.0],k=3,l2=0.01,seed=0,"
     "max_iter=200,v=1)"),
]


@pytest.mark.parametrize(("settings", "name"), NAMES_BEFORE_THE_SETTINGS_OBJECT)
def test_settings_name_their_probe_as_the_cache_always_did(settings, name):
    assert settings.name == name and linear_probe(settings).name == name


@pytest.mark.parametrize(("bad", "message"), [
    ({"k": 0}, "k: expected a positive number of coordinates, got 0"),
    ({"folds": 1}, "folds: expected an integer >= 2, got 1"),
])
def test_bad_fit_settings_name_the_field(bad, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        FitSettings(**bad)


def test_linear_probe_errors_name_the_field(run_copy):
    batch = labelled_batch()
    with pytest.raises(ValueError, match=r"linear probe of blocks.0.hook_resid_post .*groups: 2 distinct"):
        probe(run_copy, {"p": linear_probe(LinearProbeSettings("blocks.0.hook_resid_post", "probed", "parity", "few"))},
              {**batch, "few": torch.arange(48) % 2}, steps=[0], device="cpu")
    with pytest.raises(ValueError, match="no step-0 row"):
        parity = linear_probe(LinearProbeSettings("blocks.0.hook_resid_post", "probed", "parity"))
        baseline_row(probe(run_copy, {"p": parity}, batch, steps=[8], device="cpu"), "p")


def test_cli_probes_a_saved_batch(run_copy, tmp_path, capsys):
    save_batch(labelled_batch(), tmp_path / "batch.safetensors")
    code = main(["probe", str(run_copy.path), "linear", "--batch", str(tmp_path / "batch.safetensors"),
                 "--hook", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "--positions", "probed",
                 "--labels", "parity", "--steps", "4", "8", "--cycle", "4", "--csv", str(tmp_path / "t.csv")])
    out = capsys.readouterr().out
    assert code == 0
    assert "blocks.1.hook_resid_post: parity at probed (groups: batch row)" in out
    assert "(init: baseline)" in out and "same-phase vs other-phase" in out
    header = (tmp_path / "t.csv").read_text().splitlines()[0]
    assert "linear-parity-blocks.0.hook_resid_post/accuracy" in header
    assert main(["probe", str(run_copy.path), "linear", "--hook", "blocks.0.hook_resid_post"]) == 2
    assert "--batch: expected a value" in capsys.readouterr().err


def _write_bad_batch(case: str, folder) -> str:
    """A batch file that is wrong in the way `case` names; its path."""
    batch = labelled_batch()
    tokens = batch["tokens"]
    path = folder / ("batch.pt" if case == "pickle" else "batch.txt" if case == "text" else "batch.safetensors")
    if case == "pickle":
        torch.save(batch, path)
    elif case == "text":
        path.write_text("1 2 3\n4 5 6\n")
    elif case == "no tokens":
        save_batch({k: v for k, v in batch.items() if k != "tokens"}, path)
    elif case != "missing":
        changed = {"out of vocabulary": {"tokens": tokens + D_VOCAB}, "negative": {"tokens": tokens - 20},
                   "float": {"tokens": tokens.float()}, "bool": {"tokens": tokens > 3},
                   "empty": {k: v[:0] for k, v in batch.items()},
                   "too long": {"tokens": tokens.repeat(1, 2), "probed": batch["probed"].repeat(1, 2)}}[case]
        save_batch({**batch, **changed}, path)
    return str(path)


@pytest.mark.parametrize(("case", "expected"), [
    ("out of vocabulary", f"'tokens' holds ids in [{D_VOCAB}, {2 * D_VOCAB - 1}], outside the model's "
                          f"vocabulary [0, d_vocab={D_VOCAB})"),
    ("negative", f"'tokens' holds ids in [-20, {D_VOCAB - 21}], outside the model's vocabulary"),
    ("float", f"'tokens' must hold int64 (or int32) token ids of shape [batch, pos], got torch.float32 of shape "
              f"(48, {N_CTX})"),
    ("bool", "'tokens' must hold int64 (or int32) token ids of shape [batch, pos], got torch.bool"),
    ("empty", f"'tokens' is empty (shape (0, {N_CTX}))"),
    ("too long", f"'tokens' has {2 * N_CTX} positions, more than the model's context n_ctx={N_CTX}"),
    ("no tokens", "holds no 'tokens' (keys: ['parity', 'probed'])"),
    ("pickle", "is not a safetensors file (Error while deserializing header"),
    ("text", "is not a safetensors file ("),
    ("missing", "no batch file there"),
])
def test_a_bad_batch_file_is_named_in_one_line(run_copy, tmp_path, capsys, case, expected):
    """Before: an empty batch, a pickle or a text file ended in a 20-84-line traceback, exit 1."""
    path = _write_bad_batch(case, tmp_path)
    assert main(["probe", str(run_copy.path), "linear", "--batch", path, "--hook", "blocks.0.hook_resid_post",
                 "--positions", "probed", "--labels", "parity", "--device", "cpu"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"interp probe: error: {path}") and expected in lines[0], lines
