"""NeuroSurgeon's layer-level names (``ContSparseLinear``, ``HardConcreteConv2d``, ...).

Thin names over the same machinery as [`modeopt_masks.convert`][modeopt_masks.conversion.convert], for users
porting NeuroSurgeon code. ``Name.from_layer(layer, **rule_fields)`` converts that
one layer in place (``mm.convert(layer, (mode, {type key: rule_fields}))``: same
parameter objects, the mode history lives on the layer, ``mm.unconvert(layer)``
undoes it) and returns it. ``Name(*layer_args, **rule_fields)`` builds the original
layer (``nn.Linear(in, out)``, ``Conv1D(nf, nx)``, ...) and converts it.
``isinstance(x, ContSparseLinear)`` holds for any ``nn.Linear`` converted by
``continuous_sparsification``, however it was converted; ``ContSparseLayer``,
``HardConcreteLayer`` and ``MagPruneLayer`` match every layer kind of a technique.

Besides the mode's rule fields (``mask_unit``, ``mask_bias``, ``mask_init_value``,
``temperature``, ``mask_init_percentage``, ``prune_percentage``), ``ablation`` sets
the initial ablation mode; NeuroSurgeon's positional order of ``from_layer``
(``ablation, mask_unit, mask_bias, mask_init_value`` and so on) is accepted.

The names (built at import, one class per technique and layer type):

| technique | any layer | ``nn.Linear`` | ``nn.Conv1d`` | ``nn.Conv2d`` | HF ``Conv1D`` |
|---|---|---|---|---|---|
| ``continuous_sparsification`` | ``ContSparseLayer`` | ``ContSparseLinear`` | ``ContSparseConv1d`` | ``ContSparseConv2d`` | ``ContSparseGPTConv1D`` |
| ``hard_concrete`` | ``HardConcreteLayer`` | ``HardConcreteLinear`` | ``HardConcreteConv1d`` | ``HardConcreteConv2d`` | ``HardConcreteGPTConv1D`` |
| ``magnitude_pruning`` | ``MagPruneLayer`` | ``MagPruneLinear`` | ``MagPruneConv1d`` | ``MagPruneConv2d`` | ``MagPruneGPTConv1D`` |

Calling a name takes the layer's constructor arguments (``*args``, ``**kwargs``) plus the
rule fields; the "any layer" names are for ``isinstance`` only (calling one raises
``TypeError``).

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> from modeopt_masks.layers import ContSparseLinear
    >>> lin = nn.Linear(4, 3); w = lin.weight
    >>> layer = ContSparseLinear.from_layer(lin, mask_init_value=0.5)
    >>> layer is lin, layer.weight is w, isinstance(layer, ContSparseLinear)
    (True, True, True)
    >>> isinstance(ContSparseLinear(4, 3, bias=False, mask_unit="neuron"), nn.Linear)
    True
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn as nn

from .conversion import convert
from .dynamic import is_dynamic
from .layer_kinds import LAYER_KINDS, kind_of, layer_class
from .masking import MaskedLayer, MaskTechnique, check_ablation
from .modes.continuous_sparsification import ContinuousSparsificationMask
from .modes.hard_concrete import HardConcreteMask
from .modes.magnitude_pruning import MagnitudeMask
from .registry import get_mode

__all__ = [
    "ContSparseConv1d",
    "ContSparseConv2d",
    "ContSparseGPTConv1D",
    "ContSparseLayer",
    "ContSparseLinear",
    "HardConcreteConv1d",
    "HardConcreteConv2d",
    "HardConcreteGPTConv1D",
    "HardConcreteLayer",
    "HardConcreteLinear",
    "MagPruneConv1d",
    "MagPruneConv2d",
    "MagPruneGPTConv1D",
    "MagPruneLayer",
    "MagPruneLinear",
]


class _MaskLayerName(type):
    """Metaclass: calling the name builds and converts a layer; ``isinstance`` checks the kind."""

    _mode: str
    _technique: type[MaskTechnique]
    _key: str | None

    def __instancecheck__(cls, obj: Any) -> bool:
        if not isinstance(obj, MaskedLayer) or not isinstance(obj, nn.Module):
            return False
        if not isinstance(getattr(obj, "weight_mask", None), cls._technique):
            return False
        kind = kind_of(obj)
        return cls._key is None or (kind is not None and kind.key == cls._key)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls._key is None:
            raise TypeError(
                f"{cls.__name__} is for isinstance checks; build a layer with one of "
                f"{[n for n in __all__ if n.startswith(cls.__name__[:-5])]}"
            )
        fields = _rule_field_names(cls._mode) | {"ablation"}
        rule = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
        layer_cls = layer_class(cls._key)
        try:
            layer = layer_cls(*args, **kwargs)
        except TypeError as e:
            raise TypeError(
                f"{cls.__name__}: {e}. Arguments are those of {layer_cls.__name__} plus the "
                f"rule fields {sorted(fields)}"
            ) from e
        return cls.from_layer(layer, **rule)  # type: ignore[attr-defined]


def _rule_field_names(mode: str) -> set[str]:
    return set(get_mode(mode).config_class.rule_class.model_fields)


class _MaskLayerBase(metaclass=_MaskLayerName):
    _mode: ClassVar[str]
    _technique: ClassVar[type[MaskTechnique]]
    _key: ClassVar[str | None] = None
    #: NeuroSurgeon's positional order of ``from_layer``'s arguments after ``layer``.
    _positional: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_layer(cls, layer: nn.Module, *args: Any, **rule_fields: Any) -> Any:
        """Convert ``layer`` in place with this technique and return it (same parameters).

        The layer must be exactly the name's layer type and not yet converted;
        unknown or out-of-range rule fields raise and leave the layer unchanged.
        """
        if len(args) > len(cls._positional):
            raise TypeError(
                f"{cls.__name__}.from_layer takes at most {len(cls._positional)} positional "
                f"arguments after the layer ({', '.join(cls._positional)}); got {len(args)}"
            )
        for name, value in zip(cls._positional, args, strict=False):
            if name in rule_fields:
                raise TypeError(f"{cls.__name__}.from_layer got {name!r} twice")
            rule_fields[name] = value
        kind = kind_of(layer)
        keys = [cls._key] if cls._key is not None else list(LAYER_KINDS)
        if kind is None or kind.key not in keys:
            raise TypeError(
                f"{cls.__name__}.from_layer needs a {' or '.join(keys)} layer, got "
                f"{type(layer).__name__}"
            )
        if is_dynamic(layer):
            raise ValueError(
                f"this {type(layer).__name__} is already converted; mm.unconvert or mm.export it first"
            )
        ablation = check_ablation(rule_fields.pop("ablation", "none"))
        convert(layer, (cls._mode, {kind.key: rule_fields}))
        assert isinstance(layer, MaskedLayer)
        layer.set_ablation(ablation)
        return layer


def _family(name: str, mode: str, technique: type[MaskTechnique], positional: tuple[str, ...]):
    return _MaskLayerName(
        name, (_MaskLayerBase,),
        {"_mode": mode, "_technique": technique, "_positional": positional,
         "__module__": __name__,
         "__doc__": f"Any layer converted by ``{mode}`` (for ``isinstance``; base of its names).\n\n"
                    f"Args:\n    *args: Not accepted: calling this name raises ``TypeError``"
                    f" (build a layer with one of the named kinds).\n"
                    f"    **kwargs: Not accepted either.\n\n"
                    f"Examples:\n    >>> import torch.nn as nn, modeopt_masks as mm\n"
                    f"    >>> from modeopt_masks.layers import {name}\n"
                    f"    >>> layer = mm.convert(nn.Sequential(nn.Linear(2, 2)), {mode!r})[0]\n"
                    f"    >>> isinstance(layer, {name}), isinstance(nn.Linear(2, 2), {name})\n"
                    f"    (True, False)\n"},
    )


_EXAMPLE_LAYER = {
    "nn.Linear": ("import torch.nn as nn", "nn.Linear(4, 3)", "nn.Linear"),
    "hf.Conv1D": ("from transformers.pytorch_utils import Conv1D", "Conv1D(3, 4)", "Conv1D"),
    "nn.Conv1d": ("import torch.nn as nn", "nn.Conv1d(2, 3, 3)", "nn.Conv1d"),
    "nn.Conv2d": ("import torch.nn as nn", "nn.Conv2d(2, 3, 3)", "nn.Conv2d"),
}


def _name(family: Any, name: str, key: str, original: str) -> Any:
    imp, make, cls = _EXAMPLE_LAYER[key]
    doc = (
        f"``{original}`` converted by ``{family._mode}``: ``{name}.from_layer(layer, **rule)``"
        f" or ``{name}(*{original.split('.')[-1]}_args, **rule)``.\n\n"
        f"Args:\n    *args: The ``{original}`` constructor's positional arguments.\n"
        f"    **kwargs: Its keyword arguments, plus the rule fields of ``{family._mode}``"
        f" (``mask_unit``, ``mask_init_value``...) and ``ablation``.\n\n"
        f"Raises:\n    TypeError: When the arguments fit neither the layer nor the rule fields.\n\n"
        f"Examples:\n    >>> {imp}\n    >>> from modeopt_masks.layers import {name}\n"
        f"    >>> layer = {name}.from_layer({make})\n"
        f"    >>> isinstance(layer, {name}), isinstance(layer, {cls})\n    (True, True)\n"
    )
    return _MaskLayerName(name, (family,), {"_key": key, "__module__": __name__, "__doc__": doc})


ContSparseLayer: Any = _family(
    "ContSparseLayer", "continuous_sparsification", ContinuousSparsificationMask,
    ("ablation", "mask_unit", "mask_bias", "mask_init_value"),
)
HardConcreteLayer: Any = _family(
    "HardConcreteLayer", "hard_concrete", HardConcreteMask,
    ("ablation", "mask_unit", "mask_bias", "mask_init_percentage"),
)
MagPruneLayer: Any = _family(
    "MagPruneLayer", "magnitude_pruning", MagnitudeMask,
    ("ablation", "mask_bias", "prune_percentage"),
)

ContSparseLinear: Any = _name(ContSparseLayer, "ContSparseLinear", "nn.Linear", "nn.Linear")
ContSparseGPTConv1D: Any = _name(ContSparseLayer, "ContSparseGPTConv1D", "hf.Conv1D", "Conv1D")
ContSparseConv1d: Any = _name(ContSparseLayer, "ContSparseConv1d", "nn.Conv1d", "nn.Conv1d")
ContSparseConv2d: Any = _name(ContSparseLayer, "ContSparseConv2d", "nn.Conv2d", "nn.Conv2d")
HardConcreteLinear: Any = _name(HardConcreteLayer, "HardConcreteLinear", "nn.Linear", "nn.Linear")
HardConcreteGPTConv1D: Any = _name(
    HardConcreteLayer, "HardConcreteGPTConv1D", "hf.Conv1D", "Conv1D"
)
HardConcreteConv1d: Any = _name(HardConcreteLayer, "HardConcreteConv1d", "nn.Conv1d", "nn.Conv1d")
HardConcreteConv2d: Any = _name(HardConcreteLayer, "HardConcreteConv2d", "nn.Conv2d", "nn.Conv2d")
MagPruneLinear: Any = _name(MagPruneLayer, "MagPruneLinear", "nn.Linear", "nn.Linear")
MagPruneGPTConv1D: Any = _name(MagPruneLayer, "MagPruneGPTConv1D", "hf.Conv1D", "Conv1D")
MagPruneConv1d: Any = _name(MagPruneLayer, "MagPruneConv1d", "nn.Conv1d", "nn.Conv1d")
MagPruneConv2d: Any = _name(MagPruneLayer, "MagPruneConv2d", "nn.Conv2d", "nn.Conv2d")
