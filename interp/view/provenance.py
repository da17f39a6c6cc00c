"""What the explorer says about where a run came from, and which runs differ only by their seed.

`run_provenance(run)` is the provenance panel's record of one run: its config (model, train,
task and the rest of `config.json`), the seeds in it, and the versions the trainer recorded.
`seed_groups(configs)` finds the runs of an analysis whose configs are equal once their seeds
are left out: the page draws a mean line and a band over each such group.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from interp.checkpoints import Run

# Where a run ran, not what it is: two runs that differ only here are the same experiment.
_WHERE_IT_RAN = ("versions", "device")
_DISTRIBUTION = "interp-dynamics"


def is_seed_key(key: str) -> bool:
    """Whether a config key names a seed (`seed`, `structure_seed`, ...)."""
    return key == "seed" or key.endswith("_seed")


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`config` as dotted keys (`train.lr`) over its nested objects; lists stay whole values."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flat_config(value, name + ".")
        else:
            out[name] = value
    return out


def seeds_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """Every seed in a run config, by dotted key (`model.seed`, `task.structure_seed`, ...)."""
    return {k: v for k, v in flat_config(_experiment(config)).items() if is_seed_key(k.rsplit(".", 1)[-1])}


def _experiment(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _WHERE_IT_RAN}


def toolkit_version() -> str | None:
    """The installed version of this toolkit (the one writing the page), None when not installed."""
    try:
        return metadata.version(_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def run_provenance(run: Run) -> dict[str, Any]:
    """The provenance panel of one run: `{"config", "seeds", "versions", "device"}`, with the
    config (everything in `config.json` but where it ran) as written and the versions the
    trainer recorded (an empty object for a run that recorded none)."""
    config = run.config
    versions = config.get("versions")
    return {"config": _experiment(config), "seeds": seeds_of(config),
            "versions": dict(versions) if isinstance(versions, Mapping) else {},
            "device": config.get("device") if isinstance(config.get("device"), str) else None}


def seed_groups(configs: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """The runs (by name) whose configs are equal but for their seeds, two or more to a group,
    in the order of `configs`; a run with no twin is in no group."""
    groups: dict[str, list[str]] = {}
    for name, config in configs.items():
        rest = {k: v for k, v in flat_config(_experiment(config)).items() if not is_seed_key(k.rsplit(".", 1)[-1])}
        groups.setdefault(json.dumps(rest, sort_keys=True), []).append(name)
    return [names for names in groups.values() if len(names) > 1]
