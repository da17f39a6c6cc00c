"""Checkpoint suites in Hugging Face format (Pythia-style revisions) as checkpoint sources.

`open_suite` gives a run-like view, a `CheckpointSuite`, of a model's training checkpoints saved
by `transformers`: the `step<N>` revisions of a model on the Hugging Face hub (Pythia's naming),
or a local folder that holds one `save_pretrained` sub-folder per checkpoint:

    suite/
      step0/     config.json  model.safetensors   one folder per checkpoint, named step<N>
      step1000/  ...
      tokenizer.json ...                          optional: a tokenizer here or in the step folders
      interp-cache/<suite id>/probes/*.jsonl      probe results (the default cache of a folder)

A suite is an `interp.checkpoints.CheckpointSource`, as a `Run` is, so `probe()` (circuit,
linear or any other probes) and `interp probe`/`plot`/`info` take either. Probe results are cached under
`cache/<suite id>/` (`CheckpointSuite.path`, written under its lock as a run's are), keyed by
the checkpoint's identity: for a hub suite the model and revision
(`EleutherAI/pythia-70m@step1000`: a published revision does not change), for a folder the
sha256 of each step's config and weight files (a user's own run may be saved again), remembered
with each file's size, mtime, ctime and inode so that re-probing a finished suite hashes nothing;
a file whose ctime moved (every write moves it, and `touch`/`os.utime` cannot set it back) is
hashed again, and `verify` re-hashes them all.

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
import os
import re
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from interp.devices import resolve_device
from interp.errors import listing
from interp.files import atomic_write_json, loads_json, sha256_file
from interp.locking import RunInUseError, run_lock
from interp.run_layout import CheckpointError

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge

STEP_NAME = re.compile(r"step(\d+)")
"""A checkpoint's sub-folder or hub revision: `step<N>`, N its training step (Pythia's naming)."""
DEFAULT_CACHE = "interp-cache"
"""The cache of a folder's probe results when `open_suite` is given none: `<folder>/interp-cache`."""
HASHES_FILE = "weight_hashes.json"
"""Under a folder suite's `path`: the sha256 of each checkpoint file, by its `FILE_IDENTITY`."""
FILE_IDENTITY = ("size", "mtime_ns", "ctime_ns", "inode")
"""What a remembered hash is trusted by: any change (a write moves ctime even when mtime is set
back, a replacement changes the inode) hashes the file again."""
HF_CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILES = ("tokenizer.json", TOKENIZER_CONFIG_FILE, "vocab.json", "tokenizer.model", "vocab.txt")
SAVE_METADATA_KEYS = frozenset({"_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash"})
"""config.json keys that say how a checkpoint was saved, not which model it is."""
PYTHIA_PREFIX = "EleutherAI/pythia"
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


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
    """The checkpoints of one model in Hugging Face format: a hub model's `step<N>` revisions
    or a folder of `step<N>` sub-folders (see the module docstring). Open with `open_suite`.

    >>> suite = open_suite("suite/")               # or open_suite("EleutherAI/pythia-70m", steps=[0, 1000])
    >>> suite.steps, suite.model_config            # [0, 1000, ...], SuiteModelConfig(...)
    >>> model = None
    >>> for step in suite.steps:
    ...     model = suite.load(step, into=model)   # one model in memory for the whole walk
    """

    def __init__(self, source: str, revisions: Mapping[int, str], path: Path, *, folder: Path | None,
                 dtype: torch.dtype = torch.float32):
        self.source = source
        """The hub model id, or the folder as given."""
        self.folder = folder
        """The suite's folder; None for a hub suite."""
        self.path = path
        """The directory of this suite's cached results (probes/, figures/): `cache/<suite id>`."""
        self.dtype = dtype
        self._revisions = dict(sorted(revisions.items()))
        self._hashes: dict[str, dict[str, Any]] | None = None
        self._tokenizer: Any | None = None
        self._tokenizer_read = False
        self._hf_config: Any | None = None
        self._loaded_config: tuple[dict[str, Any], str] | None = None
        self._hub_revisions_checked: set[str] = set()
        self._models: weakref.WeakSet[nn.Module] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"CheckpointSuite({self.source!r}, steps={len(self._revisions)})"

    # --- what the suite holds ---
    @property
    def steps(self) -> list[int]:
        return list(self._revisions)

    def revision(self, step: int) -> str:
        """The checkpoint's sub-folder or hub revision, e.g. `step1000`."""
        try:
            return self._revisions[step]
        except KeyError:
            raise SuiteError(f"{self.source}: no checkpoint at step {step}; available steps: "
                             f"{listing(self.steps, 8)}") from None

    def _where(self, step: int) -> str:
        """The checkpoint, as an error names it: its folder, or `model@revision`."""
        revision = self.revision(step)
        return str(self.folder / revision) if self.folder is not None else f"{self.source}@{revision}"

    def _pretrained_args(self, step: int) -> tuple[str, dict[str, Any]]:
        """(location, keyword arguments) of `from_pretrained` for the checkpoint at `step`."""
        revision = self.revision(step)
        if self.folder is not None:
            return str(self.folder / revision), {"local_files_only": True}  # a folder: never the hub
        return self.source, {"revision": revision}

    def _refuse_hub_remote_code(self, step: int) -> None:
        """A hub revision's config, once downloaded and before any config or model is built from
        it, is refused if it asks for the checkpoint's own code (a folder's is checked when opened)."""
        revision = self.revision(step)
        if self.folder is not None or revision in self._hub_revisions_checked:
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

        if self.folder is None:
            location, kwargs = self._pretrained_args(self.steps[0])
        else:
            candidates = [self.folder, *(self.folder / r for r in self._revisions.values())]
            found = next((c for c in candidates if any((c / f).is_file() for f in TOKENIZER_FILES)), None)
            if found is None:
                return None
            location, kwargs = str(found), {"local_files_only": True}
        try:
            return AutoTokenizer.from_pretrained(location, trust_remote_code=False, **kwargs)
        except (OSError, ValueError, TypeError) as err:
            raise SuiteError(f"{location}: the tokenizer does not load ({_first_line(err)})") from err

    def verify(self) -> list[str]:
        """What is wrong with a folder's checkpoints, one line each, without loading them: each
        step folder must hold weights whose safetensors headers read, and each config and weight
        file is hashed again: one whose content no longer matches the hash remembered for its
        size and mtime is named (its cached results would be keyed by the old content if its
        ctime and inode were not checked too). A hub suite: nothing to check."""
        failures = []
        memo = self._file_hashes() if self.folder is not None else {}
        for step in self.steps if self.folder is not None else []:
            folder = Path(self._where(step))
            try:
                _check_weight_files(folder)
            except SuiteError as err:
                failures.append(str(err))
                continue
            for file in self._identity_files(folder):
                known = memo.get(file.relative_to(self.folder).as_posix())
                if not file.is_file():
                    failures.append(f"{file} is missing")
                    continue
                stat = file.stat()
                if known and (known["size"], known["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns) \
                        and sha256_file(file) != known["sha256"]:
                    failures.append(f"{file}: its content changed since it was hashed, though its size and mtime "
                                    f"did not (cached results of step {step} are computed again)")
        return failures

    def metrics(self) -> list[dict[str, Any]]:
        """None: a suite comes without the training log a run keeps."""
        return []

    # --- the cache of results ---
    def checkpoint_hash(self, step: int) -> str:
        """The checkpoint's identity, which keys its cached probe results: `model@revision` for
        a hub suite, the sha256 of the step folder's config and weight files for a folder."""
        revision = self.revision(step)
        if self.folder is None:
            return f"{self.source}@{revision}"
        folder = self.folder / revision
        memo = self._file_hashes()
        changed = False
        parts = []
        for file in self._identity_files(folder):
            key = file.relative_to(self.folder).as_posix()
            try:
                stat = file.stat()
            except FileNotFoundError:
                raise SuiteError(f"{file} is missing") from None
            identity = _file_identity(stat)
            known = memo.get(key)
            if known and all(known[k] == identity[k] for k in FILE_IDENTITY):
                digest = known["sha256"]
            else:
                digest = sha256_file(file)
                memo[key] = {**identity, "sha256": digest}
                changed = True
            parts.append(f"{file.name} {digest}")
        if changed:
            self._save_file_hashes()
        return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()

    @staticmethod
    def _identity_files(folder: Path) -> list[Path]:
        """The files whose content is a step's identity: its config and weights."""
        return [folder / HF_CONFIG_FILE, *weight_files(folder)]

    def _file_hashes(self) -> dict[str, dict[str, Any]]:
        if self._hashes is None:
            self._hashes = {}
            path = self.path / HASHES_FILE
            try:
                stored = loads_json(path.read_bytes()) if path.exists() else {}
            except (ValueError, UnicodeDecodeError):
                stored = {}  # a damaged memo costs a re-hash, never an error
            files = stored.get("files") if isinstance(stored, dict) else None
            for key, entry in (files or {}).items():
                if isinstance(entry, dict) and isinstance(entry.get("sha256"), str) \
                        and all(isinstance(entry.get(k), int) for k in FILE_IDENTITY):
                    self._hashes[key] = entry  # an entry of an older memo, without ctime and inode, is hashed again
        return self._hashes

    def _save_file_hashes(self) -> None:
        try:
            with run_lock(self.path):
                atomic_write_json(self.path / HASHES_FILE, {"files": self._file_hashes()})
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
        if self.folder is not None:
            _check_weight_files(self.folder / self.revision(step))
        self._refuse_hub_remote_code(step)
        if into is not None:
            _release_weights(into)  # before the next checkpoint loads: one model in memory, not two
        location, kwargs = self._pretrained_args(step)
        try:
            hf_model = _from_pretrained(location, attn_implementation="eager", dtype=self.dtype, **kwargs)
        except Exception as err:  # noqa: BLE001 - transformers raises OSError, ValueError, RuntimeError, SafetensorError...
            raise SuiteError(f"{where}: the checkpoint does not load ({type(err).__name__}: {_first_line(err)})"
                             ) from err
        if self.folder is None:  # a folder's configs were compared when it was opened
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


def _require_weights(folder: Path) -> list[Path]:
    files = weight_files(folder)
    if not files:
        raise SuiteError(f"{folder} holds no weights (expected model.safetensors, sharded *.safetensors with their "
                         "index, or pytorch_model.bin)")
    return files


def _check_weight_files(folder: Path) -> None:
    """A step folder's weights are present and each safetensors header reads: a truncated or
    overwritten file is named here, instead of somewhere in a `transformers` traceback. (A
    folder has no manifest: changed bytes in a well-formed file are another checkpoint.)"""
    from safetensors import safe_open

    for file in _require_weights(folder):
        if file.name.endswith(".safetensors"):
            try:
                with safe_open(file, framework="pt") as weights:
                    weights.keys()
            except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError
                raise SuiteError(f"{file} is not a readable safetensors file ({_first_line(err)})") from None


def step_folders(folder: Path) -> dict[int, str]:
    """The `step<N>` sub-folders of a suite folder, by step (other entries are ignored)."""
    found: dict[int, str] = {}
    for entry in sorted(folder.iterdir()):
        match = STEP_NAME.fullmatch(entry.name)
        if not (match and entry.is_dir()):
            continue
        step = int(match.group(1))
        if step in found:
            raise SuiteError(f"{folder}: {found[step]} and {entry.name} both hold step {step}")
        found[step] = entry.name
    return dict(sorted(found.items()))


def is_suite_folder(path: Path) -> bool:
    """Whether `path` is a folder with at least one `step<N>` sub-folder holding a config.json."""
    return path.is_dir() and any(STEP_NAME.fullmatch(e.name) and (e / HF_CONFIG_FILE).is_file()
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
        bad = [s for s in steps if not isinstance(s, int) or isinstance(s, bool) or s < 0]
        if bad:
            raise SuiteError(f"steps: expected integers >= 0, got {bad}")
        return {s: f"step{s}" for s in steps}
    return None


def default_cache() -> Path:
    """Where a hub suite's results are cached by default: `$XDG_CACHE_HOME/interp/suites`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "interp" / "suites"


def open_suite(name_or_path: str | Path, *, steps: Sequence[int] | None = None,
               revisions: Sequence[str] | None = None, cache: str | Path | None = None,
               dtype: torch.dtype = torch.float32) -> CheckpointSuite:
    """A model's checkpoints in Hugging Face format, as a checkpoint source for `probe()`.

    `name_or_path` is a folder with one `save_pretrained` sub-folder per checkpoint, named
    `step<N>` (read offline: nothing is downloaded), or, when no such path exists, a hub model
    id whose revisions are named `step<N>`, as Pythia's are. `steps` (or `revisions`, the
    `step<N>` names) chooses checkpoints: default all of a folder's; a hub suite needs them
    except for Pythia, whose published schedule (0, 1, 2, 4, ..., 512, 1000, 2000, ...,
    143000) TransformerLens knows. Nothing is loaded until asked for.

    Probe results are cached under `cache/<suite id>` (`CheckpointSuite.path`); `cache`
    defaults to `<folder>/interp-cache` for a folder and to `default_cache()` for a hub model.
    """
    requested = _requested(steps, revisions)
    path = Path(name_or_path)
    local = isinstance(name_or_path, Path) or path.exists() or not _HUB_ID.fullmatch(str(name_or_path))
    if local:
        return _open_folder(path, requested, cache, dtype)
    repo = str(name_or_path)
    if requested is None:
        if not repo.startswith(PYTHIA_PREFIX):
            raise SuiteError(f"steps: {repo} is not a Pythia model, whose revisions TransformerLens knows; give "
                             "steps=[...] or revisions=['step<N>', ...]")
        from transformer_lens.tools.model_registry.checkpoints import PYTHIA_CHECKPOINTS, PYTHIA_V0_CHECKPOINTS

        schedule = PYTHIA_V0_CHECKPOINTS if "v0" in repo else PYTHIA_CHECKPOINTS
        requested = {s: f"step{s}" for s in schedule}
    root = Path(cache) if cache is not None else default_cache()
    return CheckpointSuite(repo, requested, root / repo.replace("/", "--"), folder=None, dtype=dtype)


def _open_folder(folder: Path, requested: dict[int, str] | None, cache: str | Path | None,
                 dtype: torch.dtype) -> CheckpointSuite:
    if not folder.exists():
        raise SuiteError(f"{folder}: no such folder (a suite folder holds one save_pretrained sub-folder per "
                         "checkpoint, named step<N>)")
    if not folder.is_dir():
        raise SuiteError(f"{folder} is not a folder (a suite folder holds one sub-folder per checkpoint, named "
                         "step<N>)")
    available = step_folders(folder)
    if not available:
        raise SuiteError(f"{folder} holds no step<N> sub-folders (one save_pretrained folder per checkpoint, e.g. "
                         f"{folder / 'step1000'})")
    if requested is not None:
        missing = [r for s, r in requested.items() if s not in available]
        if missing:
            raise SuiteError(f"{folder}: no checkpoint {', '.join(missing)} (no sub-folder {folder / missing[0]}); "
                             f"available steps: {listing(list(available), 8)}")
    chosen = {s: available[s] for s in sorted(available if requested is None else requested)}
    configs = {step: _read_config(folder / name / HF_CONFIG_FILE) for step, name in chosen.items()}
    first = next(iter(chosen))
    for step, config in configs.items():
        _check_same_model(config, str(folder / chosen[step] / HF_CONFIG_FILE), configs[first],
                          str(folder / chosen[first] / HF_CONFIG_FILE))
    _refuse_remote_code([folder, *(folder / name for name in chosen.values())])
    for name in chosen.values():
        _require_weights(folder / name)
    root = Path(cache) if cache is not None else folder / DEFAULT_CACHE
    ident = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:8]
    return CheckpointSuite(str(folder), chosen, root / f"{folder.resolve().name}-{ident}", folder=folder, dtype=dtype)


__all__ = ["CheckpointSuite", "SuiteError", "SuiteModelConfig", "is_suite_folder", "open_suite", "step_folders",
           "weight_files", "default_cache"]
