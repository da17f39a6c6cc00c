"""Documents fine-tuned in a repeated order (Yang et al. 2024, anticipatory recovery).

T documents of C tokens are trained one per episode of M steps, for E epochs,
in an order given by `schedule()`:
- `cyclic`: the same order every epoch;
- `shuffled`: a new permutation each epoch with document 0 kept first (the control);
- `partial`: document order shuffled within consecutive blocks of `block` documents.

Sources: `random` (uniform tokens: nothing to learn but the documents themselves)
or `markov` (every document drawn from one shared sparse Markov chain, so part of
each document is general structure, the "general learning" confound).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import torch

from interp import seeding
from interp.configs import require, require_literals, require_positive
from interp.model import Batch, forward, token_losses

if TYPE_CHECKING:  # TransformerLens takes seconds to import; these names only annotate
    from transformer_lens.model_bridge import TransformerBridge

Order = Literal["cyclic", "shuffled", "partial"]
Source = Literal["random", "markov"]
ORDERS: tuple[Order, ...] = get_args(Order)


@dataclass(frozen=True)
class CyclicDocumentsConfig:
    """`branching`: successors per token in the `markov` source; `block`: block
    size of the `partial` order; `seed` draws documents and orders."""

    n_docs: int = 20
    doc_len: int = 64
    d_vocab: int = 2048
    epochs: int = 5
    steps_per_doc: int = 10
    order: Order = "cyclic"
    block: int = 5
    source: Source = "random"
    branching: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        require_positive(self, "n_docs", "doc_len", "d_vocab", "epochs", "steps_per_doc", "block", "branching")
        require(self.doc_len >= 2, "doc_len", "at least 2 tokens", self.doc_len)
        require_literals(self)
        require(self.branching <= self.d_vocab, "branching", f"<= d_vocab={self.d_vocab}", self.branching)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.n_docs * self.steps_per_doc


class CyclicDocuments:
    """Data source: step `s` trains on document `schedule()[s // steps_per_doc]`."""

    def __init__(self, cfg: CyclicDocumentsConfig):
        self.cfg = cfg
        rng = seeding.rng(cfg.seed, 0)
        self.documents = torch.from_numpy(self._documents(rng)).long()
        self._schedule = self._order(seeding.rng(cfg.seed, 1))

    def _documents(self, rng: np.random.Generator) -> np.ndarray:
        cfg = self.cfg
        if cfg.source == "random":
            return rng.integers(0, cfg.d_vocab, (cfg.n_docs, cfg.doc_len))
        successors = np.stack([rng.choice(cfg.d_vocab, cfg.branching, replace=False) for _ in range(cfg.d_vocab)])
        docs = np.empty((cfg.n_docs, cfg.doc_len), dtype=np.int64)
        docs[:, 0] = rng.integers(0, cfg.d_vocab, cfg.n_docs)
        for pos in range(1, cfg.doc_len):
            docs[:, pos] = successors[docs[:, pos - 1], rng.integers(0, cfg.branching, cfg.n_docs)]
        return docs

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        cfg = self.cfg
        base = np.arange(cfg.n_docs)
        epochs = []
        for epoch in range(cfg.epochs):
            if cfg.order == "cyclic" or epoch == 0:
                epochs.append(base)
            elif cfg.order == "shuffled":
                epochs.append(np.concatenate([[0], 1 + rng.permutation(cfg.n_docs - 1)]))
            else:
                blocks = [rng.permutation(base[i : i + cfg.block]) for i in range(0, cfg.n_docs, cfg.block)]
                epochs.append(np.concatenate(blocks))
        return np.concatenate(epochs)

    def schedule(self) -> np.ndarray:
        """The document trained in each episode, `[epochs * n_docs]`."""
        return self._schedule.copy()

    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        doc = int(self._schedule[step // self.cfg.steps_per_doc])
        return {"tokens": self.documents[doc].expand(batch_size, -1).clone()}

    def only(self, doc: int) -> SingleDocument:
        """A data source that serves document `doc` at every step."""
        if not 0 <= doc < self.cfg.n_docs:
            raise ValueError(f"doc: expected an index in [0, {self.cfg.n_docs - 1}], got {doc}")
        return SingleDocument(self.documents[doc])

    def evaluator(self) -> Callable[[TransformerBridge], dict[str, float]]:
        """Mean token loss on every document, one forward for all of them."""

        def evaluate(model: TransformerBridge) -> dict[str, float]:
            batch = {"tokens": self.documents.to(next(model.parameters()).device)}
            per_token = token_losses(forward(model, batch), batch)[:, :-1]  # the last position has no target
            return {f"doc{i}": float(v) for i, v in enumerate(per_token.mean(dim=1))}

        return evaluate

    def identity_batch(self) -> Batch:
        """Every document once, labelled for a linear probe of its identity (`identity_layout`):
        `probed` [doc, pos] marks the positions from `skip` on, `doc` [doc] is the label and
        `window` [doc, pos] groups positions into runs of `window` (a probe that holds runs out
        whole must recognise a document at positions it was not fitted on)."""
        n_docs, length = self.documents.shape
        skip, window = identity_layout(length)
        positions = torch.arange(length).expand(n_docs, length)
        return {"tokens": self.documents.clone(), "probed": positions >= skip, "doc": torch.arange(n_docs),
                "window": positions // window}

    def document_losses(self, model: TransformerBridge) -> np.ndarray:
        """Mean token loss on every document, `[n_docs]` (the evaluator's numbers, in order)."""
        return np.array(list(self.evaluator()(model).values()))


def identity_layout(doc_len: int) -> tuple[int, int]:
    """`(skip, window)` of `CyclicDocuments.identity_batch`: positions before `skip` (8, or a
    quarter of a short document) have too little context to tell documents apart; runs of
    `window` positions (4, fewer in a short document, so that at least 5 runs are probed)."""
    skip = min(8, doc_len // 4)
    return skip, max(1, min(4, (doc_len - skip) // 5))


class SingleDocument:
    """Data source: the same document at every step (fine-tuning probes)."""

    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens

    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        return {"tokens": self.tokens.expand(batch_size, -1).clone()}


def loss_matrix(rows: list[dict[str, float]], n_docs: int, steps_per_doc: int, prefix: str = "docs") -> np.ndarray:
    """`[episodes + 1, n_docs]` loss matrix from metrics rows logged every episode."""
    by_step = {r["step"]: r for r in rows if f"{prefix}/doc0" in r}
    steps = sorted(s for s in by_step if s % steps_per_doc == 0)
    return np.array([[by_step[s][f"{prefix}/doc{i}"] for i in range(n_docs)] for s in steps])
