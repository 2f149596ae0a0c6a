"""NeuroSurgeon's magnitude-pruning layers on the ``continuous_sparsification`` mode.

Examples:
    >>> import torch
    >>> from modeopt_masks.compat.neurosurgeon.Masking.magprune_layer import MagPruneLinear
    >>> layer = MagPruneLinear(3, 2, mask_bias=True, prune_percentage=1.0)
    >>> _ = layer.train(False); float(layer(torch.ones(3)).detach().abs().sum())   # every weight masked
    0.0
"""

from __future__ import annotations

from typing import Any, ClassVar

from ....modes.magnitude_pruning import MagnitudeMask, _scores, keep_largest
from .mask_layer import MaskLayer, register

__all__ = ["MagPruneConv1d", "MagPruneConv2d", "MagPruneGPTConv1D", "MagPruneLayer",
           "MagPruneLinear"]


@register
class MagPruneLayer(MaskLayer):
    """Any layer masked by magnitude pruning (a fixed mask of the largest ``|w|``).

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Masking.magprune_layer import (
        ...     MagPruneLayer, MagPruneLinear)
        >>> isinstance(MagPruneLinear(2, 2), MagPruneLayer)
        True
    """

    _ns_mode = "magnitude_pruning"
    _ns_param = None
    _ns_technique_cls: ClassVar[type] = MagnitudeMask
    _ns_mask_args: ClassVar[list[tuple[str, Any]]] = [
        ("ablation", "none"), ("mask_bias", False), ("prune_percentage", 0.2)]

    @property
    def prune_percentage(self) -> float:
        """The fraction of entries removed; setting it re-prunes from the current weights."""
        return float(self.__dict__.get("_ns_prune_percentage", self.weight_mask.rule.prune_percentage))

    @prune_percentage.setter
    def prune_percentage(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"prune_percentage must be in [0, 1], got {value}")
        for tensor, tech in ((self.weight, self.weight_mask), (self.bias, self.bias_mask)):
            if tech is not None and tensor is not None:
                keep = keep_largest(_scores(self.layer_kind, tensor, tech.shape), value)  # type: ignore[attr-defined]
                tech.keep.copy_(keep)  # type: ignore[operator]
        self.__dict__["_ns_prune_percentage"] = float(value)


@register
class MagPruneLinear(MagPruneLayer):
    """``nn.Linear`` with a magnitude-pruning mask.

    Examples:
        >>> import torch.nn as nn
        >>> from modeopt_masks.compat.neurosurgeon.Masking.magprune_layer import MagPruneLinear
        >>> base = nn.Linear(4, 3)
        >>> layer = MagPruneLinear.from_layer(base, "none", True)
        >>> layer.weight is base.weight, layer.prune_percentage, layer.mask_bias
        (True, 0.2, True)
    """

    _ns_key = "nn.Linear"


@register
class MagPruneGPTConv1D(MagPruneLayer):
    """transformers' ``Conv1D`` (GPT-2) with a magnitude-pruning mask.

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Masking.magprune_layer import MagPruneGPTConv1D
        >>> tuple(MagPruneGPTConv1D(6, 4).weight_mask.keep.shape)
        (4, 6)
    """

    _ns_key = "hf.Conv1D"


@register
class MagPruneConv1d(MagPruneLayer):
    """``nn.Conv1d`` with a magnitude-pruning mask (NeuroSurgeon's argument order).

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Masking.magprune_layer import MagPruneConv1d
        >>> MagPruneConv1d(2, 3, 3, 1).padding
        (1,)
    """

    _ns_key = "nn.Conv1d"


@register
class MagPruneConv2d(MagPruneLayer):
    """``nn.Conv2d`` with a magnitude-pruning mask (NeuroSurgeon's argument order).

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Masking.magprune_layer import MagPruneConv2d
        >>> int(MagPruneConv2d(2, 3, 3, prune_percentage=0.5).weight_mask.keep.sum())
        27
    """

    _ns_key = "nn.Conv2d"
