"""Rule configs: which modules a mode converts, and with which settings.

A mode config has one entry per module *type key* (``"nn.Linear"``,
``"hf.Conv1D"``, ...) plus the mode's global options. A type key's value is

* ``None``: modules of that type are left alone;
* a rule (a dict of the rule's fields, or the rule object): applies to ``"*"``;
* an ordered mapping ``{glob: rule | None}`` on the full dotted module name.

Every matching pattern applies in order. A later rule overrides only the fields
it sets explicitly; ``None`` switches the module off and a later rule switches
it back on. A user's entry for a type key replaces the mode's default entry for
that key, except for the default exclusions ([`DEFAULT_EXCLUDED_PATTERNS`][modeopt_masks.rules.DEFAULT_EXCLUDED_PATTERNS],
output heads such as ``*lm_head*``): they survive a user rule for ``"*"`` (or any
glob that does not name them), so ``{"nn.Linear": {"*": {...}}}`` leaves
``lm_head`` (and an embedding tied to it) alone. To convert such a module, name it
in a glob: ``{"*": {...}, "*lm_head*": {}}`` or ``{"lm_head": {...}}``.

Examples:
    >>> import modeopt_masks as mm
    >>> cfg = mm.get_mode("hard_concrete").config_class.model_validate(
    ...     {"nn.Linear": {"*": {"mask_init_percentage": 0.9}, "*.out*": {"mask_unit": "neuron"}}})
    >>> r = cfg.rule_for("nn.Linear", "encoder.out")
    >>> (r.mask_init_percentage, r.mask_unit)
    (0.9, 'neuron')
    >>> cfg.rule_for("nn.Linear", "lm_head") is None  # a default exclusion survives "*"
    True
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any, ClassVar

import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .layer_kinds import kind_of

DEFAULT_EXCLUDED_PATTERNS: tuple[str, ...] = ("*lm_head*", "*classifier*", "*score*", "*pooler*")
"""Output heads are left alone by every mode's default config."""


def names_exclusion(pattern: str, exclusion: str) -> bool:
    """Whether a user glob names the module kind a default ``exclusion`` keeps off (it
    contains the exclusion's word, e.g. ``"lm_head"`` in ``"*lm_head*"`` or ``"lm_head"``).

    Examples:
        >>> from modeopt_masks.rules import names_exclusion
        >>> names_exclusion("lm_head", "*lm_head*"), names_exclusion("*", "*lm_head*")
        (True, False)
    """
    return exclusion.strip("*") in pattern

#: Temperatures multiply or divide float32 mask logits; outside this range the float32
#: value is 0 or inf, and ``0 * inf`` turns the mask into NaN.
TEMPERATURE_RANGE: tuple[float, float] = (1e-30, 1e30)


def check_temperature(value: Any) -> float:
    """``value`` as a float if it is a usable temperature, else a ``ValueError`` saying why.

    Examples:
        >>> from modeopt_masks.rules import check_temperature
        >>> check_temperature(2)
        2.0
        >>> try:
        ...     check_temperature(float("inf"))
        ... except ValueError as e:
        ...     print(e)
        temperature must be a finite number in [1e-30, 1e+30], got inf
    """
    low, high = TEMPERATURE_RANGE
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"temperature must be a number, got {value!r:.80}")
    value = float(value)
    if not low <= value <= high:
        raise ValueError(f"temperature must be a finite number in [{low:g}, {high:g}], got {value}")
    return value


class StrictModel(BaseModel):
    """A pydantic model whose unknown fields raise an error naming the valid fields.

    Plain ``extra="forbid"`` says only "Extra inputs are not permitted"; this
    lists every field (and accepted alias). Rules and the circuit/probe configs
    derive from it.

    Examples:
        >>> from modeopt_masks.rules import StrictModel
        >>> class Cfg(StrictModel):
        ...     size: int = 1
        >>> try:
        ...     Cfg(sise=2)
        ... except ValueError as e:
        ...     print(e.errors()[0]["msg"])
        Value error, unknown field(s) ['sise'] for Cfg; valid fields: ['size']
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _name_valid_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            valid = set()
            for name, field in cls.model_fields.items():
                valid.add(name)
                choices = getattr(field.validation_alias, "choices", None) or []
                valid.update(c for c in choices if isinstance(c, str))
            unknown = [k for k in data if k not in valid]
            if unknown:
                raise ValueError(
                    f"unknown field(s) {unknown} for {cls.__name__}; valid fields: {sorted(valid)}"
                )
        return data


class Rule(StrictModel):
    """Per-module settings of a mode. Subclasses declare the fields.

    Unknown fields raise a validation error naming the valid fields.

    Examples:
        >>> from modeopt_masks.rules import Rule
        >>> try:
        ...     Rule.model_validate({"nope": 1})
        ... except ValueError as e:
        ...     print("valid fields" in str(e))
        True
    """

    model_config = ConfigDict(validate_assignment=True, frozen=True)

    @field_validator("temperature", check_fields=False)
    @classmethod
    def _usable_temperature(cls, v: Any) -> float:
        return check_temperature(v)

    def explicit_fields(self) -> dict[str, Any]:
        """The fields the user set explicitly (what a later glob may override)."""
        return {k: getattr(self, k) for k in self.model_fields_set}


RuleMapping = dict[str, Rule | None]


class ModeConfig(BaseModel):
    """Base of every mode's rule config: type keys mapped to glob rules, plus options.

    Subclasses set ``rule_class`` (the per-module rule) and ``layer_keys`` (the
    type keys the mode understands) and declare global options as fields.

    Attributes:
        rules: ``{type key: {glob: rule fields or None}}``; ``None`` switches a match off.
        user_keys: The type keys the user gave (set by validation; not passed by hand).

    Examples:
        >>> import modeopt_masks as mm
        >>> cfg = mm.get_mode("continuous_sparsification").config_class.model_validate(
        ...     {"nn.Linear": {"mask_init_value": -1.0}})
        >>> cfg.rule_for("nn.Linear", "bert.encoder.layer.0.output.dense").mask_init_value
        -1.0
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    rule_class: ClassVar[type[Rule]] = Rule
    layer_keys: ClassVar[tuple[str, ...]] = ()
    #: The rules, one ordered ``{glob: rule | None}`` (or ``None``) per type key.
    rules: dict[str, RuleMapping | None] = {}

    #: type keys the user gave explicitly (the others hold the defaults).
    user_keys: frozenset[str] = Field(default=frozenset(), exclude=True)

    @classmethod
    def option_names(cls) -> list[str]:
        """The mode's global options (its fields other than the rules), sorted.

        Examples:
            >>> import modeopt_masks as mm
            >>> mm.get_mode("magnitude_pruning").config_class.option_names()
            ['freeze_base', 'scope']
        """
        return sorted(k for k in cls.model_fields if k not in ("rules", "user_keys"))

    @classmethod
    def default_rules(cls) -> dict[str, Any]:
        """Default spec: every layer kind on, output heads off."""
        spec: dict[str, Any] = {"*": {}}
        spec.update(dict.fromkeys(DEFAULT_EXCLUDED_PATTERNS))
        return {key: dict(spec) for key in cls.layer_keys}

    @model_validator(mode="before")
    @classmethod
    def _split_type_keys(cls, data: Any) -> Any:
        if isinstance(data, ModeConfig):
            return data
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError(f"a {cls.__name__} is a dict of type keys and options, got {data!r}")
        option_names = cls.option_names()
        if "user_keys" in data:  # internal: derived from the type keys given, never set
            raise ValueError(
                f"unknown key 'user_keys' for {cls.__name__}; valid type keys: "
                f"{list(cls.layer_keys)}; valid options: {option_names}"
            )
        options = {k: v for k, v in data.items() if k in option_names}
        given = dict(data.get("rules") or {})
        for key, value in data.items():
            if key in cls.model_fields:
                continue
            if key not in cls.layer_keys:
                raise ValueError(
                    f"unknown key {key!r} for {cls.__name__}; valid type keys: "
                    f"{list(cls.layer_keys)}; valid options: {option_names}"
                )
            given[key] = value
        for key in given:
            if key not in cls.layer_keys:
                raise ValueError(f"unknown type key {key!r}; valid type keys: {list(cls.layer_keys)}")
        rules = cls.default_rules()
        rules.update({k: cls._normalise_spec(k, v) for k, v in given.items()})
        options["rules"] = rules
        options["user_keys"] = frozenset(given)
        return options

    @classmethod
    def _normalise_spec(cls, key: str, spec: Any) -> RuleMapping | None:
        rule_fields = set(cls.rule_class.model_fields)
        if spec is None:
            return None
        if isinstance(spec, Rule):
            return {"*": cls._validate_rule(key, "*", spec)}
        if not isinstance(spec, dict):
            raise ValueError(f"{key!r}: expected None, a rule dict or {{glob: rule}}, got {spec!r}")
        looks_like_rule = not spec or all(k in rule_fields for k in spec) or any(
            v is not None and not isinstance(v, dict | Rule) for v in spec.values()
        )
        if looks_like_rule:
            return {"*": cls._validate_rule(key, "*", spec)}
        return {
            str(pattern): None if rule is None else cls._validate_rule(key, pattern, rule)
            for pattern, rule in spec.items()
        }

    @classmethod
    def _validate_rule(cls, key: str, pattern: str, rule: Any) -> Rule:
        if isinstance(rule, cls.rule_class):
            return rule
        if isinstance(rule, Rule):
            rule = rule.explicit_fields()
        try:
            return cls.rule_class.model_validate(rule)
        except ValueError as e:
            raise ValueError(f"rule {key!r} -> {pattern!r}: {e}") from e

    def rule_for(self, key: str, name: str) -> Rule | None:
        """The merged rule for module ``name`` of type ``key``, or ``None`` if it is off."""
        spec = self.rules.get(key)
        if not spec:
            return None
        on, fields, named = False, {}, []
        for pattern, rule in spec.items():
            if not fnmatchcase(name, pattern):
                continue
            if rule is None:
                on = False
            else:
                on = True
                fields.update(rule.explicit_fields())
                named.append(pattern)
        if on and key in self.user_keys:  # default exclusions survive globs that don't name them
            for exclusion in DEFAULT_EXCLUDED_PATTERNS:
                if fnmatchcase(name, exclusion) and not any(
                        names_exclusion(p, exclusion) for p in named):
                    return None
        return self.rule_class(**fields) if on else None

    def user_patterns(self) -> list[tuple[str, str]]:
        """``(type key, glob)`` of every glob the user gave, exclusions (``None``) included.

        The default exclusions (``DEFAULT_EXCLUDED_PATTERNS``) are left out even when the
        user repeats them: a model need not have an output head.
        """
        out = []
        for key in sorted(self.user_keys):
            for pattern, rule in (self.rules.get(key) or {}).items():
                if rule is not None or pattern not in DEFAULT_EXCLUDED_PATTERNS:
                    out.append((key, pattern))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form that validates back to an equal config (keeps explicit fields only)."""
        out: dict[str, Any] = self.model_dump(exclude={"rules", "user_keys"})
        for key in sorted(self.user_keys):
            spec = self.rules.get(key)
            out[key] = None if spec is None else {
                p: None if r is None else r.model_dump(exclude_unset=True) for p, r in spec.items()
            }
        return out


def match_modules(
    model: nn.Module,
    config: ModeConfig,
    key_of: Callable[[str, nn.Module], str | None],
) -> list[tuple[str, nn.Module, str, Rule]]:
    """Plan a conversion: ``(name, module, type key, merged rule)`` for every module switched on.

    ``key_of`` gives a module's type key (or ``None`` for unsupported modules). A
    user rule that matches no module raises an error naming the closest module names
    (and how many supported modules there are), not the whole list.
    """
    planned, seen = [], []
    for name, module in model.named_modules():
        key = key_of(name, module)
        if key is None:
            continue
        seen.append((name, key))
        rule = config.rule_for(key, name)
        if rule is not None:
            planned.append((name, module, key, rule))
    # an exclusion (``None``) only has to match a layer of its type, converted or not: gradnas
    # sees only its candidate producers, and excluding a non-candidate Linear is harmless
    layers = [(n, kind.key) for n, m in model.named_modules() if (kind := kind_of(m)) is not None]
    unmatched = [
        (key, pattern)
        for key, pattern in config.user_patterns()
        if not any(k == key and fnmatchcase(n, pattern) for n, k in seen) and not (
            (config.rules.get(key) or {}).get(pattern, ...) is None
            and any(k == key and fnmatchcase(n, pattern) for n, k in layers))
    ]
    if unmatched:
        raise ValueError(no_match_message(unmatched, seen, model))
    return planned


def no_match_message(unmatched: list[tuple[str, str]], seen: list[tuple[str, str]],
                     model: nn.Module, n_close: int = 5) -> str:
    """One paragraph for globs that match nothing: per glob the closest module names of its
    type (``difflib``, at most ``n_close``), and the counts of supported / all modules.

    Examples:
        >>> import torch.nn as nn
        >>> from modeopt_masks.rules import no_match_message
        >>> net = nn.ModuleDict({"query": nn.Linear(2, 2), "key": nn.Linear(2, 2)})
        >>> print(no_match_message([("nn.Linear", "*querry")],
        ...                        [("query", "nn.Linear"), ("key", "nn.Linear")], net, n_close=1))
        rule(s) [('nn.Linear', '*querry')] match no module of their type (2 supported modules of 3). 'nn.Linear' -> '*querry': closest nn.Linear modules: 'query'
    """
    total = sum(1 for _ in model.named_modules())
    parts = [f"rule(s) {unmatched} match no module of their type ({len(seen)} supported "
             f"module{'s' if len(seen) != 1 else ''} of {total})."]
    for key, pattern in unmatched:
        names = [n for n, k in seen if k == key]
        if not names:
            parts.append(f"{key!r}: the model has no {key} module; types found: "
                         f"{sorted({k for _, k in seen}) or 'none'}")
            continue
        close = difflib.get_close_matches(pattern.replace("*", ""), names, n=n_close, cutoff=0.0)
        parts.append(f"{key!r} -> {pattern!r}: closest {key} modules: "
                     + ", ".join(repr(n) for n in close))
    return " ".join(parts)
