"""Searchable structured hparams and the unit mask that realises them.

The mask of a [`Structure`][modeopt_masks.structured.structure.Structure] sits on the *input* of the module
that consumes the dimension (the attention output projection, the MLP down
projection, the next conv): that module's class is swapped for
``UnitMasked + original`` (see [`modeopt_masks.dynamic`][modeopt_masks.dynamic]), whose forward
reshapes the input to ``[..., units, unit_size]`` and multiplies by the mask.
No ``head_mask`` argument is needed, so this works on transformers 5.

[`StructuredHParam`][modeopt_masks.structured.hparam.StructuredHParam] is the user-facing view: ``choices`` (unit counts),
``importance`` (scores in original unit order), ``active`` (units kept) and
``kept`` (which units).

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> from modeopt_masks.structured import gradnas_hparams
    >>> _ = torch.manual_seed(0); net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> net = mm.convert(net, ("gradnas", {"nn.Linear": {"ratios": [0.5, 1.0]}}))
    >>> hp = gradnas_hparams(net)["0"]
    >>> hp.choices, hp.active
    ([4, 8], 8)
    >>> hp.keep([0, 1, 2, 7]); hp.active, hp.kept
    (4, [0, 1, 2, 7])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..dynamic import is_dynamic
from .structure import Structure


def apply_unit_mask(x: torch.Tensor, mask: torch.Tensor, unit_size: int, dim: int) -> torch.Tensor:
    """``x`` with unit ``u`` (``unit_size`` entries along ``dim``) scaled by ``mask[u]``."""
    mask = mask.to(dtype=x.dtype)
    if dim == 1 and x.dim() > 2:
        return x * mask.view(1, -1, *([1] * (x.dim() - 2)))
    if unit_size == 1:
        return x * mask
    shape = x.shape
    return (x.reshape(*shape[:-1], mask.numel(), unit_size) * mask.unsqueeze(-1)).reshape(shape)


class UnitMasked:
    """Mixin for the consumer module: masks the units of its input before the original forward."""

    _mm_struct: Structure
    _mm_full: bool
    _mm_score_mask: torch.Tensor | None
    _mm_unit_mask: torch.Tensor

    def _mm_init(self, structure: Structure, choices: list[int]) -> None:
        weight = self.weight  # type: ignore[attr-defined]
        self._mm_struct = structure
        self._mm_choices = list(choices)
        self._mm_importance: torch.Tensor | None = None
        self._mm_kept = list(range(structure.n_units))
        self._mm_full = True
        self._mm_score_mask = None
        # the weight's dtype: the same mask whether the model was cast before or after converting
        dtype = weight.dtype if weight.is_floating_point() else torch.get_default_dtype()
        self.register_buffer(  # type: ignore[attr-defined]
            "_mm_unit_mask", torch.ones(structure.n_units, device=weight.device, dtype=dtype),
            persistent=False,
        )

    def _mm_teardown(self) -> None:
        for attr in ("_mm_struct", "_mm_choices", "_mm_importance", "_mm_kept", "_mm_full",
                     "_mm_score_mask"):
            self.__dict__.pop(attr, None)
        self._buffers.pop("_mm_unit_mask", None)  # type: ignore[attr-defined]

    def _mm_set_kept(self, kept: list[int]) -> None:
        mask = torch.zeros_like(self._mm_unit_mask)
        if kept:
            mask[torch.tensor(kept, device=mask.device)] = 1.0
        self._mm_unit_mask = mask
        self._mm_kept = list(kept)
        self._mm_full = len(kept) == self._mm_struct.n_units

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        mask = self._mm_score_mask
        if mask is None and not self._mm_full:
            mask = self._mm_unit_mask
        if mask is not None:
            x = apply_unit_mask(x, mask, self._mm_struct.unit_size, self._mm_struct.mask_dim)
        return super().forward(x, *args, **kwargs)  # type: ignore[misc]


class StructuredHParam:
    """One searchable dimension of a converted model (a view on its masked consumer module).

    Args:
        module: The masked consumer module whose input units this hparam selects.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.structured import gradnas_hparams
        >>> net = mm.convert(nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 1)),
        ...                  ("gradnas", {"nn.Linear": {"divisor": 2}}))
        >>> gradnas_hparams(net)["0"].choices
        [2, 4, 6]
    """

    def __init__(self, module: nn.Module) -> None:
        assert is_mask_holder(module)
        self.module = module

    @property
    def _m(self) -> Any:
        return self.module

    @property
    def structure(self) -> Structure:
        """Names, units and slices of this dimension."""
        return self._m._mm_struct

    @property
    def name(self) -> str:
        """The block (or producer layer) name; the hparam's key."""
        return self.structure.name

    @property
    def n_units(self) -> int:
        """Units in the original model (heads, KV groups or channels)."""
        return self.structure.n_units

    @property
    def choices(self) -> list[int]:
        """Allowed numbers of kept units, ascending (the last is ``n_units``)."""
        return list(self._m._mm_choices)

    @property
    def importance(self) -> torch.Tensor | None:
        """Scores per unit in original index order (``None`` until scored)."""
        return self._m._mm_importance

    @importance.setter
    def importance(self, value: torch.Tensor | None) -> None:
        self._m._mm_importance = None if value is None else value.detach().double().cpu()

    @property
    def kept(self) -> list[int]:
        """Indices of the kept units, ascending."""
        return list(self._m._mm_kept)

    @property
    def active(self) -> int:
        """Number of kept units."""
        return len(self._m._mm_kept)

    def keep(self, indices: list[int]) -> None:
        """Keep exactly the units ``indices`` (any order; stored ascending)."""
        kept = sorted({int(i) for i in indices})
        if not kept or kept[0] < 0 or kept[-1] >= self.n_units:
            raise ValueError(f"{self.name}: unit indices must be in [0, {self.n_units}), got {indices}")
        if len(kept) not in self.choices:
            raise ValueError(f"{self.name}: {len(kept)} units is not a choice; choices: {self.choices}")
        groups = self.structure.groups
        if groups > 1:
            per_group = [0] * groups
            for u in kept:
                per_group[self.structure.group_of(u)] += 1
            if len(set(per_group)) != 1:
                raise ValueError(
                    f"{self.name}: every one of the {groups} KV groups must keep the same number "
                    f"of query heads (gqa='even'); {kept} keeps {per_group} per group"
                )
        self._m._mm_set_kept(kept)

    def top(self, count: int, order: torch.Tensor | None = None) -> list[int]:
        """The ``count`` most important units (by ``order``, else ``importance``), ascending.

        With grouped units (``structure.groups > 1``) each group gives its own
        ``count // groups`` most important units.
        """
        if order is None:
            order = self.unit_order()
        groups = self.structure.groups
        if groups == 1:
            return sorted(int(i) for i in order[:count])
        quota = [count // groups] * groups
        out = []
        for i in order.tolist():
            g = self.structure.group_of(int(i))
            if quota[g] > 0:
                quota[g] -= 1
                out.append(int(i))
        return sorted(out)

    def unit_order(self) -> torch.Tensor:
        """Units from most to least important (ties: lower index first)."""
        if self.importance is None:
            return torch.arange(self.n_units)
        return torch.sort(-self.importance, stable=True).indices

    def set_active(self, count: int) -> None:
        """Keep the ``count`` most important units."""
        self.keep(self.top(count))

    def __repr__(self) -> str:
        return (f"StructuredHParam({self.name!r}, {self.structure.kind}, "
                f"active={self.active}/{self.n_units}, choices={self.choices})")


def is_mask_holder(module: nn.Module) -> bool:
    """Whether ``module`` holds the unit mask of a gradnas hparam (a [`UnitMasked`][modeopt_masks.structured.hparam.UnitMasked]
    consumer, or the holder of a stream axis' shared mask, see [`modeopt_masks.structured.stream`][modeopt_masks.structured.stream])."""
    return is_dynamic(module) and issubclass(type(module).__dict__["_mm_mixin"], UnitMasked) and (
        "_mm_struct" in module.__dict__)


def gradnas_hparams(model: nn.Module) -> dict[str, StructuredHParam]:
    """``{name: StructuredHParam}`` of a gradnas-converted model, in module order.

    Args:
        model: A gradnas-converted model.

    Returns:
        ``{name: StructuredHParam}`` in module order (empty for an unconverted model).
    """
    out: dict[str, StructuredHParam] = {}
    for m in model.modules():
        if is_mask_holder(m):
            hp = StructuredHParam(m)
            out[hp.name] = hp
    return out
