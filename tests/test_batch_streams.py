"""The few-shot and biography data streams are bitwise those of the code before batch drawing
was vectorised (commit b58f2e6): the same draws from the same generators, in the same order,
only faster. Every kind of batch the trainer, the evaluators and the probes draw is pinned by a
hash, and the bulk replay of numpy's bounded draws is checked against numpy itself."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch

from analyses.fact_learning import PRESETS as FACT_PRESETS
from analyses.icl_transience import PRESETS as ICL_PRESETS
from interp.model import Batch
from interp.seeding import BATCHES, generator
from tasks.biographies import Biographies, BiographiesConfig, _Bounded, _permutation_program, _permutations, _replay
from tasks.fewshot import EVAL_KINDS, FewShot, FewShotConfig

SMALL_FEWSHOT = FewShotConfig(n_classes=40, n_heldout_classes=8, n_labels=10, exemplars_per_class=6, dim=8,
                              context_pairs=4, burstiness=2)
ZIPF_FEWSHOT = FewShotConfig(n_classes=60, n_heldout_classes=6, exemplars_per_class=7, dim=4, context_pairs=6,
                             burstiness=2, bursty_fraction=0.5, zipf_exponent=1.1, query_copies_context=True,
                             structure_seed=2)
SMALL_BIOS = BiographiesConfig(n_individuals=50, n_unseen=10, n_finetune=10, seed=3)


def digest(batches: list[Batch]) -> str:
    """The first 16 hex digits of the sha256 of every integer or bool tensor's key, dtype, shape
    and bytes: the stream's draws. Float tensors (few-shot input vectors) are functions of those
    draws and of the class structure, and their last bits depend on the CPU's kernels
    (`ATEN_CPU_CAPABILITY`), so they are left out."""
    h = hashlib.sha256()
    for batch in batches:
        for key in sorted(batch):
            value = batch[key].contiguous()
            if value.is_floating_point():
                continue
            h.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
            h.update(value.numpy().tobytes())
    return h.hexdigest()[:16]


def training(source, steps: range, batch_size: int, seed: int = 0) -> list[Batch]:
    """The batches the trainer draws at `steps`."""
    return [source.batch(step, batch_size, generator(seed, BATCHES, step)) for step in steps]


def fewshot_evaluations(cfg: FewShotConfig) -> list[Batch]:
    """Every evaluation set drawn in turn from one generator (as `FewShot.evaluators` does), then an
    answer batch."""
    task, stream = FewShot(cfg), torch.Generator().manual_seed(5)
    return [*(task.evaluation(kind, 24, stream) for kind in EVAL_KINDS), task.answer_batch(12, stream)]


def biography_evaluations(bios: Biographies) -> list[Batch]:
    people = bios.draw_trained(8, 0, 1)
    fine = bios.population(bios.finetune)
    return [bios.heldout_batch(people, 0, 2), bios.value_batch(people, "university", 0, 3),
            bios.value_batch(people, "birth_date", 0, 3), fine.batch(0, 8, generator(0, BATCHES, 0)),
            bios.with_replay(fine, 0.5, 12, 0, 4).batch(1, 8, generator(0, BATCHES, 1))]


STREAMS: dict[str, Callable[[], list[Batch]]] = {
    "fewshot small training": lambda: training(FewShot(SMALL_FEWSHOT), range(3), 32),
    "fewshot small evaluations": lambda: fewshot_evaluations(SMALL_FEWSHOT),
    "fewshot zipf training": lambda: training(FewShot(ZIPF_FEWSHOT), range(3), 32, seed=7),
    "fewshot zipf evaluations": lambda: fewshot_evaluations(ZIPF_FEWSHOT),
    "icl-transience quick": lambda: training(FewShot(ICL_PRESETS["quick"].data), range(2), 32),
    "icl-transience paper": lambda: training(FewShot(ICL_PRESETS["paper"].data), range(2), 32),
    "biographies small training": lambda: training(Biographies(SMALL_BIOS), range(3), 16),
    "biographies small evaluations": lambda: biography_evaluations(Biographies(SMALL_BIOS)),
    "biographies power law and warm-up": lambda: training(
        Biographies(replace(SMALL_BIOS, distribution="power_law", alpha=0.8, warmup_individuals=10,
                            warmup_steps=2)), range(4), 16),
    "biographies celebrities": lambda: training(
        Biographies(replace(SMALL_BIOS, distribution="celebrities", n_celebrities=5, celebrity_boost=8.0)),
        range(2), 16),
    "biographies no held-out templates": lambda: [
        *training(Biographies(replace(SMALL_BIOS, heldout_templates=0)), range(2), 16),
        *biography_evaluations(Biographies(replace(SMALL_BIOS, heldout_templates=0)))],
    "biographies two held-out templates": lambda: biography_evaluations(
        Biographies(replace(SMALL_BIOS, heldout_templates=2))),
    "fact-learning quick": lambda: training(Biographies(replace(FACT_PRESETS["quick"].data, seed=0)), range(2), 640),
}

# Computed with the base commit's tasks/fewshot.py and tasks/biographies.py (b58f2e6, before
# the vectorised drawing; torch 2.13.0, numpy 2.4.6, on CPU) by running `digest(STREAMS[name]())`
# for every name; the test recomputes them with today's code.
# The few-shot entries were recomputed with floats left out of `digest`, on a CPU where every
# tensor, floats included, still hashed as b58f2e6's code did (AVX-512 kernels).
FROZEN = {
    "biographies celebrities": "4f5bdd9dfce91aa7",
    "biographies no held-out templates": "73eba5dbc60af4ed",
    "biographies power law and warm-up": "20706cf3fd96d6a1",
    "biographies small evaluations": "30f8a4d97e30a3eb",
    "biographies small training": "297b1062d9cb331e",
    "biographies two held-out templates": "6cac403ef8bb7a89",
    "fact-learning quick": "cde8759325c7a21e",
    "fewshot small evaluations": "9f91134757956a5c",
    "fewshot small training": "b2ae58f92861ae6d",
    "fewshot zipf evaluations": "6443748821466a99",
    "fewshot zipf training": "88a5185a367229d1",
    "icl-transience paper": "4bc8bd1d1f378b41",
    "icl-transience quick": "4da9c2e6fbe75543",
}


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_the_stream_is_bitwise_the_base_commits(name):
    assert digest(STREAMS[name]()) == FROZEN[name]


def next_words(rng: np.random.Generator) -> list[int]:
    return rng.integers(0, 2**32, size=4, dtype=np.uint32).tolist()


def test_a_bounded_draw_decides_as_numpy_does_on_known_words():
    words = np.array([0, 2**31, 2**32 - 1, 12], dtype=np.uint64)
    accepted, value = _Bounded(3).decide(words)  # Lemire: rejected while (word * 3) mod 2**32 < 2**32 mod 3 = 1
    assert accepted.tolist() == [False, True, True, True] and value[1:].tolist() == [1, 2, 0]
    accepted, value = _Bounded(5, swap=True).decide(words)  # swap for position 4: low 3 bits, redrawn above 4
    assert accepted.tolist() == [True, True, False, True] and value.tolist() == [0, 0, 7, 4]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("repeats", [0, 1, 7, 60])
def test_replayed_draws_are_numpys_scalar_draws_and_leave_the_generator_as_they_do(seed, repeats):
    # Bounds just above 2**31 reject about half the words (more words than first drawn are needed);
    # a bound of 1 draws nothing. A first draw leaves half a 64-bit output buffered.
    program = [_Bounded(2**31 + 1), _Bounded(1), _Bounded(3 * 2**30), *[_Bounded(2**31 + 1)] * 3, _Bounded(20)]
    ours, theirs = np.random.default_rng(seed), np.random.default_rng(seed)
    ours.integers(7), theirs.integers(7)
    expected = [[int(theirs.integers(d.n)) for d in program] for _ in range(repeats)]
    assert _replay(ours, program, repeats).tolist() == (expected or [])
    assert next_words(ours) == next_words(theirs)


@pytest.mark.parametrize("k", [2, 6, 33])
def test_replayed_permutations_are_numpys(k):
    ours, theirs = np.random.default_rng(k), np.random.default_rng(k)
    expected = np.stack([theirs.permutation(k) for _ in range(50)])
    assert (_permutations(_replay(ours, _permutation_program(k), 50)) == expected).all()
    assert next_words(ours) == next_words(theirs)


@pytest.mark.parametrize("make", [lambda: FewShot(ZIPF_FEWSHOT), lambda: Biographies(SMALL_BIOS),
                                  lambda: Biographies(SMALL_BIOS).population(np.arange(60, 70))],
                         ids=["fewshot", "biographies", "population"])
def test_a_batch_depends_only_on_the_seed_and_the_step(make):
    source = make()
    first = source.batch(5, 16, generator(1, BATCHES, 5))
    training(source, range(5), 16, seed=1)
    assert digest([source.batch(5, 16, generator(1, BATCHES, 5))]) == digest([first])
    assert digest([make().batch(5, 16, generator(1, BATCHES, 5))]) == digest([first])
    assert digest([source.batch(5, 16, generator(2, BATCHES, 5))]) != digest([first])
