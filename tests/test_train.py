"""The training loop: kill-and-resume equivalence, checkpoint schedule, learning
rate schedule, the explicit l2 penalty, loss masks, evaluators and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import (
    D_VOCAB,
    N_CTX,
    RandomTokens,
    assert_state_equal,
    fixed_tokens,
    tiny_model_config,
    tiny_train_config,
)

import interp.checkpoints as checkpoints
from interp.checkpoints import Run
from interp.configs import ConfigError
from interp.model import (
    build_model,
    fused_forward,
    load_model_state_dict,
    masked_mean_loss,
    model_state_dict,
    trainable_parameters,
)
from interp.run_layout import MANIFEST_FILE, STATE_FILE
from interp.seeding import BATCHES, generator
from interp.train import (
    CheckpointPolicy,
    TrainConfig,
    TrainHooks,
    checkpoint_schedule,
    keep_checkpoints,
    lr_at,
    take_steps,
    train,
)
from tasks.induction import RepeatedSegments, RepeatedSegmentsConfig


def run_train(path, model_cfg, train_cfg, data=None, **kwargs) -> Run:
    return train(path, model_cfg, train_cfg, data or RandomTokens(), device="cpu", progress=False, **kwargs)


class Interrupt:
    """A step callback that simulates Ctrl-C after `at` steps."""

    def __init__(self, at: int):
        self.at = at

    def __call__(self, done: int, model, loss: float) -> None:
        if done == self.at:
            raise KeyboardInterrupt


def last_weights(run: Run) -> dict[str, torch.Tensor]:
    return run.load_state_dict(run.steps[-1])


# --- kill and resume ------------------------------------------------------------------------

RESUME_CASES = {
    # adam: checkpoints 0,3,6,9,10; killed after 7 -> resumes from 6 (mid-way, moments restored)
    "adam": (dict(optimizer="adam", lr=1e-2, steps=10, checkpoint_every=3), [7]),
    "adamw-wd-cosine-warmup": (
        dict(
            optimizer="adamw",
            lr=1e-2,
            weight_decay=0.1,
            schedule="cosine",
            warmup_steps=3,
            steps=10,
            checkpoint_every=4,
            checkpoint_log=3,
            grad_clip=0.5,
        ),
        [5],
    ),
    # sgd + momentum, optimizer reset every 3 steps: checkpoints every 2, so the kill at 5
    # resumes from 4, inside the episode [3, 6): the momentum buffer must come from the checkpoint
    "sgd-episodes": (
        dict(
            optimizer="sgd",
            lr=0.05,
            momentum=0.9,
            steps=10,
            checkpoint_every=2,
            reset_optimizer_each_episode=True,
            episode_steps=3,
        ),
        [5],
    ),
    # killed exactly at an episode boundary that is also a checkpoint
    "sgd-episodes-boundary": (
        dict(
            optimizer="sgd",
            lr=0.05,
            momentum=0.9,
            steps=10,
            checkpoint_every=2,
            reset_optimizer_each_episode=True,
            episode_steps=3,
        ),
        [6],
    ),
    # killed twice
    "adam-twice": (dict(optimizer="adam", lr=1e-2, steps=12, checkpoint_every=3), [4, 10]),
}


POLICY_KILLS = {"all": [3, 5], "log": [3, 7], "final": [1, 9], "none": [5]}


@pytest.mark.parametrize("weights", list(POLICY_KILLS))
def test_a_run_that_keeps_only_some_files_resumes_bitwise(tmp_path, weights):
    """Under each policy a run killed anywhere loses nothing it checkpointed: its last checkpoint
    keeps weights and training state, the resume ends with the weights and log of an uninterrupted
    run that kept everything, and what is left on disk is what the policy says."""
    model_cfg = tiny_model_config()
    # log-spaced 1, 3, 10 (of geomspace(1, 10, 3) rounded) with resume points every 2 steps
    train_cfg = tiny_train_config(optimizer="adamw", steps=10, checkpoint_every=2, checkpoint_log=3)
    policy = CheckpointPolicy(weights=weights)
    reference = run_train(tmp_path / "reference", model_cfg, train_cfg, keep=CheckpointPolicy(state="all"))
    path = tmp_path / "run"
    for kill in POLICY_KILLS[weights]:
        with pytest.raises(KeyboardInterrupt):
            run_train(path, model_cfg, train_cfg, hooks=TrainHooks(callbacks=[Interrupt(kill)]), resume=True,
                      keep=policy)
        partial = Run.open(path)
        last = max(s for s in reference.steps if s <= kill)
        assert partial.committed_steps == [s for s in reference.steps if s <= kill]
        assert [s for s in partial.committed_steps if STATE_FILE in partial.manifest[str(s)]] == [last]
        assert last in partial.steps
        assert_state_equal(partial.load_state_dict(last), reference.load_state_dict(last))
        assert partial.load_training_state(last).keys() == reference.load_training_state(last).keys()
        assert partial.inspect().problems() == []
    resumed = run_train(path, model_cfg, train_cfg, resume=True, keep=policy)
    kept = {"all": [0, 1, 2, 3, 4, 6, 8, 10], "log": [0, 1, 3, 10], "final": [10], "none": [10]}[weights]
    assert resumed.committed_steps == reference.steps
    assert resumed.steps == kept
    for step in kept:
        assert_state_equal(resumed.load_state_dict(step), reference.load_state_dict(step))
    assert resumed.metrics() == reference.metrics()
    assert [s for s in resumed.committed_steps if STATE_FILE in resumed.manifest[str(s)]] == [10]
    assert sorted(int(p.name.split("_")[1]) for p in (path / "checkpoints").iterdir()) == [
        s for s in reference.steps if s in kept or s == 10]
    assert resumed.inspect().problems() == []
    assert run_train(path, model_cfg, train_cfg, resume=True, keep=policy).steps == kept  # finished: as it is


def test_weights_none_releases_the_last_checkpoint_only_once_results_are_written(tmp_path):
    train_cfg = tiny_train_config(steps=4, checkpoint_every=2)
    policy = CheckpointPolicy(weights="none")
    run = run_train(tmp_path / "run", tiny_model_config(), train_cfg, keep=policy)
    assert run.steps == [4]  # what the job's results are computed from
    keep_checkpoints(run, train_cfg, policy, results_written=True)
    assert run.steps == [] and run.committed_steps == [0, 2, 4]
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == [run.checkpoint_dir(4)]  # its state.pt
    assert run.load_training_state(4)["step"] == 4
    with pytest.raises(checkpoints.CheckpointError, match="keeps no weights"):
        run.load()
    # a resume knows the run is finished, from its last committed checkpoint
    assert run_train(tmp_path / "run", tiny_model_config(), train_cfg, resume=True, keep=policy).steps == []


def test_a_policy_release_killed_before_its_files_are_deleted_is_repaired(tmp_path, monkeypatch):
    train_cfg = tiny_train_config(steps=6, checkpoint_every=2)
    reference = run_train(tmp_path / "reference", tiny_model_config(), train_cfg)
    monkeypatch.setattr(checkpoints.Path, "unlink", lambda self, missing_ok=False: None)  # killed before deleting
    with pytest.raises(KeyboardInterrupt):
        run_train(tmp_path / "run", tiny_model_config(), train_cfg, keep=CheckpointPolicy(weights="final"),
                  hooks=TrainHooks(callbacks=[Interrupt(5)]))
    monkeypatch.undo()
    run = Run(tmp_path / "run")
    state = run.inspect()
    assert state.damage() == []
    assert state.released == [run.checkpoint_dir(0), run.checkpoint_dir(2)]  # left with no file: the whole folder
    assert "no longer lists" in state.repairs()[0]
    resumed = run_train(tmp_path / "run", tiny_model_config(), train_cfg, resume=True,
                        keep=CheckpointPolicy(weights="final"))
    assert resumed.inspect().problems() == []
    assert resumed.steps == [6]
    assert_state_equal(resumed.load_state_dict(6), reference.load_state_dict(6))
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_000006"]


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_kill_and_resume_is_bitwise_identical(tmp_path, case):
    overrides, kills = RESUME_CASES[case]
    model_cfg = tiny_model_config()
    train_cfg = tiny_train_config(log_every=1, **overrides)
    every_state = CheckpointPolicy(state="all")  # the optimizer states of both runs are compared below

    reference = run_train(tmp_path / "reference", model_cfg, train_cfg, keep=every_state)

    path = tmp_path / "interrupted"
    for kill in kills:
        with pytest.raises(KeyboardInterrupt):
            run_train(path, model_cfg, train_cfg, hooks=TrainHooks(callbacks=[Interrupt(kill)]), resume=True,
                      keep=every_state)
        partial = Run.open(path)
        assert partial.steps[-1] <= kill < train_cfg.steps
        assert partial.steps == [s for s in reference.steps if s <= kill]
    resumed = run_train(path, model_cfg, train_cfg, resume=True, keep=every_state)

    assert resumed.steps == reference.steps
    for step in reference.steps:
        assert_state_equal(resumed.load_state_dict(step), reference.load_state_dict(step))
    assert [r["step"] for r in resumed.metrics()] == [r["step"] for r in reference.metrics()]
    # the optimizer state of the last checkpoint a run can continue from matches too
    # (a finished run's final checkpoint stores none)
    assert resumed.load_training_state(train_cfg.steps)["optimizer"] is None
    last_open = max(s for s in reference.steps if s < train_cfg.steps and reference.load_training_state(s)["optimizer"])
    ref_state = reference.load_training_state(last_open)["optimizer"]
    res_state = resumed.load_training_state(last_open)["optimizer"]
    assert ref_state["state"].keys() == res_state["state"].keys()
    for key in ref_state["state"]:
        for name, value in ref_state["state"][key].items():
            other = res_state["state"][key][name]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), (key, name)


def test_kill_between_checkpoint_dir_and_manifest_then_resume(tmp_path, monkeypatch):
    """A kill after a checkpoint directory is in place but before the manifest lists
    it leaves an uncommitted directory; the resumed run redoes that step and ends
    bitwise equal to an uninterrupted one."""
    model_cfg = tiny_model_config()
    train_cfg = tiny_train_config(steps=8, checkpoint_every=2)
    reference = run_train(tmp_path / "reference", model_cfg, train_cfg)

    real_write = checkpoints.atomic_write_json

    def dying_write(path, obj):
        if path.name == MANIFEST_FILE and "6" in obj["checkpoints"]:
            raise KeyboardInterrupt
        real_write(path, obj)

    monkeypatch.setattr(checkpoints, "atomic_write_json", dying_write)
    with pytest.raises(KeyboardInterrupt):
        run_train(tmp_path / "run", model_cfg, train_cfg)
    monkeypatch.setattr(checkpoints, "atomic_write_json", real_write)

    crashed = Run.open(tmp_path / "run")
    assert crashed.steps == [0, 2, 4]
    assert crashed.checkpoint_dir(6).exists()  # on disk, but not committed
    resumed = run_train(tmp_path / "run", model_cfg, train_cfg, resume=True)
    assert resumed.steps == reference.steps
    assert_state_equal(last_weights(resumed), last_weights(reference))
    assert resumed.metrics() == reference.metrics()


def test_resume_after_torn_metrics_line(tmp_path):
    model_cfg = tiny_model_config()
    train_cfg = tiny_train_config(steps=8, checkpoint_every=2, log_every=1)
    reference = run_train(tmp_path / "reference", model_cfg, train_cfg)
    with pytest.raises(KeyboardInterrupt):
        run_train(tmp_path / "run", model_cfg, train_cfg, hooks=TrainHooks(callbacks=[Interrupt(5)]))
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train/lo')  # killed mid-append
    resumed = run_train(tmp_path / "run", model_cfg, train_cfg, resume=True)
    assert resumed.metrics() == reference.metrics()
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == (tmp_path / "reference" / "metrics.jsonl").read_text()


def test_episode_reset_changes_training(tmp_path):
    """Guard for the sgd-episodes case above: the reset is not a no-op."""
    model_cfg = tiny_model_config()
    common = dict(optimizer="sgd", lr=0.05, momentum=0.9, steps=6, checkpoint_every=0)
    with_reset = run_train(
        tmp_path / "a", model_cfg, tiny_train_config(reset_optimizer_each_episode=True, episode_steps=3, **common)
    )
    without = run_train(tmp_path / "b", model_cfg, tiny_train_config(**common))
    a, b = last_weights(with_reset), last_weights(without)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_resume_restores_metric_values_when_kill_is_log_aligned(tmp_path):
    model_cfg = tiny_model_config()
    train_cfg = tiny_train_config(steps=10, checkpoint_every=2, log_every=2)
    reference = run_train(tmp_path / "reference", model_cfg, train_cfg)
    with pytest.raises(KeyboardInterrupt):
        run_train(tmp_path / "run", model_cfg, train_cfg, hooks=TrainHooks(callbacks=[Interrupt(5)]))
    resumed = run_train(tmp_path / "run", model_cfg, train_cfg, resume=True)
    assert resumed.metrics() == reference.metrics()


def test_resume_restores_metric_values_when_kill_is_not_log_aligned(tmp_path):
    model_cfg = tiny_model_config()
    train_cfg = tiny_train_config(steps=10, checkpoint_every=3, log_every=2)
    reference = run_train(tmp_path / "reference", model_cfg, train_cfg)
    with pytest.raises(KeyboardInterrupt):
        run_train(tmp_path / "run", model_cfg, train_cfg, hooks=TrainHooks(callbacks=[Interrupt(4)]))  # resumes from 3
    resumed = run_train(tmp_path / "run", model_cfg, train_cfg, resume=True)
    assert resumed.metrics() == reference.metrics()


def test_resume_from_step_zero_does_not_duplicate_metrics(tmp_path):
    model_cfg = tiny_model_config()
    train_cfg = tiny_train_config(steps=6, checkpoint_every=3, eval_every=2)
    evaluators = {"ev": lambda model: {"one": 1.0}}
    reference = run_train(tmp_path / "reference", model_cfg, train_cfg, hooks=TrainHooks(evaluators=evaluators))
    with pytest.raises(KeyboardInterrupt):
        killed = TrainHooks(evaluators=evaluators, callbacks=[Interrupt(2)])
        run_train(tmp_path / "run", model_cfg, train_cfg, hooks=killed)
    assert Run.open(tmp_path / "run").steps == [0]
    resumed = run_train(tmp_path / "run", model_cfg, train_cfg, hooks=TrainHooks(evaluators=evaluators), resume=True)
    assert_state_equal(last_weights(resumed), last_weights(reference))
    assert [r["step"] for r in resumed.metrics()] == [r["step"] for r in reference.metrics()]


def test_training_is_deterministic_and_seeded(tmp_path):
    model_cfg = tiny_model_config()
    a = run_train(tmp_path / "a", model_cfg, tiny_train_config(steps=4))
    b = run_train(tmp_path / "b", model_cfg, tiny_train_config(steps=4))
    c = run_train(tmp_path / "c", model_cfg, tiny_train_config(steps=4, seed=1))  # other data order
    assert_state_equal(last_weights(a), last_weights(b))
    wa, wc = last_weights(a), last_weights(c)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert_state_equal(a.load_state_dict(0), c.load_state_dict(0))  # same init: model seed unchanged


def test_train_does_not_touch_global_rng(tmp_path):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    run_train(tmp_path / "run", tiny_model_config(), tiny_train_config(steps=3))
    assert torch.equal(torch.get_rng_state(), before)


def test_training_with_hooks_matches_fused_path(tmp_path):
    model_cfg = tiny_model_config()
    train_cfg = tiny_train_config(steps=3, optimizer="sgd", lr=0.1)
    fused = run_train(tmp_path / "fused", model_cfg, train_cfg)
    identity = TrainHooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: act)])
    hooked = run_train(tmp_path / "hooked", model_cfg, train_cfg, hooks=identity)
    a, b = last_weights(fused), last_weights(hooked)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_fwd_hooks_take_part_in_training(tmp_path):
    model_cfg = tiny_model_config()
    train_cfg = tiny_train_config(steps=3, optimizer="sgd", lr=0.1)
    plain = run_train(tmp_path / "plain", model_cfg, train_cfg)
    triple = TrainHooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: 3 * act)])
    scaled = run_train(tmp_path / "scaled", model_cfg, train_cfg, hooks=triple)
    a, b = last_weights(plain), last_weights(scaled)
    assert any(not torch.allclose(a[k], b[k], atol=1e-4) for k in a)


# --- checkpoint schedule ----------------------------------------------------------------------


def test_schedule_always_has_start_and_end():
    assert checkpoint_schedule(TrainConfig(steps=100, checkpoint_log=0)) == [0, 100]
    assert checkpoint_schedule(TrainConfig(steps=1, checkpoint_log=0)) == [0, 1]


def test_schedule_log_spaced():
    assert checkpoint_schedule(TrainConfig(steps=10_000, checkpoint_log=5)) == [0, 1, 10, 100, 1000, 10_000]
    steps = checkpoint_schedule(TrainConfig(steps=1000, checkpoint_log=10))
    assert steps[0] == 0 and steps[-1] == 1000
    positive = np.array(steps[1:], dtype=float)
    ratios = positive[1:] / positive[:-1]
    # roughly constant ratio 1000**(1/9) ~ 2.15 (rounding perturbs small steps)
    assert np.allclose(ratios[2:], 1000 ** (1 / 9), rtol=0.1)
    assert len(steps) == 11


def test_schedule_every_n():
    assert checkpoint_schedule(TrainConfig(steps=100, checkpoint_log=0, checkpoint_every=25)) == [
        0,
        25,
        50,
        75,
        100,
    ]
    # the end is included even when it is not a multiple
    assert checkpoint_schedule(TrainConfig(steps=10, checkpoint_log=0, checkpoint_every=4)) == [0, 4, 8, 10]


def test_schedule_explicit_steps_and_union():
    cfg = TrainConfig(steps=100, checkpoint_log=3, checkpoint_every=50, checkpoint_steps=(7, 33, 50))
    # log: geomspace(1, 100, 3) = 1, 10, 100
    assert checkpoint_schedule(cfg) == [0, 1, 7, 10, 33, 50, 100]


def test_schedule_matches_the_checkpoints_written(tmp_path):
    cfg = tiny_train_config(steps=9, checkpoint_every=4, checkpoint_log=3, checkpoint_steps=(5,))
    run = run_train(tmp_path / "run", tiny_model_config(), cfg)
    assert run.steps == checkpoint_schedule(cfg) == [0, 1, 3, 4, 5, 8, 9]


# --- learning rate ----------------------------------------------------------------------------


def test_lr_constant():
    cfg = TrainConfig(lr=0.5, steps=10)
    assert [lr_at(cfg, s) for s in (0, 5, 9)] == [0.5, 0.5, 0.5]


def test_lr_warmup_is_linear_then_constant():
    cfg = TrainConfig(lr=1.0, steps=20, warmup_steps=4)
    assert [lr_at(cfg, s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_lr_cosine_known_values():
    cfg = TrainConfig(lr=1.0, steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(1.0)
    assert lr_at(cfg, 5) == pytest.approx(0.55)  # half way: min + (1 - min) / 2
    assert lr_at(cfg, 10) == pytest.approx(0.1)
    assert lr_at(cfg, 9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    values = [lr_at(cfg, s) for s in range(11)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_lr_cosine_after_warmup():
    cfg = TrainConfig(lr=2.0, steps=12, schedule="cosine", warmup_steps=2, min_lr_ratio=0.0)
    assert lr_at(cfg, 0) == pytest.approx(1.0)
    assert lr_at(cfg, 1) == pytest.approx(2.0)
    assert lr_at(cfg, 2) == pytest.approx(2.0)  # cosine starts at the peak
    assert lr_at(cfg, 7) == pytest.approx(1.0)  # progress (7-2)/10 = 0.5
    assert lr_at(cfg, 12) == pytest.approx(0.0, abs=1e-12)


def test_logged_lr_follows_schedule(tmp_path):
    cfg = tiny_train_config(steps=6, schedule="cosine", warmup_steps=2, lr=0.01, log_every=1)
    run = run_train(tmp_path / "run", tiny_model_config(), cfg)
    logged = {r["step"]: r["lr"] for r in run.metrics()}
    assert logged == pytest.approx({s + 1: lr_at(cfg, s) for s in range(6)})


# --- l2 penalty ---------------------------------------------------------------------------------


def weight_norm(state: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(v.pow(2).sum()) for v in state.values()))


def test_l2_shrinks_weight_norm(tmp_path):
    model_cfg = tiny_model_config()
    common = dict(optimizer="sgd", lr=0.1, steps=5, checkpoint_every=0)
    plain = run_train(tmp_path / "plain", model_cfg, tiny_train_config(l2=0.0, **common))
    decayed = run_train(tmp_path / "l2", model_cfg, tiny_train_config(l2=0.5, **common))
    assert weight_norm(last_weights(decayed)) < 0.95 * weight_norm(last_weights(plain))


def test_l2_one_sgd_step_is_exact(tmp_path):
    """theta_1(l2) - theta_1(0) = -lr * l2 * theta_0 for one plain SGD step from the same init."""
    model_cfg = tiny_model_config()
    lr, l2 = 0.1, 0.3
    common = dict(optimizer="sgd", lr=lr, steps=1, checkpoint_every=0)
    plain = run_train(tmp_path / "plain", model_cfg, tiny_train_config(l2=0.0, **common))
    decayed = run_train(tmp_path / "l2", model_cfg, tiny_train_config(l2=l2, **common))
    theta0 = plain.load_state_dict(0)
    a, b = plain.load_state_dict(1), decayed.load_state_dict(1)
    for key in theta0:
        assert torch.allclose(b[key] - a[key], -lr * l2 * theta0[key], atol=1e-6), key


def test_decay_only_decays_just_the_matching_parameters(tmp_path):
    """One SGD step: matching parameters move by -lr * wd * theta_0 more than without
    weight decay; the others not at all."""
    model_cfg = tiny_model_config()
    lr, strength = 0.1, 0.3
    common = dict(optimizer="sgd", lr=lr, steps=1, checkpoint_every=0)
    plain = run_train(tmp_path / "plain", model_cfg, tiny_train_config(**common))
    only_attn = run_train(tmp_path / "attn", model_cfg, tiny_train_config(
        **common, weight_decay=strength, decay_only=("blocks.*.attn.*",)))
    theta0, a, b = plain.load_state_dict(0), plain.load_state_dict(1), only_attn.load_state_dict(1)
    assert any(".attn." in key for key in theta0)
    for key in theta0:
        expected = -lr * strength * theta0[key] if ".attn." in key else torch.zeros_like(theta0[key])
        assert torch.allclose(b[key] - a[key], expected, atol=1e-6), key


def test_bf16_training_tracks_fp32_and_keeps_float32_state(tmp_path):
    """bfloat16 autocast changes the forward pass only: weights and checkpoints stay
    float32, the losses follow the float32 run closely, and the run still learns."""
    model_cfg = tiny_model_config()
    common = dict(optimizer="adam", lr=1e-2, steps=20, checkpoint_every=0)
    full = run_train(tmp_path / "fp32", model_cfg, tiny_train_config(**common))
    mixed = run_train(tmp_path / "bf16", model_cfg, tiny_train_config(precision="bf16", **common))
    assert all(v.dtype == torch.float32 for v in last_weights(mixed).values())
    full_loss, mixed_loss = full.series("train/loss")[1], mixed.series("train/loss")[1]
    assert mixed_loss[-1] < mixed_loss[0] - 0.1
    assert np.abs(mixed_loss - full_loss).max() < 0.05
    a, b = last_weights(full), last_weights(mixed)
    assert any(not torch.equal(a[key], b[key]) for key in a)  # the autocast was really on


def test_l2_only_penalizes_just_the_matching_parameters(tmp_path):
    """One plain SGD step: matching parameters move by -lr * l2 * theta_0 more than
    without the penalty; the others exactly as without it."""
    model_cfg = tiny_model_config()
    lr, l2 = 0.1, 0.3
    common = dict(optimizer="sgd", lr=lr, steps=1, checkpoint_every=0)
    plain = run_train(tmp_path / "plain", model_cfg, tiny_train_config(**common))
    mlp_only = run_train(tmp_path / "mlp", model_cfg, tiny_train_config(**common, l2=l2, l2_only=("blocks.*.mlp.*",)))
    theta0, a, b = plain.load_state_dict(0), plain.load_state_dict(1), mlp_only.load_state_dict(1)
    assert any(".mlp." in key for key in theta0)
    for key in theta0:
        expected = -lr * l2 * theta0[key] if ".mlp." in key else torch.zeros_like(theta0[key])
        assert torch.allclose(b[key] - a[key], expected, atol=1e-6), key


@pytest.mark.parametrize("field", ["decay_only", "l2_only"])
def test_parameter_patterns_that_match_nothing_are_refused(tmp_path, field):
    with pytest.raises(ValueError, match=f"{field}: .*matches no parameter"):
        run_train(tmp_path / "run", tiny_model_config(),
                  tiny_train_config(weight_decay=0.1, l2=0.1, **{field: ("nothing.*",)}))


# --- loss masks ---------------------------------------------------------------------------------


class MaskedTokens(RandomTokens):
    """Scores only the prediction at position 0 (of token 1); `tail_seed` changes the
    tokens at positions >= 2, which that prediction can neither see nor be scored on."""

    def __init__(self, tail_seed: int, select_nothing: bool = False):
        super().__init__()
        self.tail_seed = tail_seed
        self.select_nothing = select_nothing

    def batch(self, step, batch_size, generator):
        tokens = super().batch(step, batch_size, generator)["tokens"]
        tail = torch.Generator().manual_seed(self.tail_seed * 1000 + step)
        tokens[:, 2:] = torch.randint(0, D_VOCAB, (batch_size, N_CTX - 2), generator=tail)
        loss_mask = torch.zeros_like(tokens, dtype=torch.bool)
        if not self.select_nothing:
            loss_mask[:, 0] = True
        return {"tokens": tokens, "loss_mask": loss_mask}


def test_loss_mask_restricts_the_training_loss(tmp_path):
    model_cfg = tiny_model_config()
    cfg = tiny_train_config(steps=4, optimizer="sgd", lr=0.5, checkpoint_every=1)
    a = run_train(tmp_path / "a", model_cfg, cfg, MaskedTokens(tail_seed=1))
    b = run_train(tmp_path / "b", model_cfg, cfg, MaskedTokens(tail_seed=2))
    wa, wb = last_weights(a), last_weights(b)
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-6), key
    # the logged loss is the loss of the scored position alone
    model = a.load(3, device="cpu")
    batch = MaskedTokens(tail_seed=1).batch(3, cfg.batch_size, generator(cfg.seed, BATCHES, 3))
    with torch.no_grad():
        expected = float(masked_mean_loss(fused_forward(model, batch), batch))
    logged = {r["step"]: r["train/loss"] for r in a.metrics()}
    assert logged[4] == pytest.approx(expected, abs=1e-5)


def test_without_loss_mask_the_tail_matters(tmp_path):
    """Control for the test above: the tails differ enough to change unmasked training."""

    class Unmasked(MaskedTokens):
        def batch(self, step, batch_size, generator):
            return {"tokens": super().batch(step, batch_size, generator)["tokens"]}

    model_cfg = tiny_model_config()
    cfg = tiny_train_config(steps=4, optimizer="sgd", lr=0.5)
    wa = last_weights(run_train(tmp_path / "a", model_cfg, cfg, Unmasked(tail_seed=1)))
    wb = last_weights(run_train(tmp_path / "b", model_cfg, cfg, Unmasked(tail_seed=2)))
    assert any(not torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


def test_loss_mask_selecting_nothing_raises(tmp_path):
    with pytest.raises(ValueError, match="no scored positions"):
        run_train(
            tmp_path / "run",
            tiny_model_config(),
            tiny_train_config(steps=2),
            MaskedTokens(tail_seed=0, select_nothing=True),
        )


# --- evaluators ---------------------------------------------------------------------------------


def test_evaluators_are_logged_under_name_and_key(tmp_path):
    tokens = fixed_tokens()
    calls = []

    def loss_eval(model):
        calls.append(model.training)
        batch = {"tokens": tokens}
        return {"loss": masked_mean_loss(fused_forward(model, batch), batch), "const": 2}

    def other(model):
        assert not torch.is_grad_enabled()
        return {"x": 1.5}

    cfg = tiny_train_config(steps=6, eval_every=4, log_every=3, checkpoint_every=0)
    hooks = TrainHooks(evaluators={"val": loss_eval, "o": other})
    run = run_train(tmp_path / "run", tiny_model_config(), cfg, hooks=hooks)
    rows = run.metrics()
    eval_steps = [r["step"] for r in rows if "val/loss" in r]
    assert eval_steps == [0, 4, 6]  # start, every eval_every, end
    for row in rows:
        if "val/loss" in row:
            assert row["val/const"] == 2.0 and row["o/x"] == 1.5
            assert isinstance(row["val/loss"], float)
    assert calls == [False, False, False]  # evaluated in eval mode
    steps, values = run.series("val/loss")
    model = run.load(6, device="cpu")
    with torch.no_grad():
        final = float(masked_mean_loss(fused_forward(model, {"tokens": tokens}), {"tokens": tokens}))
    assert values[-1] == pytest.approx(final, abs=1e-6)
    # train/loss rows at the log steps, merged with eval rows where they coincide
    assert [r["step"] for r in rows if "train/loss" in r] == [3, 6]
    assert [r["step"] for r in rows] == [0, 3, 4, 6]


def test_stop_when_ends_the_run_as_a_prefix_of_the_full_run(tmp_path):
    tokens = fixed_tokens()

    def loss_eval(model):
        batch = {"tokens": tokens}
        return {"loss": float(masked_mean_loss(fused_forward(model, batch), batch))}

    cfg = tiny_train_config(steps=8, eval_every=2, checkpoint_every=0, schedule="cosine")
    seen = []

    def after_four(step, row):
        seen.append((step, set(row)))
        return step >= 4

    stopping = TrainHooks(evaluators={"val": loss_eval}, stop_when=after_four)
    stopped = run_train(tmp_path / "stopped", tiny_model_config(), cfg, hooks=stopping)
    assert seen == [(2, {"val/loss"}), (4, {"val/loss"})]  # never asked at step 0
    assert stopped.steps[-1] == 4 and max(r["step"] for r in stopped.metrics()) == 4
    full = run_train(tmp_path / "full", tiny_model_config(), tiny_train_config(
        steps=8, eval_every=2, checkpoint_steps=(4,), checkpoint_every=0, schedule="cosine"),
        hooks=TrainHooks(evaluators={"val": loss_eval}))
    assert full.steps[-1] == 8
    assert_state_equal(stopped.load_state_dict(4), full.load_state_dict(4))  # same lr schedule
    again = run_train(tmp_path / "stopped", tiny_model_config(), cfg, hooks=stopping, resume=True)
    assert again.steps[-1] == 4  # a stopped run is finished: resume returns it as is


def test_pause_when_ends_the_call_and_resume_continues_as_if_uninterrupted(tmp_path):
    tokens = fixed_tokens()

    def loss_eval(model):
        batch = {"tokens": tokens}
        return {"loss": float(masked_mean_loss(fused_forward(model, batch), batch))}

    cfg = tiny_train_config(steps=8, eval_every=2, checkpoint_every=0, checkpoint_log=0, schedule="cosine")
    plain = TrainHooks(evaluators={"val": loss_eval})
    pausing = TrainHooks(evaluators={"val": loss_eval}, pause_when=lambda step, row: step >= 4)
    paused = run_train(tmp_path / "paused", tiny_model_config(), cfg, hooks=pausing)
    assert paused.steps == [0, 4] and max(r["step"] for r in paused.metrics()) == 4
    again = run_train(tmp_path / "paused", tiny_model_config(), cfg, hooks=pausing, resume=True)
    assert again.steps == [0, 4, 6]  # paused again at the next evaluation that asks for it
    done = run_train(tmp_path / "paused", tiny_model_config(), cfg, hooks=plain, resume=True)
    full = run_train(tmp_path / "full", tiny_model_config(), cfg, hooks=plain)
    assert done.steps == [0, 4, 6, 8]
    assert_state_equal(done.load_state_dict(8), full.load_state_dict(8))
    assert [r for r in done.metrics() if "val/loss" in r] == [r for r in full.metrics() if "val/loss" in r]



@pytest.mark.parametrize("end", ["stop_when", "pause_when"])
def test_callbacks_see_the_step_where_the_run_ends_early(tmp_path, end):
    """Callbacks run on every step taken, the last one of a stopped or paused call included,
    and after that step's checkpoint is written."""
    seen = []

    def record(done: int, model, loss: float) -> None:
        seen.append((done, Run.open(tmp_path / "run").steps[-1], math.isfinite(loss)))

    cfg = tiny_train_config(steps=8, eval_every=2, checkpoint_every=0, checkpoint_log=0)
    hooks = TrainHooks(evaluators={"c": lambda model: {"x": 0.0}}, callbacks=[record],
                       **{end: lambda step, row: step >= 4})
    run = run_train(tmp_path / "run", tiny_model_config(), cfg, hooks=hooks)
    assert run.steps == [0, 4]
    assert [done for done, _, _ in seen] == [1, 2, 3, 4]
    assert seen[-1] == (4, 4, True)

def test_train_on_induction_task_smoke(tmp_path):
    data = RepeatedSegments(RepeatedSegmentsConfig(d_vocab=D_VOCAB, seq_len=N_CTX, min_segment=2, max_segment=4))
    run = run_train(tmp_path / "run", tiny_model_config(), tiny_train_config(steps=3), data)
    assert run.steps[-1] == 3
    assert all(math.isfinite(r["train/loss"]) for r in run.metrics())


def test_input_projection_is_trained(tmp_path):
    class Vectors(RandomTokens):
        def batch(self, step, batch_size, generator):
            batch = super().batch(step, batch_size, generator)
            batch["vectors"] = torch.randn(batch_size, N_CTX, 3, generator=generator)
            batch["vector_mask"] = torch.arange(N_CTX).expand(batch_size, -1) < 4
            return batch

    run = run_train(tmp_path / "run", tiny_model_config(d_input=3), tiny_train_config(steps=2), Vectors())
    w0, w2 = run.load_state_dict(0), run.load_state_dict(2)
    assert not torch.equal(w0["input_proj.weight"], w2["input_proj.weight"])
    model = build_model(tiny_model_config(d_input=3), device="cpu")
    load_model_state_dict(model, w2)
    assert any(p is model.input_proj.weight for p in trainable_parameters(model))


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(optimizer="lion"), "optimizer"),
        (dict(lr=-1e-3), "lr"),
        (dict(lr=0.0), "lr"),
        (dict(steps=0), "steps"),
        (dict(batch_size=-2), "batch_size"),
        (dict(schedule="linear"), "schedule"),
        (dict(momentum=-0.1), "momentum"),
        (dict(beta2=1.5), "beta2"),
        (dict(min_lr_ratio=-0.1), "min_lr_ratio"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(checkpoint_steps=(3, 2000)), "checkpoint_steps"),
        (dict(reset_optimizer_each_episode=True), "episode_steps"),
        (dict(precision="fp16"), "precision"),
    ],
)
def test_train_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")


def test_train_config_error_names_bad_value():
    with pytest.raises(ConfigError, match="'lion'"):
        TrainConfig(optimizer="lion")
    with pytest.raises(ConfigError, match="2000"):
        TrainConfig(steps=1000, checkpoint_steps=(2000,))
    TrainConfig(reset_optimizer_each_episode=True, episode_steps=3)  # valid with a length


# --- in-memory fine-tuning ------------------------------------------------------------------


@pytest.mark.parametrize("optim", [dict(optimizer="adam", lr=1e-2),
                                   dict(optimizer="sgd", lr=0.05, momentum=0.9, grad_clip=0.5, l2=1e-2)])
def test_take_steps_updates_exactly_as_train(tmp_path, optim):
    """From the same weights, `take_steps` over steps 0..5 gives train()'s weights at step 6."""
    model_cfg = tiny_model_config()
    train_cfg = tiny_train_config(steps=6, checkpoint_every=0, **optim)
    run = run_train(tmp_path / "run", model_cfg, train_cfg)
    model = run.load(0)
    losses = take_steps(model, train_cfg, RandomTokens(), range(6))
    assert len(losses) == 6 and not model.training
    assert_state_equal(model_state_dict(model), last_weights(run))


def test_take_steps_restarts_the_optimizer_at_episodes(tmp_path):
    model_cfg = tiny_model_config()
    train_cfg = tiny_train_config(steps=6, checkpoint_every=0, optimizer="adam", lr=1e-2, episode_steps=3,
                                  reset_optimizer_each_episode=True)
    run = run_train(tmp_path / "run", model_cfg, train_cfg)
    model = run.load(0)
    take_steps(model, train_cfg, RandomTokens(), range(6))
    assert_state_equal(model_state_dict(model), last_weights(run))


def test_episode_boundary_checkpoints_of_a_resetting_run_skip_the_optimizer_state(tmp_path):
    train_cfg = tiny_train_config(steps=6, checkpoint_every=0, checkpoint_steps=(2, 3, 4), optimizer="adam",
                                  episode_steps=3, reset_optimizer_each_episode=True)
    run = run_train(tmp_path / "run", tiny_model_config(), train_cfg, keep=CheckpointPolicy(state="all"))
    assert [s for s in run.steps if run.load_training_state(s)["optimizer"] is None] == [0, 3, 6]
    assert run.load_training_state(4)["optimizer"]["state"]
