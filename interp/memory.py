"""Memory before allocation: what a model, a forward pass or a causal method needs, what the
limit that applies allows (physical memory, cgroup v2 and v1, `ulimit`, the GPU), and a
one-line refusal (`InsufficientMemoryError`) naming both before the kernel kills the process.

Estimates read only a model's sizes (`ModelDimensions`), so this sits below `interp.model`, whose
`build_model` checks them, and serve checkpoint suites' models as well.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from interp.devices import resolve_device
from interp.errors import InterpError
from interp.hooks import hook_size_kind

Batch = Mapping[str, torch.Tensor]


class ModelDimensions(Protocol):
    """What an estimate reads of a model: its sizes and the parts that change them. Both the
    toolkit's `interp.model.ModelConfig` and a suite's `interp.suites.SuiteModelConfig` are one."""

    n_layers: int
    n_heads: int
    d_model: int
    d_vocab: int
    n_ctx: int
    d_input: int
    attn_only: bool
    normalization: str
    positional: str

    @property
    def d_mlp(self) -> int: ...

    @property
    def head_dim(self) -> int: ...

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


def parameter_count(cfg: ModelDimensions) -> int:
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


def estimate_memory(cfg: ModelDimensions, batch_size: int = 0) -> MemoryEstimate:
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


def hook_numel(cfg: ModelDimensions, name: str, batch_size: int, positions: int) -> int:
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


def estimate_forward(cfg: ModelDimensions, batch_size: int, positions: int, hooks: Iterable[str] = (),
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


def check_memory(cfg: ModelDimensions, device: str | torch.device | None = None, batch_size: int = 0) -> None:
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


def _largest_term(cfg: ModelDimensions, estimate: MemoryEstimate, batch_size: int) -> str:
    """The sizes behind the largest part of the estimate, to name in the error."""
    embedding = 2 * cfg.d_vocab * cfg.d_model * FLOAT_BYTES
    if estimate.activations > estimate.parameters + estimate.optimizer:
        return f"batch_size={batch_size}, n_ctx={cfg.n_ctx} or d_vocab={cfg.d_vocab}"
    if 2 * embedding >= estimate.parameters:
        return f"d_vocab={cfg.d_vocab} or d_model={cfg.d_model}"
    mlp = "" if cfg.attn_only else f" or d_mlp={cfg.d_mlp or 4 * cfg.d_model}"
    return f"d_model={cfg.d_model}, n_layers={cfg.n_layers}{mlp}"


def check_forward_memory(cfg: ModelDimensions, batch: Batch | None, hooks: Iterable[str] = (),
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
        f"{device}; reduce {'the batch' if n_batch > 1 else 'the sequence length'} (memory bounded by "
        f"{available.source})")


CHUNK_MEMORY_FRACTION = 0.5
"""The share of the memory left after the parameters (and any kept copies) that one chunk of a
chunked computation is planned to take. The estimates are within about 20% of the measured peaks
(`benchmarks/memory_estimate.py`), the allocator keeps freed blocks, and other processes allocate
meanwhile: a chunk sized to all of it would run at the edge. One row still runs where it fits in
all of it."""


def forward_chunk_rows(cfg: ModelDimensions, batch: Batch, hooks: Iterable[str] = (),
                       device: str | torch.device | None = None, kept_copies: int = 0,
                       own_passes: Mapping[str, Callable[[int], int]] | None = None) -> int:
    """Rows of `batch` per chunk of a computation that runs chunk by chunk: one forward pass
    caching `hooks`, plus the largest of `own_passes` (per method, the bytes it allocates beyond
    that pass on a chunk of the given rows, `Probe.memory`), beside `kept_copies` copies of the
    whole batch's cached activations (what a caller filling them chunk by chunk holds). The
    whole batch where it fits in `CHUNK_MEMORY_FRACTION` of what the parameters and the kept
    copies leave free, else the largest chunk that does, else one row where it fits at all.
    `InsufficientMemoryError`, naming the numbers, where the model cannot load or not even one
    row fits."""
    device = resolve_device(device)
    n_batch, n_pos = batch["tokens"].shape[:2]
    hooks = list(hooks)
    own_passes = own_passes or {}
    available = available_memory(device)
    if available is None or n_batch == 0:
        return n_batch
    whole = estimate_forward(cfg, n_batch, n_pos, hooks, kept_copies)
    if whole.load > available.free:
        check_forward_memory(cfg, None, device=device)  # the refusal to load, naming its numbers

    def needs(rows: int) -> int:
        """Bytes at the peak of a chunk of `rows`: what grows with the chunk (its cache, the pass's
        intermediates, a method's own passes) beside what does not (the parameters, the kept copies)."""
        one = estimate_forward(cfg, rows, n_pos, hooks, own=max((own(rows) for own in own_passes.values()), default=0))
        return one.parameters + whole.kept + one.cached + one.transient + one.own

    fixed = whole.parameters + whole.kept
    budget = fixed + int(CHUNK_MEMORY_FRACTION * max(0, available.free - fixed))
    if needs(n_batch) <= budget:
        return n_batch
    fits, too_many = 0, n_batch  # every estimate grows with the rows: bisect for the largest that fits
    while too_many - fits > 1:
        middle = (fits + too_many) // 2
        fits, too_many = (middle, too_many) if needs(middle) <= budget else (fits, middle)
    if fits or needs(1) <= available.free:
        return max(fits, 1)
    if kept_copies:
        one = estimate_forward(cfg, 1, n_pos, hooks)
        raise InsufficientMemoryError(
            f"collecting {len(hooks)} hook(s) on a batch of {n_batch} sequences x {n_pos} positions keeps "
            f"{kept_copies} copies of their activations ({format_bytes(whole.kept)}) beside the parameters "
            f"({format_bytes(whole.parameters)}) and a one-sequence forward pass "
            f"({format_bytes(one.cached + one.transient)}), but {format_bytes(available.free)} is available on "
            f"{device}; reduce the batch or the steps (memory bounded by {available.source})")
    # One sequence does not fit: the refusal of a one-sequence batch names its numbers.
    one_row = {"tokens": torch.zeros(1, n_pos, dtype=torch.long, device="meta")}
    check_forward_memory(cfg, one_row, hooks, device, own_passes={name: own(1) for name, own in own_passes.items()})
    return 1  # memory was freed since it was read
