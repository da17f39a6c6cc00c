"""Weight-level circuit scores (Elhage et al. 2021, Olsson et al. 2022): no batch, no forward
pass, milliseconds per checkpoint.

- composition: how much a later head's query, key or value input reads what an earlier
  head writes, `||W_QK^T W_OV||_F / (||W_QK||_F ||W_OV||_F)` and its Q/V analogues, from
  TransformerLens's `all_composition_scores`;
- copying: of a head's full OV circuit `W_E W_OV W_U` (token in, logit out), the share
  of positive real parts among its eigenvalues, `sum(Re l) / sum(|l|)`: 1 for a head
  that copies the token it attends to, -1 for one that suppresses it;
- QK matching: the same eigenvalue score of a head's token-token QK circuit, directly
  `W_E W_QK W_E^T` (does a query attend to keys holding its own token?) and through an
  earlier head's output `W_E W_QK (W_E W_OV^src)^T` (does it attend to keys whose
  earlier head wrote the query's token, as an induction head's key reads the previous
  token?).

These read the weights as trained (layer norms not folded in) and ignore positional
embeddings, as the papers' definitions do. Each probe has `reads="weights"`, so
`probe(run, {...})` needs no batch. Columns: composition by `EdgeId` ("L0H1->L1H2.k"),
copying by `HeadId`, QK matching by `HeadId` (direct) and `EdgeId` into `.k` (through
the sender head).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from interp.ids import EdgeId, HeadId, HeadInput
from interp.probing import Probe, ProbeContext

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens import FactoredMatrix
    from transformer_lens.model_bridge import TransformerBridge

_MODES: dict[HeadInput, str] = {"q": "Q", "k": "K", "v": "V"}


def composition_scores(model: TransformerBridge,
                       inputs: tuple[HeadInput, ...] = ("q", "k", "v")) -> dict[EdgeId, float]:
    """The composition score of every earlier head into every later head's `inputs`."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    out: dict[EdgeId, float] = {}
    with torch.no_grad():
        for kind in inputs:
            scores = model.all_composition_scores(_MODES[kind]).float().cpu()  # [L, H, L, H]
            for src_layer in range(n_layers):
                for dst_layer in range(src_layer + 1, n_layers):
                    for s in range(n_heads):
                        for d in range(n_heads):
                            edge = EdgeId(HeadId(src_layer, s), HeadId(dst_layer, d), kind)
                            out[edge] = float(scores[src_layer, s, dst_layer, d])
    return out


def eigenvalue_score(matrix: FactoredMatrix) -> torch.Tensor:
    """`sum(Re l) / sum(|l|)` over the eigenvalues of each (leading-dims) matrix; NaN
    where every eigenvalue is 0 (the circuit is absent)."""
    eigenvalues = matrix.eigenvalues
    total = eigenvalues.abs().sum(-1)
    score = eigenvalues.real.sum(-1) / total
    return torch.where(total > 0, score, torch.full_like(score, math.nan))


def copying_scores(model: TransformerBridge) -> dict[HeadId, float]:
    """Eigenvalue score of each head's full OV circuit `W_E W_OV W_U`."""
    with torch.no_grad():
        scores = eigenvalue_score(model.W_E @ model.OV @ model.W_U).float().cpu()
    return {HeadId(layer, head): float(scores[layer, head])
            for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)}


def qk_matching_scores(model: TransformerBridge) -> dict[HeadId | EdgeId, float]:
    """Eigenvalue score of each head's token QK circuit, directly (`HeadId`) and with keys
    read through each earlier head's OV circuit (`EdgeId` sender -> head `.k`)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    out: dict[HeadId | EdgeId, float] = {}
    with torch.no_grad():
        w_e, qk, ov = model.W_E, model.QK, model.OV
        direct = eigenvalue_score(w_e @ qk @ w_e.T).float().cpu()
        for layer in range(n_layers):
            for head in range(n_heads):
                out[HeadId(layer, head)] = float(direct[layer, head])
        for src_layer in range(n_layers - 1):
            keys = w_e @ ov[src_layer]  # [H_src, V, d_model]: what each earlier head writes per token
            for layer in range(src_layer + 1, n_layers):
                for head in range(n_heads):
                    through = eigenvalue_score(w_e @ qk[layer, head] @ keys.T).float().cpu()
                    for src in range(n_heads):
                        out[EdgeId(HeadId(src_layer, src), HeadId(layer, head), "k")] = float(through[src])
    return out


def _weight_probe(name: str, score) -> Probe:
    def fn(ctx: ProbeContext) -> dict[str, float]:
        return {str(key): value for key, value in score(ctx.model).items()}

    return Probe(name=name, hooks=(), fn=fn, reads="weights")


def composition_probe(inputs: tuple[HeadInput, ...] = ("q", "k", "v")) -> Probe:
    """Composition scores at every checkpoint; columns `"L0H1->L1H2.k"`."""
    inputs = tuple(inputs)
    for kind in inputs:
        if kind not in _MODES:
            raise ValueError(f"inputs: expected 'q', 'k' or 'v', got {kind!r}")
    return _weight_probe(f"composition(inputs={inputs})", lambda model: composition_scores(model, inputs))


def copying_probe() -> Probe:
    """OV copying score of every head at every checkpoint; columns `"L1H2"`."""
    return _weight_probe("copying", copying_scores)


def qk_matching_probe() -> Probe:
    """QK matching scores at every checkpoint; columns `"L1H2"` (direct) and `"L0H1->L1H2.k"`."""
    return _weight_probe("qk_matching", qk_matching_scores)


__all__ = ["composition_probe", "composition_scores", "copying_probe", "copying_scores", "eigenvalue_score",
           "qk_matching_probe", "qk_matching_scores"]
