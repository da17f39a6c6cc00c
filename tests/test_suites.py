"""Checkpoint suites in Hugging Face format (`interp.suites`), fully offline.

Each suite is built here with `transformers`: a tiny random GPT-NeoX (Pythia's architecture) or
GPT-2, saved as five `step<N>` revisions whose weights move by a known, seeded amount per step.
The models the suite loads are checked against these `transformers` models.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
import transformers
import transformers.utils.hub
from helpers import Loads
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPTNeoXConfig,
    PreTrainedTokenizerFast,
)

from interp import suite_cache, suites
from interp.batches import repeated_tokens
from interp.cli import main
from interp.files import loads_json
from interp.hooks import hook_name
from interp.metrics import heads
from interp.probing import Probe, ProbeContext, collect_activations, probe
from interp.run_layout import PROBES_DIR
from interp.suites import CheckpointSuite, SuiteError, open_suite

D_VOCAB = 64
N_CTX = 32
PERIOD = 6
STEPS = [0, 2, 10, 64, 512]  # by name step10 sorts before step2: the order must come from the numbers
ARCHS = ("gpt_neox", "gpt2")


def hf_config(arch: str):
    if arch == "gpt_neox":
        return GPTNeoXConfig(vocab_size=D_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=N_CTX, rotary_pct=0.5)
    return GPT2Config(vocab_size=D_VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=N_CTX)


TOKENS = repeated_tokens(3, PERIOD, D_VOCAB, torch.Generator().manual_seed(7), repeats=3)


@dataclass
class BuiltSuite:
    """A suite folder and, per step, what its `transformers` model computes on `TOKENS`."""

    folder: Path
    arch: str
    logits: dict[int, torch.Tensor]
    patterns: dict[int, tuple[torch.Tensor, ...]]
    resid_post: dict[int, tuple[torch.Tensor, ...]]


def build_suite(folder: Path, arch: str, steps: list[int] = STEPS) -> BuiltSuite:
    """Revision `step<s>` holds `init + (s / 1000) * delta` (both seeded), saved by transformers."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config(arch), attn_implementation="eager").eval()
    init = {name: p.detach().clone() for name, p in model.named_parameters()}
    delta = {name: torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) for i, (name, p)
             in enumerate(model.named_parameters())}
    built = BuiltSuite(folder, arch, {}, {}, {})
    for step in steps:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(init[name] + step / 1000 * delta[name])
            out = model(TOKENS, output_attentions=True, output_hidden_states=True)
        model.save_pretrained(folder / f"step{step}")
        built.logits[step] = out.logits
        built.patterns[step] = out.attentions
        built.resid_post[step] = out.hidden_states[1:-1]  # [0] is the embedding, [-1] has the final norm applied
    return built


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, BuiltSuite]:
    root = tmp_path_factory.mktemp("suites")
    return {arch: build_suite(root / arch, arch) for arch in ARCHS}


def private_copy(suite: BuiltSuite, tmp_path: Path) -> Path:
    """A copy of a built suite folder, free to cache into, change or damage."""
    dest = tmp_path / suite.arch
    shutil.copytree(suite.folder, dest)
    return dest


def save_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: `t<i>` is token i."""
    vocab = {f"t{i}": i for i in range(D_VOCAB - 1)} | {"[UNK]": D_VOCAB - 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.save_pretrained(folder)
    return tokenizer


def resid_probe(layer: int) -> Probe:
    """A probe of our own on the residual stream: the mean of `blocks.<layer>.hook_resid_post` per row."""
    hook = hook_name("resid_post", layer)

    def fn(ctx: ProbeContext) -> dict[str, float]:
        return {f"row{i}": float(v) for i, v in enumerate(ctx.acts[hook].mean(dim=(1, 2)))}

    return Probe(name=f"resid_mean({hook})", hooks=(hook,), fn=fn)


def head_probes() -> dict[str, Probe]:
    return {"ind": heads.induction_probe([1], PERIOD), "prev": heads.previous_token_probe([0, 1]),
            "resid": resid_probe(0)}


# --- opening and loading ---------------------------------------------------------------------


def test_open_suite_lists_the_step_folders_in_step_order_and_loads_nothing(built, tmp_path, monkeypatch):
    folder = private_copy(built["gpt_neox"], tmp_path)
    (folder / "notes").mkdir()  # neither step<N> nor a checkpoint: ignored
    (folder / "README.md").write_text("a suite\n")
    loads = Loads(monkeypatch)
    suite = open_suite(folder, cache=tmp_path / "cache")
    assert suite.steps == STEPS
    assert [suite.revision(s) for s in suite.steps] == [f"step{s}" for s in STEPS]
    assert suite.path.parent == tmp_path / "cache"
    cfg = suite.model_config
    assert (cfg.architecture, cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_vocab, cfg.n_ctx) == \
        ("GPTNeoXForCausalLM", 2, 4, 32, D_VOCAB, N_CTX)
    assert suite.config["model_type"] == "gpt_neox"
    assert suite.tokenizer is None and suite.metrics() == []
    assert loads.count == 0  # lazy: nothing is loaded until asked for
    assert open_suite(str(folder), steps=[64, 2]).steps == [2, 64]
    assert open_suite(folder, revisions=["step512", "step0"]).steps == [0, 512]
    assert open_suite(folder).path.parent == folder / suite_cache.DEFAULT_CACHE


@pytest.mark.parametrize("arch", ARCHS)
def test_each_checkpoint_loads_with_the_logits_of_its_transformers_model(built, arch):
    reference = built[arch]
    suite = open_suite(reference.folder, cache=reference.folder.parent / "unused-cache")
    model = None
    for step in suite.steps:
        loaded = suite.load(step, device="cpu", into=model)
        assert model is None or loaded is model  # `into` is reused: one model object for the walk
        model = loaded
        assert not model.training
        with torch.no_grad():
            logits = model(TOKENS)
        torch.testing.assert_close(logits, reference.logits[step], atol=1e-4, rtol=0)
    assert suite.load(device="cpu") is not model  # without `into`: a model of its own, the last step's
    with pytest.raises(SuiteError, match="into: expected a model this suite loaded"):
        open_suite(reference.folder).load(0, device="cpu", into=model)


@pytest.mark.parametrize("arch", ARCHS)
def test_circuit_probes_run_through_the_probe_runner(built, arch, tmp_path):
    reference = built[arch]
    suite = open_suite(reference.folder, cache=tmp_path / "cache")
    table = probe(suite, head_probes(), {"tokens": TOKENS}, device="cpu")
    assert table.steps.tolist() == STEPS
    for i, step in enumerate(STEPS):
        patterns = reference.patterns[step]  # the transformers model's attention, [batch, head, query, key]
        for head in range(4):
            assert table[f"ind/L1H{head}"][i] == pytest.approx(
                float(heads.induction_score(patterns[1], PERIOD)[head]), abs=1e-5)
            assert table[f"prev/L0H{head}"][i] == pytest.approx(
                float(heads.previous_token_score(patterns[0])[head]), abs=1e-5)
        means = reference.resid_post[step][0].mean(dim=(1, 2))
        np.testing.assert_allclose([table[f"resid/row{r}"][i] for r in range(3)], means.numpy(), atol=1e-5)
    grid = table.head_grid("prev", suite.model_config.n_layers, suite.model_config.n_heads)
    assert grid.shape == (len(STEPS), 2, 4) and np.isfinite(grid).all()


def test_a_linear_probe_and_collected_activations_run_on_a_suite(built, tmp_path):
    linear_probes = pytest.importorskip("interp.metrics.linear_probes")
    suite = open_suite(built["gpt_neox"].folder, cache=tmp_path / "cache")
    acts = collect_activations(suite, hook_name("resid_post", 0), {"tokens": TOKENS}, steps=[0, 512], device="cpu")
    for i, step in enumerate([0, 512]):
        np.testing.assert_allclose(acts[i], built["gpt_neox"].resid_post[step][0].numpy(), atol=1e-5)

    tokens = torch.randint(0, D_VOCAB, (24, 8), generator=torch.Generator().manual_seed(3))
    batch = {"tokens": tokens, "where": torch.ones_like(tokens, dtype=torch.bool), "parity": tokens % 2}
    lin = linear_probes.linear_probe(linear_probes.LinearProbeSettings(hook_name("resid_post", 0), "where", "parity"))
    table = probe(suite, {"lin": lin}, batch, steps=[0, 512], device="cpu")
    assert table.steps.tolist() == [0, 512]
    assert np.isfinite(table["lin/accuracy"]).all()
    assert (suite.path / PROBES_DIR / "lin.jsonl").exists()  # cached beside the suite's other probes
    saved = linear_probes.load_directions(suite, "lin", lin, batch)  # directions saved beside them too
    assert saved.steps.tolist() == [0, 512] and saved.directions.shape == (2, 1, suite.model_config.d_model)


# --- the cache -------------------------------------------------------------------------------


def test_results_are_cached_by_checkpoint_so_a_reprobe_loads_and_hashes_nothing(built, tmp_path, monkeypatch):
    folder = private_copy(built["gpt_neox"], tmp_path)
    loads = Loads(monkeypatch)
    first = probe(open_suite(folder), head_probes(), {"tokens": TOKENS}, device="cpu")
    assert loads.count == len(STEPS)

    hashed = []
    real_sha256 = suite_cache.sha256_file
    monkeypatch.setattr(suite_cache, "sha256_file", lambda path: hashed.append(path) or real_sha256(path))
    again = probe(open_suite(folder), head_probes(), {"tokens": TOKENS}, device="cpu")  # as a new process would
    assert loads.count == len(STEPS) and hashed == []
    np.testing.assert_array_equal(again.values, first.values)

    suite = open_suite(folder)
    for cache in (suite.path / PROBES_DIR).glob("*.jsonl"):  # strict JSON, keyed by probe, batch and weights
        rows = [loads_json(line) for line in cache.read_text().splitlines()]
        assert {r["step"] for r in rows} == set(STEPS)
        assert all(r["weights"].startswith("sha256:") for r in rows)
    loads_json((suite.path / suite_cache.HASHES_FILE).read_bytes())

    # Saving another checkpoint over step10 changes its identity: only it is computed again.
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(hf_config("gpt_neox"), attn_implementation="eager").save_pretrained(
        folder / "step10")
    changed = probe(open_suite(folder), head_probes(), {"tokens": TOKENS}, device="cpu")
    assert loads.count == len(STEPS) + 1
    assert len(hashed) == 2  # step10's config and weights, nothing else
    moved = ~np.isclose(changed.values, first.values).all(axis=1)
    assert moved.tolist() == [step == 10 for step in STEPS]


def test_a_same_size_replacement_with_its_mtime_restored_is_hashed_again(built, tmp_path, monkeypatch, capsys):
    """Before: a step's identity was remembered by size and mtime, so these new weights reused the
    old weights' cached results."""
    folder = private_copy(built["gpt_neox"], tmp_path)
    loads = Loads(monkeypatch)
    first = probe(open_suite(folder), head_probes(), {"tokens": TOKENS}, device="cpu")
    weights = folder / "step10" / "model.safetensors"
    stat = weights.stat()
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(hf_config("gpt_neox"), attn_implementation="eager").save_pretrained(
        tmp_path / "other")
    other = (tmp_path / "other" / "model.safetensors").read_bytes()
    assert len(other) == stat.st_size and other != weights.read_bytes()
    weights.write_bytes(other)  # in place: the same inode
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)

    assert main(["info", str(folder), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "verify: FAILED" in out and f"- {weights}: its content changed since it was hashed, though its size " \
        "and mtime did not (cached results of step 10 are computed again)" in out

    again = probe(open_suite(folder), head_probes(), {"tokens": TOKENS}, device="cpu")
    assert loads.count == len(STEPS) + 1  # step10 only
    moved = ~np.isclose(again.values, first.values).all(axis=1)
    assert moved.tolist() == [step == 10 for step in STEPS]
    assert main(["info", str(folder), "--verify"]) == 0 and "verify: OK" in capsys.readouterr().out


def test_a_hub_suite_is_lazy_and_keyed_by_model_and_revision(built, tmp_path, monkeypatch, no_network):
    suite = open_suite("EleutherAI/pythia-70m", steps=[512, 0], cache=tmp_path / "cache")
    assert suite.folder is None and suite.steps == [0, 512]
    assert suite.checkpoint_hash(512) == "EleutherAI/pythia-70m@step512"
    assert suite.path == tmp_path / "cache" / "EleutherAI--pythia-70m"
    whole = open_suite("EleutherAI/pythia-70m", cache=tmp_path / "cache")  # Pythia's published schedule
    assert whole.steps[:4] == [0, 1, 2, 4] and whole.steps[-1] == 143000 and len(whole.steps) == 154
    with pytest.raises(SuiteError, match="steps: .* needs steps="):
        open_suite("someone/some-model", cache=tmp_path / "cache")

    # What would come from the hub comes from the built folder, asked for by model and revision.
    asked = []

    def from_hub(location, **kwargs):
        asked.append((location, kwargs.get("revision"), kwargs.get("local_files_only", False)))
        return AutoModelForCausalLM.from_pretrained(built["gpt_neox"].folder / kwargs["revision"],
                                                    local_files_only=True, attn_implementation="eager")

    real_config = transformers.AutoConfig.from_pretrained

    def config_from_hub(location, **kwargs):  # the config is read first: the batch is checked against its sizes
        if location != "EleutherAI/pythia-70m":
            return real_config(location, **kwargs)  # the built folder's, as `from_hub` loads it
        assert kwargs["trust_remote_code"] is False
        return real_config(built["gpt_neox"].folder / kwargs["revision"], local_files_only=True)

    monkeypatch.setattr(suites, "_from_pretrained", from_hub)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", config_from_hub)
    monkeypatch.setattr(suites, "_hub_config_dict", lambda repo, revision: json.loads(
        (built["gpt_neox"].folder / revision / "config.json").read_text()))
    monkeypatch.setattr(CheckpointSuite, "tokenizer", property(lambda self: None))
    table = probe(suite, {"ind": heads.induction_probe([1], PERIOD)}, {"tokens": TOKENS}, device="cpu")
    assert asked == [("EleutherAI/pythia-70m", "step0", False), ("EleutherAI/pythia-70m", "step512", False)]
    assert table["ind/L1H0"][1] == pytest.approx(
        float(heads.induction_score(built["gpt_neox"].patterns[512][1], PERIOD)[0]), abs=1e-5)
    rows = [loads_json(line) for line in (suite.path / PROBES_DIR / "ind.jsonl").read_text().splitlines()]
    assert [r["weights"] for r in rows] == ["EleutherAI/pythia-70m@step0", "EleutherAI/pythia-70m@step512"]


# --- memory ----------------------------------------------------------------------------------


def test_a_walk_over_five_checkpoints_keeps_one_model_in_memory(built, tmp_path, monkeypatch):
    """Memory is the bytes of the live storage of every tensor of every model loaded (weak
    references, sampled as each checkpoint starts to load, once it is loaded, before its weights
    move into the reused model and after). Not tracemalloc: it does not see torch's allocator.
    Not the torch profiler: it counts the memory-mapped weight files transformers loads from,
    but reports their unmapping out of order (a freed file shows as freed after the next one is
    mapped), so its running sum overstates the peak."""
    tracked: list[weakref.ref] = []

    def track(model) -> None:
        tracked.extend(weakref.ref(t) for t in suites._named_tensors(model).values())

    def live_bytes() -> int:
        storages = {}
        for ref in tracked:
            tensor = ref()
            if tensor is not None and tensor.numel():
                storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return sum(storages.values())

    def mapped_checkpoints() -> set[str]:
        maps = Path("/proc/self/maps")
        return {line.split()[-1] for line in maps.read_text().splitlines() if str(folder) in line} \
            if maps.exists() else set()

    folder = private_copy(built["gpt_neox"], tmp_path)
    samples: list[tuple[str, int]] = []
    mapped_before_load: list[set[str]] = []
    real_load, real_move = suites._from_pretrained, suites._move_weights

    def loading(location, **kwargs):
        samples.append(("before load", live_bytes()))
        mapped_before_load.append(mapped_checkpoints())
        model = real_load(location, **kwargs)
        track(model)
        samples.append(("loaded", live_bytes()))
        return model

    def moving(source, target):
        track(source)  # the freshly wrapped model, with the tensors the bridge adds (e.g. split Q, K, V)
        samples.append(("before move", live_bytes()))
        real_move(source, target)
        samples.append(("moved", live_bytes()))

    monkeypatch.setattr(suites, "_from_pretrained", loading)
    monkeypatch.setattr(suites, "_move_weights", moving)
    suite = open_suite(folder)
    models = []
    real_suite_load = suite.load

    def load(*args, **kwargs):
        model = real_suite_load(*args, **kwargs)
        track(model)
        models.append(model)
        samples.append(("returned", live_bytes()))
        return model

    monkeypatch.setattr(suite, "load", load)
    probe(suite, head_probes(), {"tokens": TOKENS}, device="cpu", progress=True)

    assert len(models) == len(STEPS) and all(m is models[0] for m in models)
    one_model = live_bytes()  # the last checkpoint, alone
    assert one_model == sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                             for t in suites._named_tensors(models[0]).values()}.values())
    peak = max(b for _, b in samples)
    assert peak <= 1.5 * one_model, samples
    assert [b for what, b in samples if what == "before load"][1:] == [0] * (len(STEPS) - 1)  # freed first
    assert all(not mapped for mapped in mapped_before_load[1:])  # no earlier checkpoint's file stays mapped


# --- tokenizers ------------------------------------------------------------------------------


def test_probes_take_text_where_the_suite_has_a_tokenizer(built, tmp_path, monkeypatch):
    folder = private_copy(built["gpt_neox"], tmp_path)
    save_tokenizer(folder)
    suite = open_suite(folder, steps=[0, 512])
    texts = [" ".join(f"t{int(i)}" for i in row) for row in TOKENS]
    probes = {"ind": heads.induction_probe([1], PERIOD)}
    from_text = probe(suite, probes, texts, device="cpu")
    loads = Loads(monkeypatch)
    from_ids = probe(suite, probes, {"tokens": TOKENS}, device="cpu")
    assert loads.count == 0  # the same tokens: the text's results are the cached ones
    np.testing.assert_array_equal(from_text.values, from_ids.values)
    assert from_text["ind/L1H2"][1] == pytest.approx(
        float(heads.induction_score(built["gpt_neox"].patterns[512][1], PERIOD)[2]), abs=1e-5)
    assert suite.load(0, device="cpu").tokenizer is not None
    with pytest.raises(ValueError, match=r"texts tokenize to \[2, 3\] tokens"):
        probe(suite, probes, ["t1 t2", "t1 t2 t3"], device="cpu")

    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer_config.json").unlink()
    assert open_suite(folder).tokenizer is None
    save_tokenizer(folder / "step512")  # a tokenizer in a step folder serves the suite too
    assert open_suite(folder).tokenizer("t3 t4")["input_ids"] == [3, 4]


def test_text_needs_a_tokenizer_and_a_suite_without_one_stays_tokenizer_less(built, tmp_path):
    suite = open_suite(built["gpt2"].folder, steps=[0], cache=tmp_path / "cache")
    assert suite.tokenizer is None
    assert suite.load(0, device="cpu").tokenizer is None  # none made up from the config
    with pytest.raises(ValueError, match="batch: text needs a tokenizer"):
        probe(suite, {"ind": heads.induction_probe([1], PERIOD)}, "t1 t2 t3", device="cpu")


# --- offline, and errors that name their cause -----------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Any connection or hub download fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for module in (huggingface_hub, huggingface_hub.file_download, transformers.utils.hub):
        for name in ("hf_hub_download", "snapshot_download", "get_hf_file_metadata"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)


def test_a_folder_is_read_without_any_download(built, tmp_path, no_network):
    folder = private_copy(built["gpt2"], tmp_path)
    save_tokenizer(folder)
    suite = open_suite(folder, steps=[0, 10])
    assert suite.model_config.architecture == "GPT2LMHeadModel" and suite.tokenizer is not None
    table = probe(suite, {"ind": heads.induction_probe([1], PERIOD)}, {"tokens": TOKENS}, device="cpu")
    assert np.isfinite(table.values).all()


def test_a_missing_revision_is_named(built, tmp_path):
    folder = built["gpt_neox"].folder
    with pytest.raises(SuiteError, match=r"no checkpoint at step 7 \(no sub-folder .*step7\); available steps: "
                                         r"\[0, 2, 10, 64, 512\]"):
        open_suite(folder, steps=[0, 7])
    with pytest.raises(SuiteError, match="no checkpoint at step 7"):
        open_suite(folder, revisions=["step7"])
    with pytest.raises(SuiteError, match="revisions: expected Pythia-style names step<N>.*'main'"):
        open_suite(folder, revisions=["main"])
    with pytest.raises(SuiteError, match="no checkpoint at step 7; available steps"):
        open_suite(folder).load(7)
    with pytest.raises(SuiteError, match="no such folder"):
        open_suite(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SuiteError, match="holds no step<N> or checkpoint-<N> sub-folders"):
        open_suite(tmp_path / "empty")
    with pytest.raises(KeyError, match=r"steps \[7\] have no checkpoint in CheckpointSuite"):
        probe(open_suite(folder, cache=tmp_path / "cache"), head_probes(), {"tokens": TOKENS}, steps=[7])


def test_a_folder_of_mixed_architectures_is_named(built, tmp_path):
    folder = private_copy(built["gpt_neox"], tmp_path)
    shutil.rmtree(folder / "step64")
    shutil.copytree(built["gpt2"].folder / "step64", folder / "step64")
    with pytest.raises(SuiteError) as info:
        open_suite(folder)
    message = str(info.value)
    assert str(folder / "step64" / "config.json") in message and "architectures" in message
    assert "GPT2LMHeadModel" in message and "GPTNeoXForCausalLM" in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("damage", ["truncated", "overwritten", "missing"])
def test_a_corrupt_weight_file_is_named(built, tmp_path, damage):
    folder = private_copy(built["gpt_neox"], tmp_path)
    weights = folder / "step10" / "model.safetensors"
    if damage == "missing":
        weights.unlink()
        with pytest.raises(SuiteError, match=f"{folder / 'step10'} holds no weights"):
            open_suite(folder)
        return
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x07" * len(data))
    suite = open_suite(folder, cache=tmp_path / "cache")  # lazy: damage shows when the checkpoint loads
    with pytest.raises(SuiteError, match=f"{weights} is not a readable safetensors file"):
        suite.load(10, device="cpu")
    if damage == "truncated":
        with pytest.raises(SuiteError, match=f"{weights} is not a readable safetensors file"):
            probe(suite, head_probes(), {"tokens": TOKENS}, device="cpu")
        rows = (suite.path / PROBES_DIR / "ind.jsonl").read_text().splitlines()
        assert [loads_json(r)["step"] for r in rows] == [0, 2]  # the steps before it are kept


# --- the command line and the docs ---------------------------------------------------------


def test_cli_describes_a_suite_folder_and_names_a_damaged_checkpoint(built, tmp_path, capsys):
    folder = private_copy(built["gpt_neox"], tmp_path)
    assert main(["info", str(folder), "--verify"]) == 0
    out = capsys.readouterr().out
    assert f"suite {folder}: GPTNeoXForCausalLM, 2 layers" in out and "checkpoints: 5 (0 .. 512)" in out
    assert "verify: OK" in out

    damaged = folder / "step64" / "model.safetensors"
    damaged.write_bytes(b"\x07" * 64)
    assert main(["probe", str(folder), "prev-token", "--steps", "64", "--device", "cpu"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("interp probe: error: ") and str(damaged) in errors[0]
    assert main(["info", str(folder), "--verify"]) == 1
    assert f"- {damaged} is not a readable safetensors file" in capsys.readouterr().out


def test_cli_traces_a_circuit_over_a_suite(built, tmp_path, capsys):
    folder = private_copy(built["gpt_neox"], tmp_path)
    assert main(["circuit", str(folder), "--method", "path", "--period", "4", "--sequences", "4"]) == 0
    assert "wrote 5 graphs" in capsys.readouterr().out
    assert len(list(folder.glob("interp-cache/*/circuits/path/*/step_*.json"))) == 5  # one graph set


@pytest.mark.slow
def test_the_offline_example_of_the_docs_runs(tmp_path, monkeypatch, capsys, no_network):
    """docs/suites.md, "Offline": its Python builds and probes a suite, its commands probe and plot it."""
    page = (Path(__file__).parents[1] / "docs" / "suites.md").read_text()
    section = page.split("## Offline", 1)[1].split("\n## ", 1)[0]
    python, commands = re.findall(r"```(?:python)?\n(.*?)```", section, flags=re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(python, "docs/suites.md", "exec"), {})  # noqa: S102 - our own documentation
    assert "[0, 10, 100, 1000, 2000]" in capsys.readouterr().out
    for line in commands.strip().splitlines():
        argv = shlex.split(line.split("#")[0])
        assert argv[0] == "interp" and main(argv[1:]) == 0, line
    out = capsys.readouterr().out.splitlines()
    table = out[out.index(next(line for line in out if line.startswith("step"))) + 1:][:5]
    assert [line.split()[0] for line in table] == ["0", "10", "100", "1000", "2000"]
    suite = open_suite(tmp_path / "suite")
    assert (suite.path / "figures" / "probe_induction.png").exists()
    assert suite.path.parent == tmp_path / "suite" / "interp-cache"


# --- a checkpoint's own Python code is never run ---------------------------------------------------


def with_remote_code(suite: BuiltSuite, tmp_path: Path, field_in: str) -> tuple[Path, Path]:
    """A copy of `suite` that asks for its own code: `auto_map` in each step's config.json (with a
    model_type transformers does not know) or in the folder's tokenizer_config.json. Its config,
    model and tokenizer .py files each write a marker file when run: (folder, marker folder)."""
    folder, markers = private_copy(suite, tmp_path), tmp_path / "markers"
    markers.mkdir()
    for code_folder in [folder, *folder.glob("step*")]:
        for module, base in (("configuration_own", "GPT2Config"), ("modeling_own", "GPT2LMHeadModel"),
                             ("tokenization_own", "PreTrainedTokenizerFast")):
            (code_folder / f"{module}.py").write_text(
                f"open({str(markers / module)!r}, 'w').close()\nfrom transformers import {base}\n"
                f"class Own({base}):\n    pass\n")
    for step_folder in folder.glob("step*"):
        if field_in == "config.json":
            config = json.loads((step_folder / "config.json").read_text())
            config.update(model_type="owngpt", auto_map={"AutoConfig": "configuration_own.Own",
                                                         "AutoModelForCausalLM": "modeling_own.Own"})
            (step_folder / "config.json").write_text(json.dumps(config))
    if field_in == "tokenizer_config.json":
        save_tokenizer(folder)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config.update(tokenizer_class="Own", auto_map={"AutoTokenizer": [None, "tokenization_own.Own"]})
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder, markers


@pytest.mark.parametrize("field_in", ["config.json", "tokenizer_config.json"])
@pytest.mark.parametrize("command", [["info"], ["probe", "induction", "--device", "cpu"]])
def test_a_folder_asking_to_run_its_own_code_is_refused_unprompted_even_if_answered_yes(built, tmp_path, field_in,
                                                                                       command):
    """Before: transformers asked "[y/N]" for 15 seconds, and with `yes y |` the folder's config,
    model and tokenizer .py files all ran."""
    folder, markers = with_remote_code(built["gpt2"], tmp_path, field_in)
    argv = shlex.join([sys.executable, "-m", "interp.cli", command[0], str(folder), *command[1:]])
    done = subprocess.run(f"yes y | {argv}", shell=True, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    asking = folder / "step0" / "config.json" if field_in == "config.json" else folder / "tokenizer_config.json"
    assert lines == [f"interp {command[0]}: error: {asking}: auto_map asks to run Python code shipped with the "
                     "checkpoint; interp never runs a checkpoint's own code (remove auto_map if transformers "
                     "implements the model)"]
    assert list(markers.iterdir()) == []


def test_a_hub_config_asking_for_remote_code_is_refused_once_downloaded_before_anything_is_built(
        built, tmp_path, monkeypatch, no_network):
    """A hub id cannot be checked before its config is downloaded: the downloaded config.json
    (here from a patched download) is read as data and refused before a config or model is built."""
    config = json.loads((built["gpt_neox"].folder / "step0" / "config.json").read_text())
    config.update(model_type="owngpt", auto_map={"AutoConfig": "configuration_own.Own",
                                                 "AutoModelForCausalLM": "modeling_own.Own"})
    real_get_config_dict = transformers.PretrainedConfig.get_config_dict.__func__
    downloaded = []

    def download(cls, location, **kwargs):
        if location != "someone/own-model":
            return real_get_config_dict(cls, location, **kwargs)
        downloaded.append(kwargs["revision"])
        return dict(config), {}

    built_from = []
    monkeypatch.setattr(transformers.PretrainedConfig, "get_config_dict", classmethod(download))
    monkeypatch.setattr(suites, "_from_pretrained", lambda *args, **kwargs: built_from.append(args))
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *args, **kwargs: built_from.append(args))
    modules_before = set(sys.modules)
    suite = open_suite("someone/own-model", steps=[0, 512], cache=tmp_path / "cache")
    refusal = ("someone/own-model@step0 config.json: auto_map asks to run Python code shipped with the checkpoint; "
               "interp never runs a checkpoint's own code (remove auto_map if transformers implements the model)")
    for use in (lambda: suite.config, lambda: suite.model_config, lambda: suite.load(0, device="cpu"),
                lambda: probe(suite, {"ind": heads.induction_probe([1], PERIOD)}, {"tokens": TOKENS}, device="cpu")):
        with pytest.raises(SuiteError) as info:
            use()
        assert str(info.value) == refusal
    with pytest.raises(SuiteError, match="someone/own-model@step512 config.json: auto_map asks"):
        suite.load(512, device="cpu")
    assert set(downloaded) == {"step0", "step512"} and built_from == []
    assert not [m for m in set(sys.modules) - modules_before if "own" in m or m.startswith("transformers_modules")]


def test_every_transformers_load_refuses_remote_code_without_asking(built, tmp_path, monkeypatch):
    """Past the refusal (bypassed here), each load passes trust_remote_code=False: transformers
    refuses the folder's code instead of prompting for it."""
    folder, markers = with_remote_code(built["gpt2"], tmp_path, "config.json")
    (folder / "step0" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "Own", "auto_map": {"AutoTokenizer": [None, "tokenization_own.Own"]}}))
    monkeypatch.setattr(suites, "_refuse_remote_code", lambda folders: None)
    passed: list[tuple[str, object]] = []
    for auto in (AutoConfig, AutoModelForCausalLM, AutoTokenizer):
        real = auto.from_pretrained

        def spy(*args, _real=real, _name=auto.__name__, **kwargs):
            passed.append((_name, kwargs.get("trust_remote_code")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", spy)
    suite = open_suite(folder, cache=tmp_path / "cache")
    for load in (lambda: suite.config, lambda: suite.load(0, device="cpu"), lambda: suite.tokenizer):
        with pytest.raises(SuiteError, match="custom code|does not exist|not load"):
            load()
    assert {name for name, _ in passed} == {"AutoConfig", "AutoModelForCausalLM", "AutoTokenizer"}
    assert all(value is False for _, value in passed), passed
    assert list(markers.iterdir()) == []
