"""The one random-stream API (`interp.seeding`): every call site draws what it drew before
the trainer's `step_generator(seed, step, stream)` was folded into `generator(seed, *stream)`."""

from __future__ import annotations

import pytest
import torch

from interp import seeding
from interp.metrics.probe_fitting import CONTROL, FOLDS, SPLIT


def draw(generator: torch.Generator) -> list[int]:
    return torch.randint(0, 2**31, (3,), generator=generator).tolist()


@pytest.mark.parametrize(("stream", "drawn"), [
    # (seed, *stream) as each call site now names it; the draws were pinned with the old API
    ((0, seeding.BATCHES, 3), [440036498, 1696171153, 2059636632]),  # trainer: step_generator(0, 3)
    ((2**63 - 1, seeding.BATCHES, 7), [1579566613, 303671761, 1760932977]),
    ((0, 1), [766271930, 1158886282, 971362946]),  # induction-heads EVAL_STREAM: step_generator(0, 0, 1)
    ((5, 2), [948990764, 549646714, 1146901207]),  # PROBE_STREAM: step_generator(5, 0, 2)
    ((2**40, 3), [1017770573, 90875396, 1539798053]),  # CIRCUIT_STREAM: step_generator(2**40, 0, 3)
    ((0, seeding.CLI_BATCHES), [1746870613, 136394259, 653270593]),  # interp probe/circuit: step_generator(0, 0, 2)
    ((2**63 - 1, seeding.CLI_BATCHES), [827766630, 2036362497, 135202739]),
    ((1, 3, 4), [1189220089, 1764446060, 1666922169]),  # lowrank-forgetting: step_generator(1, 4, 3)
    ((3, seeding.EXAMPLES), [897978818, 114500370, 952312552]),  # the explorer's example
])
def test_every_call_site_draws_what_it_drew_before(stream, drawn):
    assert draw(seeding.generator(*stream)) == drawn


def test_linear_probe_streams_are_unchanged():
    assert [int(seeding.rng(0, seeding.LINEAR_PROBES, part).integers(2**31)) for part in (SPLIT, FOLDS, CONTROL)] \
        == [1756264305, 2140527441, 1251679086]


def test_a_generator_depends_only_on_its_seed_and_stream():
    assert draw(seeding.generator(0, seeding.BATCHES, 3)) == draw(seeding.generator(0, seeding.BATCHES, 3))
    assert draw(seeding.generator(0, seeding.BATCHES, 3)) != draw(seeding.generator(0, seeding.BATCHES, 4))
    assert draw(seeding.generator(0, seeding.BATCHES, 3)) != draw(seeding.generator(1, seeding.BATCHES, 3))
    assert draw(seeding.generator(0, 1, 3)) != draw(seeding.generator(0, 2, 3))
    assert draw(seeding.generator(0, 2)) == draw(seeding.generator(0, 2, 0))  # SeedSequence pads with zeros
