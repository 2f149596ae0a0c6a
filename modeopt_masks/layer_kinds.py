"""Layer kinds: everything the library knows about one supported layer type, in one record.

A [`LayerKind`][modeopt_masks.layer_kinds.LayerKind] names its config type key, says which weight axis holds the
output units and which the inputs, runs the layer's own forward on given
(masked) tensors, draws a fresh weight with the layer's usual initialisation,
puts the size attributes back in line with a sliced weight, and says whether
``gradnas`` may use it as the producer / consumer of a plain channel pair. The
mask modes, ``gradnas`` (plain pairs, family blocks, export) and the searchers
all read these records; adding a layer type is one ``LayerKind`` and one
``register_layer_kind`` call.

Which modules a kind accepts ([`kind_of`][modeopt_masks.layer_kinds.kind_of]): the kind's class and its
subclasses that keep its ``forward`` (as Model Optimizer matches them); a
subclass with its own ``forward`` computes something the library cannot see and
is refused by every mode alike.

Examples:
    >>> import torch.nn as nn
    >>> from modeopt_masks.layer_kinds import kind_of
    >>> kind_of(nn.Linear(3, 4)).key, kind_of(nn.Linear(3, 4)).out_dim
    ('nn.Linear', 0)
    >>> class Tagged(nn.Linear):  # same forward: accepted
    ...     pass
    >>> class Scaled(nn.Linear):  # its own forward: refused
    ...     def forward(self, x):
    ...         return 2 * super().forward(x)
    >>> kind_of(Tagged(3, 4)).key, kind_of(Scaled(3, 4))
    ('nn.Linear', None)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

Forward = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class LayerKind:
    """One supported layer type.

    Args:
        key: The type key used in configs (``"nn.Linear"``).
        cls: The module class.
        out_dim: The weight axis of output units.
        forward: ``forward(module, input, weight, bias)`` with the masked tensors.
        init_weight: Re-initialises a weight (used by ``random_ablate``).
        in_dim: The weight axis of input features.
        input_axis: The input activation's axis holding those features.
        sync_sizes: Sets the module's size attributes from its weight.
        plain_pairs: gradnas: may form a plain ``layer -> act -> layer`` pair.
        sliceable: gradnas: whether a module's output channels can be sliced.

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
    #: the weight axis of input features / channels
    in_dim: int = 1
    #: the axis of the layer's *input activation* that holds those features (-1 last, 1 channels)
    input_axis: int = -1
    #: sets the module's size attributes (``in_features``, ``out_channels``, ...) from its weight
    sync_sizes: Callable[[nn.Module], None] = lambda module: None
    #: gradnas: may be the producer and the consumer of a plain ``layer -> act -> layer`` pair
    plain_pairs: bool = False
    #: gradnas: whether a module of this kind can have its output channels sliced (ungrouped)
    sliceable: Callable[[nn.Module], bool] = lambda module: True

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


    def in_width(self, module: nn.Module) -> int:
        """Number of input features of ``module`` (the consumer side of a pruned dimension)."""
        return int(module.weight.shape[self.in_dim])  # type: ignore[union-attr,index]

    def out_width(self, module: nn.Module) -> int:
        """Number of output units of ``module`` (the producer side of a pruned dimension)."""
        return int(module.weight.shape[self.out_dim])  # type: ignore[union-attr,index]


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


def _sync_linear(m: nn.Module) -> None:
    m.out_features, m.in_features = m.weight.shape  # type: ignore[union-attr,assignment,misc]


def _sync_conv(m: nn.Module) -> None:
    w: Any = m.weight
    m.out_channels = w.shape[0]
    m.in_channels = w.shape[1] * m.groups  # type: ignore[operator]


def _sync_hf_conv1d(m: nn.Module) -> None:  # weight [in, out]; ``nx`` only since 4.41
    w: Any = m.weight
    m.nf = w.shape[1]
    if hasattr(m, "nx"):
        m.nx = w.shape[0]


def _ungrouped(m: nn.Module) -> bool:
    return getattr(m, "groups", 1) == 1


LAYER_KINDS: dict[str, LayerKind] = {}
"""Every registered layer kind by key (``register_layer_kind`` adds to it)."""


def register_layer_kind(kind: LayerKind) -> LayerKind:
    """Make a layer type maskable by every mask mode.

    Args:
        kind: The [`LayerKind`][modeopt_masks.layer_kinds.LayerKind] to add.

    Returns:
        ``kind``.

    Examples:
        >>> from modeopt_masks.layer_kinds import LAYER_KINDS, register_layer_kind
        >>> register_layer_kind(LAYER_KINDS["nn.Linear"]).key
        'nn.Linear'
    """
    LAYER_KINDS[kind.key] = kind
    return kind


#: subclasses that keep the forward but whose owner never calls it: masking them does nothing
#: (``nn.MultiheadAttention`` reads ``out_proj.weight`` directly)
_NOT_CALLED: tuple[type[nn.Module], ...] = (nn.modules.linear.NonDynamicallyQuantizableLinear,)


def kind_of(module: nn.Module) -> LayerKind | None:
    """The layer kind of ``module``: its class (or a converted module's original class) is
    the kind's class or a subclass that keeps the kind's ``forward``; ``None`` otherwise."""
    cls = getattr(type(module), "_mm_original_cls", type(module))
    if issubclass(cls, _NOT_CALLED):
        return None
    if "hf.Conv1D" not in LAYER_KINDS and "transformers.pytorch_utils" in sys.modules:
        hf_conv1d_kind()  # a model holding a Conv1D has imported its module already
    for kind in LAYER_KINDS.values():
        if issubclass(cls, kind.cls) and getattr(cls, "forward", None) is kind.cls.forward:
            return kind
    return None


register_layer_kind(LayerKind("nn.Linear", nn.Linear, 0, _linear_forward, _kaiming_uniform,
                              sync_sizes=_sync_linear, plain_pairs=True))
for _key, _cls in (("nn.Conv1d", nn.Conv1d), ("nn.Conv2d", nn.Conv2d)):
    register_layer_kind(LayerKind(_key, _cls, 0, _conv_forward, _kaiming_uniform, input_axis=1,
                                  sync_sizes=_sync_conv, plain_pairs=True, sliceable=_ungrouped))



def hf_conv1d_kind() -> LayerKind | None:
    """The ``hf.Conv1D`` kind, registered on first use (``None`` without transformers).

    ``import modeopt_masks`` does not import transformers (seconds); [`kind_of`][modeopt_masks.layer_kinds.kind_of]
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
        LayerKind("hf.Conv1D", Conv1D, 1, _hf_conv1d_forward, lambda w: nn.init.normal_(w, std=0.02),
                  in_dim=0, sync_sizes=_sync_hf_conv1d)
    )

def layer_class(key: str) -> type[nn.Module]:
    """The module class of layer kind ``key``, registering ``hf.Conv1D`` on first use.

    Examples:
        >>> from modeopt_masks.layer_kinds import layer_class
        >>> layer_class("nn.Linear").__name__
        'Linear'
    """
    if key == "hf.Conv1D":
        hf_conv1d_kind()
    if key not in LAYER_KINDS:
        raise ImportError(f"layer type {key!r} is unavailable (hf.Conv1D needs transformers); "
                          f"available: {sorted(LAYER_KINDS)}")
    return LAYER_KINDS[key].cls


#: The type keys every mask mode accepts (fixed, so configs validate without transformers).
MASKABLE_KEYS: tuple[str, ...] = ("nn.Linear", "nn.Conv1d", "nn.Conv2d", "hf.Conv1D")


def plain_pair_keys() -> tuple[str, ...]:
    """Type keys of the kinds ``gradnas`` pairs as plain producer -> consumer layers.

    Examples:
        >>> from modeopt_masks.layer_kinds import plain_pair_keys
        >>> plain_pair_keys()
        ('nn.Linear', 'nn.Conv1d', 'nn.Conv2d')
    """
    return tuple(k.key for k in LAYER_KINDS.values() if k.plain_pairs)
