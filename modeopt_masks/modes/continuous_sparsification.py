"""``continuous_sparsification``: learned masks ``sigmoid(beta * s)`` (Savarese et al. 2020).

In training the mask is soft, ``sigmoid(temperature * logits)``; in eval it is
hard, ``logits > 0``. Anneal ``temperature`` upward (``mm.set_temperature``),
e.g. multiply by ``final_temp ** (1 / epochs)`` each epoch with ``final_temp``
around 200, and add ``lambda * mm.l0_loss(model)`` (``lambda`` ~ 1e-8 for a
cross-entropy loss) to the loss.

Note: with the default ``mask_init_value=0.0`` every logit sits at the
threshold, so the *eval* mask ``logits > 0`` is all zeros until training moves
the logits. Use a small positive value (e.g. ``0.1``) to start from the full
network in eval.

Eval path: each eval forward multiplies the weight by ``logits > 0`` thresholded straight
into the weight's dtype (nothing cached, so every write to the logits or the weight shows);
the float32 logits stay resident (one per masked entry) unless ``mm.compact_masks`` packs
the circuit into 1 bit per entry (eval only; see :mod:`modeopt_masks.compact`).

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> net = mm.convert(nn.Sequential(nn.Linear(4, 2)),
    ...                  ("continuous_sparsification", {"nn.Linear": {"mask_init_value": 1.0}}))
    >>> x = torch.randn(3, 4)
    >>> _ = net.eval()
    >>> torch.equal(net(x), torch.nn.functional.linear(x, net[0].weight, net[0].bias))
    True
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field, field_validator

from ..layer_kinds import LayerKind
from ..masking import MaskTechnique, compute_dtype, positive
from .mask_mode import MaskRule, register_mask_mode


class ContinuousSparsificationRule(MaskRule):
    """Per-layer settings: ``mask_init_value`` (logit start) and ``temperature`` (beta)."""

    mask_init_value: float = 0.0
    temperature: float = Field(1.0, gt=0)

    @field_validator("mask_init_value")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("mask_init_value must be finite")
        return v


class ContinuousSparsificationMask(MaskTechnique):
    """Logits ``s``; soft mask ``sigmoid(T s)`` in training, ``s > 0`` in eval."""

    has_temperature = True

    @classmethod
    def from_rule(
        cls, kind: LayerKind, tensor: torch.Tensor, shape: tuple[int, ...], rule: Any
    ) -> ContinuousSparsificationMask:
        return cls(shape, rule.mask_init_value, rule.temperature)

    def __init__(self, shape: tuple[int, ...], init: float, temperature: float) -> None:
        super().__init__(shape)
        self.logits = torch.nn.Parameter(torch.full(shape, float(init)))
        self.temperature = float(temperature)

    def mask(self) -> torch.Tensor:
        if self.training:
            return torch.sigmoid(self.temperature * compute_dtype(self.logits))
        return self.hard_mask(torch.float32)

    def circuit(self) -> torch.Tensor:
        return self.logits > 0

    def hard_mask(self, dtype: torch.dtype) -> torch.Tensor:
        return positive(self.logits, dtype)

    def l0(self) -> torch.Tensor:
        if self.training:
            return torch.sigmoid(self.temperature * compute_dtype(self.logits)).sum()
        return self.circuit().sum().float()


register_mask_mode(
    "continuous_sparsification", ContinuousSparsificationRule, ContinuousSparsificationMask
)
