"""NeuroSurgeon's continuous-sparsification layers on the ``continuous_sparsification`` mode.

Examples:
    >>> import torch
    >>> from modeopt_masks.compat.neurosurgeon.Masking.contsparse_layer import ContSparseLinear
    >>> layer = ContSparseLinear(3, 2, mask_bias=True, mask_init_value=-1.0)
    >>> _ = layer.train(False); float(layer(torch.ones(3)).detach().abs().sum())   # every weight masked
    0.0
"""

from __future__ import annotations

from typing import Any, ClassVar

from ....modes.continuous_sparsification import ContinuousSparsificationMask
from .mask_layer import MaskLayer, register

__all__ = ["ContSparseConv1d", "ContSparseConv2d", "ContSparseGPTConv1D", "ContSparseLayer",
           "ContSparseLinear"]


@register
class ContSparseLayer(MaskLayer):
    """Any layer masked by continuous sparsification (``sigmoid(temperature * s)``).

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Masking.contsparse_layer import (
        ...     ContSparseLayer, ContSparseLinear)
        >>> isinstance(ContSparseLinear(2, 2), ContSparseLayer)
        True
    """

    _ns_mode = "continuous_sparsification"
    _ns_param = "logits"
    _ns_technique_cls: ClassVar[type] = ContinuousSparsificationMask
    _ns_mask_args: ClassVar[list[tuple[str, Any]]] = [
        ("ablation", "none"), ("mask_unit", "weight"), ("mask_bias", False),
        ("mask_init_value", 0.0)]

    @property
    def mask_init_value(self) -> float:
        """The value the mask logits started at."""
        return self.weight_mask.rule.mask_init_value


@register
class ContSparseLinear(ContSparseLayer):
    """``nn.Linear`` with a continuous-sparsification mask.

    Examples:
        >>> import torch.nn as nn
        >>> from modeopt_masks.compat.neurosurgeon.Masking.contsparse_layer import ContSparseLinear
        >>> base = nn.Linear(4, 3)
        >>> layer = ContSparseLinear.from_layer(base, "none", "neuron", True, 0.5)
        >>> layer.weight is base.weight, tuple(layer.weight_mask_params.shape), layer.mask_bias
        (True, (3, 1), True)
    """

    _ns_key = "nn.Linear"


@register
class ContSparseGPTConv1D(ContSparseLayer):
    """transformers' ``Conv1D`` (GPT-2) with a continuous-sparsification mask.

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Masking.contsparse_layer import ContSparseGPTConv1D
        >>> tuple(ContSparseGPTConv1D(6, 4).weight_mask_params.shape)
        (4, 6)
    """

    _ns_key = "hf.Conv1D"


@register
class ContSparseConv1d(ContSparseLayer):
    """``nn.Conv1d`` with a continuous-sparsification mask (NeuroSurgeon's argument order).

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Masking.contsparse_layer import ContSparseConv1d
        >>> ContSparseConv1d(2, 3, 3, 1).padding
        (1,)
    """

    _ns_key = "nn.Conv1d"


@register
class ContSparseConv2d(ContSparseLayer):
    """``nn.Conv2d`` with a continuous-sparsification mask (NeuroSurgeon's argument order).

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Masking.contsparse_layer import ContSparseConv2d
        >>> tuple(ContSparseConv2d(2, 3, 3).weight_mask_params.shape)
        (3, 2, 3, 3)
    """

    _ns_key = "nn.Conv2d"
