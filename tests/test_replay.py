"""interp.replay: draw order, ratio, merging and purity of replayed batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.replay import Replay, sampling_order, softmax_weights


class Ones:
    """A source whose examples are all token 1, with a loss mask on the last half."""

    def batch(self, step, batch_size, generator):
        tokens = torch.ones((batch_size, 6), dtype=torch.long)
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        mask[:, 3:] = True
        return {"tokens": tokens, "loss_mask": mask}


POOL = {"tokens": torch.arange(10 * 6).view(10, 6) + 100}


def test_softmax_weights():
    w = softmax_weights(np.array([0.0, np.log(3.0)]), 1.0)
    assert w.tolist() == pytest.approx([0.25, 0.75])
    assert softmax_weights(np.array([1000.0, 0.0]), 0.5).tolist() == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="temperature"):
        softmax_weights(np.zeros(2), 0.0)


def test_sampling_order_is_a_permutation_and_weighted_first_draws_follow_the_weights():
    assert sorted(sampling_order(7, None, 0, 0).tolist()) == list(range(7))
    weights = np.array([0.5, 0.3, 0.2, 0.0])
    firsts = np.bincount([sampling_order(4, weights, seed, 0)[0] for seed in range(4000)], minlength=4) / 4000
    assert firsts == pytest.approx(weights, abs=0.03)
    assert all(sampling_order(4, weights, seed, 0)[-1] == 3 for seed in range(50))  # weight 0 comes last


@pytest.mark.parametrize("ratio, batch_size, per_steps", [(0.25, 4, [1, 1, 1, 1]), (0.125, 4, [0, 1, 0, 1]),
                                                         (1.0, 3, [3, 3, 3, 3])])
def test_replay_count_follows_the_ratio(ratio, batch_size, per_steps):
    replay = Replay(Ones(), POOL, ratio)
    assert [len(replay.replayed(s, batch_size)) for s in range(4)] == per_steps


def test_pool_is_drawn_without_replacement_then_reshuffled():
    replay = Replay(Ones(), POOL, 1.0, seed=3)
    drawn = np.concatenate([replay.replayed(s, 2) for s in range(10)])
    assert sorted(drawn[:10].tolist()) == list(range(10))
    assert sorted(drawn[10:].tolist()) == list(range(10))


def test_batch_merges_tokens_and_masks_and_is_a_pure_function_of_the_step():
    replay = Replay(Ones(), POOL, 0.5, weights=np.arange(10.0) + 1)
    batch = replay.batch(5, 4, torch.Generator())
    assert batch["tokens"].shape == (6, 6)
    assert (batch["tokens"][:4] == 1).all() and (batch["tokens"][4:] >= 100).all()
    assert batch["loss_mask"][:4, :3].sum() == 0 and batch["loss_mask"][4:].all()
    fresh = Replay(Ones(), POOL, 0.5, weights=np.arange(10.0) + 1)
    assert torch.equal(fresh.batch(5, 4, torch.Generator())["tokens"], batch["tokens"])


def test_bad_replay_input_names_the_argument():
    with pytest.raises(ValueError, match="ratio"):
        Replay(Ones(), POOL, 0.0)
    with pytest.raises(ValueError, match="weights"):
        Replay(Ones(), POOL, 0.5, weights=-np.ones(10))
    with pytest.raises(ValueError, match="weights"):
        Replay(Ones(), POOL, 0.5, weights=np.ones(3))
    with pytest.raises(ValueError, match="pool"):
        Replay(Ones(), {**POOL, "vectors": torch.zeros(9, 6, 2)}, 0.5)


def test_replay_merges_every_shared_key_and_refuses_keys_on_one_side():
    annotated = {**POOL, "label": torch.arange(10)}

    class Labelled(Ones):
        def batch(self, step, batch_size, generator):
            return {**super().batch(step, batch_size, generator), "label": -torch.ones(batch_size, dtype=torch.long)}

    batch = Replay(Labelled(), annotated, 1.0, seed=0).batch(0, 2, torch.Generator())
    assert batch["label"][:2].tolist() == [-1, -1]
    assert torch.equal(batch["tokens"][2:, 0], (batch["label"][2:] * 6 + 100))
    with pytest.raises(ValueError, match="label"):
        Replay(Ones(), annotated, 1.0).batch(0, 2, torch.Generator())
    with pytest.raises(ValueError, match="row shape"):
        Replay(Labelled(), {**POOL, "label": torch.zeros(10, 3)}, 1.0).batch(0, 2, torch.Generator())
