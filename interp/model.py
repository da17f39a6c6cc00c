"""Model configuration, construction and the forward passes used for training.

A `ModelConfig` becomes a TransformerLens `TransformerBridge` built with
`boot_native`, so every checkpoint is probed with TransformerLens hook names
(`interp.hooks.hook_name`).

Batches are dicts of tensors (see `Batch`). A task may feed continuous vectors
instead of token embeddings at chosen positions (`vectors`, `vector_mask`): they
pass through a learned projection, `model.input_proj`, present when
`ModelConfig.d_input > 0`. The bridge's own `parameters()`/`state_dict()` do not
see modules attached to it, so use `trainable_parameters` and
`model_state_dict`/`load_model_state_dict` from this module.

The training fast path, `fused_forward`, runs the bridge's weights without its hook
wrappers; `interp.bridge` finds them, and is the only module that reads TransformerLens
internals (with a check of the installed version).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge

from interp.bridge import native_parts
from interp.configs import require, require_literals, require_positive
from interp.errors import InterpError
from interp.hooks import hook_name, hook_size_kind

Batch = dict[str, Tensor]
"""Keys: `tokens` [batch, pos] (required); `targets` [batch, pos], the label the
prediction at each position is scored against (default: the next token, -100 at
the last position); `loss_mask` [batch, pos], which predictions count in the loss;
`vectors` [batch, pos, d_input] with `vector_mask` [batch, pos] for continuous
inputs."""

FwdHook = tuple[str, Callable[..., Any]]
Patterns = Sequence[Tensor | None]
"""Per layer, an attention pattern [batch, head, query, key] to use instead of the
model's own, or None to keep it."""

IGNORE_INDEX = -100
Normalization = Literal["LN", "RMS", "none"]
Positional = Literal["standard", "rotary"]
Activation = Literal["gelu", "gelu_new", "relu", "silu"]
InitMode = Literal["gpt2", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"]


@dataclass(frozen=True)
class ModelConfig:
    """Shape and initialization of a small transformer.

    `d_head=0` means `d_model // n_heads`; `d_mlp=0` means `4 * d_model`;
    `d_input > 0` adds a learned projection for continuous input vectors;
    `init_range=0` keeps TransformerLens's default scale for `init`.
    """

    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    d_head: int = 0
    d_mlp: int = 0
    d_vocab: int = 64
    n_ctx: int = 64
    attn_only: bool = False
    activation: Activation = "gelu"
    normalization: Normalization = "LN"
    positional: Positional = "standard"
    init: InitMode = "gpt2"
    init_range: float = 0.0
    d_input: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        require_positive(self, "n_layers", "d_model", "n_heads", "d_vocab", "n_ctx")
        for name in ("d_head", "d_mlp", "d_input"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 0, name, "an integer >= 0", value)
        if self.d_head == 0:
            require(
                self.d_model % self.n_heads == 0,
                "d_model",
                f"a multiple of n_heads={self.n_heads} (or set d_head explicitly)",
                self.d_model,
            )
        require_literals(self)
        require(self.init_range >= 0, "init_range", "a number >= 0", self.init_range)
        if self.positional == "rotary":
            require(self.head_dim % 2 == 0, "d_head", "an even head size for rotary", self.head_dim)

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_heads

    def bridge_config(self) -> TransformerBridgeConfig:
        return TransformerBridgeConfig(
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.head_dim,
            d_mlp=self.d_mlp or 4 * self.d_model,
            d_vocab=self.d_vocab,
            n_ctx=self.n_ctx,
            attn_only=self.attn_only,
            act_fn=self.activation,
            normalization_type=None if self.normalization == "none" else self.normalization,
            positional_embedding_type=self.positional,
            init_mode=self.init,
            initializer_range=self.init_range or -1.0,
            seed=self.seed,
        )


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None`/`"auto"`: CUDA when present, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# --- memory estimate ----------------------------------------------------------

FLOAT_BYTES = 4  # weights, gradients, optimizer state and activations are float32


class InsufficientMemoryError(InterpError, MemoryError):
    """A config needs more memory than the device has available (checked before allocating)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs: float32 `parameters`, what `build_model` holds while it
    initializes (`build`), and for training `optimizer` (gradients plus AdamW's two
    moments) and `activations` (one step at the given batch size)."""

    parameters: int
    build: int
    optimizer: int = 0
    activations: int = 0

    @property
    def total(self) -> int:
        return max(self.build, self.parameters + self.optimizer + self.activations)


def parameter_count(cfg: ModelConfig) -> int:
    """Numbers in the state dict of the model `build_model(cfg)` makes (the trainable
    parameters and the unembedding bias), from the config alone."""
    d_model, d_mlp, inner = cfg.d_model, cfg.d_mlp or 4 * cfg.d_model, cfg.n_heads * cfg.head_dim
    norm = {"LN": 2 * d_model, "RMS": d_model, "none": 0}[cfg.normalization]
    attention = 4 * d_model * inner + 3 * inner + d_model + norm
    mlp = 0 if cfg.attn_only else 2 * d_model * d_mlp + d_mlp + d_model + norm
    embeddings = cfg.d_vocab * d_model + (cfg.n_ctx * d_model if cfg.positional == "standard" else 0)
    unembed = d_model * cfg.d_vocab + cfg.d_vocab
    projection = cfg.d_input * d_model + d_model if cfg.d_input else 0
    return embeddings + cfg.n_layers * (attention + mlp) + norm + unembed + projection


def estimate_memory(cfg: ModelConfig, batch_size: int = 0) -> MemoryEstimate:
    """What building (`batch_size=0`) or training at `batch_size` needs: the peak of a
    training step on the fused path (`fused_forward`), without the process's own baseline
    (python, torch and TransformerLens: about 0.5 GB, already in use when this is checked).

    Measured by `benchmarks/memory_estimate.py`, against the peak resident size of a few
    training steps; the rest of the peak is freed memory the allocator keeps."""
    params = parameter_count(cfg) * FLOAT_BYTES
    # TransformerLens initializes the weights and then copies them into the bridge: about
    # twice the parameters at the peak of `boot_native` (measured: 2.0x at 1 GB of weights).
    build = 2 * params
    if batch_size <= 0:
        return MemoryEstimate(parameters=params, build=build)
    tokens = batch_size * cfg.n_ctx
    inner, d_mlp = cfg.n_heads * cfg.head_dim, 0 if cfg.attn_only else (cfg.d_mlp or 4 * cfg.d_model)
    # Saved for the backward pass, per layer: the residual stream and its normalized copy before
    # attention (and before the MLP), q/k/v and the attention output, the MLP's hidden layer
    # before and after the activation. No attention pattern: scaled_dot_product_attention keeps
    # only a [batch, head, query] log-sum-exp.
    per_layer = 2 * cfg.d_model + 4 * inner + (2 * cfg.d_model + 2 * d_mlp if d_mlp else 0)
    # After the last layer: the final norm's input and output and the log-softmax of the
    # logits; at the start of the backward pass two more logit-sized tensors (the gradients of
    # the log-softmax and of the logits), or of the MLP's hidden layer where that is wider.
    final = 2 * cfg.d_model + cfg.d_vocab + 2 * max(cfg.d_vocab, d_mlp)
    activations = tokens * (cfg.n_layers * per_layer + final) * FLOAT_BYTES
    return MemoryEstimate(parameters=params, build=build, optimizer=3 * params, activations=activations)


@dataclass(frozen=True)
class ForwardEstimate:
    """Bytes a forward pass without gradients needs (a probe's `run_with_cache`): the float32
    `parameters`; `load`, the peak of loading a checkpoint (its state dict beside a model being
    built); the activations `cached` for the hooks asked for; the `transient` peak of the pass
    itself (one layer's intermediates, or the logits and their log-softmax); `kept`, copies
    of the cached activations the caller holds on to (one per checkpoint in
    `collect_activations`); and `own`, what a method allocates beyond one forward pass (a
    circuit method's extra passes, gradients or second model: `Probe.memory`)."""

    parameters: int
    load: int
    cached: int = 0
    transient: int = 0
    kept: int = 0
    largest_hook: str = ""
    own: int = 0

    @property
    def total(self) -> int:
        return max(self.load, self.parameters + self.cached + self.transient + self.kept + self.own)


def hook_numel(cfg: ModelConfig, name: str, batch_size: int, positions: int) -> int:
    """Numbers in the activation the bridge's hook `name` records on a [batch_size, positions]
    batch, from the name alone (for an estimate made before the model is loaded)."""
    tokens = batch_size * positions
    per_token = {"head": cfg.n_heads * cfg.head_dim, "head_result": cfg.n_heads * cfg.d_model,
                 "mlp_hidden": cfg.d_mlp or 4 * cfg.d_model, "vocab": cfg.d_vocab, "per_token": 1,
                 "residual": cfg.d_model}
    kind = hook_size_kind(name)
    if kind == "pattern":
        return batch_size * cfg.n_heads * positions**2
    return tokens * per_token[kind]


def estimate_forward(cfg: ModelConfig, batch_size: int, positions: int, hooks: Iterable[str] = (),
                     kept_copies: int = 0, own: int = 0) -> ForwardEstimate:
    """What one forward pass without gradients through the bridge needs on a [batch_size,
    positions] batch, caching `hooks`, with `kept_copies` copies of the cache kept after it
    and `own` bytes a method allocates beyond the pass; `batch_size=0` estimates loading the
    model alone."""
    params = parameter_count(cfg) * FLOAT_BYTES
    load = params + estimate_memory(cfg).build
    if batch_size <= 0:
        return ForwardEstimate(parameters=params, load=load)
    sizes = {name: hook_numel(cfg, name, batch_size, positions) * FLOAT_BYTES for name in set(hooks)}
    cached = sum(sizes.values())
    tokens = batch_size * positions
    inner, d_mlp = cfg.n_heads * cfg.head_dim, 0 if cfg.attn_only else (cfg.d_mlp or 4 * cfg.d_model)
    # The bridge computes attention explicitly: scores, scaled, masked and softmaxed are four
    # [batch, head, query, key] tensors at once, beside q/k/v/z; the MLP holds its hidden layer
    # before, inside and after the activation; the residual stream and its normalized copy ride along.
    layer = 3 * tokens * cfg.d_model + max(4 * batch_size * cfg.n_heads * positions**2 + 4 * tokens * inner,
                                           3 * tokens * d_mlp)
    logits = 2 * tokens * cfg.d_vocab  # the logits, and the log-softmax a probe of the loss takes
    return ForwardEstimate(parameters=params, load=load, cached=cached,
                           transient=max(layer, logits) * FLOAT_BYTES, kept=kept_copies * cached,
                           largest_hook=max(sizes, key=lambda n: (sizes[n], n)) if sizes else "", own=own)


@dataclass(frozen=True)
class AvailableMemory:
    """Bytes free for new allocations, and what bounds them (named in a refusal)."""

    free: int
    source: str


def available_memory(device: str | torch.device | None = None, root: Path = Path("/")) -> AvailableMemory | None:
    """Memory this process can still allocate on `device`, and its tightest bound; None
    where it cannot be known.

    CPU: the least of the kernel's `MemAvailable` (free pages plus reclaimable cache;
    `SC_AVPHYS_PAGES` where /proc is missing), the headroom under each cgroup memory limit
    (v2 and v1) of this process's cgroup and the cgroups above it, and the headroom under
    `ulimit -v`/`ulimit -d`: a container's, a Slurm job's or a shell's limit counts, not the
    host's memory. `root` is where /proc and /sys are read (a fake tree in tests). CUDA:
    `torch.cuda.mem_get_info`."""
    device = resolve_device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(device)
        return AvailableMemory(int(free), "free CUDA memory")
    if device.type != "cpu":
        return None
    bounds = _cgroup_headroom(root) + _rlimit_headroom(root)
    physical = _meminfo_available(root)
    if physical is None:
        try:
            physical = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            physical = None
    if physical is not None:
        bounds.insert(0, AvailableMemory(physical, "free physical memory (MemAvailable)"))
    return min(bounds, key=lambda bound: bound.free, default=None)


def available_memory_bytes(device: str | torch.device | None = None) -> int | None:
    """`available_memory(device).free`: bytes free for new allocations; None where unknown."""
    available = available_memory(device)
    return None if available is None else available.free


def _meminfo_available(root: Path) -> int | None:
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# cgroup v1 writes "no limit" as LONG_MAX rounded down to a page (9223372036854771712).
_V1_UNLIMITED = 2**62
# Per cgroup version: the files of the limit and the usage, and memory.stat's key for page
# cache the kernel drops before it kills anything (counted in the usage, as `docker stats` does not).
_CGROUP_FILES = {2: ("memory.max", "memory.current", "inactive_file"),
                 1: ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")}


def _cgroup_headroom(root: Path) -> list[AvailableMemory]:
    """`limit - usage` under the memory limit of this process's cgroup (v2: `memory.max`,
    `memory.current`; v1: `memory.limit_in_bytes`, `memory.usage_in_bytes`), the tightest over
    its cgroup and those above it (Slurm limits the job, above the step the process runs in);
    one bound per cgroup version that sets a limit."""
    try:
        membership = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    mounts = _cgroup_mounts(root)
    bounds = []
    for line in membership:
        hierarchy, controllers, group = (line.split(":", 2) + ["", ""])[:3]
        version = 2 if hierarchy == "0" and not controllers else 1 if "memory" in controllers.split(",") else 0
        if not version or version not in mounts:
            continue
        mount_root, mountpoint = mounts[version]
        # The group relative to the mount: a container without its own cgroup namespace mounts its
        # group (`/docker/<id>`) as the mount's root.
        inside = group[len(mount_root):] if group == mount_root or group.startswith(mount_root.rstrip("/") + "/") \
            else ""
        top = root / mountpoint.lstrip("/")
        folder = top / inside.lstrip("/")
        levels = [folder, *(above for above in folder.parents if above == top or top in above.parents)]
        limited = [found for level in levels if (found := _cgroup_level(level, version)) is not None]
        if limited:
            headroom, limit = min(limited)
            bounds.append(AvailableMemory(headroom, f"the cgroup v{version} memory limit of {format_bytes(limit)}"))
    return bounds


def _cgroup_mounts(root: Path) -> dict[int, tuple[str, str]]:
    """Per cgroup version, the (root, mount point) of the hierarchy that holds the memory
    controller, from /proc/self/mountinfo; the usual places where it cannot be read."""
    mounts: dict[int, tuple[str, str]] = {}
    try:
        lines = (root / "proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return {2: ("/", "/sys/fs/cgroup"), 1: ("/", "/sys/fs/cgroup/memory")}
    for line in lines:
        fields = line.split()
        if "-" not in fields or fields.index("-") < 5 or len(fields) < fields.index("-") + 4:
            continue
        dash = fields.index("-")
        fstype, options = fields[dash + 1], fields[dash + 3].split(",")
        if fstype == "cgroup2":
            mounts.setdefault(2, (fields[3], fields[4]))
        elif fstype == "cgroup" and "memory" in options:
            mounts.setdefault(1, (fields[3], fields[4]))
    return mounts


def _cgroup_level(folder: Path, version: int) -> tuple[int, int] | None:
    """(headroom, limit) of one cgroup; None without a limit (or without the files)."""
    limit_file, usage_file, inactive_key = _CGROUP_FILES[version]
    try:
        text = (folder / limit_file).read_text().strip()
        if text == "max" or int(text) >= _V1_UNLIMITED:
            return None
        limit, usage = int(text), int((folder / usage_file).read_text().strip())
    except (OSError, ValueError):
        return None
    inactive = 0
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key:
                inactive = int(value)
    except (OSError, ValueError):
        pass
    return max(0, limit - max(0, usage - inactive)), limit


def _rlimit_headroom(root: Path) -> list[AvailableMemory]:
    """`limit - use` under `ulimit -v` (RLIMIT_AS, against the address space, VmSize) and
    `ulimit -d` (RLIMIT_DATA, against VmData) where set: past them an allocation fails."""
    try:
        status = dict(line.split(":", 1) for line in (root / "proc/self/status").read_text().splitlines()
                      if ":" in line)
    except OSError:
        return []
    bounds = []
    for limit_name, used_key, flag in (("RLIMIT_AS", "VmSize", "-v"), ("RLIMIT_DATA", "VmData", "-d")):
        soft, _hard = resource.getrlimit(getattr(resource, limit_name))
        if soft == resource.RLIM_INFINITY or used_key not in status:
            continue
        try:
            used = int(status[used_key].split()[0]) * 1024
        except (ValueError, IndexError):
            continue
        bounds.append(AvailableMemory(max(0, soft - used), f"ulimit {flag} ({limit_name}) of {format_bytes(soft)}"))
    return bounds


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def check_memory(cfg: ModelConfig, device: str | torch.device | None = None, batch_size: int = 0) -> None:
    """Raise `InsufficientMemoryError` if building (`batch_size=0`) or training the model at
    `batch_size` needs more than `device` has available; the message names the estimate,
    what is available and its bound, and the sizes that drive it. Nothing is allocated."""
    device = resolve_device(device)
    estimate = estimate_memory(cfg, batch_size)
    available = available_memory(device)
    if available is None or estimate.total <= available.free:
        return
    parts = [f"parameters {format_bytes(estimate.parameters)}"]
    if batch_size > 0:
        parts += [f"gradients and optimizer state {format_bytes(estimate.optimizer)}",
                  f"activations at batch_size={batch_size} {format_bytes(estimate.activations)}"]
    raise InsufficientMemoryError(
        f"model (d_vocab={cfg.d_vocab}, d_model={cfg.d_model}, n_layers={cfg.n_layers}, n_ctx={cfg.n_ctx}) needs "
        f"about {format_bytes(estimate.total)} ({', '.join(parts)}) but {format_bytes(available.free)} is available "
        f"on {device}; reduce {_largest_term(cfg, estimate, batch_size)} (memory bounded by {available.source})")


def _largest_term(cfg: ModelConfig, estimate: MemoryEstimate, batch_size: int) -> str:
    """The sizes behind the largest part of the estimate, to name in the error."""
    embedding = 2 * cfg.d_vocab * cfg.d_model * FLOAT_BYTES
    if estimate.activations > estimate.parameters + estimate.optimizer:
        return f"batch_size={batch_size}, n_ctx={cfg.n_ctx} or d_vocab={cfg.d_vocab}"
    if 2 * embedding >= estimate.parameters:
        return f"d_vocab={cfg.d_vocab} or d_model={cfg.d_model}"
    mlp = "" if cfg.attn_only else f" or d_mlp={cfg.d_mlp or 4 * cfg.d_model}"
    return f"d_model={cfg.d_model}, n_layers={cfg.n_layers}{mlp}"


def check_forward_memory(cfg: ModelConfig, batch: Batch | None, hooks: Iterable[str] = (),
                         device: str | torch.device | None = None, kept_copies: int = 0,
                         own_passes: Mapping[str, int] | None = None) -> None:
    """Raise `InsufficientMemoryError`, before any checkpoint is loaded, if a forward pass
    without gradients on `batch` (None: loading the model alone) caching `hooks` needs more
    than `device` has available (`estimate_forward`); `own_passes` maps each method run on the
    batch (a probe's name) to what it allocates beyond that pass, of which the largest counts
    (the methods run one after another). The message names the estimate, what is available
    and its bound, the batch's shape and the method that does not fit."""
    device = resolve_device(device)
    n_batch, n_pos = (0, 0) if batch is None else batch["tokens"].shape[:2]
    own_by, own = max((own_passes or {}).items(), key=lambda item: (item[1], item[0]), default=("", 0))
    estimate = estimate_forward(cfg, n_batch, n_pos, hooks, kept_copies, own)
    available = available_memory(device)
    if available is None or estimate.total <= available.free:
        return
    model = f"model (d_vocab={cfg.d_vocab}, d_model={cfg.d_model}, n_layers={cfg.n_layers})"
    if estimate.total == estimate.load:  # the checkpoint's load, not the batch, is the peak
        raise InsufficientMemoryError(
            f"loading the {model} needs about {format_bytes(estimate.total)} but {format_bytes(available.free)} is "
            f"available on {device} (memory bounded by {available.source})")
    hooks = set(hooks)
    parts = [f"parameters {format_bytes(estimate.parameters)}"]
    if hooks:
        parts.append(f"{len(hooks)} cached hook(s) {format_bytes(estimate.cached)}, the largest "
                     f"{estimate.largest_hook}")
    parts.append(f"logits or a layer's intermediates {format_bytes(estimate.transient)}")
    if kept_copies:
        parts.append(f"{kept_copies} kept copies of the cache {format_bytes(estimate.kept)}")
    if own:
        parts.append(f"{own_by}'s own passes {format_bytes(own)}")
    what = f"{own_by} on" if own else f"a forward pass of the {model} on"
    raise InsufficientMemoryError(
        f"{what} a batch of {n_batch} sequences x {n_pos} positions needs about "
        f"{format_bytes(estimate.total)} ({', '.join(parts)}) but {format_bytes(available.free)} is available on "
        f"{device}; reduce the batch (memory bounded by {available.source})")


def forward_chunk_rows(cfg: ModelConfig, batch: Batch, hooks: Iterable[str] = (),
                       device: str | torch.device | None = None, kept_copies: int = 1) -> int:
    """Rows of `batch` per forward pass so that each pass, caching `hooks`, fits beside
    `kept_copies` copies of the whole batch's cached activations (what a caller filling them
    chunk by chunk holds): every row where one pass fits. Rows are independent in a forward
    pass, so chunking is exact. `InsufficientMemoryError` where not even one row fits."""
    device = resolve_device(device)
    n_batch, n_pos = batch["tokens"].shape[:2]
    hooks = list(hooks)
    whole = estimate_forward(cfg, n_batch, n_pos, hooks, kept_copies)
    available = available_memory(device)
    if available is None or whole.total <= available.free:
        return n_batch
    one = estimate_forward(cfg, 1, n_pos, hooks)
    # A chunk's cache and intermediates grow with its rows; the parameters and the kept copies do not.
    rows = (available.free - whole.parameters - whole.kept) // (one.cached + one.transient)
    if whole.load > available.free:
        check_forward_memory(cfg, None, device=device)
    if rows < 1:
        raise InsufficientMemoryError(
            f"collecting {len(hooks)} hook(s) on a batch of {n_batch} sequences x {n_pos} positions keeps "
            f"{kept_copies} copies of their activations ({format_bytes(whole.kept)}) beside the parameters "
            f"({format_bytes(whole.parameters)}) and a one-sequence forward pass "
            f"({format_bytes(one.cached + one.transient)}), but {format_bytes(available.free)} is available on "
            f"{device}; reduce the batch or the steps (memory bounded by {available.source})")
    return int(min(rows, n_batch))


def build_model(cfg: ModelConfig, device: str | torch.device | None = None) -> TransformerBridge:
    """A freshly initialized bridge; the caller's global RNG is left untouched.

    Raises `InsufficientMemoryError` before allocating when the weights cannot fit on
    `device` (the machine would otherwise swap until the kernel kills the process)."""
    device = resolve_device(device)
    check_memory(cfg, device)
    model = TransformerBridge.boot_native(cfg.bridge_config(), device=device)
    if cfg.d_input:
        # fork_rng: nn.Linear's default init draws from the global RNG before ours replaces it.
        with torch.random.fork_rng(devices=[]):
            projection = nn.Linear(cfg.d_input, cfg.d_model)
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        with torch.no_grad():
            bound = cfg.d_input**-0.5
            projection.weight.uniform_(-bound, bound, generator=generator)
            projection.bias.zero_()
        model.add_module("input_proj", projection.to(device))
    return model


def named_trainable_parameters(model: TransformerBridge) -> list[tuple[str, nn.Parameter]]:
    """Every trainable parameter under its checkpoint name (`blocks.0.attn.q.weight`, `input_proj.weight`)."""
    names = {id(v): k for k, v in model.state_dict(keep_vars=True).items()}
    named = [(names[id(p)], p) for p in model.parameters()]
    if hasattr(model, "input_proj"):
        named += [(f"input_proj.{k}", p) for k, p in model.input_proj.named_parameters()]
    return named


def trainable_parameters(model: TransformerBridge) -> list[nn.Parameter]:
    return [p for _, p in named_trainable_parameters(model)]


def count_parameters(model: TransformerBridge) -> int:
    return sum(p.numel() for p in trainable_parameters(model))


def model_state_dict(model: TransformerBridge) -> dict[str, Tensor]:
    state = dict(model.state_dict())
    if hasattr(model, "input_proj"):
        state.update({f"input_proj.{k}": v for k, v in model.input_proj.state_dict().items()})
    return state


def load_model_state_dict(model: TransformerBridge, state: dict[str, Tensor]) -> None:
    """Strict load: every key must match, including the input projection."""
    proj = {k.removeprefix("input_proj."): v for k, v in state.items() if k.startswith("input_proj.")}
    rest = {k: v for k, v in state.items() if not k.startswith("input_proj.")}
    has_proj = hasattr(model, "input_proj")
    if bool(proj) != has_proj:
        raise KeyError(f"input_proj weights {'missing' if has_proj else 'unexpected'} in state dict")
    model.load_state_dict(rest, strict=True)
    if has_proj:
        model.input_proj.load_state_dict(proj, strict=True)


# --- forward passes ---------------------------------------------------------


def _embed(model: TransformerBridge, batch: Batch, token_embeddings: Tensor) -> Tensor:
    """Token embeddings with continuous vectors substituted where asked."""
    if "vectors" not in batch:
        return token_embeddings
    if not hasattr(model, "input_proj"):
        raise ValueError("batch has 'vectors' but the model was built with d_input=0")
    projected = model.input_proj(batch["vectors"].to(token_embeddings.dtype))
    return torch.where(batch["vector_mask"].unsqueeze(-1), projected, token_embeddings)


def input_hooks(model: TransformerBridge, batch: Batch) -> list[FwdHook]:
    """Hooks that make a bridge forward read the batch's continuous vectors."""
    if "vectors" not in batch:
        return []
    return [(hook_name("embed"), lambda act, hook: _embed(model, batch, act))]


def fused_forward(
    model: TransformerBridge, batch: Batch, patterns: Patterns | None = None
) -> Float[Tensor, "batch pos vocab"]:
    """Same function as `model(tokens)`, computed on the bridge's own weights with
    fused QKV and `scaled_dot_product_attention` and without hook points.

    This is the training fast path (about 2x the bridge's speed on CPU at small
    widths); `tests/test_model.py` pins it to the bridge's logits for every
    `ModelConfig` variant. `patterns` (per layer, a [batch, head, query, key]
    tensor or None) replace the model's own attention patterns where given, as
    `pattern_hooks(patterns)` on the bridge would (attention-pattern patching).
    """
    return _fused(model, batch, patterns)


def attention_patterns(model: TransformerBridge, batch: Batch) -> list[Float[Tensor, "batch head query key"]]:
    """Every layer's attention pattern on `batch` (the bridge's `hook_pattern`
    values), from one fused forward pass without gradients."""
    recorded: list[Tensor] = []
    with torch.no_grad():
        _fused(model, batch, record=recorded)
    return recorded


def _fused(model: TransformerBridge, batch: Batch, patterns: Patterns | None = None,
           record: list[Tensor] | None = None) -> Tensor:
    parts = native_parts(model)
    tokens = batch["tokens"]
    n_batch, n_pos = tokens.shape
    h = _embed(model, batch, parts.embed(tokens))
    if parts.pos is not None:
        h = h + parts.pos.weight[:n_pos]
    for layer, block in enumerate(parts.blocks):
        attn = block.attn
        x = block.ln1(h)
        weight = torch.cat([attn.q.weight, attn.k.weight, attn.v.weight])
        bias = torch.cat([attn.q.bias, attn.k.bias, attn.v.bias])
        qkv = F.linear(x, weight, bias).view(n_batch, n_pos, 3, parts.n_heads, parts.d_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if attn.rope is not None:
            q, k = attn.rope(q, k)
        if patterns is not None and patterns[layer] is not None:
            z = patterns[layer].to(v.dtype) @ v
        elif record is not None:
            scores = (q @ k.transpose(-1, -2)) / attn.scale
            causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=scores.device).tril()
            record.append(scores.masked_fill(~causal, float("-inf")).softmax(dim=-1))
            z = record[-1] @ v
        else:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / attn.scale)
        h = h + attn.o(z.transpose(1, 2).reshape(n_batch, n_pos, -1))
        if block.mlp is not None:
            h = h + block.mlp.fc_out(block.mlp.act(block.mlp.fc_in(block.mlp.ln(h))))
    return parts.unembed(parts.ln_final(h))


def pattern_hooks(patterns: Patterns) -> list[FwdHook]:
    """Bridge hooks that replace each layer's attention pattern with the given one (None: keep)."""
    return [(hook_name("pattern", layer), lambda pattern, hook, fixed=fixed: fixed.to(pattern.dtype))
            for layer, fixed in enumerate(patterns) if fixed is not None]


def forward(
    model: TransformerBridge, batch: Batch, fwd_hooks: Sequence[FwdHook] = (), patterns: Patterns | None = None
) -> Float[Tensor, "batch pos vocab"]:
    """Logits for a batch: the fused path when no hooks are needed, else the bridge;
    `patterns` as in `fused_forward`."""
    if not fwd_hooks:
        return fused_forward(model, batch, patterns)
    hooks = list(fwd_hooks) + input_hooks(model, batch) + (pattern_hooks(patterns) if patterns else [])
    return model.run_with_hooks(batch["tokens"], fwd_hooks=hooks)


def targets_of(batch: Batch) -> Int[Tensor, "batch pos"]:
    if "targets" in batch:
        return batch["targets"]
    tokens = batch["tokens"]
    pad = torch.full_like(tokens[:, :1], IGNORE_INDEX)
    return torch.cat([tokens[:, 1:], pad], dim=1)


def token_losses(logits: Float[Tensor, "batch pos vocab"], batch: Batch) -> Float[Tensor, "batch pos"]:
    """Cross-entropy of each position's prediction; 0 where there is no target."""
    targets = targets_of(batch)
    losses = F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return losses.view(targets.shape)


def scored_positions(batch: Batch) -> Bool[Tensor, "batch pos"]:
    """Positions whose prediction counts: a target exists and the loss mask allows it."""
    mask = targets_of(batch) != IGNORE_INDEX
    if "loss_mask" in batch:
        mask = mask & batch["loss_mask"].bool()
    return mask


def trim_padding(batch: Batch) -> Batch:
    """`batch` without the trailing positions after its last scored prediction and
    that prediction's target. A causal model's loss on the batch is unchanged, and a
    step costs less when most sequences are shorter than the padded width."""
    scored = scored_positions(batch).any(dim=0).nonzero()
    width = batch["tokens"].shape[1]
    keep = min(int(scored.max()) + 2, width) if len(scored) else width
    if keep == width:
        return batch
    return {key: value[:, :keep] if value.dim() >= 2 and value.shape[1] == width else value
            for key, value in batch.items()}


def masked_mean_loss(logits: Float[Tensor, "batch pos vocab"], batch: Batch) -> Tensor:
    """Mean cross-entropy over the scored positions of the batch."""
    mask = scored_positions(batch)
    if not mask.any():
        raise ValueError("batch has no scored positions: loss_mask and targets leave nothing to score")
    return token_losses(logits, batch)[mask].mean()


def batch_to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) for k, v in batch.items()}
