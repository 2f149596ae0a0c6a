"""``magnitude_pruning``: fixed masks that remove the smallest ``|w|``.

``prune_percentage`` of the entries with the smallest absolute value are
removed (exactly ``round(p * n)`` of them), per layer (``scope="layer"``) or
over all converted layers together (``scope="global"``, one percentage for all).
With ``mask_unit="neuron"`` whole output units are ranked by their L2 norm and
a bias mask follows its units; with ``mask_unit="head"`` / ``"kv_group"`` whole heads
by the L2 norm of their output-projection columns. ``pattern="N:M"`` (e.g. ``"2:4"``) keeps the N
largest of every M consecutive input weights instead (``prune_percentage`` is
then unused). NaN/inf weights raise a ``ValueError`` naming the layer (they
cannot be ranked) and leave the model unchanged. The global scope finds its
threshold by a streaming radix select
(:func:`modeopt_masks.selection.global_keep`): no concatenated copy of the
scores, its extra memory is bounded by one chunk.

Eval path: each forward multiplies the weight by ``keep`` converted to the weight's dtype
(nothing cached); the bool ``keep`` buffer (1 byte per entry) stays resident unless
``mm.compact_masks`` packs it into 1 bit per entry (:mod:`modeopt_masks.compact`).

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> net = mm.convert(nn.Sequential(nn.Linear(10, 10)),
    ...                  ("magnitude_pruning", {"nn.Linear": {"prune_percentage": 0.3}}))
    >>> int(net[0].weight_mask.keep.sum())
    70
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any, Literal, cast

import torch
from pydantic import Field, model_validator

from ..calibration import from_matrix, weight_matrix
from ..heads import head_scores
from ..layer_kinds import LayerKind
from ..masking import MaskedLayer, MaskTechnique
from ..selection import CHUNK, check_finite, global_keep, keep_largest, keep_n_of_m
from .mask_mode import PatternRule, register_mask_mode

__all__ = ["MagnitudeMask", "MagnitudePruningRule", "keep_largest"]


class MagnitudePruningRule(PatternRule):
    """Per-layer settings: the fraction of entries to remove, or an ``"N:M"`` ``pattern``."""

    prune_percentage: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _pattern_on_weights(self) -> MagnitudePruningRule:
        if self.pattern != "unstructured" and (self.mask_unit != "weight" or self.mask_bias):
            raise ValueError(f"pattern {self.pattern!r} groups weight entries: it needs "
                             "mask_unit='weight' and mask_bias=False")
        return self


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
        if not bool(torch.isfinite(tensor.detach()).all()):
            # refused by name in _after_convert (which reverts the conversion)
            return cls(torch.ones(shape, dtype=torch.bool))
        nm = getattr(rule, "n_of_m", None)
        if nm is not None and tensor.dim() > 1:
            scores = weight_matrix(kind.key, tensor.detach()).float().abs()
            return cls(from_matrix(kind.key, keep_n_of_m(scores, *nm), shape))
        return cls(keep_largest(_scores(kind, tensor, shape), rule.prune_percentage))

    def mask(self) -> torch.Tensor:
        return self.keep.float()

    def circuit(self) -> torch.Tensor:
        return self.keep

    def l0(self) -> torch.Tensor:
        return self.keep.sum().float()


def _keep(tech: MaskTechnique) -> torch.Tensor:
    return cast(MagnitudeMask, tech).keep


def _scores(kind: LayerKind, tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``|w|`` per entry, or (neuron unit: a mask ``shape`` smaller than the tensor) the
    norm of each output unit, or (head units: a 1-D mask of a matrix) of each head's columns."""
    if len(shape) < tensor.dim():
        return head_scores(kind, tensor, shape[0])
    if shape != tuple(tensor.shape):
        return kind.unit_scores(tensor)
    return tensor.detach().float().abs()


def _after_convert(layers: dict[str, MaskedLayer], config: Any) -> None:
    """Global scope ranks all layers together; neuron bias masks follow their units."""
    for name, layer in layers.items():
        for what, _tech in layer._mask_modules():
            check_finite(getattr(layer, what).detach(), f"magnitude_pruning: the {what} of {name!r}")
    if config.scope == "global":
        _prune_globally(layers)
    for layer in layers.values():
        if layer.bias_mask is not None and layer.weight_mask.rule.mask_unit == "neuron":
            bias_keep = _keep(layer.bias_mask)
            bias_keep.copy_(_keep(layer.weight_mask).reshape(bias_keep.shape))


def _prune_globally(layers: dict[str, MaskedLayer]) -> None:
    rules = {(t.rule.prune_percentage, t.rule.mask_unit, t.rule.pattern) for t in
             (layer.weight_mask for layer in layers.values())}
    if len(rules) != 1 or next(iter(rules))[2] != "unstructured":
        raise ValueError(
            "scope='global' needs one prune_percentage and mask_unit for every layer and no "
            f"N:M pattern, got {sorted(rules)}; use scope='layer' for per-layer percentages "
            "or patterns"
        )
    ((fraction, _unit, _pattern),) = rules
    chosen = list(layers.values())
    written: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(chosen))}

    def write(i: int, keep: torch.Tensor) -> None:
        written[i].append(keep)

    global_keep([partial(_score_chunks, layer) for layer in chosen],
                sum(int(torch.Size(layer.weight_mask.shape).numel()) for layer in chosen),
                fraction, write)
    for i, layer in enumerate(chosen):
        keep = _keep(layer.weight_mask)
        keep.copy_(torch.cat(written[i]).reshape(keep.shape))
        written[i] = []


def _score_chunks(layer: MaskedLayer) -> Iterator[torch.Tensor]:
    """The layer's magnitude scores in flat order, ``CHUNK``-sized pieces (no full copy)."""
    shape = layer.weight_mask.shape
    weight = layer.weight.detach()
    if shape != tuple(weight.shape):  # neuron masks: one norm per unit, small
        yield _scores(layer.layer_kind, weight, shape).reshape(-1)
        return
    flat = weight.reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        yield flat[start:start + CHUNK].float().abs()


register_mask_mode("magnitude_pruning", MagnitudePruningRule, MagnitudeMask,
                   options={"scope": (Literal["layer", "global"], "layer")},
                   after_convert=_after_convert)
