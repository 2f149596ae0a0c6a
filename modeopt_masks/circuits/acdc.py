"""ACDC-style greedy edge pruning (Conmy et al. 2023) in the edge-mask space.

Readers are visited from the output backwards; each incoming edge is switched
off for good when the metric moves by at most ``threshold`` from the full model
(measured against the current, already pruned circuit, as ACDC does). One forward
per edge, no gradients: it works where the gates get no gradient (Tracr's
saturated attention and step-like MLPs), where gradient-trained masks cannot.

Examples:
    >>> import torch
    >>> from modeopt_masks.circuits import EdgeMaskedModel, TinyTransformer, TinyTransformerConfig, acdc
    >>> _ = torch.manual_seed(0)
    >>> net = TinyTransformer(TinyTransformerConfig(vocab_size=6, d_model=8, n_layers=1, n_heads=1,
    ...                                              d_head=8, norm=False)).eval()
    >>> with torch.no_grad():
    ...     net.unembed.weight[:, :4] = 0  # the logits read dims 4.. only
    ...     net.embed_tokens.weight[:, 4:] = 0; net.embed_positions.weight[:, 4:] = 0
    >>> edges = EdgeMaskedModel(net)
    >>> ids = torch.tensor([[1, 2, 3]])
    >>> ref = net(ids).detach()
    >>> kept = acdc(edges, lambda e: float((e(ids) - ref).abs().max()), threshold=1e-6)
    >>> ("embed", "logits") in kept, ("a0.h0", "logits") in kept
    (False, True)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .edges import EdgeMaskedModel

Edge = tuple[str, str]


def acdc(
    edges: EdgeMaskedModel,
    distance: Callable[[EdgeMaskedModel], float],
    threshold: float,
) -> list[Edge]:
    """Greedily remove edges whose removal keeps ``distance(edges) <= threshold``; the kept edges.

    ``distance`` runs the masked model (in eval, hard gates) and returns how far its
    behaviour is from the full model's (e.g. the largest output difference or a KL).
    The gates are left set to the returned circuit.

    Args:
        edges: The edge-masked model.
        distance: How far the masked model's behaviour is from the full model's.
        threshold: The largest distance allowed.

    Returns:
        The kept edges ``(writer, reader)``.
    """
    edges.eval()
    kept = set(edges.all_edges())
    edges.set_edges(kept)
    order = [(w, r) for _, readers, writers in reversed(list(edges.group_edges()))
             for r in readers for w in reversed(writers)]
    with torch.no_grad():
        for edge in order:
            kept.discard(edge)
            edges.set_edges(kept)
            if distance(edges) > threshold:
                kept.add(edge)
        edges.set_edges(kept)
    return [e for e in edges.all_edges() if e in kept]
