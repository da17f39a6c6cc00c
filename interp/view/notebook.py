"""The explorer inline in a Jupyter notebook: the same page, no server.

    from interp.view import show
    show("runs/induction")        # the last expression of a cell: the page, in an iframe

`show` writes (or refreshes) the page like `write_view` and returns a `NotebookView`, whose
`_repr_html_` is an `<iframe srcdoc=...>` holding the whole page: it works offline, in a
notebook saved with its outputs too.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from interp.errors import InputError
from interp.view.page import write_view


@dataclass(frozen=True)
class NotebookView:
    """A written explorer page (`path`) that a notebook displays inline, `height` pixels tall."""

    path: Path
    height: int = 900

    def html(self) -> str:
        """The page itself (its file's text)."""
        return self.path.read_text(encoding="utf-8")

    def _repr_html_(self) -> str:
        # srcdoc is an attribute: the page is escaped as one (`&`, `<`, `>` and both quotes), and the
        # browser reads it back unchanged; the frame keeps the page's scripts apart from the notebook's.
        return (f'<iframe srcdoc="{html.escape(self.html(), quote=True)}" title="interp view: '
                f'{html.escape(self.path.parent.parent.name, quote=True)}" '
                f'style="width: 100%; height: {self.height}px; border: 1px solid #d9dee5;"></iframe>')


def show(
    path: str | Path,
    height: int = 900,
    device: str | torch.device | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> NotebookView:
    """Write (or refresh) the explorer page of the run or analysis at `path` (`write_view`) and
    return it for inline display in a notebook, `height` pixels tall."""
    if isinstance(height, bool) or not isinstance(height, int) or height < 100:
        raise InputError(f"height: expected a whole number of pixels of at least 100, got {height!r}")
    return NotebookView(write_view(path, device=device, progress=progress), height)
