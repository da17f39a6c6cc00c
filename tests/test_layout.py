"""docs/library.md's repository layout names every module of the library, and only those."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_documented_layout_is_the_tree():
    text = (ROOT / "docs" / "library.md").read_text()
    section = text.split("## Repository layout", 1)[1].split("```", 2)[1]
    documented = set(re.findall(r"^(interp/\S+\.py)\s", section, re.M))
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "interp").rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    assert documented - modules == set(), "documented modules that do not exist"
    assert modules - documented == set(), "modules missing from docs/library.md's repository layout"
