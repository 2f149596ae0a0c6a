"""Circuit and probing tools over residual-stream vectors (see DESIGN.md part 9).

* [`ResidualUpdateModel`][modeopt_masks.probing.residual_update_model.ResidualUpdateModel] caches attention/MLP updates and residual streams;
* [`SubnetworkProbe`][modeopt_masks.probing.subnetwork_probe.SubnetworkProbe] trains a mask and a probe on one cached vector;
* [`CircuitProbe`][modeopt_masks.probing.circuit_probe.CircuitProbe] trains a mask so that a cached vector clusters by label;
* [`evaluation`][modeopt_masks.probing.evaluation] scores vectors and ablated circuits.
"""

from .circuit_probe import CircuitProbe, CircuitProbeConfig
from .evaluation import collect_vectors, compare_ablations, knn_accuracy, nearest_centroid_accuracy
from .mask_plan import mask_mode_spec
from .masked_probe import MaskedProbe, MaskedProbeConfig
from .probe_output import ProbeOutput
from .residual_layouts import (
    LAYOUTS,
    LEGACY_LAYOUTS,
    MODEL_TYPE_TO_FAMILY,
    HookPoint,
    ResidualLayout,
    layout_candidates,
    layout_for,
)
from .residual_update_model import ResidualUpdateModel, ResidualUpdateModelConfig, select_layout
from .snn_loss import soft_nearest_neighbour_loss
from .subnetwork_probe import SubnetworkProbe, SubnetworkProbeConfig

__all__ = [
    "LAYOUTS",
    "LEGACY_LAYOUTS",
    "MODEL_TYPE_TO_FAMILY",
    "CircuitProbe",
    "CircuitProbeConfig",
    "HookPoint",
    "MaskedProbe",
    "MaskedProbeConfig",
    "ProbeOutput",
    "ResidualLayout",
    "ResidualUpdateModel",
    "ResidualUpdateModelConfig",
    "SubnetworkProbe",
    "SubnetworkProbeConfig",
    "collect_vectors",
    "compare_ablations",
    "knn_accuracy",
    "layout_candidates",
    "layout_for",
    "mask_mode_spec",
    "nearest_centroid_accuracy",
    "select_layout",
    "soft_nearest_neighbour_loss",
]
