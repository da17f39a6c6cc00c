"""Behaviour pinned: every analysis's `tiny` preset gives the stored `results.json`.

A refactor must leave these equal (timing and device aside; floats within 1e-6).
Regenerate a reference only for an intended change of behaviour, and say so:
    python tests/test_references.py <analysis> ...
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from interp.analysis import run_analysis
from interp.parallel import LocalBackend

REFERENCES = Path(__file__).parent / "references"
ANALYSES = ("induction-heads", "anticipatory-recovery", "lowrank-forgetting", "fact-learning", "icl-transience")
VOLATILE = ("wall_seconds", "device")
TOLERANCE = 1e-6


def tiny_results(name: str, out: Path) -> dict[str, Any]:
    results = run_analysis(name, out, preset="tiny", device="cpu", progress=False, backend=LocalBackend(1))
    return {k: v for k, v in json.loads(json.dumps(results)).items() if k not in VOLATILE}


def differences(expected: Any, got: Any, path: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(got, dict):
        found = [f"{path}/{k}: missing" for k in expected.keys() - got.keys()]
        found += [f"{path}/{k}: unexpected" for k in got.keys() - expected.keys()]
        for key in expected.keys() & got.keys():
            found += differences(expected[key], got[key], f"{path}/{key}")
        return found
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            return [f"{path}: length {len(got)} != {len(expected)}"]
        pairs = enumerate(zip(expected, got, strict=True))
        return [d for i, (e, g) in pairs for d in differences(e, g, f"{path}[{i}]")]
    numbers = (int, float)
    if isinstance(expected, numbers) and isinstance(got, numbers) and not isinstance(expected, bool):
        if math.isclose(expected, got, rel_tol=TOLERANCE, abs_tol=TOLERANCE):
            return []
    elif expected == got:
        return []
    return [f"{path}: {got!r} != {expected!r}"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ANALYSES)
def test_tiny_results_match_the_reference(name, tmp_path):
    expected = json.loads((REFERENCES / f"{name}.json").read_text())
    assert differences(expected, tiny_results(name, tmp_path)) == []


def test_differences_tolerate_only_tiny_float_changes():
    assert differences({"a": [1.0, {"b": "x"}]}, {"a": [1.0 + 1e-9, {"b": "x"}]}) == []
    assert differences({"a": 1.0}, {"a": 1.001}) == ["/a: 1.001 != 1.0"]
    assert differences({"a": None}, {"a": 0.0}) == ["/a: 0.0 != None"]
    assert differences({"a": 1}, {"b": 1}) == ["/a: missing", "/b: unexpected"]


if __name__ == "__main__":  # regenerate the named references
    import tempfile

    torch.set_num_threads(1)
    for name in sys.argv[1:] or ANALYSES:
        with tempfile.TemporaryDirectory() as tmp:
            (REFERENCES / f"{name}.json").write_text(json.dumps(tiny_results(name, Path(tmp)), indent=1) + "\n")
