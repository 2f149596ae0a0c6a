"""Draw an edge circuit as a layered graph image (matplotlib only).

Nodes are the embedding, each head, each MLP and the logits, one row per
sub-layer; an edge into a head's query, key or value is coloured by which one
(a KV-group reader is drawn to every head of its group).

Examples:
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from modeopt_masks.circuits import draw_edges
    >>> fig = draw_edges([("embed", "a0.h1.q"), ("a0.h1", "logits")])
    >>> len(fig.axes[0].lines)
    2
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_COLOURS = {"q": "tab:blue", "k": "tab:orange", "v": "tab:green", "mlp": "tab:purple",
            "logits": "tab:red"}


def _row(node: str) -> float:
    if node == "embed":
        return 0.0
    if node == "logits":
        return float("inf")
    kind, layer = node[0], int(re.match(r"[am](\d+)", node).group(1))  # type: ignore[union-attr]
    return 2 * layer + (1 if kind == "a" else 2)


def _targets(reader: str, heads_per_group: dict[str, int]) -> tuple[list[str], str]:
    """The node(s) a reader belongs to and the reader's kind (q/k/v/mlp/logits)."""
    if reader == "logits":
        return ["logits"], "logits"
    if reader.startswith("m"):
        return [reader], "mlp"
    layer, unit, kind = reader.split(".")
    if unit.startswith("g"):  # a KV group: every head of the group
        per = heads_per_group.get(layer, 1)
        g = int(unit[1:])
        return [f"{layer}.h{h}" for h in range(g * per, (g + 1) * per)], kind
    return [f"{layer}.{unit}"], kind


def draw_edges(
    edges: Iterable[tuple[str, str]],
    heads_per_group: dict[str, int] | None = None,
    path: str | None = None,
    title: str | None = None,
) -> Any:
    """A matplotlib figure of the ``(writer, reader)`` edges; saved to ``path`` when given.

    ``heads_per_group``: query heads per KV group by layer name (``{"a0": 2}``) for GQA
    readers named ``a0.g1.k``; [`EdgeMaskedModel.heads_per_group`][modeopt_masks.circuits.edges.EdgeMaskedModel.heads_per_group] gives it.

    Args:
        edges: ``(writer, reader)`` pairs.
        heads_per_group: Query heads per KV group by layer name, for GQA readers.
        path: Save the figure there.
        title: The figure's title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    heads_per_group = heads_per_group or {}
    segments = []
    for writer, reader in edges:
        nodes, kind = _targets(reader, heads_per_group)
        segments += [(writer, node, kind) for node in nodes]
    nodes = sorted({n for w, r, _ in segments for n in (w, r)}, key=lambda n: (_row(n), n))
    rows: dict[float, list[str]] = {}
    for n in nodes:
        rows.setdefault(_row(n), []).append(n)
    finite = [r for r in rows if r != float("inf")]
    top = (max(finite) if finite else 0) + 1
    pos = {}
    for r, members in rows.items():
        y = top if r == float("inf") else r
        for i, n in enumerate(members):
            pos[n] = ((i + 1) / (len(members) + 1), y)
    fig, ax = plt.subplots(figsize=(6, 1 + 0.8 * len(rows)))
    for writer, node, kind in segments:
        (x0, y0), (x1, y1) = pos[writer], pos[node]
        ax.plot([x0, x1], [y0, y1], color=_COLOURS[kind], alpha=0.7, lw=1.2)
    for n, (x, y) in pos.items():
        ax.annotate(n, (x, y), ha="center", va="center", fontsize=8,
                    bbox={"boxstyle": "round", "fc": "white", "ec": "grey"})
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    if path is not None:
        fig.savefig(path, bbox_inches="tight", dpi=120)
    return fig
