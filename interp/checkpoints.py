"""The run directory (`Run`): config, metrics log, checkpoints and their manifest, and the
protocols of what probes read from a sequence of checkpoints (`CheckpointSource`, `ModelSizes`).

The layout is in `interp.run_layout`. A checkpoint is committed by listing it in the manifest
after its directory is in place (every file written atomically, `interp.files`), so a run killed
at any moment leaves each checkpoint either complete or absent. One process at a time writes a
run (`interp.locking.run_lock`); readers take no lock. `Run.inspect` tells an intact run from a
damaged one without hashing anything (`interp.run_state.RunState`).
"""

from __future__ import annotations

import os
import pickle
import re
import secrets
import shutil
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file

from interp.configs import from_dict
from interp.errors import InputError, MissingFileError, listing
from interp.files import (
    NonFiniteError,
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    dumps_json,
    fsync_dir,
    is_temporary,
    pickle_refusal,
    read_json,
    read_jsonl,
    save_safetensors,
    scan_jsonl,
    sha256_file,
)
from interp.ids import CheckpointRef
from interp.model import ModelConfig, build_model, load_model_state_dict, model_state_dict
from interp.run_layout import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    PROBES_DIR,
    SHARED_KEY,
    STATE_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    RunDamagedError,
    step_dirname,
)
from interp.run_state import RunState, check_metrics_log, row_problems
from interp.suite_layouts import is_suite_folder
from interp.suites import CheckpointSuite, open_suite

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge

_STEP_DIR = re.compile(r"step_(\d+)")


class ModelSizes(Protocol):
    """The sizes of a checkpoint source's model that probes and figures need (a run's
    `ModelConfig`, a suite's `interp.suites.SuiteModelConfig`)."""

    @property
    def n_layers(self) -> int: ...
    @property
    def n_heads(self) -> int: ...
    @property
    def d_model(self) -> int: ...
    @property
    def d_vocab(self) -> int: ...
    @property
    def n_ctx(self) -> int: ...


class CheckpointSource(Protocol):
    """What the probe runner (`interp.probing.probe`, which runs every kind of probe) and the
    CLI read from a sequence of checkpoints: a run directory (`Run`) or a checkpoint suite in
    Hugging Face format, such as Pythia's revisions (`interp.suites.CheckpointSuite`).

    Results derived from the checkpoints (the probe cache `probes/`, `figures/`) live under
    `path`, written under its lock (`interp.locking.run_lock`; a folder this process cannot
    write has its cache elsewhere, `interp.cache_dirs`); `checkpoint_hash(step)` identifies a
    checkpoint's weights, so a cached result is reused only for the weights it was computed on."""

    path: Path
    """The directory of results derived from these checkpoints (a run: the run directory)."""
    dtype: torch.dtype
    """The floating-point type the checkpoints load in: it changes every number computed
    from them, so it is part of a cached result's key."""

    @property
    def steps(self) -> list[int]:
        """The checkpoints' training steps, ascending."""
        ...

    @property
    def config(self) -> dict[str, Any]:
        """The source's configuration as a JSON object (a run: its config.json)."""
        ...

    @property
    def model_config(self) -> ModelSizes: ...

    @property
    def tokenizer(self) -> Any | None:
        """The tokenizer of a source with one, so probe batches may be text; None otherwise."""
        ...

    def load(self, step: int | None = None, device: str | torch.device | None = None,
             into: TransformerBridge | None = None) -> TransformerBridge:
        """The model at `step` (default: the last), in eval mode; `into`, a model this source
        loaded, is reused, so walking the checkpoints keeps one model in memory."""
        ...

    def checkpoint_hash(self, step: int) -> str: ...

    def metrics(self) -> list[dict[str, Any]]:
        """The training log, one row per logged step (a suite: its Trainer's, else none)."""
        ...



class Run:
    """A run directory opened for reading (and, by the trainer, for writing).

    >>> run = Run.open("runs/induction")
    >>> run.steps, run.model_config
    >>> model = run.load(step=run.steps[-1])
    """

    dtype = torch.float32
    """Checkpoints load in float32 (a bfloat16-trained run keeps float32 master weights)."""

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
        (run.path / CHECKPOINTS_DIR).mkdir(parents=True, exist_ok=True)
        atomic_write_json(run.path / CONFIG_FILE, config)
        return run

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, steps={len(self.steps)})"

    @property
    def tokenizer(self) -> None:
        """None: the toolkit's runs are tokenizer-less (probe batches are token ids)."""
        return None

    # --- reading ---
    @property
    def config(self) -> dict[str, Any]:
        return read_json(self.path / CONFIG_FILE)

    @property
    def model_config(self) -> ModelConfig:
        return from_dict(ModelConfig, self.config["model"])

    def _read_manifest(self) -> dict[str, Any]:
        path = self.path / MANIFEST_FILE
        if not path.exists():
            return {"checkpoints": {}}
        manifest = read_json(path)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("checkpoints"), dict):
            raise RunDamagedError(f"{path} has no 'checkpoints' mapping")
        if not isinstance(manifest.get(SHARED_KEY, {}), dict):
            raise RunDamagedError(f"{path}: '{SHARED_KEY}' is not a mapping of steps to checkpoints")
        return manifest

    @property
    def manifest(self) -> dict[str, dict[str, str]]:
        """Every committed checkpoint's files that are kept, with their sha256, by step (as text)."""
        return self._read_manifest()["checkpoints"]

    @property
    def committed_steps(self) -> list[int]:
        """Every checkpoint ever committed, ascending, including those whose files a checkpoint
        policy released (`interp.train_config.CheckpointPolicy`): the last is where the run got to and
        where a resume continues."""
        return sorted(int(s) for s in self.manifest)

    @property
    def steps(self) -> list[int]:
        """The checkpoints whose weights are kept (those that load), ascending."""
        return sorted(int(s) for s, files in self.manifest.items() if WEIGHTS_FILE in files)

    def shared_weights(self) -> dict[int, CheckpointRef]:
        """The checkpoints whose weights are another run's checkpoint, not a copy (a fine-tuning
        run's step 0 is its parent's), by step; each run directory is relative to this one."""
        shared = self._read_manifest().get(SHARED_KEY, {})
        return {int(step): CheckpointRef.parse(ref) for step, ref in shared.items()}

    def checkpoint_dir(self, step: int) -> Path:
        return self.path / CHECKPOINTS_DIR / step_dirname(step)

    def _entry(self, step: int) -> dict[str, str]:
        manifest = self.manifest
        if str(step) not in manifest:
            raise CheckpointError(f"no checkpoint at step {step} in {self.path}; available steps: {self.steps}")
        return manifest[str(step)]

    def file_path(self, step: int, name: str) -> Path:
        """Where checkpoint `step`'s file `name` is: in its directory, or for weights shared with
        another run, in that run's checkpoint (followed further if that one shares them too)."""
        ref = self.shared_weights().get(step) if name == WEIGHTS_FILE else None
        if ref is None or ref.step is None:
            return self.checkpoint_dir(step) / name
        return Run(self.path / ref.run_dir).file_path(ref.step, name)

    def _verified_file(self, step: int, name: str) -> Path:
        entry = self._entry(step)
        if name not in entry:
            why = (f"the checkpoint policy kept weights at steps {listing(self.steps)} only"
                   if name == WEIGHTS_FILE else
                   f"a resume continues from the last checkpoint only, step {self.committed_steps[-1]}")
            raise CheckpointError(f"checkpoint {step} of {self.path} no longer holds {name}: {why}")
        path = self.file_path(step, name)
        if not path.exists():
            shared = f" (shared with {self.shared_weights()[step]}, relative to {self.path})" \
                if name == WEIGHTS_FILE and step in self.shared_weights() else ""
            raise CheckpointError(f"checkpoint file missing: {path}{shared}")
        if sha256_file(path) != entry[name]:
            raise CheckpointError(f"checkpoint file {path} does not match its sha256 in {MANIFEST_FILE}")
        return path

    def last_step(self) -> int:
        """The last checkpoint with weights; a run without one is an error that says so."""
        steps = self.steps
        if not steps:
            committed = self.committed_steps
            if committed:
                raise CheckpointError(f"{self.path} keeps no weights: its checkpoint policy released them once its "
                                      f"results were written (checkpoints committed: {listing(committed)})")
            raise CheckpointError(f"{self.path} has no checkpoints: {MANIFEST_FILE} lists none "
                                  f"({'it is missing' if not (self.path / MANIFEST_FILE).exists() else 'empty'})")
        return steps[-1]

    def load_state_dict(self, step: int) -> dict[str, torch.Tensor]:
        return load_file(self._verified_file(step, WEIGHTS_FILE))

    def load(
        self, step: int | None = None, device: str | torch.device | None = None, into: TransformerBridge | None = None
    ) -> TransformerBridge:
        """The model at `step` (default: last), hash-verified, in eval mode.

        `into` reuses a model of this run's config (its weights are overwritten),
        which skips building a bridge: most of the cost of walking checkpoints.
        """
        step = self.last_step() if step is None else step
        state = self.load_state_dict(step)
        model = build_model(self.model_config, device=device) if into is None else into
        load_model_state_dict(model, state)
        return model.eval()

    def load_training_state(self, step: int) -> dict[str, Any]:
        """Optimizer state and step (the data position), loaded without unpickling code."""
        path = self._verified_file(step, STATE_FILE)
        try:
            return torch.load(path, weights_only=True)
        except pickle.UnpicklingError as err:
            raise RunDamagedError(f"{path}: refused to unpickle ({pickle_refusal(err)}); the toolkit's {STATE_FILE} "
                                  "holds only tensors and plain data, so this file was not written by it") from None

    def checkpoint_hash(self, step: int) -> str:
        entry = self._entry(step)
        if WEIGHTS_FILE not in entry:
            raise CheckpointError(f"checkpoint {step} of {self.path} no longer holds weights: the checkpoint policy "
                                  f"kept weights at steps {listing(self.steps)} only")
        return entry[WEIGHTS_FILE]

    def __iter__(self) -> Iterator[tuple[int, TransformerBridge]]:
        for step in self.steps:
            yield step, self.load(step)

    def metrics(self) -> list[dict[str, Any]]:
        """Every logged row of `metrics.jsonl` (each has a `step`).

        A torn last line (a writer killed mid-append) is left out with a warning; a damaged
        line, a log that lacks rows logged before the last checkpoint, or one that logs a step
        twice with different values, raises an error naming the file instead of handing back a
        shortened or mixed curve."""
        path = self.path / METRICS_FILE
        # The manifest first: a checkpoint is listed only after its rows are on disk, so rows read
        # after it cover it even while a writer goes on (read the other way, a checkpoint
        # committed in between would seem to lack its rows).
        steps = self.committed_steps
        rows = read_jsonl(path)
        config = self.config if (self.path / CONFIG_FILE).exists() else None
        check_metrics_log(path, rows, config, steps[-1] if steps else None)
        return rows

    def series(self, key: str, until: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one logged metric (up to step `until` if given)."""
        metrics = self.metrics()
        rows = [r for r in metrics if key in r and (until is None or r["step"] <= until)]
        if not rows:
            keys = sorted({k for r in metrics for k in r} - {"step"})
            raise KeyError(f"metric {key!r} is not in {self.path / METRICS_FILE}; logged: {keys}")
        return np.array([r["step"] for r in rows]), np.array([r[key] for r in rows], dtype=float)

    def inspect(self) -> RunState:
        """What this directory holds and whether it is consistent (`RunState`); reads the
        config, manifest and metrics log and lists the checkpoints, without hashing."""
        path = self.path
        names = {CONFIG_FILE, CHECKPOINTS_DIR, METRICS_FILE, MANIFEST_FILE}
        exists = path.is_dir() and any((path / name).exists() for name in names)
        config: Any = None
        config_error = None
        if not (path / CONFIG_FILE).exists():
            config_error = "missing"
        else:
            try:
                config = self.config
            except RunDamagedError as err:
                config_error = f"unreadable: {err}"
        manifest_error, manifest, shared = None, {}, {}
        try:
            manifest, shared = self.manifest, self.shared_weights()
        except (RunDamagedError, ValueError) as err:
            manifest_error = f"unreadable: {err}"
        steps = sorted(int(s) for s in manifest)
        # The files each committed checkpoint keeps in its own directory (not weights shared with another run).
        own = {step: {name for name in manifest[str(step)] if not (name == WEIGHTS_FILE and step in shared)}
               for step in steps}
        checkpoints = path / CHECKPOINTS_DIR
        entries = sorted(checkpoints.iterdir()) if checkpoints.is_dir() else []
        step_dirs = sorted(int(m.group(1)) for e in entries if (m := _STEP_DIR.fullmatch(e.name)) and e.is_dir())
        leftovers = [e for d in (path, checkpoints, path / PROBES_DIR) if d.is_dir()
                     for e in sorted(d.iterdir()) if is_temporary(e.name)]
        # What a policy released but a kill kept from being deleted: files no committed checkpoint lists.
        released = [f for step in steps if step in step_dirs
                    for f in ([self.checkpoint_dir(step)] if not own[step] else
                              sorted(self.checkpoint_dir(step).iterdir())) if f.name not in own[step]]
        scan = scan_jsonl(path / METRICS_FILE)
        rows = row_problems(scan.rows, config, steps[-1] if steps else None)
        return RunState(path, exists, config_error, manifest_error, steps, step_dirs, scan, leftovers=leftovers,
                        local_steps=[s for s in steps if own[s]], released=released, **rows)

    # --- writing (by the holder of the run's lock) ---
    def save_checkpoint(self, step: int, model: TransformerBridge, state: dict[str, Any],
                        weights_of: CheckpointRef | None = None) -> None:
        """Commit checkpoint `step`: `model`'s weights and the training `state`. With `weights_of`
        (a checkpoint of another run that holds exactly these weights: `init_from`'s), the weights
        are not copied: the manifest lists that checkpoint's hash and where it is."""
        final = self.checkpoint_dir(step)
        names = [STATE_FILE]
        if weights_of is None:
            weights = {k: v.detach().contiguous().cpu() for k, v in model_state_dict(model).items()}
            # A checkpoint is what later analyses trust: one with NaN or infinite weights would
            # load, hash-verify and probe as if it were a trained model.
            bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
            if bad:
                raise NonFiniteError(f"{self.path}: the weights at step {step} are not finite ({', '.join(bad[:3])}"
                                     f"{', ...' if len(bad) > 3 else ''}); the checkpoint was not written")
            names.insert(0, WEIGHTS_FILE)
        tmp = final.with_name(f".tmp_{final.name}.{os.getpid()}.{secrets.token_hex(4)}")
        tmp.mkdir(parents=True)
        try:
            if weights_of is None:
                save_safetensors(weights, tmp / WEIGHTS_FILE, final / WEIGHTS_FILE)
            torch.save(state, tmp / STATE_FILE)
            for name in names:
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
            hashes = {name: sha256_file(tmp / name) for name in names}
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(final.parent)
        manifest = self._read_manifest()
        shared = manifest.get(SHARED_KEY, {})
        shared.pop(str(step), None)
        if weights_of is not None:
            owner = Run(weights_of.run_dir)
            parent_step = owner.last_step() if weights_of.step is None else weights_of.step
            hashes[WEIGHTS_FILE] = owner.checkpoint_hash(parent_step)
            # Relative, so an analysis directory moved or copied as a whole keeps its references.
            relative = os.path.relpath(owner.path.resolve(), self.path.resolve())
            shared[str(step)] = str(CheckpointRef(relative, parent_step))
        manifest["checkpoints"][str(step)] = hashes
        self._write_manifest(manifest["checkpoints"], shared)

    def _write_manifest(self, checkpoints: dict[str, dict[str, str]], shared: dict[str, str]) -> None:
        atomic_write_json(self.path / MANIFEST_FILE, {"checkpoints": checkpoints, **({SHARED_KEY: shared} if shared
                                                                                    else {})})

    def release(self, files: Mapping[int, Collection[str]]) -> None:
        """Drop files of committed checkpoints, by step, as a checkpoint policy decides. The
        manifest stops listing them first and they are deleted after, so a kill in between leaves
        files no checkpoint lists, which the next writer removes (`RunState.released`). A
        checkpoint left with no file keeps its entry (it was committed: the last one says where
        the run got to) and loses its directory. Weights shared with another run stay there."""
        manifest = self._read_manifest()
        checkpoints, shared = manifest["checkpoints"], manifest.get(SHARED_KEY, {})
        doomed: list[Path] = []
        changed = False
        for step, names in files.items():
            entry = checkpoints[str(step)]
            for name in names:
                if entry.pop(name, None) is None:
                    continue
                changed = True
                if not (name == WEIGHTS_FILE and shared.pop(str(step), None) is not None):
                    doomed.append(self.checkpoint_dir(step) / name)
        if changed:
            self._write_manifest(checkpoints, shared)
        for path in doomed:
            path.unlink(missing_ok=True)
        for step in files:
            folder = self.checkpoint_dir(step)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def truncate_metrics(self, after_step: int | None) -> None:
        """Keep only the rows logged up to `after_step` (None: none), each once: rows after the
        last checkpoint are work lost by a kill, redone on resume, and a torn line goes too."""
        rows: list[dict[str, Any]] = []
        kept: dict[int, dict[str, Any]] = {}
        for row in scan_jsonl(self.path / METRICS_FILE).rows:
            step = row.get("step")
            if after_step is None or not isinstance(step, int) or step > after_step or kept.get(step) == row:
                continue
            kept.setdefault(step, row)
            rows.append(row)
        path = self.path / METRICS_FILE
        data = "".join(dumps_json(r, path) + "\n" for r in rows).encode()
        if not path.exists() or path.read_bytes() != data:  # a finished run's log is left untouched
            atomic_write_bytes(path, data)

    def log_metrics(self, rows: list[dict[str, Any]]) -> None:
        append_jsonl(self.path / METRICS_FILE, rows)

    def remove_leftovers(self, state: RunState) -> None:
        """Delete the temporary files and the uncommitted checkpoint directory a killed writer
        left (`state.repairs()`); only the holder of the run's lock may call this."""
        for path in state.leftovers:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if state.residue is not None:
            shutil.rmtree(self.checkpoint_dir(state.residue), ignore_errors=True)
        for path in state.released:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)



def open_checkpoints(path: str | Path, *, cache: str | Path | None = None) -> Run | CheckpointSuite:
    """The checkpoints at `path`: a `Run` for a run directory (it holds a config.json), a
    `CheckpointSuite` for a suite folder (`step<N>` or `checkpoint-<N>` sub-folders saved by
    `transformers`, whose results go to `cache`, default its interp-cache/); what `probe()`,
    `trace()` and the other measurements over checkpoints open a path with."""
    path = Path(path)
    if is_suite_folder(path):
        return open_suite(path, cache=cache)
    if (path / CONFIG_FILE).is_file():
        if cache is not None:
            raise InputError(f"cache: {path} is a run directory, whose results are cached in it; cache is for "
                             "checkpoint suites")
        return Run.open(path)
    what = "no such folder" if not path.exists() else "not a folder" if not path.is_dir() else \
        f"neither a run directory (no {CONFIG_FILE}) nor a checkpoint suite (no step<N> or checkpoint-<N> sub-folder " \
        f"with a {CONFIG_FILE})"
    raise MissingFileError(f"{path}: {what}")
