"""Target layers: "mask these modules (exact names or globs)" as a mask mode's type-key rules.

:class:`MaskTargets` is the one front-end of the interfaces that mask named
layers: :class:`~modeopt_masks.circuit.CircuitConfig` and the probes' configs
(:mod:`modeopt_masks.probing`) inherit it, so ``mask_method``, ``mask_hparams``,
``target_layers`` and ``freeze_base`` are validated once, the same way, when the
config is built (the mask methods are the registered mask modes), the same globs
mean the same modules and a bad target gets the same helpful error.
Globs are ``fnmatch`` patterns on the full dotted module name (``*`` crosses dots)
and mean exactly what they match: output heads are included when a glob covers them.

Examples:
    >>> import torch.nn as nn
    >>> from modeopt_masks.targets import resolve_targets, target_rules
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Conv1d(2, 2, 1), nn.ReLU())
    >>> targets = resolve_targets(net, ["0", "*"])
    >>> targets
    {'nn.Linear': ['0', '*'], 'nn.Conv1d': ['*']}
    >>> target_rules(targets, {"mask_bias": True})["nn.Conv1d"]
    {'*': {'mask_bias': True}}
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

import torch.nn as nn
from pydantic import Field, field_validator, model_validator

from .heads import HEAD_UNITS, head_layouts
from .layer_kinds import MASKABLE_KEYS, kind_of
from .masking import check_ablation
from .registry import available_modes, get_mode
from .rules import StrictModel

#: A mask mode's name (one of :func:`mask_methods`).
MaskMethod = str


def mask_methods() -> list[str]:
    """The registered modes that mask named layers (their config is a ``MaskModeConfig``).

    Examples:
        >>> from modeopt_masks.targets import mask_methods
        >>> [m for m in mask_methods() if m in ("continuous_sparsification", "hard_concrete",
        ...                                      "magnitude_pruning", "wanda")]
        ['continuous_sparsification', 'hard_concrete', 'magnitude_pruning']
    """
    from . import modes  # noqa: F401  (registers the built-in modes)
    from .modes.mask_mode import MaskModeConfig

    return sorted(  # calibrated one-shot modes (wanda, sparsegpt) need data, not targets
        name for name in available_modes()
        if issubclass(get_mode(name).config_class, MaskModeConfig)
        and not getattr(get_mode(name), "needs_calibration", False)
    )


def _mode_fields(method: str) -> tuple[set[str], set[str]]:
    """(rule fields, global option fields) of a mask mode's config."""
    cls = get_mode(method).config_class
    options = set(cls.option_names()) - {"freeze_base"}  # a field of MaskTargets itself
    return set(cls.rule_class.model_fields), options


class MaskTargets(StrictModel):
    """Which layers get which mask: the fields every layer-masking interface shares.

    * ``mask_method``: a registered mask mode (:func:`mask_methods`).
    * ``mask_hparams``: the mode's rule fields (e.g. ``mask_init_value``, ``temperature``,
      ``mask_init_percentage``, ``prune_percentage``, ``mask_unit``, ``mask_bias``), the
      mode's options (``scope`` for magnitude pruning) and ``ablation`` (the initial
      ablation mode). Unknown keys and bad values are errors naming the valid ones.
    * ``target_layers``: module names, exact or globs (``fnmatch``; ``*`` crosses dots);
      ``[]`` masks nothing. With ``mask_unit="head"`` / ``"kv_group"`` they name attention
      blocks (or their output projections; see :func:`head_targets`).
    * ``freeze_base``: base weights frozen and the base kept in eval mode; only masks train.

    Examples:
        >>> from modeopt_masks.targets import MaskTargets
        >>> t = MaskTargets(mask_method="magnitude_pruning", target_layers=["fc*"],
        ...                 mask_hparams={"scope": "global", "ablation": "zero_ablate"})
        >>> t.rule_fields(), t.ablation
        ({}, 'zero_ablate')
        >>> try:
        ...     MaskTargets(mask_method="gradnas")
        ... except ValueError as e:
        ...     print("hard_concrete" in str(e))
        True
    """

    mask_method: MaskMethod = "continuous_sparsification"
    mask_hparams: dict[str, Any] = Field(default_factory=dict)
    target_layers: list[str] = Field(default_factory=list)
    freeze_base: bool = True

    @field_validator("mask_method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        methods = mask_methods()
        if v not in methods:
            raise ValueError(f"unknown mask_method {v!r}; choose one of {methods}")
        return v

    @field_validator("target_layers")
    @classmethod
    def _no_empty_names(cls, v: list[str]) -> list[str]:
        if any(not isinstance(t, str) or not t for t in v):
            raise ValueError(f"target_layers must be non-empty module names or globs, got {v}")
        return v

    @model_validator(mode="after")
    def _check_hparams(self) -> MaskTargets:
        rule_fields, options = _mode_fields(self.mask_method)
        valid = rule_fields | options | {"ablation"}
        unknown = sorted(set(self.mask_hparams) - valid)
        if unknown:
            raise ValueError(
                f"mask_hparams {unknown} are not valid for {self.mask_method!r}; "
                f"valid keys: {sorted(valid)}"
            )
        check_ablation(self.mask_hparams.get("ablation", "none"))
        try:  # the values (ranges, types) of the rule fields and options
            get_mode(self.mask_method).config_class.rule_class.model_validate(self.rule_fields())
            self.mode_config()
        except ValueError as e:
            raise ValueError(f"mask_hparams for {self.mask_method!r}: {e}") from e
        return self

    @property
    def ablation(self) -> str:
        """The initial ablation mode (``mask_hparams["ablation"]``, default ``"none"``)."""
        return self.mask_hparams.get("ablation", "none")

    def rule_fields(self) -> dict[str, Any]:
        """The ``mask_hparams`` that are per-layer rule fields of the mode."""
        rule_fields, _ = _mode_fields(self.mask_method)
        return {k: v for k, v in self.mask_hparams.items() if k in rule_fields}

    def mode_config(self, targets: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
        """The ``mm.convert`` config dict: ``{type key: {target glob: rule}}`` plus options.

        ``targets`` maps each type key to the target patterns that match modules of
        that type (see :func:`resolve_targets`); type keys without targets are off.
        """
        _, options = _mode_fields(self.mask_method)
        spec: dict[str, Any] = {k: v for k, v in self.mask_hparams.items() if k in options}
        spec["freeze_base"] = self.freeze_base
        spec.update(target_rules(targets or {}, self.rule_fields()))
        get_mode(self.mask_method).config_class.model_validate(spec)
        return spec

    def mode_spec(self, model: nn.Module) -> tuple[str, dict[str, Any]]:
        """``(mask_method, config)`` for ``mm.convert`` masking exactly what ``target_layers`` match.

        Examples:
            >>> import torch.nn as nn
            >>> from modeopt_masks.targets import MaskTargets
            >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
            >>> MaskTargets(target_layers=["2"]).mode_spec(net)[1]["nn.Linear"]
            {'2': {}}
        """
        targets = self.target_layers
        if self.rule_fields().get("mask_unit") in HEAD_UNITS:
            targets = head_targets(model, targets)
        spec = self.mode_config(resolve_targets(model, targets))
        return self.mask_method, _bias_masks_where_biases_are(spec, model)


def head_targets(model: nn.Module, targets: Iterable[str]) -> list[str]:
    """The attention output projections that head-unit ``targets`` mean.

    A target (name or glob) may name attention blocks or their output projections; each
    must match at least one, else a ``ValueError`` lists the model's attention blocks.

    Examples:
        >>> import transformers as tf
        >>> from modeopt_masks.targets import head_targets
        >>> m = tf.GPT2Model(tf.GPT2Config(n_embd=16, n_head=2, n_layer=2, vocab_size=8,
        ...                                 bos_token_id=0, eos_token_id=0))
        >>> head_targets(m, ["h.*.attn"])
        ['h.0.attn.c_proj', 'h.1.attn.c_proj']
    """
    layouts = head_layouts(model)
    out: list[str] = []
    for target in targets:
        hits = [p for p, lay in layouts.items()
                if fnmatchcase(lay.block, target) or fnmatchcase(p, target)]
        if not hits:
            raise ValueError(
                f"target {target!r} matches no attention block or output projection, which "
                f"mask_unit {list(HEAD_UNITS)} needs; attention blocks of this model: "
                f"{[lay.block for lay in layouts.values()][:20]}"
            )
        out += [p for p in hits if p not in out]
    return out


def _bias_masks_where_biases_are(spec: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Targets name layers one by one with shared hparams: ``mask_bias`` applies where a
    bias exists, and a named bias-less layer gets its weight mask only, with a warning
    (as NeuroSurgeon's ``from_layer`` does), instead of the rule error ``convert`` raises."""
    modules = dict(model.named_modules())
    lacking = []
    for key in MASKABLE_KEYS:
        for pattern, rule in (spec.get(key) or {}).items():
            module = modules.get(pattern)
            if rule and rule.get("mask_bias") and module is not None and module.bias is None:
                rule["mask_bias"] = False
                lacking.append(pattern)
    if lacking:
        warnings.warn(f"mask_bias=True: {lacking} have no bias; their weights are masked only",
                      stacklevel=3)
    return spec


def resolve_targets(model: nn.Module, targets: Iterable[str]) -> dict[str, list[str]]:
    """Group target names/globs by the type key of the maskable modules they match.

    Every target must match at least one maskable module (the root module is not
    a target); otherwise a ``ValueError`` names each bad target with what is
    there: the closest maskable names, or the unsupported layers it matched.

    Examples:
        >>> import torch.nn as nn
        >>> from modeopt_masks.targets import resolve_targets
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Embedding(3, 2))
        >>> resolve_targets(net, ["0"])
        {'nn.Linear': ['0']}
        >>> try:
        ...     resolve_targets(net, ["1"])
        ... except ValueError as e:
        ...     print(str(e)[:48])
        target '1' matches only unsupported layers [('1'
    """
    modules = [(n, m) for n, m in model.named_modules() if n]
    supported = [(n, k.key) for n, m in modules if (k := kind_of(m)) is not None]
    out: dict[str, list[str]] = {}
    errors = []
    for target in targets:
        keys = [k for n, k in supported if fnmatchcase(n, target)]
        if not keys:
            errors.append(_target_error(target, modules, supported))
        for key in dict.fromkeys(keys):
            out.setdefault(key, []).append(target)
    if errors:
        raise ValueError("\n".join(errors))
    return out


def target_rules(targets: Mapping[str, list[str]], rule: Mapping[str, Any]) -> dict[str, Any]:
    """A mask mode's type-key entries: ``{type key: {target: rule}}``, ``None`` for no targets.

    ``targets`` is what :func:`resolve_targets` returns; every type key of
    ``MASKABLE_KEYS`` gets an entry, so the mode's defaults switch nothing else on.

    Examples:
        >>> from modeopt_masks.targets import target_rules
        >>> target_rules({"nn.Linear": ["fc*"]}, {})["nn.Linear"], target_rules({}, {})["nn.Linear"]
        ({'fc*': {}}, None)
    """
    out: dict[str, Any] = {}
    for key in MASKABLE_KEYS:
        patterns = targets.get(key)
        out[key] = {p: dict(rule) for p in patterns} if patterns else None
    return out


def _target_error(
    target: str, modules: list[tuple[str, nn.Module]], supported: list[tuple[str, str]]
) -> str:
    matched = [(n, type(m).__name__) for n, m in modules if fnmatchcase(n, target)]
    names = [n for n, _ in supported]
    if matched:
        return (
            f"target {target!r} matches only unsupported layers {matched[:10]}; supported "
            f"layer types: {list(MASKABLE_KEYS)}. Supported layers here: {names[:20]}"
        )
    hint = ""
    for suffix in (".weight", ".bias"):
        if target.endswith(suffix):
            hint = f" (target_layers are module names: drop {suffix!r})"
    close = difflib.get_close_matches(target, names, n=5)
    if close:
        listing = f"closest supported layers: {close}"
    else:
        more = f" (first 10 of {len(names)})" if len(names) > 10 else ""
        listing = f"supported layers{more}: {names[:10]}"
    return f"target {target!r} matches no module of the model{hint}; {listing}"
