"""Layer kinds: what a mask mode needs to know about each supported layer type.

A layer kind names its config type key, says which weight axis holds the output
units, runs the layer's own forward on given (masked) tensors and draws a fresh
weight with the layer's usual initialisation. Adding a layer type is one
``LayerKind`` and one ``register_layer_kind`` call.

Examples:
    >>> import torch.nn as nn
    >>> from modeopt_masks.layer_kinds import kind_of
    >>> kind_of(nn.Linear(3, 4)).key, kind_of(nn.Linear(3, 4)).out_dim
    ('nn.Linear', 0)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

Forward = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class LayerKind:
    """One supported layer type.

    Examples:
        >>> from modeopt_masks.layer_kinds import LAYER_KINDS, hf_conv1d_kind
        >>> _ = hf_conv1d_kind()  # registered when transformers is first needed
        >>> sorted(LAYER_KINDS)
        ['hf.Conv1D', 'nn.Conv1d', 'nn.Conv2d', 'nn.Linear']
    """

    key: str
    cls: type[nn.Module]
    #: the weight axis of output units (``Conv1D`` stores ``[in, out]``).
    out_dim: int
    forward: Forward
    init_weight: Callable[[torch.Tensor], object]

    def unit_shape(self, weight: torch.Tensor) -> tuple[int, ...]:
        """Shape of a per-output-unit mask that broadcasts against ``weight``."""
        shape = [1] * weight.dim()
        shape[self.out_dim] = weight.shape[self.out_dim]
        return tuple(shape)

    def unit_scores(self, weight: torch.Tensor) -> torch.Tensor:
        """L2 norm of each output unit's weights, in the unit mask's shape."""
        dims = [d for d in range(weight.dim()) if d != self.out_dim]
        # vector_norm: Tensor.norm(dim=[3 dims]) is a matrix-norm error for conv2d weights
        return torch.linalg.vector_norm(weight.detach().float(), dim=dims, keepdim=True)


def _kaiming_uniform(weight: torch.Tensor) -> None:
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


def _linear_forward(m: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None):
    return F.linear(x, w, b)


def _conv_forward(m: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None):
    return m._conv_forward(x, w, b)  # type: ignore[operator]  # keeps padding modes


def _hf_conv1d_forward(m: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None):
    size_out = x.size()[:-1] + (w.shape[1],)
    flat = x.reshape(-1, x.size(-1))
    out = torch.addmm(b, flat, w) if b is not None else flat @ w
    return out.view(size_out)


LAYER_KINDS: dict[str, LayerKind] = {}


def register_layer_kind(kind: LayerKind) -> LayerKind:
    """Make a layer type maskable by every mask mode.

    Examples:
        >>> from modeopt_masks.layer_kinds import LAYER_KINDS, register_layer_kind
        >>> register_layer_kind(LAYER_KINDS["nn.Linear"]).key
        'nn.Linear'
    """
    LAYER_KINDS[kind.key] = kind
    return kind


def kind_of(module: nn.Module) -> LayerKind | None:
    """The layer kind whose class is exactly ``type(module)`` (or its original class)."""
    cls = getattr(type(module), "_mm_original_cls", type(module))
    if "hf.Conv1D" not in LAYER_KINDS and "transformers.pytorch_utils" in sys.modules:
        hf_conv1d_kind()  # a model holding a Conv1D has imported its module already
    for kind in LAYER_KINDS.values():
        if cls is kind.cls:
            return kind
    return None


register_layer_kind(LayerKind("nn.Linear", nn.Linear, 0, _linear_forward, _kaiming_uniform))
register_layer_kind(LayerKind("nn.Conv1d", nn.Conv1d, 0, _conv_forward, _kaiming_uniform))
register_layer_kind(LayerKind("nn.Conv2d", nn.Conv2d, 0, _conv_forward, _kaiming_uniform))



def hf_conv1d_kind() -> LayerKind | None:
    """The ``hf.Conv1D`` kind, registered on first use (``None`` without transformers).

    ``import modeopt_masks`` does not import transformers (seconds); :func:`kind_of`
    registers this kind once ``transformers.pytorch_utils`` is loaded.

    Examples:
        >>> from modeopt_masks.layer_kinds import hf_conv1d_kind
        >>> hf_conv1d_kind().out_dim
        1
    """
    if "hf.Conv1D" in LAYER_KINDS:
        return LAYER_KINDS["hf.Conv1D"]
    try:  # transformers is optional
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - exercised only without transformers
        return None
    return register_layer_kind(
        LayerKind("hf.Conv1D", Conv1D, 1, _hf_conv1d_forward, lambda w: nn.init.normal_(w, std=0.02))
    )

#: The type keys every mask mode accepts (fixed, so configs validate without transformers).
MASKABLE_KEYS: tuple[str, ...] = ("nn.Linear", "nn.Conv1d", "nn.Conv2d", "hf.Conv1D")
