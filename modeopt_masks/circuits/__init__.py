"""Circuits at the level of edges between components, and ground-truth models to check them.

* :class:`EdgeMaskedModel`: hard-concrete masks on the edges of a native HF model (GPT-2,
  Llama family with GQA) or a :class:`TinyTransformer`.
* :func:`edge_attribution_patching`: the one-shot EAP baseline in the same edge space.
* :func:`draw_edges`: the circuit as a graph image.

Examples:
    >>> from modeopt_masks import circuits
    >>> sorted(circuits.LAYOUTS)
    ['gpt2', 'llama']
"""

from .eap import edge_attribution_patching, top_edges
from .edges import LAYOUTS, EdgeLayout, EdgeMaskedModel
from .graph import draw_edges
from .tiny_transformer import TinyTransformer, TinyTransformerConfig

__all__ = [
    "LAYOUTS",
    "EdgeLayout",
    "EdgeMaskedModel",
    "TinyTransformer",
    "TinyTransformerConfig",
    "draw_edges",
    "edge_attribution_patching",
    "top_edges",
]
