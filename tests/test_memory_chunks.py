"""A probe batch too large for memory is computed in chunks of rows (`Probe.mean_over`,
`probe_chunk_rows`): the same numbers as the whole batch and as one sequence at a time, the same
cache rows, and a one-line refusal naming the numbers where not even one sequence fits; and
`--threads` / `interp.devices.set_threads`, torch's CPU threads of a command that computes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import RandomTokens, tiny_model_config, tiny_train_config

import interp.devices as devices
import interp.memory as memory_module
from interp.batches import repeated_patch_batch, repeated_tokens
from interp.checkpoints import Run
from interp.circuits.attribution import edge_attribution_probe
from interp.circuits.common import mean_logprob
from interp.circuits.paths import path_patching_probe
from interp.cli import main
from interp.cli.checks import DEFAULT_PERIOD, check_period
from interp.cli.parser import build_parser
from interp.errors import InputError
from interp.memory import AvailableMemory, InsufficientMemoryError, estimate_forward
from interp.metrics import heads
from interp.model import ModelConfig, batch_rows, build_model
from interp.probing import Probe, probe, probe_chunk_rows, run_probes
from interp.train import train

N_CTX = 64  # long enough that a sequence's activations outweigh the tiny model's weights, as in a real model
PERIOD = N_CTX // 2


@pytest.fixture(scope="module")
def long_run(tmp_path_factory) -> Run:
    """A 4-step run of a tiny model with a 64-token context (checkpoints 0, 2, 4)."""
    path = tmp_path_factory.mktemp("runs") / "long"
    train(path, tiny_model_config(n_ctx=N_CTX), tiny_train_config(steps=4), RandomTokens(seq_len=N_CTX),
          device="cpu", progress=False)
    return Run.open(path)


@pytest.fixture
def run_copy(long_run: Run, tmp_path) -> Run:
    """A private copy of `long_run`, free to probe."""
    shutil.copytree(long_run.path, tmp_path / "run")
    return Run.open(tmp_path / "run")


@pytest.fixture
def no_loading(monkeypatch) -> None:
    def load(*args, **kwargs):
        raise AssertionError("a checkpoint was loaded")

    monkeypatch.setattr(Run, "load", load)


def budget(monkeypatch, free: int) -> None:
    monkeypatch.setattr(memory_module, "available_memory", lambda device=None: AvailableMemory(free, "a test"))


def free_for_rows(run: Run, probe_obj: Probe, rows: float) -> int:
    """Free memory in which `probe_chunk_rows` plans chunks of `int(rows)` rows (at least 1, where
    `rows` < 1 but one row fits at all): the chunk takes half of what the parameters leave."""
    cfg = run.model_config
    one = estimate_forward(cfg, 1, N_CTX, probe_obj.hooks, own=probe_obj.memory(cfg, 1, N_CTX) if probe_obj.memory
                           else 0)
    return one.parameters + int(2 * rows * (one.cached + one.transient + one.own))


def one_at_a_time(model, probe_obj: Probe, batch) -> dict[str, float]:
    """The probe on each row alone, averaged with the rows' weights: the reference."""
    rows = [batch_rows(batch, i, i + 1) for i in range(len(batch["tokens"]))]
    weights = np.array([probe_obj.mean_over.count(row) for row in rows], dtype=float)
    values = [run_probes(model, {"p": probe_obj}, row) for row in rows]
    return {name.removeprefix("p/"): float(np.dot(weights, [v[name] for v in values]) / weights.sum())
            for name in values[0]}


def assert_same(found: dict[str, float], expected: dict[str, float]) -> None:
    assert found.keys() == expected.keys()
    names = sorted(expected)
    np.testing.assert_allclose([found[n] for n in names], [expected[n] for n in names], rtol=1e-6, atol=1e-6)


def test_the_induction_probe_in_chunks_equals_the_whole_batch_and_one_row_at_a_time(run_copy, monkeypatch):
    induction = heads.induction_probe([0, 1], PERIOD)
    tokens = repeated_tokens(7, PERIOD, run_copy.model_config.d_vocab, torch.Generator().manual_seed(0))
    batch = {"tokens": tokens}
    whole = probe(run_copy, {"ind": induction}, batch, device="cpu", use_cache=False)
    model = run_copy.load(run_copy.steps[-1], device="cpu")
    reference = one_at_a_time(model, induction, batch)
    assert_same({n: float(v) for n, v in zip(whole.select("ind").columns, whole.values[-1], strict=True)}, reference)

    seen: list[int] = []
    real = type(model).run_with_cache
    monkeypatch.setattr(type(model), "run_with_cache",
                        lambda self, tokens, **kw: (seen.append(len(tokens)), real(self, tokens, **kw))[1])
    for rows, expected_chunks in ((3, [3, 3, 1]), (0.7, [1] * 7)):  # 0.7: no row fits the plan, one fits at all
        budget(monkeypatch, free_for_rows(run_copy, induction, rows))
        assert probe_chunk_rows(run_copy.model_config, {"ind": induction}, batch, "cpu") == max(1, int(rows))
        seen.clear()
        chunked = probe(run_copy, {"ind": induction}, batch, steps=[run_copy.steps[-1]], device="cpu",
                        use_cache=False)
        assert seen == expected_chunks
        assert_same(dict(zip(chunked.columns, chunked.values[0], strict=True)),
                    dict(zip(whole.columns, whole.values[-1], strict=True)))


def test_a_chunked_result_is_cached_as_the_whole_batchs(run_copy, monkeypatch):
    """The cache key does not hold the chunk size: a later call with room for the whole batch
    reads the rows the chunked call wrote, without loading a checkpoint."""
    induction = heads.induction_probe([1], PERIOD)
    batch = {"tokens": repeated_tokens(5, PERIOD, run_copy.model_config.d_vocab, torch.Generator().manual_seed(1))}
    with monkeypatch.context() as patched:
        budget(patched, free_for_rows(run_copy, induction, 2))
        chunked = probe(run_copy, {"ind": induction}, batch, device="cpu")

    def load(*args, **kwargs):
        raise AssertionError("a checkpoint was loaded")

    monkeypatch.setattr(Run, "load", load)
    again = probe(run_copy, {"ind": induction}, batch, device="cpu")
    np.testing.assert_array_equal(again.values, chunked.values)


def test_eap_and_path_patching_in_chunks_equal_the_whole_batch_and_one_row_at_a_time():
    metric = mean_logprob("in_repeat")
    cfg = tiny_model_config()  # 12 positions: patching every edge stays fast
    model = build_model(cfg, device="cpu")
    batch = repeated_patch_batch(5, cfg.n_ctx // 2, cfg.d_vocab, torch.Generator().manual_seed(2))
    for made in (edge_attribution_probe(metric), path_patching_probe(metric)):
        assert made.mean_over is metric.mean_over is not None
        whole = run_probes(model, {"p": made}, batch)
        assert_same(run_probes(model, {"p": made}, batch, chunk_rows=2), whole)
        assert_same({f"p/{n}": v for n, v in one_at_a_time(model, made, batch).items()}, whole)


def test_a_probe_without_mean_over_runs_on_the_whole_batch_beside_chunked_ones(run_copy):
    """A probe whose values are no mean over rows (here: the batch's size) is never chunked."""
    model = run_copy.load(run_copy.steps[-1], device="cpu")
    batch = {"tokens": repeated_tokens(5, PERIOD, run_copy.model_config.d_vocab, torch.Generator().manual_seed(3))}
    whole_only = Probe("rows", hooks=(), fn=lambda ctx: {"n": len(ctx.batch["tokens"])})
    induction = heads.induction_probe([1], PERIOD)
    together = run_probes(model, {"rows": whole_only, "ind": induction}, batch)
    chunked = run_probes(model, {"rows": whole_only, "ind": induction}, batch, chunk_rows=2)
    assert chunked["rows/n"] == 5
    assert_same(chunked, together)


def test_a_budget_too_small_for_one_sequence_is_refused_in_one_line_before_loading(run_copy, no_loading,
                                                                                   monkeypatch):
    made = edge_attribution_probe(mean_logprob("in_repeat"))
    batch = repeated_patch_batch(4, PERIOD, run_copy.model_config.d_vocab, torch.Generator())
    free = free_for_rows(run_copy, made, 0.5) - 1  # one row needs just more than all of it
    budget(monkeypatch, free)
    with pytest.raises(InsufficientMemoryError) as err:
        probe(run_copy, {"eap": made}, batch, device="cpu")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{made.name} on a batch of 1 sequences x {N_CTX} positions needs about ")
    assert f"{made.name}'s own passes" in message
    assert message.endswith("is available on cpu; reduce the sequence length (memory bounded by a test)")


def one_sequence_does_not_fit(monkeypatch, cfg: ModelConfig, own, positions: int) -> None:
    """Free memory in which one sequence's forward fits, and the model loads, but not with the
    method's own passes on it: a batch a method cannot run even one sequence at a time."""
    alone = estimate_forward(cfg, 1, positions)
    free = estimate_forward(cfg, 1, positions, own=own(cfg, 1, positions)).total - 1
    assert free >= max(alone.total, alone.load)
    monkeypatch.setattr(memory_module, "available_memory", lambda device=None: AvailableMemory(free, "a test"))


@pytest.mark.parametrize(("method", "name"), [("path", "path_patching("), ("eap", "edge_attribution(")])
def test_the_cli_refuses_a_circuit_method_that_cannot_fit(run_copy, no_loading, monkeypatch, capsys, method, name):
    from interp.circuits.attribution import edge_attribution_memory
    from interp.circuits.paths import path_patching_memory

    own = path_patching_memory if method == "path" else edge_attribution_memory
    one_sequence_does_not_fit(monkeypatch, run_copy.model_config, own, N_CTX)
    assert main(["circuit", str(run_copy.path), "--method", method, "--sequences", "64", "--device", "cpu"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"interp circuit: error: {name}")
    assert f"on a batch of 1 sequences x {N_CTX} positions" in lines[0] and "'s own passes" in lines[0]
    assert lines[0].endswith("reduce the sequence length (memory bounded by a test)")


def test_probe_counts_each_methods_own_passes(run_copy, no_loading, monkeypatch):
    from interp.circuits.activation import activation_patching_memory, activation_patching_probe
    from interp.circuits.cross_checkpoint import cross_checkpoint_memory, cross_checkpoint_probe

    metric = mean_logprob("in_repeat")
    for made, own in ((activation_patching_probe(metric), activation_patching_memory),
                      (cross_checkpoint_probe(lambda device: None, "a", metric), cross_checkpoint_memory)):
        one_sequence_does_not_fit(monkeypatch, run_copy.model_config, own, N_CTX)
        batch = repeated_patch_batch(8, N_CTX // 2, run_copy.model_config.d_vocab, torch.Generator())
        with pytest.raises(InsufficientMemoryError, match=rf"^{made.name.split('(')[0]}\(.* on a batch of 1 "):
            probe(run_copy, {"m": made}, batch, device="cpu")


def test_the_cli_says_when_it_computes_in_chunks(run_copy, monkeypatch, capsys):
    induction = heads.induction_probe(list(range(run_copy.model_config.n_layers)), PERIOD)
    budget(monkeypatch, free_for_rows(run_copy, induction, 2))
    assert main(["probe", str(run_copy.path), "induction", "--sequences", "5", "--steps", "0", "--device", "cpu"]) == 0
    assert f"memory: 5 sequences of {2 * PERIOD} tokens do not fit at once; computing them in chunks of 2" \
        in capsys.readouterr().out


def test_the_default_period_is_half_the_context_up_to_256():
    assert check_period(0, tiny_model_config(n_ctx=12)) == 6
    assert check_period(0, tiny_model_config(n_ctx=2048)) == DEFAULT_PERIOD == 256
    assert check_period(1000, tiny_model_config(n_ctx=2048)) == 1000


# --- threads ----------------------------------------------------------------------------------


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_sets_torchs_thread_count_for_the_command(run_copy, restore_threads, monkeypatch, threads):
    import interp.cli.probe as cli_probe

    seen: list[int] = []
    real = cli_probe.probe
    monkeypatch.setattr(cli_probe, "probe", lambda *a, **kw: (seen.append(torch.get_num_threads()), real(*a, **kw))[1])
    torch.set_num_threads(3)
    assert main(["probe", str(run_copy.path), "prev-token", "--steps", "0", "--device", "cpu",
                 "--threads", str(threads)]) == 0
    assert seen == [threads]
    assert torch.get_num_threads() == 3  # main() called in a process leaves its threads as they were


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_threads_value_is_argparses_one_line_error(run_copy, capsys, value):
    assert main(["probe", str(run_copy.path), "induction", "--threads", value]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("interp probe: error:")]
    assert errors == [f"interp probe: error: argument --threads: expected an integer >= 1, got "
                      f"{value if value != 'two' else repr(value)}"]


def test_every_computing_command_has_threads_and_run_keeps_its_own():
    parser = build_parser()
    for argv in (["probe", "d", "induction"], ["circuit", "d", "--method", "eap"], ["llc", "d"], ["view", "d"]):
        assert parser.parse_args([*argv, "--threads", "3"]).torch_threads == 3
    run_args = parser.parse_args(["run", "induction-heads", "--threads", "3"])
    assert run_args.threads == 3 and "torch_threads" not in run_args  # torch threads per training job


def test_the_default_threads_are_the_idle_cores(monkeypatch):
    monkeypatch.setattr(devices, "available_cores", lambda: 4)
    for load, expected in ((0.0, 4), (1.2, 3), (2.6, 1), (7.0, 1)):
        monkeypatch.setattr(devices.os, "getloadavg", lambda load=load: (load, load, load))
        assert devices.default_threads() == expected


def test_set_threads_refuses_a_count_below_one_and_torch_threads_restores(restore_threads):
    with pytest.raises(InputError, match=r"^threads: expected an integer >= 1, got 0$"):
        devices.set_threads(0)
    torch.set_num_threads(2)
    with devices.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
