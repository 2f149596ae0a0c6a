"""What the unstructured mask modes share: rule fields, config, convert/export.

A mask mode is one file: a :class:`MaskRule` subclass (its per-layer fields), a
:class:`~modeopt_masks.masking.MaskTechnique` subclass with a ``from_rule``
classmethod, and one :func:`register_mask_mode` call that builds the mode's config
class and descriptor.

Examples:
    >>> import torch.nn as nn, modeopt_masks as mm
    >>> net = mm.convert(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1)),
    ...                  ("continuous_sparsification", {"freeze_base": True}))
    >>> sorted(mm.masked_modules(net))
    ['0', '2']
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any, ClassVar, Literal, cast

import torch
import torch.nn as nn
from pydantic import field_validator, model_validator

from ..dynamic import is_dynamic, swap_class, unswap_class
from ..heads import HEAD_UNITS, head_layout_of, scan_heads
from ..layer_kinds import MASKABLE_KEYS, LayerKind, kind_of
from ..masking import MaskedLayer, MaskTechnique, hard_masks
from ..registry import Metadata, ModeDescriptor, register_mode
from ..rules import ModeConfig, Rule, check_temperature, match_modules
from ..selection import parse_pattern


class MaskRule(Rule):
    """Fields every mask mode has.

    ``mask_unit="neuron"`` gives one mask entry per output unit (a row of a
    Linear, a column of a ``Conv1D``, an output channel of a conv);
    ``mask_unit="head"`` / ``"kv_group"`` one per attention head / KV group, on an
    attention block's output projection (its input columns, see :mod:`modeopt_masks.heads`);
    ``mask_bias`` masks the bias too (not with head units: the bias belongs to no head).
    """

    mask_unit: Literal["weight", "neuron", "head", "kv_group"] = "weight"
    mask_bias: bool = False

    @model_validator(mode="after")
    def _head_units_have_no_bias(self) -> MaskRule:
        if self.mask_unit in HEAD_UNITS and self.mask_bias:
            raise ValueError(f"mask_unit={self.mask_unit!r} masks the output projection's input "
                             "columns per head; its bias belongs to no head: use mask_bias=False")
        return self


class PatternRule(MaskRule):
    """A mask rule with an ``"N:M"`` ``pattern`` option (``"unstructured"`` by default)."""

    pattern: str = "unstructured"

    @field_validator("pattern")
    @classmethod
    def _valid_pattern(cls, v: str) -> str:
        parse_pattern(v)
        return v

    @property
    def n_of_m(self) -> tuple[int, int] | None:
        """``(N, M)`` of an N:M pattern, or ``None`` (unstructured)."""
        return parse_pattern(self.pattern)


class MaskModeConfig(ModeConfig):
    """Config of a mask mode: the layer type keys plus ``freeze_base``.

    ``freeze_base=True`` freezes every base parameter and keeps the base in eval
    mode when ``model.train()`` is called: only the masks train.
    """

    layer_keys: ClassVar[tuple[str, ...]] = MASKABLE_KEYS
    freeze_base: bool = False


class FrozenBase:
    """Root mixin for ``freeze_base``: ``train()`` keeps the base in eval, masks follow ``mode``."""

    def train(self, mode: bool = True):  # noqa: D102
        self.__dict__["_mm_train_mode"] = mode  # given back by unconvert/export
        super().train(False)  # type: ignore[misc]
        for module in self.modules():  # type: ignore[attr-defined]
            if isinstance(module, MaskTechnique):
                module.training = mode
        return self


AfterConvert = Callable[[dict[str, MaskedLayer], Any], None]


class MaskModeDescriptor(ModeDescriptor):
    """Converts every matching layer to a :class:`MaskedLayer` with the mode's technique.

    Refused at convert (the model left unchanged): a layer whose ``weight`` is not its
    own parameter because a hook recomputes it (``torch.nn.utils.prune``, old-style
    ``weight_norm`` / ``spectral_norm``). Export bakes the hard mask into the layer's
    tensors; a *tied* weight (a masked ``lm_head`` sharing the input embedding) is
    untied first, so the other use keeps its unmasked weight, exported equals masked,
    and an HF config's ``tie_word_embeddings`` is set to ``False``.

    Built by :func:`register_mask_mode`; not subclassed by hand.
    """

    config_class: ClassVar[type[MaskModeConfig]] = MaskModeConfig  # type: ignore[misc]
    #: the technique every converted tensor gets (built with ``technique_class.from_rule``).
    technique_class: ClassVar[type[MaskTechnique]] = MaskTechnique

    def make_technique(
        self, kind: LayerKind, tensor: torch.Tensor, shape: tuple[int, ...], rule: Any
    ) -> MaskTechnique:
        """A technique of ``shape`` for ``tensor`` (a weight or bias of a ``kind`` layer)."""
        return self.technique_class.from_rule(kind, tensor, shape, rule)

    def after_convert(self, layers: dict[str, MaskedLayer], config: Any) -> None:
        """Hook run once every layer is converted (e.g. global magnitude pruning)."""

    # -- convert ------------------------------------------------------------------------
    def convert(self, model: nn.Module, config: ModeConfig) -> tuple[nn.Module, Metadata]:
        assert isinstance(config, MaskModeConfig)
        plan = match_modules(model, config, lambda _n, m: _kind_key(m))
        if not plan:
            raise ValueError(
                f"{self.name}: the config converts no module. Supported layer types: "
                f"{list(MASKABLE_KEYS)}; the model's modules: "
                f"{[(n, type(m).__name__) for n, m in model.named_modules()]}"
            )
        for name, module, _key, _rule in plan:
            if is_dynamic(module):
                raise ValueError(f"{name!r} is already converted; export or unconvert first")
            _check_plain_tensors(name, module)
        heads = scan_heads(model) if any(
            getattr(rule, "mask_unit", None) in HEAD_UNITS for *_, rule in plan) else {}
        techniques = {name: self._techniques(model, name, m, cast(MaskRule, rule), heads)
                      for name, m, _k, rule in plan}
        layers: dict[str, MaskedLayer] = {}
        for name, module, _key, _rule in plan:
            swap_class(module, MaskedLayer)
            assert isinstance(module, MaskedLayer)
            module._mm_init(*techniques[name])
            layers[name] = module
        metadata: Metadata = {"layers": list(layers), "temperatures": {}}
        try:
            self.after_convert(layers, config)
        except Exception:
            self.revert(model, config, metadata)
            raise
        if config.freeze_base:
            metadata["frozen"] = _freeze_base(model)
        return model, metadata

    def _techniques(
        self, model: nn.Module, name: str, module: nn.Module, rule: MaskRule,
        heads: dict[str, Any],
    ) -> tuple[MaskTechnique, MaskTechnique | None]:
        kind = kind_of(module)
        assert kind is not None
        weight = cast(torch.Tensor, module.weight)
        spread = None
        if rule.mask_unit in HEAD_UNITS:  # one entry per head / KV group of the input columns
            n_units, width = head_layout_of(model, name, heads).units(rule.mask_unit)
            w_shape: tuple[int, ...] = (n_units,)
            spread = (kind.in_dim, width, weight.dim())
        elif rule.mask_unit == "neuron":
            w_shape = kind.unit_shape(weight)
        else:
            w_shape = tuple(weight.shape)
        weight_mask = self.make_technique(kind, weight, w_shape, rule)
        weight_mask.spread = spread
        bias = cast(torch.Tensor | None, getattr(module, "bias", None))
        bias_mask = None
        if rule.mask_bias and bias is not None:
            bias_mask = self.make_technique(kind, bias, tuple(bias.shape), rule)
        for tech, tensor in ((weight_mask, weight), (bias_mask, bias)):
            if tech is not None and tensor is not None:
                tech.rule = rule
                # on the layer's device; float32, or float64 for a float64 layer (half-precision
                # layers keep float32 masks: the bool buffers of fixed masks are not touched)
                tech.to(device=tensor.device,
                        dtype=torch.promote_types(tensor.dtype, torch.float32)
                        if tensor.is_floating_point() else None)
                tech.train(module.training)  # new children follow the layer's train/eval state
        return weight_mask, bias_mask

    # -- state ---------------------------------------------------------------------------
    def update_metadata(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> None:
        layers = dict(model.named_modules())
        compacted = [name for name in metadata["layers"]
                     if any(t.eval_only for _, t in layers[name]._mask_modules())]
        if compacted:  # called by mm.save before it writes anything
            raise ValueError(
                f"{self.name}: the masks of {compacted[:10]} were compacted for evaluation "
                "(mm.compact_masks); a checkpoint would restore learned masks that are not "
                "there: save before compacting, or mm.expand_masks(model) first "
                "(after compact_masks(..., keep_logits=True))")
        metadata["temperatures"] = {
            name: layers[name].weight_mask.temperature
            for name in metadata["layers"]
            if layers[name].weight_mask.has_temperature
        }

    def restore(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> nn.Module:
        model, new_meta = self.convert(model, config)
        if new_meta["layers"] != metadata["layers"]:
            self.revert(model, config, new_meta)
            raise ValueError(
                f"{self.name}: the model does not fit the saved state: saved masked layers "
                f"{metadata['layers']}, this model gives {new_meta['layers']}"
            )
        temperatures = metadata.get("temperatures", {})
        if not isinstance(temperatures, dict) or not set(temperatures) <= set(new_meta["layers"]):
            raise ValueError(f"saved temperatures must map masked layers {new_meta['layers']} "
                             f"to numbers, got {temperatures!r:.100}")
        layers = dict(model.named_modules())
        for name, temperature in temperatures.items():
            for _, tech in layers[name]._mask_modules():
                tech.temperature = check_temperature(temperature)
        return model

    def revert(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> nn.Module:
        return self._remove(model, metadata, bake=False)

    def export(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> nn.Module:
        return self._remove(model, metadata, bake=True)

    def _remove(self, model: nn.Module, metadata: Metadata, bake: bool) -> nn.Module:
        modules = dict(model.named_modules())
        uses = _parameter_uses(model)
        untied = False
        for name in metadata["layers"]:
            layer = modules[name]
            assert isinstance(layer, MaskedLayer)
            if bake:
                with torch.no_grad(), hard_masks(cast(nn.Module, layer)):
                    weight, bias = layer._compute_tensors() if layer.use_masks else (
                        layer.weight, layer.bias)
                    for attr, baked in (("weight", weight), ("bias", bias)):
                        untied |= _bake(cast(nn.Module, layer), attr, baked, uses)
            layer._mm_teardown()
            unswap_class(cast(nn.Module, layer))
        if "frozen" in metadata:
            _unfreeze_base(model, metadata["frozen"])
        hf_config: Any = getattr(model, "config", None)
        if untied and getattr(hf_config, "tie_word_embeddings", False):
            hf_config.tie_word_embeddings = False  # so save/from_pretrained do not re-tie them
        return model


def _parameter_uses(model: nn.Module) -> dict[int, int]:
    """How many module slots hold each parameter (``> 1``: tied, e.g. ``lm_head``/embedding)."""
    uses: dict[int, int] = {}
    for module in model.modules():
        for param in module._parameters.values():
            if param is not None:
                uses[id(param)] = uses.get(id(param), 0) + 1
    return uses


def _bake(layer: nn.Module, attr: str, baked: torch.Tensor | None, uses: dict[int, int]) -> bool:
    """Write the masked tensor into ``layer.<attr>``; a tied parameter is untied first.

    Baking into a parameter another module also uses (a tied ``lm_head`` and input
    embedding) would prune that other use too, so the exported model would compute
    something else than the masked one. The layer gets its own parameter instead.
    """
    param = layer._parameters.get(attr)
    if param is None or baked is None or baked is param:
        return False
    if uses.get(id(param), 0) > 1:
        uses[id(param)] -= 1
        layer._parameters[attr] = nn.Parameter(baked.detach().clone(),
                                               requires_grad=param.requires_grad)
        return True
    param.copy_(baked)
    return False


def _check_plain_tensors(name: str, module: nn.Module) -> None:
    """Refuse a layer whose ``weight`` a hook recomputes, or that already has a ``*_mask``.

    ``torch.nn.utils.prune`` keeps ``weight_orig`` + a ``weight_mask`` buffer, and old-style
    ``weight_norm`` / ``spectral_norm`` keep ``weight_g``/``weight_v`` (``weight_orig``):
    their forward pre-hook rewrites ``weight`` every call, so a mask baked into ``weight``
    on export would be recomputed away, and our ``weight_mask`` would replace theirs.
    """
    hooks = [type(h).__name__ for h in module._forward_pre_hooks.values()]
    clashes = [n for n in ("weight_mask", "bias_mask") if n in module.__dict__
               or n in module._buffers or n in module._parameters or n in module._modules]
    if "weight" in module._parameters and not clashes:
        return
    remedies = {"WeightNorm": "torch.nn.utils.remove_weight_norm(module)",
                "SpectralNorm": "torch.nn.utils.remove_spectral_norm(module)"}
    how = next((remedies[h] for h in hooks if h in remedies),
               "torch.nn.utils.prune.remove(module, 'weight')")
    raise ValueError(
        f"{name!r}: its weight is not a plain parameter of the layer (parameters "
        f"{sorted(module._parameters)}, buffers {sorted(module._buffers)}, forward pre-hooks "
        f"{hooks}): it is recomputed by torch.nn.utils.prune, weight_norm or spectral_norm, "
        f"so masks cannot be applied or exported faithfully. Make it plain first with {how}"
    )


def register_mask_mode(
    name: str,
    rule_class: type[MaskRule],
    technique_class: type[MaskTechnique],
    *,
    options: dict[str, Any] | None = None,
    after_convert: AfterConvert | None = None,
) -> MaskModeDescriptor:
    """Register mask mode ``name``: build its config class and descriptor from a rule and a technique.

    The pattern (one file per technique, see ``modes/continuous_sparsification.py``):

    1. ``class MyRule(MaskRule)``: the per-layer fields (pydantic, with bounds);
    2. ``class MyMask(MaskTechnique)`` with ``mask()``, ``circuit()``, ``l0()`` and a
       classmethod ``from_rule(kind, tensor, shape, rule)`` that builds it for one tensor;
    3. ``register_mask_mode("my_mode", MyRule, MyMask)``.

    ``options`` adds global config fields, ``{field: (annotation, default)}`` (e.g.
    magnitude pruning's ``scope``); ``after_convert(layers, config)`` runs once every
    layer is converted (a failure there reverts the conversion). The config class is
    named after the mode (``my_mode`` -> ``MyModeConfig``) and is the descriptor's
    ``config_class``; rule fields, options and layer keys are all read from it.

    Examples:
        >>> import torch, torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.modes.mask_mode import MaskRule, register_mask_mode
        >>> class KeepPositiveMask(mm.MaskTechnique):
        ...     learnable = False
        ...     def __init__(self, keep):
        ...         super().__init__(tuple(keep.shape))
        ...         self.register_buffer("keep", keep)
        ...     @classmethod
        ...     def from_rule(cls, kind, tensor, shape, rule):
        ...         return cls(tensor.detach() > 0)
        ...     def mask(self): return self.keep.float()
        ...     def circuit(self): return self.keep
        ...     def l0(self): return self.keep.sum().float()
        >>> desc = register_mask_mode("doc_keep_positive", MaskRule, KeepPositiveMask)
        >>> desc.config_class.__name__, desc.config_class.option_names()
        ('DocKeepPositiveConfig', ['freeze_base'])
        >>> net = mm.convert(nn.Sequential(nn.Linear(3, 3)), "doc_keep_positive")
        >>> bool((net[0].effective_weight() >= 0).all())
        True
    """
    camel = "".join(part.capitalize() for part in re.split(r"[^0-9a-zA-Z]+", name) if part)
    annotations = {k: annotation for k, (annotation, _default) in (options or {}).items()}
    defaults = {k: default for k, (_annotation, default) in (options or {}).items()}
    fields = ", ".join(f"``{k}``" for k in ["freeze_base", *defaults])
    config_class = type(f"{camel}Config", (MaskModeConfig,), {
        "__module__": technique_class.__module__,
        "__doc__": f"Rule config of ``{name}``: type keys, {fields} (rules: {rule_class.__name__}).",
        "__annotations__": annotations,
        "rule_class": rule_class,
        **defaults,
    })
    hook = staticmethod(after_convert) if after_convert is not None else (
        MaskModeDescriptor.after_convert)
    descriptor_class = type(f"{camel}Mode", (MaskModeDescriptor,), {
        "__module__": technique_class.__module__,
        "__doc__": f"Descriptor of ``{name}``.",
        "name": name,
        "config_class": config_class,
        "technique_class": technique_class,
        "after_convert": hook,
    })
    # pickle finds classes by module attribute: bind the generated ones where they claim to live
    home = sys.modules.get(technique_class.__module__)
    if home is not None:
        for cls in (config_class, descriptor_class):
            setattr(home, cls.__name__, cls)
    return cast(MaskModeDescriptor, register_mode(descriptor_class()))


def _kind_key(module: nn.Module) -> str | None:
    kind: LayerKind | None = kind_of(module)
    return None if kind is None else kind.key


def _freeze_base(model: nn.Module) -> list[str]:
    frozen = []
    mask_params = {
        id(p) for m in model.modules() if isinstance(m, MaskTechnique) for p in m.parameters()
    }
    for name, param in model.named_parameters():
        if id(param) not in mask_params and param.requires_grad:
            param.requires_grad_(False)
            frozen.append(name)
    if not isinstance(model, MaskedLayer):
        swap_class(model, FrozenBase)
    model.train(model.training)
    return frozen


def _unfreeze_base(model: nn.Module, names: list[str]) -> None:
    params = dict(model.named_parameters())
    for name in names:
        params[name].requires_grad_(True)
    if is_dynamic(model, FrozenBase):
        mode = model.__dict__.pop("_mm_train_mode", model.training)
        unswap_class(model)
        model.train(mode)  # the train/eval state the user last asked for
