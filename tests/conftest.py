"""Shared fixtures: tiny configs, a deterministic data source and one trained run.

Everything here is sized to run in well under a second on CPU: 2 layers,
d_model=16, 2 heads, a vocabulary of 11 and 12 positions.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers import (
    RandomTokens,
    TrainedRun,
    fixed_tokens,
    snapshot,
    threads_for_tests,
    tiny_model_config,
    tiny_train_config,
)

from interp.checkpoints import Run
from interp.model import build_model, fused_forward
from interp.train import CheckpointPolicy, TrainHooks, checkpoint_schedule, train

# The models are tiny: intra-op threads only add contention (several times slower
# on a busy 2-core machine) and make timings noisy. INTERP_TEST_THREADS=2 runs the suite with two
# (results must not depend on it; .ci/run does so for the reference tests).
torch.set_num_threads(threads_for_tests())


def pytest_addoption(parser) -> None:
    parser.addoption("--analysis-dir", action="append", default=[], metavar="DIR",
                     help="an analysis folder (e.g. a quick run's) that the explorer's fidelity check "
                          "(tests/test_view_fidelity.py) uses instead of its own tiny run of that analysis")


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path_factory, monkeypatch) -> Path:
    """Each test's own folder for caches outside read-only runs (`interp.cache_dirs`): never the
    user's ~/.cache, and no test sees another's (copies of one run share a folder by content)."""
    folder = tmp_path_factory.mktemp("outside-cache")
    monkeypatch.setenv("INTERP_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    """A finished 8-step run with checkpoints at 0, 2, 4, 6, 8 and, for each
    checkpointed step, the weights and logits of the live training model."""
    path = tmp_path_factory.mktemp("runs") / "tiny"
    model_cfg = tiny_model_config()
    train_cfg = tiny_train_config()
    tokens = fixed_tokens()
    out = TrainedRun(path, model_cfg, train_cfg, RandomTokens(), tokens)
    schedule = set(checkpoint_schedule(train_cfg))

    def capture(done: int, model, loss: float) -> None:
        if done in schedule:
            with torch.no_grad():
                out.states[done] = snapshot(model)
                out.fused_logits[done] = fused_forward(model, {"tokens": tokens}).clone()
                out.bridge_logits[done] = model(tokens).clone()

    capture(0, build_model(model_cfg, device="cpu"), float("nan"))  # step 0 = the seeded initialization
    # Every checkpoint keeps its training state, so tests can read and damage any of them.
    train(path, model_cfg, train_cfg, out.data, hooks=TrainHooks(callbacks=[capture]), device="cpu", progress=False,
          keep=CheckpointPolicy(state="all"))
    return out


@pytest.fixture
def run_copy(trained_run: TrainedRun, tmp_path: Path) -> Run:
    """A private copy of the trained run, free to corrupt or probe."""
    dest = tmp_path / "run"
    shutil.copytree(trained_run.path, dest)
    return Run.open(dest)
