"""Synthetic biographies for fact-learning dynamics (Zucchet et al. 2025, after
Allen-Zhu & Li's bioS data).

A population of `n_individuals` people with unique three-part names and six
attributes (birth date, birth city, current city, university, major,
company). A biography is the six attribute sentences, each from a random
template, in shuffled order; a fresh one is drawn for every sample. Each
attribute has 25 templates; `heldout_templates` of them are never used in
training (evaluation only).
Name and attribute words always precede the value. Word-level tokens: one per
word, name part and value, and the date is three tokens (month, day, year).

Batches carry, besides `tokens` and `loss_mask` (padding excluded):
- `attribute_of` [batch, pos]: the attribute index (0-5) of a value token, else -1;
- `name_mask` [batch, pos]: name tokens;
- `sentence_of` [batch, pos]: the sentence index (0-5) of each token, -1 for BOS/padding;
- `individual` [batch]: who the biography is about.

`recall_masks` turns these into the position sets of the recall circuit's
attention signatures, `recall_probes` measures those signatures,
`evaluate_attributes` scores a model on a batch (attribute loss and accuracy,
confidence where a value is recalled), and `value_probes` (on a
`Biographies.value_batch`) are linear probes of an attribute's value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from interp import seeding
from interp.checkpoints import Run
from interp.configs import require, require_literals, require_positive
from interp.hooks import hook_name
from interp.ids import HeadId
from interp.metrics import heads, spans
from interp.metrics.linear_probes import LinearProbeSettings, linear_probe
from interp.metrics.probe_fitting import FitSettings
from interp.model import Batch, FwdHook, Patterns, forward, token_losses
from interp.pipeline import nearest_step, read_task
from interp.probing import Probe, ProbeTable, probe
from interp.replay import Replay
from interp.train import DataSource

EXAMPLE_STREAM = 9  # the explorer's example biography
ATTRIBUTES = ("birth_date", "birth_city", "current_city", "university", "major", "company")
SPECIAL = ("<pad>", "<bos>", ".")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")

# Templates are an opener, the name and a relation phrase that ends with the attribute's
# own keyword (birthday, birthplace, residence, university, major, employer), which is
# always the word right before the value, as in the bioS data: 5 openers x 5 phrases =
# 25 per attribute. Ending every phrase on its keyword makes "a value comes next, of
# this attribute" a one-token cue; with words after the keyword in some phrases only
# ("lists the birthday as"), the no-knowledge loss is reached slowly, which blurs the
# end of the first phase. Openers and phrases are one or two words: a biography is about
# 49 tokens, so a training step costs about 40% less than with English-length sentences
# (~69 tokens), with the same phases (measured: 4000 people, phase 1 / plateau end at
# step 350 / 1700 with the long sentences, 350 / 1650 with these). The held-out templates are pairings
# (opener i, phrase i) never seen in training, built from parts that are, so an
# evaluation sentence still says which attribute it asks for.
OPENERS = ("", "so", "also", "indeed", "notably")
PHRASES = {
    "birth_date": ("birthday", "has birthday", "celebrates birthday", "marks birthday", "lists birthday"),
    "birth_city": ("birthplace", "has birthplace", "names birthplace", "calls birthplace", "lists birthplace"),
    "current_city": ("residence", "has residence", "names residence", "keeps residence", "lists residence"),
    "university": ("university", "has university", "attended university", "names university", "lists university"),
    "major": ("major", "has major", "studied major", "names major", "lists major"),
    "company": ("employer", "has employer", "joined employer", "names employer", "lists employer"),
}
MAX_HELDOUT_TEMPLATES = len(OPENERS)
VALUE_PARTS = {"birth_date": ("month", "day", "year"), "birth_city": ("city",), "current_city": ("city",),
               "university": ("university",), "major": ("major",), "company": ("company",)}
"""The pool of each of an attribute's value tokens."""
VALUE_POOLS = {attribute: parts[0] for attribute, parts in VALUE_PARTS.items()}
"""The pool of each attribute's (first) value token."""
VALUE_POSITIONS = {"name": "last_name", "query": "value_query"}
"""Where `value_probes` read the value: the name's last token, and the query of the value."""
MAX_DAYS = 28  # a day every month has


# --- numpy's bounded draws, replayed in bulk ---------------------------------------------------
# Biographies are drawn with numpy's scalar draws (`rng.permutation(6)` and `rng.integers(n)`, one
# call per sentence): one call per value costs ~1 us of Python each, ~50 ms for a batch of 640.
# The functions below give the very same values from the same generator in a few array operations
# (so every stream stays what it was), by replaying how numpy's Generator (numpy 2.x; PCG64's
# 32-bit outputs) turns its stream of 32-bit words into bounded integers below 2**32:
# - `integers(n)`: Lemire's multiply-shift, `(word * n) >> 32`, redrawn while the low 32 bits of
#   `word * n` are below `(2**32 - n) % n`;
# - `permutation(k)`: a Fisher-Yates shuffle whose swap for position i = k-1, ..., 1 takes the
#   word's low bits under the smallest all-ones mask >= i, redrawn while they exceed i.
# A bound of 1 draws nothing (numpy returns 0). tests/test_batch_streams.py pins the streams.

_WORD = 1 << 32


@dataclass(frozen=True)
class _Bounded:
    """One bounded draw, uniform in `range(n)`: `rng.integers(n)`, or with `swap`, the swap index
    of position `n - 1` of `rng.permutation`."""

    n: int
    swap: bool = False

    def decide(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(accepted, value) of each 32-bit word (uint64) as this draw's first try."""
        if self.swap:
            mask = (1 << (self.n - 1).bit_length()) - 1
            value = words & np.uint64(mask)
            return value < self.n, value
        product = words * np.uint64(self.n)
        return (product & np.uint64(_WORD - 1)) >= (_WORD - self.n) % self.n, product >> np.uint64(32)


def _replay(rng: np.random.Generator, program: Sequence[_Bounded], repeats: int) -> np.ndarray:
    """[repeats, len(program)]: the values of `repeats` passes of `program` drawn one by one from
    `rng`, which is left as those scalar draws would leave it."""
    if any(not 1 <= d.n < _WORD for d in program):
        raise ValueError(f"program: expected bounds in 1..2**32-1, got {[d.n for d in program]}")
    out = np.zeros((repeats, len(program)), dtype=np.int64)
    drawn = [i for i, d in enumerate(program) if d.n > 1]
    if repeats == 0 or not drawn:
        return out
    start = rng.bit_generator.state
    # Words for the passes plus a margin for redraws (~1.3 per swap): more are drawn if needed,
    # and the generator is then wound back to the words actually used.
    words = rng.integers(0, _WORD, size=repeats * (len(drawn) + 2) + 64, dtype=np.uint32).astype(np.uint64)
    while True:
        end, spent = len(words), len(words) + 1  # a position past the words: `spent` when they ran out
        # For each draw, where it ends from each start: just past the first accepted word at or
        # after the start (`spent` if none is left).
        after, values = {}, {}
        for d in {program[i] for i in drawn}:
            accepted, values[d] = d.decide(words)
            first = np.where(accepted, np.arange(1, end + 1), spent)
            after[d] = np.append(np.minimum.accumulate(first[::-1])[::-1], [spent, spent])
        one_pass = np.arange(end + 2)
        for i in drawn:
            one_pass = after[program[i]][one_pass]
        starts, position, jump = np.empty(repeats, dtype=np.int64), 0, one_pass.tolist()
        for r in range(repeats):  # passes follow one another: a scalar chain (~50 ns each)
            starts[r], position = position, jump[position]
        if position != spent:
            used = position
            break
        words = np.append(words, rng.integers(0, _WORD, size=len(words), dtype=np.uint32).astype(np.uint64))
    position = starts
    for i in drawn:
        position = after[program[i]][position]
        out[:, i] = values[program[i]][position - 1]
    rng.bit_generator.state = start
    rng.integers(0, _WORD, size=used, dtype=np.uint32)
    return out


def _permutations(swaps: np.ndarray) -> np.ndarray:
    """[rows, k]: the permutations of `range(k)` that `rng.permutation(k)` makes from the swap
    indices [rows, k - 1] it draws (for positions k - 1, ..., 1)."""
    rows, k = swaps.shape[0], swaps.shape[1] + 1
    out = np.tile(np.arange(k), (rows, 1))
    every = np.arange(rows)
    for column, position in enumerate(range(k - 1, 0, -1)):
        j = swaps[:, column]
        held = out[every, j]
        out[every, j] = out[:, position]
        out[:, position] = held
    return out


def _permutation_program(k: int) -> list[_Bounded]:
    return [_Bounded(position + 1, swap=True) for position in range(k - 1, 0, -1)]


def templates(attribute: str, heldout: int) -> tuple[list[list[str]], list[list[str]]]:
    """(training, held-out) templates of `attribute` as word lists; the held-out ones
    are the first `heldout` diagonal pairings (opener i, phrase i)."""
    train, held = [], []
    for i, opener in enumerate(OPENERS):
        for j, phrase in enumerate(PHRASES[attribute]):
            words = [*opener.split(), "{name}", *phrase.split()]
            (held if i == j and i < heldout else train).append(words)
    return train, held


_PAD, _TEXT, _NAME, _VALUE = range(4)  # what fills a slot of a `_Sentences` layout


@dataclass(frozen=True)
class _Sentences:
    """Every template of every attribute as the token slots of its sentence, [attribute, template,
    slot] (shorter sentences padded): `kind` says what fills a slot (a template word `_TEXT`, a `_NAME`
    token, a `_VALUE` token or `_PAD`), `word` the token of a word, `part` which name or value token;
    then a sentence ends with the value and a full stop. Every attribute has `count` templates."""

    kind: np.ndarray
    word: np.ndarray
    part: np.ndarray
    count: int

    @classmethod
    def of(cls, templates: dict[str, list[list[str]]], vocab: Vocabulary) -> _Sentences:
        counts = {len(ts) for ts in templates.values()}
        # A template's index is drawn before it is known which attribute's: one bound for all.
        if len(counts) != 1:
            raise ValueError(f"templates: expected as many for every attribute, got {sorted(counts)}")

        def sentence_slots(attribute: str, words: list[str]) -> list[tuple[int, int, int]]:
            out = []
            for w in words:
                out += [(_NAME, 0, i) for i in range(3)] if w == "{name}" else [(_TEXT, vocab.index[w], 0)]
            return [*out, *((_VALUE, 0, i) for i in range(len(VALUE_PARTS[attribute]))), (_TEXT, vocab.index["."], 0)]

        sentences = [sentence_slots(attribute, words) for attribute in ATTRIBUTES for words in templates[attribute]]
        width = max(len(slots) for slots in sentences)
        table = np.zeros((len(sentences), width, 3), dtype=np.int64)
        table[:, :, 0] = _PAD
        for row, slots in enumerate(sentences):
            table[row, : len(slots)] = slots
        table = table.reshape(len(ATTRIBUTES), counts.pop(), width, 3)
        return cls(table[..., 0], table[..., 1], table[..., 2], table.shape[1])


Distribution = Literal["uniform", "power_law", "celebrities"]


@dataclass(frozen=True)
class BiographiesConfig:
    """Pool sizes set the value vocabularies; `distribution` weights who is sampled:
    `power_law` p(i) ∝ (i+1)^-alpha, `celebrities` makes the first `n_celebrities`
    `celebrity_boost` times as likely. `warmup_individuals` > 0 trains only on the
    first that many individuals for `warmup_steps` steps (the warm-up curriculum).
    `n_unseen` extra individuals are never trained on (hallucination probes) and
    `n_finetune` more are the fine-tuning split."""

    n_individuals: int = 1000
    n_unseen: int = 200
    n_finetune: int = 200
    first_names: int = 60
    middle_names: int = 60
    last_names: int = 80
    cities: int = 100
    universities: int = 50
    majors: int = 30
    companies: int = 60
    years: int = 50
    months: int = 12
    days: int = 28
    heldout_templates: int = 5
    distribution: Distribution = "uniform"
    alpha: float = 0.0
    n_celebrities: int = 0
    celebrity_boost: float = 1.0
    warmup_individuals: int = 0
    warmup_steps: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        require_positive(self, "n_individuals", "first_names", "middle_names", "last_names", "cities",
                         "universities", "majors", "companies", "years", "months", "days")
        require(self.months <= len(MONTHS), "months", f"at most {len(MONTHS)}", self.months)
        require(self.days <= MAX_DAYS, "days", f"at most {MAX_DAYS} (a day every month has)", self.days)
        require_literals(self)
        require(0 <= self.heldout_templates <= MAX_HELDOUT_TEMPLATES, "heldout_templates",
                f"0..{MAX_HELDOUT_TEMPLATES}", self.heldout_templates)
        total = self.n_individuals + self.n_unseen + self.n_finetune
        names = self.first_names * self.middle_names * self.last_names
        require(total <= names, "n_individuals", f"with n_unseen and n_finetune at most {names} unique names", total)
        require(self.alpha >= 0, "alpha", "a number >= 0", self.alpha)
        require(0 <= self.n_celebrities <= self.n_individuals and self.celebrity_boost >= 1, "n_celebrities",
                "0..n_individuals celebrities with celebrity_boost >= 1", (self.n_celebrities, self.celebrity_boost))
        require(0 <= self.warmup_individuals <= self.n_individuals, "warmup_individuals", "0..n_individuals",
                self.warmup_individuals)
        for name in ("n_unseen", "n_finetune", "warmup_steps"):
            require(getattr(self, name) >= 0, name, "an integer >= 0", getattr(self, name))


def recall_masks(batch: Batch) -> Batch:
    """Position sets of the recall circuit (Zucchet et al.), as boolean tensors:
    - `attribute_query` [batch, pos]: positions that predict an attribute's first value token;
    - `name` [batch, pos]: name tokens (any sentence: every sentence repeats the name);
    - `text` [batch, pos]: the other real tokens (neither name, BOS nor padding);
    - `last_name` [batch, pos]: the last token of each occurrence of the name;
    - `same_name` [batch, query, key]: the other name tokens of the query's own sentence."""
    name = batch["name_mask"].bool()
    real = batch["tokens"] != 0
    real[:, 0] = False
    following = torch.cat([name[:, 1:], torch.zeros_like(name[:, :1])], dim=1)
    last_name = name & ~following
    sentence = batch["sentence_of"]
    same_sentence = (sentence[:, :, None] == sentence[:, None, :]) & (sentence[:, :, None] >= 0)
    not_self = ~torch.eye(name.shape[1], dtype=torch.bool, device=name.device)[None]
    return {"attribute_query": spans.span_start_positions(batch["attribute_of"]), "name": name,
            "text": real & ~name, "last_name": last_name, "same_name": same_sentence & name[:, None, :] & not_self}


RECALL_SIGNATURES = {
    "attribute_to_name": "attention from the attribute query to the name",
    "attribute_to_text": "attention from the attribute query to the other text",
    "name_to_name": "attention from the last name token to the other name tokens",
    "sharpness": "normalized attention entropy at the attribute query",
}


def recall_probes(layers: Sequence[int]) -> dict[str, Probe]:
    """The recall circuit's attention signatures (`RECALL_SIGNATURES`) per head of `layers`,
    on a batch with its `recall_masks`."""
    return {"attribute_to_name": heads.attention_mass_probe(layers, "attribute_query", "name"),
            "attribute_to_text": heads.attention_mass_probe(layers, "attribute_query", "text"),
            "name_to_name": heads.attention_mass_probe(layers, "last_name", "same_name"),
            "sharpness": heads.sharpness_probe(layers, "attribute_query")}


@dataclass(frozen=True)
class RecallSignatures:
    """Each of `RECALL_SIGNATURES` per layer (mean over heads) at every checkpoint `steps`:
    `values[signature]["layer<l>"]`, a value per step."""

    steps: list[int]
    values: dict[str, dict[str, list[float]]]

    def at(self, step: int | None) -> dict[str, dict[str, float]]:
        """The values at the checkpoint nearest `step`, rounded to 4 digits (empty for None: a
        step never reached)."""
        if step is None:
            return {}
        index = self.steps.index(nearest_step(self.steps, step))
        return {name: {layer: round(values[index], 4) for layer, values in self.values[name].items()}
                for name in RECALL_SIGNATURES}

    def to_json(self) -> dict[str, Any]:
        """As `signatures.json` holds it: `{"steps": [...], signature: {"layer<l>": [...]}}`."""
        return {"steps": self.steps} | self.values


def recall_signatures(run: Run, batch: Batch, device: torch.device | str | None = None) -> RecallSignatures:
    """The `RecallSignatures` of `run`'s checkpoints on `batch`."""
    shape = run.model_config.n_layers, run.model_config.n_heads
    table = probe(run, recall_probes(range(shape[0])), {**batch, **recall_masks(batch)}, device=device)
    values = {}
    for name in RECALL_SIGNATURES:
        grid = table.head_grid(name, *shape)
        values[name] = {f"layer{layer}": grid[:, layer].mean(axis=1).tolist() for layer in range(shape[0])}
    return RecallSignatures(table.steps.tolist(), values)


def value_probes(layers: Sequence[int], seed: int = 0) -> dict[str, Probe]:
    """Linear probes of an attribute's value (`Biographies.value_batch`) from the residual stream
    after each of `layers`, at each of `VALUE_POSITIONS` (keys `value_name<l>`, `value_query<l>`).
    Grouped by person: a person is held out whole, so the probe passes only with a code of the
    value shared across people. The control task gives each surname a random value."""
    return {f"value_{where}{layer}": linear_probe(LinearProbeSettings(
                hook_name("resid_post", layer), positions, "value", groups="individual", control_types="surname",
                fit=FitSettings(seed=seed)))
            for where, positions in VALUE_POSITIONS.items() for layer in layers}


@dataclass(frozen=True)
class ValueProbeSummary:
    """Per position (`VALUE_POSITIONS`): each layer's accuracy at the first and the last step
    (`"layer<l>"`), and the first step at which the best layer's accuracy reaches 0.5."""

    initial: dict[str, dict[str, float]]
    final: dict[str, dict[str, float]]
    half_step: dict[str, int | None]


def value_probe_summary(table: ProbeTable, n_layers: int) -> ValueProbeSummary:
    """The `ValueProbeSummary` of a table of `value_probes` (steps ascending)."""
    out = ValueProbeSummary({}, {}, {})
    for where in VALUE_POSITIONS:
        accuracy = np.stack([table[f"value_{where}{layer}/accuracy"] for layer in range(n_layers)], axis=1)
        for by_position, row in ((out.initial, accuracy[0]), (out.final, accuracy[-1])):
            by_position[where] = {f"layer{layer}": round(float(v), 4) for layer, v in enumerate(row)}
        out.half_step[where] = spans.first_crossing(table.steps, accuracy.max(axis=1), 0.5)
    return out


def swap_names(batch: Batch) -> torch.Tensor:
    """`tokens` with each biography's name (every occurrence) replaced by the next
    biography's in the batch: the source run of a patch that asks which paths carry the
    person's identity. Names have three tokens, so the positions line up."""
    tokens, name = batch["tokens"].clone(), batch["name_mask"].bool()
    firsts = [row[mask][:3] for row, mask in zip(batch["tokens"], name, strict=True)]
    for row, mask in enumerate(name):
        other = firsts[(row + 1) % len(firsts)]
        tokens[row, mask] = other.repeat(int(mask.sum()) // 3)
    return tokens


@dataclass(frozen=True)
class RecallCircuit:
    """The recall circuit traced over a run's checkpoints at the attribute queries (positions
    predicting a value's first token), each table over the checkpoints:
    - `head`: the head attending most from the attribute query to the name at the end;
    - `lens`: logit-lens top-1 rate of the value per residual entry (`"0_pre"`, ..., `"final_post"`);
    - `dla`: the head's direct logit attribution to the value, and every component's total;
    - `path`, `whole`: the change of the value's log-prob when each of the head's paths (and its
      whole output) carries the write it makes for another person (`swap_names`)."""

    head: HeadId
    lens: ProbeTable
    dla: ProbeTable
    path: ProbeTable
    whole: ProbeTable


def recall_circuit(run: Run, batch: Batch, device: torch.device | str | None = None) -> RecallCircuit:
    """The `RecallCircuit` of `run` on `batch`, probed by the same runner and cache as every probe."""
    from interp.batches import SOURCE_KEY
    from interp.circuits.activation import activation_patching_probe
    from interp.circuits.common import mean_logprob
    from interp.circuits.graph import ModelShape
    from interp.circuits.paths import path_patching_probe
    from interp.circuits.readout import dla_probe, logit_lens_probe

    shape = run.model_config.n_layers, run.model_config.n_heads
    masked = {**batch, **recall_masks(batch), SOURCE_KEY: swap_names(batch)}
    found = probe(run, {"to_name": recall_probes(range(shape[0]))["attribute_to_name"],
                        "lens": logit_lens_probe("attribute_query"), "dla": dla_probe("attribute_query")},
                  masked, device=device)
    final = found.head_grid("to_name", *shape)[-1]
    layer, h = np.unravel_index(int(np.nanargmax(final)), final.shape)
    head = HeadId(int(layer), int(h))
    metric = mean_logprob("attribute_query")
    edges = [e for e in ModelShape.of(run.model_config).edges() if e.sender == head]
    patched = probe(run, {"path": path_patching_probe(metric, edges), "whole": activation_patching_probe(metric)},
                    masked, device=device)
    return RecallCircuit(head, found.select("lens"), found.select("dla"), patched.select("path"),
                         patched.select("whole"))


def example_biography(run: Run, seed: int = 0) -> list[int]:
    """The tokens of one held-out-template biography of a person `run` trained on (from its
    task's population): the sequence on which the explorer shows the run's attention."""
    bios = Biographies(read_task(run, BiographiesConfig))
    person = bios.draw_trained(1, seed, EXAMPLE_STREAM)
    tokens = bios.heldout_batch(person, seed, EXAMPLE_STREAM)["tokens"][0]
    return tokens[tokens != 0].tolist()  # padding (token 0) dropped


def evaluate_attributes(model, batch: Batch, fwd_hooks: Sequence[FwdHook] = (),
                        patterns: Patterns | None = None) -> dict[str, float]:
    """Attribute loss (summed over a value's tokens, averaged over attributes and
    biographies), attribute accuracy (every value token the argmax) and the
    confidence (max-probability, entropy) of the prediction of each first value token;
    `fwd_hooks` and `patterns` as in `interp.model.forward`."""
    with torch.no_grad():
        logits = forward(model, batch, fwd_hooks, patterns)
        losses = spans.span_losses(token_losses(logits, batch), batch["attribute_of"], len(ATTRIBUTES))
        correct = spans.span_correct(logits, batch["tokens"], batch["attribute_of"], len(ATTRIBUTES))
    return {"loss": float(losses.nanmean()), "accuracy": float(correct.nanmean()),
            **spans.confidence(logits, spans.span_start_positions(batch["attribute_of"]))}


def attribute_evaluator(batch: Batch, device: torch.device | str,
                        patterns: Callable[[Batch], Patterns] | None = None) -> Callable[[Any], dict[str, float]]:
    """`evaluate_attributes` on `batch` as a training evaluator; with batch `patterns`
    (e.g. `interp.pattern_substitution.reference_patterns`) the model is evaluated with them, as trained."""
    batch = {k: v.to(device) for k, v in batch.items()}
    return lambda model: evaluate_attributes(model, batch, patterns=patterns(batch) if patterns else None)

class Vocabulary:
    """Word-level tokenizer: a fixed list of words, saved with a run as JSON."""

    def __init__(self, words: list[str]):
        if len(set(words)) != len(words):
            raise ValueError("words: the vocabulary has duplicates")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}

    def encode(self, words: list[str]) -> list[int]:
        try:
            return [self.index[w] for w in words]
        except KeyError as missing:
            raise KeyError(f"word {missing} is not in the vocabulary") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.words))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return cls(json.loads(Path(path).read_text()))

    def decode(self, ids) -> str:
        return " ".join(self.words[int(i)] for i in ids if self.words[int(i)] != "<pad>")

    def __len__(self) -> int:
        return len(self.words)


def model_shape(cfg: BiographiesConfig) -> tuple[int, int]:
    """`(d_vocab, n_ctx)` a model needs for this task: they depend on the pools and
    templates, not on the number of individuals."""
    task = Biographies(replace(cfg, n_individuals=1, n_unseen=0, n_finetune=0, n_celebrities=0,
                               warmup_individuals=0))
    return len(task.vocab), task.seq_len


class Biographies:
    """The population, the tokenizer and samplers of biographies (a data source)."""

    def __init__(self, cfg: BiographiesConfig):
        self.cfg = cfg
        rng = seeding.rng(cfg.seed, 0)
        self.pools = {
            "first": [f"F{i}" for i in range(cfg.first_names)],
            "middle": [f"M{i}" for i in range(cfg.middle_names)],
            "last": [f"L{i}" for i in range(cfg.last_names)],
            "city": [f"city{i}" for i in range(cfg.cities)],
            "university": [f"uni{i}" for i in range(cfg.universities)],
            "major": [f"major{i}" for i in range(cfg.majors)],
            "company": [f"company{i}" for i in range(cfg.companies)],
            "month": list(MONTHS[: cfg.months]),
            "day": [str(d) for d in range(1, cfg.days + 1)],
            "year": [str(1950 + y) for y in range(cfg.years)],
        }
        split = {a: templates(a, cfg.heldout_templates) for a in ATTRIBUTES}
        self.train_templates = {a: train for a, (train, _) in split.items()}
        self.eval_templates = {a: held or train for a, (train, held) in split.items()}
        all_templates = {a: train + held for a, (train, held) in split.items()}
        template_words = sorted({w for ts in all_templates.values() for t in ts for w in t if w != "{name}"})
        pool_words = [w for key in ("first", "middle", "last", "city", "university", "major", "company", "day",
                                    "year") for w in self.pools[key]]
        self.vocab = Vocabulary([*SPECIAL, *template_words, *MONTHS, *pool_words])

        total = cfg.n_individuals + cfg.n_unseen + cfg.n_finetune
        codes = rng.choice(cfg.first_names * cfg.middle_names * cfg.last_names, total, replace=False)
        name_parts = np.stack([codes // (cfg.middle_names * cfg.last_names),
                               (codes // cfg.last_names) % cfg.middle_names, codes % cfg.last_names], axis=1)
        # Each person's value indices, drawn in the order of the attributes and their parts.
        value_parts = [(a, j, pool) for a, attribute in enumerate(ATTRIBUTES)
                       for j, pool in enumerate(VALUE_PARTS[attribute])]
        drawn = _replay(rng, [_Bounded(len(self.pools[pool])) for _, _, pool in value_parts], total)
        self.names = [[self.pools[pool][c] for pool, c in zip(("first", "middle", "last"), row, strict=True)]
                      for row in name_parts.tolist()]
        self.values = [{attribute: [] for attribute in ATTRIBUTES} for _ in range(total)]
        """Per individual: attribute -> list of value words."""
        for column, (a, _, pool) in enumerate(value_parts):
            words = self.pools[pool]
            for person, index in zip(self.values, drawn[:, column].tolist(), strict=True):
                person[ATTRIBUTES[a]].append(words[index])
        # Token ids of every person's name parts [total, 3] and values [total, attribute, part]
        # (a one-token value is padded with 0), for assembling batches by array indexing.
        ids = {key: np.array(self.vocab.encode(words)) for key, words in self.pools.items()}
        self.name_tokens = np.stack([ids[pool][name_parts[:, i]] for i, pool in enumerate(("first", "middle", "last"))],
                                    axis=1)
        self.value_tokens = np.zeros((total, len(ATTRIBUTES), 3), dtype=np.int64)
        for column, (a, j, pool) in enumerate(value_parts):
            self.value_tokens[:, a, j] = ids[pool][drawn[:, column]]
        self.seq_len = 1 + sum(max(len(t) for t in ts) + 2 + 1 + len(VALUE_PARTS[a]) for a, ts in all_templates.items())
        self.sentences = {False: _Sentences.of(self.train_templates, self.vocab),
                          True: _Sentences.of(self.eval_templates, self.vocab)}
        """The sentence layouts of the training (False) and held-out (True) templates."""

    # --- who is sampled -----------------------------------------------------------------

    @property
    def trained(self) -> np.ndarray:
        return np.arange(self.cfg.n_individuals)

    @property
    def unseen(self) -> np.ndarray:
        return np.arange(self.cfg.n_individuals, self.cfg.n_individuals + self.cfg.n_unseen)

    @property
    def finetune(self) -> np.ndarray:
        start = self.cfg.n_individuals + self.cfg.n_unseen
        return np.arange(start, start + self.cfg.n_finetune)

    def probabilities(self, step: int = 0) -> np.ndarray:
        """Sampling distribution over the trained individuals at `step`."""
        cfg = self.cfg
        n = cfg.warmup_individuals if cfg.warmup_individuals and step < cfg.warmup_steps else cfg.n_individuals
        weights = np.ones(n)
        if cfg.distribution == "power_law":
            weights = np.arange(1, n + 1, dtype=float) ** -cfg.alpha
        elif cfg.distribution == "celebrities":
            weights[: min(cfg.n_celebrities, n)] *= cfg.celebrity_boost
        return weights / weights.sum()

    # --- biographies --------------------------------------------------------------------

    def biography(self, person: int, rng: np.random.Generator, heldout: bool = False) -> Batch:
        """One encoded biography with its per-token annotations (unbatched, unpadded)."""
        bio = self.sample(np.array([person]), rng, heldout)
        length = int(bio["loss_mask"].sum())
        return {key: bio[key][0, :length] for key in ("tokens", "attribute_of", "name_mask", "sentence_of")}

    def sample(self, people: np.ndarray, rng: np.random.Generator, heldout: bool = False) -> Batch:
        """A fresh biography of each of `people`, padded to `seq_len` (padding is never scored): its
        sentences in a random order (`rng.permutation`), each from a random template (`rng.integers`)."""
        people = np.asarray(people, dtype=np.int64)
        layout, n, k = self.sentences[heldout], len(people), len(ATTRIBUTES)
        drawn = _replay(rng, [*_permutation_program(k), *[_Bounded(layout.count)] * k], n)
        attribute, template = _permutations(drawn[:, : k - 1]), drawn[:, k - 1 :]  # [biography, sentence]
        kind, part = layout.kind[attribute, template], layout.part[attribute, template]  # [biography, sentence, slot]
        # Each slot's token and annotations [what, biography, sentence, slot]; a name or value token
        # is looked up in the biography's own names and values [biography, sentence, 3 + 3].
        own = np.concatenate([np.broadcast_to(self.name_tokens[people][:, None], (n, k, 3)),
                              self.value_tokens[people[:, None], attribute]], axis=2)
        slots = np.empty((4, *kind.shape), dtype=np.int64)
        slots[0] = np.take_along_axis(own, part + 3 * (kind == _VALUE), axis=2)
        np.copyto(slots[0], layout.word[attribute, template], where=kind == _TEXT)
        slots[1] = np.where(kind == _VALUE, attribute[:, :, None], -1)
        slots[2] = kind == _NAME
        slots[3] = np.arange(k)[:, None]
        # Sentences follow one another after BOS: a real slot goes to the position that counts the
        # real slots up to it (flat indices: one scatter for the four rows).
        real = (kind != _PAD).reshape(n, -1)
        destination = (np.cumsum(real, axis=1) + self.seq_len * np.arange(n)[:, None])[real]
        placed = np.empty((4, n * self.seq_len), dtype=np.int64)
        placed[:] = np.array([self.vocab.index["<pad>"], -1, 0, -1])[:, None]
        placed[:, destination] = slots.reshape(4, -1)[:, real.ravel()]
        tokens, attribute_of, name_mask, sentence_of = torch.from_numpy(placed).view(4, n, self.seq_len)
        tokens[:, 0] = self.vocab.index["<bos>"]
        batch = {"tokens": tokens, "attribute_of": attribute_of, "name_mask": name_mask.bool(),
                 "sentence_of": sentence_of}
        batch["loss_mask"] = batch["tokens"] != self.vocab.index["<pad>"]
        batch["individual"] = torch.from_numpy(people)
        return batch

    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        probabilities = self.probabilities(step)
        return self.sample(rng.choice(len(probabilities), batch_size, p=probabilities), rng)

    def population(self, people: np.ndarray) -> Population:
        """A data source of fresh biographies of `people`, drawn uniformly (e.g. the
        fine-tuning split)."""
        return Population(self, np.asarray(people))

    def with_replay(self, source: DataSource, ratio: float, pool: int, seed: int, *stream: int) -> Replay:
        """`source` with `ratio` biographies of trained individuals per example mixed in
        (`interp.replay.Replay`), from a fixed pool of `pool` of them (people drawn with
        replacement, uniformly), drawn from the random stream `(seed, *stream)`."""
        rng = seeding.rng(seed, *stream)
        return Replay(source, self.sample(rng.choice(self.trained, pool), rng), ratio, seed=seed)

    # --- evaluation ---------------------------------------------------------------------

    def draw_trained(self, count: int, seed: int, *stream: int) -> np.ndarray:
        """`count` distinct trained individuals in order, drawn uniformly whatever the
        training distribution, from the random stream `(seed, *stream)`."""
        return np.sort(seeding.rng(seed, *stream).choice(self.trained, count, replace=False))

    def heldout_batch(self, people: np.ndarray, seed: int, *stream: int) -> Batch:
        """Held-out-template biographies of `people` (evaluation), from the random stream
        `(seed, *stream)`: the same batch for the same key."""
        return self.sample(people, seeding.rng(seed, *stream), heldout=True)

    def value_batch(self, people: np.ndarray, attribute: str, seed: int, *stream: int) -> Batch:
        """Held-out-template biographies of `people` (`heldout_batch`) labelled for `value_probes`:
        `value` [batch], the index of each person's value of `attribute` in its pool (a birth date:
        its month); `surname` [batch], the token of the name's last part; and the positions
        `last_name` (each occurrence of the name's last token) and `value_query` (the position
        predicting the value's first token)."""
        batch = self.heldout_batch(people, seed, *stream)
        last_name, span_of = recall_masks(batch)["last_name"], batch["attribute_of"]
        query = spans.span_start_positions(span_of) & (spans.target_spans(span_of) == ATTRIBUTES.index(attribute))
        first = last_name.int().argmax(dim=1, keepdim=True)
        pool = self.pools[VALUE_POOLS[attribute]]
        return {**batch, "last_name": last_name, "value_query": query,
                "surname": batch["tokens"].gather(1, first).squeeze(1),
                "value": torch.tensor([pool.index(self.values[int(p)][attribute][0]) for p in people])}

    def baseline(self) -> float:
        """No-knowledge attribute loss: mean over attributes of the entropy of the value
        marginal among the trained individuals. Value tokens are drawn independently
        (month, day, year), so a value's entropy is the sum of its tokens' marginal entropies."""
        entropies = []
        for attribute in ATTRIBUTES:
            total = 0.0
            for position in range(len(self.values[0][attribute])):
                _, counts = np.unique([self.values[i][attribute][position] for i in self.trained], return_counts=True)
                p = counts / counts.sum()
                total += float(-(p * np.log(p)).sum())
            entropies.append(total)
        return float(np.mean(entropies))


class Population:
    """Biographies of a fixed set of individuals, each equally likely (a data source)."""

    def __init__(self, bios: Biographies, people: np.ndarray):
        if len(people) == 0:
            raise ValueError("people: expected at least one individual")
        self.bios, self.people = bios, people

    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        return self.bios.sample(rng.choice(self.people, batch_size), rng)
