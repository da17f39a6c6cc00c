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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from interp.bridge import Block, NativeParts, native_parts
from interp.configs import require, require_literals, require_positive
from interp.devices import resolve_device
from interp.hooks import hook_name
from interp.memory import check_memory

if TYPE_CHECKING:  # TransformerLens takes seconds to import: only where a model is built
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

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
        from transformer_lens.config import TransformerBridgeConfig

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


def build_model(cfg: ModelConfig, device: str | torch.device | None = None) -> TransformerBridge:
    """A freshly initialized bridge; the caller's global RNG is left untouched.

    Raises `InsufficientMemoryError` before allocating when the weights cannot fit on
    `device` (the machine would otherwise swap until the kernel kills the process)."""
    from transformer_lens.model_bridge import TransformerBridge

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


def attention_patterns(model: TransformerBridge, batch: Batch, fused: bool = True
                       ) -> list[Float[Tensor, "batch head query key"]]:
    """Every layer's attention pattern on `batch` (the bridge's `hook_pattern`
    values), from one forward pass without gradients: the fused one of the toolkit's own
    models, or with `fused=False` the bridge's own forward with its pattern hooks (any
    architecture TransformerLens wraps, e.g. a checkpoint suite's GPT-NeoX)."""
    with torch.no_grad():
        if not fused:
            names = [hook_name("pattern", layer) for layer in range(model.cfg.n_layers)]
            _, cache = model.run_with_cache(batch["tokens"], names_filter=names)
            return [cache[name] for name in names]
        recorded: list[Tensor] = []
        _fused(model, batch, record=recorded)
    return recorded


def _fused(model: TransformerBridge, batch: Batch, patterns: Patterns | None = None,
           record: list[Tensor] | None = None) -> Tensor:
    parts = native_parts(model)
    h = _embedded(model, parts, batch)
    for layer in range(len(parts.blocks)):
        h = _block(parts, layer, h, None if patterns is None else patterns[layer], record)
    return parts.unembed(parts.ln_final(h))


def _embedded(model: TransformerBridge, parts: NativeParts, batch: Batch) -> Tensor:
    h = _embed(model, batch, parts.embed(batch["tokens"]))
    return h if parts.pos is None else h + parts.pos.weight[:batch["tokens"].shape[1]]


def _block(parts: NativeParts, layer: int, h: Tensor, pattern: Tensor | None = None,
           record: list[Tensor] | None = None) -> Tensor:
    attn = parts.blocks[layer].attn
    z = fused_attention(parts, layer, parts.blocks[layer].ln1(h), torch.cat([attn.q.weight, attn.k.weight,
                        attn.v.weight]), torch.cat([attn.q.bias, attn.k.bias, attn.v.bias]), pattern, record)
    return _mlp_residual(parts.blocks[layer], h + attn.o(z.transpose(1, 2).flatten(2)))


def _mlp_residual(block: Block, h: Tensor) -> Tensor:
    return h if block.mlp is None else h + block.mlp.fc_out(block.mlp.act(block.mlp.fc_in(block.mlp.ln(h))))


def fused_attention(parts: NativeParts, layer: int, x: Float[Tensor, "batch pos d_model"], qkv_weight: Tensor,
                    qkv_bias: Tensor, pattern: Tensor | None = None, record: list[Tensor] | None = None
                    ) -> Float[Tensor, "batch head pos d_head"]:
    """Block `layer`'s attention output before W_O, on its normed input `x`, for the heads
    whose stacked Q, K and V rows (`[3 * heads * d_head, d_model]`, Q first) and biases are
    given: every head, or one with weights other than the model's (a refined LLC's sample)."""
    attn = parts.blocks[layer].attn
    n_batch, n_pos, _ = x.shape
    qkv = F.linear(x, qkv_weight, qkv_bias).view(n_batch, n_pos, 3, -1, parts.d_head)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    if attn.rope is not None:
        q, k = attn.rope(q, k)
    if pattern is not None:
        return pattern.to(v.dtype) @ v
    if record is not None:
        scores = (q @ k.transpose(-1, -2)) / attn.scale
        causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=scores.device).tril()
        record.append(scores.masked_fill(~causal, float("-inf")).softmax(dim=-1))
        return record[-1] @ v
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / attn.scale)


def fused_residual(model: TransformerBridge, batch: Batch, layer: int) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream entering block `layer` on the fused path."""
    parts = native_parts(model)
    h = _embedded(model, parts, batch)
    for earlier in range(layer):
        h = _block(parts, earlier, h)
    return h


def fused_logits_after_attention(parts: NativeParts, h: Float[Tensor, "batch pos d_model"], layer: int
                                 ) -> Float[Tensor, "batch pos vocab"]:
    """The logits from the residual stream `h` after block `layer`'s attention (its MLP, the later
    blocks, the final norm and the unembedding), on the fused path of the model `parts` are
    `native_parts` of."""
    h = _mlp_residual(parts.blocks[layer], h)
    for later in range(layer + 1, len(parts.blocks)):
        h = _block(parts, later, h)
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


def training_batch(batch: Batch, device: torch.device) -> Batch:
    """A drawn batch as a training step takes it (`interp.train_steps.Stepper.step`): trimmed
    (`trim_padding`) where it was drawn, on the host, then moved to `device`. Trimming reads
    the batch's mask: on a CUDA batch that would make the host wait for the device every step."""
    return batch_to(trim_padding(batch), device)


def batch_rows(batch: Batch, start: int, stop: int) -> Batch:
    """Rows `start:stop` of `batch`: every tensor with a row per sequence is sliced, the others
    (shared by every row) are kept whole."""
    n_rows = len(batch["tokens"])
    return {key: value[start:stop] if value.dim() and len(value) == n_rows else value for key, value in batch.items()}
