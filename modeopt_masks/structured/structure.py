"""What a searchable dimension is made of: where its mask sits and which tensors it slices.

A :class:`Structure` describes one prunable dimension of a model (an attention
block's heads, an MLP block's hidden channels, a plain layer's output channels)
in names and integers only, so it survives ``deepcopy``/pickle and can be
re-derived on a fresh model. Family plugins (:mod:`.families`) and the plain
structure finder (:mod:`.plain`) build them; :func:`slice_structure` applies an
export.

Examples:
    >>> import torch.nn as nn
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

from dataclasses import dataclass, field

import torch
import torch.nn as nn


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

    def indices(self, kept: list[int]) -> list[int]:
        """Entries along ``dim`` that stay when the units ``kept`` (sorted) stay."""
        return [
            s * self.stride + u * self.unit_len + j
            for s in range(self.sections)
            for u in kept
            for j in range(self.unit_len)
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
    kind: str  # "heads" or "channels"
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
            total += tensor.numel() // tensor.shape[sl.dim] * sl.unit_len * sl.sections
        return total


def weight_of(module: nn.Module) -> torch.Tensor:
    """``module.weight`` (typed as a tensor)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return weight


def _sync_dims(module: nn.Module) -> None:
    """Make a module's size attributes agree with its (sliced) weight."""
    weight = getattr(module, "weight", None)
    if weight is None:
        return
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, nn.modules.conv._ConvNd):
        module.out_channels = weight.shape[0]
        module.in_channels = weight.shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = weight.shape[0]
    elif hasattr(module, "nf"):  # transformers' Conv1D, weight [in, out] (``nx`` since 4.41)
        module.nf = weight.shape[1]
        if hasattr(module, "nx"):
            module.nx = weight.shape[0]


@torch.no_grad()
def slice_structure(model: nn.Module, structure: Structure, kept: list[int]) -> None:
    """Physically keep only the units ``kept`` (sorted) of ``structure`` in ``model``."""
    modules = dict(model.named_modules())
    touched: dict[str, nn.Module] = {}
    for sl in structure.slices:
        module = modules[sl.module]
        tensor = getattr(module, sl.param, None)
        if tensor is None:
            continue
        index = torch.tensor(sl.indices(kept), dtype=torch.long, device=tensor.device)
        new = tensor.index_select(sl.dim, index).contiguous()
        if isinstance(tensor, nn.Parameter):
            setattr(module, sl.param, nn.Parameter(new, requires_grad=tensor.requires_grad))
        else:
            setattr(module, sl.param, new)
        touched[sl.module] = module
    for module in touched.values():
        _sync_dims(module)
    for upd in structure.attrs:
        module = modules[upd.module]
        if hasattr(module, upd.attr):
            setattr(module, upd.attr, len(kept) * upd.per_unit // upd.divisor)
