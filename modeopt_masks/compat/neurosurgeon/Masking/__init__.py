"""NeuroSurgeon's ``Masking`` package: the mask layers.

Examples:
    >>> from modeopt_masks.compat.neurosurgeon.Masking import ContSparseLinear, MagPruneLinear
    >>> ContSparseLinear(2, 2).mask_unit, MagPruneLinear(2, 2).prune_percentage
    ('weight', 0.2)
"""

from .contsparse_layer import (
    ContSparseConv1d,
    ContSparseConv2d,
    ContSparseGPTConv1D,
    ContSparseLinear,
)
from .hardconcrete_layer import (
    HardConcreteConv1d,
    HardConcreteConv2d,
    HardConcreteGPTConv1D,
    HardConcreteLinear,
)
from .magprune_layer import (
    MagPruneConv1d,
    MagPruneConv2d,
    MagPruneGPTConv1D,
    MagPruneLinear,
)

__all__ = [
    "ContSparseConv1d", "ContSparseConv2d", "ContSparseGPTConv1D", "ContSparseLinear",
    "HardConcreteConv1d", "HardConcreteConv2d", "HardConcreteGPTConv1D", "HardConcreteLinear",
    "MagPruneConv1d", "MagPruneConv2d", "MagPruneGPTConv1D", "MagPruneLinear",
]
