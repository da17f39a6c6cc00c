"""Test helpers shared by the test modules (tiny configs, data, comparisons)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from interp import suites
from interp.checkpoints import Run
from interp.model import Batch, ModelConfig, model_state_dict
from interp.train import TrainConfig

D_VOCAB = 11
N_CTX = 12


def threads_for_tests() -> int:
    """torch's intra-op threads for the tests: `INTERP_TEST_THREADS` (default 1), so the suite
    can also run with 2 and show that no result depends on the thread count."""
    value = os.environ.get("INTERP_TEST_THREADS", "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"INTERP_TEST_THREADS: expected a positive integer, got {value!r}")
    return int(value)


class RandomTokens:
    """Uniform random tokens: a pure function of (step, batch_size, generator)."""

    def __init__(self, d_vocab: int = D_VOCAB, seq_len: int = N_CTX):
        self.d_vocab = d_vocab
        self.seq_len = seq_len

    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        return {"tokens": torch.randint(0, self.d_vocab, (batch_size, self.seq_len), generator=generator)}


def tiny_model_config(**overrides) -> ModelConfig:
    base = dict(n_layers=2, d_model=16, n_heads=2, d_vocab=D_VOCAB, n_ctx=N_CTX, seed=0)
    base.update(overrides)
    return ModelConfig(**base)


def tiny_train_config(**overrides) -> TrainConfig:
    base = dict(
        steps=8,
        batch_size=4,
        optimizer="adam",
        lr=1e-2,
        checkpoint_log=0,
        checkpoint_every=2,
        log_every=1,
    )
    base.update(overrides)
    return TrainConfig(**base)


def snapshot(model) -> dict[str, torch.Tensor]:
    """A detached copy of every tensor the checkpoint would store."""
    return {k: v.detach().clone() for k, v in model_state_dict(model).items()}


def assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"tensor {key} differs"


def fixed_tokens(n: int = 3, seed: int = 1234) -> torch.Tensor:
    return torch.randint(0, D_VOCAB, (n, N_CTX), generator=torch.Generator().manual_seed(seed))


@dataclass
class TrainedRun:
    path: Path
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    data: RandomTokens
    tokens: torch.Tensor
    # captured live during training, after the optimizer step that produced `step`
    states: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    fused_logits: dict[int, torch.Tensor] = field(default_factory=dict)
    bridge_logits: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def run(self) -> Run:
        return Run.open(self.path)


@dataclass(frozen=True)
class NamedFile:
    name: str


def write_file_unless_failing(job: NamedFile) -> str:
    """A job for failure-isolation tests: writes its file unless its name says fail."""
    if "fail" in Path(job.name).name:
        raise RuntimeError(f"asked to fail: {job.name}")
    Path(job.name).write_text("done")
    return job.name


def square_and_threads(x: int) -> tuple[int, int]:
    """A job for process-pool tests: its result and the worker's torch thread count."""
    if x < 0:
        raise ValueError(f"negative job {x}")
    return x * x, torch.get_num_threads()


def worker_pid(_: int) -> int:
    """A job for process-pool tests: the id of the process that ran it."""
    return os.getpid()


class Loads:
    """Counts the checkpoints `transformers` loads for the suites."""

    def __init__(self, monkeypatch):
        self.count = 0
        real = suites._from_pretrained

        def counted(location, **kwargs):
            self.count += 1
            return real(location, **kwargs)

        monkeypatch.setattr(suites, "_from_pretrained", counted)
