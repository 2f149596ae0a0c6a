"""Structured (head / channel) hparams for gradnas: structures, plugin table, masks, scores.

Examples:
    >>> from modeopt_masks.structured import SUPPORTED_FAMILIES
    >>> "GPT-NeoX" in SUPPORTED_FAMILIES
    True
"""

from .families import (
    ATTENTION_LAYOUTS,
    FAMILIES,
    MLP_LAYOUTS,
    SUPPORTED_FAMILIES,
    AttentionLayout,
    Family,
    MLPLayout,
    StreamLayout,
    register_family,
)
from .hparam import StructuredHParam, UnitMasked, gradnas_hparams
from .scores import collect_scores
from .structure import AttrUpdate, Slice, Structure, slice_structure

__all__ = [
    "ATTENTION_LAYOUTS",
    "FAMILIES",
    "MLP_LAYOUTS",
    "SUPPORTED_FAMILIES",
    "StreamLayout",
    "AttentionLayout",
    "AttrUpdate",
    "Family",
    "MLPLayout",
    "Slice",
    "Structure",
    "StructuredHParam",
    "UnitMasked",
    "collect_scores",
    "gradnas_hparams",
    "register_family",
    "slice_structure",
]
