"""Low-rank structure of forgetting matrices (Jin & Ren, arXiv 2406.14026).

`Z[i, j]` is the change of the loss on upstream example j caused by
fine-tuning on task i (positive: forgotten). This module fits and completes
such matrices: R² of rank-k SVD, additive, multiplicative, row-only and
column-only fits; completion of partially observed rows (NaN = unobserved) by
the additive model, KNN over rows on additive residuals, and biased low-rank
matrix factorization; and the evaluation protocol with held-out rows and k
revealed entries per row. Plain numpy, task-agnostic; the last section measures
a model's per-example losses and pooled representations, from which Z and its
similarity baseline are built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from interp import seeding
from interp.hooks import hook_name
from interp.model import forward, scored_positions, token_losses
from interp.replay import softmax_weights

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge


def _matrix(z: np.ndarray, name: str = "Z") -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or min(z.shape) < 1:
        raise ValueError(f"{name}: expected a non-empty 2-D matrix, got shape {z.shape}")
    return z


def forgetting_matrix(
    before: Float[np.ndarray, " example"], after: Float[np.ndarray, "task example"]
) -> Float[np.ndarray, "task example"]:
    """`Z[i, j] = after[i, j] - before[j]`: loss change of example j from task i."""
    before, after = np.asarray(before, dtype=np.float64), _matrix(after, "after")
    if before.shape != (after.shape[1],):
        raise ValueError(f"before: expected shape ({after.shape[1]},) to match after {after.shape}, "
                         f"got {before.shape}")
    return after - before[None, :]


def r2(z: np.ndarray, fit: np.ndarray) -> float:
    """`1 - MSE(fit) / Var(Z)` over all entries."""
    z, fit = _matrix(z), _matrix(fit, "fit")
    if z.shape != fit.shape:
        raise ValueError(f"fit: expected shape {z.shape}, got {fit.shape}")
    variance = z.var()
    return float(1 - np.mean((z - fit) ** 2) / variance) if variance > 0 else float("nan")


def singular_values(z: np.ndarray) -> np.ndarray:
    return np.linalg.svd(_matrix(z), compute_uv=False)


def svd_fit(z: np.ndarray, rank: int) -> np.ndarray:
    """Best rank-`rank` approximation (uncentred truncated SVD; rank 1 is the
    multiplicative model `a_i * b_j`)."""
    z = _matrix(z)
    if not 1 <= rank <= min(z.shape):
        raise ValueError(f"rank: expected 1..{min(z.shape)}, got {rank}")
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vt[:rank]


def r2_by_rank(z: np.ndarray, ranks: Sequence[int] = (1, 2, 3, 4, 5)) -> list[float]:
    return [r2(z, svd_fit(z, k)) for k in ranks]


def additive_fit(z: np.ndarray) -> np.ndarray:
    """Least-squares `mu + t_i + e_j` of a complete matrix: row mean + column mean - grand mean."""
    z = _matrix(z)
    return z.mean(axis=1, keepdims=True) + z.mean(axis=0, keepdims=True) - z.mean()


def row_only_fit(z: np.ndarray) -> np.ndarray:
    """`t_i`: every entry replaced by its row (task) mean."""
    z = _matrix(z)
    return np.broadcast_to(z.mean(axis=1, keepdims=True), z.shape).copy()


def column_only_fit(z: np.ndarray) -> np.ndarray:
    """`e_j`: every entry replaced by its column (example) mean."""
    z = _matrix(z)
    return np.broadcast_to(z.mean(axis=0, keepdims=True), z.shape).copy()


@dataclass(frozen=True)
class FitSummary:
    """R² of every fit: rank-k SVD for each k, rank 1 (`multiplicative`), additive, row and column only."""

    r2_by_rank: list[float]
    r2_multiplicative: float
    r2_additive: float
    r2_row_only: float
    r2_column_only: float


def fit_summary(z: np.ndarray, ranks: Sequence[int] = (1, 2, 3, 4, 5)) -> FitSummary:
    """R² of every fit, for a report."""
    return FitSummary(r2_by_rank=r2_by_rank(z, ranks), r2_multiplicative=r2(z, svd_fit(z, 1)),
                      r2_additive=r2(z, additive_fit(z)), r2_row_only=r2(z, row_only_fit(z)),
                      r2_column_only=r2(z, column_only_fit(z)))


def shuffle_rows_independently(z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Control: permute the entries within each row, which keeps every row's
    values (and the row-only fit) and destroys shared example structure."""
    z = _matrix(z)
    return np.stack([rng.permutation(row) for row in z])


# --- completion of partially observed rows (NaN = unobserved) -----------------------------


def _observed(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = _matrix(z)
    mask = ~np.isnan(z)
    if not mask.any(axis=0).all():
        raise ValueError("Z: every column needs at least one observed entry")
    if not mask.any(axis=1).all():
        raise ValueError("Z: every row needs at least one observed entry")
    return z, mask


def _additive_parameters(z: np.ndarray, mask: np.ndarray, sweeps: int = 20) -> tuple[float, np.ndarray, np.ndarray]:
    """`mu, t, e` of `mu + t_i + e_j` by alternating least squares on the observed entries
    (exact after one sweep when all rows but the new ones are fully observed)."""
    filled = np.where(mask, z, 0.0)
    mu = filled.sum() / mask.sum()
    t, e = np.zeros(z.shape[0]), np.zeros(z.shape[1])
    for _ in range(sweeps):
        t = np.where(mask, filled - mu - e[None, :], 0.0).sum(axis=1) / mask.sum(axis=1)
        e = np.where(mask, filled - mu - t[:, None], 0.0).sum(axis=0) / mask.sum(axis=0)
    return mu, t, e


def complete_additive(z: np.ndarray) -> np.ndarray:
    """Fill every entry with `mu + t_i + e_j` fitted on the observed ones."""
    z, mask = _observed(z)
    mu, t, e = _additive_parameters(z, mask)
    return mu + t[:, None] + e[None, :]


def complete_knn(z: np.ndarray, k: int = 10) -> np.ndarray:
    """Additive fit plus the mean additive residual of the `k` rows most similar
    to each row, similarity being the cosine of residuals on the columns both
    observe (Jin & Ren's KNN over tasks). Observed entries are kept as given."""
    z, mask = _observed(z)
    if k < 1:
        raise ValueError(f"k: expected a positive number of neighbours, got {k}")
    base = complete_additive(z)
    residual = np.where(mask, z - base, 0.0)
    prediction = base.copy()
    for row in np.flatnonzero(~mask.all(axis=1)):
        common = mask & mask[row][None, :]
        dots = (residual * residual[row][None, :] * common).sum(axis=1)
        norms = np.sqrt((residual**2 * common).sum(axis=1) * (residual[row][None, :] ** 2 * common).sum(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            similarity = np.where(norms > 0, dots / norms, 0.0)
        similarity[row] = -np.inf
        neighbours = np.argsort(similarity)[::-1][:k]
        neighbours = neighbours[similarity[neighbours] > 0]
        if len(neighbours) == 0:
            continue
        weights = similarity[neighbours][:, None] * mask[neighbours]
        support = weights.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            correction = np.where(support > 0, (weights * residual[neighbours]).sum(axis=0) / support, 0.0)
        prediction[row] += correction
    return np.where(mask, z, prediction)


def complete_mf(z: np.ndarray, rank: int = 5, reg: float = 1.0, sweeps: int = 30, seed: int = 0) -> np.ndarray:
    """Biased matrix factorization `mu + b_i + c_j + p_i . q_j` fitted to the
    observed entries by alternating ridge regressions (`reg` on p, q, b, c)."""
    z, mask = _observed(z)
    if rank < 1 or reg < 0:
        raise ValueError(f"rank, reg: expected rank >= 1 and reg >= 0, got {rank}, {reg}")
    rng = seeding.rng(seed)
    n_rows, n_cols = z.shape
    mu = np.nanmean(z)
    scale = np.nanstd(z) or 1.0
    p = rng.normal(0, 0.1 * scale**0.5, (n_rows, rank))
    q = rng.normal(0, 0.1 * scale**0.5, (n_cols, rank))
    b, c = np.zeros(n_rows), np.zeros(n_cols)
    filled = np.where(mask, z - mu, 0.0)

    def solve(targets: np.ndarray, obs: np.ndarray, other: np.ndarray, other_bias: np.ndarray) -> tuple:
        # For each row of `targets`, ridge-regress (target - other_bias) on [other, 1].
        design = np.hstack([other, np.ones((other.shape[0], 1))])
        penalty = reg * np.eye(rank + 1)
        out = np.empty((targets.shape[0], rank + 1))
        for i in range(targets.shape[0]):
            x, y = design[obs[i]], targets[i, obs[i]] - other_bias[obs[i]]
            out[i] = np.linalg.solve(x.T @ x + penalty, x.T @ y)
        return out[:, :rank], out[:, rank]

    for _ in range(sweeps):
        p, b = solve(filled, mask, q, c)
        q, c = solve(filled.T, mask.T, p, b)
    return np.where(mask, z, mu + b[:, None] + c[None, :] + p @ q.T)


Completer = Callable[[np.ndarray], np.ndarray]

COMPLETERS: dict[str, Completer] = {
    "additive": complete_additive,
    "knn": complete_knn,
    "mf": complete_mf,
}


# --- evaluation -------------------------------------------------------------------------


def top_fraction_f1(true: np.ndarray, predicted: np.ndarray, fraction: float = 0.1) -> float:
    """F1 of predicting which entries are the `fraction` most forgotten (largest)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction: expected a number in (0, 1), got {fraction}")
    true, predicted = np.ravel(true), np.ravel(predicted)
    count = max(1, int(round(fraction * true.size)))
    truth = set(np.argsort(true)[::-1][:count].tolist())
    guess = set(np.argsort(predicted)[::-1][:count].tolist())
    return len(truth & guess) / count  # equal set sizes: precision = recall = F1


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr  # scipy loads (a second) only when a result needs it

    return float(spearmanr(np.ravel(a), np.ravel(b)).statistic)


@dataclass(frozen=True)
class CompletionScores:
    rmse: float
    f1: float
    spearman: float


def reveal_mask(n_rows: int, n_cols: int, revealed: int, rng: np.random.Generator) -> Bool[np.ndarray, "row col"]:
    """`revealed` entries per row, drawn without replacement."""
    if not 1 <= revealed < n_cols:
        raise ValueError(f"revealed: expected 1..{n_cols - 1} entries per row, got {revealed}")
    mask = np.zeros((n_rows, n_cols), dtype=bool)
    for row in range(n_rows):
        mask[row, rng.choice(n_cols, revealed, replace=False)] = True
    return mask


def evaluate_completion(
    z: np.ndarray,
    test_rows: Sequence[int],
    revealed: int,
    predictors: Mapping[str, Callable[[np.ndarray, np.ndarray], np.ndarray]],
    seeds: Sequence[int] = (0,),
    top_fraction: float = 0.1,
) -> dict[str, dict[str, float]]:
    """Hold out `test_rows`, reveal `revealed` random entries of each, and score
    each predictor on the unrevealed entries (means over rows and seeds).

    A predictor maps `(observed, test_rows)`, with the unrevealed entries of the
    test rows set to NaN, to a full prediction of the matrix. Completers from
    `COMPLETERS` are wrapped with `as_predictor`.
    """
    z = _matrix(z)
    test_rows = np.asarray(test_rows)
    if len(test_rows) == 0 or len(np.unique(test_rows)) != len(test_rows) or test_rows.max() >= z.shape[0]:
        raise ValueError(f"test_rows: expected distinct row indices below {z.shape[0]}, got {test_rows.tolist()}")
    scores: dict[str, list[CompletionScores]] = {name: [] for name in predictors}
    for seed in seeds:
        rng = seeding.rng(seed)
        revealed_mask = reveal_mask(len(test_rows), z.shape[1], revealed, rng)
        observed = z.copy()
        observed[test_rows] = np.where(revealed_mask, z[test_rows], np.nan)
        for name, predict in predictors.items():
            prediction = predict(observed, test_rows)
            for row_index, row in enumerate(test_rows):
                hidden = ~revealed_mask[row_index]
                true, guess = z[row, hidden], prediction[row, hidden]
                scores[name].append(CompletionScores(
                    rmse=float(np.sqrt(np.mean((true - guess) ** 2))),
                    f1=top_fraction_f1(true, guess, top_fraction),
                    spearman=spearman(true, guess),
                ))
    return {name: {metric: float(np.nanmean([getattr(s, metric) for s in values]))
                   for metric in ("rmse", "f1", "spearman")}
            for name, values in scores.items()}


def as_predictor(completer: Completer) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    return lambda observed, test_rows: completer(observed)


def column_mean_predictor(observed: np.ndarray, test_rows: np.ndarray) -> np.ndarray:
    """The example-mean baseline: each example's mean forgetting over the training rows."""
    train = np.delete(observed, test_rows, axis=0)
    return np.broadcast_to(train.mean(axis=0, keepdims=True), observed.shape).copy()


def similarity_predictor(similarity: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Representation-similarity baseline: `Z ≈ alpha + beta * S[i, j]` fitted on the
    training rows, with each test row's offset set from its revealed entries."""
    similarity = _matrix(similarity, "similarity")

    def predict(observed: np.ndarray, test_rows: np.ndarray) -> np.ndarray:
        if similarity.shape != observed.shape:
            raise ValueError(f"similarity: expected shape {observed.shape}, got {similarity.shape}")
        train = np.setdiff1d(np.arange(observed.shape[0]), test_rows)
        beta, alpha = np.polyfit(similarity[train].ravel(), observed[train].ravel(), 1)
        prediction = alpha + beta * similarity
        offsets = np.nanmean(observed[test_rows] - prediction[test_rows], axis=1)
        prediction[test_rows] += offsets[:, None]
        return prediction

    return predict


# --- measuring the rows of Z and their baselines on a model ---------------------------------


def example_losses(model: TransformerBridge, tokens: Int[torch.Tensor, "example pos"],
                   batch_size: int = 512) -> Float[np.ndarray, " example"]:
    """Mean token loss of each sequence over all predicted positions (one entry of a row of Z)."""
    out = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(tokens), batch_size):
            batch = {"tokens": tokens[start : start + batch_size].to(device)}
            losses, mask = token_losses(forward(model, batch), batch), scored_positions(batch)
            out.append(((losses * mask).sum(1) / mask.sum(1)).cpu().numpy())
    return np.concatenate(out)


def pooled_representations(model: TransformerBridge, tokens: Int[torch.Tensor, "example pos"],
                           hook: str | None = None) -> Float[np.ndarray, "example d_model"]:
    """Mean over positions of the activation at `hook` (default None: the final normalized
    residual stream), one row per sequence."""
    hook = hook or hook_name("normalized")  # not a default value: that would import TransformerLens with this module
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(next(model.parameters()).device), names_filter=[hook])
    return cache[hook].mean(dim=1).cpu().numpy()


def row_cosines(a: Float[np.ndarray, "m dim"], b: Float[np.ndarray, "n dim"]) -> Float[np.ndarray, "m n"]:
    """`S[i, j]`: cosine between row i of `a` and row j of `b` (e.g. a task's mean
    representation and an upstream example's: the representation-similarity baseline)."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its `level` t interval (0 for fewer than two values)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), 0.0
    from scipy import stats

    quantile = stats.t.ppf(0.5 + level / 2, len(values) - 1)
    return float(values.mean()), float(quantile * values.std(ddof=1) / len(values) ** 0.5)


Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def completion_predictors(knn_k: int = 10, mf_rank: int = 5, mf_reg: float = 1.0,
                          similarity: np.ndarray | None = None) -> dict[str, Predictor]:
    """The predictors `evaluate_completion` compares: the additive, KNN and MF completers,
    the example-mean baseline and, given `S`, the representation-similarity baseline."""
    return {
        "additive": as_predictor(complete_additive),
        "knn": as_predictor(lambda m: complete_knn(m, k=knn_k)),
        "mf": as_predictor(lambda m: complete_mf(m, rank=mf_rank, reg=mf_reg)),
        "example mean": column_mean_predictor,
        **({} if similarity is None else {"representation similarity": similarity_predictor(similarity)}),
    }


def complete_row(known: np.ndarray, row: np.ndarray, rank: int = 5, reg: float = 1.0) -> np.ndarray:
    """`row` (NaN = unobserved) completed by `complete_mf` together with the fully observed rows `known`."""
    return complete_mf(np.vstack([_matrix(known, "known"), row]), rank=rank, reg=reg)[-1]


def first_factor_order(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column orders of Z by its first singular vectors, largest first (sign
    fixed so the row factor sums positive): the order to draw Z in."""
    u, _, vt = np.linalg.svd(_matrix(z), full_matrices=False)
    sign = np.sign(u[:, 0].sum()) or 1.0
    return np.argsort(-sign * u[:, 0]), np.argsort(-sign * vt[0])


def paired_tests(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    """p-values of the paired t-test and the Wilcoxon signed-rank test of `a` vs `b`;
    None when there is nothing to compare (fewer than two pairs, or identical outcomes)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or np.allclose(a, b, rtol=0, atol=1e-12):
        return None, None
    from scipy import stats

    return float(stats.ttest_rel(a, b).pvalue), float(stats.wilcoxon(a, b).pvalue)


def scaled_softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Sampling weights `softmax(scores / T)` with `T = temperature` x the standard deviation
    of the scores (x 1 when they are constant): replay weights from a row of Z."""
    scores = np.asarray(scores, dtype=np.float64)
    return softmax_weights(scores, temperature * (scores.std() or 1.0))



@dataclass(frozen=True)
class MatrixSummary:
    """Z's mean and sd, the sd of its row (task) and column (example) means, every fit's R²,
    the rank-1 R² of row-shuffled copies (mean and sd) and the first 10 singular values."""

    z_mean: float
    z_std: float
    z_row_mean_std: float
    z_column_mean_std: float
    fits: FitSummary
    r2_shuffled_rank1: float
    r2_shuffled_rank1_std: float
    singular_values: list[float]


def matrix_summary(z: np.ndarray, shuffle_controls: int = 5, seed: int = 0) -> MatrixSummary:
    """The `MatrixSummary` of Z with `shuffle_controls` row-shuffled copies (generator
    `[seed, i]` for the i-th)."""
    z = _matrix(z)
    shuffled = [r2_by_rank(shuffle_rows_independently(z, seeding.rng(seed, i)), [1])[0]
                for i in range(shuffle_controls)]
    return MatrixSummary(z_mean=float(z.mean()), z_std=float(z.std()), z_row_mean_std=float(z.mean(axis=1).std()),
                         z_column_mean_std=float(z.mean(axis=0).std()), fits=fit_summary(z),
                         r2_shuffled_rank1=float(np.mean(shuffled)), r2_shuffled_rank1_std=float(np.std(shuffled)),
                         singular_values=singular_values(z)[:10].tolist())


def replay_summary(increase: Mapping[str, np.ndarray], baseline: str = "none",
                   compared: tuple[str, str] = ("predicted", "random"), digits: int = 4) -> dict[str, Any]:
    """The replay experiment from the held-out NLL increase of each (task, seed) pair under
    each condition: per condition the mean and its 95% CI half-width (`ci95`), rounded to
    `digits`, and for all but `baseline` the forgetting reduced relative to it, from the
    rounded means (None unless the baseline raised the loss); the paired t-test and
    Wilcoxon p-values of the two `compared` conditions (None when their outcomes are
    identical) and the number of pairs."""
    ci = {c: [round(v, digits) for v in mean_ci(values)] for c, values in increase.items()}
    none = ci[baseline][0]
    summary: dict[str, Any] = {c: {"mean_heldout_nll_increase": mean, "ci95": half} | ({} if c == baseline else {
        "reduced_forgetting": round(1 - mean / none, digits) if none > 0 else None}) for c, (mean, half) in ci.items()}
    t_test, wilcoxon = paired_tests(increase[compared[0]], increase[compared[1]])
    return {**summary, f"p_value_{compared[0]}_vs_{compared[1]}": t_test, "p_value_wilcoxon": wilcoxon,
            "pairs": len(increase[compared[0]])}


def rounded(x: Any, digits: int = 4) -> Any:
    """Every number in nested dataclasses, dicts and lists rounded to `digits` (a report's precision)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: rounded(getattr(x, f.name), digits) for f in dataclasses.fields(x)})
    if isinstance(x, Mapping):
        return {k: rounded(v, digits) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [rounded(v, digits) for v in x]
    return round(float(x), digits)
