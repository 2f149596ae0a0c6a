"""NeuroSurgeon's ``CircuitModel`` on the library's [`modeopt_masks.CircuitModel`][modeopt_masks.circuit.CircuitModel].

Differences from the library's class, all NeuroSurgeon's: the masked layers are
NeuroSurgeon layers (``weight_mask_params``, ``calculate_l0()``...), L0 is
counted in gated weights, ``temperature`` is for continuous sparsification only
(other methods warn and keep their own), and the wrapped model is called with
``return_dict=True`` when it takes that argument.

Examples:
    >>> import torch, torch.nn as nn
    >>> from modeopt_masks.compat.neurosurgeon.Models.circuit_model import CircuitModel
    >>> from modeopt_masks.compat.neurosurgeon.Models.model_configs import CircuitConfig
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> cfg = CircuitConfig(target_layers=["0"], mask_hparams={"mask_unit": "neuron",
    ...                                                         "mask_init_value": 1.0})
    >>> circuit = CircuitModel(cfg, net)
    >>> circuit.training, circuit.compute_l0_statistics()["max_l0"]   # 8 neurons gate 32 weights
    (True, 32)
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, cast

import torch
import torch.nn as nn

from ....circuit import CircuitConfig as CoreCircuitConfig
from ....circuit import CircuitModel as CoreCircuitModel
from ....mask_controls import masked_modules
from ....masking import hard_masks
from ..Masking.contsparse_layer import ContSparseLayer
from ..Masking.mask_layer import MaskLayer, adopt
from .model_configs import CircuitConfig


class CircuitModel(CoreCircuitModel):
    """Wrap ``model`` and mask ``config.target_layers`` (NeuroSurgeon's interface).

    ``config`` is NeuroSurgeon's `CircuitConfig` (or the library's); it is
    validated here. A new ``CircuitModel`` is in training mode.

    Examples:
        >>> import torch.nn as nn
        >>> from modeopt_masks.compat.neurosurgeon.Models import CircuitConfig, CircuitModel
        >>> c = CircuitModel(CircuitConfig(mask_method="hard_concrete", target_layers=["0"]),
        ...                  nn.Sequential(nn.Linear(2, 2)))
        >>> type(c.wrapped_model[0]).__name__
        'HardConcreteLinear'
    """

    def __init__(self, config: CircuitConfig | CoreCircuitConfig, model: nn.Module) -> None:
        core = config.to_core() if isinstance(config, CircuitConfig) else config
        super().__init__(core, model)
        self.core_config = core
        self.config = config  # type: ignore[assignment]
        for layer in masked_modules(self.wrapped_model).values():
            adopt(cast(nn.Module, layer))
        self._temperature = 1.0
        self._pass_return_dict = _takes(self.wrapped_model, "return_dict")

    def train(self, mode: bool = True) -> CircuitModel:  # noqa: D102 - nn.Module.train
        super().train(mode)
        for layer in self._mask_layers():  # mask layers follow ``mode`` even with freeze_base
            layer.training = mode  # type: ignore[attr-defined]
        return self

    # -- NeuroSurgeon's L0: gated weights -------------------------------------------------
    def _mask_layers(self) -> list[MaskLayer]:
        return [m for m in self.wrapped_model.modules() if isinstance(m, MaskLayer)]

    def _compute_l0_loss(self) -> torch.Tensor | float:
        """Sum of the layers' ``calculate_l0()`` in training, ``0.0`` in eval (NeuroSurgeon's)."""
        if not self.training:
            return 0.0
        layers = [m for m in self._mask_layers() if m.use_masks]  # type: ignore[attr-defined]
        return sum((m.calculate_l0() for m in layers), torch.zeros(()))

    def l0_term(self) -> torch.Tensor:
        """``l0_lambda * L0`` in gated weights (NeuroSurgeon's convention)."""
        return self.config.l0_lambda * torch.as_tensor(self._compute_l0_loss())

    def compute_l0_statistics(self) -> dict[str, Any]:
        """``total_l0``, ``max_l0``, ``layer2l0``, ``layer2maxl0`` of the hard masks, in gated weights."""
        layer2l0: dict[str, Any] = {}
        layer2max: dict[str, int] = {}
        with torch.no_grad(), hard_masks(self.wrapped_model):
            for name, layer in self.wrapped_model.named_modules():
                if isinstance(layer, MaskLayer):
                    layer2l0[name] = layer.calculate_l0()
                    layer2max[name] = layer.calculate_max_l0()
        return {"total_l0": sum(layer2l0.values(), torch.zeros(())),
                "max_l0": sum(layer2max.values()), "layer2l0": layer2l0, "layer2maxl0": layer2max}

    # -- temperature: continuous sparsification only ------------------------------------
    @property
    def temperature(self) -> float:  # type: ignore[override]
        """The temperature of the ContSparse layers (others ignore it, with a warning)."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if self.config.mask_method != "continuous_sparsification":
            warnings.warn("Temperature is ignored when not using continuous sparsification",
                          stacklevel=2)
        if value < 0:
            raise ValueError("Temperature must be > 0")
        self._temperature = value
        for module in self.modules():
            if isinstance(module, ContSparseLayer):
                module.temperature = value

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The library's forward; ``return_dict=True`` is passed where the model takes it."""
        if self._pass_return_dict:
            kwargs.setdefault("return_dict", True)
        return super().forward(*args, **kwargs)


def _takes(model: nn.Module, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
