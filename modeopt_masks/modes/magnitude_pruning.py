"""``magnitude_pruning``: fixed masks that remove the smallest ``|w|``.

``prune_percentage`` of the entries with the smallest absolute value are
removed (exactly ``round(p * n)`` of them), per layer (``scope="layer"``) or
over all converted layers together (``scope="global"``, one percentage for all).
With ``mask_unit="neuron"`` whole output units are ranked by their L2 norm and
a bias mask follows its units.

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> net = mm.convert(nn.Sequential(nn.Linear(10, 10)),
    ...                  ("magnitude_pruning", {"nn.Linear": {"prune_percentage": 0.3}}))
    >>> int(net[0].weight_mask.keep.sum())
    70
"""

from __future__ import annotations

from typing import Any, Literal, cast

import torch
from pydantic import Field

from ..layer_kinds import LayerKind
from ..masking import MaskedLayer, MaskTechnique
from .mask_mode import MaskRule, register_mask_mode


class MagnitudePruningRule(MaskRule):
    """Per-layer settings: the fraction of entries to remove."""

    prune_percentage: float = Field(0.5, ge=0, le=1)


class MagnitudeMask(MaskTechnique):
    """A fixed boolean ``keep`` buffer (saved with the model)."""

    learnable = False
    keep: torch.Tensor

    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__(tuple(keep.shape))
        self.register_buffer("keep", keep.bool())

    @classmethod
    def from_rule(
        cls, kind: LayerKind, tensor: torch.Tensor, shape: tuple[int, ...], rule: Any
    ) -> MagnitudeMask:
        return cls(keep_largest(_scores(kind, tensor, shape), rule.prune_percentage))

    def mask(self) -> torch.Tensor:
        return self.keep.float()

    def circuit(self) -> torch.Tensor:
        return self.keep

    def l0(self) -> torch.Tensor:
        return self.keep.sum().float()


def keep_largest(scores: torch.Tensor, prune_fraction: float) -> torch.Tensor:
    """Boolean mask that drops exactly ``round(prune_fraction * n)`` smallest scores.

    Examples:
        >>> import torch
        >>> keep_largest(torch.tensor([3.0, -5.0, 1.0, 4.0]).abs(), 0.5).tolist()
        [False, True, False, True]
    """
    flat = scores.reshape(-1)
    k = round(prune_fraction * flat.numel())
    if k == 0:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    # O(n) selection instead of a sort: the k-th smallest value, then ties broken by index
    threshold = flat.kthvalue(k).values
    keep = flat > threshold
    ties = torch.nonzero(flat == threshold).reshape(-1)
    drop_from_ties = k - int((flat < threshold).sum())
    keep[ties[drop_from_ties:]] = True
    return keep.reshape(scores.shape)


def _keep(tech: MaskTechnique) -> torch.Tensor:
    return cast(MagnitudeMask, tech).keep


def _scores(kind: LayerKind, tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``|w|`` per entry, or (neuron unit: a mask ``shape`` smaller than the tensor) the
    norm of each output unit."""
    if shape != tuple(tensor.shape):
        return kind.unit_scores(tensor)
    return tensor.detach().float().abs()


def _after_convert(layers: dict[str, MaskedLayer], config: Any) -> None:
    """Global scope ranks all layers together; neuron bias masks follow their units."""
    if config.scope == "global":
        _prune_globally(layers)
    for layer in layers.values():
        if layer.bias_mask is not None and layer.weight_mask.rule.mask_unit == "neuron":
            bias_keep = _keep(layer.bias_mask)
            bias_keep.copy_(_keep(layer.weight_mask).reshape(bias_keep.shape))


def _prune_globally(layers: dict[str, MaskedLayer]) -> None:
    rules = {(t.rule.prune_percentage, t.rule.mask_unit) for t in
             (layer.weight_mask for layer in layers.values())}
    if len(rules) != 1:
        raise ValueError(
            "scope='global' needs one prune_percentage and mask_unit for every layer, got "
            f"{sorted(rules)}; use scope='layer' for per-layer percentages"
        )
    ((fraction, _unit),) = rules
    scores = [
        _scores(layer.layer_kind, layer.weight, layer.weight_mask.shape)
        for layer in layers.values()
    ]
    flat = torch.cat([s.reshape(-1).cpu() for s in scores])
    keep = keep_largest(flat, fraction)
    offset = 0
    for layer, score in zip(layers.values(), scores, strict=True):
        n = score.numel()
        _keep(layer.weight_mask).copy_(keep[offset : offset + n].reshape(score.shape))
        offset += n


register_mask_mode("magnitude_pruning", MagnitudePruningRule, MagnitudeMask,
                   options={"scope": (Literal["layer", "global"], "layer")},
                   after_convert=_after_convert)
