"""Toy models that reproduce a phenomenon in seconds, without a transformer.

`cyclic_toy`: the linear model of anticipatory recovery (Yang et al. 2024, §6).
Task i is a point x_i; a shared matrix P and a task-adjusted vector w are
learned with loss_i = ½‖P x_i − f_i(w)‖², f_i(w) = y_i − w. Training on task i
takes one gradient step on P and then sets w ← f_i⁻¹(P x_i) = y_i − P x_i, so
the task just trained is solved exactly and the others are disturbed. Cycling
through the tasks in a fixed order, the loss on a task starts to fall before
its turn comes: anticipatory recovery from nothing but the order.

`coopetition_toy`: the toy model of strategy coopetition (Singh et al. 2025, §6).
Two rank-1 tensor factorizations share the factors b and c: mechanism 1
(a, b, c; the in-context strategy) and mechanism 2 (d, b, c; the in-weights
one). The loss multiplies their errors and penalizes using both at once:

    L = (L1 + mu1)(L2 + mu2) + alpha * mean((a ⊗ d)^2) / 2,
    L1 = mean((a* ⊗ b* ⊗ c* - a ⊗ b ⊗ c)^2) / 2, L2 likewise with d.

Mechanism 1 is learned first (its tensor is smaller); once mechanism 2,
helped by the shared b and c, drives L2 to 0 the penalty removes a, and L1
rises back: the first strategy is transient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from interp import seeding
from interp.configs import require, require_positive
from interp.metrics import drift, recovery
from interp.viz import plot_curves, plot_trajectory

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class CyclicToyConfig:
    """`input_dim` N (x_i), `output_dim` M (w, y_i); `lr` α of the P update."""

    n_tasks: int = 25
    input_dim: int = 100
    output_dim: int = 100
    epochs: int = 10
    lr: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        require_positive(self, "n_tasks", "input_dim", "output_dim", "epochs")
        require(self.lr > 0, "lr", "a positive step size", self.lr)


@dataclass(frozen=True)
class CyclicToyResult:
    losses: np.ndarray  # [epochs * n_tasks + 1, n_tasks], row 0 before training
    schedule: np.ndarray  # [epochs * n_tasks] task trained in each episode
    w_trajectory: np.ndarray  # [epochs * n_tasks, output_dim] w after each episode

    @property
    def recovery_by_epoch(self) -> np.ndarray:
        """Recovery score, mean over tasks, in the gap after each epoch n = 1..epochs-1."""
        return np.nanmean(recovery.recovery_scores(self.losses, self.schedule), axis=0)

    def loss_figure(self) -> Figure:
        """The loss on tasks 0 and T/2 after every episode, with the first epochs marked."""
        n, episodes = self.losses.shape[1], np.arange(len(self.losses))
        return plot_curves({f"task {t}": (episodes, self.losses[:, t]) for t in (0, n // 2)},
                           title="Toy linear model: loss on two tasks", ylabel="loss", xlabel="episode",
                           vlines={f"epoch {e + 1}": e * n for e in range(1, min(len(self.schedule) // n, 5))})

    def recovery_figure(self) -> Figure:
        return plot_curves({"toy model": (np.arange(1, len(self.recovery_by_epoch) + 1), self.recovery_by_epoch)},
                           markers=True, title="Toy model: recovery score", ylabel="RS(n)", xlabel="epoch n")

    def pca_figure(self) -> Figure:
        """w over the last two epochs in its top-2 principal components, coloured by task."""
        tail = 2 * self.losses.shape[1]
        return plot_trajectory(drift.pca(self.w_trajectory[-tail:], 2)[0], colour_by=self.schedule[-tail:],
                               colour_label="task", title="Toy model: w over the last two epochs (PCA)")


def cyclic_toy(cfg: CyclicToyConfig) -> CyclicToyResult:
    """Train the toy model through `epochs` cycles of the tasks in a fixed order."""
    rng = seeding.rng(cfg.seed)
    x = rng.uniform(-1, 1, (cfg.n_tasks, cfg.input_dim))
    y = rng.uniform(-1, 1, (cfg.n_tasks, cfg.output_dim))
    p = rng.normal(0, 1 / cfg.input_dim, (cfg.output_dim, cfg.input_dim))
    w = rng.uniform(-1, 1, cfg.output_dim)

    def task_losses() -> np.ndarray:
        return 0.5 * ((x @ p.T - (y - w)) ** 2).sum(axis=1)

    schedule = np.tile(np.arange(cfg.n_tasks), cfg.epochs)
    losses, trajectory = [task_losses()], []
    for task in schedule:
        residual = p @ x[task] - (y[task] - w)
        p = p - cfg.lr * np.outer(residual, x[task])
        w = y[task] - p @ x[task]
        losses.append(task_losses())
        trajectory.append(w)
    return CyclicToyResult(np.array(losses), schedule, np.array(trajectory))


@dataclass(frozen=True)
class CoopetitionToyConfig:
    """Sizes of a, b, c, d; `alpha` the overlap penalty, `mu1`/`mu2` the loss offsets;
    plain gradient descent at `lr` for `steps`, recording every `record_every` steps.
    Targets and initial factors are standard normal."""

    dims: tuple[int, int, int, int] = (20, 20, 20, 160)
    alpha: float = 0.1
    mu1: float = 0.1
    mu2: float = 0.0
    lr: float = 1.0
    steps: int = 16000
    record_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        require(len(self.dims) == 4 and all(isinstance(n, int) and n > 0 for n in self.dims), "dims",
                "four positive sizes (a, b, c, d)", self.dims)
        require(self.alpha >= 0 and self.mu1 >= 0 and self.mu2 >= 0, "alpha", "alpha, mu1 and mu2 >= 0",
                (self.alpha, self.mu1, self.mu2))
        require_positive(self, "steps", "record_every")
        require(self.lr > 0, "lr", "a positive step size", self.lr)


@dataclass(frozen=True)
class CoopetitionSummary:
    """L1 at its minimum (and when), and L1, L2, |a| and |d| at the end."""

    loss1_min: float
    loss1_min_step: int
    loss1_final: float
    loss2_final: float
    a_norm_final: float
    d_norm_final: float


@dataclass(frozen=True)
class CoopetitionToyResult:
    steps: np.ndarray  # [records]
    loss1: np.ndarray  # L1, the first mechanism's error
    loss2: np.ndarray  # L2
    total: np.ndarray  # L
    norms: np.ndarray  # [records, 4]: |a|, |b|, |c|, |d|

    def summary(self) -> CoopetitionSummary:
        best = int(np.argmin(self.loss1))
        return CoopetitionSummary(loss1_min=float(self.loss1[best]), loss1_min_step=int(self.steps[best]),
                                  loss1_final=float(self.loss1[-1]), loss2_final=float(self.loss2[-1]),
                                  a_norm_final=float(self.norms[-1, 0]), d_norm_final=float(self.norms[-1, 3]))

    def describe(self, cfg: CoopetitionToyConfig) -> str:
        """The run of `cfg` that gave these curves, in words, for reports."""
        s = self.summary()
        return (f"Coopetition toy (dims {cfg.dims}, alpha {cfg.alpha:g}, mu1 {cfg.mu1:g}, mu2 {cfg.mu2:g}, "
                f"lr {cfg.lr:g}): L1 reaches {s.loss1_min:.4f} at step {s.loss1_min_step} and ends at "
                f"{s.loss1_final:.4f} while L2 ends at {s.loss2_final:.2g} and |a| at {s.a_norm_final:.2g}: "
                "mechanism 1 is learned, then lost.")

    def figure(self) -> Figure:
        """L1 and L2 over the gradient steps, |a| and |d| on a second axis."""
        return plot_curves(
            {"L1 (mechanism 1, a b c)": (self.steps, self.loss1), "L2 (mechanism 2, d b c)": (self.steps, self.loss2)},
            secondary={"|a|": (self.steps, self.norms[:, 0]), "|d|": (self.steps, self.norms[:, 3])},
            secondary_label="factor norm", title="Coopetition toy model", ylabel="loss", xlabel="gradient step")


def rank1_error(target: list[np.ndarray], factors: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    """`mean((⊗target - ⊗factors)^2) / 2` and its gradient in each factor, in closed
    form: the outer products are never built."""
    size = float(np.prod([len(t) for t in target]))
    cross = [float(t @ f) for t, f in zip(target, factors, strict=True)]
    squares = [float(f @ f) for f in factors]
    target_sq = float(np.prod([t @ t for t in target]))
    loss = max(0.0, (target_sq - 2 * np.prod(cross) + np.prod(squares)) / (2 * size))  # rounding can dip below 0
    grads = []
    for i, (t, f) in enumerate(zip(target, factors, strict=True)):
        others = [j for j in range(len(factors)) if j != i]
        grads.append((np.prod([squares[j] for j in others]) * f - np.prod([cross[j] for j in others]) * t) / size)
    return float(loss), grads


def coopetition_toy(cfg: CoopetitionToyConfig) -> CoopetitionToyResult:
    """Gradient descent on the coopetition loss; L1, L2, L and the factor norms over steps."""
    rng = seeding.rng(cfg.seed)
    target = [rng.standard_normal(n) for n in cfg.dims]
    a, b, c, d = (rng.standard_normal(n) for n in cfg.dims)
    overlap = cfg.alpha / (cfg.dims[0] * cfg.dims[3])
    records: dict[str, list] = {"steps": [], "loss1": [], "loss2": [], "total": [], "norms": []}
    for step in range(cfg.steps + 1):
        loss1, (ga1, gb1, gc1) = rank1_error(target[:3], [a, b, c])
        loss2, (gd2, gb2, gc2) = rank1_error([target[3], *target[1:3]], [d, b, c])
        if step % cfg.record_every == 0 or step == cfg.steps:
            total = (loss1 + cfg.mu1) * (loss2 + cfg.mu2) + overlap / 2 * (a @ a) * (d @ d)
            for key, value in (("steps", step), ("loss1", loss1), ("loss2", loss2), ("total", total),
                               ("norms", [np.linalg.norm(v) for v in (a, b, c, d)])):
                records[key].append(value)
        if step == cfg.steps:
            break
        w1, w2 = loss2 + cfg.mu2, loss1 + cfg.mu1
        grad_a = w1 * ga1 + overlap * (d @ d) * a
        grad_d = w2 * gd2 + overlap * (a @ a) * d
        grad_b = w1 * gb1 + w2 * gb2
        grad_c = w1 * gc1 + w2 * gc2
        a, b, c, d = a - cfg.lr * grad_a, b - cfg.lr * grad_b, c - cfg.lr * grad_c, d - cfg.lr * grad_d
    return CoopetitionToyResult(*(np.array(records[k]) for k in ("steps", "loss1", "loss2", "total", "norms")))
