"""What a searchable dimension is made of: where its mask sits and which tensors it slices.

A [`Structure`][modeopt_masks.structured.structure.Structure] describes one prunable dimension of a model (an attention
block's heads, an MLP block's hidden channels, a plain layer's output channels)
in names and integers only, so it survives ``deepcopy``/pickle and can be
re-derived on a fresh model. Family plugins ([`modeopt_masks.structured.families`][modeopt_masks.structured.families]) and the plain
structure finder ([`modeopt_masks.structured.plain`][modeopt_masks.structured.plain]) build them; [`slice_structure`][modeopt_masks.structured.structure.slice_structure] applies an
export.

Examples:
    >>> import torch.nn as nn

from ..layer_kinds import kind_of
    >>> from modeopt_masks.structured.structure import Slice, Structure, slice_structure
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> s = Structure(name="0", key="nn.Linear", kind="channels", family="plain", n_units=4,
    ...               unit_size=1, mask_module="2", mask_dim=-1,
    ...               slices=[Slice("0", "weight", 0, 1), Slice("0", "bias", 0, 1),
    ...                       Slice("2", "weight", 1, 1)])
    >>> s.params_per_unit(net)
    6
    >>> slice_structure(net, s, [0, 2]); net[0].out_features, net[2].in_features
    (2, 2)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..layer_kinds import kind_of


@dataclass(frozen=True)
class Slice:
    """A tensor that loses entries when units are removed.

    ``module.param`` is sliced along ``dim``. Unit ``u`` owns the ``unit_len``
    entries starting at ``s * stride + u * unit_len`` for each of ``sections``
    sections (``sections=3, stride=E`` is a fused ``[q | k | v]`` layout).
    """

    module: str
    param: str
    dim: int
    unit_len: int
    sections: int = 1
    stride: int = 0
    #: ``(offset, entries per unit)`` per section when sections differ in size (Phi-3's
    #: ``qkv_proj``: query heads, then key heads, then value heads); overrides the three above
    parts: tuple[tuple[int, int], ...] = ()

    def layout(self) -> tuple[tuple[int, int], ...]:
        """``(offset, entries per unit)`` of every section."""
        return self.parts or tuple((s * self.stride, self.unit_len) for s in range(self.sections))

    def per_unit(self) -> int:
        """Entries along ``dim`` that one unit owns."""
        return sum(length for _, length in self.layout())

    def indices(self, kept: list[int]) -> list[int]:
        """Entries along ``dim`` that stay when the units ``kept`` (sorted) stay."""
        return [
            offset + u * length + j
            for offset, length in self.layout()
            for u in kept
            for j in range(length)
        ]


@dataclass(frozen=True)
class AttrUpdate:
    """After export set ``module.attr = kept_units * per_unit // divisor`` (if the attribute exists).

    ``divisor`` > 1 serves counts per group, e.g. ``num_key_value_groups`` (query heads per KV
    head) when query heads are pruned evenly within grouped-query attention groups.
    """

    module: str
    attr: str
    per_unit: int
    divisor: int = 1


@dataclass
class Structure:
    """One searchable dimension: its units, mask site, slices and head-count attributes."""

    name: str
    key: str
    kind: str  # "heads", "channels", "hidden" (residual-stream channels) or "blocks" (depth)
    family: str
    n_units: int
    unit_size: int  # input entries of the mask module per unit
    mask_module: str
    mask_dim: int  # -1: last dim (Linear / Conv1D input); 1: channel dim (conv input)
    slices: list[Slice] = field(default_factory=list)
    attrs: list[AttrUpdate] = field(default_factory=list)
    #: modules whose FLOPs scale with the number of kept units (for FLOPs constraints)
    flop_scope: list[str] = field(default_factory=list)
    heads_per_unit: int = 1
    #: the units form ``groups`` contiguous equal groups that must all keep the same number of
    #: units (query heads pruned evenly within grouped-query attention KV groups); 1: free
    groups: int = 1
    #: ``(module, role)`` of every module that reads the shared mask (hidden / depth axes):
    #: ``"write"`` (output masked), ``"norm"`` (statistics over the kept channels), ``"block"``
    #: (output masked / gated); see `.stream`
    sites: list[tuple[str, str]] = field(default_factory=list)
    #: depth axis: the block names, unit ``i`` is ``blocks[i]`` (export drops the others)
    blocks: list[str] = field(default_factory=list)
    #: how units are scored: ``"gradient"`` (the mask's gradient), ``"activation"`` (hidden:
    #: mean |normalised hidden state|) or ``"influence"`` (depth: 1 - cos(block input, output))
    score: str = "gradient"

    def group_of(self, unit: int) -> int:
        """The group of ``unit`` (always 0 when ``groups == 1``)."""
        return unit // (self.n_units // self.groups)

    def params_per_unit(self, model: nn.Module) -> int:
        """Parameters (and BN statistics excluded) removed with each unit."""
        modules = dict(model.named_modules())
        total = 0
        for sl in self.slices:
            tensor = getattr(modules[sl.module], sl.param)
            if not isinstance(tensor, nn.Parameter):
                continue
            total += tensor.numel() // tensor.shape[sl.dim] * sl.per_unit()
        return total


def _sync_dims(module: nn.Module) -> None:
    """Make a module's size attributes agree with its (sliced) weight."""
    kind = kind_of(module)
    if kind is not None:
        kind.sync_sizes(module)
    elif isinstance(module, nn.modules.batchnorm._NormBase) and module.weight is not None:
        module.num_features = module.weight.shape[0]
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        module.normalized_shape = (module.weight.shape[0],)
    elif isinstance(module, nn.Embedding):
        module.embedding_dim = module.weight.shape[1]


@dataclass
class SlicePlan:
    """Every tensor an export changes, computed before anything in the model changes.

    ``tensors``: ``{(module name, param): new tensor}`` (several structures slicing one tensor,
    e.g. the middle layer of ``Linear -> Linear -> Linear``, compose); ``attrs``: the size
    attributes to set afterwards.
    """

    tensors: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    attrs: list[tuple[str, str, int]] = field(default_factory=list)
    #: ``{(module, param): (module, param)}``: a tensor shared with another (tied embeddings),
    #: sliced once; export puts the same new parameter in both places, so they stay tied
    aliases: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)


@torch.no_grad()
def plan_slices(model: nn.Module, selection: list[tuple[Structure, list[int]]]) -> SlicePlan:
    """The [`SlicePlan`][modeopt_masks.structured.structure.SlicePlan] keeping, for each structure, its units ``kept`` (sorted).

    Computes new tensors only; ``model`` is not changed (a failure here leaves it as it was).
    """
    modules = dict(model.named_modules())
    plan = SlicePlan()
    for structure, kept in selection:
        owners: dict[int, tuple[str, str]] = {}  # the first slice of each tensor (tied ones)
        for sl in structure.slices:
            key = (sl.module, sl.param)
            original = getattr(modules[sl.module], sl.param, None)
            if original is None:
                continue
            owner = owners.setdefault(id(original), key)
            if owner != key:
                plan.aliases[key] = owner
                continue
            tensor = plan.tensors.get(key, original)
            index = torch.tensor(sl.indices(kept), dtype=torch.long, device=tensor.device)
            plan.tensors[key] = tensor.index_select(sl.dim, index).contiguous()
        plan.attrs += [(u.module, u.attr, len(kept) * u.per_unit // u.divisor)
                       for u in structure.attrs]
    return plan


def apply_slices(model: nn.Module, plan: SlicePlan) -> None:
    """Put the planned tensors in place (parameters stay parameters) and update the sizes."""
    modules = dict(model.named_modules())
    placed: dict[tuple[str, str], torch.Tensor] = {}
    for (name, param), new in plan.tensors.items():
        module = modules[name]
        old = getattr(module, param)
        if isinstance(old, nn.Parameter):
            new = nn.Parameter(new, requires_grad=old.requires_grad)
        setattr(module, param, new)
        placed[(name, param)] = new
    for (name, param), owner in plan.aliases.items():
        setattr(modules[name], param, placed[owner])
    for name in dict.fromkeys([*(n for n, _ in plan.tensors), *(n for n, _ in plan.aliases)]):
        _sync_dims(modules[name])
    for name, attr, value in plan.attrs:
        _set_attr(modules[name], attr, value)


def slice_structure(model: nn.Module, structure: Structure, kept: list[int]) -> None:
    """Physically keep only the units ``kept`` (sorted) of ``structure`` in ``model``."""
    apply_slices(model, plan_slices(model, [(structure, kept)]))


#: root-module attribute where gradnas export records which units it kept (for save/restore)
SLICED_ATTR = "_mm_sliced"


def mark_sliced(model: nn.Module, kept: dict[str, list[int]]) -> None:
    """Record on ``model`` that export sliced these hparams (``{}``: nothing was sliced)."""
    if kept:
        previous = dict(getattr(model, SLICED_ATTR, {}))
        model.__dict__[SLICED_ATTR] = {**previous, **kept}


def sliced_by_export(model: nn.Module) -> dict[str, list[int]]:
    """``{hparam: kept units}`` of every gradnas export applied to ``model`` (``{}``: none)."""
    return dict(model.__dict__.get(SLICED_ATTR, {}))


def _set_attr(module: nn.Module, attr: str, value: int) -> None:
    """``module.attr = value`` if it exists; ``config.name``: on the module's own config copy
    (a transformers config is shared by every layer, the pruned counts are per layer)."""
    if attr.startswith("config."):
        config = getattr(module, "config", None)
        name = attr.split(".", 1)[1]
        if config is not None and hasattr(config, name):
            config = copy.copy(config)
            setattr(config, name, value)
            module.config = config
        return
    if hasattr(module, attr):
        setattr(module, attr, value)
