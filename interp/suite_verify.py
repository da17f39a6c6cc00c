"""Checking a local suite's weight files without building a model: before a checkpoint loads (so a
damaged file is named in one line, not somewhere in a `transformers` traceback) and for
`CheckpointSuite.verify` (`interp info --verify`): safetensors headers, sharded indexes, and
`pytorch_model*.bin` unpickled by `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from interp.errors import first_line
from interp.files import loads_json, pickle_refusal
from interp.suite_cache import ContentKeyedCache
from interp.suite_layouts import TRAINER_STATE_FILES, SuiteError, no_weights, require_weights, weight_files

UNCHECKED_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
"""Weights in formats `transformers` does not load here (TensorFlow, Flax, ...): named by `verify`."""


@dataclass(frozen=True)
class SuiteVerification:
    """What `CheckpointSuite.verify` found: one line per problem, and the weight files in
    formats it cannot check (nor `transformers` load here)."""

    failures: list[str]
    unchecked: list[Path]


def weight_file_problem(file: Path, deep: bool = False) -> str | None:
    """What is wrong with one weight file, in a line, or None, without building a model.

    A safetensors file's header must read; a sharded index must be JSON whose `weight_map`
    names shards that exist. With `deep`, a `pytorch_model*.bin` is unpickled by
    `torch.load(weights_only=True)` (memory-mapped where it is a zip archive): a truncated
    file is named, and a pickle that asks for anything but tensors and plain data is refused
    without running it. (A folder has no manifest: changed bytes in a well-formed file are
    another checkpoint.)"""
    name = file.name
    if name.endswith(".index.json"):
        try:
            index = loads_json(file.read_bytes())
        except (ValueError, UnicodeDecodeError) as err:
            return f"{file} is not valid JSON ({err})"
        shards = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(shards, dict) or not shards:
            return f"{file}: weight_map is missing (expected a map of tensor names to shard files)"
        missing = sorted({str(s) for s in shards.values()} - {p.name for p in file.parent.iterdir()})
        return f"{file} names shards that are missing: {', '.join(missing[:3])}" if missing else None
    if name.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(file, framework="pt") as weights:
                weights.keys()
        except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError
            return f"{file} is not a readable safetensors file ({first_line(err)})"
        return None
    if deep and name.endswith(".bin"):
        archive = zipfile.is_zipfile(file)
        with open(file, "rb") as f:
            if not archive and f.read(4) == b"PK\x03\x04":
                return f"{file} is truncated or damaged: a zip archive (torch.save's format) without its directory"
        try:
            torch.load(file, map_location="cpu", weights_only=True, mmap=archive)
        except pickle.UnpicklingError as err:
            return f"{file}: refused to unpickle ({pickle_refusal(err)}); weights are tensors and plain data"
        except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ... for a damaged file
            return f"{file} is not a readable PyTorch weight file ({type(err).__name__}: {first_line(err)})"
    return None


def check_weight_files(folder: Path) -> None:
    """Before a checkpoint loads: its weights are present, each safetensors header reads and each
    index names shards that exist, so a truncated or overwritten file is named here instead of
    somewhere in a `transformers` traceback (which loads a `.bin` with `weights_only=True`)."""
    for file in require_weights(folder):
        problem = weight_file_problem(file)
        if problem:
            raise SuiteError(problem)


def verify_step_folders(step_dirs: Mapping[int, Path], cache: ContentKeyedCache) -> SuiteVerification:
    """What is wrong with each step folder, one line each: every weight file read deeply
    (`weight_file_problem`), and its config and weight files hashed again against `cache`'s
    memo (`ContentKeyedCache.content_changes`); files in weight formats not loaded here are
    listed as unchecked."""
    failures: list[str] = []
    unchecked: list[Path] = []
    for step, folder in step_dirs.items():
        files = weight_files(folder)
        if not files:
            failures.append(no_weights(folder))
        failures += [problem for file in files if (problem := weight_file_problem(file, deep=True))]
        unchecked += _unchecked_weight_files(folder)
        failures += cache.content_changes(step)
    return SuiteVerification(list(dict.fromkeys(failures)), unchecked)


def _unchecked_weight_files(folder: Path) -> list[Path]:
    """A step folder's files that look like weights but are in a format not read here (a Trainer's
    optimizer, scheduler and RNG state are not weights: left out)."""
    checked = set(weight_files(folder))
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(UNCHECKED_WEIGHT_SUFFIXES)
                  and p not in checked and not TRAINER_STATE_FILES.fullmatch(p.name))


__all__ = ["UNCHECKED_WEIGHT_SUFFIXES", "SuiteVerification", "check_weight_files", "verify_step_folders",
           "weight_file_problem"]
