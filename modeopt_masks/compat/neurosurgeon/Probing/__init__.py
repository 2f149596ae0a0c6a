"""NeuroSurgeon's ``Probing`` package: residual-stream hooks, subnetwork and circuit probes.

Examples:
    >>> from modeopt_masks.compat.neurosurgeon.Probing import ResidualUpdateModelConfig
    >>> ResidualUpdateModelConfig("vit", [0], True, False).to_core().model_type
    'vit'
"""

from .circuit_probe import CircuitProbe
from .probe_configs import CircuitProbeConfig, ResidualUpdateModelConfig, SubnetworkProbeConfig
from .residual_update_model import ResidualUpdateModel
from .subnetwork_probe import SubnetworkProbe

__all__ = ["CircuitProbe", "CircuitProbeConfig", "ResidualUpdateModel",
           "ResidualUpdateModelConfig", "SubnetworkProbe", "SubnetworkProbeConfig"]
