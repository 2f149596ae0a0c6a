"""NeuroSurgeon's ``Models`` package: ``CircuitModel`` and ``CircuitConfig``.

Examples:
    >>> from modeopt_masks.compat.neurosurgeon.Models import CircuitConfig, CircuitModel
    >>> CircuitConfig().mask_method
    'continuous_sparsification'
"""

from .circuit_model import CircuitModel
from .model_configs import CircuitConfig

__all__ = ["CircuitConfig", "CircuitModel"]
