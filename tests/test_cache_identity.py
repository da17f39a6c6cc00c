"""A cached probe result is returned only for the computation that produced it: keyed by
probe, batch, checkpoint hash and numerics (dtype, device class), verified by a digest of
its row; readers of the cache (`interp plot`, the explorer) draw one computation per curve."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from helpers import D_VOCAB, N_CTX
from test_suites import TOKENS, build_suite

from interp.batches import repeated_tokens
from interp.cli import main
from interp.metrics import heads, outputs
from interp.probing import cached_computations, probe
from interp.run_layout import PROBES_DIR
from interp.suites import open_suite
from interp.view.data import cached_probes

PERIOD = N_CTX // 2


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return {"tokens": repeated_tokens(3, PERIOD, D_VOCAB, torch.Generator().manual_seed(seed))}


def rows(run, key: str) -> list[dict]:
    return [json.loads(line) for line in (run.path / PROBES_DIR / f"{key}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def suite_folder(tmp_path_factory):
    return build_suite(tmp_path_factory.mktemp("suite") / "gpt2", "gpt2", steps=[0, 500]).folder


@pytest.mark.parametrize("order", [("bfloat16", "float32"), ("float32", "bfloat16")])
def test_each_precision_gets_its_own_values(suite_folder, tmp_path, order):
    probes = {"ind": heads.induction_probe(layers=[1], period=6)}
    fresh = {}  # each precision alone, in a cache of its own: the values to expect
    for i, name in enumerate(order):
        alone = open_suite(suite_folder, dtype=getattr(torch, name), cache=tmp_path / f"alone{i}")
        fresh[name] = probe(alone, probes, {"tokens": TOKENS}, device="cpu").values
    assert not np.array_equal(fresh["bfloat16"], fresh["float32"])  # bfloat16 does change the numbers
    cache = tmp_path / "shared"
    for name in order:  # the second precision must not read the first one's rows
        shared = open_suite(suite_folder, dtype=getattr(torch, name), cache=cache)
        np.testing.assert_array_equal(probe(shared, probes, {"tokens": TOKENS}, device="cpu").values, fresh[name])
    for name in order:  # and each is now cached under its own numerics
        shared = open_suite(suite_folder, dtype=getattr(torch, name), cache=cache)
        np.testing.assert_array_equal(probe(shared, probes, {"tokens": TOKENS}, device="cpu").values, fresh[name])
    assert sorted({r["numerics"] for r in rows(shared, "ind")}) == ["bfloat16/cpu", "float32/cpu"]


def test_an_edited_row_is_recomputed_with_a_warning_and_reported(run_copy, caplog):
    probes = {"ind": heads.induction_probe(layers=[1], period=PERIOD)}
    original = probe(run_copy, probes, batch())
    cache = run_copy.path / PROBES_DIR / "ind.jsonl"
    lines = cache.read_text().splitlines()
    edited = json.loads(lines[2])
    column = next(iter(edited["values"]))
    edited["values"][column] = 0.123
    lines[2] = json.dumps(edited)
    cache.write_text("\n".join(lines) + "\n")
    assert main(["info", str(run_copy.path), "--verify"]) != 0  # the edit is reported ...
    with caplog.at_level(logging.WARNING, logger="interp.probe_cache"):
        again = probe(run_copy, probes, batch())
    np.testing.assert_array_equal(again.values, original.values)  # ... never returned: recomputed
    assert any(str(cache) in r.getMessage() and "edited" in r.getMessage() for r in caplog.records)
    assert all(r["values"][column] != 0.123 for r in rows(run_copy, "ind"))  # the edited row is gone
    assert main(["info", str(run_copy.path), "--verify"]) == 0


def test_rows_without_a_digest_are_shown_but_never_returned(run_copy):
    probes = {"ind": heads.induction_probe(layers=[1], period=PERIOD)}
    original = probe(run_copy, probes, batch())
    cache = run_copy.path / PROBES_DIR / "ind.jsonl"
    legacy = [{k: v for k, v in r.items() if k not in ("digest", "numerics")} for r in rows(run_copy, "ind")]
    for row in legacy:
        row["values"] = {k: 0.5 for k in row["values"]}  # the old layout cannot be verified: prove it is not used
    cache.write_text("".join(json.dumps(r) + "\n" for r in legacy))
    shown = cached_computations(run_copy, "ind")
    assert [c.numerics for c in shown] == ["unrecorded"]
    np.testing.assert_array_equal(probe(run_copy, probes, batch()).values, original.values)


def test_plot_and_explorer_draw_the_most_complete_computation(run_copy, capsys):
    probes = {"ind": heads.induction_probe(layers=[1], period=PERIOD)}
    full = probe(run_copy, probes, batch(0))
    probe(run_copy, probes, batch(7), steps=[0, 8])  # a small extra call with another batch, written last
    best = cached_computations(run_copy, "ind")[0]
    assert best.batch != cached_computations(run_copy, "ind")[1].batch
    np.testing.assert_array_equal(best.table.steps, full.steps)
    np.testing.assert_array_equal(best.table.values, full.values)
    assert main(["plot", str(run_copy.path)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(full.steps)} of {len(run_copy.steps)} checkpoints" in printed and "1 other computation" in printed
    shown = cached_probes(run_copy)["ind"]
    assert shown["steps"] == full.steps.tolist()
    np.testing.assert_allclose(np.array(shown["values"], dtype=float), full.values, rtol=1e-4)  # 5 digits shown


def test_plot_draws_the_full_curve(run_copy, monkeypatch):
    import interp.cli.plot as cli_plot

    drawn, real = {}, cli_plot.plot_head_curves

    def capture(grid, steps, **kwargs):
        drawn["steps"], drawn["grid"] = np.asarray(steps), grid
        return real(grid, steps, **kwargs)

    monkeypatch.setattr(cli_plot, "plot_head_curves", capture)
    probes = {"ind": heads.induction_probe(layers=[1], period=PERIOD)}
    full = probe(run_copy, probes, batch(0))
    probe(run_copy, probes, batch(7), steps=[0, 8])
    assert main(["plot", str(run_copy.path)]) == 0
    np.testing.assert_array_equal(drawn["steps"], full.steps)
    np.testing.assert_array_equal(drawn["grid"][:, 1, :], full.values)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(2, N_CTX + 3, dtype=torch.long), f"longer than the model's context n_ctx={N_CTX}"),
    (torch.full((2, 4), D_VOCAB), f"[0, d_vocab={D_VOCAB})"),
    (torch.zeros(2, 4), "expected integer token ids"),
])
def test_a_batch_the_model_cannot_read_is_one_line(run_copy, bad, message):
    with pytest.raises(ValueError) as err:
        probe(run_copy, {"loss": outputs.loss_probe()}, {"tokens": bad})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_an_edited_cache_value_does_not_change_a_resumed_analysis(tmp_path):
    from interp.analysis import run_analysis
    from interp.parallel import LocalBackend

    out = tmp_path / "induction"
    kwargs = {"preset": "tiny", "device": "cpu", "progress": False, "backend": LocalBackend(1)}
    first = run_analysis("induction-heads", out, **kwargs)
    cache = out / "runs" / "main" / PROBES_DIR / "induction.jsonl"
    lines = cache.read_text().splitlines()
    last = json.loads(lines[-1])  # the final checkpoint's row: it feeds induction_score_final
    last["values"] = {k: 0.987 for k in last["values"]}
    cache.write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")
    assert main(["info", str(out / "runs" / "main"), "--verify"]) != 0
    again = run_analysis("induction-heads", out, resume=True, **kwargs)
    stable = {k for k in first if k not in ("wall_seconds", "device")}
    assert {k: again[k] for k in stable} == {k: first[k] for k in stable}
    assert json.loads((out / "results.json").read_text())["induction_score_final"] == first["induction_score_final"]


def test_an_edited_circuit_graph_is_refused_by_name_and_reported(run_copy):
    from interp.batches import repeated_patch_batch
    from interp.circuits.common import mean_logprob
    from interp.circuits.graph import load_graphs
    from interp.circuits.trace import trace

    traced = trace(run_copy, "path", repeated_patch_batch(4, PERIOD, D_VOCAB, torch.Generator().manual_seed(0)),
                   mean_logprob("in_repeat"), steps=[0, 8])
    assert traced.saved.graph_set.numerics == "float32/cpu"
    step_file = traced.saved.graph_set.folder / "step_8.json"
    graph = json.loads(step_file.read_text())
    graph["edges"][0]["weight"] = 9.0
    step_file.write_text(json.dumps(graph))
    assert len(load_graphs(run_copy.path, "path", steps=[0])) == 1  # the untouched step still reads
    with pytest.raises(ValueError, match="step_8.json was edited"):
        load_graphs(run_copy.path, "path")
    assert main(["info", str(run_copy.path), "--verify"]) != 0


def test_an_edited_pattern_file_is_recomputed_and_reported(run_copy):
    from interp.view.checkpoint_cache import PATTERNS_DIR
    from interp.view.patterns import example_for, example_patterns

    example = example_for(run_copy, PERIOD)
    original = example_patterns(run_copy, example, device="cpu")
    folder = run_copy.path / PATTERNS_DIR / example.key
    victim = folder / f"{run_copy.checkpoint_hash(run_copy.steps[-1])[:16]}.npy"
    np.save(victim, np.zeros_like(original[-1]))  # same shape and dtype: only the digest tells
    assert main(["info", str(run_copy.path), "--verify"]) != 0
    np.testing.assert_array_equal(example_patterns(run_copy, example, device="cpu"), original)
    assert main(["info", str(run_copy.path), "--verify"]) == 0  # recomputed and stored again


@pytest.mark.slow
def test_temporary_files_of_an_analysis_level_kill_are_listed_and_removed_on_resume(tmp_path, capsys):
    from interp.analysis import run_analysis
    from interp.parallel import LocalBackend

    out = tmp_path / "induction"
    kwargs = {"preset": "tiny", "device": "cpu", "progress": False, "backend": LocalBackend(1)}
    first = run_analysis("induction-heads", out, **kwargs)
    leftovers = [out / ".results.json.4242.0a1b2c3d.tmp", out / "figures" / ".phase.png.4242.0a1b2c3d.tmp"]
    for path in leftovers:  # what a kill between write and rename leaves
        path.write_bytes(b"half a file")
    assert main(["info", str(out), "--verify"]) == 0
    assert "2 temporary file(s) of interrupted writes" in capsys.readouterr().out
    again = run_analysis("induction-heads", out, resume=True, **kwargs)
    assert not any(p.exists() for p in leftovers)
    assert again["induction_score_final"] == first["induction_score_final"]


def test_a_run_another_process_writes_past_the_wait_is_probed_without_caching(run_copy, tmp_path, caplog,
                                                                             monkeypatch):
    import subprocess
    import sys
    import time

    from interp import locking

    monkeypatch.delenv(locking.BRIEF_WAIT_ENV, raising=False)
    monkeypatch.setattr(locking, "BRIEF_WAIT_S", 0.3)  # the holder outlives the wait
    probes = {"ind": heads.induction_probe(layers=[1], period=PERIOD)}
    expected = probe(run_copy, probes, batch(), use_cache=False)
    (run_copy.path / PROBES_DIR / "ind.jsonl").unlink()
    ready = tmp_path / "holding"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, pathlib\nfrom interp.locking import run_lock\n"
        f"with run_lock({str(run_copy.path)!r}):\n"
        f"    pathlib.Path({str(ready)!r}).touch()\n    time.sleep(60)\n")])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "the lock holder did not start"
            time.sleep(0.05)
        with caplog.at_level(logging.WARNING, logger="interp.probe_cache"):
            got = probe(run_copy, probes, batch())
    finally:
        holder.kill()
        holder.wait()
    np.testing.assert_array_equal(got.values, expected.values)
    assert not (run_copy.path / PROBES_DIR / "ind.jsonl").exists()  # nothing written past the other writer
    assert f"run directory {run_copy.path} is in use by pid {holder.pid} (waited 0.3 s); probing without caching " \
        "the results" in [r.getMessage() for r in caplog.records]
