"""interp.hooks: every hook name comes from `hook_name`, which agrees with TransformerLens's
`get_act_name` and names hooks a built model has; no other module spells one."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import get_args

import pytest
from helpers import tiny_model_config
from transformer_lens.utilities import get_act_name

from interp.hooks import HOOK_KINDS, HookKind, hook_name, hook_size_kind
from interp.model import build_model

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("interp", "analyses", "tasks", "benchmarks")
# The hook-name module, and the one module that reads TransformerLens internals.
ALLOWED = {Path("interp/hooks.py"), Path("interp/bridge.py")}
BRIDGE_ONLY = {"ln2_in", "ln_final_in"}
# A hook name's pieces: `blocks.` before a layer (a number, an f-string field, or the end of an
# f-string piece), or a `hook_` point. Parameter-name globs such as "blocks.*.attn.*" are not hooks.
HAND_BUILT = re.compile(r"(?<![\w*])blocks\.(\d|\{|$)|(?<!\w)hook_[a-z]")


def test_hook_names_are_transformer_lens_names():
    assert hook_name("pattern", 1) == "blocks.1.attn.hook_pattern"
    assert hook_name("resid_post", 0) == "blocks.0.hook_resid_post"
    assert hook_name("resid_mid", 1) == "blocks.1.hook_resid_mid"
    assert hook_name("z", 2) == "blocks.2.attn.hook_z"
    assert hook_name("q", 0) == "blocks.0.attn.hook_q"
    assert hook_name("embed") == "hook_embed"
    assert hook_name("normalized") == "ln_final.hook_normalized"
    for kind in set(HOOK_KINDS) - BRIDGE_ONLY:
        layer = None if kind in ("embed", "normalized") else 1
        assert hook_name(kind, layer) == get_act_name(kind, layer), kind


def test_every_hook_name_is_a_hook_of_a_built_model():
    model = build_model(tiny_model_config(), device="cpu")
    for kind in get_args(HookKind):
        for layer in (None,) if kind in ("embed", "normalized", "ln_final_in") else range(2):
            assert hook_name(kind, layer) in model.hook_dict, (kind, layer)


@pytest.mark.parametrize("kind, layer, message", [("pattern", None, "layer: hook 'pattern' takes a layer"),
                                                  ("embed", 0, "layer: hook 'embed' takes no layer"),
                                                  ("z", -1, "layer: expected a layer >= 0"),
                                                  ("attn", 0, "kind: expected one of")])
def test_bad_hook_requests_are_named(kind, layer, message):
    with pytest.raises(ValueError, match=message):
        hook_name(kind, layer)


def test_hook_size_kinds():
    assert hook_size_kind(hook_name("pattern", 0)) == "pattern"
    assert hook_size_kind(hook_name("z", 1)) == "head"
    assert hook_size_kind(hook_name("resid_post", 1)) == "residual"
    assert hook_size_kind(hook_name("ln2_in", 0)) == "residual"


def _documentation(tree: ast.AST) -> set[int]:
    """The string constants that are statements on their own: docstrings and attribute docs."""
    return {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}


def test_the_scan_finds_hand_built_names(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""Docs may say blocks.0.hook_z."""\nA = "blocks.0.hook_resid_pre"\nB = f"blocks.{A}.x"\n'
                      'C = "ln_final.hook_in"\nD = ("blocks.*.attn.*", "unembed.weight")\n')
    found = sorted(line.split(": ", 1)[1] for line in _scan(sample, tmp_path))
    assert found == ["'blocks.'", "'blocks.0.hook_resid_pre'", "'ln_final.hook_in'"]


def _scan(path: Path, root: Path) -> list[str]:
    """`path`'s string constants, other than documentation, that spell a piece of a hook name."""
    tree = ast.parse(path.read_text())
    docs = _documentation(tree)
    return [f"{path.relative_to(root)}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
            and HAND_BUILT.search(node.value)]


def test_no_module_builds_a_hook_name_by_hand():
    found = [hit for folder in SCANNED for path in sorted((ROOT / folder).rglob("*.py"))
             if path.relative_to(ROOT) not in ALLOWED for hit in _scan(path, ROOT)]
    assert not found, "hook names built by hand (use interp.hooks.hook_name):\n" + "\n".join(found)
