"""What a checkpoint-suite folder is made of: how its checkpoints are named and found by step, which
of their files hold the config and weights, the training log a `transformers.Trainer` leaves; and
the error of a suite that is missing, inconsistent or damaged.

    suite/
      step0/     config.json  model.safetensors   one folder per checkpoint, named step<N>, or
      step1000/  ...                              checkpoint-<N> as transformers.Trainer writes
                                                  them (its optimizer.pt, rng_state.pth,
                                                  training_args.bin ... are never loaded; its
                                                  trainer_state.json gives the loss curve)
      tokenizer.json ...                          optional: a tokenizer here or in the step folders
      interp-cache/<name>/probes/*.jsonl          probe results (the default cache of a folder,
                                                  see `interp.suite_cache`)

A folder names its checkpoints one way: step<N> and checkpoint-<N> side by side are refused.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from interp.errors import listing
from interp.files import loads_json
from interp.run_layout import CheckpointError

STEP_NAME = re.compile(r"step(\d+)")
"""A checkpoint's sub-folder or hub revision: `step<N>`, N its training step (Pythia's naming)."""
TRAINER_NAME = re.compile(r"checkpoint-(\d+)")
"""A checkpoint's sub-folder as `transformers.Trainer(output_dir=...)` writes it: `checkpoint-<N>`."""
FOLDER_NAMINGS = (STEP_NAME, TRAINER_NAME)
"""How a suite folder may name its checkpoints' sub-folders (one naming per folder)."""
TRAINER_STATE_FILE = "trainer_state.json"
"""A Trainer checkpoint's log (JSON): `log_history` holds the logged losses, read by `trainer_log`."""
TRAINER_STATE_FILES = re.compile(r"optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|training_args\.bin")
"""A Trainer checkpoint's training state: pickles that are not weights, never loaded nor checked."""
HF_CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILES = ("tokenizer.json", TOKENIZER_CONFIG_FILE, "vocab.json", "tokenizer.model", "vocab.txt")
_TRAINER_LOG_KEYS = {"loss": "train/loss", "learning_rate": "lr", "grad_norm": "grad_norm", "eval_loss": "eval/loss"}
"""Trainer's `log_history` keys, as a run's metrics rows name them."""


class SuiteError(CheckpointError):
    """A checkpoint suite is missing, inconsistent or damaged, or a step is not in it."""


def weight_files(folder: Path) -> list[Path]:
    """The files of a `save_pretrained` folder that hold (or index) its weights."""
    return sorted(p for p in folder.iterdir() if p.is_file() and (
        p.name.endswith((".safetensors", ".safetensors.index.json"))
        or (p.name.startswith("pytorch_model") and p.name.endswith((".bin", ".bin.index.json")))))


def no_weights(folder: Path) -> str:
    """The one-line problem of a step folder without weight files."""
    return (f"{folder} holds no weights (expected model.safetensors, sharded *.safetensors with their index, or "
            "pytorch_model.bin)")


def require_weights(folder: Path) -> list[Path]:
    """A step folder's weight files; a folder without any is a `SuiteError`."""
    files = weight_files(folder)
    if not files:
        raise SuiteError(no_weights(folder))
    return files


def read_config(path: Path) -> dict[str, Any]:
    """A step folder's config.json (or tokenizer config) as a dict, read as data."""
    try:
        config = loads_json(path.read_bytes())
    except FileNotFoundError:
        raise SuiteError(f"{path} is missing: {path.parent} is not a save_pretrained folder") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise SuiteError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise SuiteError(f"{path} is not a JSON object")
    return config


def step_folders(folder: Path) -> dict[int, str]:
    """A suite folder's checkpoint sub-folders, by step: `step<N>` or `checkpoint-<N>` (other
    entries are ignored; a folder that uses both namings is refused)."""
    found: dict[int, str] = {}
    namings: dict[str, str] = {}
    for entry in sorted(folder.iterdir()):
        match = next((m for pattern in FOLDER_NAMINGS if (m := pattern.fullmatch(entry.name))), None)
        if not (match and entry.is_dir()):
            continue
        namings.setdefault(match.re.pattern, entry.name)
        step = int(match.group(1))
        if step in found:
            raise SuiteError(f"{folder}: {found[step]} and {entry.name} both hold step {step}")
        found[step] = entry.name
    if len(namings) > 1:
        raise SuiteError(f"{folder}: names checkpoints two ways ({' and '.join(namings.values())}); a suite folder "
                         "uses one naming, step<N> or checkpoint-<N>: move one kind elsewhere")
    return dict(sorted(found.items()))


def chosen_step_folders(folder: Path, requested: Collection[int] | None) -> dict[int, str]:
    """The sub-folders of the suite folder `folder` that hold the `requested` steps (None: all),
    by step in step order; a missing folder, or a step it has no sub-folder for, is refused."""
    layout = "one save_pretrained sub-folder per checkpoint, named step<N> or checkpoint-<N>"
    if not folder.exists():
        raise SuiteError(f"{folder}: no such folder (a suite folder holds {layout}; a hub model id needs hub=True "
                         "where it could be a path)")
    if not folder.is_dir():
        raise SuiteError(f"{folder} is not a folder (a suite folder holds {layout})")
    available = step_folders(folder)
    if not available:
        raise SuiteError(f"{folder} holds no step<N> or checkpoint-<N> sub-folders ({layout}, e.g. "
                         f"{folder / 'step1000'})")
    if requested is not None:
        missing = [s for s in requested if s not in available]
        if missing:
            # the missing sub-folder as this folder names its checkpoints
            named = re.sub(r"\d+$", str(missing[0]), next(iter(available.values())))
            raise SuiteError(f"{folder}: no checkpoint at step {', '.join(map(str, missing))} (no sub-folder "
                             f"{folder / named}); available steps: {listing(list(available), 8)}")
    return {s: available[s] for s in sorted(available if requested is None else requested)}


def is_suite_folder(path: Path) -> bool:
    """Whether `path` is a folder with a `step<N>` or `checkpoint-<N>` sub-folder holding a config.json."""
    return path.is_dir() and any(any(p.fullmatch(e.name) for p in FOLDER_NAMINGS) and (e / HF_CONFIG_FILE).is_file()
                                 for e in path.iterdir())


def trainer_log(path: Path) -> list[dict[str, Any]]:
    """A Trainer's `log_history` (its `trainer_state.json` at `path`) as metrics rows, one per
    step, finite numbers only."""
    try:
        state = json.loads(path.read_bytes())  # Trainer writes NaN for a diverged loss: read it, then leave it out
    except (ValueError, UnicodeDecodeError) as err:
        raise SuiteError(f"{path} is not valid JSON ({err})") from None
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise SuiteError(f"{path}: log_history is missing (expected the list transformers.Trainer writes)")
    rows: dict[int, dict[str, Any]] = {}
    for entry in history:
        step = entry.get("step") if isinstance(entry, dict) else None
        if not isinstance(step, int):
            continue
        values = {name: float(entry[key]) for key, name in _TRAINER_LOG_KEYS.items()
                  if isinstance(entry.get(key), int | float) and math.isfinite(entry[key])}
        if values:
            rows.setdefault(step, {"step": step}).update(values)
    return [rows[step] for step in sorted(rows)]


__all__ = ["FOLDER_NAMINGS", "HF_CONFIG_FILE", "STEP_NAME", "TOKENIZER_CONFIG_FILE", "TOKENIZER_FILES",
           "TRAINER_NAME", "TRAINER_STATE_FILE", "TRAINER_STATE_FILES", "SuiteError", "chosen_step_folders",
           "is_suite_folder", "no_weights", "read_config", "require_weights", "step_folders", "trainer_log",
           "weight_files"]
