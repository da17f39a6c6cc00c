"""`report.md` and the figures it places.

An analysis draws `Figure`s (a key, a caption, a matplotlib figure) and writes a
`Report` whose `figures(...)` calls place them by key; `run_analysis` saves every
figure as `figures/<key>.png` and resolves the places when it writes the report.
A key whose figure was not drawn places nothing; a drawn figure that no call
places is appended at the end, so none is lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interp.files import atomic_write_bytes
from interp.viz import save_figure

if TYPE_CHECKING:
    import matplotlib.figure

FIGURES_DIR = "figures"


@dataclass(frozen=True)
class Figure:
    """A drawn figure, saved as `figures/<key>.png`, with the caption the report gives it."""

    key: str
    caption: str
    figure: matplotlib.figure.Figure


@dataclass(frozen=True)
class SavedFigure:
    path: Path
    caption: str


def write_figures(figures: Iterable[Figure], out: Path) -> dict[str, SavedFigure]:
    saved: dict[str, SavedFigure] = {}
    for fig in figures:
        if fig.key in saved:
            raise ValueError(f"figures: the key {fig.key!r} is drawn twice")
        saved[fig.key] = SavedFigure(save_figure(fig.figure, out / FIGURES_DIR / f"{fig.key}.png"), fig.caption)
    return saved


@dataclass(frozen=True)
class _Place:
    keys: tuple[str, ...]


@dataclass
class Report:
    """`report.md`: a title, prose, tables, and the places of figures."""

    title: str
    parts: list[str | _Place] = field(default_factory=list)

    def text(self, paragraph: str) -> Report:
        self.parts += [paragraph, ""]
        return self

    def table(self, rows: Sequence[tuple[str, Any]], header: tuple[str, str] = ("quantity", "value")) -> Report:
        return self.grid(header, rows)

    def grid(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Report:
        """A table with any number of columns."""
        self.parts += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        self.parts += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
        self.parts.append("")
        return self

    def figures(self, *keys: str) -> Report:
        """Place the figures drawn under these keys here, in this order."""
        self.parts.append(_Place(keys))
        return self

    def render(self, figures: Mapping[str, SavedFigure], root: Path) -> str:
        lines, placed = [f"# {self.title}", ""], set()
        for part in [*self.parts, _Place(tuple(k for k in figures if not self._places(k)))]:
            if isinstance(part, str):
                lines.append(part)
                continue
            for key in part.keys:
                if key in figures and key not in placed:
                    placed.add(key)
                    saved = figures[key]
                    lines += [f"![{saved.caption}]({saved.path.relative_to(root).as_posix()})", "",
                              f"*{saved.caption}*", ""]
        return "\n".join(lines) + "\n"

    def _places(self, key: str) -> bool:
        return any(isinstance(p, _Place) and key in p.keys for p in self.parts)

    def write(self, path: Path, figures: Mapping[str, SavedFigure]) -> Path:
        atomic_write_bytes(path, self.render(figures, path.parent).encode())
        return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
