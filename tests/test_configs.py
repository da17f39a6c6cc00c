"""Frozen-dataclass configs: JSON round trip, unknown keys, dotted overrides with
string coercion, the global `seed` key and CLI `key=value` parsing."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import pytest

from interp.configs import ConfigError, from_dict, parse_overrides, require, to_dict, with_overrides
from interp.model import ModelConfig
from interp.train import TrainConfig
from tasks.induction import RepeatedSegmentsConfig


@dataclass(frozen=True)
class EvalConfig:
    n_batch: int = 8
    seed: int = 0
    layers: tuple[int, ...] = (0, 1)
    note: str | None = None


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "exp"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: RepeatedSegmentsConfig = field(default_factory=RepeatedSegmentsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    temperature: float = 1.0
    verbose: bool = False


def sample_config() -> ExperimentConfig:
    return ExperimentConfig(
        name="induction",
        model=ModelConfig(n_layers=3, d_model=32, n_heads=4, attn_only=True, positional="rotary", seed=5),
        train=TrainConfig(steps=50, lr=3e-4, checkpoint_steps=(3, 17), init_from="runs/base@10", seed=6),
        data=RepeatedSegmentsConfig(d_vocab=32, seq_len=32, min_segment=4, max_segment=8),
        eval=EvalConfig(n_batch=4, seed=7, layers=(2,), note="hi"),
        temperature=0.5,
        verbose=True,
    )


# --- round trip --------------------------------------------------------------------


def test_to_dict_is_nested_and_json_ready():
    d = to_dict(sample_config())
    assert d["model"]["n_layers"] == 3
    assert d["train"]["checkpoint_steps"] == (3, 17)
    assert d["eval"]["note"] == "hi"
    json.dumps(d)


def test_round_trip_through_json():
    cfg = sample_config()
    data = json.loads(json.dumps(to_dict(cfg)))
    assert isinstance(data["train"]["checkpoint_steps"], list)  # JSON has no tuples
    back = from_dict(ExperimentConfig, data)
    assert back == cfg
    assert isinstance(back.model, ModelConfig)
    assert back.train.checkpoint_steps == (3, 17)
    assert back.eval.layers == (2,)


def test_round_trip_of_defaults_and_none():
    cfg = ExperimentConfig()
    assert cfg.eval.note is None
    assert from_dict(ExperimentConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_from_dict_partial_dict_uses_defaults():
    cfg = from_dict(ExperimentConfig, {"model": {"n_layers": 1}, "temperature": 2})
    assert cfg.model == ModelConfig(n_layers=1)
    assert cfg.train == TrainConfig()
    assert cfg.temperature == 2.0 and isinstance(cfg.temperature, float)


def test_from_dict_validates_via_post_init():
    with pytest.raises(ConfigError) as info:
        from_dict(ExperimentConfig, {"model": {"n_layers": 0}})
    assert info.value.field == "n_layers"


def test_from_dict_rejects_unknown_top_level_key():
    with pytest.raises(ConfigError) as info:
        from_dict(ExperimentConfig, {"modle": {}})
    assert info.value.field == "modle"
    assert "modle" in str(info.value)


def test_from_dict_rejects_unknown_nested_key_with_its_path():
    with pytest.raises(ConfigError) as info:
        from_dict(ExperimentConfig, {"model": {"n_layer": 2}})
    assert info.value.field == "model.n_layer"
    assert "model.n_layer" in str(info.value)


def test_from_dict_requires_mapping_for_nested_config():
    with pytest.raises(ConfigError) as info:
        from_dict(ExperimentConfig, {"model": 3})
    assert info.value.field == "model"


def test_from_dict_rejects_non_integer_float_for_int():
    with pytest.raises(ConfigError) as info:
        from_dict(ModelConfig, {"n_layers": 2.5})
    assert info.value.field == "n_layers"
    assert from_dict(ModelConfig, {"n_layers": 2.0}).n_layers == 2


# --- overrides -------------------------------------------------------------------------


def test_with_overrides_coerces_strings():
    cfg = with_overrides(
        ExperimentConfig(),
        {
            "model.n_layers": "3",
            "train.lr": "3e-4",
            "model.attn_only": "true",
            "verbose": "1",
            "train.checkpoint_steps": "5,10,20",
            "eval.layers": "1",
            "name": "abc",
            "temperature": "0.25",
            "eval.note": "None",
        },
    )
    assert cfg.model.n_layers == 3 and isinstance(cfg.model.n_layers, int)
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.attn_only is True
    assert cfg.verbose is True
    assert cfg.train.checkpoint_steps == (5, 10, 20)
    assert cfg.eval.layers == (1,)
    assert cfg.name == "abc"
    assert cfg.temperature == 0.25
    assert cfg.eval.note is None


@pytest.mark.parametrize("text, expected", [("true", True), ("False", False), ("0", False), ("TRUE", True)])
def test_with_overrides_bool_strings(text, expected):
    assert with_overrides(ExperimentConfig(), {"model.attn_only": text}).model.attn_only is expected


def test_with_overrides_empty_tuple():
    assert with_overrides(ExperimentConfig(), {"train.checkpoint_steps": ""}).train.checkpoint_steps == ()


def test_with_overrides_leaves_other_fields_and_original_alone():
    base = sample_config()
    cfg = with_overrides(base, {"train.lr": "0.1"})
    assert base.train.lr == 3e-4  # frozen original untouched
    assert cfg.train == dataclasses.replace(base.train, lr=0.1)
    assert cfg.model == base.model and cfg.eval == base.eval


@pytest.mark.parametrize(
    "key, value, bad_part",
    [
        ("model.n_layers", "two", "two"),
        ("model.n_layers", "2.5", "2.5"),
        ("train.lr", "fast", "fast"),
        ("model.attn_only", "maybe", "maybe"),
        ("train.checkpoint_steps", "1,x", "x"),  # the offending element is named
        ("temperature", "warm", "warm"),
    ],
)
def test_with_overrides_bad_coercion_names_the_field(key, value, bad_part):
    with pytest.raises(ConfigError) as info:
        with_overrides(ExperimentConfig(), {key: value})
    assert info.value.field == key
    assert key in str(info.value)
    assert repr(bad_part) in str(info.value)


def test_with_overrides_value_rejected_by_validation():
    with pytest.raises(ConfigError) as info:
        with_overrides(ExperimentConfig(), {"train.optimizer": "lion"})
    assert info.value.field == "train.optimizer"  # a Literal field is checked as it is read, by its full name
    assert "'lion'" in str(info.value)


@pytest.mark.parametrize("key", ["model.n_layer", "modle.n_layers", "bogus"])
def test_with_overrides_unknown_key(key):
    with pytest.raises(ConfigError) as info:
        with_overrides(ExperimentConfig(), {key: "1"})
    assert info.value.field == key


def test_with_overrides_cannot_descend_into_a_leaf():
    with pytest.raises(ConfigError) as info:
        with_overrides(ExperimentConfig(), {"name.x": "1"})
    assert info.value.field == "name.x"


def test_seed_override_sets_every_nested_seed():
    cfg = with_overrides(sample_config(), {"seed": "42"})
    assert cfg.model.seed == 42
    assert cfg.train.seed == 42
    assert cfg.eval.seed == 42
    # nothing else changes
    assert dataclasses.replace(cfg.model, seed=5) == sample_config().model
    assert dataclasses.replace(cfg.eval, seed=7) == sample_config().eval


def test_seed_override_then_dotted_override():
    cfg = with_overrides(ExperimentConfig(), {"seed": 3, "train.seed": "9"})
    assert (cfg.model.seed, cfg.train.seed, cfg.eval.seed) == (3, 9, 3)


def test_seed_override_is_overridden_by_a_dotted_key_in_any_order():
    cfg = with_overrides(ExperimentConfig(), {"train.seed": "9", "seed": 3})
    assert (cfg.model.seed, cfg.train.seed, cfg.eval.seed) == (3, 9, 3)


@dataclass(frozen=True)
class Vocab:
    d_vocab: int = 8


@dataclass(frozen=True)
class Coupled:
    """Two sibling configs whose fields must agree, checked by the parent."""

    model: Vocab = field(default_factory=Vocab)
    task: Vocab = field(default_factory=Vocab)
    note: str = ""

    def __post_init__(self):
        require(self.model.d_vocab == self.task.d_vocab, "model.d_vocab", f"task.d_vocab={self.task.d_vocab}",
                self.model.d_vocab)


def test_coupled_fields_change_together_in_one_override_set():
    cfg = with_overrides(Coupled(), {"task.d_vocab": "16", "model.d_vocab": "16"})
    assert (cfg.model.d_vocab, cfg.task.d_vocab) == (16, 16)
    with pytest.raises(ConfigError, match="model.d_vocab: expected task.d_vocab=16"):
        with_overrides(Coupled(), {"task.d_vocab": "16"})


def test_a_config_and_its_fields_cannot_both_be_overridden():
    with pytest.raises(ConfigError) as info:
        with_overrides(Coupled(), {"model.d_vocab": "4", "model": "x"})
    assert info.value.field == "model.d_vocab" and "model or of its fields" in str(info.value)


def test_seed_override_bad_value():
    with pytest.raises(ConfigError) as info:
        with_overrides(ExperimentConfig(), {"seed": "abc"})
    assert info.value.field == "seed"


# --- CLI parsing ------------------------------------------------------------------------


def test_parse_overrides():
    assert parse_overrides(["a=1", " train.lr = 3e-4 ", "name=x=y", "empty="]) == {
        "a": "1",
        "train.lr": "3e-4",
        "name": "x=y",
        "empty": "",
    }
    assert parse_overrides([]) == {}


@pytest.mark.parametrize("bad", ["noequals", "=3"])
def test_parse_overrides_rejects_malformed(bad):
    with pytest.raises(ConfigError) as info:
        parse_overrides(["ok=1", bad])
    assert repr(bad) in str(info.value)


def test_parse_then_apply():
    cfg = with_overrides(ExperimentConfig(), parse_overrides(["model.d_model=32", "seed=4"]))
    assert cfg.model.d_model == 32 and cfg.model.seed == 4


def test_an_analysis_config_holds_no_execution_setting_and_preset_workers_are_checked():
    from interp.analysis import Analysis, get_analysis, resolve_config

    induction = get_analysis("induction-heads")
    assert "workers" not in to_dict(induction.presets["tiny"])
    with pytest.raises(ConfigError, match=r"^workers: expected a field of InductionHeadsConfig"):
        resolve_config(induction, "tiny", {"workers": "2"})
    parts = (induction.measure, induction.figures, induction.report)
    with pytest.raises(ConfigError, match=r"^preset_workers: expected keys among the presets"):
        Analysis("x", "", induction.presets, *parts, preset_workers={"huge": 1})
    with pytest.raises(ConfigError, match=r"^preset_workers\['tiny'\]: expected an integer >= 0"):
        Analysis("x", "", induction.presets, *parts, preset_workers={"tiny": -1})
