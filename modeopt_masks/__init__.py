"""modeopt-masks: circuit discovery and pruning masks as Model-Optimizer-style modes.

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> net = mm.convert(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)),
    ...                  "continuous_sparsification")
    >>> loss = net(torch.randn(4, 8)).sum() + 1e-3 * mm.l0_loss(net)
    >>> loss.backward()
"""

from __future__ import annotations

import importlib
from typing import Any

# The verbs, the extension points and the mask controls load eagerly (torch, pydantic and
# the library's own modules). Everything else (NeuroSurgeon names, circuit models, probes,
# searchers, training helpers) loads on first access: ``import modeopt_masks`` imports
# neither transformers nor torch._dynamo.
from . import modes as _modes  # noqa: F401  (registers the built-in modes)
from .conversion import ModeState, convert, export, mode_history, unconvert
from .layer_kinds import LAYER_KINDS, LayerKind, register_layer_kind
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
from .persistence import StateError, restore, save
from .pruning import prune
from .registry import ModeDescriptor, available_modes, get_mode, register_mode
from .rules import ModeConfig, Rule

__version__ = "0.1.0"

#: public names loaded on first access: name -> the submodule that defines it.
_LAZY: dict[str, str] = {
    **dict.fromkeys(("CircuitConfig", "CircuitModel"), "circuit"),
    "sync_ablation_draws": "distributed",
    "enable_huggingface_checkpointing": "hf_checkpointing",
    **dict.fromkeys(("CompactMask", "compact_masks", "expand_masks"), "compact"),
    **dict.fromkeys((
        "ContSparseConv1d", "ContSparseConv2d", "ContSparseGPTConv1D", "ContSparseLayer",
        "ContSparseLinear", "HardConcreteConv1d", "HardConcreteConv2d", "HardConcreteGPTConv1D",
        "HardConcreteLayer", "HardConcreteLinear", "MagPruneConv1d", "MagPruneConv2d",
        "MagPruneGPTConv1D", "MagPruneLayer", "MagPruneLinear",
    ), "layers"),
    **dict.fromkeys(("GradNASConfig", "GradNASRule"), "modes.gradnas"),
    **dict.fromkeys((
        "CircuitProbe", "CircuitProbeConfig", "ProbeOutput", "ResidualUpdateModel",
        "ResidualUpdateModelConfig", "SubnetworkProbe", "SubnetworkProbeConfig",
        "collect_vectors", "compare_ablations", "knn_accuracy", "nearest_centroid_accuracy",
        "soft_nearest_neighbour_loss",
    ), "probing"),
    **dict.fromkeys((
        "BaseSearcher", "BinarySearcher", "GradientBinarySearcher", "SearchResult",
        "count_params", "get_searcher", "measure_flops",
    ), "searchers"),
    **dict.fromkeys(
        ("SUPPORTED_FAMILIES", "StructuredHParam", "collect_scores", "gradnas_hparams"),
        "structured",
    ),
    **dict.fromkeys(("Distiller", "DistillResult", "distill", "kl_to_teacher"), "recovery"),
    "DistillationTrainer": "recovery_trainer",
    **dict.fromkeys(
        ("DensityController", "ExponentialSchedule", "MaskTrainingCallback", "expected_density"),
        "training",
    ),
}


def __getattr__(name: str) -> Any:
    """Load a lazy public name (or a submodule such as ``probing``) on first access."""
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "enable_huggingface_checkpointing",
    "CompactMask",
    "compact_masks",
    "expand_masks",
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
    "DistillationTrainer",
    "DistillResult",
    "Distiller",
    "distill",
    "kl_to_teacher",
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
