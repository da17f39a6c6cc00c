"""`ProbeTable`: probe results, one row per step and one column per `"<key>/<metric>"`, as
`interp.probing.probe` returns them and the probe cache's readers (`interp.probe_cache`) build
them. Its own module so that both import it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interp.ids import HeadId, Identity

Column = str | Identity
"""A column of a `ProbeTable`: its name, or the identity (a head, an edge, ...) it is named by."""


@dataclass(frozen=True)
class ProbeTable:
    """Probe results: one row per step, one column per `"<key>/<metric>"`. A column is read
    by its name or, where a probe names it by an identity, by that identity:
    `table.select("head_patch")[HeadId(0, 1)]` reads `"head_patch/L0H1"`."""

    steps: np.ndarray
    columns: tuple[str, ...]
    values: np.ndarray

    def __getitem__(self, column: Column) -> np.ndarray:
        name = str(column)  # an identity's column is named by its text form
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; columns: {list(self.columns)}")
        return self.values[:, self.columns.index(name)]

    def __contains__(self, column: object) -> bool:
        return isinstance(column, Column) and str(column) in self.columns

    def select(self, prefix: str) -> ProbeTable:
        """Columns under `prefix/`, with the prefix stripped."""
        keep = [i for i, c in enumerate(self.columns) if c.startswith(prefix + "/")]
        if not keep:
            raise KeyError(f"no column under {prefix!r}; columns: {list(self.columns)}")
        names = tuple(self.columns[i][len(prefix) + 1 :] for i in keep)
        return ProbeTable(self.steps, names, self.values[:, keep])

    def head_grid(self, prefix: str | None, n_layers: int, n_heads: int) -> np.ndarray:
        """`[step, layer, head]` array of an `"L{l}H{h}"`-keyed probe under `prefix/` (None: the
        columns are head names already), NaN where absent. Columns under `prefix/` named by other
        components (`MLP0`, `embed`: a refined LLC probe's) are not heads and are left out."""
        grid = np.full((len(self.steps), n_layers, n_heads), np.nan)
        sub = self if prefix is None else self.select(prefix)
        for name, column in zip(sub.columns, sub.values.T, strict=True):
            if not HeadId.is_head(name):
                continue
            head = HeadId.parse(name)
            grid[:, head.layer, head.head] = column
        return grid

    def to_rows(self) -> list[dict[str, float]]:
        return [
            {"step": int(step), **dict(zip(self.columns, row, strict=True))}
            for step, row in zip(self.steps, self.values, strict=True)
        ]

    def to_csv(self, path: str | Path) -> None:
        header = "step," + ",".join(self.columns)
        np.savetxt(path, np.column_stack([self.steps, self.values]), delimiter=",", header=header, comments="")
