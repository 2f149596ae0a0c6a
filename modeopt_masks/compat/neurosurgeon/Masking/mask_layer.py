"""NeuroSurgeon's ``MaskLayer``: its layer interface over the library's masked layers.

A NeuroSurgeon mask layer here *is* a layer converted by a mask mode
([`modeopt_masks.MaskedLayer`][modeopt_masks.masking.MaskedLayer]), with `MaskLayer` put in front of
its class: the masks are the mode's [`MaskTechnique`][modeopt_masks.masking.MaskTechnique]
objects, the forward is the library's. What this class adds is NeuroSurgeon's
vocabulary:

* ``weight_mask_params`` / ``bias_mask_params``: the technique's parameter
  (``logits`` for continuous sparsification, ``log_alpha`` for hard concrete);
  assigning a new ``nn.Parameter`` replaces it (and drops cached masks);
* ``weight_mask`` / ``bias_mask``: read as the mask the last forward multiplied
  the weight with (the technique object behaves as that tensor in comparisons,
  indexing and ``torch`` functions: `MaskView`);
* ``_compute_mask(param_type)``, ``calculate_l0()`` / ``calculate_max_l0()``
  (counted in *gated weights*, NeuroSurgeon's convention: a neuron mask of a
  10->20 Linear counts 200, where ``mm.l0_stats`` counts 20 units);
* settable ``ablation``, ``temperature``, ``force_resample``, ``prune_percentage``
  and the read-only ``mask_unit``, ``mask_bias``, ``mask_init_value``,
  ``mask_init_percentage``.

Examples:
    >>> import torch, torch.nn as nn
    >>> from modeopt_masks.compat.neurosurgeon.Masking.contsparse_layer import ContSparseLinear
    >>> layer = ContSparseLinear(4, 2, mask_init_value=1.0)
    >>> _ = layer.train(False); out = layer(torch.ones(4))
    >>> bool(torch.all(layer.weight_mask == 1)), layer.weight_mask_params.shape
    (True, torch.Size([2, 4]))
    >>> layer.temperature = 50; layer.weight_mask.temperature
    50.0
"""

from __future__ import annotations

import builtins
import copy
import inspect
import math
import warnings
from typing import Any, ClassVar, cast

import torch
import torch.nn as nn

from ....conversion import convert
from ....dynamic import dynamic_class, is_dynamic
from ....layer_kinds import kind_of, layer_class
from ....masking import MaskedLayer, MaskTechnique

_MASK_PARAMS = {"weight_mask_params": "weight", "bias_mask_params": "bias"}

#: NeuroSurgeon's constructor arguments of the wrapped layer, per layer type key.
_LAYER_ARGS: dict[str, list[tuple[str, Any]]] = {
    "nn.Linear": [("in_features", inspect.Parameter.empty), ("out_features", inspect.Parameter.empty),
                  ("bias", True)],
    "hf.Conv1D": [("nf", inspect.Parameter.empty), ("nx", inspect.Parameter.empty)],
    "nn.Conv1d": [("in_channels", inspect.Parameter.empty), ("out_channels", inspect.Parameter.empty),
                  ("kernel_size", inspect.Parameter.empty), ("padding", 0), ("stride", 1),
                  ("dilation", 1), ("groups", 1), ("bias", True), ("padding_mode", "zeros")],
}
_LAYER_ARGS["nn.Conv2d"] = _LAYER_ARGS["nn.Conv1d"]

_BY_MODE: dict[str, type[MaskLayer]] = {}  # mode -> its family class (ContSparseLayer, ...)
_NAMES: dict[tuple[str, str], type[MaskLayer]] = {}  # (mode, type key) -> ContSparseLinear, ...
_IMPL: dict[tuple[str, str], type] = {}  # (mode, type key) -> the class instances have
_VIEWS: dict[type, type] = {}  # technique class -> its MaskView subclass


class _MaskLayerMeta(type):
    """Calling a NeuroSurgeon layer name builds the torch layer and converts it."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._ns_build(*args, **kwargs)  # type: ignore[attr-defined]


class MaskLayer(metaclass=_MaskLayerMeta):
    """Base of every NeuroSurgeon mask layer (for ``isinstance``/``issubclass`` checks).

    Examples:
        >>> import torch.nn as nn
        >>> from modeopt_masks.compat.neurosurgeon.Masking.mask_layer import MaskLayer
        >>> from modeopt_masks.compat.neurosurgeon.Masking.magprune_layer import MagPruneLinear
        >>> issubclass(type(MagPruneLinear(4, 4)), MaskLayer), isinstance(nn.Linear(2, 2), MaskLayer)
        (True, False)
    """

    _ns_mode: ClassVar[str] = ""
    _ns_key: ClassVar[str | None] = None
    #: the technique's parameter NeuroSurgeon calls ``*_mask_params`` (None: no parameter)
    _ns_param: ClassVar[str | None] = None
    #: the mask arguments after the layer's, in NeuroSurgeon's order, with defaults
    _ns_mask_args: ClassVar[list[tuple[str, Any]]] = []

    weight: nn.Parameter
    bias: nn.Parameter | None
    _parameters: dict[str, nn.Parameter | None]
    weight_mask: MaskTechnique
    bias_mask: MaskTechnique | None
    _mm_ablation: str

    # -- building ------------------------------------------------------------------------
    @classmethod
    def _ns_build(cls, *args: Any, **kwargs: Any) -> Any:
        if cls._ns_key is None:
            raise TypeError(f"{cls.__name__} is abstract; build one of its layer classes")
        params = [(n, d) for n, d in _LAYER_ARGS[cls._ns_key]] + list(cls._ns_mask_args)
        signature = inspect.Signature(
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d)
             for n, d in params]
        )
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        mask_args = {n: values.pop(n) for n, _ in cls._ns_mask_args}
        layer = _make_layer(cls._ns_key, values)
        if mask_args.get("mask_bias") and getattr(layer, "bias", None) is None:
            raise ValueError("Cannot mask bias if there is no bias")
        return cls._ns_convert(layer, mask_args)

    @classmethod
    def from_layer(cls, layer: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """A new mask layer sharing ``layer``'s parameters (``layer`` itself stays unmasked).

        Arguments after ``layer`` are NeuroSurgeon's, in its order (``ablation``,
        ``mask_unit``, ``mask_bias``, then ``mask_init_value`` /
        ``mask_init_percentage`` / ``prune_percentage``). ``mask_bias=True`` on a layer
        without a bias warns and masks the weight only, as NeuroSurgeon does.
        """
        kind = kind_of(layer)
        if cls._ns_key is None or kind is None or kind.key != cls._ns_key:
            raise TypeError(
                f"{cls.__name__}.from_layer needs a {cls._ns_key} layer, got {type(layer).__name__}"
            )
        if is_dynamic(layer):
            raise ValueError(f"this {type(layer).__name__} is already masked")
        signature = inspect.Signature(
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d)
             for n, d in cls._ns_mask_args]
        )
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        mask_args = dict(bound.arguments)
        if mask_args.get("mask_bias") and getattr(layer, "bias", None) is None:
            warnings.warn(f"Cannot mask bias for layer {layer} because it has no bias term",
                          stacklevel=2)
            mask_args["mask_bias"] = False
        return cls._ns_convert(_twin(layer), mask_args)

    @classmethod
    def _ns_rule(cls, mask_args: dict[str, Any]) -> dict[str, Any]:
        """The mode's rule fields from NeuroSurgeon's mask arguments (``ablation`` removed)."""
        return {k: v for k, v in mask_args.items() if k != "ablation"}

    @classmethod
    def _ns_convert(cls, layer: nn.Module, mask_args: dict[str, Any]) -> Any:
        kind = kind_of(layer)
        assert kind is not None
        convert(layer, (cls._ns_mode, {kind.key: cls._ns_rule(mask_args)}))
        adopt(layer)
        assert isinstance(layer, MaskLayer)
        layer.ablation = mask_args.get("ablation", "none")
        return layer

    # -- NeuroSurgeon's attribute names ---------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _MASK_PARAMS:
            self._ns_set_params(_MASK_PARAMS[name], value)
            return
        super().__setattr__(name, value)

    def _ns_technique(self, tensor: str) -> MaskTechnique:
        tech = self.weight_mask if tensor == "weight" else self.bias_mask
        if tech is None:
            raise AttributeError(f"{type(self).__name__} has no bias mask (mask_bias=False)")
        return tech

    def _ns_get_params(self, tensor: str) -> nn.Parameter:
        tech = self._ns_technique(tensor)
        if self._ns_param is None:
            raise AttributeError(f"{type(self).__name__} masks have no parameters (fixed masks)")
        return getattr(tech, self._ns_param)

    def _ns_set_params(self, tensor: str, value: torch.Tensor) -> None:
        tech = self._ns_technique(tensor)
        if self._ns_param is None:
            raise AttributeError(f"{type(self).__name__} masks have no parameters (fixed masks)")
        old = getattr(tech, self._ns_param)
        if tuple(value.shape) != tuple(old.shape):
            raise ValueError(
                f"{tensor}_mask_params must keep the shape {tuple(old.shape)}, got {tuple(value.shape)}"
            )
        if not isinstance(value, nn.Parameter):
            value = nn.Parameter(value)
        setattr(tech, self._ns_param, value)
        self._parameters[f"{tensor}_mask_params"] = value

    def _ns_alias_params(self) -> None:
        # NeuroSurgeon's parameter names: the technique's parameter is registered on the layer
        # too, so ``named_parameters`` (which lists a shared parameter once, under its first
        # name) says ``...dense.weight_mask_params`` as NeuroSurgeon's layers do
        if self._ns_param is None:
            return
        for tensor in ("weight", "bias"):
            tech = self.weight_mask if tensor == "weight" else self.bias_mask
            if tech is not None:
                self._parameters[f"{tensor}_mask_params"] = getattr(tech, self._ns_param)

    def _mm_teardown(self) -> None:  # export/unconvert: the plain layer gets no alias back
        for name in _MASK_PARAMS:
            self._parameters.pop(name, None)
        super()._mm_teardown()  # type: ignore[misc]

    @property
    def weight_mask_params(self) -> nn.Parameter:
        """The weight mask's parameter (NeuroSurgeon's name); assign to replace it."""
        return self._ns_get_params("weight")

    @property
    def bias_mask_params(self) -> nn.Parameter:
        """The bias mask's parameter; ``AttributeError`` without ``mask_bias``."""
        return self._ns_get_params("bias")

    @property  # type: ignore[override]
    def ablation(self) -> str:
        """The ablation mode; settable (one of ``modeopt_masks.ABLATIONS``)."""
        return self._mm_ablation

    @ablation.setter
    def ablation(self, value: str) -> None:
        MaskedLayer.set_ablation(self, value)  # type: ignore[arg-type]

    @property
    def force_resample(self) -> bool:
        """``True`` redraws the sampled/random ablation tensors at their next use."""
        return bool(self.__dict__.get("_ns_force_resample", False))

    @force_resample.setter
    def force_resample(self, value: bool) -> None:
        if value:  # the draws are dropped now and redrawn at their next use
            MaskedLayer.set_ablation(self, self._mm_ablation, force_resample=True)  # type: ignore[arg-type]
        self.__dict__["_ns_force_resample"] = False

    @property
    def temperature(self) -> float | None:
        """The masks' temperature (``None`` for magnitude pruning); settable."""
        tech = self.weight_mask
        return tech.temperature if tech.has_temperature else None

    @temperature.setter
    def temperature(self, value: float) -> None:
        if value < 0:
            raise ValueError("Temperature must be greater than 0")
        for tech in (self.weight_mask, self.bias_mask):
            if tech is not None and tech.has_temperature:
                tech.temperature = float(value)

    @property
    def mask_unit(self) -> str:
        """``"weight"`` or ``"neuron"``."""
        return self.weight_mask.rule.mask_unit

    @property
    def mask_bias(self) -> bool:
        """Whether the bias has a mask."""
        return self.bias_mask is not None

    # -- masks and L0 ---------------------------------------------------------------------
    def _ns_tensor(self, param_type: str) -> tuple[str, torch.Tensor, MaskTechnique]:
        if param_type not in _MASK_PARAMS:
            raise ValueError("Only weight_mask_params and bias_mask_params are supported param_types")
        name = _MASK_PARAMS[param_type]
        tensor = self.weight if name == "weight" else self.bias
        assert tensor is not None
        return name, tensor, self._ns_technique(name)

    def _ns_mask(self, name: str, tensor: torch.Tensor, technique: MaskTechnique) -> torch.Tensor:
        """The mask the forward multiplies ``tensor`` with now (full shape; ablation applied)."""
        ablation = self._mm_ablation
        if ablation == "none":
            mask = technique.mask()
        else:
            if technique.training and technique.learnable:
                raise ValueError("Can't ablate while training")
            circuit = technique.circuit()
            if ablation in ("zero_ablate", "random_ablate"):
                mask = (~circuit).float()
            else:
                mask = self._sampled_mask(name, ablation, technique, circuit).float()  # type: ignore[attr-defined]
        return mask.expand(tensor.shape)

    def _compute_mask(self, param_type: str) -> torch.Tensor:
        """NeuroSurgeon's mask of ``"weight_mask_params"`` or ``"bias_mask_params"`` (full shape)."""
        name, tensor, technique = self._ns_tensor(param_type)
        return self._ns_mask(name, tensor, technique).clone()

    def _apply_mask(self, name: str, tensor: torch.Tensor, technique: MaskTechnique) -> torch.Tensor:
        # the library's forward, recording the mask it used as ``weight_mask``/``bias_mask``
        if self._mm_ablation == "none":
            mask = technique.mask()
            out = tensor * mask.to(tensor.dtype)
            mask = mask.expand(tensor.shape)
        else:
            out = super()._apply_mask(name, tensor, technique)  # type: ignore[misc]
            mask = self._ns_mask(name, tensor, technique)
        technique.__dict__["_ns_last"] = mask.detach()
        return out

    def calculate_l0(self) -> torch.Tensor:
        """L0 in gated weights: expected (differentiable) in training, the mask's sum in eval."""
        total = torch.zeros(())
        for param_type in ("weight_mask_params", "bias_mask_params"):
            if param_type == "bias_mask_params" and self.bias_mask is None:
                continue
            name, tensor, technique = self._ns_tensor(param_type)
            if technique.training and technique.learnable:
                per_entry = tensor.numel() // math.prod(technique.shape)
                total = total + technique.l0() * per_entry
            else:
                total = total + self._ns_mask(name, tensor, technique).sum()
        return total

    def calculate_max_l0(self) -> int:
        """The number of maskable weights (and biases): the largest ``calculate_l0``."""
        n = self.weight.numel()
        if self.bias_mask is not None and self.bias is not None:
            n += self.bias.numel()
        return n


class MaskView:
    """Mixin of a layer's techniques: ``layer.weight_mask`` reads as NeuroSurgeon's mask tensor.

    Comparisons, indexing, ``~``, arithmetic, ``.bool()``, ``.sum()`` and ``torch``
    functions see the mask the layer's last forward used (full weight shape); the
    object is still the [`MaskTechnique`][modeopt_masks.masking.MaskTechnique] the library uses.

    Examples:
        >>> import torch
        >>> from modeopt_masks.compat.neurosurgeon.Masking.magprune_layer import MagPruneLinear
        >>> layer = MagPruneLinear(10, 10, prune_percentage=0.3); _ = layer(torch.ones(10))
        >>> int(torch.sum(layer.weight_mask)), int((~layer.weight_mask.bool()).sum())
        (70, 30)
    """

    __hash__ = object.__hash__

    def _ns_value(self) -> torch.Tensor:
        value = self.__dict__.get("_ns_last")
        if value is None:
            raise AttributeError("the mask is computed in the forward pass: run the layer first")
        return value

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        def value(a: Any) -> Any:
            if isinstance(a, MaskView):
                return a._ns_value()
            if isinstance(a, list | tuple):
                return type(a)(value(x) for x in a)
            return a

        return func(*value(args), **{k: value(v) for k, v in (kwargs or {}).items()})

    def __eq__(self, other: Any) -> Any:  # type: ignore[override]
        if isinstance(other, nn.Module):
            return self is other
        return self._ns_value() == other

    def __ne__(self, other: Any) -> Any:  # type: ignore[override]
        if isinstance(other, nn.Module):
            return self is not other
        return self._ns_value() != other

    def __lt__(self, other: Any) -> torch.Tensor:
        return self._ns_value() < other

    def __le__(self, other: Any) -> torch.Tensor:
        return self._ns_value() <= other

    def __gt__(self, other: Any) -> torch.Tensor:
        return self._ns_value() > other

    def __ge__(self, other: Any) -> torch.Tensor:
        return self._ns_value() >= other

    def __getitem__(self, index: Any) -> torch.Tensor:
        return self._ns_value()[index]

    def __invert__(self) -> torch.Tensor:
        return ~self._ns_value().bool()

    def __mul__(self, other: Any) -> torch.Tensor:
        return self._ns_value() * other

    __rmul__ = __mul__

    def bool(self) -> torch.Tensor:
        """The mask as a bool tensor."""
        return self._ns_value().bool()

    def int(self) -> torch.Tensor:
        """The mask as an int tensor."""
        return self._ns_value().int()

    def sum(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``mask.sum(...)``."""
        return self._ns_value().sum(*args, **kwargs)

    def numel(self) -> builtins.int:
        """Entries of the (full-shape) mask."""
        return self._ns_value().numel()


# -- class plumbing ---------------------------------------------------------------------------
def register(cls: type[MaskLayer]) -> type[MaskLayer]:
    """Record a NeuroSurgeon layer class (a family when ``_ns_key`` is None).

    A layer class gets NeuroSurgeon's signatures (``inspect.signature(ContSparseLinear)``,
    ``inspect.signature(ContSparseLinear.from_layer)``).
    """
    if cls._ns_key is None:
        _BY_MODE[cls._ns_mode] = cls
        return cls
    _NAMES[(cls._ns_mode, cls._ns_key)] = cls
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    mask_params = [inspect.Parameter(n, kind, default=d) for n, d in cls._ns_mask_args]
    cls.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, kind, default=d) for n, d in _LAYER_ARGS[cls._ns_key]] + mask_params
    )
    base = MaskLayer.__dict__["from_layer"].__func__

    def from_layer(klass: Any, layer: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return base(klass, layer, *args, **kwargs)

    from_layer.__doc__ = base.__doc__
    from_layer.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("cls", kind), inspect.Parameter("layer", kind), *mask_params]
    )
    cls.from_layer = classmethod(from_layer)  # type: ignore[method-assign,assignment]
    return cls


def _impl_class(mode: str, key: str) -> type:
    if (mode, key) not in _IMPL:
        name_cls = _NAMES[(mode, key)]
        original = layer_class(key)
        converted = dynamic_class(original, MaskedLayer)
        _IMPL[(mode, key)] = _MaskLayerMeta(
            name_cls.__name__, (name_cls, converted),
            {"_mm_original_cls": original, "_mm_mixin": MaskedLayer, "__module__": name_cls.__module__,
             "__reduce_ex__": _reduce_layer, "__qualname__": name_cls.__qualname__},
        )
    return _IMPL[(mode, key)]


def _view_class(technique: type) -> type:
    if technique not in _VIEWS:
        _VIEWS[technique] = type(
            technique.__name__, (MaskView, technique),
            {"__module__": __name__, "__reduce_ex__": _reduce_view},
        )
    return _VIEWS[technique]


def _reduce_layer(self: Any, protocol: Any) -> Any:
    return (_rebuild_layer, (self._ns_mode, kind_of(self).key), self.__dict__.copy())  # type: ignore[union-attr]


def _rebuild_layer(mode: str, key: str) -> Any:
    _load_families()
    return object.__new__(_impl_class(mode, key))


def _reduce_view(self: Any, protocol: Any) -> Any:
    return (_rebuild_view, (type(self).__mro__[2],), self.__dict__.copy())


def _rebuild_view(technique: type) -> Any:
    return object.__new__(_view_class(technique))


def _load_families() -> None:
    from . import contsparse_layer, hardconcrete_layer, magprune_layer  # noqa: F401


def adopt(layer: nn.Module) -> nn.Module:
    """Give a layer converted by a mask mode its NeuroSurgeon class (in place); returns it.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.compat.neurosurgeon.Masking.mask_layer import adopt
        >>> layer = mm.convert(nn.Sequential(nn.Linear(2, 2)), "hard_concrete")[0]
        >>> type(adopt(layer)).__name__
        'HardConcreteLinear'
    """
    _load_families()
    if isinstance(layer, MaskLayer):
        return layer
    if not isinstance(layer, MaskedLayer):
        raise TypeError(f"{type(layer).__name__} is not a masked layer")
    kind = kind_of(layer)  # type: ignore[arg-type]
    mode = next((m for m, fam in _BY_MODE.items()
                 if isinstance(layer.weight_mask, fam._ns_technique_cls)), None)  # type: ignore[attr-defined]
    if kind is None or mode is None:
        raise TypeError(f"no NeuroSurgeon name for this {type(layer).__name__}")
    layer.__class__ = _impl_class(mode, kind.key)
    cast(Any, layer)._ns_alias_params()
    for tech in (layer.weight_mask, layer.bias_mask):
        if tech is not None and not isinstance(tech, MaskView):
            tech.__class__ = _view_class(type(tech))
    return layer


def _twin(layer: nn.Module) -> nn.Module:
    """A new module of ``layer``'s class holding the same parameter objects."""
    twin = copy.copy(layer)
    for attr, value in vars(layer).items():
        if isinstance(value, dict):  # _parameters, _buffers, _modules, hook dicts
            twin.__dict__[attr] = type(value)(value) if type(value) is not dict else dict(value)
    return twin


def _make_layer(key: str, values: dict[str, Any]) -> nn.Module:
    cls = layer_class(key)
    if key == "nn.Linear":
        return cls(values["in_features"], values["out_features"], bias=values["bias"])
    if key == "hf.Conv1D":
        return cls(values["nf"], values["nx"])
    return cls(values["in_channels"], values["out_channels"], values["kernel_size"],
               stride=values["stride"], padding=values["padding"], dilation=values["dilation"],
               groups=values["groups"], bias=values["bias"], padding_mode=values["padding_mode"])
