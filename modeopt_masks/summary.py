"""Short printable summaries of result objects: ``print(result)`` stays under [`MAX_CHARS`][modeopt_masks.summary.MAX_CHARS].

Every result type ([`SearchResult`][modeopt_masks.searchers.base.SearchResult], the ``l0_stats``
dict, [`ProbeOutput`][modeopt_masks.probing.probe_output.ProbeOutput], edge scores) renders its
``summary()`` with these helpers: a title line, a few facts, and a table of per-layer
values in which layers that differ only by their index share one row
([`layer_rows`][modeopt_masks.summary.layer_rows]), so the length does not grow with the depth of the model.
[`clip`][modeopt_masks.summary.clip] is the last guard for anything longer.

Examples:
    >>> from modeopt_masks.summary import layer_rows
    >>> rows = layer_rows({f"model.layers.{i}.mlp": (k, 96) for i, k in enumerate([64, 80, 96])})
    >>> rows
    ['  model.layers.*.mlp  [3 layers, of 96]  64 80 96']
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

MAX_CHARS = 2000
"""The longest summary any result prints."""
#: at most this many table rows (groups of layers); the rest are counted
MAX_ROWS = 16
ROW_VALUES_WIDTH = 96
"""The values of one row are cut to this many characters."""

_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)")


def layer_template(name: str) -> str:
    """``name`` with its first numeric path component as ``*`` (the row a layer belongs to).

    Examples:
        >>> from modeopt_masks.summary import layer_template
        >>> layer_template("encoder.layer.11.attention"), layer_template("lm_head")
        ('encoder.layer.*.attention', 'lm_head')
    """
    return _INDEX.sub("*", name, count=1)


def _number(value: float) -> str:
    return f"{int(value)}" if float(value).is_integer() else f"{value:.3g}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 4].rsplit(" ", 1)[0] + " ..."


def layer_rows(values: Mapping[str, tuple[float, float]], percent: bool = False,
               max_rows: int = MAX_ROWS) -> list[str]:
    """Table rows of per-layer ``(value, out of)`` pairs, one row per [`layer_template`][modeopt_masks.summary.layer_template].

    A row lists the values in layer order (``percent``: as percentages of ``out of``;
    ``all v`` when more than two layers have the same value),
    cut to [`ROW_VALUES_WIDTH`][modeopt_masks.summary.ROW_VALUES_WIDTH] characters with the range of the rest appended;
    past ``max_rows`` rows one line counts the layers left out.

    Examples:
        >>> from modeopt_masks.summary import layer_rows
        >>> layer_rows({"a.0.q": (2, 4), "a.1.q": (3, 8), "head": (1, 2)}, percent=True)
        ['  a.*.q  [2 layers]  50% 38%', '  head   50%']
    """
    groups: dict[str, list[tuple[float, float]]] = {}
    for name, pair in values.items():
        groups.setdefault(layer_template(name), []).append(pair)
    width = max((len(t) for t in list(groups)[:max_rows]), default=0)
    rows = []
    for template, pairs in list(groups.items())[:max_rows]:
        totals = {total for _, total in pairs}
        if percent:
            cells = [f"{100 * v / t:.0f}%" if t else "-" for v, t in pairs]
        elif len(totals) == 1:
            cells = [_number(v) for v, _ in pairs]
        else:
            cells = [f"{_number(v)}/{_number(t)}" for v, t in pairs]
        label = [f"{len(pairs)} layers"] if len(pairs) > 1 else []
        if len(totals) == 1 and not percent:
            label.append(f"of {_number(next(iter(totals)))}")
        text = f"all {cells[0]}" if len(cells) > 2 and len(set(cells)) == 1 else " ".join(cells)
        if len(text) > ROW_VALUES_WIDTH:
            shown = _cut(text, ROW_VALUES_WIDTH - 24)
            low, high = min(pairs), max(pairs)
            text = f"{shown} (range {_number(low[0])}-{_number(high[0])})"
        head = f"  {template:<{width}}"
        rows.append(f"{head}  [{', '.join(label)}]  {text}" if label else f"{head}  {text}")
    left = len(groups) - max_rows
    if left > 0:
        layers = sum(len(p) for p in list(groups.values())[max_rows:])
        rows.append(f"  ... {left} more row(s), {layers} layer(s)")
    return rows


def render(title: str, facts: Sequence[str] = (), rows: Sequence[str] = (),
           rows_title: str = "") -> str:
    """A title line, one line per fact, then the table under ``rows_title``; clipped.

    Examples:
        >>> from modeopt_masks.summary import render
        >>> print(render("Result", ["params: 70%"], ["  a  1"], "kept:"))
        Result
          params: 70%
        kept:
          a  1
    """
    lines = [title, *(f"  {f}" for f in facts)]
    if rows:
        lines += [rows_title, *rows] if rows_title else list(rows)
    return clip("\n".join(lines))


def clip(text: str, limit: int = MAX_CHARS) -> str:
    """``text`` cut to ``limit`` characters (at a line end) with a note saying so.

    Examples:
        >>> from modeopt_masks.summary import clip
        >>> len(clip("x\\n" * 5000)) <= 2000
        True
    """
    if len(text) <= limit:
        return text
    note = "\n  ... (cut; the full data is in to_dict() / the object's fields)"
    head = text[: limit - len(note)]
    return head.rsplit("\n", 1)[0] + note


def seconds(value: float | None) -> str:
    """``"2.35 s"`` (``""`` when not measured).

    Examples:
        >>> from modeopt_masks.summary import seconds
        >>> seconds(2.345), seconds(None)
        ('2.35 s', '')
    """
    return "" if value is None else f"{value:.3g} s"


def brief(value: Any) -> str:
    """A short description of a field: tensors by shape and dtype, scalars by value.

    Examples:
        >>> import torch
        >>> from modeopt_masks.summary import brief
        >>> brief(torch.zeros(2, 3)), brief(torch.tensor(0.5)), brief([1, 2, 3])
        ('tensor[2, 3] float32', '0.5', 'list of 3')
    """
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        if len(shape) == 0:
            return f"{float(value):.4g}"
        dtype = str(value.dtype).replace("torch.", "")
        return f"tensor[{', '.join(str(int(s)) for s in shape)}] {dtype}"
    if isinstance(value, list | tuple | dict | set):
        return f"{type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Summarised:
    """Mixin: ``repr()`` / ``print()`` show `summary` (short), not every field.

    Examples:
        >>> from modeopt_masks.summary import Summarised
        >>> class R(Summarised):
        ...     def summary(self) -> str:
        ...         return "R: 3 layers"
        >>> print(R())
        R: 3 layers
    """

    def summary(self) -> str:
        """The short description (at most [`MAX_CHARS`][modeopt_masks.summary.MAX_CHARS] characters)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.summary()

    def __str__(self) -> str:
        return self.summary()


# -- the result types ---------------------------------------------------------------------
def search_summary(result: Any) -> str:
    """The summary of a [`SearchResult`][modeopt_masks.searchers.base.SearchResult]: searcher and time,
    each constraint's target and what was reached, the kept units per layer.

    Examples:
        >>> from modeopt_masks.searchers import SearchResult
        >>> r = SearchResult(selection={"layers.0.mlp": 48, "layers.1.mlp": 64},
        ...                  choices={"layers.0.mlp": [32, 48, 64], "layers.1.mlp": [32, 48, 64]},
        ...                  constraints={"params": {"target": 700.0, "achieved": 690.0,
        ...                                          "original": 1000.0, "ratio": 0.69}},
        ...                  searcher="gradient_binary", seconds=1.5)
        >>> print(r)
        SearchResult (gradient_binary, 1.5 s)
          params: target 70.0% (700) -> reached 69.0% (690 of 1,000)
        kept units per layer:
          layers.*.mlp  [2 layers, of 64]  48 64
    """
    took = seconds(getattr(result, "seconds", None))
    about = ", ".join(x for x in (result.searcher, took) if x)
    title = f"{type(result).__name__} ({about})" if about else type(result).__name__
    facts = []
    for kind, c in result.constraints.items():
        original = c.get("original") or 0.0
        target_pct = f"{100 * c['target'] / original:.1f}% " if original else ""
        facts.append(f"{kind}: target {target_pct}({c['target']:,.0f}) -> reached "
                     f"{100 * c.get('ratio', 0.0):.1f}% ({c['achieved']:,.0f} of {original:,.0f})")
    if not result.constraints:
        facts.append("no constraint recorded")
    totals = {n: (ch[-1] if ch else result.selection[n]) for n, ch in result.choices.items()}
    values = {n: (k, totals.get(n, k)) for n, k in result.selection.items()}
    return render(title, facts, layer_rows(values), "kept units per layer:")


def l0_summary(stats: Mapping[str, Any]) -> str:
    """The summary of [`l0_stats`][modeopt_masks.mask_controls.l0_stats]: the total and the density per layer.

    Examples:
        >>> from modeopt_masks.summary import l0_summary
        >>> print(l0_summary({"total_l0": 3.0, "max_l0": 8, "layer2l0": {"a": 3.0},
        ...                   "layer2maxl0": {"a": 8}}))
        L0Stats: 3 of 8 mask entries on (37.5%) in 1 layer
        density per layer:
          a  38%
    """
    total, most = float(stats["total_l0"]), int(stats["max_l0"])
    n = len(stats["layer2l0"])
    count = f"{total:,.0f}" if total.is_integer() else f"{total:,.1f}"
    title = (f"L0Stats: {count} of {most:,} mask entries on "
             f"({100 * total / most if most else 0.0:.1f}%) in {n} layer{'s' if n != 1 else ''}")
    values = {k: (v, stats["layer2maxl0"][k]) for k, v in stats["layer2l0"].items()}
    return render(title, (), layer_rows(values, percent=True), "density per layer:")


def fields_summary(name: str, fields: Mapping[str, Any]) -> str:
    """``Name(field=brief, ...)`` on one line (for output records such as ``ProbeOutput``).

    Examples:
        >>> import torch
        >>> from modeopt_masks.summary import fields_summary
        >>> fields_summary("ProbeOutput", {"loss": torch.tensor(0.25), "logits": torch.zeros(4, 2)})
        'ProbeOutput(loss=0.25, logits=tensor[4, 2] float32)'
    """
    return clip(f"{name}({', '.join(f'{k}={brief(v)}' for k, v in fields.items())})")


def edge_scores_summary(scores: Mapping[tuple[str, str], float], top: int = 10) -> str:
    """The summary of per-edge scores: how many, and the ``top`` edges by ``|score|``.

    Examples:
        >>> from modeopt_masks.summary import edge_scores_summary
        >>> print(edge_scores_summary({("embed", "a0.h0.q"): 0.5, ("a0.h0", "logits"): -2.0}))
        EdgeScores: 2 edges; top 2 by |score|:
          a0.h0 -> logits  -2
          embed -> a0.h0.q  0.5
    """
    ranked = sorted(scores.items(), key=lambda kv: -abs(kv[1]))[:top]
    title = f"{type(scores).__name__ if type(scores) is not dict else 'EdgeScores'}: " \
            f"{len(scores)} edges; top {len(ranked)} by |score|:"
    rows = [f"  {w} -> {r}  {v:.4g}" for (w, r), v in ranked]
    return render(title, (), rows)
