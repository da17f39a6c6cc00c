"""Your own inputs in the explorer: per-position readouts with known answers (the model's own
loss, prediction and logits), their cache, one-line refusals of bad `--text`/`--tokens`/
`--example-batch`, and the Tokens tab in headless Chromium."""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_view import _console_errors, _open, _settle, browser  # noqa: F401 - `browser` is a fixture

from interp.checkpoints import Run
from interp.circuits import readout
from interp.circuits.readout import position_readout
from interp.cli import main
from interp.errors import InputError
from interp.model import ModelConfig, build_model, forward, model_state_dict, token_losses
from interp.view import VIEW_DIR, view_data
from interp.view import examples as examples_module
from interp.view.checkpoint_cache import pattern_problems
from interp.view.examples import ExampleInput, parse_tokens, read_example_batch, resolve_examples, token_readouts
from interp.view.page import INDEX

VARIANTS = [
    ModelConfig(n_layers=2, d_model=16, n_heads=2, attn_only=True, d_vocab=20, n_ctx=10, seed=3),
    ModelConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=20, n_ctx=10, seed=4),
    ModelConfig(n_layers=3, d_model=16, n_heads=2, d_vocab=20, n_ctx=10, normalization="RMS", seed=5),
]


@pytest.mark.parametrize("cfg", VARIANTS, ids=["attn-only", "mlp", "rms-3-layers"])
def test_position_readout_is_the_models_own_loss_prediction_and_logit(cfg):
    model = build_model(cfg, device="cpu").eval()
    tokens = torch.randint(0, cfg.d_vocab, (1, cfg.n_ctx), generator=torch.Generator().manual_seed(0))
    batch = {"tokens": tokens}
    out = position_readout(model, batch, top_k=5)
    with torch.no_grad():
        logits = forward(model, batch)[0]  # the fused path: computed independently of the readout's bridge pass
    expected = token_losses(logits[None], batch)[0]
    assert torch.allclose(out.losses[0], expected, atol=1e-5)
    probs = logits.softmax(-1)
    top = probs.topk(5, dim=-1)
    assert torch.equal(out.top_ids[0], top.indices) and torch.allclose(out.top_probs[0], top.values, atol=1e-6)
    # The logit lens of the last entry is the model's own prediction.
    assert out.lens_labels[-1] == "final_post" and len(out.lens_labels) == cfg.n_layers + 1
    assert torch.equal(out.lens_top[-1, 0], logits.argmax(-1))
    targets = torch.cat([tokens[0, 1:], tokens[0, :1]])
    scored = slice(0, cfg.n_ctx - 1)
    assert torch.allclose(out.lens_probs[-1, 0, scored], probs[scored].gather(-1, targets[scored, None])[:, 0],
                          atol=1e-6)
    rank = (probs > probs.gather(-1, targets[:, None])).sum(-1)
    assert torch.equal(out.lens_ranks[-1, 0, scored], rank[scored])
    # DLA over heads, MLPs, embeddings and biases sums to the next token's logit minus the mean logit,
    # less the same difference of the unembedding bias (the identity `direct_logit_attributions` states).
    bias = model_state_dict(model)["unembed.bias"]
    centred = logits.gather(-1, targets[:, None])[:, 0] - logits.mean(-1) - (bias[targets] - bias.mean())
    assert torch.allclose(out.dla.sum(0)[0, scored], centred[scored], atol=1e-4)
    heads = [c for c in out.components if c.startswith("L")]
    assert len(heads) == cfg.n_layers * cfg.n_heads and out.components[-1] == "other"
    assert ("MLP0" in out.components) == (not cfg.attn_only)


def test_the_mean_dla_is_still_the_mean_of_the_per_position_dla():
    model = build_model(VARIANTS[1], device="cpu").eval()
    batch = {"tokens": torch.randint(0, 20, (2, 10), generator=torch.Generator().manual_seed(1))}
    means = readout.direct_logit_attributions(model, batch)
    out = position_readout(model, batch)
    for name, row in zip(out.components, out.dla, strict=True):
        assert means[name] == pytest.approx(float(row[:, :-1].mean()), abs=1e-5)
    assert means["total"] == pytest.approx(float(out.dla.sum(0)[:, :-1].mean()), abs=1e-5)


# --- inputs: checked before anything is computed ------------------------------------------------------


def test_inputs_are_parsed_and_checked_against_the_run(trained_run, tmp_path):
    run = Run(trained_run.path)
    cfg = run.model_config
    [example] = resolve_examples(run, [parse_tokens("3, 1,2")])
    assert example.tokens == (3, 1, 2) and example.labels == ("3", "1", "2") and "--tokens" in example.description
    cases = {
        f"0,{cfg.d_vocab}": f"--tokens: expected token ids in 0..{cfg.d_vocab - 1}",
        ",".join(["1"] * (cfg.n_ctx + 1)): f"--tokens: expected at most {cfg.n_ctx} tokens",
        "-1": f"--tokens: expected token ids in 0..{cfg.d_vocab - 1}",
    }
    for given, message in cases.items():
        with pytest.raises(InputError, match=message):
            resolve_examples(run, [parse_tokens(given)])
    for given in ("", "a,b", "1,,2"):
        with pytest.raises(InputError, match="--tokens: expected comma-separated token ids"):
            parse_tokens(given)
    with pytest.raises(InputError, match=r"--text: run \S+ has no tokenizer .*--tokens 3,17,5 or --example-batch"):
        resolve_examples(run, [ExampleInput("--text", text="hello world")])
    vocab_run = tmp_path / "words"
    shutil.copytree(trained_run.path, vocab_run)
    (vocab_run / "vocab.json").write_text(json.dumps([f"w{i}" for i in range(cfg.d_vocab)]))
    [worded] = resolve_examples(Run(vocab_run), [ExampleInput("--text", text="w3  w1 w2")])
    assert worded.tokens == (3, 1, 2) and worded.labels == ("w3", "w1", "w2")
    with pytest.raises(InputError, match="--text: expected words of the vocabulary of words .*'nope'"):
        resolve_examples(Run(vocab_run), [ExampleInput("--text", text="w1 nope")])


def test_example_batch_files(tmp_path):
    good = tmp_path / "batch.json"
    good.write_text(json.dumps({"tokens": [[1, 2, 3], [4, 5]]}))
    assert [e.tokens for e in read_example_batch(good)] == [(1, 2, 3), (4, 5)]
    tensors = tmp_path / "batch.safetensors"
    save_file({"tokens": torch.tensor([[1, 2], [3, 4]])}, str(tensors))
    assert [e.tokens for e in read_example_batch(tensors)] == [(1, 2), (3, 4)]
    bad = {"list.json": json.dumps([[1, 2]]), "floats.json": json.dumps({"tokens": [[1.5]]}),
           "nan.json": '{"tokens": [[NaN]]}', "none.json": json.dumps({"tokens": []})}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=f"--example-batch {tmp_path / name}: "):
            read_example_batch(tmp_path / name)
    save_file({"tokens": torch.zeros(2, 3)}, str(tmp_path / "float.safetensors"))
    with pytest.raises(InputError, match="expected an integer tensor 'tokens'"):
        read_example_batch(tmp_path / "float.safetensors")
    with pytest.raises(InputError, match="no such file"):
        read_example_batch(tmp_path / "missing.json")


@pytest.mark.parametrize("flags, message", [
    (["--tokens", "1,999999"], "--tokens: expected token ids in 0.."),
    (["--tokens", ""], "--tokens: expected comma-separated token ids"),
    (["--tokens", ",".join(["1"] * 300)], "--tokens: expected at most"),
    (["--text", "hello"], "--text: run run has no tokenizer"),
    (["--example-batch", "missing.json"], "--example-batch missing.json: no such file"),
])
def test_cli_refuses_bad_inputs_in_one_line_before_computing(trained_run, tmp_path, capsys, flags, message):
    run = tmp_path / "run"
    shutil.copytree(trained_run.path, run)
    assert main(["view", str(run), *flags]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0], err
    assert not (run / VIEW_DIR).exists() and not (run / "patterns").exists()
    assert not (run / examples_module.READOUTS_DIR).exists()


# --- the cache and the page's data ---------------------------------------------------------------------


def _decode(text: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


def test_readouts_are_cached_per_checkpoint_and_the_page_holds_them(trained_run, tmp_path, monkeypatch):
    path = tmp_path / "run"
    shutil.copytree(trained_run.path, path)
    run = Run(path)
    data = view_data(path, device="cpu", examples=[parse_tokens("5,3,5,3,5")])
    strip = data["runs"][0]["strip"]
    assert [e["source"] for e in strip["examples"]] == ["task", "input"]
    assert strip["steps"] == run.steps and strip["k"] == 5
    mine = strip["examples"][1]
    assert mine["tokens"] == [5, 3, 5, 3, 5] and mine["labels"] == ["5", "3", "5", "3", "5"]
    stored = sorted((path / examples_module.READOUTS_DIR).glob("*/*.npz"))
    assert len(stored) == 2 * len(run.steps) and all(p.with_suffix(".sha256").exists() for p in stored)
    # The page's float16 losses are the model's cross-entropy at each position of each checkpoint.
    example = resolve_examples(run, [parse_tokens("5,3,5,3,5")])[0]
    for i, step in enumerate(run.steps):
        model = run.load(step, device="cpu")
        with torch.no_grad():
            expected = token_losses(forward(model, example.batch()), example.batch())[0].numpy()
        shown = _decode(mine["losses"][i], "<f2").astype(np.float32)
        assert np.allclose(shown, expected, rtol=2e-3, atol=2e-3)
        top = _decode(mine["top_ids"][i], "<u2").reshape(5, 5)
        assert all(str(t) in strip["vocab"] for t in top.ravel())

    def refuse(*args, **kwargs):
        raise AssertionError("a cached readout was computed again")

    monkeypatch.setattr(examples_module, "position_readout", refuse)
    again = token_readouts(run, example, run.steps, device="cpu")
    assert len(again) == len(run.steps)
    edited = sorted((path / examples_module.READOUTS_DIR / example.key).glob("*.npz"))[0]
    edited.write_bytes(edited.read_bytes() + b"x")  # an edited file is recomputed, never shown
    assert [str(edited) in line for line in pattern_problems(run)] == [True]  # and `interp info --verify` names it
    monkeypatch.undo()
    token_readouts(run, example, run.steps, device="cpu")
    assert pattern_problems(run) == []


# --- the Tokens tab in a real browser -----------------------------------------------------------------


def test_token_strip_in_headless_chromium(trained_run, tmp_path, browser):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    path = tmp_path / "run"
    shutil.copytree(trained_run.path, path)
    assert main(["view", str(path), "--tokens", "5,3,5,3,5,3"]) == 0
    _open(browser, path / VIEW_DIR / INDEX)
    browser.find_element(By.CSS_SELECTOR, 'nav button[data-tab="tokens"]').click()
    _settle(browser)

    def colours() -> list[str]:
        return browser.execute_script("""return [...document.querySelectorAll('.tokens-example .token')]
            .map((e) => e.style.background);""")

    sections = browser.find_elements(By.CSS_SELECTOR, ".tokens-example")
    assert len(sections) == 2 and "your input" in sections[1].text
    first = colours()
    assert len(first) == len(browser.execute_script(
        "return window.interpView.data.runs[0].strip.examples.flatMap((e) => e.tokens)"))
    last = len(Run(path).steps) - 1
    browser.execute_script(f"window.interpView.setStep('a', {last})")
    assert colours() != first, "the strip's colours do not follow the slider"
    sections = browser.find_elements(By.CSS_SELECTOR, ".tokens-example")  # the strips are redrawn at each step
    token = sections[1].find_elements(By.CSS_SELECTOR, ".token")[1]
    ActionChains(browser).move_to_element(token).perform()
    panel = sections[1].find_element(By.CSS_SELECTOR, ".tokens-panel").text
    assert "top 5 predictions" in panel and "logit lens" in panel and "final_post" in panel
    assert "direct logit attribution" in panel and "L0H0" in panel
    assert "position 1: '3'" in panel and "next token '5'" in panel
    token.click()
    browser.execute_script("window.interpView.setStep('a', 0)")  # a picked token stays shown across steps
    assert "position 1: '3'" in browser.find_elements(By.CSS_SELECTOR, ".tokens-example")[1].text
    assert _console_errors(browser) == [] and browser.execute_script("return window.interpView.errors") == []
