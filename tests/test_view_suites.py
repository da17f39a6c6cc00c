"""`interp view` of a checkpoint suite (a folder of `step<N>` sub-folders saved by `transformers`):
the page's data against the `transformers` model's own numbers, its loss curve and the batch it
names, `plot`/`info` of that curve, the refusals and hints around suite folders, and the page in
a real headless Chromium. Fully offline: a tiny random GPT-NeoX saved at three steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_suites import save_tokenizer
from test_view import _console_errors, _open, _settle, browser  # noqa: F401 - `browser` is a fixture
from transformers import AutoModelForCausalLM, GPTNeoXConfig

from interp import suites
from interp.cli import main
from interp.metrics.loss_curve import (
    BATCH_FILE,
    LOSS_KEY,
    cached_loss_curve,
    repeated_loss_batch,
)
from interp.suites import CheckpointSuite, SuiteError
from interp.view import VIEW_DIR, ViewError, open_source, view_data, write_view
from interp.view.examples import LossInput
from interp.view.patterns import (
    MAX_PATTERN_STEPS,
    PATTERN_BUDGET,
    example_for,
    example_patterns,
    pattern_bytes,
    pattern_steps,
)

STEPS = [0, 10, 20]
D_VOCAB = 64
N_CTX = 32


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _build(folder: Path) -> dict[int, torch.nn.Module]:
    """Random weights, moved by a seeded amount at each step; the `transformers` models by step."""
    config = GPTNeoXConfig(vocab_size=D_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=N_CTX)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    models = {}
    for step in STEPS:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        model.save_pretrained(folder / f"step{step}")
        models[step] = AutoModelForCausalLM.from_pretrained(folder / f"step{step}", attn_implementation="eager").eval()
    return models


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict[int, torch.nn.Module]]:
    folder = tmp_path_factory.mktemp("suites") / "tiny-neox"
    return folder, _build(folder)


@pytest.fixture(scope="module")
def viewed(built, tmp_path_factory) -> Path:
    """A private copy of the suite with its page written (module-wide: the browser tests read it)."""
    folder = tmp_path_factory.mktemp("viewed") / "tiny-neox"
    shutil.copytree(built[0], folder)
    write_view(folder, device="cpu")
    return folder


def _page_data(folder: Path) -> dict:
    html = (folder / VIEW_DIR / "index.html").read_text()
    return json.loads(html.split('<script type="application/json" id="view-data">', 1)[1].split("</script>", 1)[0])


def test_open_source_gives_the_suite_as_the_pages_one_run(built):
    source = open_source(built[0])
    assert source.kind == "suite" and list(source.runs) == ["tiny-neox"]
    suite = source.runs["tiny-neox"]
    assert isinstance(suite, CheckpointSuite) and suite.steps == STEPS


def test_suite_page_shows_the_transformers_models_loss_and_patterns(viewed, built):
    data = _page_data(viewed)
    assert data["kind"] == "suite" and data["title"] == "checkpoint suite tiny-neox"
    run = data["runs"][0]
    assert run["steps"] == STEPS and run["status"] == "checkpoint suite: 3 checkpoints (steps 0 .. 20)"
    # the loss curve: the transformers model's cross-entropy on the default batch, at every checkpoint
    loss = run["probes"][LOSS_KEY]
    assert loss["columns"] == ["loss", "loss_in_repeat"] and loss["steps"] == STEPS
    batch = repeated_loss_batch(SimpleNamespace(n_ctx=N_CTX, d_vocab=D_VOCAB))
    tokens, in_repeat = batch.batch["tokens"], batch.batch["in_repeat"]
    assert tokens.shape == (16, 32) and batch.about.startswith("16 sequences of 16 random tokens repeated twice")
    for i, step in enumerate(STEPS):
        with torch.no_grad():
            logits = built[1][step](tokens).logits
        each = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(),
                                                 reduction="none").view(16, 31)
        assert loss["values"][i][0] == pytest.approx(float(each.mean()), rel=1e-4)
        assert loss["values"][i][1] == pytest.approx(float(each[in_repeat[:, :-1]].mean()), rel=1e-4)
    # the headline names the batch the curve is on
    headline = data["headline"]
    assert headline["figures"][0]["title"] == f"Loss on {batch.about}"
    assert batch.about in headline["caption"] and "batch " in headline["caption"]
    # the example's attention: the transformers model's own (output_attentions), float16
    example = run["example"]
    assert example["period"] == 16 and len(example["tokens"]) == 32
    suite = open_source(viewed).runs["tiny-neox"]
    stored = example_patterns(suite, example_for(suite))
    for i, step in enumerate(STEPS):
        with torch.no_grad():
            attentions = built[1][step](torch.tensor([example["tokens"]]), output_attentions=True).attentions
        for layer in range(2):
            np.testing.assert_allclose(stored[i, layer].astype(np.float32), attentions[layer][0].numpy(), atol=2e-3)
    assert run["patterns"]["steps"] == STEPS and run["circuits"][0]["key"] == "attention"
    assert run["strip"]["steps"] == STEPS  # token strips on the example


def test_a_second_view_loads_no_checkpoint_and_shows_the_same(viewed, monkeypatch):
    before = view_data(viewed, device="cpu")

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was loaded again")

    monkeypatch.setattr(suites, "_from_pretrained", refuse)
    after = view_data(viewed, device="cpu")
    assert {**before, "generated": ""} == {**after, "generated": ""}


def test_plot_and_info_show_the_cached_loss_curve_and_its_batch(viewed, capsys):
    suite = open_source(viewed).runs["tiny-neox"]
    curve = cached_loss_curve(suite)
    about = repeated_loss_batch(suite.model_config).about
    assert curve is not None and curve.steps == STEPS and curve.about == about
    stored = list((suite.path / "probes" / LOSS_KEY).glob(f"*/{BATCH_FILE}"))
    assert [json.loads(p.read_text()) for p in stored] == [{"about": about}]
    assert main(["plot", str(viewed)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {suite.path / 'figures' / 'loss.png'}: loss at each checkpoint on {about}" in out
    assert (suite.path / "figures" / "loss.png").stat().st_size > 0
    assert main(["info", str(viewed)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("  loss: "))
    assert "at step 0 -> " in line and about in line


def test_the_loss_batch_can_be_text_of_the_suites_tokenizer(built, tmp_path, capsys):
    folder = tmp_path / "tiny-neox"
    shutil.copytree(built[0], folder)
    save_tokenizer(folder)  # word-level: `t<i>` is token i
    text = " ".join(f"t{i}" for i in [5, 9, 2, 7, 5, 9, 2, 7])
    data = view_data(folder, device="cpu", loss=LossInput(texts=(text,)))
    loss = data["runs"][0]["probes"][LOSS_KEY]
    assert loss["columns"] == ["loss"] and data["headline"]["figures"][0]["title"] == \
        f"Loss on 1 text of 8 tokens ({text!r})"
    tokens = torch.tensor([[5, 9, 2, 7, 5, 9, 2, 7]])
    with torch.no_grad():
        logits = built[1][20](tokens).logits
    expected = torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:])
    assert loss["values"][-1][0] == pytest.approx(float(expected), rel=1e-4)
    assert data["runs"][0]["example"]["labels"][0].startswith("t")  # token labels from the tokenizer
    # a suite without a tokenizer refuses text in one line, naming the flag
    assert main(["view", str(built[0]), "--loss-text", "hello world"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("interp view: error: --loss-text: text needs a tokenizer")


def test_a_step_folder_is_named_as_a_checkpoint_of_its_suite(built, tmp_path, capsys):
    step = built[0] / "step10"
    with pytest.raises(ViewError) as info:
        open_source(step)
    assert str(info.value) == (f"{step} is one checkpoint of the checkpoint suite {built[0]} (a save_pretrained "
                               f"folder, not a run directory): view the whole suite, `interp view {built[0]}`")
    assert main(["view", str(step)]) == 2
    err = capsys.readouterr().err
    assert "manifest.json" not in err and f"interp view {built[0]}" in err
    assert not (step / VIEW_DIR).exists()
    # a folder that holds suites: the hint names the suite, not its step folders
    (parent := tmp_path / "suites").mkdir()
    shutil.copytree(built[0], parent / "tiny-neox", ignore=shutil.ignore_patterns("interp-cache", VIEW_DIR))
    with pytest.raises(ViewError, match=f"view one of the directories below it: {parent / 'tiny-neox'}$"):
        open_source(parent)


def test_step_folders_without_weights_are_refused_in_one_line(built, tmp_path, capsys):
    folder = tmp_path / "configs-only"
    for step in STEPS:
        (folder / f"step{step}").mkdir(parents=True)
        shutil.copy(built[0] / f"step{step}" / "config.json", folder / f"step{step}" / "config.json")
    before = sorted(folder.rglob("*"))
    with pytest.raises(SuiteError, match=r"step0 holds no weights \(expected model.safetensors"):
        write_view(folder, device="cpu")
    assert main(["view", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no weights" in err[0] and "manifest" not in err[0]
    assert sorted(folder.rglob("*")) == before  # nothing written


def test_a_pythia_sized_suite_gets_a_page_within_the_budgets():
    """n_ctx 2048, a 50k vocabulary, 6 x 8 heads, 154 checkpoints: the default loss batch keeps one
    forward's float32 logits within 128 MiB, and the page's patterns within 6 MiB."""
    cfg = SimpleNamespace(n_layers=6, n_heads=8, d_model=512, d_vocab=50304, n_ctx=2048, d_input=0)
    batch = repeated_loss_batch(cfg)
    n, length = batch.batch["tokens"].shape
    assert (n, length) == (5, 128) and n * length * cfg.d_vocab * 4 <= 128 * 2**20
    source = SimpleNamespace(model_config=cfg, steps=list(range(154)), path=Path("/nonexistent"),
                             tokenizer=None)
    example = example_for(source)
    steps = pattern_steps(source, example)
    assert len(example.tokens) == 64 and 2 <= len(steps) == 31 < MAX_PATTERN_STEPS
    assert steps[0] == 0 and steps[-1] == 153
    assert pattern_bytes(source, example) <= PATTERN_BUDGET


def test_suite_page_in_headless_chromium_loss_curve_and_pattern(viewed, browser):  # noqa: F811 - the fixture
    from selenium.webdriver.common.by import By

    _open(browser, viewed / VIEW_DIR / "index.html")
    _settle(browser)
    names = browser.execute_script("return document.getElementById('headline-0').data.map((t) => t.name)")
    assert names == ["loss", "loss_in_repeat"]
    title = browser.execute_script("return document.getElementById('headline-0').layout.title.text")
    assert "random tokens repeated twice" in title
    browser.find_element(By.CSS_SELECTOR, 'nav button[data-tab="heads"]').click()
    _settle(browser)
    pattern = browser.execute_script("return document.getElementById('heads-attn-a').data[0].z")
    assert len(pattern) == 32 and len(pattern[0]) == 32
    errors = _console_errors(browser) + browser.execute_script("return window.interpView.errors")
    assert errors == [], f"browser console errors: {errors}"
