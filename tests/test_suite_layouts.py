"""How checkpoint suites are found, opened, verified and cached (`interp.suites`), offline.

Suites are built here with `transformers`: a tiny random GPT-NeoX saved per step, and a real
`transformers.Trainer` run writing `checkpoint-<N>` folders.
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import time
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
import transformers
import transformers.utils.hub
from helpers import Loads
from transformers import AutoModelForCausalLM, GPTNeoXConfig

from interp import suite_cache, suites
from interp.batches import repeated_tokens
from interp.checkpoints import Run, open_checkpoints
from interp.cli import main
from interp.errors import InputError
from interp.metrics import heads
from interp.probing import probe
from interp.run_layout import PROBES_DIR
from interp.suites import SuiteError, open_suite

D_VOCAB = 64
PERIOD = 6
TOKENS = repeated_tokens(3, PERIOD, D_VOCAB, torch.Generator().manual_seed(7), repeats=3)


def tiny_config() -> GPTNeoXConfig:
    return GPTNeoXConfig(vocab_size=D_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=32)


def save_steps(folder: Path, steps: list[int], name: str = "step{}", seed: int = 0) -> dict[int, torch.Tensor]:
    """`folder/<name>` per step, the weights moved by a seeded amount per step; each step's logits on TOKENS."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(), attn_implementation="eager").eval()
    logits = {}
    for step in steps:
        with torch.no_grad():
            for i, p in enumerate(model.parameters()):
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(step * 100 + i)))
            logits[step] = model(TOKENS).logits
        model.save_pretrained(folder / name.format(step))
    return logits


def ind_probe() -> dict:
    return {"ind": heads.induction_probe([1], PERIOD)}


@pytest.fixture
def no_network(monkeypatch):
    """Any connection or hub lookup fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access: {args[:2]}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for module in (huggingface_hub, huggingface_hub.file_download, transformers.utils.hub):
        for name in ("hf_hub_download", "snapshot_download", "get_hf_file_metadata", "model_info"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(suites, "_hub_config_dict", refuse)
    monkeypatch.setattr(suites, "_from_pretrained", refuse)


# --- layouts ---------------------------------------------------------------------------------


def test_a_trainer_output_dir_opens_probes_and_gives_the_logged_losses(tmp_path, monkeypatch):
    """`transformers.Trainer(output_dir=...)` writes checkpoint-<N> folders with its optimizer,
    scheduler, RNG state and arguments as pickles beside the weights: those are never loaded."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config())
    rows = torch.randint(0, D_VOCAB, (16, 12), generator=torch.Generator().manual_seed(1))
    data = [{"input_ids": r, "labels": r} for r in rows]
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=6, save_steps=2,
                                          logging_steps=1, per_device_train_batch_size=4, report_to=[],
                                          use_cpu=True, learning_rate=1e-2, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    folder = tmp_path / "out"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert (folder / "checkpoint-6" / "optimizer.pt").is_file()

    pickles = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: pickles.append(f) or real_load(f, *a, **k))
    suite = open_suite(str(folder))
    assert suite.steps == [2, 4, 6] and suite.revision(4) == "checkpoint-4"
    table = probe(str(folder), ind_probe(), {"tokens": TOKENS}, device="cpu")
    assert table.steps.tolist() == [2, 4, 6] and np.isfinite(table.values).all()
    assert pickles == []  # optimizer.pt, rng_state.pth, training_args.bin: never unpickled

    logged = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 6
    metrics = suite.metrics()
    assert [r["step"] for r in metrics] == [step for step, _ in logged]
    assert [r["train/loss"] for r in metrics] == pytest.approx([loss for _, loss in logged])
    assert all("lr" in r for r in metrics)

    assert main(["info", str(folder), "--verify"]) == 0  # the Trainer's own pickles are not weights to check
    assert main(["plot", str(folder)]) == 0
    assert (suite.path / "figures" / "metrics_train.png").is_file()


def test_a_folder_naming_checkpoints_both_ways_is_refused(tmp_path):
    save_steps(tmp_path / "suite", [0, 10])
    save_steps(tmp_path / "suite", [20], name="checkpoint-{}")
    with pytest.raises(SuiteError) as info:
        open_suite(tmp_path / "suite")
    message = str(info.value)
    assert "names checkpoints two ways" in message and "checkpoint-20" in message and "step0" in message
    assert len(message.splitlines()) == 1


def test_folders_given_by_step_open_as_one_suite(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    logits = save_steps(tmp_path / "runs", [3, 7])
    shutil.move(tmp_path / "runs" / "step7", tmp_path / "final")
    suite = open_suite(folders={500: tmp_path / "final", 0: str(tmp_path / "runs" / "step3")})
    assert suite.steps == [0, 500] and suite.revision(500) == str(tmp_path / "final")
    for step, saved in ((0, 3), (500, 7)):
        with torch.no_grad():
            torch.testing.assert_close(suite.load(step, device="cpu")(TOKENS), logits[saved], atol=1e-4, rtol=0)
    probe(suite, ind_probe(), {"tokens": TOKENS}, device="cpu")
    assert suite.path.parent == suite_cache.default_cache()  # no one folder to keep its cache in

    with pytest.raises(SuiteError, match=r"folders: .*nowhere \(step 9\): no such folder"):
        open_suite(folders={9: tmp_path / "nowhere"})
    with pytest.raises(SuiteError, match=r"folders: expected integers >= 0, got \[-1\]"):
        open_suite(folders={-1: tmp_path / "final"})
    with pytest.raises(SuiteError, match="folders: give the folders by step alone"):
        open_suite(tmp_path / "runs", folders={0: tmp_path / "final"})


# --- local or hub ----------------------------------------------------------------------------


def test_a_path_that_does_not_exist_is_no_such_folder_at_once(tmp_path, monkeypatch, capsys, no_network):
    """Before: `a/b` went to the hub, 23 s of DNS retries, then "couldn't connect"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    start = time.perf_counter()
    for name in ["runs/suitee", "./a/b", "a/b/c", str(tmp_path / "a" / "b"), "~/no-such-interp-folder/x", "suite"]:
        with pytest.raises(SuiteError, match="no such folder"):
            open_suite(name, steps=[0])
    # `a/b` with no local `a` may be a hub model id: it needs steps, asked for before anything else
    with pytest.raises(SuiteError, match="a/b is no local folder, and as a hub model .* needs steps="):
        open_suite("a/b")
    assert open_suite("a/b", steps=[0]).folder is None  # a hub suite: lazy, nothing fetched yet
    assert time.perf_counter() - start < 2
    with pytest.raises(SuiteError, match="hub: expected a hub model id owner/name, got 'a/b/c'"):
        open_suite("a/b/c", hub=True)
    assert main(["info", "hf:someone/model"]) == 2  # the command line asks for the hub by a prefix
    assert "error: steps: someone/model is a hub model other than Pythia" in capsys.readouterr().err
    save_steps(tmp_path / "runs" / "suite", [0])
    assert open_suite("runs/suite").folder == Path("runs/suite")
    assert open_suite("runs/suite", hub=True, steps=[0]).folder is None  # asked for: the hub, even where a folder is


# --- caches keyed by content -----------------------------------------------------------------


def test_a_copied_or_moved_suite_reprobes_with_zero_loads(tmp_path, monkeypatch):
    save_steps(tmp_path / "suite", [0, 10, 100])
    loads = Loads(monkeypatch)
    first = probe(open_suite(tmp_path / "suite"), ind_probe(), {"tokens": TOKENS}, device="cpu")
    assert loads.count == 3
    shutil.copytree(tmp_path / "suite", tmp_path / "elsewhere" / "copy")
    copied = open_suite(tmp_path / "elsewhere" / "copy")
    again = probe(copied, ind_probe(), {"tokens": TOKENS}, device="cpu")
    assert loads.count == 3  # hashed (its inodes are new), not loaded
    np.testing.assert_array_equal(again.values, first.values)
    assert copied.path.parent == tmp_path / "elsewhere" / "copy" / suite_cache.DEFAULT_CACHE  # the cache moved with it

    hashed = []
    real_sha256 = suite_cache.sha256_file
    monkeypatch.setattr(suite_cache, "sha256_file", lambda path: hashed.append(path) or real_sha256(path))
    (tmp_path / "suite").rename(tmp_path / "moved")
    probe(open_suite(tmp_path / "moved"), ind_probe(), {"tokens": TOKENS}, device="cpu")
    assert loads.count == 3 and hashed == []  # moved on its file system: the same inodes, nothing hashed


def test_a_shared_cache_root_finds_each_suite_by_content(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    save_steps(tmp_path / "a", [0, 10, 100])
    save_steps(tmp_path / "b", [0, 10, 100], seed=1)  # another model: another cache folder
    shutil.copytree(tmp_path / "a" / "step0", tmp_path / "a-init-only" / "step0")
    save_steps(tmp_path / "a-init-only", [10, 100], seed=2)  # shares a's first checkpoint only
    loads = Loads(monkeypatch)
    suite_a = open_suite(tmp_path / "a", cache=root)
    probe(suite_a, ind_probe(), {"tokens": TOKENS}, device="cpu")
    probe(open_suite(tmp_path / "b", cache=root), ind_probe(), {"tokens": TOKENS}, device="cpu")
    shared_init = open_suite(tmp_path / "a-init-only", cache=root)
    assert len({suite_a.path, open_suite(tmp_path / "b", cache=root).path, shared_init.path}) == 3
    assert loads.count == 6

    shutil.copytree(tmp_path / "a", tmp_path / "copy-of-a")
    copied = open_suite(tmp_path / "copy-of-a", cache=root)
    assert copied.path == suite_a.path
    probe(copied, ind_probe(), {"tokens": TOKENS}, device="cpu")
    probe(open_suite(tmp_path / "copy-of-a", cache=root, steps=[10]), ind_probe(), {"tokens": TOKENS}, device="cpu")
    assert loads.count == 6

    assert main(["probe", str(tmp_path / "copy-of-a"), "induction", "--layers", "1", "--period", str(PERIOD),
                 "--sequences", "2", "--device", "cpu", "--cache", str(root)]) == 0
    assert loads.count == 9 and not (tmp_path / "copy-of-a" / suite_cache.DEFAULT_CACHE).exists()
    assert len(list((suite_a.path / PROBES_DIR).glob("*.jsonl"))) == 2  # the CLI's batch beside the first


# --- runs and suites alike -------------------------------------------------------------------


def test_probe_takes_a_suite_folder_path_as_it_takes_a_run_directory(tmp_path):
    logits = save_steps(tmp_path / "suite", [0, 10])
    table = probe(str(tmp_path / "suite"), ind_probe(), {"tokens": TOKENS}, device="cpu")
    assert table.steps.tolist() == [0, 10]
    attentions = AutoModelForCausalLM.from_pretrained(tmp_path / "suite" / "step10", attn_implementation="eager")(
        TOKENS, output_attentions=True).attentions
    assert table["ind/L1H0"][1] == pytest.approx(float(heads.induction_score(attentions[1], PERIOD)[0]), abs=1e-5)
    assert len(logits) == 2

    assert isinstance(open_checkpoints(tmp_path / "suite"), suites.CheckpointSuite)
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="plain: neither a run directory .* nor a checkpoint suite"):
        probe(str(tmp_path / "plain"), ind_probe(), {"tokens": TOKENS})
    with pytest.raises(FileNotFoundError, match="nothing: no such folder"):
        open_checkpoints(tmp_path / "nothing")
    run = Run.create(tmp_path / "run", {"model": {}})
    assert isinstance(open_checkpoints(run.path), Run)
    with pytest.raises(InputError, match="cache: .* is a run directory"):
        open_checkpoints(run.path, cache=tmp_path / "cache")


# --- verify ----------------------------------------------------------------------------------


class Evil:
    """A pickle that would run a command when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def bin_suite(folder: Path) -> Path:
    """A suite whose checkpoints are pytorch_model.bin files (as older transformers saved them)."""
    save_steps(folder, [0, 10, 20])
    for step in (0, 10, 20):
        step_dir = folder / f"step{step}"
        model = AutoModelForCausalLM.from_pretrained(step_dir)
        torch.save(model.state_dict(), step_dir / "pytorch_model.bin")
        (step_dir / "model.safetensors").unlink()
    return folder


def test_verify_checks_bin_weights_and_refuses_a_malicious_pickle_without_running_it(tmp_path, capsys):
    folder = bin_suite(tmp_path / "suite")
    assert main(["info", str(folder), "--verify"]) == 0
    assert "verify: OK" in capsys.readouterr().out
    assert np.isfinite(probe(folder, ind_probe(), {"tokens": TOKENS}, device="cpu").values).all()  # and they load

    truncated = folder / "step0" / "pytorch_model.bin"
    truncated.write_bytes(truncated.read_bytes()[:2000])
    marker = tmp_path / "ran"
    zipped, raw = folder / "step10" / "pytorch_model.bin", folder / "step20" / "pytorch_model.bin"
    torch.save({"w": Evil(marker)}, zipped)  # torch.save's zip archive
    raw.write_bytes(pickle.dumps({"w": Evil(marker)}))  # a bare pickle, as before torch 1.6
    (folder / "step20" / "tf_model.h5").write_bytes(b"\x89HDF")
    assert main(["info", str(folder), "--verify"]) == 1
    out = capsys.readouterr().out
    assert not marker.exists()
    assert f"- {truncated} is truncated or damaged" in out
    assert f"- {zipped}: refused to unpickle (Trying to load unsupported GLOBAL posix.system" in out
    assert f"- {raw}: refused to unpickle (" in out
    assert f"note: not checked, in a weight format not loaded here: {folder / 'step20' / 'tf_model.h5'}" in out


def test_verify_names_a_missing_shard_of_a_sharded_checkpoint(tmp_path, capsys):
    save_steps(tmp_path / "suite", [0])
    step = tmp_path / "suite" / "step0"
    AutoModelForCausalLM.from_pretrained(step).save_pretrained(step, max_shard_size="20KB")
    shards = sorted(step.glob("model-*.safetensors"))
    assert len(shards) > 1 and (step / "model.safetensors.index.json").is_file()
    assert main(["info", str(tmp_path / "suite"), "--verify"]) == 0
    shards[-1].unlink()
    assert main(["info", str(tmp_path / "suite"), "--verify"]) == 1
    assert f"model.safetensors.index.json names shards that are missing: {shards[-1].name}" in capsys.readouterr().out
