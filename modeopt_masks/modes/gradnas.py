"""The ``gradnas`` mode: searchable attention heads and MLP / conv channels.

``convert`` finds every searchable dimension the config switches on (HF
attention and MLP blocks through the family plugin table, plain
``Linear -> act -> Linear`` and ``Conv -> BN -> act -> Conv`` pairs inside
``nn.Sequential`` or, in custom modules without HF blocks, through
``torch.fx`` tracing; see :mod:`modeopt_masks.structured.plain` for the
limits) and puts a unit mask of ones on the input of each
dimension's consumer. :func:`modeopt_masks.prune` scores and searches;
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
(:mod:`modeopt_masks.hf_export`). With the global option ``uniform=True`` the
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
from ..structured.structure import Structure, apply_slices, mark_sliced, plan_slices

HF_KEYS: tuple[str, ...] = ("hf.attention", "hf.mlp")


class GradNASRule(Rule):
    """Choices of one searchable dimension: ``ratios`` x ``divisor``.

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
        out.add(n_units)
        return sorted(out)


class GradNASConfig(ModeConfig):
    """Which heads / channels ``gradnas`` searches; output heads are off by default.

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
    layer_keys: ClassVar[tuple[str, ...]] = HF_KEYS + PLAIN_KEYS
    #: the search keeps the same number of units in every layer of a kind (same type key and
    #: choices), so the exported model has one shape per kind that a stock config can describe
    uniform: bool = False


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
    return Discovery(keys, plain, reason)


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
        else:
            structure = found.plain[name]
        choices = rule.choices(structure.n_units, structure.groups)
        if config.uniform and key == "hf.attention":  # only head counts the config accepts
            choices = [c for c in choices if expressible_heads(model, c * structure.heads_per_unit)]
        out.append((structure, choices))
    return out


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
        try:
            for structure, choices in plan:
                module = modules[structure.mask_module]
                swap_class(module, UnitMasked)
                done.append(module)
                module._mm_init(structure, choices)  # type: ignore[attr-defined]
        except BaseException:  # a failure midway (even Ctrl-C) leaves no converted layer behind
            for module in reversed(done):
                if hasattr(module, "_mm_struct"):
                    module._mm_teardown()  # type: ignore[operator]
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
        plan = plan_slices(model, [(hps[n].structure, kept) for n, kept in pruned.items()])
        apply_slices(model, plan)
        for hp in hps.values():
            _remove(hp)
        mark_sliced(model, pruned)
        unexpressed: list[str] = []
        if pruned:
            try:  # a truthful config.json where the config can say it
                unexpressed = update_config(model)
            except ValueError as e:  # a block that no longer reads as its family
                unexpressed = [f"config not updated: {e}"]
            attach_remote_save(model)  # per-layer shapes: save_pretrained writes remote code
        record_export(model, {**card, "unexpressed": unexpressed,
                              "params_after": sum(p.numel() for p in model.parameters())})
        return model


def _remove(hp: StructuredHParam) -> None:
    module: Any = hp.module
    module._mm_teardown()
    unswap_class(module)


register_mode(GradNASDescriptor())
