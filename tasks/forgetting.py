"""An upstream corpus of synthetic domains and fine-tuning tasks that perturb them.

Upstream (pre-training) sequences start with a domain marker. The domains
appear at unequal frequencies:
- `markov`: a walk on a sparse random Markov chain over the content tokens;
- `facts`: "k1 k2 v" triples from a fixed table of key pairs and values;
- `copy`: a random segment, SEP, the same segment;
- `reverse`: a random segment, SEP, the segment reversed;
- `arithmetic`: "a b c" triples with c = a + b mod `modulus`.

The corpus is a fixed, seeded set of sequences. The first `pool_size` are the
upstream examples whose forgetting is measured and the replay pool; the next
`heldout_size` are the never-replayed evaluation set. All of them are seen in
pre-training.

Fine-tuning task i (prompt -> answer, loss on the answer only) takes fresh
sequences from a task-specific mixture of the domains (Dirichlet-distributed
weights), keeps their first half as the prompt, and rewrites the second half
through a task-specific permutation that moves a fraction `strength` of the
content tokens. It conflicts with upstream knowledge of the domains it draws
on. How much is forgotten depends on its strength, steps and learning rate
(the task scale). Which examples are forgotten depends on its domain mixture:
a small Dirichlet concentration makes tasks specialize (higher-rank Z), a
large one makes them alike (nearly rank-1 Z).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from interp import seeding
from interp.configs import require, require_positive
from interp.model import Batch
from interp.replay import Replay

DOMAINS = ("markov", "facts", "copy", "reverse", "arithmetic")
SEP = len(DOMAINS)  # token ids 0..4 are the domain markers, 5 is SEP
FIRST_CONTENT = SEP + 1


@dataclass(frozen=True)
class UpstreamConfig:
    """`frequencies`: relative frequency of each domain, in `DOMAINS` order."""

    d_vocab: int = 96
    seq_len: int = 24
    frequencies: tuple[float, ...] = (0.4, 0.25, 0.15, 0.1, 0.1)
    corpus_size: int = 8000
    pool_size: int = 600
    heldout_size: int = 300
    markov_branching: int = 3
    n_facts: int = 48
    modulus: int = 11
    seed: int = 0

    def __post_init__(self) -> None:
        require_positive(self, "d_vocab", "seq_len", "corpus_size", "pool_size", "heldout_size",
                         "markov_branching", "n_facts", "modulus")
        require(len(self.frequencies) == len(DOMAINS) and min(self.frequencies) >= 0 and sum(self.frequencies) > 0,
                "frequencies", f"{len(DOMAINS)} non-negative numbers for {DOMAINS}", self.frequencies)
        require(self.seq_len >= 8, "seq_len", "at least 8 tokens", self.seq_len)
        require(self.n_content >= max(self.modulus, 2 * self.markov_branching), "d_vocab",
                f"room for at least {max(self.modulus, 2 * self.markov_branching)} content tokens after "
                f"{FIRST_CONTENT} special tokens", self.d_vocab)
        require(self.pool_size + self.heldout_size <= self.corpus_size, "corpus_size",
                f">= pool_size + heldout_size = {self.pool_size + self.heldout_size}", self.corpus_size)

    @property
    def n_content(self) -> int:
        return self.d_vocab - FIRST_CONTENT


class Domains:
    """Samplers of each domain's sequences, with the domain structure (chain, fact table) fixed by `seed`."""

    def __init__(self, cfg: UpstreamConfig):
        self.cfg = cfg
        rng = seeding.rng(cfg.seed, 0)
        n = cfg.n_content
        self.successors = np.stack([rng.choice(n, cfg.markov_branching, replace=False) for _ in range(n)])
        keys = rng.choice(n * n, cfg.n_facts, replace=False)
        self.fact_keys = np.stack([keys // n, keys % n], axis=1)
        self.fact_values = rng.integers(0, n, cfg.n_facts)

    def sample(self, domain: int, rng: np.random.Generator) -> np.ndarray:
        """One sequence of `seq_len` tokens: the marker, then content (ids shifted past the specials)."""
        cfg, body = self.cfg, self.cfg.seq_len - 1
        name = DOMAINS[domain]
        if name == "markov":
            walk = [rng.integers(0, cfg.n_content)]
            for _ in range(body - 1):
                walk.append(self.successors[walk[-1], rng.integers(0, cfg.markov_branching)])
            content = np.array(walk)
        elif name == "facts":
            picks = rng.integers(0, cfg.n_facts, body // 3 + 1)
            content = np.concatenate([[*self.fact_keys[p], self.fact_values[p]] for p in picks])[:body]
        elif name in ("copy", "reverse"):
            half = (body - 1) // 2
            segment = rng.integers(0, cfg.n_content, half)
            second = segment if name == "copy" else segment[::-1]
            tail = rng.integers(0, cfg.n_content, body - 1 - 2 * half)
            return np.concatenate([[domain], segment + FIRST_CONTENT, [SEP], second + FIRST_CONTENT,
                                   tail + FIRST_CONTENT]).astype(np.int64)
        else:
            a = rng.integers(0, cfg.modulus, body // 3 + 1)
            b = rng.integers(0, cfg.modulus, body // 3 + 1)
            content = np.stack([a, b, (a + b) % cfg.modulus], axis=1).ravel()[:body]
        return np.concatenate([[domain], content + FIRST_CONTENT]).astype(np.int64)


class UpstreamCorpus:
    """Data source for pre-training: uniform draws from the fixed corpus."""

    def __init__(self, cfg: UpstreamConfig):
        self.cfg = cfg
        self.domains = Domains(cfg)
        rng = seeding.rng(cfg.seed, 1)
        probabilities = np.asarray(cfg.frequencies, dtype=float) / sum(cfg.frequencies)
        self.domain_of = rng.choice(len(DOMAINS), cfg.corpus_size, p=probabilities)
        self.sequences = torch.from_numpy(np.stack([self.domains.sample(d, rng) for d in self.domain_of]))

    @property
    def pool(self) -> slice:
        return slice(0, self.cfg.pool_size)

    @property
    def heldout(self) -> slice:
        return slice(self.cfg.pool_size, self.cfg.pool_size + self.cfg.heldout_size)

    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        rows = torch.randint(0, self.cfg.corpus_size, (batch_size,), generator=generator)
        return {"tokens": self.sequences[rows]}

    def domain_means(self, values: np.ndarray) -> dict[str, float]:
        """The mean of per-pool-example `values` (e.g. losses) over each domain's examples in the pool."""
        domains = self.domain_of[self.pool]
        return {DOMAINS[d]: float(values[domains == d].mean()) for d in range(len(DOMAINS)) if (domains == d).any()}


@functools.cache
def upstream_corpus(cfg: UpstreamConfig) -> UpstreamCorpus:
    """The corpus of `cfg`, built once per process and shared read-only: every fine-tuning
    job a worker runs needs the same one, and building it takes seconds at the gpu size."""
    return UpstreamCorpus(cfg)


@dataclass(frozen=True)
class TaskSpec:
    """One fine-tuning task: the mixture of domains its prompts come from, the
    fraction of content tokens its permutation moves, and its training length and rate."""

    domain_weights: tuple[float, ...]
    strength: float
    steps: int
    lr: float
    seed: int


@dataclass(frozen=True)
class TaskFamilyConfig:
    """`n_tasks` tasks, each with domain weights drawn from a symmetric Dirichlet of
    `domain_concentration`; strengths, step counts and learning rates are drawn
    per task from the ranges."""

    n_tasks: int = 40
    domain_concentration: float = 1.0
    strength_range: tuple[float, float] = (0.2, 0.8)
    steps_choices: tuple[int, ...] = (40, 80, 120)
    lr_choices: tuple[float, ...] = (3e-4, 1e-3)
    seed: int = 0

    def __post_init__(self) -> None:
        require_positive(self, "n_tasks")
        require(self.domain_concentration > 0, "domain_concentration", "a positive Dirichlet concentration",
                self.domain_concentration)
        low, high = self.strength_range
        require(0 < low <= high <= 1, "strength_range", "(low, high) with 0 < low <= high <= 1", self.strength_range)
        require(len(self.steps_choices) > 0 and min(self.steps_choices) > 0, "steps_choices",
                "positive step counts", self.steps_choices)
        require(len(self.lr_choices) > 0 and min(self.lr_choices) > 0, "lr_choices", "positive rates",
                self.lr_choices)


def task_specs(cfg: TaskFamilyConfig) -> list[TaskSpec]:
    rng = seeding.rng(cfg.seed, 2)
    specs = []
    for index in range(cfg.n_tasks):
        weights = tuple(float(w) for w in rng.dirichlet([cfg.domain_concentration] * len(DOMAINS)))
        specs.append(TaskSpec(weights, float(rng.uniform(*cfg.strength_range)), int(rng.choice(cfg.steps_choices)),
                              float(rng.choice(cfg.lr_choices)), seed=cfg.seed * 100_003 + index))
    return specs


class FineTuningTask:
    """Data source for one task: fresh prompt -> answer sequences each step, with
    `loss_mask` on the answer. The answer is the upstream continuation rewritten
    by the task's permutation."""

    def __init__(self, domains: Domains, spec: TaskSpec):
        self.domains, self.spec = domains, spec
        rng = seeding.rng(spec.seed, 3)
        n = domains.cfg.n_content
        moved = rng.choice(n, max(2, int(round(spec.strength * n))), replace=False)
        self.permutation = np.arange(n)
        self.permutation[moved] = moved[np.roll(np.arange(len(moved)), 1)]  # a cycle: every moved token changes
        self.prompt_len = domains.cfg.seq_len // 2

    def rewrite(self, sequence: np.ndarray) -> np.ndarray:
        out = sequence.copy()
        tail = out[self.prompt_len :]
        content = tail >= FIRST_CONTENT
        tail[content] = self.permutation[tail[content] - FIRST_CONTENT] + FIRST_CONTENT
        return out

    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        weights = np.asarray(self.spec.domain_weights)
        picks = rng.choice(len(DOMAINS), batch_size, p=weights / weights.sum())
        tokens = torch.from_numpy(np.stack([self.rewrite(self.domains.sample(int(d), rng)) for d in picks]))
        loss_mask = torch.zeros_like(tokens, dtype=torch.bool)
        loss_mask[:, self.prompt_len - 1 : -1] = True  # predictions of the answer tokens
        return {"tokens": tokens, "loss_mask": loss_mask}


@dataclass(frozen=True)
class FineTuningConfig:
    """Task `spec` on the corpus of `upstream`, replaying that corpus's pool at
    `replay_ratio` pool examples per task example (0: no replay), drawn with
    `replay_weights` (None: uniformly) in orders seeded by `replay_seed`."""

    upstream: UpstreamConfig
    spec: TaskSpec
    replay_ratio: float = 0.0
    replay_weights: tuple[float, ...] | None = None
    replay_seed: int = 0

    def __post_init__(self) -> None:
        require(0 <= self.replay_ratio <= 1, "replay_ratio", "a ratio in [0, 1] (0: no replay)", self.replay_ratio)
        require(self.replay_weights is None or len(self.replay_weights) == self.upstream.pool_size, "replay_weights",
                f"one weight per pool example ({self.upstream.pool_size})", f"{len(self.replay_weights or ())} weights")

    def data(self) -> FineTuningTask | Replay:
        """The data source: the task's batches, with replayed pool rows appended."""
        corpus = upstream_corpus(self.upstream)
        task = FineTuningTask(corpus.domains, self.spec)
        if not self.replay_ratio:
            return task
        weights = None if self.replay_weights is None else np.asarray(self.replay_weights)
        return Replay(task, {"tokens": corpus.sequences[corpus.pool]}, self.replay_ratio, weights,
                      seed=self.replay_seed)
