"""NeuroSurgeon's hard-concrete layers on the ``continuous_sparsification`` mode.

Examples:
    >>> import torch
    >>> from modeopt_masks.compat.neurosurgeon.Masking.hardconcrete_layer import HardConcreteLinear
    >>> layer = HardConcreteLinear(3, 2, mask_bias=True, mask_init_percentage=0.0)
    >>> _ = layer.train(False); float(layer(torch.ones(3)).detach().abs().sum())   # every weight masked
    0.0
"""

from __future__ import annotations

from typing import Any, ClassVar

from ....modes.hard_concrete import GAMMA, ZETA, HardConcreteMask
from .mask_layer import MaskLayer, register

__all__ = ["HardConcreteConv1d", "HardConcreteConv2d", "HardConcreteGPTConv1D", "HardConcreteLayer",
           "HardConcreteLinear"]


@register
class HardConcreteLayer(MaskLayer):
    """Any layer masked by hard concrete (stochastic L0 gates).

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Masking.hardconcrete_layer import (
        ...     HardConcreteLayer, HardConcreteLinear)
        >>> isinstance(HardConcreteLinear(2, 2), HardConcreteLayer)
        True
    """

    _ns_mode = "hard_concrete"
    _ns_param = "log_alpha"
    _ns_technique_cls: ClassVar[type] = HardConcreteMask
    _ns_mask_args: ClassVar[list[tuple[str, Any]]] = [
        ("ablation", "none"), ("mask_unit", "weight"), ("mask_bias", False),
        ("mask_init_percentage", 0.5)]

    left_stretch: float = GAMMA
    right_stretch: float = ZETA

    @classmethod
    def _ns_rule(cls, mask_args: dict[str, Any]) -> dict[str, Any]:
        rule = super()._ns_rule(mask_args)
        p = rule["mask_init_percentage"]
        if not 0.0 <= p <= 1.0:
            raise ValueError("Mask Init Percentage can't be outside of [0.0, 1.0]")
        rule["mask_init_percentage"] = min(max(p, 1e-4), 1 - 1e-4)  # NeuroSurgeon clips
        return rule

    @property
    def mask_init_percentage(self) -> float:
        """The expected fraction of kept entries at initialisation (clipped to [1e-4, 1 - 1e-4])."""
        return self.weight_mask.rule.mask_init_percentage


@register
class HardConcreteLinear(HardConcreteLayer):
    """``nn.Linear`` with a hard-concrete mask.

    Examples:
        >>> import torch.nn as nn
        >>> from modeopt_masks.compat.neurosurgeon.Masking.hardconcrete_layer import HardConcreteLinear
        >>> base = nn.Linear(4, 3)
        >>> layer = HardConcreteLinear.from_layer(base, "none", "neuron", True, 0.9)
        >>> layer.weight is base.weight, tuple(layer.weight_mask_params.shape), layer.mask_bias
        (True, (3, 1), True)
    """

    _ns_key = "nn.Linear"


@register
class HardConcreteGPTConv1D(HardConcreteLayer):
    """transformers' ``Conv1D`` (GPT-2) with a hard-concrete mask.

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Masking.hardconcrete_layer import HardConcreteGPTConv1D
        >>> tuple(HardConcreteGPTConv1D(6, 4).weight_mask_params.shape)
        (4, 6)
    """

    _ns_key = "hf.Conv1D"


@register
class HardConcreteConv1d(HardConcreteLayer):
    """``nn.Conv1d`` with a hard-concrete mask (NeuroSurgeon's argument order).

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Masking.hardconcrete_layer import HardConcreteConv1d
        >>> HardConcreteConv1d(2, 3, 3, 1).padding
        (1,)
    """

    _ns_key = "nn.Conv1d"


@register
class HardConcreteConv2d(HardConcreteLayer):
    """``nn.Conv2d`` with a hard-concrete mask (NeuroSurgeon's argument order).

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Masking.hardconcrete_layer import HardConcreteConv2d
        >>> tuple(HardConcreteConv2d(2, 3, 3).weight_mask_params.shape)
        (3, 2, 3, 3)
    """

    _ns_key = "nn.Conv2d"
