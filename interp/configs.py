"""Frozen-dataclass configs: validation, JSON round trip and `key=value` overrides.

Every config in the toolkit is a frozen dataclass so that a run directory's
`config.json` is the complete, re-runnable description of the run.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from interp.errors import InputError

T = TypeVar("T")

MAX_SEED = 2**63 - 1  # seeds reach torch.manual_seed, which takes at most a signed 64-bit integer


class ConfigError(InputError):
    """A config field holds a value outside what it accepts."""

    def __init__(self, field: str, expected: str, got: Any):
        super().__init__(f"{field}: expected {expected}, got {got!r}")
        self.field = field


def require(ok: bool, field: str, expected: str, got: Any) -> None:
    """Raise `ConfigError(field, expected, got)` unless `ok`."""
    if not ok:
        raise ConfigError(field, expected, got)


def require_finite(obj: Any) -> None:
    """Refuse NaN and infinities in every float field of config `obj` (and in tuples of them):
    `inf > 0` passes every range check, and a NaN fails none of them silently."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, float):
                require(math.isfinite(item), f.name, "a finite number", item)


def require_positive(obj: Any, *fields: str) -> None:
    for name in fields:
        value = getattr(obj, name)
        require(isinstance(value, int) and value > 0, name, "a positive integer", value)


def require_literals(obj: Any) -> None:
    """Check every `Literal[...]`-typed field of a config (Python does not enforce them)."""
    for name, annotation in _field_types(type(obj)).items():
        if typing.get_origin(annotation) is typing.Literal:
            choices = typing.get_args(annotation)
            require(getattr(obj, name) in choices, name, f"one of {list(choices)}", getattr(obj, name))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) dataclass config."""
    return dataclasses.asdict(cfg)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, field: str) -> Any:
    """Turn a JSON value (or a CLI string) into the field's declared type."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        require(isinstance(value, Mapping), field, f"a mapping for {annotation.__name__}", value)
        return from_dict(annotation, value, prefix=f"{field}.")
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        require(value in choices, field, f"one of {list(choices)}", value)
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        args = typing.get_args(annotation)
        item_type = args[0] if args else Any
        return tuple(_coerce(v, item_type, field) for v in value)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or value == "None":
            return None
        return _coerce(value, options[0], field)
    if annotation is bool:
        if isinstance(value, str):
            lowered = value.lower()
            require(lowered in ("true", "false", "1", "0"), field, "true or false", value)
            return lowered in ("true", "1")
        return bool(value)
    if annotation in (int, float, str):
        try:
            converted = annotation(value)
        except (TypeError, ValueError, OverflowError):  # int(float("inf")) overflows
            raise ConfigError(field, f"a value of type {annotation.__name__}", value) from None
        if annotation is int and isinstance(value, float) and value != converted:
            raise ConfigError(field, "an integer", value)
        # float("inf") and float("nan") parse, but no config means them: a NaN learning rate
        # trains to NaN and `inf` passes every `> 0` check.
        if annotation is float and not math.isfinite(converted):
            raise ConfigError(field, "a finite number", value)
        return converted
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build config `cls` from a dict, refusing unknown keys by name."""
    hints = _field_types(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}", f"one of the fields {sorted(known)}", "unknown field")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def with_overrides(cfg: T, overrides: Mapping[str, Any]) -> T:
    """Return `cfg` with dotted-key overrides applied (`"train.lr": "3e-4"`).

    All overrides are applied before any config is validated, so fields that must
    agree can change together (`task.d_vocab` with `model.d_vocab`): each config in
    the tree is rebuilt once, with every change below it. The key `seed` sets every
    field named `seed` in the tree, so one seed drives model initialization, data and
    evaluation alike; a dotted key (`train.seed`) overrides it.
    """
    overrides = dict(overrides)
    if "seed" in overrides:
        cfg = _set_seed(cfg, overrides.pop("seed"))
    tree: dict[str, Any] = {}
    for key in sorted(overrides, key=lambda k: k.count(".")):
        *parents, leaf = key.split(".")
        node = tree
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # shorter keys come first: `part` itself was set
                prefix = ".".join(parents[: depth + 1])
                raise ConfigError(key, f"an override of {prefix} or of its fields, not both", key)
        node[leaf] = _Override(key, overrides[key])
    return _apply(cfg, tree)


@dataclasses.dataclass(frozen=True)
class _Override:
    key: str
    value: Any


def _first_key(tree: dict[str, Any] | _Override) -> str:
    return tree.key if isinstance(tree, _Override) else _first_key(next(iter(tree.values())))


def _apply(cfg: Any, tree: dict[str, Any]) -> Any:
    """`cfg` rebuilt once with the overrides in `tree` (field -> `_Override` or subtree)."""
    names = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    for head, node in tree.items():
        full_key = _first_key(node)
        if head not in names:
            raise ConfigError(full_key, f"a field of {type(cfg).__name__}: {sorted(names)}", "unknown field")
        if isinstance(node, _Override):
            changes[head] = _coerce(node.value, _field_types(type(cfg))[head], full_key)
            continue
        child = getattr(cfg, head)
        if not dataclasses.is_dataclass(child):
            raise ConfigError(full_key, f"{head} to be a nested config", type(child).__name__)
        changes[head] = _apply(child, node)
    return dataclasses.replace(cfg, **changes)


def _set_seed(cfg: Any, seed: Any) -> Any:
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        current = getattr(cfg, f.name)
        if f.name == "seed":
            changes["seed"] = _coerce(seed, int, "seed")
        elif dataclasses.is_dataclass(current):
            changes[f.name] = _set_seed(current, seed)
    return dataclasses.replace(cfg, **changes)


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """Parse CLI `key=value` strings into a dict, naming the malformed one."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError("--set", "key=value", pair)
        out[key.strip()] = value.strip()
    return out
