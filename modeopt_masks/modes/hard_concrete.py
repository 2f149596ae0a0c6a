"""``hard_concrete``: stochastic L0 gates (Louizos et al. 2018).

Training samples ``u ~ U(0,1)``, ``s = sigmoid((log u - log(1-u) + log_alpha) / beta)``,
``z = clamp(s (zeta - gamma) + gamma, 0, 1)`` with ``gamma=-0.1``, ``zeta=1.1``;
``beta`` is the mode's ``temperature`` (default 2/3). Eval uses the binary
circuit ``log_alpha > 0`` (the deterministic gate ``> 0.5``). The expected L0 is
``sum(sigmoid(log_alpha - beta log(-gamma / zeta)))``. ``mask_init_percentage``
``p`` initialises ``log_alpha ~ N(log(p / (1 - p)), 0.01)``.

Eval path: as ``continuous_sparsification``: each eval forward multiplies the weight by
``log_alpha > 0`` in the weight's dtype, nothing cached; ``mm.compact_masks`` packs the
circuit into 1 bit per entry and frees ``log_alpha`` (eval only; :mod:`modeopt_masks.compact`).

Examples:
    >>> import torch.nn as nn, modeopt_masks as mm
    >>> net = mm.convert(nn.Sequential(nn.Linear(100, 100)),
    ...                  ("hard_concrete", {"nn.Linear": {"mask_init_percentage": 0.9}}))
    >>> 0.8 < float(net[0].weight_mask.l0()) / 10_000 < 1.0
    True
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from ..layer_kinds import LayerKind
from ..masking import MaskTechnique, compute_dtype, positive
from .mask_mode import MaskRule, register_mask_mode

GAMMA, ZETA = -0.1, 1.1
_EPS = 1e-6


class HardConcreteRule(MaskRule):
    """Per-layer settings: initial keep fraction and temperature (beta)."""

    mask_init_percentage: float = Field(0.5, gt=0, lt=1)
    temperature: float = Field(2 / 3, gt=0)


class HardConcreteMask(MaskTechnique):
    """Hard concrete gates with parameters ``log_alpha``."""

    has_temperature = True

    @classmethod
    def from_rule(
        cls, kind: LayerKind, tensor: torch.Tensor, shape: tuple[int, ...], rule: Any
    ) -> HardConcreteMask:
        return cls(shape, rule.mask_init_percentage, rule.temperature)

    def __init__(self, shape: tuple[int, ...], init_percentage: float, temperature: float) -> None:
        super().__init__(shape)
        mean = math.log(init_percentage / (1 - init_percentage))
        self.log_alpha = torch.nn.Parameter(torch.empty(shape).normal_(mean, 0.01))
        self.temperature = float(temperature)

    def mask(self) -> torch.Tensor:
        if not self.training:
            return self.hard_mask(torch.float32)
        log_alpha = compute_dtype(self.log_alpha)
        u = torch.rand_like(log_alpha).clamp(_EPS, 1 - _EPS)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / self.temperature)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def circuit(self) -> torch.Tensor:
        return self.log_alpha > 0

    def hard_mask(self, dtype: torch.dtype) -> torch.Tensor:
        return positive(self.log_alpha, dtype)

    def l0(self) -> torch.Tensor:
        if not self.training:
            return self.circuit().sum().float()
        shift = self.temperature * math.log(-GAMMA / ZETA)
        return torch.sigmoid(compute_dtype(self.log_alpha) - shift).sum()


register_mask_mode("hard_concrete", HardConcreteRule, HardConcreteMask)
