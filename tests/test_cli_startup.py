"""`interp` starts without what its command does not need: no torch for `--help`, and no
TransformerLens or `transformers` for `--help`, `list` and `info RUN` (each takes seconds to
import). Each command runs in a fresh interpreter, which is what a user's shell starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformer_lens", "transformers")

# Runs the command in-process, then prints which of the heavy packages it imported.
PROGRAM = """
import contextlib, io, json, sys
from interp.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(%r)))
print(json.dumps({"code": code, "out": out.getvalue(), "imported": heavy}))
"""


def imported_by(*argv: str) -> tuple[list[str], str]:
    """(the heavy packages `interp ARGV` imported, its output); the command must succeed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", PROGRAM % json.dumps(HEAVY), *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["code"] == 0, done.stderr
    return result["imported"], result["out"]


def test_help_imports_none_of_torch_transformer_lens_transformers():
    imported, out = imported_by("--help")
    assert imported == []
    assert "probe" in out and "llc" in out  # the whole command list, from the parser alone


def test_a_commands_help_needs_no_model_library():
    imported, out = imported_by("llc", "--help")
    assert imported == []
    assert "SGLD chains (default 4)" in out  # LLCSettings's default, from a module without torch


@pytest.mark.slow
def test_probe_help_spells_its_hook_example_with_transformer_lens():
    """The one help that names a hook: `hook_name` asks TransformerLens, only for this help."""
    imported, out = imported_by("probe", "--help")
    assert "blocks.1.hook_resid_post" in out
    assert "prev-token" in out and "linear" in out
    assert "transformer_lens" in imported


@pytest.mark.slow
def test_list_imports_no_transformer_lens():
    imported, out = imported_by("list")
    assert "transformer_lens" not in imported and "transformers" not in imported
    assert "induction-heads" in out and "tiny" in out


def test_info_of_a_run_imports_no_transformer_lens(trained_run):
    imported, out = imported_by("info", str(trained_run.path))
    assert "transformer_lens" not in imported and "transformers" not in imported
    assert "complete: final checkpoint at step 8" in out


def test_the_lazy_package_names_what_it_did_before():
    """`interp`'s public names resolve on first use; `interp.train` stays the function even
    after its submodule is imported (which binds a submodule on its package)."""
    import interp
    import interp.train as train_module  # noqa: F401 - the import under test

    assert callable(interp.train) and interp.train.__module__ == "interp.train"
    for name in interp.__all__:
        assert getattr(interp, name).__name__ == name
    from interp import seeding  # a submodule, not a lazy name

    assert seeding.__name__ == "interp.seeding"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        interp.nothing  # noqa: B018
