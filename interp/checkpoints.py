"""The run directory: config, metrics log, checkpoints and their manifest.

Layout (see README):

    config.json          everything needed to re-run
    metrics.jsonl        one JSON object per logged step
    manifest.json        step -> file -> sha256; a checkpoint exists once listed here
    checkpoints/step_000123/weights.safetensors   model weights
    checkpoints/step_000123/state.pt              optimizer state, step, running loss (no code)
    probes/*.jsonl, figures/*.png, report.md, results.json

Every write is atomic (temporary name, fsync, rename), and a checkpoint is
committed by listing it in the manifest after its directory is in place, so a
run killed at any moment leaves each checkpoint either complete or absent.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformer_lens.model_bridge import TransformerBridge

from interp.configs import from_dict
from interp.model import ModelConfig, build_model, load_model_state_dict, model_state_dict

WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or fails its hash check."""


def step_dirname(step: int) -> str:
    return f"step_{step:06d}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_npy(path: Path, array: np.ndarray) -> None:
    """An array as a `.npy` file (no pickles), written atomically."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn last line (killed mid-append) is dropped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row, default=_json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


class Run:
    """A run directory opened for reading (and, by the trainer, for writing).

    >>> run = Run.open("runs/induction")
    >>> run.steps, run.model_config
    >>> model = run.load(step=run.steps[-1])
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def open(cls, path: str | Path) -> Run:
        run = cls(path)
        if not (run.path / CONFIG_FILE).exists():
            raise FileNotFoundError(f"{run.path} is not a run directory: no {CONFIG_FILE}")
        return run

    @classmethod
    def create(cls, path: str | Path, config: dict[str, Any]) -> Run:
        run = cls(path)
        (run.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_json(run.path / CONFIG_FILE, config)
        return run

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, steps={len(self.steps)})"

    # --- reading ---
    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.path / CONFIG_FILE).read_text())

    @property
    def model_config(self) -> ModelConfig:
        return from_dict(ModelConfig, self.config["model"])

    @property
    def manifest(self) -> dict[str, dict[str, str]]:
        path = self.path / MANIFEST_FILE
        return json.loads(path.read_text())["checkpoints"] if path.exists() else {}

    @property
    def steps(self) -> list[int]:
        return sorted(int(s) for s in self.manifest)

    def checkpoint_dir(self, step: int) -> Path:
        return self.path / "checkpoints" / step_dirname(step)

    def _entry(self, step: int) -> dict[str, str]:
        manifest = self.manifest
        if str(step) not in manifest:
            raise CheckpointError(f"no checkpoint at step {step} in {self.path}; available steps: {self.steps}")
        return manifest[str(step)]

    def _verified_file(self, step: int, name: str) -> Path:
        expected = self._entry(step)[name]
        path = self.checkpoint_dir(step) / name
        if not path.exists():
            raise CheckpointError(f"checkpoint file missing: {path}")
        if sha256_file(path) != expected:
            raise CheckpointError(f"checkpoint file {path} does not match its sha256 in {MANIFEST_FILE}")
        return path

    def load_state_dict(self, step: int) -> dict[str, torch.Tensor]:
        return load_file(self._verified_file(step, WEIGHTS_FILE))

    def load(
        self, step: int | None = None, device: str | torch.device | None = None, into: TransformerBridge | None = None
    ) -> TransformerBridge:
        """The model at `step` (default: last), hash-verified, in eval mode.

        `into` reuses a model of this run's config (its weights are overwritten),
        which skips building a bridge: most of the cost of walking checkpoints.
        """
        step = self.steps[-1] if step is None else step
        state = self.load_state_dict(step)
        model = build_model(self.model_config, device=device) if into is None else into
        load_model_state_dict(model, state)
        return model.eval()

    def load_training_state(self, step: int) -> dict[str, Any]:
        """Optimizer state and step (the data position), loaded without unpickling code."""
        return torch.load(self._verified_file(step, STATE_FILE), weights_only=True)

    def checkpoint_hash(self, step: int) -> str:
        return self._entry(step)[WEIGHTS_FILE]

    def __iter__(self) -> Iterator[tuple[int, TransformerBridge]]:
        for step in self.steps:
            yield step, self.load(step)

    def metrics(self) -> list[dict[str, Any]]:
        """Every logged row of `metrics.jsonl` (each has a `step`)."""
        return read_jsonl(self.path / METRICS_FILE)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one logged metric."""
        rows = [r for r in self.metrics() if key in r]
        if not rows:
            keys = sorted({k for r in self.metrics() for k in r} - {"step"})
            raise KeyError(f"metric {key!r} is not in {self.path / METRICS_FILE}; logged: {keys}")
        return np.array([r["step"] for r in rows]), np.array([r[key] for r in rows], dtype=float)

    # --- writing (used by the trainer) ---
    def save_checkpoint(self, step: int, model: TransformerBridge, state: dict[str, Any]) -> None:
        final = self.checkpoint_dir(step)
        tmp = final.with_name(f".tmp_{final.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        weights = {k: v.detach().contiguous().cpu() for k, v in model_state_dict(model).items()}
        save_file(weights, tmp / WEIGHTS_FILE)
        torch.save(state, tmp / STATE_FILE)
        for name in (WEIGHTS_FILE, STATE_FILE):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        hashes = {name: sha256_file(tmp / name) for name in (WEIGHTS_FILE, STATE_FILE)}
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        manifest = self.manifest
        manifest[str(step)] = hashes
        atomic_write_json(self.path / MANIFEST_FILE, {"checkpoints": manifest})

    def truncate_metrics(self, after_step: int) -> None:
        """Drop rows logged after `after_step` (work lost by a kill, redone on resume)."""
        rows = [r for r in self.metrics() if r["step"] <= after_step]
        data = "".join(json.dumps(r, default=_json_default) + "\n" for r in rows)
        atomic_write_bytes(self.path / METRICS_FILE, data.encode())

    def log_metrics(self, rows: list[dict[str, Any]]) -> None:
        append_jsonl(self.path / METRICS_FILE, rows)
