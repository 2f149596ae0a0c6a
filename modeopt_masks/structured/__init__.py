"""Structured (head / channel) hparams for gradnas: structures, plugin table, masks, scores.

Examples:
    >>> from modeopt_masks.structured import SUPPORTED_FAMILIES
    >>> "GPT-NeoX" in SUPPORTED_FAMILIES
    True
"""

from .families import ATTENTION_LAYOUTS, MLP_LAYOUTS, SUPPORTED_FAMILIES, AttentionLayout, MLPLayout
from .hparam import StructuredHParam, UnitMasked, gradnas_hparams
from .scores import collect_scores
from .structure import AttrUpdate, Slice, Structure, slice_structure

__all__ = [
    "ATTENTION_LAYOUTS",
    "MLP_LAYOUTS",
    "SUPPORTED_FAMILIES",
    "AttentionLayout",
    "AttrUpdate",
    "MLPLayout",
    "Slice",
    "Structure",
    "StructuredHParam",
    "UnitMasked",
    "collect_scores",
    "gradnas_hparams",
    "slice_structure",
]
