"""Checkpoint suites in Hugging Face format (Pythia-style revisions) as checkpoint sources.

`open_suite` gives a run-like view, a `CheckpointSuite`, of a model's training checkpoints saved
by `transformers`: the `step<N>` revisions of a model on the Hugging Face hub (Pythia's naming),
a local folder that holds one `save_pretrained` sub-folder per checkpoint, or any local folders
given with their steps (`open_suite(folders={0: "init", 500: "later"})`):

    suite/
      step0/     config.json  model.safetensors   one folder per checkpoint, named step<N>, or
      step1000/  ...                              checkpoint-<N> as transformers.Trainer writes
                                                  them (its optimizer.pt, rng_state.pth,
                                                  training_args.bin ... are never loaded; its
                                                  trainer_state.json gives the loss curve)
      tokenizer.json ...                          optional: a tokenizer here or in the step folders
      interp-cache/<name>/probes/*.jsonl          probe results (the default cache of a folder)

A folder names its checkpoints one way: step<N> and checkpoint-<N> side by side are refused.
A name that exists is a folder; one that does not is "no such folder" at once when it looks
like a path (absolute, starting with `.` or `~`, a bare name, more than one `/`, or a parent
folder that exists), and a hub model id (`owner/name`) otherwise, or whenever `hub=True`.

A suite is an `interp.checkpoints.CheckpointSource`, as a `Run` is, so `probe()` (circuit,
linear or any other probes) and `interp probe`/`plot`/`info` take either
(`interp.checkpoints.open_checkpoints` opens a path as whichever it is). Probe results are
cached under `CheckpointSuite.path` (written under its lock as a run's are), keyed by the
checkpoint's identity: for a hub suite the model and revision (`EleutherAI/pythia-70m@step1000`:
a published revision does not change), cached under `cache/<owner>--<name>/`; for local folders
the sha256 of each step's config and weight files (a user's own run may be saved again),
remembered in `weight_hashes.json` with each file's size, mtime, ctime and inode so that
re-probing a finished suite hashes nothing; a file whose ctime moved (every write moves it, and
`touch`/`os.utime` cannot set it back) is hashed again, and `verify` re-hashes them all.

A local suite's cache is found by content, not by path: `weight_hashes.json` also records the
hash of every checkpoint the cache folder has seen, and opening picks the sub-folder of the
cache root that shares the most of the suite's checkpoint hashes (more than half of the fewer
of the two), else starts one named after the folder. The default root is `<folder>/interp-cache`
(it moves with the folder; `default_cache()` where the folder is read-only), so a moved or
copied suite, or one opened from another path under a shared `cache=` root, finds its results:
a copy's files are hashed once (their inodes differ), none is loaded.

Loading is lazy (opening a folder reads its config files only, a hub suite nothing) and keeps
one model in memory: `load(step, into=model)` releases `model`'s weights before the next
checkpoint loads and moves the new weights into the same object, which is how the probe runner
walks checkpoints. A folder is read with `local_files_only=True`: nothing is downloaded.

Models are loaded by `transformers` with eager attention (so `hook_pattern` fires) and wrapped
in a `TransformerBridge` by TransformerLens's `build_bridge_from_module`, the wrapping step of
`TransformerBridge.boot_transformers`, whose logits are the `transformers` model's. Booting is
not used because it looks for a tokenizer on its own, and for a folder without one
`transformers` 5 makes up an empty one instead of failing: here a suite without a tokenizer
gives tokenizer-less models, as runs are.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import pickle
import re
import weakref
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from interp.cache_dirs import is_writable
from interp.devices import resolve_device
from interp.errors import listing
from interp.files import atomic_write_json, loads_json, pickle_refusal, sha256_file
from interp.locking import RunInUseError, run_lock
from interp.run_layout import CheckpointError

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge

STEP_NAME = re.compile(r"step(\d+)")
"""A checkpoint's sub-folder or hub revision: `step<N>`, N its training step (Pythia's naming)."""
TRAINER_NAME = re.compile(r"checkpoint-(\d+)")
"""A checkpoint's sub-folder as `transformers.Trainer(output_dir=...)` writes it: `checkpoint-<N>`."""
FOLDER_NAMINGS = (STEP_NAME, TRAINER_NAME)
"""How a suite folder may name its checkpoints' sub-folders (one naming per folder)."""
TRAINER_STATE_FILE = "trainer_state.json"
"""A Trainer checkpoint's log (JSON): `log_history` holds the logged losses, read by `metrics()`."""
TRAINER_STATE_FILES = re.compile(r"optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|training_args\.bin")
"""A Trainer checkpoint's training state: pickles that are not weights, never loaded nor checked."""
UNCHECKED_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
"""Weights in formats `transformers` does not load here (TensorFlow, Flax, ...): named by `verify`."""
DEFAULT_CACHE = "interp-cache"
"""The cache root of a folder's probe results when `open_suite` is given none: `<folder>/interp-cache`."""
HASHES_FILE = "weight_hashes.json"
"""In a local suite's `path`: the sha256 of each checkpoint file (by `FILE_IDENTITY`) and of each
checkpoint, which is how a moved or copied suite finds this cache folder."""
FILE_IDENTITY = ("size", "mtime_ns", "ctime_ns", "inode")
"""What a remembered hash is trusted by: any change (a write moves ctime even when mtime is set
back, a replacement changes the inode) hashes the file again."""
HF_CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILES = ("tokenizer.json", TOKENIZER_CONFIG_FILE, "vocab.json", "tokenizer.model", "vocab.txt")
SAVE_METADATA_KEYS = frozenset({"_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash"})
"""config.json keys that say how a checkpoint was saved, not which model it is."""
PYTHIA_PREFIX = "EleutherAI/pythia"
HUB_PREFIX = "hf:"
"""On the command line, a suite name that starts with this is a hub model id (`hf:EleutherAI/pythia-70m`)."""
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_TRAINER_LOG_KEYS = {"loss": "train/loss", "learning_rate": "lr", "grad_norm": "grad_norm", "eval_loss": "eval/loss"}
"""Trainer's `log_history` keys, as a run's metrics rows name them."""


class SuiteError(CheckpointError):
    """A checkpoint suite is missing, inconsistent or damaged, or a step is not in it."""


@dataclass(frozen=True)
class SuiteModelConfig:
    """The sizes of a suite's model, as TransformerLens reads them from its Hugging Face config
    (the bridge's `cfg`), and the `transformers` architecture."""

    architecture: str
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    parallel_attn_mlp: bool = False
    """Attention and MLP read the same residual (GPT-NeoX's `use_parallel_residual`)."""
    d_mlp: int = 0
    """The MLP's hidden width (0: unknown, taken as 4 d_model)."""

    # What `interp.model`'s memory estimates read besides the sizes: every suite model has MLPs;
    # LayerNorm and learned positions are assumed, a slight overestimate for RMSNorm or rotary models.
    attn_only = False
    normalization = "LN"
    positional = "standard"
    d_input = 0

    @property
    def head_dim(self) -> int:
        return self.d_head


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def weight_files(folder: Path) -> list[Path]:
    """The files of a `save_pretrained` folder that hold (or index) its weights."""
    return sorted(p for p in folder.iterdir() if p.is_file() and (
        p.name.endswith((".safetensors", ".safetensors.index.json"))
        or (p.name.startswith("pytorch_model") and p.name.endswith((".bin", ".bin.index.json")))))


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = loads_json(path.read_bytes())
    except FileNotFoundError:
        raise SuiteError(f"{path} is missing: {path.parent} is not a save_pretrained folder") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise SuiteError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise SuiteError(f"{path} is not a JSON object")
    return config


def _refuse_auto_map(config: Mapping[str, Any], where: str) -> None:
    """Refuse a config that asks for Python code shipped with the checkpoint (`auto_map`):
    `transformers` would prompt for it, and run it if answered yes. (Every load also passes
    `trust_remote_code=False`, which refuses it without a prompt.)"""
    if "auto_map" in config:
        raise SuiteError(f"{where}: auto_map asks to run Python code shipped with the checkpoint; interp never "
                         "runs a checkpoint's own code (remove auto_map if transformers implements the model)")


def _refuse_remote_code(folders: Sequence[Path]) -> None:
    """Refuse, before anything loads, a folder whose config or tokenizer config has an `auto_map`."""
    for folder in folders:
        for name in (HF_CONFIG_FILE, TOKENIZER_CONFIG_FILE):
            path = folder / name
            if path.is_file():
                _refuse_auto_map(_read_config(path), str(path))


def _hub_config_dict(repo: str, revision: str) -> dict[str, Any]:
    """A hub revision's config.json as downloaded, read as data: no model class is looked up, so
    no code named in it can run."""
    from transformers import PretrainedConfig

    with _quiet_transformers():
        config, _ = PretrainedConfig.get_config_dict(repo, revision=revision)
    return config


def _first_difference(config: Mapping[str, Any], reference: Mapping[str, Any]) -> str | None:
    """The first key (the architecture first) whose value differs, save-metadata keys aside."""
    keys = sorted((set(config) | set(reference)) - SAVE_METADATA_KEYS)
    for key in ["architectures", "model_type", *keys]:
        if config.get(key) != reference.get(key):
            return key
    return None


def _check_same_model(config: Mapping[str, Any], where: str, reference: Mapping[str, Any], reference_where: str
                      ) -> None:
    key = _first_difference(config, reference)
    if key is not None:
        raise SuiteError(f"{where}: {key} is {config.get(key)!r}, but {reference_where} has {reference.get(key)!r}; "
                         "a suite holds the checkpoints of one model (one architecture and size)")


def _named_tensors(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer of `model`'s module tree, by name, shared ones under each name.

    `nn.Module`'s own methods: the bridge's `named_parameters` lists the `transformers` model's
    tensors only, while the bridge also keeps tensors of its own (e.g. GPT-NeoX's fused QKV
    weight split into Q, K and V copies)."""
    named = dict(nn.Module.named_parameters(model, remove_duplicate=False))
    named.update(nn.Module.named_buffers(model, remove_duplicate=False))
    return named


def _release_weights(model: nn.Module) -> None:
    """Drop `model`'s tensors' storage (the objects stay), so the next checkpoint can load
    before the caller lets go of `model`."""
    for tensor in _named_tensors(model).values():
        tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)


def _move_weights(source: nn.Module, target: nn.Module) -> None:
    """Make `target`'s tensors use `source`'s storage (no copy): `target` becomes the model
    `source` is, and `source` can be dropped."""
    new, old = _named_tensors(source), _named_tensors(target)
    if new.keys() != old.keys():
        missing = sorted(old.keys() - new.keys())[:3] or sorted(new.keys() - old.keys())[:3]
        raise SuiteError(f"into: the model has tensors the loaded checkpoint lacks or the other way round "
                         f"(e.g. {missing}); it is not a model of this suite")
    for name, tensor in old.items():
        tensor.data = new[name].data


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No `transformers` progress bar per checkpoint: the probe runner shows one for the walk."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _from_pretrained(location: str, **kwargs: Any) -> nn.Module:
    """`AutoModelForCausalLM.from_pretrained` (one place, so a test can see every load)."""
    from transformers import AutoModelForCausalLM

    with _quiet_transformers():
        return AutoModelForCausalLM.from_pretrained(location, trust_remote_code=False, **kwargs)


class CheckpointSuite:
    """The checkpoints of one model in Hugging Face format: a hub model's `step<N>` revisions,
    a folder of `step<N>` or `checkpoint-<N>` sub-folders, or local folders with their steps
    (see the module docstring). Open with `open_suite`.

    >>> suite = open_suite("suite/")               # or open_suite("EleutherAI/pythia-70m", steps=[0, 1000])
    >>> suite.steps, suite.model_config            # [0, 1000, ...], SuiteModelConfig(...)
    >>> model = None
    >>> for step in suite.steps:
    ...     model = suite.load(step, into=model)   # one model in memory for the whole walk
    """

    def __init__(self, source: str, revisions: Mapping[int, str], cache: Path, *, folder: Path | None = None,
                 step_dirs: Mapping[int, Path] | None = None, dtype: torch.dtype = torch.float32):
        self.source = source
        """The hub model id, or the folder as given (local folders given by step: their common folder)."""
        self.folder = folder
        """The suite's folder; None for a hub suite or folders given by step."""
        self.dtype = dtype
        self._revisions = dict(sorted(revisions.items()))
        self._step_dirs = None if step_dirs is None else dict(sorted(step_dirs.items()))
        self._cache_root = cache
        # A hub suite's cache is named by its model; a local one's is found by content when first needed.
        self._path: Path | None = None if self._local else cache / source.replace("/", "--")
        self._hashes: dict[str, dict[str, Any]] | None = None
        self._recorded: dict[str, str] = {}
        self._tokenizer: Any | None = None
        self._tokenizer_read = False
        self._hf_config: Any | None = None
        self._loaded_config: tuple[dict[str, Any], str] | None = None
        self._hub_revisions_checked: set[str] = set()
        self._models: weakref.WeakSet[nn.Module] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"CheckpointSuite({self.source!r}, steps={len(self._revisions)})"

    @property
    def _local(self) -> bool:
        return self._step_dirs is not None

    @property
    def path(self) -> Path:
        """The directory of this suite's cached results (probes/, figures/): `cache/<owner>--<name>`
        for a hub suite; for a local one the sub-folder of the cache root that holds its
        checkpoints' results, found by content (`_find_cache`: may hash a moved copy's files once)."""
        if self._path is None:
            self._path = self._find_cache()
        return self._path

    @property
    def steps(self) -> list[int]:
        return list(self._revisions)

    def revision(self, step: int) -> str:
        """The checkpoint's sub-folder or hub revision, e.g. `step1000` or `checkpoint-1000` (a
        folder given by step: the folder as given)."""
        try:
            return self._revisions[step]
        except KeyError:
            raise SuiteError(f"{self.source}: no checkpoint at step {step}; available steps: "
                             f"{listing(self.steps, 8)}") from None

    def _where(self, step: int) -> str:
        """The checkpoint, as an error names it: its folder, or `model@revision`."""
        revision = self.revision(step)
        return str(self._step_dirs[step]) if self._step_dirs is not None else f"{self.source}@{revision}"

    def step_dir(self, step: int) -> Path:
        """A local checkpoint's folder (a hub suite has none)."""
        self.revision(step)  # a missing step is named
        if self._step_dirs is None:
            raise SuiteError(f"{self.source} is a hub model: its checkpoints have no local folder")
        return self._step_dirs[step]

    def _pretrained_args(self, step: int) -> tuple[str, dict[str, Any]]:
        """(location, keyword arguments) of `from_pretrained` for the checkpoint at `step`."""
        revision = self.revision(step)
        if self._local:
            return str(self.step_dir(step)), {"local_files_only": True}  # a folder: never the hub
        return self.source, {"revision": revision}

    def _refuse_hub_remote_code(self, step: int) -> None:
        """A hub revision's config, once downloaded and before any config or model is built from
        it, is refused if it asks for the checkpoint's own code (a folder's is checked when opened)."""
        revision = self.revision(step)
        if self._local or revision in self._hub_revisions_checked:
            return
        try:
            config = _hub_config_dict(self.source, revision)
        except (OSError, ValueError) as err:
            raise SuiteError(f"{self._where(step)}: its config does not load ({_first_line(err)})") from err
        _refuse_auto_map(config, f"{self._where(step)} {HF_CONFIG_FILE}")
        self._hub_revisions_checked.add(revision)

    def _transformers_config(self) -> Any:
        if self._hf_config is None:
            from transformers import AutoConfig

            self._refuse_hub_remote_code(self.steps[0])
            location, kwargs = self._pretrained_args(self.steps[0])
            try:
                self._hf_config = AutoConfig.from_pretrained(location, trust_remote_code=False, **kwargs)
            except (OSError, ValueError) as err:
                where = self._where(self.steps[0])
                raise SuiteError(f"{where}: its config does not load ({_first_line(err)})") from err
        return self._hf_config

    @property
    def config(self) -> dict[str, Any]:
        """The model's Hugging Face config (of the first checkpoint; all checkpoints share it)."""
        return self._transformers_config().to_dict()

    @property
    def model_config(self) -> SuiteModelConfig:
        from transformer_lens.model_bridge.sources import build_bridge_config_from_hf

        hf_config = self._transformers_config()
        architecture = self._architecture(hf_config, self.steps[0])
        cfg = build_bridge_config_from_hf(hf_config, architecture, self.source, self.dtype)
        return SuiteModelConfig(architecture, cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_vocab,
                                cfg.n_ctx, bool(getattr(cfg, "parallel_attn_mlp", False)), int(cfg.d_mlp or 0))

    def _architecture(self, hf_config: Any, step: int) -> str:
        architectures = getattr(hf_config, "architectures", None)
        if not architectures:
            raise SuiteError(f"{self._where(step)}: {HF_CONFIG_FILE} names no architecture (expected e.g. "
                             "\"architectures\": [\"GPTNeoXForCausalLM\"])")
        return architectures[0]

    @property
    def tokenizer(self) -> Any | None:
        """The suite's tokenizer (a folder's: in the folder or else in the first step folder
        that has one), or None: then probe batches are token ids, as for runs."""
        if not self._tokenizer_read:
            self._tokenizer = self._read_tokenizer()
            self._tokenizer_read = True
        return self._tokenizer

    def _read_tokenizer(self) -> Any | None:
        from transformers import AutoTokenizer

        if self._step_dirs is None:
            location, kwargs = self._pretrained_args(self.steps[0])
        else:
            candidates = [*([self.folder] if self.folder is not None else []), *self._step_dirs.values()]
            found = next((c for c in candidates if any((c / f).is_file() for f in TOKENIZER_FILES)), None)
            if found is None:
                return None
            location, kwargs = str(found), {"local_files_only": True}
        try:
            return AutoTokenizer.from_pretrained(location, trust_remote_code=False, **kwargs)
        except (OSError, ValueError, TypeError) as err:
            raise SuiteError(f"{location}: the tokenizer does not load ({_first_line(err)})") from err

    def verify(self) -> SuiteVerification:
        """What is wrong with a local suite's checkpoints, one line each, without loading a model:
        every weight file must read (`weight_file_problem`: safetensors headers, `.bin` pickles
        unpickled as tensors only, sharded indexes whose shards all exist), and each config and
        weight file is hashed again: one whose content no longer matches the hash remembered for
        its size and mtime is named (its cached results would be keyed by the old content if its
        ctime and inode were not checked too). Files in weight formats not loaded here are listed
        as unchecked. A hub suite: nothing to check."""
        if self._step_dirs is None:
            return SuiteVerification([], [])
        failures: list[str] = []
        unchecked: list[Path] = []
        memo = self._file_hashes()
        for step, folder in self._step_dirs.items():
            files = weight_files(folder)
            if not files:
                failures.append(_no_weights(folder))
            failures += [problem for file in files if (problem := weight_file_problem(file, deep=True))]
            unchecked += _unchecked_weight_files(folder)
            for file in self._identity_files(step):
                known = memo.get(_memo_key(step, file))
                if not file.is_file():
                    failures.append(f"{file} is missing")
                    continue
                stat = file.stat()
                if known and (known["size"], known["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns) \
                        and sha256_file(file) != known["sha256"]:
                    failures.append(f"{file}: its content changed since it was hashed, though its size and mtime "
                                    f"did not (cached results of step {step} are computed again)")
        return SuiteVerification(list(dict.fromkeys(failures)), unchecked)

    def metrics(self) -> list[dict[str, Any]]:
        """The training log where `transformers.Trainer` left one (`trainer_state.json` of the
        last checkpoint that has it: its `log_history`), one row per logged step named as a run's
        are (`train/loss`, `lr`, `grad_norm`, `eval/loss`); otherwise none."""
        states = [d / TRAINER_STATE_FILE for d in (self._step_dirs or {}).values()
                  if (d / TRAINER_STATE_FILE).is_file()]
        return _trainer_log(states[-1]) if states else []

    # --- the cache of results ---
    def checkpoint_hash(self, step: int) -> str:
        """The checkpoint's identity, which keys its cached probe results: `model@revision` for
        a hub suite, the sha256 of the step folder's config and weight files for a local one."""
        revision = self.revision(step)
        if not self._local:
            return f"{self.source}@{revision}"
        self._file_hashes()
        digest, hashed = self._digest(step)
        if hashed or self._recorded.get(str(step)) != digest:
            self._recorded[str(step)] = digest
            self._save_file_hashes()
        return digest

    def _digest(self, step: int, hash_unknown: bool = True) -> tuple[str | None, bool]:
        """(the checkpoint's hash, whether a file had to be hashed) by the loaded memo; without
        `hash_unknown`, (None, False) where a file's hash is not remembered for its identity."""
        memo = self._hashes if self._hashes is not None else {}
        hashed = False
        parts = []
        for file in self._identity_files(step):
            key = _memo_key(step, file)
            try:
                identity = _file_identity(file.stat())
            except FileNotFoundError:
                raise SuiteError(f"{file} is missing") from None
            known = memo.get(key)
            if known and all(known[k] == identity[k] for k in FILE_IDENTITY):
                digest = known["sha256"]
            elif not hash_unknown:
                return None, False
            else:
                digest = sha256_file(file)
                memo[key] = {**identity, "sha256": digest}
                hashed = True
            parts.append(f"{file.name} {digest}")
        self._hashes = memo
        return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest(), hashed

    def _identity_files(self, step: int) -> list[Path]:
        """The files whose content is a step's identity: its config and weights."""
        folder = self.step_dir(step)
        return [folder / HF_CONFIG_FILE, *weight_files(folder)]

    def _find_cache(self) -> Path:
        """The sub-folder of the cache root for this local suite: among those whose
        `weight_hashes.json` records checkpoint hashes, the one sharing the most with this
        suite's (more than half of the fewer of the two; a re-saved or added checkpoint still
        matches, another suite that shares only its initialization does not); else a new one
        named after the folder. A file whose identity a candidate's memo knows is not hashed,
        so an unmoved suite (or one moved on its file system) hashes nothing."""
        root = self._cache_root
        memos = {d: _read_memo(d) for d in sorted(root.iterdir()) if d.is_dir()} if root.is_dir() else {}
        candidates = {d: memo for d, memo in memos.items() if memo[1]}
        if candidates:
            self._hashes = {}
            for step in self.steps:
                for file in self._identity_files(step):
                    if not file.is_file():
                        continue  # named missing by _digest
                    key, identity = _memo_key(step, file), _file_identity(file.stat())
                    known = [files[key] for files, _ in candidates.values() if key in files]
                    match = next((e for e in known if all(e[k] == identity[k] for k in FILE_IDENTITY)), None)
                    if match is not None:
                        self._hashes[key] = match
            # What the memos know for free first (an unmoved suite, or one with a changed checkpoint,
            # hashes nothing here, and `verify` can still tell a changed file), else hash every checkpoint.
            known = {str(step): digest for step in self.steps if (digest := self._digest(step, False)[0])}
            best = _sharing_most(candidates, known) if known else None
            ours = known if best is not None else {str(step): str(self._digest(step)[0]) for step in self.steps}
            best = best or _sharing_most(candidates, ours)
            if best is not None:
                files, recorded = candidates[best]
                self._hashes = {**files, **self._hashes}
                self._recorded = {**recorded, **ours}
                if (self._hashes, self._recorded) != candidates[best]:
                    self._path = best
                    self._save_file_hashes()
                return best
            self._recorded = ours
        name = Path(self.source).resolve().name or "suite"
        # A folder of this name that records no checkpoints (an interrupted first probe) is taken over.
        taken = {d.name for d, memo in memos.items() if memo[1]} | {p.name for p in root.glob("*") if not p.is_dir()} \
            if root.is_dir() else set()
        candidates_names = itertools.chain([name], (f"{name}-{i}" for i in itertools.count(2)))
        new = root / next(n for n in candidates_names if n not in taken)
        if self._recorded:
            self._path = new
            self._save_file_hashes()
        return new

    def _file_hashes(self) -> dict[str, dict[str, Any]]:
        path = self.path  # found first: finding it may load the memo
        if self._hashes is None:
            self._hashes, self._recorded = _read_memo(path)
        return self._hashes

    def _save_file_hashes(self) -> None:
        try:
            with run_lock(self.path):
                atomic_write_json(self.path / HASHES_FILE, {"files": self._hashes or {}, "checkpoints": self._recorded})
        except RunInUseError:
            pass  # another process writes this cache now; the memo only saves hashing, so the next call stores it

    # --- loading ---
    def load(self, step: int | None = None, device: str | torch.device | None = None,
             into: TransformerBridge | None = None) -> TransformerBridge:
        """The model at `step` (default: the last), in eval mode, on `device` (default: CUDA if
        present).

        `into`, a model this suite loaded, is reused: its weights are released before the
        checkpoint loads and it is returned holding the new ones, so a walk over the suite
        keeps one model in memory. If the checkpoint does not load, `into` is left without
        weights."""
        step = self.steps[-1] if step is None else step
        where = self._where(step)
        if into is not None and into not in self._models:
            raise SuiteError(f"into: expected a model this suite loaded (its weights are replaced in place), got "
                             f"a {type(into).__name__} it did not load")
        if self._local:
            _check_weight_files(self.step_dir(step))
        self._refuse_hub_remote_code(step)
        if into is not None:
            _release_weights(into)  # before the next checkpoint loads: one model in memory, not two
        location, kwargs = self._pretrained_args(step)
        try:
            hf_model = _from_pretrained(location, attn_implementation="eager", dtype=self.dtype, **kwargs)
        except Exception as err:  # noqa: BLE001 - transformers raises OSError, ValueError, RuntimeError, SafetensorError...
            raise SuiteError(f"{where}: the checkpoint does not load ({type(err).__name__}: {_first_line(err)})"
                             ) from err
        if not self._local:  # a folder's configs were compared when it was opened
            config = hf_model.config.to_dict()
            if self._loaded_config is None:
                self._loaded_config = (config, where)
            _check_same_model(config, where, *self._loaded_config)
        hf_model.to(resolve_device(device))
        model = self._wrap(hf_model, step, tokenizer=self.tokenizer if into is None else None)
        if into is None:
            self._models.add(model)
            return model.eval()
        _move_weights(model, into)
        # The wrapper just built is garbage in reference cycles, which only the cyclic collector frees:
        # until then its tensors would keep this checkpoint's storage alive past the next release.
        _release_weights(model)
        return into.eval()

    def _wrap(self, hf_model: nn.Module, step: int, tokenizer: Any | None) -> TransformerBridge:
        from transformer_lens.model_bridge.sources import build_bridge_from_module

        architecture = self._architecture(hf_model.config, step)
        try:
            return build_bridge_from_module(hf_model, architecture, hf_config=hf_model.config, tokenizer=tokenizer,
                                            model_name=self.source)
        except (ValueError, NotImplementedError, KeyError, AttributeError) as err:
            raise SuiteError(f"{self._where(step)}: TransformerLens cannot wrap a {architecture} "
                             f"({type(err).__name__}: {_first_line(err)})") from err



def _file_identity(stat: os.stat_result) -> dict[str, int]:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino}


def _memo_key(step: int, file: Path) -> str:
    """A file's key in `weight_hashes.json`: by step and name, not path, so it holds wherever the suite is."""
    return f"step{step}/{file.name}"


def _sharing_most(candidates: Mapping[Path, tuple[Any, dict[str, str]]], ours: Mapping[str, str]) -> Path | None:
    """The cache folder whose recorded checkpoint hashes share the most with `ours`, if more than
    half of the fewer of the two; None otherwise."""
    def shared(folder: Path) -> int:
        return len(set(ours.values()) & set(candidates[folder][1].values()))

    best = max(candidates, key=shared)
    return best if 2 * shared(best) > min(len(ours), len(candidates[best][1])) else None


def _read_memo(cache: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(file hashes by `_memo_key`, checkpoint hashes by step) of a cache folder's
    `weight_hashes.json`; a missing or damaged memo is empty (it costs a re-hash, never an error)."""
    path = cache / HASHES_FILE
    try:
        stored = loads_json(path.read_bytes()) if path.is_file() else {}
    except (ValueError, UnicodeDecodeError):
        stored = {}
    stored = stored if isinstance(stored, dict) else {}
    files = stored.get("files") if isinstance(stored.get("files"), dict) else {}
    recorded = stored.get("checkpoints") if isinstance(stored.get("checkpoints"), dict) else {}
    # An entry without ctime and inode (an older memo) is hashed again.
    return ({key: entry for key, entry in files.items()
             if isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
             and all(isinstance(entry.get(k), int) for k in FILE_IDENTITY)},
            {step: digest for step, digest in recorded.items() if isinstance(digest, str)})


def _trainer_log(path: Path) -> list[dict[str, Any]]:
    """A Trainer's `log_history` as metrics rows, one per step, finite numbers only."""
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


@dataclass(frozen=True)
class SuiteVerification:
    """What `CheckpointSuite.verify` found: one line per problem, and the weight files in
    formats it cannot check (nor `transformers` load here)."""

    failures: list[str]
    unchecked: list[Path]


def _no_weights(folder: Path) -> str:
    return (f"{folder} holds no weights (expected model.safetensors, sharded *.safetensors with their index, or "
            "pytorch_model.bin)")


def _require_weights(folder: Path) -> list[Path]:
    files = weight_files(folder)
    if not files:
        raise SuiteError(_no_weights(folder))
    return files


def _unchecked_weight_files(folder: Path) -> list[Path]:
    """A step folder's files that look like weights but are in a format not read here (a Trainer's
    optimizer, scheduler and RNG state are not weights: left out)."""
    checked = set(weight_files(folder))
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(UNCHECKED_WEIGHT_SUFFIXES)
                  and p not in checked and not TRAINER_STATE_FILES.fullmatch(p.name))


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
            return f"{file} is not a readable safetensors file ({_first_line(err)})"
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
            return f"{file} is not a readable PyTorch weight file ({type(err).__name__}: {_first_line(err)})"
    return None


def _check_weight_files(folder: Path) -> None:
    """Before a checkpoint loads: its weights are present, each safetensors header reads and each
    index names shards that exist, so a truncated or overwritten file is named here instead of
    somewhere in a `transformers` traceback (which loads a `.bin` with `weights_only=True`)."""
    for file in _require_weights(folder):
        problem = weight_file_problem(file)
        if problem:
            raise SuiteError(problem)


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


def is_suite_folder(path: Path) -> bool:
    """Whether `path` is a folder with a `step<N>` or `checkpoint-<N>` sub-folder holding a config.json."""
    return path.is_dir() and any(any(p.fullmatch(e.name) for p in FOLDER_NAMINGS) and (e / HF_CONFIG_FILE).is_file()
                                 for e in path.iterdir())


def _revision_steps(revisions: Sequence[str]) -> dict[int, str]:
    out: dict[int, str] = {}
    for revision in revisions:
        match = STEP_NAME.fullmatch(revision) if isinstance(revision, str) else None
        if match is None:
            raise SuiteError(f"revisions: expected Pythia-style names step<N> (the step is read from the name), "
                             f"got {revision!r}")
        out[int(match.group(1))] = revision
    return out


def _check_steps(name: str, steps: Sequence[int]) -> None:
    bad = [s for s in steps if not isinstance(s, int) or isinstance(s, bool) or s < 0]
    if bad:
        raise SuiteError(f"{name}: expected integers >= 0, got {bad}")


def _requested(steps: Sequence[int] | None, revisions: Sequence[str] | None) -> dict[int, str] | None:
    """The asked-for checkpoints, by step (None: all)."""
    if steps is not None and revisions is not None:
        raise SuiteError("steps, revisions: give one of them (revisions are named step<N> after their steps)")
    for name, given in (("steps", steps), ("revisions", revisions)):
        if given is not None and len(given) == 0:
            raise SuiteError(f"{name}: expected at least one checkpoint, got none")
    if revisions is not None:
        return _revision_steps(revisions)
    if steps is not None:
        _check_steps("steps", steps)
        return {s: f"step{s}" for s in steps}
    return None


def default_cache() -> Path:
    """Where a hub suite's results are cached by default (and a read-only folder's):
    `$XDG_CACHE_HOME/interp/suites`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "interp" / "suites"


def _looks_local(name: str) -> bool:
    """Whether a name that is no existing path was meant as one: only an `owner/name` whose
    owner is no local folder may be a hub model id."""
    path = Path(name)
    return (path.is_absolute() or name.startswith((".", "~")) or name.count("/") != 1
            or path.parent.expanduser().is_dir() or not _HUB_ID.fullmatch(name))


def open_suite(name_or_path: str | Path | None = None, *, folders: Mapping[int, str | Path] | None = None,
               steps: Sequence[int] | None = None, revisions: Sequence[str] | None = None,
               cache: str | Path | None = None, hub: bool = False, dtype: torch.dtype = torch.float32
               ) -> CheckpointSuite:
    """A model's checkpoints in Hugging Face format, as a checkpoint source for `probe()`.

    `name_or_path` is a folder with one `save_pretrained` sub-folder per checkpoint, named
    `step<N>` or `checkpoint-<N>` (read offline: nothing is downloaded), or a hub model id whose
    revisions are named `step<N>`, as Pythia's are: an `owner/name` that is no existing path and
    does not look like one (see the module docstring; a mistyped path is "no such folder" at
    once), or any id with `hub=True`. `folders` instead gives local `save_pretrained` folders
    by step (`{0: "init", 500: "run/final"}`). `steps` (or `revisions`, the `step<N>` names)
    chooses checkpoints: default all of a folder's; a hub suite needs them except for Pythia,
    whose published schedule (0, 1, 2, 4, ..., 512, 1000, 2000, ..., 143000) TransformerLens
    knows. Nothing is loaded until asked for.

    Probe results are cached under `cache` (`CheckpointSuite.path` is the suite's sub-folder),
    which defaults to `<folder>/interp-cache` for a folder (`default_cache()` where the folder
    is read-only or for `folders`) and to `default_cache()` for a hub model.
    """
    requested = _requested(steps, revisions)
    if folders is not None:
        if name_or_path is not None or requested is not None or hub:
            raise SuiteError("folders: give the folders by step alone (not with a name, steps, revisions or hub)")
        return _open_step_map(folders, cache, dtype)
    if name_or_path is None:
        raise SuiteError("name_or_path: expected a suite folder or a hub model id (or folders={step: folder})")
    name = str(name_or_path)
    if not hub:
        path = Path(name_or_path).expanduser()
        if isinstance(name_or_path, Path) or path.exists() or _looks_local(name):
            return _open_folder(path, requested, cache, dtype)
    elif isinstance(name_or_path, Path) or not _HUB_ID.fullmatch(name):
        raise SuiteError(f"hub: expected a hub model id owner/name, got {name!r}")
    if requested is None:
        if not name.startswith(PYTHIA_PREFIX):
            where = "a hub model" if hub else "no local folder, and as a hub model"
            raise SuiteError(f"steps: {name} is {where} other than Pythia (whose revisions TransformerLens knows) it "
                             "needs steps=[...] or revisions=['step<N>', ...]")
        from transformer_lens.tools.model_registry.checkpoints import PYTHIA_CHECKPOINTS, PYTHIA_V0_CHECKPOINTS

        schedule = PYTHIA_V0_CHECKPOINTS if "v0" in name else PYTHIA_CHECKPOINTS
        requested = {s: f"step{s}" for s in schedule}
    return CheckpointSuite(name, requested, Path(cache) if cache is not None else default_cache(), dtype=dtype)


def _open_folder(folder: Path, requested: dict[int, str] | None, cache: str | Path | None,
                 dtype: torch.dtype) -> CheckpointSuite:
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
    chosen = {s: available[s] for s in sorted(available if requested is None else requested)}
    root = Path(cache) if cache is not None else folder / DEFAULT_CACHE if is_writable(folder) else default_cache()
    return _open_local(str(folder), chosen, {s: folder / name for s, name in chosen.items()}, root, folder, dtype)


def _open_step_map(folders: Mapping[int, str | Path], cache: str | Path | None, dtype: torch.dtype
                   ) -> CheckpointSuite:
    if not isinstance(folders, Mapping) or not folders:
        raise SuiteError("folders: expected a map of steps to save_pretrained folders, e.g. {0: 'init', 500: 'final'}")
    _check_steps("folders", list(folders))
    step_dirs = {step: Path(folders[step]).expanduser() for step in sorted(folders)}
    for step, path in step_dirs.items():
        if not path.is_dir():
            raise SuiteError(f"folders: {path} (step {step}): no such folder")
    common = Path(os.path.commonpath([p.resolve() for p in step_dirs.values()]))
    root = Path(cache) if cache is not None else default_cache()
    return _open_local(str(common), {s: str(p) for s, p in step_dirs.items()}, step_dirs, root, None, dtype)


def _open_local(source: str, revisions: dict[int, str], step_dirs: dict[int, Path], cache: Path,
                folder: Path | None, dtype: torch.dtype) -> CheckpointSuite:
    """A local suite, once every step folder's config is read and compared, none asks for the
    checkpoint's own code, and each holds weights."""
    configs = {step: _read_config(path / HF_CONFIG_FILE) for step, path in step_dirs.items()}
    first = next(iter(step_dirs))
    for step, config in configs.items():
        _check_same_model(config, str(step_dirs[step] / HF_CONFIG_FILE), configs[first],
                          str(step_dirs[first] / HF_CONFIG_FILE))
    _refuse_remote_code([*([folder] if folder is not None else []), *step_dirs.values()])
    for path in step_dirs.values():
        _require_weights(path)
    return CheckpointSuite(source, revisions, cache, folder=folder, step_dirs=step_dirs, dtype=dtype)


__all__ = ["HUB_PREFIX", "CheckpointSuite", "SuiteError", "SuiteModelConfig", "SuiteVerification", "default_cache",
           "is_suite_folder", "open_suite", "step_folders", "weight_file_problem", "weight_files"]
