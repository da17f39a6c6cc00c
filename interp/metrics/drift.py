"""How weights, activations and gradients move across checkpoints.

Everything takes a matrix whose rows are flattened vectors, one per checkpoint
(or per item), so the same routines serve weights, activations and gradients.
Plain numpy. float32 input stays float32 (a trajectory of a million-parameter
model over a hundred checkpoints is large); other input is computed in float64.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Float

from interp.checkpoints import Run
from interp.model import Batch, forward, masked_mean_loss
from interp.probing import collect_activations

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge


def flatten_state(state: Mapping[str, torch.Tensor], keys: list[str] | None = None) -> np.ndarray:
    """Concatenate the named tensors (default: all, in key order) into one float32 vector."""
    names = sorted(state) if keys is None else keys
    missing = [k for k in names if k not in state]
    if missing:
        raise KeyError(f"keys {missing} not in the state dict; available: {sorted(state)}")
    return np.concatenate([state[k].detach().float().cpu().numpy().ravel() for k in names])


def _floating(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows)
    return rows if rows.dtype == np.float32 else rows.astype(np.float64)


def cosine_matrix(rows: Float[np.ndarray, "n dim"]) -> Float[np.ndarray, "n n"]:
    """Pairwise cosine similarity of the rows (float64 result); a zero row gives NaN."""
    rows = _floating(rows)
    if rows.ndim != 2:
        raise ValueError(f"rows: expected a 2-D [n, dim] array, got shape {rows.shape}")
    norms = np.linalg.norm(rows, axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rows @ rows.T).astype(np.float64) / np.outer(norms, norms)


def window_residuals(rows: Float[np.ndarray, "n dim"], half_window: int) -> Float[np.ndarray, "m dim"]:
    """`rows[t] - mean(rows[t - h : t + h + 1])` for every t whose full window fits.

    Removes the slow drift of a trajectory so that what repeats with a period
    (e.g. one cycle through T documents, with `h = T // 2`) stands out. Returns
    rows `h .. n - h - 1` of the input.
    """
    rows = _floating(rows)
    if rows.ndim != 2 or half_window < 1 or rows.shape[0] < 2 * half_window + 1:
        raise ValueError(
            f"half_window: expected 1 <= h with 2h+1 <= {len(rows)} rows of a 2-D array, got {half_window}"
        )
    # Each window mean accumulates in float64: residuals are small differences of large vectors.
    return np.stack([
        rows[t] - rows[t - half_window : t + half_window + 1].mean(axis=0, dtype=np.float64).astype(rows.dtype)
        for t in range(half_window, len(rows) - half_window)
    ])


def pca(
    rows: Float[np.ndarray, "n dim"], n_components: int
) -> tuple[Float[np.ndarray, "n k"], Float[np.ndarray, " k"]]:
    """Project centred rows on their top principal components.

    Returns the coordinates and each component's fraction of the variance.
    Works through the n x n Gram matrix, so a few hundred checkpoints of a
    million-parameter matrix cost no more than their dot products.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if not 1 <= n_components <= min(rows.shape):
        raise ValueError(f"n_components: expected 1..{min(rows.shape)}, got {n_components}")
    centred = rows - rows.mean(axis=0)
    gram = centred @ centred.T
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    order = np.argsort(eigenvalues)[::-1][:n_components]
    values = np.clip(eigenvalues[order], 0.0, None)
    coords = eigenvectors[:, order] * np.sqrt(values)
    total = np.clip(eigenvalues, 0.0, None).sum()
    return coords, values / total if total > 0 else values


def lag_means(matrix: Float[np.ndarray, "n n"]) -> Float[np.ndarray, " lag"]:
    """Mean of the k-th superdiagonal of a square matrix for each lag k = 0..n-1 (NaN
    entries ignored): e.g. how a checkpoint similarity matrix decays with the distance in time."""
    return np.array([np.nanmean(np.diagonal(matrix, k)) for k in range(matrix.shape[0])])


def weight_trajectory(run: Run, steps: Sequence[int], keys: list[str] | None = None) -> Float[np.ndarray, "step dim"]:
    """The run's weights at each of `steps`, flattened by `flatten_state` (float32).

    Filled in place: stacking per-checkpoint copies would double the peak memory."""
    rows: np.ndarray | None = None
    for row, step in enumerate(steps):
        flat = flatten_state(run.load_state_dict(step), keys)
        if rows is None:
            rows = np.empty((len(steps), flat.size), dtype=np.float32)
        rows[row] = flat
    if rows is None:
        raise ValueError("steps: expected at least one checkpoint step")
    return rows


def gradient_cosines(
    model: TransformerBridge, batches: Sequence[Batch], params: Sequence[torch.Tensor]
) -> Float[np.ndarray, "batch batch"]:
    """Cosine similarity of the gradients of each batch's mean token loss with respect
    to `params` (e.g. one layer's attention weights), one batch per item."""
    gradients = []
    for batch in batches:
        grads = torch.autograd.grad(masked_mean_loss(forward(model, batch), batch), list(params))
        gradients.append(torch.cat([g.flatten() for g in grads]).cpu().numpy())
    return cosine_matrix(np.stack(gradients))


def residual_cosine(run: Run, steps: Sequence[int], half_window: int) -> Float[np.ndarray, "m m"]:
    """Cosine similarity of the run's weight residuals at `steps[h : len(steps) - h]`: each
    checkpoint's flattened weights minus their mean over the `2h + 1` checkpoints around it
    (`window_residuals`), so what recurs with a period of about `2h + 1` checkpoints stands out."""
    return cosine_matrix(window_residuals(weight_trajectory(run, steps), half_window))


def activation_cosine(
    run: Run, hook: str, batch: Batch, steps: Sequence[int], device: str | torch.device | None = None
) -> Float[np.ndarray, "step step"]:
    """Cosine similarity of the activations at `hook` on `batch` between the run's checkpoints at `steps`."""
    return cosine_matrix(collect_activations(run, hook, batch, steps, device).reshape(len(steps), -1))
