"""Circuits at the level of edges between components, and ground-truth models to check them.

* [`EdgeMaskedModel`][modeopt_masks.circuits.edges.EdgeMaskedModel]: hard-concrete masks on the edges of a native HF model (GPT-2,
  Llama family with GQA) or a [`TinyTransformer`][modeopt_masks.circuits.tiny_transformer.TinyTransformer].
* [`edge_attribution_patching`][modeopt_masks.circuits.eap.edge_attribution_patching]: the one-shot EAP baseline in the same edge space.
* [`acdc`][modeopt_masks.circuits.acdc.acdc]: greedy edge pruning (ACDC), for programs whose gates get no gradient.
* [`compiled_edges`][modeopt_masks.circuits.tracr.compiled_edges], [`tiny_from_tracr`][modeopt_masks.circuits.tracr.tiny_from_tracr]: Tracr programs and the edges their weights connect;
  [`canonical_edges`][modeopt_masks.circuits.tracr.canonical_edges]: their published ground-truth circuits;
  [`recover_tracr_edges`][modeopt_masks.circuits.tracr.recover_tracr_edges]: hard-concrete edge masks that recover them.
* [`draw_edges`][modeopt_masks.circuits.graph.draw_edges]: the circuit as a graph image.

Examples:
    >>> from modeopt_masks import circuits
    >>> sorted(circuits.LAYOUTS)
    ['gpt2', 'llama']
"""

from .acdc import acdc
from .eap import edge_attribution_patching, top_edges
from .edges import LAYOUTS, EdgeLayout, EdgeMaskedModel
from .graph import draw_edges
from .tiny_transformer import TinyTransformer, TinyTransformerConfig
from .tracr import (
    canonical_edges,
    compiled_edges,
    load_tracr_fixture,
    recover_tracr_edges,
    tiny_from_tracr,
)

__all__ = [
    "LAYOUTS",
    "EdgeLayout",
    "EdgeMaskedModel",
    "TinyTransformer",
    "TinyTransformerConfig",
    "acdc",
    "canonical_edges",
    "compiled_edges",
    "draw_edges",
    "load_tracr_fixture",
    "recover_tracr_edges",
    "tiny_from_tracr",
    "edge_attribution_patching",
    "top_edges",
]
