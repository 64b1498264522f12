"""Pictures of diagrams: all diagrams of one derivative in one figure (matplotlib, Agg).

Layers are drawn as levels (inputs at the bottom, the output line at the top) because
the one rule that is easy to get wrong by eye, strictly increasing layers towards the
output, then reads off the picture directly. Positions come from
:meth:`diagramc.combinatorics.Diagram.layout`, shared with the TikZ-Feynman output.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

from .diagram import Diagram
from .symbols import SUPERSCRIPTS
from ..errors import DiagramcError

FORMATS = ("png", "svg", "pdf")
MAX_PIXELS = 60_000_000

_INPUT_COLOURS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def _subscript(k: int) -> str:
    return str(k).translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))


def _superscript(k: int) -> str:
    return f"({k})".translate(SUPERSCRIPTS)


def draw(diagrams: Sequence[Diagram], path: str | os.PathLike, columns: int | None = None,
         title: str | None = None, dpi: int = 150):
    """Draw ``diagrams`` in a grid and save to ``path``; the format is the extension.

    PNG, SVG or PDF. Each panel shows one diagram: input lines ``x_v`` (coloured by
    variable) at level 0, vertices ``σ⁽ᵏ⁾`` on their hidden layer, the output ``f`` on
    level ``H + 1``, and above it the diagram's number (from 1, in the given order) and
    its multiplicity. Returns the path written.
    """
    # a bare Figure, not pyplot: no global backend switch, nothing left open in the caller
    from matplotlib.figure import Figure

    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in FORMATS:
        raise DiagramcError(f"cannot draw to {path!r}: the file name must end in .png, .svg or .pdf")
    diagrams = list(diagrams)
    if not diagrams:
        raise DiagramcError("no diagrams to draw")
    H = diagrams[0].hidden_layers
    if any(d.hidden_layers != H for d in diagrams):
        raise DiagramcError("diagrams to draw in one figure must share the number of hidden layers")

    n = len(diagrams)
    cols = columns or min(n, max(1, math.ceil(math.sqrt(n * 1.6))))
    rows = math.ceil(n / cols)
    max_leaves = max(max(d.order, 1) for d in diagrams)
    panel_w = 0.55 * max_leaves + 1.1
    panel_h = 0.55 * (H + 1) + 1.0
    fig = Figure(figsize=(cols * panel_w, rows * panel_h + (0.5 if title else 0)))
    axes = fig.subplots(rows, cols, squeeze=False)
    if title is None:
        layers = f"{H} hidden layer{'s' if H != 1 else ''}"
        alphas = {d.multi_index for d in diagrams}
        if len(alphas) == 1:
            total = sum(d.multiplicity for d in diagrams)
            title = (f"D^{alphas.pop()} f, {layers}: "
                     f"{n} diagram{'s' if n != 1 else ''}, {total} labelled tree{'s' if total != 1 else ''}")
        else:
            title = f"{n} diagrams, {layers}"
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.2 / fig.get_figheight(), va="top")

    for ax in axes.flat[n:]:
        ax.axis("off")
    for number, (ax, d) in enumerate(zip(axes.flat, diagrams), 1):
        _draw_one(ax, d, max_leaves, number)
    # fixed margins in inches (tight_layout costs seconds on large grids and ignores suptitle)
    fig_w, fig_h = fig.get_size_inches()
    fig.subplots_adjust(left=0.1 / fig_w, right=1 - 0.1 / fig_w, bottom=0.1 / fig_h,
                        top=1 - (1.0 if title else 0.3) / fig_h, wspace=0.08, hspace=0.3)
    if ext == "png":  # hundreds of panels: keep the bitmap within MAX_PIXELS rather than run out of memory
        dpi = min(dpi, int((MAX_PIXELS / (fig_w * fig_h)) ** 0.5))
    fig.savefig(path, dpi=dpi, format=ext)
    return path


def _draw_one(ax, d: Diagram, width: int, number: int) -> None:
    g, pos = d.graph, d.layout()
    H = d.hidden_layers
    # layer guides, so the level of every vertex is readable
    for level in range(1, H + 1):
        ax.axhline(level, color="#dddddd", lw=0.6, zorder=0)
        ax.text(-0.75, level, f"l={level}", ha="left", va="bottom", fontsize=6, color="#999999")
    from matplotlib.collections import LineCollection

    # one artist per kind of mark: a panel with 20 separate scatter calls takes seconds to build
    ax.add_collection(LineCollection([(pos[u], pos[v]) for u, v in g.edges()], colors="#444444",
                                     linewidths=1.0, zorder=1))
    kinds: dict[str, list] = {"vertex": [], "input": [], "output": []}
    for nid, a in g.nodes(data=True):
        kinds[a["kind"]].append((nid, a))
    if kinds["vertex"]:
        xy = [pos[n] for n, _ in kinds["vertex"]]
        ax.scatter(*zip(*xy), s=70, color="#d62728", zorder=2, edgecolors="white", linewidths=0.8)
        for (x, y), (nid, a) in zip(xy, kinds["vertex"]):
            # label on the side away from the line going up, so the two never cross
            (parent,) = g.successors(nid)
            side = -1 if pos[parent][0] > x + 1e-9 else 1
            ax.text(x + 0.13 * side, y + 0.08, "σ" + _superscript(a["k"]), ha="left" if side > 0 else "right",
                    va="bottom", fontsize=9, color="#a01c1c", zorder=3)
    if kinds["input"]:
        xy = [pos[n] for n, _ in kinds["input"]]
        colours = [_INPUT_COLOURS[a["variable"] % len(_INPUT_COLOURS)] for _, a in kinds["input"]]
        ax.scatter(*zip(*xy), s=28, c=colours, zorder=2, marker="s")
        for (x, y), (_, a), colour in zip(xy, kinds["input"], colours):
            ax.text(x, y - 0.22, "x" + _subscript(a["variable"]), ha="center", va="top", fontsize=9,
                    color=colour)
    (x, y), = [pos[n] for n, _ in kinds["output"]]
    ax.scatter([x], [y], s=28, color="black", zorder=2, marker="^")
    ax.text(x, y + 0.22, "f", ha="center", va="bottom", fontsize=8, style="italic")
    # numbered as `diagramc diagrams` lists them and `diagramc contributions` ranks them
    ax.set_title(f"({number})  ×{d.multiplicity}", fontsize=10, pad=2)
    ax.set_xlim(-0.8, max(width - 1, 0) + 0.6)
    ax.set_ylim(-0.85, H + 1.7)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
