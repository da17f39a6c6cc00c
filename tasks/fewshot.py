"""Bursty few-shot classification on Gaussian clusters (Chan et al. 2022; Reddy 2023;
Singh et al. 2023), the task of transient in-context learning.

A sequence is `x1 y1 x2 y2 ... xN yN xq`: exemplars `x` are continuous vectors fed
through the model's input projection, labels `y` are tokens, and only the
prediction at the query `xq` is scored. Exemplar `i` sits at position `2i`, its
label at `2i + 1`, the query at `2N`.

Classes have means `mu_k ~ N(0, I/D)`; an exemplar is `(mu_k + eps * eta) / sqrt(1 + eps^2)`
with `eta ~ N(0, I/D)`, drawn from a finite pool of `exemplars_per_class` per class.
A class's label is fixed (`class % n_labels`). A bursty training sequence holds
`burstiness` exemplars of the query's class and as many of one distractor class;
the other pairs are random classes. The query's class being in context with its
label lets a model answer either from the context (ICL) or from its weights (IWL).

Evaluation sets separate the two (`EVAL_KINDS`, see `FewShot.evaluation`). Every
batch carries the position sets the circuit metrics need: `query_mask`,
`label_mask`, `match_mask` (labels of pairs whose exemplar is of the query's class),
`nonmatch_mask`, `context_labels` (which label tokens are in context), `answer` and `query_class`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from interp.configs import require, require_positive
from interp.metrics import heads
from interp.metrics.linear_probes import LinearProbeSettings, linear_probe
from interp.metrics.outputs import token_set_mass, token_set_mass_probe
from interp.metrics.probe_fitting import FitSettings
from interp.metrics.spans import first_crossing
from interp.model import IGNORE_INDEX, Batch, batch_to, forward
from interp.probing import Probe, ProbeTable

EVAL_KINDS = ("icl_novel", "icl_permuted", "iwl", "flip", "ciwl", "train")
"""- `icl_novel`: two held-out classes, each given a random label in context;
- `icl_permuted`: two trained classes whose in-context labels are random, never their own;
- `iwl`: the query's class is absent, the context holds distinct other classes with their labels;
- `flip`: the query's class and the distractor swap labels in context (ICL answers the swapped label);
- `ciwl`: the query's class is absent, its true label is attached to another class in context;
- `train`: sequences from the training distribution.
The two-class kinds fill the context with `context_pairs / 2` exemplars of each class."""


@dataclass(frozen=True)
class FewShotConfig:
    """- `n_classes` trained classes, `n_heldout_classes` more for novel-class ICL;
    - `exemplars_per_class` exemplars in each class's fixed pool, `noise` the within-class eps;
    - `context_pairs` N, `burstiness` exemplars of the query's class (and of the
      distractor) in a bursty sequence, `bursty_fraction` of sequences bursty (the rest
      draw every context class at random);
    - `zipf_exponent`: class `k` is drawn with probability proportional to `(k + 1)^-alpha`;
    - `query_copies_context`: the query is one of its class's in-context exemplars (the
      negative control); otherwise it is a different exemplar of the class;
    - `structure_seed` draws the class means and pools."""

    n_classes: int = 256
    n_heldout_classes: int = 64
    n_labels: int = 0
    exemplars_per_class: int = 20
    noise: float = 0.1
    dim: int = 64
    context_pairs: int = 8
    burstiness: int = 3
    bursty_fraction: float = 1.0
    zipf_exponent: float = 0.0
    query_copies_context: bool = False
    structure_seed: int = 0

    def __post_init__(self) -> None:
        require_positive(self, "n_classes", "n_heldout_classes", "exemplars_per_class", "dim", "context_pairs",
                         "burstiness")
        require(isinstance(self.n_labels, int) and 0 <= self.n_labels <= self.n_classes, "n_labels",
                f"0 (one label per class) or 4..n_classes={self.n_classes}", self.n_labels)
        require(self.labels >= 4, "n_labels", "at least 4 labels (evaluations draw two foreign ones)", self.n_labels)
        require(self.n_heldout_classes >= 2, "n_heldout_classes", "at least 2 novel classes", self.n_heldout_classes)
        require(self.noise >= 0, "noise", "a number >= 0", self.noise)
        require(self.context_pairs % 2 == 0, "context_pairs", "an even number (two-class evaluations)",
                self.context_pairs)
        require(2 * self.burstiness <= self.context_pairs, "burstiness",
                f"<= context_pairs / 2 = {self.context_pairs // 2}", self.burstiness)
        require(self.exemplars_per_class > self.burstiness, "exemplars_per_class",
                f"> burstiness={self.burstiness} (the query is another exemplar)", self.exemplars_per_class)
        require(self.exemplars_per_class > self.context_pairs // 2, "exemplars_per_class",
                f"> context_pairs / 2 = {self.context_pairs // 2}", self.exemplars_per_class)
        largest_label_group = -(-self.n_classes // self.labels)
        require(self.n_classes - largest_label_group >= self.context_pairs, "n_classes",
                f"enough classes to fill {self.context_pairs} pairs without the query's label", self.n_classes)
        require(0 <= self.bursty_fraction <= 1, "bursty_fraction", "a fraction in [0, 1]", self.bursty_fraction)
        require(self.zipf_exponent >= 0, "zipf_exponent", "a number >= 0", self.zipf_exponent)

    def describe(self) -> str:
        """The task in words, for reports."""
        return (f"{self.n_classes} classes with {self.labels} labels, {self.exemplars_per_class} exemplars per class, "
                f"noise {self.noise:g}, dimension {self.dim}, {self.context_pairs} context pairs, burstiness "
                f"{self.burstiness}, {self.bursty_fraction:g} of sequences bursty, "
                f"Zipf exponent {self.zipf_exponent:g}")

    @property
    def labels(self) -> int:
        return self.n_labels or self.n_classes

    @property
    def d_vocab(self) -> int:
        """Label tokens plus the placeholder token at exemplar positions."""
        return self.labels + 1

    @property
    def n_ctx(self) -> int:
        return 2 * self.context_pairs + 1


class FewShot:
    """Data source for the trainer and evaluation batches for probes."""

    def __init__(self, cfg: FewShotConfig):
        self.cfg = cfg
        generator = torch.Generator().manual_seed(cfg.structure_seed)
        total = cfg.n_classes + cfg.n_heldout_classes
        scale = cfg.dim**-0.5
        means = torch.randn(total, cfg.dim, generator=generator) * scale
        noise = torch.randn(total, cfg.exemplars_per_class, cfg.dim, generator=generator) * scale
        self.exemplars = (means[:, None] + cfg.noise * noise) / (1 + cfg.noise**2) ** 0.5
        self.class_labels = torch.arange(total) % cfg.labels
        ranks = torch.arange(1, cfg.n_classes + 1, dtype=torch.float64)
        self.class_weights = ranks ** -cfg.zipf_exponent
        # The cumulative distribution `torch.multinomial` builds from the weights at every call
        # (summed in order, divided by the total, the last entry exactly 1), built once.
        cumulative = self.class_weights.cumsum(0)
        self.class_cdf = cumulative / cumulative[-1]
        self.class_cdf[-1] = 1.0
        self.placeholder = cfg.labels

    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        return self.sample(batch_size, generator)

    # --- sampling ---------------------------------------------------------------------------------

    def _classes(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """Classes drawn with `class_weights`, exactly as `torch.multinomial(class_weights, n,
        replacement=True)` draws them for n >= 2 (a uniform double per draw, looked up in the
        cumulative distribution) without summing the 12,800 weights of `paper` again at every call."""
        n = math.prod(shape)
        if n == 0:
            return torch.empty(shape, dtype=torch.long)
        if n == 1:  # torch.multinomial draws a single sample another way (an exponential race)
            return torch.multinomial(self.class_weights, 1, replacement=True, generator=generator).view(shape)
        return torch.searchsorted(self.class_cdf, torch.rand(n, dtype=torch.float64, generator=generator)).view(shape)

    @staticmethod
    def _draw_excluding(excluded: Tensor, count: int, generator: torch.Generator) -> Tensor:
        """`count` distinct indices per row, uniformly among those not `excluded` [n, pool]."""
        scores = torch.rand(excluded.shape, generator=generator).masked_fill(excluded, 2.0)
        return scores.argsort(dim=1)[:, :count]

    def _label_clash(self, labels: Tensor) -> Tensor:
        """[n, n_classes]: trained classes whose label is one of `labels` [n, k]."""
        return (self.class_labels[: self.cfg.n_classes][None, None, :] == labels[:, :, None]).any(1)

    def _distinct_exemplars(self, n: int, count: int, generator: torch.Generator) -> Tensor:
        """`count` distinct pool indices per row."""
        return torch.rand(n, self.cfg.exemplars_per_class, generator=generator).argsort(dim=1)[:, :count]

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """`n` training sequences."""
        cfg = self.cfg
        pairs, burst = cfg.context_pairs, cfg.burstiness
        query = self._classes((n,), generator)
        distractor = self._classes((n,), generator)
        clash = distractor == query
        while clash.any():
            distractor[clash] = self._classes((int(clash.sum()),), generator)
            clash = distractor == query
        rest = self._classes((n, pairs - 2 * burst), generator)
        bursty = torch.cat([query[:, None].expand(n, burst), distractor[:, None].expand(n, burst), rest], dim=1)
        random_context = self._classes((n, pairs), generator)
        is_bursty = torch.rand(n, generator=generator) < cfg.bursty_fraction
        classes = torch.where(is_bursty[:, None], bursty, random_context)
        # The query-class copies (the first `burst` slots before shuffling) take distinct
        # exemplars and the query yet another one, so matching needs class similarity, not identity.
        picks = self._distinct_exemplars(n, burst + 1, generator)
        context_index = torch.randint(0, cfg.exemplars_per_class, (n, pairs), generator=generator)
        context_index[:, :burst] = picks[:, :burst]
        query_index = picks[:, burst]
        order = torch.rand(n, pairs, generator=generator).argsort(dim=1)
        classes, context_index = classes.gather(1, order), context_index.gather(1, order)
        if cfg.query_copies_context:
            same = classes == query[:, None]
            first = torch.where(same.any(1), same.float().argmax(1), torch.zeros(n, dtype=torch.long))
            copy = context_index.gather(1, first[:, None]).squeeze(1)
            query_index = torch.where(same.any(1), copy, query_index)
        labels = self.class_labels[classes]
        return self._assemble(classes, context_index, labels, query, query_index, self.class_labels[query])

    def evaluation(self, kind: str, n: int, generator: torch.Generator) -> Batch:
        """`n` sequences of evaluation set `kind` (one of `EVAL_KINDS`)."""
        if kind not in EVAL_KINDS:
            raise ValueError(f"kind: expected one of {EVAL_KINDS}, got {kind!r}")
        if kind == "train":
            return self.sample(n, generator)
        if kind == "iwl":
            return self._iwl(n, generator)
        cfg = self.cfg
        half = cfg.context_pairs // 2
        none = torch.zeros(n, cfg.n_classes, dtype=torch.bool)
        if kind == "icl_novel":
            two = cfg.n_classes + self._draw_excluding(none[:, : cfg.n_heldout_classes], 2, generator)
        else:
            # Two classes with different labels, so swapping or attaching labels changes the answer.
            first = self._draw_excluding(none, 1, generator)
            second = self._draw_excluding(self._label_clash(self.class_labels[first]), 1, generator)
            two = torch.cat([first, second], dim=1)
        true = self.class_labels[two]
        if kind in ("icl_novel", "icl_permuted"):
            # Two distinct labels that are neither class's own, so only the context says which is which.
            own = torch.zeros(n, cfg.labels, dtype=torch.bool).scatter_(1, true, True)
            pair_labels = self._draw_excluding(own, 2, generator)
        elif kind == "flip":
            pair_labels = true.flip(1)
        else:  # ciwl: the query's class is absent; its label is carried by the first class
            query_class = self._draw_excluding(self._label_clash(true), 1, generator).squeeze(1)
            pair_labels = torch.stack([self.class_labels[query_class], true[:, 1]], dim=1)
        slot = torch.arange(cfg.context_pairs).expand(n, -1) % 2
        order = torch.rand(n, cfg.context_pairs, generator=generator).argsort(dim=1)
        slot = slot.gather(1, order)
        classes, labels = two.gather(1, slot), pair_labels.gather(1, slot)
        picks = self._distinct_exemplars(n, half + 1, generator)
        rank = _rank_within(slot)
        context_index = picks.gather(1, rank)
        if kind == "ciwl":
            query, query_index = query_class, picks[:, half]
            answer = self.class_labels[query_class]
        else:
            query, query_index = two[:, 0], picks[:, half]
            answer = pair_labels[:, 0]
            if cfg.query_copies_context:
                copy = context_index.gather(1, (slot == 0).float().argmax(1, keepdim=True)).squeeze(1)
                query_index = copy
        return self._assemble(classes, context_index, labels, query, query_index, answer)

    def evaluators(self, n: int, generator: torch.Generator, device: torch.device) -> dict[str, Callable]:
        """A trainer evaluator (`evaluate` on a fixed batch) for every evaluation set: `n` sequences
        of each, drawn in the order of `EVAL_KINDS` from `generator`."""
        batches = {kind: batch_to(self.evaluation(kind, n, generator), device) for kind in EVAL_KINDS}
        return {kind: partial(evaluate, batch=batch) for kind, batch in batches.items()}

    def answer_batch(self, n: int, generator: torch.Generator) -> Batch:
        """`n` IWL then `n` novel-class ICL sequences (`evaluation`) in one batch, for the
        `answer_probes` (one forward for both): `iwl_query` and `icl_query` [batch, pos] mark the
        query of each half, whose `answer` is its in-weights label (IWL) or in-context label (ICL)."""
        halves = [self.evaluation(kind, n, generator) for kind in ("iwl", "icl_novel")]
        batch = {key: torch.cat([half[key] for half in halves]) for key in halves[0]}
        first = (torch.arange(2 * n) < n)[:, None]
        return {**batch, "iwl_query": batch["query_mask"] & first, "icl_query": batch["query_mask"] & ~first}

    def _iwl(self, n: int, generator: torch.Generator) -> Batch:
        cfg = self.cfg
        query = self._classes((n,), generator)
        classes = self._draw_excluding(self._label_clash(self.class_labels[query][:, None]), cfg.context_pairs,
                                       generator)
        picks = self._distinct_exemplars(n, 2, generator)
        context_index = torch.randint(0, cfg.exemplars_per_class, classes.shape, generator=generator)
        return self._assemble(classes, context_index, self.class_labels[classes], query, picks[:, 0],
                              self.class_labels[query])

    def _assemble(self, classes: Tensor, context_index: Tensor, labels: Tensor, query: Tensor, query_index: Tensor,
                  answer: Tensor) -> Batch:
        cfg = self.cfg
        n, pairs = classes.shape
        length = cfg.n_ctx
        tokens = torch.full((n, length), self.placeholder, dtype=torch.long)
        tokens[:, 1 : 2 * pairs : 2] = labels
        vectors = torch.zeros(n, length, cfg.dim)
        vectors[:, 0 : 2 * pairs : 2] = self.exemplars[classes, context_index]
        vectors[:, -1] = self.exemplars[query, query_index]
        vector_mask = torch.zeros(n, length, dtype=torch.bool)
        vector_mask[:, 0::2] = True
        targets = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
        targets[:, -1] = answer
        label_mask = torch.zeros(n, length, dtype=torch.bool)
        label_mask[:, 1 : 2 * pairs : 2] = True
        match_mask = torch.zeros(n, length, dtype=torch.bool)
        match_mask[:, 1 : 2 * pairs : 2] = classes == query[:, None]
        query_mask = torch.zeros(n, length, dtype=torch.bool)
        query_mask[:, -1] = True
        # A scatter, not `one_hot(labels).any(1)`: with a label per class (12,800 in `paper`) the
        # one-hot tensor is [n, pairs, d_vocab] of int64, which took 90% of a batch's time.
        context_labels = torch.zeros(n, cfg.d_vocab, dtype=torch.bool).scatter_(1, labels, True)
        return {"tokens": tokens, "vectors": vectors, "vector_mask": vector_mask, "targets": targets,
                "query_mask": query_mask, "label_mask": label_mask, "match_mask": match_mask,
                "nonmatch_mask": label_mask & ~match_mask, "context_labels": context_labels, "answer": answer,
                "query_class": query}


def _rank_within(slot: Tensor) -> Tensor:
    """For each position, how many earlier positions hold the same slot value."""
    one_hot = F.one_hot(slot, 2)
    return ((one_hot.cumsum(dim=1) - one_hot) * one_hot).sum(-1)


# --- scoring -------------------------------------------------------------------------------------


def query_logits(logits: Tensor) -> Tensor:
    """The label logits at the query (the placeholder token cannot be an answer)."""
    return logits[:, -1, :-1].float()


def accuracy(logits: Tensor, batch: Batch, closed: bool = True) -> float:
    """Query accuracy; `closed` takes the argmax over the labels in context only."""
    scores = query_logits(logits)
    if closed:
        scores = scores.masked_fill(~batch["context_labels"][:, :-1], float("-inf"))
    return float((scores.argmax(-1) == batch["answer"]).float().mean())


def context_label_mass(logits: Tensor, batch: Batch) -> float:
    """Probability the model puts on the labels present in context."""
    return token_set_mass(logits, batch["query_mask"], batch["context_labels"])


def query_loss(logits: Tensor, batch: Batch) -> float:
    return float(F.cross_entropy(query_logits(logits), batch["answer"]))


def evaluate(model, batch: Batch) -> dict[str, float]:
    """Closed-class and full-vocabulary accuracy, in-context label mass and loss at the query."""
    logits = forward(model, batch)
    return {"closed": accuracy(logits, batch, closed=True), "full": accuracy(logits, batch, closed=False),
            "label_mass": context_label_mass(logits, batch), "loss": query_loss(logits, batch)}


HEAD_CIRCUITS = {
    "prev_token": "corrected previous-token score at label positions",
    "induction": "induction strength at the query (matching minus non-matching label attention)",
    "label_attention": "attention from the query to all label positions",
}
"""The per-head circuit metrics of `circuit_probes`, described."""


def answer_probes(hook: str, seed: int = 0) -> dict[str, Probe]:
    """Linear probes of the query's answer from `hook` on an `answer_batch`:
    - `in_weights`: the label of the query's class on IWL sequences, grouped by class (a class is
      held out whole, so only a label code shared across classes passes); the control task gives
      each class a random label;
    - `in_context`: the label of the matching exemplar on novel-class ICL sequences, grouped by
      sequence. No control task: that label is drawn per sequence, so no type of input determines
      it and memorising types cannot pass (a control by query class would only measure how well
      the class itself is decodable)."""
    return {"in_weights": linear_probe(LinearProbeSettings(hook, "iwl_query", "answer", groups="query_class",
                                                           control_types="query_class", fit=FitSettings(seed=seed))),
            "in_context": linear_probe(LinearProbeSettings(hook, "icl_query", "answer",
                                                           fit=FitSettings(control=False, seed=seed)))}


@dataclass(frozen=True)
class AnswerSummary:
    """From a table of `answer_probes` and an IWL accuracy curve (`answer_summary`): the probes
    at the first and the last step, the in-context one's peak, and the first steps at which the
    in-weights probe and IWL accuracy reach half their final value (None for a curve that ends
    no higher than it starts)."""

    in_weights_probe_initial: float
    in_weights_probe_final: float
    in_weights_probe_half_step: int | None
    iwl_half_step: int | None
    in_context_probe_initial: float
    in_context_probe_peak: float
    in_context_probe_peak_step: int
    in_context_probe_final: float


def answer_summary(answers: ProbeTable, iwl_steps: np.ndarray, iwl: np.ndarray) -> AnswerSummary:
    """The `AnswerSummary` of a table of `answer_probes` (steps ascending) and an IWL accuracy curve."""
    steps, in_weights, in_context = answers.steps, answers["in_weights/accuracy"], answers["in_context/accuracy"]
    peak = int(np.argmax(in_context))

    def half(steps: np.ndarray, values: np.ndarray) -> int | None:
        return first_crossing(steps, values, values[-1] / 2) if values[-1] > values[0] else None

    return AnswerSummary(in_weights_probe_initial=round(float(in_weights[0]), 4),
                         in_weights_probe_final=round(float(in_weights[-1]), 4),
                         in_weights_probe_half_step=half(steps, in_weights),
                         iwl_half_step=half(np.asarray(iwl_steps), iwl),
                         in_context_probe_initial=round(float(in_context[0]), 4),
                         in_context_probe_peak=round(float(in_context[peak]), 4),
                         in_context_probe_peak_step=int(steps[peak]),
                         in_context_probe_final=round(float(in_context[-1]), 4))


def circuit_probes(layers: Sequence[int]) -> dict[str, Probe]:
    """Probes of the `HEAD_CIRCUITS` (per head of `layers`) and `label_mass`, the probability
    on the labels in context."""
    return {"prev_token": heads.corrected_previous_token_probe(layers, "label_mask"),
            "induction": heads.induction_strength_probe(layers, "query_mask", "match_mask", "nonmatch_mask"),
            "label_attention": heads.attention_mass_probe(layers, "query_mask", "label_mask"),
            "label_mass": token_set_mass_probe("query_mask", "context_labels")}
