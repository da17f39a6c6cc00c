"""Metric-over-steps curves."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(**options: Any) -> Figure:
    """A matplotlib `Figure(**options)`, matplotlib imported on the first one (a quarter of a
    second: the command line lists analyses, whose modules import this one, without it)."""
    from matplotlib.figure import Figure

    return Figure(**options)


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write `fig` to `path` (format from the suffix) atomically.

    The figure is written to a uniquely named temporary file beside `path`, synced and
    renamed over it, so a full disk or a kill mid-write leaves the previous file (or
    none), never a truncated image; concurrent writers never share a temporary name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666: the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".").lower() or None)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is None:  # PIL's writes raise without a file name: name the figure that failed
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def plot_steps(steps: np.ndarray, logx: bool) -> np.ndarray:
    """Steps as x values; on a log axis step 0 moves to half the first positive step."""
    steps = np.asarray(steps, dtype=float)
    if logx and len(steps) > 1:
        steps = np.where(steps <= 0, steps[steps > 0].min() / 2, steps)
    return steps


def plot_curves(
    series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    title: str = "",
    ylabel: str = "",
    logx: bool = False,
    logy: bool = False,
    vlines: Mapping[str, float] | None = None,
    hlines: Mapping[str, float] | None = None,
    bands: Mapping[str, np.ndarray] | None = None,
    markers: bool = False,
    xlabel: str = "training step",
    secondary: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    secondary_label: str = "",
    secondary_logy: bool = False,
    figsize: tuple[float, float] = (6.4, 4.0),
) -> Figure:
    """One line per named `(steps, values)` series; optional labelled marker lines.

    With `logx`, step 0 is drawn at the first positive step's position so the
    initial value stays visible. `bands[name]` (e.g. a standard deviation over
    seeds) shades `values ± band` around the series of that name. `secondary`
    series (e.g. a loss beside accuracies) are drawn dashed on a right-hand axis
    labelled `secondary_label`, logarithmic with `secondary_logy`.
    """
    fig = new_figure(figsize=figsize)
    ax = fig.add_subplot()
    for name, (steps, values) in series.items():
        steps = plot_steps(steps, logx)
        (line,) = ax.plot(steps, values, label=name, lw=1.6, marker="o" if markers else None, ms=4)
        if bands and name in bands:
            values, band = np.asarray(values, dtype=float), np.asarray(bands[name], dtype=float)
            ax.fill_between(steps, values - band, values + band, color=line.get_color(), alpha=0.2, lw=0)
    for i, (name, x) in enumerate((vlines or {}).items()):
        ax.axvline(x, color=f"C{i + 3}", ls="--", lw=1, label=name)
    for i, (name, y) in enumerate((hlines or {}).items()):
        ax.axhline(y, color=f"C{i + 6}", ls=":", lw=1, label=name)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    handles, labels = ax.get_legend_handles_labels()
    if secondary:
        right = ax.twinx()
        for i, (name, (steps, values)) in enumerate(secondary.items()):
            right.plot(plot_steps(steps, logx), values, label=name, lw=1.4, ls="--", color=f"C{(len(series) + i) % 10}")
        right.set_ylabel(secondary_label)
        if secondary_logy:
            right.set_yscale("log")
        extra_handles, extra_labels = right.get_legend_handles_labels()
        handles, labels = handles + extra_handles, labels + extra_labels
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(handles, labels, fontsize=8)
    return fig


def plot_bars(
    values: Mapping[str, float],
    *,
    errors: Mapping[str, float] | None = None,
    title: str = "",
    ylabel: str = "",
    reference: float | None = None,
    reference_label: str = "",
    figsize: tuple[float, float] = (6.4, 4.0),
) -> Figure:
    """One bar per named value, with optional error bars (e.g. a 95% interval)
    and a labelled horizontal reference line."""
    fig = new_figure(figsize=figsize)
    ax = fig.add_subplot()
    names = list(values)
    heights = [values[n] for n in names]
    yerr = [errors.get(n, 0.0) for n in names] if errors else None
    ax.bar(range(len(names)), heights, yerr=yerr, capsize=4, color=[f"C{i}" for i in range(len(names))])
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    if reference is not None:
        ax.axhline(reference, color="0.3", ls="--", lw=1, label=reference_label or None)
        if reference_label:
            ax.legend(fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return fig
