"""Edge attribution patching (EAP, Syed et al. 2023): one-shot edge scores in the edge-mask space.

The score of edge ``w -> r`` is the first-order change of ``metric`` when the edge is
switched off: with the gates of [`EdgeMaskedModel`][modeopt_masks.circuits.edges.EdgeMaskedModel],
``input_r = sum_w m a_w + (1 - m) c_w``, so ``dL/dm[r, w] = grad_r . (a_w - c_w)`` at
``m = 1``; EAP's ``(c_w - a_w) . grad_r`` is its negative. One forward and one
backward give every edge's score. ``c`` is the corrupted run's activation (or zero
without ``corrupt_inputs``).

Examples:
    >>> import torch
    >>> from modeopt_masks.circuits import (EdgeMaskedModel, TinyTransformer,
    ...     TinyTransformerConfig, edge_attribution_patching, top_edges)
    >>> _ = torch.manual_seed(0)
    >>> net = TinyTransformer(TinyTransformerConfig(vocab_size=8, d_model=8, n_layers=1,
    ...                                              n_heads=2, d_head=4, d_mlp=8, max_len=4))
    >>> edges = EdgeMaskedModel(net).eval()
    >>> ids = torch.tensor([[1, 2, 3, 4]])
    >>> scores = edge_attribution_patching(edges, lambda out: out[0, -1, 0], (ids,))
    >>> len(scores) == edges.num_edges, len(top_edges(scores, 3))
    (True, 3)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..summary import edge_scores_summary
from .edges import EdgeMaskedModel


class EdgeScores(dict):
    """``{(writer, reader): score}`` as [`edge_attribution_patching`][modeopt_masks.circuits.eap.edge_attribution_patching] returns it; ``print()``
    shows the count and the top edges instead of every edge.

    Examples:
        >>> from modeopt_masks.circuits.eap import EdgeScores
        >>> print(EdgeScores({("embed", "logits"): 0.5}))
        EdgeScores: 1 edges; top 1 by |score|:
          embed -> logits  0.5
    """

    def summary(self) -> str:
        """The number of edges and the ten largest by ``|score|`` (short)."""
        return edge_scores_summary(self)

    __repr__ = summary
    __str__ = summary


def edge_attribution_patching(
    edges: EdgeMaskedModel,
    metric: Callable[[Any], torch.Tensor],
    clean_args: tuple = (),
    clean_kwargs: Mapping[str, Any] | None = None,
    corrupt_args: tuple | None = None,
    corrupt_kwargs: Mapping[str, Any] | None = None,
) -> EdgeScores:
    """EAP scores ``{(writer, reader): (c_w - a_w) . d metric / d input_r}`` for every edge.

    ``metric`` maps the model output to a scalar (e.g. a loss or a logit difference).
    Without corrupted inputs the ablation is zero (attribution of removing the writer).
    The model's parameters get no gradients; the edges' corruption state is restored.

    Args:
        edges: The edge-masked model.
        metric: Maps the model output to a scalar.
        clean_args: Positional inputs of the clean run.
        clean_kwargs: Keyword inputs of the clean run.
        corrupt_args: Positional inputs of the corrupted run (``None``: zero ablation).
        corrupt_kwargs: Keyword inputs of the corrupted run.

    Returns:
        ``{(writer, reader): score}``.
    """
    clean_kwargs = dict(clean_kwargs or {})
    previous = edges._corrupt
    if corrupt_args is not None or corrupt_kwargs is not None:
        edges.record_corruption(*(corrupt_args or ()), **dict(corrupt_kwargs or {}))
    else:
        edges.clear_corruption()
    try:
        ones = {
            name: torch.ones(mask.shape, requires_grad=True)
            for name, mask in edges.gate_masks().items()
        }
        with edges.gates(ones):
            value = metric(edges(*clean_args, **clean_kwargs))
        grads = torch.autograd.grad(value, list(ones.values()))
    finally:
        edges._corrupt = previous
    scores = EdgeScores()
    for (_, readers, writers), grad in zip(edges.group_edges(), grads, strict=True):
        for r, reader in enumerate(readers):
            for c, writer in enumerate(writers):
                scores[(writer, reader)] = -float(grad[r, c])
    return scores


def top_edges(scores: Mapping[tuple[str, str], float], k: int) -> list[tuple[str, str]]:
    """The ``k`` edges with the largest ``|score|``.

    Args:
        scores: ``{edge: score}``.
        k: How many edges.

    Returns:
        The edges, largest ``|score|`` first.

    Examples:
        >>> from modeopt_masks.circuits import top_edges
        >>> top_edges({("a", "b"): 0.1, ("a", "c"): -2.0, ("b", "c"): 1.0}, 2)
        [('a', 'c'), ('b', 'c')]
    """
    return sorted(scores, key=lambda e: -abs(scores[e]))[:k]
