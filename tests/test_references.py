"""Behaviour pinned: every analysis's `tiny` preset gives the stored `results.json`.

A refactor must leave these equal, timing and device aside, up to what another CPU, kernel
set (`ATEN_CPU_CAPABILITY`) or thread count changes: each value is compared with the
tolerance of its kind of quantity (`RULES`), which passes rounding noise and still fails a
change of behaviour (`test_a_small_change_of_behaviour_fails_the_reference`).
Regenerate a reference only for an intended change of behaviour, and say so:
    python tests/test_references.py <analysis> ...
To compare kernel sets or machines, write the results elsewhere instead:
    ATEN_CPU_CAPABILITY=default INTERP_TEST_THREADS=2 python tests/test_references.py --out DIR
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import threads_for_tests

from interp.analysis import run_analysis
from interp.parallel import LocalBackend

REFERENCES = Path(__file__).parent / "references"
ANALYSES = ("induction-heads", "anticipatory-recovery", "lowrank-forgetting", "fact-learning", "icl-transience")
VOLATILE = ("wall_seconds", "device")


# --- tolerance kinds ---------------------------------------------------------------------------
# Integers (counts, steps, sizes), booleans, None and strings are exact unless a rule says otherwise.


@dataclass(frozen=True)
class Close:
    """A float within `rel` (relative) or `abs` (absolute) of the reference."""

    rel: float = 0.0
    abs: float = 0.0

    def accepts(self, expected: Any, got: Any) -> bool:
        if is_float(expected) and is_float(got):
            return math.isclose(expected, got, rel_tol=self.rel, abs_tol=self.abs)
        return type(expected) is type(got) and expected == got


def rounded(decimals: int, steps: int = 1) -> Close:
    """A value the analysis rounds to `decimals`: values a hair apart round one step of the
    last place apart when they straddle a rounding boundary (half a unit on each side), and
    a value computed from `steps` rounded ones moves up to `steps` steps."""
    return Close(abs=steps * 10.0**-decimals + 1e-12)


def ranks(n: int, swaps: int = 2) -> Close:
    """Spearman's rho over `n` items: two near-tied items that swap order move it by
    12 / (n (n^2 - 1)) (no ties; less with ties). Allows `swaps` such swaps."""
    return Close(abs=swaps * 12 / (n * (n * n - 1)))


@dataclass(frozen=True)
class Labelled:
    """Strings "name number" (`"embed->L0H0.v -0.043"`): the name exact, the number within `number`."""

    number: Close

    def accepts(self, expected: Any, got: Any) -> bool:
        if not (isinstance(expected, str) and isinstance(got, str)):
            return expected == got
        (name_e, _, num_e), (name_g, _, num_g) = expected.rpartition(" "), got.rpartition(" ")
        try:
            return name_e == name_g and self.number.accepts(float(num_e), float(num_g))
        except ValueError:
            return expected == got


@dataclass(frozen=True)
class Chosen:
    """A list of names chosen by a threshold: up to `flips` names whose weight sits at the cut
    may enter or leave; the others are the same, in the same order."""

    flips: int = 1

    def accepts(self, expected: Any, got: Any) -> bool:
        if not (isinstance(expected, list) and isinstance(got, list)):
            return expected == got
        both = set(expected) & set(got)
        return (len(set(expected) ^ set(got)) <= self.flips
                and [x for x in expected if x in both] == [x for x in got if x in both])


Kind = Close | Labelled | Chosen

ROUNDED_4 = rounded(4)
# Losses, scores, probabilities and sums of a model trained in float32 (the default for a float no
# rule names). Measured across kernel sets (default, avx2) and 1 or 2 threads: losses move at most
# 1.4e-7 relative (a float32 ulp), scores at most 4.5e-7 absolute; a 1% larger learning rate moves
# losses 1.1e-4 to 1.7e-4 relative. The absolute floor is for values near 0, such as differences of
# losses (patching effects of ~0.01 carry a loss's ulp, 2.4e-7 near 2.7).
TRAINED = Close(rel=1e-5, abs=1e-5)

# path pattern (fnmatch over "<analysis>/<key>/<list index>/...") -> tolerance; the first match wins.
RULES: tuple[tuple[str, Kind], ...] = (
    # Rank correlation over the 29 edges of the tiny model's circuit graph (2 layers x 2 heads,
    # attention only): edge weights ~1e-7 apart swap ranks; 12/(29*840) = 4.9e-4 per swap.
    ("induction-heads/eap_*spearman_*", ranks(29)),
    # A ratio of two patching effects (0.0054 / 0.016), each a difference of two losses near 2.7
    # whose float32 ulp is 2.4e-7: 4.4e-5 relative per ulp (seen); allows about 7 ulps.
    ("induction-heads/path_k_share", Close(rel=3e-4)),
    # Top edges as "edge weight", weights printed with 3 decimals.
    ("induction-heads/eap_top_edges/*", Labelled(rounded(3))),
    ("induction-heads/circuit_diff/largest_changes/*", Labelled(rounded(3))),
    # Edges kept where |weight| reaches 10% of the largest: one edge at the cut may cross it.
    ("induction-heads/circuit_diff/appeared", Chosen(1)),
    ("induction-heads/circuit_diff/vanished", Chosen(1)),
    ("induction-heads/circuit_diff/sign_flipped", Chosen(1)),
    # Rounded to 4 decimals by the analyses (a difference of two rounded gaps: two steps).
    ("induction-heads/last_layer_attention_by_offset/*", ROUNDED_4),
    ("induction-heads/k_composition_by_head/*", ROUNDED_4),
    ("anticipatory-recovery/gap_growth", rounded(4, steps=2)),
    ("anticipatory-recovery/*", ROUNDED_4),
    ("lowrank-forgetting/*", ROUNDED_4),
    ("fact-learning/baseline", ROUNDED_4),
    ("fact-learning/*/final_*", ROUNDED_4),  # the phase rows of the sweeps (not the main run's final_loss)
    ("fact-learning/signatures_*", ROUNDED_4),
    ("fact-learning/recall_head_final/*", ROUNDED_4),
    ("fact-learning/value_probe_*", ROUNDED_4),
    ("icl-transience/dla_*", ROUNDED_4),
    ("icl-transience/cross_checkpoint/weights/*", ROUNDED_4),
    ("icl-transience/cross_checkpoint/activations/*", ROUNDED_4),
    ("icl-transience/*_probe_*", ROUNDED_4),
)


def is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def is_float(x: Any) -> bool:
    return isinstance(x, float)


def rule_for(path: str) -> Kind:
    return next((kind for pattern, kind in RULES if fnmatchcase(path, pattern)), TRAINED)


def differences(expected: Any, got: Any, path: str) -> list[str]:
    """Every value of `got` that is not within its rule's tolerance of `expected`, by path."""
    kind = rule_for(path)
    if isinstance(kind, Chosen):  # a rule for the whole list
        return [] if kind.accepts(expected, got) else [f"{path}: {got!r} != {expected!r}"]
    if isinstance(expected, dict) and isinstance(got, dict):
        found = [f"{path}/{k}: missing" for k in expected if k not in got]
        found += [f"{path}/{k}: unexpected" for k in got if k not in expected]
        return found + [d for k in expected if k in got for d in differences(expected[k], got[k], f"{path}/{k}")]
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            return [f"{path}: length {len(got)} != {len(expected)}"]
        return [d for i, (e, g) in enumerate(zip(expected, got, strict=True)) for d in differences(e, g, f"{path}/{i}")]
    if kind.accepts(expected, got):
        return []
    within = f" (allowed: {kind})" if not isinstance(kind, Close) or is_float(expected) and is_float(got) else ""
    return [f"{path}: {got!r} != {expected!r}{within}"]


def tiny_results(name: str, out: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    results = run_analysis(name, out, preset="tiny", overrides=overrides, device="cpu", progress=False,
                           backend=LocalBackend(1))
    return {k: v for k, v in json.loads(json.dumps(results)).items() if k not in VOLATILE}


def reference(name: str) -> dict[str, Any]:
    return json.loads((REFERENCES / f"{name}.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", ANALYSES)
def test_tiny_results_match_the_reference(name, tmp_path):
    assert differences(reference(name), tiny_results(name, tmp_path), name) == []


@pytest.mark.slow
def test_a_small_change_of_behaviour_fails_the_reference(tmp_path):
    """A 1% larger learning rate (3e-3 -> 3.03e-3) must not pass for rounding noise."""
    found = differences(reference("induction-heads"), tiny_results("induction-heads", tmp_path,
                                                                    {"train.lr": 3.03e-3}), "induction-heads")
    assert len(found) >= 5, found
    assert any("/repeated_loss_after:" in d for d in found), found


def leaves(x: Any, path: str):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from leaves(v, f"{path}/{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from leaves(v, f"{path}/{i}")
    else:
        yield path, x


def with_value(x: Any, path: list[str], value: Any) -> Any:
    """A copy of `x` with the value at `path` (keys and list indices as strings) replaced."""
    if not path:
        return value
    if isinstance(x, list):
        i = int(path[0])
        return [with_value(v, path[1:], value) if j == i else v for j, v in enumerate(x)]
    return {k: with_value(v, path[1:], value) if k == path[0] else v for k, v in x.items()}


@pytest.mark.parametrize("name", ANALYSES)
def test_every_reference_value_passes_float_noise_and_fails_a_real_change(name):
    """Each float of a reference, moved alone: by 1e-6 relative (float32 rounding that grew in
    training) it passes; by 1% + 1e-3 (a change of behaviour) it fails. Every integer moved by
    one fails, and every string changed fails."""
    ref = reference(name)
    for path, value in leaves(ref, name):
        keys = path.split("/")[1:]
        if is_float(value):
            assert differences(ref, with_value(ref, keys, value * (1 + 1e-6)), name) == [], path
            assert differences(ref, with_value(ref, keys, value * 1.01 + 1e-3), name) != [], path
        elif is_number(value):
            assert differences(ref, with_value(ref, keys, value + 1), name) != [], path
        elif isinstance(value, str):
            assert differences(ref, with_value(ref, keys, value + "x"), name) != [], path


def test_the_tolerance_kinds():
    assert differences({"a": [1.0, {"b": "x"}]}, {"a": [1.0 + 1e-9, {"b": "x"}]}, "t") == []
    assert differences({"a": 1.0}, {"a": 1.0001}, "t") == ["t/a: 1.0001 != 1.0 (allowed: Close(rel=1e-05, abs=1e-05))"]
    assert differences({"a": None}, {"a": 0.0}, "t") != []
    assert differences({"a": 1}, {"a": 1.0}, "t") != []  # a count that became a float
    assert differences({"a": 3}, {"a": 4}, "t") != []
    assert differences({"a": 1}, {"b": 1}, "t") == ["t/a: missing", "t/b: unexpected"]
    # rounded to 4 decimals: one step of the last place, not two
    assert rounded(4).accepts(0.0459, 0.0458) and not rounded(4).accepts(0.0459, 0.0457)
    assert ranks(29).accepts(0.8566852094955649, 0.8570019723865876)  # one swap, seen between kernel sets
    assert not ranks(29).accepts(0.8567, 0.8587)
    edge = Labelled(rounded(3))
    assert edge.accepts("embed->L0H0.v -0.043", "embed->L0H0.v -0.042")
    assert not edge.accepts("embed->L0H0.v -0.043", "embed->L0H1.v -0.043")
    assert not edge.accepts("embed->L0H0.v -0.043", "embed->L0H0.v -0.045")
    chosen = Chosen(1)
    assert chosen.accepts(["a", "b", "c"], ["a", "c"]) and chosen.accepts(["a", "c"], ["a", "b", "c"])
    assert not chosen.accepts(["a", "b", "c"], ["a"]) and not chosen.accepts(["a", "b"], ["b", "a"])
    assert not chosen.accepts(["a", "b"], ["a", "x"])  # one out and another in: two flips


if __name__ == "__main__":  # regenerate the named references, or write them to --out DIR
    import tempfile

    args = sys.argv[1:]
    dest = REFERENCES
    if args[:1] == ["--out"]:
        dest, args = Path(args[1]), args[2:]
        dest.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads_for_tests())
    for name in args or ANALYSES:
        with tempfile.TemporaryDirectory() as tmp:
            (dest / f"{name}.json").write_text(json.dumps(tiny_results(name, Path(tmp)), indent=1) + "\n")
