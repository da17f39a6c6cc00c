"""probe(): one cached forward per checkpoint for any number of probes, only the
declared hooks cached, results cached on disk per (probe, batch, weights), and
the ProbeTable accessors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import D_VOCAB, N_CTX, RandomTokens, tiny_model_config, tiny_train_config
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources.native.model import NativeModel

import interp.probing as probing
from interp.batches import repeated_tokens
from interp.hooks import hook_name
from interp.ids import EMBED, LOGITS, EdgeId, HeadId, MlpId
from interp.metrics import ablation, heads, outputs
from interp.model import fused_forward, masked_mean_loss
from interp.probing import Probe, ProbeTable, probe
from interp.train import train

PERIOD = N_CTX // 2
SOME = [0, 8]  # a subset of the fixture run's checkpoints, for tests that need not visit all


def probe_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return {"tokens": repeated_tokens(3, PERIOD, D_VOCAB, torch.Generator().manual_seed(seed))}


def three_probes() -> dict[str, Probe]:
    return {
        "prev": heads.previous_token_probe(layers=[0, 1]),
        "ind": heads.induction_probe(layers=[1], period=PERIOD),
        "loss": outputs.loss_probe(),
    }


class ForwardCounter:
    """Counts real model forward passes (NativeModel.forward, under every bridge
    entry point), bridge `run_with_cache` calls and `run_probes` calls."""

    def __init__(self, monkeypatch):
        self.forwards = self.run_with_cache = self.run_probes = 0
        native_forward = NativeModel.forward
        run_with_cache = TransformerBridge.run_with_cache
        run_probes = probing.run_probes

        def counted_forward(model_self, *args, **kwargs):
            self.forwards += 1
            return native_forward(model_self, *args, **kwargs)

        def counted_run_with_cache(model_self, *args, **kwargs):
            self.run_with_cache += 1
            return run_with_cache(model_self, *args, **kwargs)

        def counted_run_probes(*args, **kwargs):
            self.run_probes += 1
            return run_probes(*args, **kwargs)

        monkeypatch.setattr(NativeModel, "forward", counted_forward)
        monkeypatch.setattr(TransformerBridge, "run_with_cache", counted_run_with_cache)
        monkeypatch.setattr(probing, "run_probes", counted_run_probes)

    def reset(self) -> None:
        self.forwards = self.run_with_cache = self.run_probes = 0

    @property
    def counts(self) -> tuple[int, int, int]:
        return self.forwards, self.run_with_cache, self.run_probes


@pytest.fixture
def counter(monkeypatch) -> ForwardCounter:
    return ForwardCounter(monkeypatch)


def test_one_forward_per_checkpoint_for_several_probes(run_copy, counter):
    n = len(run_copy.steps)
    table = probe(run_copy, three_probes(), probe_batch(), device="cpu")
    assert counter.counts == (n, n, n)
    assert table.steps.tolist() == run_copy.steps
    assert set(table.columns) == {
        "prev/L0H0",
        "prev/L0H1",
        "prev/L1H0",
        "prev/L1H1",
        "ind/L1H0",
        "ind/L1H1",
        "loss/loss",
    }
    assert table.values.shape == (n, 7)
    assert np.isfinite(table.values).all()


def test_second_call_reads_the_cache(run_copy, counter):
    batch = probe_batch()
    first = probe(run_copy, three_probes(), batch, device="cpu")
    counter.reset()
    second = probe(run_copy, three_probes(), batch, device="cpu")
    assert counter.counts == (0, 0, 0)
    assert second.columns == first.columns
    assert np.array_equal(second.values, first.values)
    assert np.array_equal(second.steps, first.steps)
    # an equal batch built anew (not the same object) hits the cache too
    probe(run_copy, three_probes(), probe_batch(), device="cpu")
    assert counter.counts == (0, 0, 0)


def test_different_batch_recomputes(run_copy, counter):
    first = probe(run_copy, three_probes(), probe_batch(0), steps=SOME, device="cpu")
    counter.reset()
    other = probe(run_copy, three_probes(), probe_batch(1), steps=SOME, device="cpu")
    n = len(SOME)
    assert counter.counts == (n, n, n)
    assert not np.array_equal(other.values, first.values)


def test_use_cache_false_recomputes(run_copy, counter):
    batch = probe_batch()
    first = probe(run_copy, three_probes(), batch, steps=SOME, device="cpu")
    counter.reset()
    again = probe(run_copy, three_probes(), batch, steps=SOME, device="cpu", use_cache=False)
    assert counter.forwards == len(SOME)
    assert np.allclose(again.values, first.values)


def test_cache_survives_new_process_state(run_copy, counter):
    """The cache lives in the run directory (probes/<key>.jsonl), not in memory."""
    batch = probe_batch()
    probe(run_copy, three_probes(), batch, device="cpu")
    files = sorted(p.name for p in (run_copy.path / "probes").iterdir())
    assert files == ["ind.jsonl", "loss.jsonl", "prev.jsonl"]
    counter.reset()
    probe(str(run_copy.path), three_probes(), batch, device="cpu")  # reopened by path
    assert counter.counts == (0, 0, 0)


def test_probe_parameters_key_the_cache(run_copy, counter):
    batch = probe_batch()
    probe(run_copy, {"ind": heads.induction_probe(layers=[1], period=PERIOD)}, batch, steps=[8], device="cpu")
    counter.reset()
    table = probe(run_copy, {"ind": heads.induction_probe(layers=[1], period=3)}, batch, steps=[8], device="cpu")
    assert counter.forwards == 1
    direct = heads.induction_score(
        run_copy.load(8, device="cpu").run_with_cache(batch["tokens"])[1][hook_name("pattern", 1)], 3
    )
    assert table["ind/L1H0"][-1] == pytest.approx(float(direct[0]), abs=1e-6)


def recording_probe(name: str, hooks: tuple[str, ...], seen: list[set[str]]) -> Probe:
    """Records the activation names it was given, folding TransformerLens aliases
    (e.g. `blocks.0.hook_in` beside `blocks.0.hook_resid_pre`, the very same
    tensor) into the declared name, so `seen` holds the distinct activations."""

    def fn(ctx):
        keys = set(ctx.acts.keys())
        declared = keys & ALL_DECLARED
        for extra in keys - ALL_DECLARED:
            assert any(ctx.acts[extra] is ctx.acts[d] or torch.equal(ctx.acts[extra], ctx.acts[d]) for d in declared), (
                f"{extra} was cached but no probe asked for it"
            )
        seen.append(declared)
        return {"n": float(len(declared))}

    return Probe(name=name, hooks=hooks, fn=fn)


ALL_DECLARED = {
    "blocks.0.attn.hook_pattern",
    "blocks.1.attn.hook_pattern",
    "blocks.0.hook_resid_pre",
    "blocks.1.hook_resid_pre",
}


def test_only_the_union_of_declared_hooks_is_cached(run_copy):
    seen: list[set[str]] = []
    probes = {
        "a": recording_probe("a", ("blocks.0.attn.hook_pattern",), seen),
        "b": recording_probe("b", ("blocks.1.attn.hook_pattern", "blocks.0.hook_resid_pre"), seen),
        "c": recording_probe("c", (), seen),
    }
    union = {"blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern", "blocks.0.hook_resid_pre"}
    table = probe(run_copy, probes, probe_batch(), steps=[0, 4], device="cpu")
    assert len(seen) == 3 * 2
    assert all(keys == union for keys in seen)
    assert table["a/n"].tolist() == [3.0, 3.0]


def test_probes_without_hooks_cache_nothing(run_copy):
    acts: list[int] = []

    def fn(ctx):
        acts.append(len(ctx.acts))
        return {"loss": float(masked_mean_loss(ctx.logits, ctx.batch))}

    probe(run_copy, {"l": Probe("l", (), fn)}, probe_batch(), steps=[0], device="cpu")
    assert acts == [0]


def test_a_probe_that_runs_its_own_forward_passes_gets_no_shared_one(run_copy, counter):
    seen: list[tuple[int, bool, bool]] = []

    def fn(ctx):
        seen.append((len(ctx.acts), ctx.logits is None, torch.is_grad_enabled()))
        return {"x": 1.0}

    own = Probe("own", (), fn, reads="batch")
    probe(run_copy, {"own": own}, probe_batch(), steps=SOME, device="cpu", use_cache=False)
    assert counter.counts == (0, 0, len(SOME)) and seen == [(0, True, False)] * len(SOME)
    with pytest.raises(ValueError, match=r"batch: probes \['own'\] run the model and need a batch"):
        probe(run_copy, {"own": own}, None, steps=SOME, device="cpu")
    counter.reset()  # beside a probe of the activations, the shared forward is run once, for it
    probe(run_copy, {"own": own, "loss": outputs.loss_probe()}, probe_batch(), steps=SOME, device="cpu",
          use_cache=False)
    assert counter.counts == (len(SOME), len(SOME), len(SOME))


def test_partially_cached_probes_only_cache_the_missing_hooks(run_copy, counter):
    batch = probe_batch()
    seen_a: list[set[str]] = []
    seen_b: list[set[str]] = []
    a = recording_probe("a", ("blocks.0.attn.hook_pattern",), seen_a)
    b = recording_probe("b", ("blocks.1.hook_resid_pre",), seen_b)
    probe(run_copy, {"a": a}, batch, steps=SOME, device="cpu")
    counter.reset()
    seen_a.clear()
    table = probe(run_copy, {"a": a, "b": b}, batch, steps=SOME, device="cpu")
    assert seen_a == []  # served from the cache
    assert seen_b == [{"blocks.1.hook_resid_pre"}] * len(SOME)
    assert counter.forwards == len(SOME)
    assert set(table.columns) == {"a/n", "b/n"}


def test_probe_values_match_direct_computation(run_copy):
    batch = probe_batch()
    steps = [0, 4, 8]
    table = probe(run_copy, three_probes(), batch, steps=steps, device="cpu")
    for i, step in enumerate(steps):
        model = run_copy.load(step, device="cpu")
        with torch.no_grad():
            logits, cache = model.run_with_cache(batch["tokens"])
        prev0 = heads.previous_token_score(cache[hook_name("pattern", 0)])
        ind1 = heads.induction_score(cache[hook_name("pattern", 1)], PERIOD)
        assert table["prev/L0H1"][i] == pytest.approx(float(prev0[1]), abs=1e-6)
        assert table["ind/L1H0"][i] == pytest.approx(float(ind1[0]), abs=1e-6)
        assert table["loss/loss"][i] == pytest.approx(float(masked_mean_loss(logits, batch)), abs=1e-5)


def test_steps_subset_and_missing_step(run_copy, counter):
    table = probe(run_copy, three_probes(), probe_batch(), steps=[2, 6], device="cpu")
    assert table.steps.tolist() == [2, 6]
    assert counter.forwards == 2
    with pytest.raises(KeyError) as info:
        probe(run_copy, three_probes(), probe_batch(), steps=[2, 3], device="cpu")
    assert "[3]" in str(info.value)
    assert str(run_copy.steps) in str(info.value)


def test_head_grid_of_real_table(run_copy):
    table = probe(run_copy, three_probes(), probe_batch(), steps=SOME, device="cpu")
    grid = table.head_grid("prev", n_layers=2, n_heads=2)
    assert grid.shape == (len(SOME), 2, 2)
    assert np.array_equal(grid[:, 1, 0], table["prev/L1H0"])
    ind = table.head_grid("ind", n_layers=2, n_heads=2)
    assert np.isnan(ind[:, 0]).all()  # layer 0 was not probed
    assert np.isfinite(ind[:, 1]).all()


def test_probe_with_continuous_inputs_uses_the_vectors(tmp_path):
    """Probing a d_input model must feed the batch's vectors, like training does."""

    class Vectors(RandomTokens):
        def batch(self, step, batch_size, generator):
            batch = super().batch(step, batch_size, generator)
            batch["vectors"] = torch.randn(batch_size, N_CTX, 3, generator=generator)
            batch["vector_mask"] = torch.arange(N_CTX).expand(batch_size, -1) % 3 == 0
            return batch

    model_cfg = tiny_model_config(d_input=3)
    run = train(tmp_path / "vec", model_cfg, tiny_train_config(steps=2), Vectors(), device="cpu", progress=False)
    batch = Vectors().batch(0, 3, torch.Generator().manual_seed(5))
    table = probe(run, {"loss": outputs.loss_probe()}, batch, device="cpu")
    for i, step in enumerate(run.steps):
        model = run.load(step, device="cpu")
        with torch.no_grad():
            expected = masked_mean_loss(fused_forward(model, batch), batch)
            tokens_only = {"tokens": batch["tokens"]}
            without_vectors = masked_mean_loss(fused_forward(model, tokens_only), tokens_only)
        assert table["loss/loss"][i] == pytest.approx(float(expected), abs=1e-5)
        assert abs(float(expected) - float(without_vectors)) > 1e-3  # the vectors do matter


# --- ProbeTable ----------------------------------------------------------------------------


def small_table() -> ProbeTable:
    return ProbeTable(
        steps=np.array([0, 5]),
        columns=("a/L0H0", "a/L1H1", "b/loss"),
        values=np.array([[0.1, 0.2, 3.0], [0.4, 0.5, 2.0]]),
    )


def test_table_getitem_and_unknown_column():
    table = small_table()
    assert table["b/loss"].tolist() == [3.0, 2.0]
    with pytest.raises(KeyError) as info:
        table["c/loss"]
    message = str(info.value)
    assert "c/loss" in message
    for column in table.columns:
        assert column in message


def test_table_columns_named_by_an_identity_are_read_by_it():
    table = ProbeTable(np.array([0, 5]), ("L0H1", "L0H1->logits", "MLP0", "base", "embed"),
                       np.arange(10.0).reshape(2, 5))
    head = HeadId(0, 1)
    assert table[head].tolist() == table["L0H1"].tolist() == [0.0, 5.0]
    assert table[EdgeId(head, LOGITS)].tolist() == [1.0, 6.0]
    assert MlpId(0) in table and EMBED in table and "base" in table
    assert HeadId(1, 1) not in table and MlpId(1) not in table and 3 not in table
    with pytest.raises(KeyError, match="L1H1"):
        table[HeadId(1, 1)]
    assert small_table().select("a")[HeadId(1, 1)].tolist() == [0.2, 0.5]


def test_table_select_and_head_grid():
    table = small_table()
    sub = table.select("a")
    assert sub.columns == ("L0H0", "L1H1")
    assert sub.values.tolist() == [[0.1, 0.2], [0.4, 0.5]]
    with pytest.raises(KeyError, match="zzz"):
        table.select("zzz")
    grid = table.head_grid("a", n_layers=2, n_heads=2)
    assert grid.shape == (2, 2, 2)
    assert grid[:, 0, 0].tolist() == [0.1, 0.4]
    assert grid[:, 1, 1].tolist() == [0.2, 0.5]
    assert np.isnan(grid[:, 0, 1]).all() and np.isnan(grid[:, 1, 0]).all()


def test_table_rows_and_csv(tmp_path):
    table = small_table()
    rows = table.to_rows()
    assert rows[1] == {"step": 5, "a/L0H0": 0.4, "a/L1H1": 0.5, "b/loss": 2.0}
    path = tmp_path / "t.csv"
    table.to_csv(path)
    lines = path.read_text().splitlines()
    assert lines[0] == "step,a/L0H0,a/L1H1,b/loss"
    assert np.allclose(np.loadtxt(path, delimiter=",", skiprows=1), np.column_stack([table.steps, table.values]))


def test_batch_hash_depends_on_contents_dtype_and_keys():
    a = {"tokens": torch.tensor([[1, 2, 3]])}
    assert probing.batch_hash(a) == probing.batch_hash({"tokens": torch.tensor([[1, 2, 3]])})
    assert probing.batch_hash(a) != probing.batch_hash({"tokens": torch.tensor([[1, 2, 4]])})
    assert probing.batch_hash(a) != probing.batch_hash({"tokens": torch.tensor([[1, 2, 3]], dtype=torch.int32)})
    assert probing.batch_hash(a) != probing.batch_hash({"tokens": torch.tensor([[1], [2], [3]])})
    assert probing.batch_hash(a) != probing.batch_hash({**a, "mask": torch.tensor([[True, False, True]])})


def test_attention_mass_and_ablation_probes_match_the_direct_metrics(run_copy):
    batch = probe_batch()
    n, pos = batch["tokens"].shape
    positions = torch.arange(pos).expand(n, pos)
    batch = {**batch, "query": positions >= pos // 2, "key": positions < 2}
    metric = lambda logits, b: float(logits.mean())  # noqa: E731
    table = probe(run_copy, {
        "mass": heads.attention_mass_probe([0, 1], "query", "key"),
        "abl": ablation.ablation_probe(metric, "mean_logit", "zero", layers=[1]),
    }, batch, steps=[run_copy.steps[-1]])
    model = run_copy.load()
    with torch.no_grad():
        _, cache = model.run_with_cache(batch["tokens"], names_filter=[hook_name("pattern", 1)])
    direct_mass = heads.attention_mass(cache[hook_name("pattern", 1)], batch["query"], batch["key"])
    assert table["mass/L1H0"][0] == pytest.approx(float(direct_mass[0]), abs=1e-6)
    direct_ablation = ablation.head_ablation_effect(model, batch, metric, "zero", layers=[1])
    assert table["abl/L1H1"][0] == pytest.approx(direct_ablation["L1H1"], abs=1e-6)
    assert not any(c.startswith("abl/L0") for c in table.columns)


def test_collect_activations_stacks_one_tensor_per_checkpoint(run_copy):
    batch = probe_batch()
    acts = probing.collect_activations(run_copy, "blocks.0.hook_resid_post", batch, steps=SOME)
    assert acts.shape == (len(SOME), *batch["tokens"].shape, run_copy.model_config.d_model)
    for i, step in enumerate(SOME):
        _, cache = run_copy.load(step).run_with_cache(batch["tokens"], names_filter=["blocks.0.hook_resid_post"])
        np.testing.assert_allclose(acts[i], cache["blocks.0.hook_resid_post"].numpy(), rtol=1e-5, atol=1e-6)


def test_collect_activations_unknown_hook(run_copy):
    with pytest.raises(KeyError, match="hook_nonexistent"):
        probing.collect_activations(run_copy, "blocks.0.hook_nonexistent", probe_batch(), steps=[0])
