"""modeopt-masks: circuit discovery and pruning masks as Model-Optimizer-style modes.

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> net = mm.convert(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)),
    ...                  "continuous_sparsification")
    >>> loss = net(torch.randn(4, 8)).sum() + 1e-3 * mm.l0_loss(net)
    >>> loss.backward()
"""

from . import modes as _modes  # noqa: F401  (registers the built-in modes)
from .circuit import CircuitConfig, CircuitModel
from .conversion import ModeState, convert, export, mode_history, unconvert
from .distributed import sync_ablation_draws
from .hf_checkpointing import enable_huggingface_checkpointing
from .layer_kinds import LAYER_KINDS, LayerKind, register_layer_kind
from .layers import (
    ContSparseConv1d,
    ContSparseConv2d,
    ContSparseGPTConv1D,
    ContSparseLayer,
    ContSparseLinear,
    HardConcreteConv1d,
    HardConcreteConv2d,
    HardConcreteGPTConv1D,
    HardConcreteLayer,
    HardConcreteLinear,
    MagPruneConv1d,
    MagPruneConv2d,
    MagPruneGPTConv1D,
    MagPruneLayer,
    MagPruneLinear,
)
from .mask_controls import (
    get_temperature,
    l0_loss,
    l0_stats,
    masked_modules,
    set_ablation,
    set_temperature,
    use_masks,
)
from .masking import ABLATIONS, MaskedLayer, MaskTechnique
from .modes.gradnas import GradNASConfig, GradNASRule
from .persistence import StateError, restore, save
from .probing import (
    CircuitProbe,
    CircuitProbeConfig,
    ProbeOutput,
    ResidualUpdateModel,
    ResidualUpdateModelConfig,
    SubnetworkProbe,
    SubnetworkProbeConfig,
    collect_vectors,
    compare_ablations,
    knn_accuracy,
    nearest_centroid_accuracy,
    soft_nearest_neighbour_loss,
)
from .pruning import prune
from .registry import ModeDescriptor, available_modes, get_mode, register_mode
from .rules import ModeConfig, Rule
from .searchers import (
    BaseSearcher,
    BinarySearcher,
    GradientBinarySearcher,
    SearchResult,
    count_params,
    get_searcher,
    measure_flops,
)
from .structured import SUPPORTED_FAMILIES, StructuredHParam, collect_scores, gradnas_hparams
from .training import DensityController, ExponentialSchedule, MaskTrainingCallback, expected_density

__version__ = "0.1.0"



__all__ = [
    "enable_huggingface_checkpointing",
    "prune",
    "BaseSearcher",
    "BinarySearcher",
    "GradientBinarySearcher",
    "SearchResult",
    "count_params",
    "get_searcher",
    "measure_flops",
    "SUPPORTED_FAMILIES",
    "StructuredHParam",
    "collect_scores",
    "gradnas_hparams",
    "GradNASConfig",
    "GradNASRule",
    "CircuitConfig",
    "CircuitModel",
    "ContSparseConv1d",
    "ContSparseConv2d",
    "ContSparseGPTConv1D",
    "ContSparseLayer",
    "ContSparseLinear",
    "HardConcreteConv1d",
    "HardConcreteConv2d",
    "HardConcreteGPTConv1D",
    "HardConcreteLayer",
    "HardConcreteLinear",
    "MagPruneConv1d",
    "MagPruneConv2d",
    "MagPruneGPTConv1D",
    "MagPruneLayer",
    "MagPruneLinear",
    "DensityController",
    "ExponentialSchedule",
    "expected_density",
    "MaskTrainingCallback",
    "ABLATIONS",
    "CircuitProbe",
    "CircuitProbeConfig",
    "ProbeOutput",
    "ResidualUpdateModel",
    "ResidualUpdateModelConfig",
    "SubnetworkProbe",
    "SubnetworkProbeConfig",
    "collect_vectors",
    "compare_ablations",
    "knn_accuracy",
    "nearest_centroid_accuracy",
    "soft_nearest_neighbour_loss",
    "sync_ablation_draws",
    "LAYER_KINDS",
    "LayerKind",
    "MaskTechnique",
    "MaskedLayer",
    "ModeConfig",
    "ModeDescriptor",
    "ModeState",
    "Rule",
    "StateError",
    "available_modes",
    "convert",
    "export",
    "get_mode",
    "get_temperature",
    "l0_loss",
    "l0_stats",
    "masked_modules",
    "mode_history",
    "register_layer_kind",
    "register_mode",
    "restore",
    "save",
    "set_ablation",
    "set_temperature",
    "unconvert",
    "use_masks",
]
