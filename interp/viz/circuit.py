"""Circuit graphs as layered drawings: a column per layer's heads (and MLP), the embedding
on the left, the logits on the right; edge width is |weight|, colour its sign."""

from __future__ import annotations

from typing import TYPE_CHECKING

from interp.circuits.graph import CircuitGraph
from interp.ids import HeadId
from interp.viz.curves import new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

POSITIVE, NEGATIVE = "#1f77b4", "#d62728"
INPUT_STYLE = {"q": "arc3,rad=0.18", "k": "arc3,rad=0.0", "v": "arc3,rad=-0.18", None: "arc3,rad=0.0"}


def _draw(ax: Axes, graph: CircuitGraph, fraction: float, title: str) -> None:
    from matplotlib.patches import FancyArrowPatch

    shape = graph.shape
    kept = graph.kept(fraction)
    largest = max((abs(w) for w in kept.values()), default=1.0) or 1.0
    for edge, weight in sorted(kept.items(), key=lambda item: abs(item[1])):
        start, end = shape.position(edge.sender), shape.position(edge.receiver)
        ax.add_patch(FancyArrowPatch(start, end, connectionstyle=INPUT_STYLE[edge.input], arrowstyle="-|>",
                                     mutation_scale=8, lw=0.5 + 4.5 * abs(weight) / largest, alpha=0.75,
                                     color=POSITIVE if weight >= 0 else NEGATIVE, shrinkA=9, shrinkB=9))
    for node in shape.nodes():
        x, y = shape.position(node)
        head = isinstance(node, HeadId)
        ax.scatter([x], [y], s=380 if head else 900, color="white", edgecolors="black", zorder=3)
        ax.annotate(f"H{node.head}" if head else str(node), (x, y), ha="center", va="center",
                    fontsize=7 if head else 6, zorder=4)
    columns = 2 + shape.n_layers * (1 if shape.attn_only else 2)
    ax.set_xlim(-0.6, columns - 0.4)
    ax.set_ylim(-0.8, max(shape.n_heads - 1, 1) + 0.8)
    ax.set_xticks([shape.position(HeadId(layer, 0))[0] for layer in range(shape.n_layers)],
                  [f"layer {layer}" for layer in range(shape.n_layers)], fontsize=8)
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def plot_circuit(graph: CircuitGraph, *, title: str = "", fraction: float = 0.1) -> Figure:
    """The edges whose |weight| reaches `fraction` of the largest; q/k/v inputs of a head
    arrive curved up, straight and curved down."""
    shape = graph.shape
    columns = 2 + shape.n_layers * (1 if shape.attn_only else 2)
    fig = new_figure(figsize=(1.6 * columns + 1, 0.7 * shape.n_heads + 1.6))
    _draw(fig.subplots(), graph, fraction, title or f"{graph.method} circuit at step {graph.step}")
    fig.text(0.01, 0.01, f"blue +, red -; width |weight|; q arcs up, k straight, v down. {graph.metric}"[:140],
             fontsize=6)
    return fig


def plot_circuit_diff(before: CircuitGraph, after: CircuitGraph, *, title: str = "", fraction: float = 0.1) -> Figure:
    """The two graphs side by side, on their own scales, with what changed in the title."""
    diff = before.diff(after, fraction)
    shape = before.shape
    width = 1.6 * (2 + shape.n_layers * (1 if shape.attn_only else 2)) + 1
    fig = new_figure(figsize=(2 * width, 0.7 * shape.n_heads + 2.0))
    left, right = fig.subplots(1, 2)
    _draw(left, before, fraction, f"step {before.step}")
    _draw(right, after, fraction, f"step {after.step}")
    changed = f"{len(diff.appeared)} edges appear, {len(diff.vanished)} vanish, {len(diff.sign_flipped)} flip sign"
    fig.suptitle(f"{title + ': ' if title else ''}{changed}", fontsize=10)
    return fig
