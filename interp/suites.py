"""Checkpoint suites in Hugging Face format (Pythia-style revisions) as checkpoint sources.

`open_suite` gives a run-like view, a `CheckpointSuite`, of a model's training checkpoints saved
by `transformers`: the `step<N>` revisions of a model on the Hugging Face hub (Pythia's naming),
a local folder that holds one `save_pretrained` sub-folder per checkpoint, named `step<N>` or
`checkpoint-<N>` (`interp.suite_layouts`), or any local folders given with their steps
(`open_suite(folders={0: "init", 500: "later"})`).

A name that exists is a folder; one that does not is "no such folder" at once when it looks
like a path (absolute, starting with `.` or `~`, a bare name, more than one `/`, or a parent
folder that exists), and a hub model id (`owner/name`) otherwise, or whenever `hub=True`.

A suite is an `interp.checkpoints.CheckpointSource`, as a `Run` is, so `probe()` (circuit,
linear or any other probes) and `interp probe`/`plot`/`info` take either
(`interp.checkpoints.open_checkpoints` opens a path as whichever it is). Probe results are
cached under `CheckpointSuite.path` (written under its lock as a run's are), keyed by the
checkpoint's identity: `model@revision` for a hub suite, the sha256 of its config and weight
files for local folders; a local suite's cache folder is found by content, so a moved or copied
suite finds its results (`interp.suite_cache`). `verify` checks a local suite's weight files
without building a model (`interp.suite_verify`).

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
from interp.errors import first_line, listing
from interp.suite_cache import ContentKeyedCache, default_cache, folder_cache_root, hub_cache_folder
from interp.suite_layouts import (
    HF_CONFIG_FILE,
    STEP_NAME,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILES,
    TRAINER_STATE_FILE,
    SuiteError,
    chosen_step_folders,
    read_config,
    require_weights,
    trainer_log,
)
from interp.suite_verify import SuiteVerification, check_weight_files, verify_step_folders

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge

SAVE_METADATA_KEYS = frozenset({"_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash"})
"""config.json keys that say how a checkpoint was saved, not which model it is."""
PYTHIA_PREFIX = "EleutherAI/pythia"
HUB_PREFIX = "hf:"
"""On the command line, a suite name that starts with this is a hub model id (`hf:EleutherAI/pythia-70m`)."""
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


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
                _refuse_auto_map(read_config(path), str(path))


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
        # A hub suite's cache is named by its model; a local one's is found by content when first needed.
        self._hub_cache = None if self._step_dirs is not None else hub_cache_folder(cache, source)
        self._content = None if self._step_dirs is None else ContentKeyedCache(cache, source, self._step_dirs)
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
        checkpoints' results, found by content (`ContentKeyedCache`: may hash a moved copy's files once)."""
        return self._hub_cache if self._content is None else self._content.path

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
            raise SuiteError(f"{self._where(step)}: its config does not load ({first_line(err)})") from err
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
                raise SuiteError(f"{where}: its config does not load ({first_line(err)})") from err
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
            raise SuiteError(f"{location}: the tokenizer does not load ({first_line(err)})") from err

    def verify(self) -> SuiteVerification:
        """What is wrong with a local suite's checkpoints, one line each, without loading a model:
        every weight file must read (`interp.suite_verify.weight_file_problem`: safetensors
        headers, `.bin` pickles unpickled as tensors only, sharded indexes whose shards all exist),
        and each config and weight file is hashed again: one whose content no longer matches the
        hash remembered for its size and mtime is named (its cached results would be keyed by the
        old content if its ctime and inode were not checked too). Files in weight formats not
        loaded here are listed as unchecked. A hub suite: nothing to check."""
        if self._step_dirs is None:
            return SuiteVerification([], [])
        return verify_step_folders(self._step_dirs, self._content)

    def metrics(self) -> list[dict[str, Any]]:
        """The training log where `transformers.Trainer` left one (`trainer_state.json` of the
        last checkpoint that has it: its `log_history`), one row per logged step named as a run's
        are (`train/loss`, `lr`, `grad_norm`, `eval/loss`); otherwise none."""
        states = [d / TRAINER_STATE_FILE for d in (self._step_dirs or {}).values()
                  if (d / TRAINER_STATE_FILE).is_file()]
        return trainer_log(states[-1]) if states else []

    # --- the cache of results ---
    def checkpoint_hash(self, step: int) -> str:
        """The checkpoint's identity, which keys its cached probe results: `model@revision` for
        a hub suite, the sha256 of the step folder's config and weight files for a local one."""
        revision = self.revision(step)
        if self._content is None:
            return f"{self.source}@{revision}"
        return self._content.checkpoint_hash(step)

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
            check_weight_files(self.step_dir(step))
        self._refuse_hub_remote_code(step)
        if into is not None:
            _release_weights(into)  # before the next checkpoint loads: one model in memory, not two
        location, kwargs = self._pretrained_args(step)
        try:
            hf_model = _from_pretrained(location, attn_implementation="eager", dtype=self.dtype, **kwargs)
        except Exception as err:  # noqa: BLE001 - transformers raises OSError, ValueError, RuntimeError, SafetensorError...
            raise SuiteError(f"{where}: the checkpoint does not load ({type(err).__name__}: {first_line(err)})"
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
                             f"({type(err).__name__}: {first_line(err)})") from err


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
    chosen = chosen_step_folders(folder, requested)
    root = Path(cache) if cache is not None else folder_cache_root(folder)
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
    configs = {step: read_config(path / HF_CONFIG_FILE) for step, path in step_dirs.items()}
    first = next(iter(step_dirs))
    for step, config in configs.items():
        _check_same_model(config, str(step_dirs[step] / HF_CONFIG_FILE), configs[first],
                          str(step_dirs[first] / HF_CONFIG_FILE))
    _refuse_remote_code([*([folder] if folder is not None else []), *step_dirs.values()])
    for path in step_dirs.values():
        require_weights(path)
    return CheckpointSuite(source, revisions, cache, folder=folder, step_dirs=step_dirs, dtype=dtype)


__all__ = ["HUB_PREFIX", "CheckpointSuite", "SuiteError", "SuiteModelConfig", "open_suite"]
