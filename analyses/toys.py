"""Toy models that reproduce a phenomenon in seconds, without a transformer.

`cyclic_toy`: the linear model of anticipatory recovery (Yang et al. 2024, §6).
Task i is a point x_i; a shared matrix P and a task-adjusted vector w are
learned with loss_i = ½‖P x_i − f_i(w)‖², f_i(w) = y_i − w. Training on task i
takes one gradient step on P and then sets w ← f_i⁻¹(P x_i) = y_i − P x_i, so
the task just trained is solved exactly and the others are disturbed. Cycling
through the tasks in a fixed order, the loss on a task starts to fall before
its turn comes: anticipatory recovery from nothing but the order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from interp.configs import require, require_positive


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


def cyclic_toy(cfg: CyclicToyConfig) -> CyclicToyResult:
    """Train the toy model through `epochs` cycles of the tasks in a fixed order."""
    rng = np.random.default_rng(cfg.seed)
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
