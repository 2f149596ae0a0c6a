"""NeuroSurgeon's ``CircuitProbe`` (its ``updated_circuit_probe`` branch) on the library's.

Examples:
    >>> import torch, transformers
    >>> from modeopt_masks.compat.neurosurgeon.Models.model_configs import CircuitConfig
    >>> from modeopt_masks.compat.neurosurgeon.Probing.probe_configs import (
    ...     CircuitProbeConfig, ResidualUpdateModelConfig)
    >>> from modeopt_masks.compat.neurosurgeon.Probing.circuit_probe import CircuitProbe
    >>> bert = transformers.BertModel(transformers.BertConfig(hidden_size=16, num_hidden_layers=2,
    ...     num_attention_heads=2, intermediate_size=32, vocab_size=30))
    >>> cp = CircuitProbe(CircuitProbeConfig("mlp_update_1",
    ...     CircuitConfig(target_layers=["encoder.layer.1.output.dense"]),
    ...     ResidualUpdateModelConfig("bert", [1], True, False)), bert)
    >>> out = cp(input_ids=torch.tensor([[1, 2], [3, 4]]), labels=torch.tensor([[0], [1]]),
    ...          token_mask=torch.tensor([[True, False], [True, False]]))
    >>> out.loss.requires_grad
    True
"""

from __future__ import annotations

from typing import Any

import torch

from ....probing import CircuitProbe as CoreCircuitProbe
from ....probing import soft_nearest_neighbour_loss
from .probe_configs import CircuitProbeConfig
from .residual_update_model import ResidualUpdateModel
from .subnetwork_probe import NeuroSurgeonProbe, flat_labels, ns_tuple

#: NeuroSurgeon's circuit probe pads labels with -1000.
LABEL_PAD = -1000


class CircuitProbe(NeuroSurgeonProbe, CoreCircuitProbe):
    """Masks trained so one cached vector clusters by label (NeuroSurgeon's interface).

    Labels may be ``[batch]``, ``[batch, 1]`` or rows padded with ``-1000`` (one label
    per ``True`` of ``token_mask``, NeuroSurgeon's layout).

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Probing.circuit_probe import LABEL_PAD
        >>> LABEL_PAD
        -1000
    """

    residual_model_class = ResidualUpdateModel
    ns_config_class = CircuitProbeConfig

    def forward(  # type: ignore[override]
        self, input_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None, return_dict: bool = True, **kwargs: Any,
    ) -> Any:
        """The library's forward (NeuroSurgeon's label rows padded with -1000 accepted)."""
        labels = flat_labels(labels, token_mask, LABEL_PAD)
        out = super().forward(input_ids, labels, token_mask, **kwargs)
        return out if return_dict else ns_tuple(out)

    def _compute_contrastive_loss(self, updates: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The soft-nearest-neighbour loss of ``updates`` under ``labels`` (the library's)."""
        return soft_nearest_neighbour_loss(updates, labels)
