"""The ``gradnas`` mode: searchable attention heads and MLP / conv channels.

``convert`` finds every searchable dimension the config switches on (HF
attention and MLP blocks through the family plugin table, plain
``Linear -> act -> Linear`` and ``Conv -> BN -> act -> Conv`` pairs inside
``nn.Sequential`` or, in custom modules without HF blocks, through
``torch.fx`` tracing; see [`modeopt_masks.structured.plain`][modeopt_masks.structured.plain] for the
limits) and puts a unit mask of ones on the input of each
dimension's consumer. [`modeopt_masks.prune`][modeopt_masks.pruning.prune] scores and searches;
``mm.export`` slices the weights so the model is physically smaller.

Type keys: ``"hf.attention"`` (heads), ``"hf.mlp"`` (hidden channels),
``"nn.Linear"``, ``"nn.Conv1d"``, ``"nn.Conv2d"`` (output channels of a
producer layer, keyed by the producer's name). Rule fields: ``ratios``
(fractions of the units that may be kept; ``None``: every multiple of
``divisor``), ``divisor``, and ``gqa`` for grouped-query attention
(Llama/Mistral/Qwen2/Qwen3 with fewer KV heads than query heads):
``"groups"`` (default; the unit is a whole KV group) or ``"even"`` (the unit is
a query head; K/V are kept and every KV group keeps the same number of query
heads; ``ratios``/``divisor`` then apply to the heads of one group).

Saving an exported Hugging Face model: the export slices weights, updates
each block's own head-count attributes and writes the new shapes into
``model.config`` wherever the family's config can express them
([`modeopt_masks.hf_export`][modeopt_masks.hf_export]). With the global option ``uniform=True`` the
search keeps the same number of units in every layer of a kind (and, for
attention, only head counts the config accepts), so ``save_pretrained`` output
reloads with stock ``AutoModel*.from_pretrained``, without this library. Per-layer
shapes, or head counts a config cannot hold (BERT, GPT-2, GPT-NeoX derive the head
size from ``hidden_size``), are left in the config as they were, so such a folder
fails to load with a size-mismatch error (never pass ``ignore_mismatched_sizes``);
rebuild those with ``mm.save`` before export and ``mm.export(mm.restore(...))``.
See ``docs/deploy.md``.

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> from modeopt_masks.structured import gradnas_hparams
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> net = mm.convert(net, ("gradnas", {"nn.Linear": {"ratios": [0.25, 0.5, 1.0]}}))
    >>> hp = gradnas_hparams(net)["0"]; hp.choices
    [4, 8, 16]
    >>> hp.keep([0, 1, 2, 3]); x = torch.randn(3, 4); y = net(x)
    >>> net = mm.export(net)
    >>> net[0].weight.shape, torch.allclose(net(x), y, atol=1e-6)
    (torch.Size([4, 4]), True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import Field, field_validator

from ..dynamic import is_dynamic, swap_class, unswap_class
from ..hf_export import expressible_heads, update_config
from ..hf_remote import attach as attach_remote_save
from ..model_card import record_export
from ..registry import Metadata, ModeDescriptor, register_mode
from ..rules import ModeConfig, Rule, match_modules
from ..structured.families import (
    FAMILIES,
    attention_layout,
    attention_structure,
    is_hf_module,
    looks_like_attention,
    looks_like_mlp,
    mlp_layout,
    mlp_structure,
)
from ..structured.hparam import StructuredHParam, UnitMasked, gradnas_hparams
from ..structured.plain import PLAIN_KEYS, plain_structures_report
from ..structured.stream import (
    Stream,
    StreamMasked,
    depth_structure,
    drop_blocks,
    find_stream,
    hidden_structure,
    install_stream_sites,
    no_stream_message,
    release_stream_sites,
    update_stream_config,
)
from ..structured.structure import Structure, apply_slices, mark_sliced, plan_slices

HF_KEYS: tuple[str, ...] = ("hf.attention", "hf.mlp")
#: the residual-stream axes (off unless a rule or ``axes`` switches them on)
STREAM_KEYS: tuple[str, ...] = ("hf.hidden", "hf.depth")
#: the names ``axes`` accepts and the type keys each switches on
AXES: dict[str, tuple[str, ...]] = {"heads": ("hf.attention",), "mlp": ("hf.mlp",),
                                    "hidden": ("hf.hidden",), "depth": ("hf.depth",),
                                    "channels": PLAIN_KEYS}
#: which rule ``score`` each type key accepts
SCORES: dict[str, tuple[str, ...]] = {"hf.hidden": ("gradient", "activation"),
                                      "hf.depth": ("gradient", "influence")}


class GradNASRule(Rule):
    """Choices of one searchable dimension: ``ratios`` x ``divisor``.

    Attributes:
        ratios: Allowed fractions of the units, in ``(0, 1]`` (``None``: every multiple of
            ``divisor``).
        divisor: Unit counts are multiples of this.
        gqa: Grouped-query attention: prune whole KV ``"groups"`` or query heads ``"even"``ly.
        min_ratio: Keep at least this fraction of the units.
        score: ``"gradient"``, ``"activation"`` (``hf.hidden`` only) or ``"influence"``
            (``hf.depth`` only).

    Examples:
        >>> from modeopt_masks.modes.gradnas import GradNASRule
        >>> GradNASRule(ratios=[0.5, 1.0], divisor=4).choices(12)
        [8, 12]
        >>> GradNASRule(divisor=4).choices(12)
        [4, 8, 12]
        >>> GradNASRule(ratios=[0.5, 1.0], gqa="even").choices(8, groups=2)  # 4 heads per group
        [4, 8]
    """

    ratios: tuple[float, ...] | None = None
    divisor: int = Field(default=1, ge=1)
    #: grouped-query attention: prune whole KV ``"groups"`` or query heads ``"even"``ly per group
    gqa: Literal["groups", "even"] = "groups"
    #: keep at least this fraction of the units (e.g. ``{"hf.depth": {"min_ratio": 0.75}}``)
    min_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    #: how units are scored: ``"gradient"``; ``"activation"`` (hf.hidden only: Minitron's mean
    #: |normalised hidden state|); ``"influence"`` (hf.depth only: 1 - cos(block in, out))
    score: Literal["gradient", "activation", "influence"] = "gradient"

    @field_validator("ratios")
    @classmethod
    def _check_ratios(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is not None:
            if not v or any(not 0.0 < r <= 1.0 for r in v):
                raise ValueError(f"ratios must be a non-empty list of fractions in (0, 1], got {v}")
        return v

    def choices(self, n_units: int, groups: int = 1) -> list[int]:
        """Allowed numbers of kept units for a dimension of ``n_units`` (always has ``n_units``).

        With ``groups`` > 1 (equal groups that keep the same count) the rule applies to the
        units of one group and the counts are multiplied by ``groups``.
        """
        if groups > 1:
            return [c * groups for c in self.choices(n_units // groups)]
        d = self.divisor
        if self.ratios is None:
            out = set(range(d, n_units + 1, d))
        else:
            out = {min(n_units, max(d, round(r * n_units / d) * d)) for r in self.ratios}
        out = {c for c in out if c >= self.min_ratio * n_units - 1e-9}
        out.add(n_units)
        return sorted(out)


class GradNASConfig(ModeConfig):
    """Which heads / channels ``gradnas`` searches; output heads are off by default.

    Attributes:
        rules: ``{type key: {glob: GradNASRule fields or None}}``; ``None`` switches a match off.
        user_keys: The type keys the user gave (set by validation; not passed by hand).
        uniform: Keep the same number of units in every layer of a kind, so the exported
            model has one shape per kind.
        axes: The axes searched: any of ``"heads"``, ``"mlp"``, ``"hidden"``, ``"depth"``,
            ``"channels"`` (``None``: heads, MLP and plain channels as the rules give).

    Examples:
        >>> import modeopt_masks as mm
        >>> cfg = mm.get_mode("gradnas").config_class.model_validate(
        ...     {"hf.attention": {"*": {"divisor": 2}, "*layer.0.*": None}})
        >>> cfg.rule_for("hf.attention", "encoder.layer.0.attention") is None
        True
        >>> cfg.rule_for("hf.mlp", "encoder.layer.0.intermediate").divisor
        1
    """

    rule_class: ClassVar[type[Rule]] = GradNASRule
    layer_keys: ClassVar[tuple[str, ...]] = HF_KEYS + STREAM_KEYS + PLAIN_KEYS
    #: the search keeps the same number of units in every layer of a kind (same type key and
    #: choices), so the exported model has one shape per kind that a stock config can describe
    uniform: bool = False
    #: the axes searched (``None``: heads, MLP channels and plain channels, the rules as given):
    #: any of ``"heads"``, ``"mlp"``, ``"hidden"``, ``"depth"``, ``"channels"``; an axis listed
    #: uses its rules (default rule if none given), an axis left out is off
    axes: tuple[str, ...] | None = None

    @field_validator("axes")
    @classmethod
    def _check_axes(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None:
            unknown = [a for a in v if a not in AXES]
            if unknown or not v:
                raise ValueError(f"unknown axes {unknown or v!r}; valid axes: {list(AXES)}")
        return v

    @classmethod
    def default_rules(cls) -> dict[str, Any]:
        """Heads, MLP and plain channels on (output heads off); hidden size and depth off."""
        rules = super().default_rules()
        rules.update(dict.fromkeys(STREAM_KEYS))
        return rules

    def rule_for(self, key: str, name: str) -> Rule | None:  # noqa: D102
        if self.axes is not None:
            if not any(key in AXES[a] for a in self.axes):
                return None
            if key in STREAM_KEYS and key not in self.user_keys:
                return GradNASRule()
        return super().rule_for(key, name)


@dataclass
class Discovery:
    """What gradnas can search in a model, found once: type keys, plain pairs, tracing result.

    ``keys``: ``{module name: type key}`` for HF blocks and plain producers; ``plain``: the
    plain structures by producer name; ``trace_failure``: why ``torch.fx`` tracing failed
    (``None``: it did not fail, or was not tried because the model has HF blocks).
    """

    keys: dict[str, str]
    plain: dict[str, Structure]
    trace_failure: str | None
    #: the residual stream (hidden-size and depth axes), if the model's family has one
    stream: Stream | None = None


def discover(model: nn.Module) -> Discovery:
    """HF attention / MLP blocks (family records) and plain producer/consumer pairs.

    Examples:
        >>> import torch.nn as nn
        >>> from modeopt_masks.modes.gradnas import discover
        >>> discover(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))).keys
        {'0': 'nn.Linear'}
    """
    keys: dict[str, str] = {}
    blocks: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(b + ".") for b in blocks):
            continue
        if attention_layout(module) is not None or looks_like_attention(module):
            keys[name] = "hf.attention"
            blocks.append(name)
        elif mlp_layout(module) is not None or looks_like_mlp(module):
            keys[name] = "hf.mlp"
            blocks.append(name)
    # torch.fx tracing only for models without HF blocks (those do not trace symbolically)
    trace = not blocks and not is_hf_module(model)
    plain, reason = plain_structures_report(model, skip=tuple(blocks), trace=trace)
    keys.update({name: s.key for name, s in plain.items()})
    stream = find_stream(model) if blocks else None
    if stream is not None:
        keys[stream.backbone + stream.layout.embeddings[0]] = "hf.hidden"
        keys[stream.blocks_name] = "hf.depth"
    return Discovery(keys, plain, reason, stream)


def find_structures(model: nn.Module, config: GradNASConfig, found: Discovery | None = None
                    ) -> list[tuple[Structure, list[int]]]:
    """Plan gradnas: ``(structure, choices)`` for every dimension ``config`` switches on."""
    found = found or discover(model)
    plan = match_modules(model, config, lambda name, _m: found.keys.get(name))
    out = []
    for name, module, key, rule in plan:
        assert isinstance(rule, GradNASRule)
        if key == "hf.attention":
            structure = attention_structure(model, name, module, gqa=rule.gqa)
        elif key == "hf.mlp":
            structure = mlp_structure(model, name, module)
        elif key in STREAM_KEYS:
            if rule.score not in SCORES[key]:
                raise ValueError(f"{key} {name}: score {rule.score!r} is not one of "
                                 f"{list(SCORES[key])}")
            structure = (hidden_structure if key == "hf.hidden" else depth_structure)(
                model, found.stream)
            structure.score = rule.score
        else:
            if rule.score != "gradient":
                raise ValueError(f"{key} {name}: score {rule.score!r} applies to hf.hidden / "
                                 "hf.depth only")
            structure = found.plain[name]
        choices = rule.choices(structure.n_units, structure.groups)
        if config.uniform and key == "hf.attention":  # only head counts the config accepts
            choices = [c for c in choices if expressible_heads(model, c * structure.heads_per_unit)]
        out.append((structure, choices))
    for axis, key in (("hidden", "hf.hidden"), ("depth", "hf.depth")):
        asked = config.axes is not None and axis in config.axes or (
            config.axes is None and key in config.user_keys and bool(config.rules.get(key)))
        if asked and found.stream is None:
            raise ValueError(f"gradnas: {no_stream_message(model, axis)}")
    _expressible_with_hidden(model, out, config.uniform)
    return out


def _expressible_with_hidden(model: nn.Module, plan: list[tuple[Structure, list[int]]],
                             uniform: bool) -> None:
    """The hidden axis under configs that check ``hidden_size % heads`` (Llama): hidden sizes
    are multiples of the original head count (the config holds one hidden size, always), and
    with ``uniform`` head counts divide it, so every pair the search can pick is valid."""
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    if not any(s.key == "hf.hidden" for s, _ in plan) or not isinstance(heads, int) or not (
            hasattr(config, "validate")):
        return
    for i, (structure, choices) in enumerate(plan):
        if structure.key == "hf.hidden":
            kept = [c for c in choices if c % heads == 0]
        elif structure.key == "hf.attention" and uniform:
            kept = [c for c in choices if heads % (c * structure.heads_per_unit) == 0]
        else:
            continue
        if not kept:
            raise ValueError(f"gradnas uniform=True: no {structure.key} choice of {structure.name} "
                             f"({choices}) fits a config with {heads} heads")
        plan[i] = (structure, kept)


def _converted_slices(model: nn.Module, structures: list[Structure]) -> list[tuple[str, str]]:
    """``(module, structure)`` for every module a structure slices that another mode converted
    (gradnas's own unit-masked modules are fine)."""
    modules = dict(model.named_modules())
    return [
        (touched, structure.name)
        for structure in structures
        for touched in dict.fromkeys(sl.module for sl in structure.slices)
        if touched in modules and is_dynamic(modules[touched])
        and not is_dynamic(modules[touched], UnitMasked)
        and not is_dynamic(modules[touched], StreamMasked)
    ]


class GradNASDescriptor(ModeDescriptor):
    """Descriptor of ``gradnas``: convert installs unit masks, export slices weights."""

    name = "gradnas"
    config_class = GradNASConfig
    next_modes = ()
    search_algorithm = "gradient_binary"

    def convert(self, model: nn.Module, config: ModeConfig) -> tuple[nn.Module, Metadata]:
        assert isinstance(config, GradNASConfig)
        found = discover(model)
        plan = find_structures(model, config, found)
        if not plan:
            reason = found.trace_failure
            why = f" ({reason}; only nn.Sequential pairs were searched)" if reason else ""
            raise ValueError(
                "gradnas: the config selects no searchable dimension. It searches HF attention "
                "and MLP blocks of known families, and plain Linear->act->Linear / "
                "Conv->BN->act->Conv pairs inside nn.Sequential or, in custom modules, found by "
                f"torch.fx tracing{why}; the model's modules: "
                f"{[(n, type(m).__name__) for n, m in model.named_modules()][:50]}"
            )
        modules = dict(model.named_modules())
        sites: dict[str, str] = {}
        for structure, _ in plan:
            # a layer another mode converted (e.g. mm.convert(model.fc1, ...)) would be sliced
            # under its masks on export: refuse, as the mask modes do
            for touched in dict.fromkeys(sl.module for sl in structure.slices):
                if touched != structure.mask_module and is_dynamic(modules[touched]):
                    raise ValueError(
                        f"gradnas: {touched!r} (sliced by {structure.name}) is already "
                        "converted; export or unconvert first"
                    )
            if structure.n_units == 0:
                raise ValueError(f"gradnas: {structure.name} has no units to search (width 0)")
            site = structure.mask_module
            if site in sites or is_dynamic(modules[site]):
                other = sites.get(site, "another mode")
                raise ValueError(
                    f"gradnas: {structure.name} and {other} both need a mask on {site!r}; "
                    "switch one off, or export / unconvert the model first"
                )
            sites[site] = structure.name
        done: list[nn.Module] = []
        holders: list[nn.Module] = []
        try:
            for structure, choices in plan:
                module = modules[structure.mask_module]
                if structure.key in STREAM_KEYS:
                    done += install_stream_sites(modules, structure, choices)
                    holders.append(module)
                    continue
                swap_class(module, UnitMasked)
                done.append(module)
                module._mm_init(structure, choices)  # type: ignore[attr-defined]
        except BaseException:  # a failure midway (even Ctrl-C) leaves no converted layer behind
            for holder in holders:
                if "_mm_struct" in holder.__dict__:
                    release_stream_sites(holder)
            for module in reversed(done):
                if "_mm_struct" in module.__dict__:
                    module._mm_teardown()  # type: ignore[operator]
                module.__dict__.pop("_mm_roles", None)
                unswap_class(module)
            raise
        return model, {"hparams": [s.name for s, _ in plan], "selection": {}, "scores": {}}

    def update_metadata(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> None:
        hps = gradnas_hparams(model)
        metadata["hparams"] = list(hps)
        metadata["selection"] = {
            n: hp.kept for n, hp in hps.items() if hp.active != hp.n_units
        }
        metadata["scores"] = {
            n: [float(v) for v in hp.importance] for n, hp in hps.items()
            if hp.importance is not None
        }

    def restore(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> nn.Module:
        model, fresh = self.convert(model, config)
        if fresh["hparams"] != list(metadata.get("hparams", [])):
            self.revert(model, config, fresh)
            raise ValueError(
                f"gradnas: the model does not fit the saved state: saved hparams "
                f"{metadata.get('hparams')}, this model gives {fresh['hparams']}"
            )
        hps = gradnas_hparams(model)
        try:
            saved = {k: metadata.get(k, {}) for k in ("scores", "selection")}
            for key, value in saved.items():
                if not isinstance(value, dict):
                    raise ValueError(f"saved {key!r} must be a dict of hparam names, got {value!r:.80}")
                unknown = sorted(set(value) - set(hps))
                if unknown:
                    raise ValueError(f"saved {key!r} names hparams {unknown} this model does not "
                                     f"have; it has {list(hps)}")
            for name, values in saved["scores"].items():
                scores = torch.tensor(values, dtype=torch.float64)
                if scores.shape != (hps[name].n_units,) or not bool(torch.isfinite(scores).all()):
                    raise ValueError(f"{name}: saved scores must be {hps[name].n_units} finite "
                                     f"numbers, got {values!r:.100}")
                hps[name].importance = scores
            for name, kept in saved["selection"].items():
                hps[name].keep(kept)
                if hps[name].kept != list(kept):
                    raise ValueError(f"{name}: the saved selection {kept!r:.100} is not an "
                                     "ascending list of distinct unit indices")
        except Exception:
            self.revert(model, config, fresh)
            raise
        return model

    def revert(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> nn.Module:
        for hp in gradnas_hparams(model).values():
            _remove(hp)
        return model

    def export(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> nn.Module:
        """Slice the kept units into plain modules and write the exported shapes into
        ``model.config`` where it can express them (see the module docstring)."""
        hps = gradnas_hparams(model)
        bad = _converted_slices(model, [hp.structure for hp in hps.values()])
        if bad:
            module, structure = bad[0]
            raise ValueError(
                f"gradnas export: {module!r} (sliced by {structure}) was converted by another "
                "mode after gradnas; its masks have the unpruned shape. Export or unconvert it "
                "first (mm.export(submodule)), then export the gradnas model"
            )
        # plan every new tensor first; only then change the model (no half-sliced model)
        pruned = {n: hp.kept for n, hp in hps.items() if hp.active != hp.n_units}
        card = {"params_before": sum(p.numel() for p in model.parameters()),
                "kept": {n: (hp.active, hp.n_units) for n, hp in hps.items()},
                "search": metadata.get("search")}
        depth = [hps[n] for n in pruned if hps[n].structure.kind == "blocks"]
        hidden = [hps[n] for n in pruned if hps[n].structure.kind == "hidden"]
        stream = [(hp.structure.family, hp.structure.kind, hp.kept, hp.n_units)
                  for hp in hidden + depth]
        plan = plan_slices(model, [(hps[n].structure, kept) for n, kept in pruned.items()
                                   if hps[n].structure.kind != "blocks"])
        apply_slices(model, plan)
        for hp in depth:  # after slicing: the slices name the blocks by their old indices
            drop_blocks(model, hp.structure, hp.kept)
        for hp in hps.values():
            _remove(hp)
        mark_sliced(model, pruned)
        unexpressed: list[str] = []
        if pruned:
            try:  # a truthful config.json where the config can say it
                unexpressed = update_config(model)
            except ValueError as e:  # a block that no longer reads as its family
                unexpressed = [f"config not updated: {e}"]
            if stream:
                unexpressed += _stream_config(model, stream)
            attach_remote_save(model)  # per-layer shapes: save_pretrained writes remote code
        record_export(model, {**card, "unexpressed": unexpressed,
                              "params_after": sum(p.numel() for p in model.parameters())})
        return model


def _stream_config(model: nn.Module, stream: list[tuple[str, str, list[int], int]]) -> list[str]:
    """Write the exported hidden size / depth (``(family, kind, kept, n_units)`` of each
    pruned stream axis) into ``model.config``; return what it cannot say."""
    config = getattr(model, "config", None)
    if config is None:
        return []
    family = stream[0][0]
    hidden = next((len(kept) for _, kind, kept, _ in stream if kind == "hidden"), None)
    depth = next(((kept, n) for _, kind, kept, n in stream if kind == "blocks"), None)
    fields = dict(FAMILIES[family].config_fields)
    before = {a: getattr(config, a, None) for a in ("hidden_size", "num_hidden_layers",
                                                    "layer_types")}
    update_stream_config(model, hidden, depth[0] if depth else None, depth[1] if depth else 0)
    out = []
    validate = getattr(config, "validate", None)
    try:
        if callable(validate):
            validate()
    except Exception as e:  # noqa: BLE001 - the config refuses the new sizes: keep the old ones
        for attr, value in before.items():
            if value is not None:
                setattr(config, attr, value)
        return [f"hidden size / depth: {type(config).__name__} refuses them ({e})"]
    if hidden is not None and "head_dim" not in fields:
        out.append(f"hidden={hidden}: the {family} config derives the head "
                   "size from hidden_size / heads, so a stock reload builds other attention "
                   "widths (the exported model itself is right)")
    return out


def _remove(hp: StructuredHParam) -> None:
    module: Any = hp.module
    if is_dynamic(module, StreamMasked):
        release_stream_sites(module)
        return
    module._mm_teardown()
    unswap_class(module)


register_mode(GradNASDescriptor())
