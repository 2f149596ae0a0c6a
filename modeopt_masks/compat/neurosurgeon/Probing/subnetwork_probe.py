"""NeuroSurgeon's ``SubnetworkProbe``: the library's, taking NeuroSurgeon's config.

``forward(..., return_dict=False)`` returns NeuroSurgeon's tuple
``(loss, probed vectors)`` (just the vectors without labels). The L0 term is added
to the loss in training (NeuroSurgeon 0.1.0 added none; see docs/neurosurgeon.md).

Examples:
    >>> import torch, transformers
    >>> from modeopt_masks.compat.neurosurgeon.Models.model_configs import CircuitConfig
    >>> from modeopt_masks.compat.neurosurgeon.Probing.probe_configs import (
    ...     ResidualUpdateModelConfig, SubnetworkProbeConfig)
    >>> from modeopt_masks.compat.neurosurgeon.Probing.subnetwork_probe import SubnetworkProbe
    >>> bert = transformers.BertModel(transformers.BertConfig(hidden_size=16, num_hidden_layers=2,
    ...     num_attention_heads=2, intermediate_size=32, vocab_size=30))
    >>> cfg = SubnetworkProbeConfig("mlp_stream_1", 2,
    ...     CircuitConfig(target_layers=["encoder.layer.1.output.dense"]),
    ...     ResidualUpdateModelConfig("bert", [1], True, False, updates=False, stream=True))
    >>> probe = SubnetworkProbe(cfg, bert)
    >>> mask = torch.tensor([[True, False, False]])
    >>> loss, vectors = probe(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1]]),
    ...                       token_mask=mask, return_dict=False)
    >>> tuple(vectors.shape)
    (1, 16)
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch.nn as nn

from ....mask_controls import masked_modules
from ....probing import SubnetworkProbe as CoreSubnetworkProbe
from ..Masking.mask_layer import adopt
from .probe_configs import SubnetworkProbeConfig
from .residual_update_model import ResidualUpdateModel


def flat_labels(labels: Any, token_mask: Any, pad: int) -> Any:
    """NeuroSurgeon's token labels: the rows' entries other than ``pad``, one per True of ``token_mask``.

    Examples:
        >>> import torch
        >>> from modeopt_masks.compat.neurosurgeon.Probing.subnetwork_probe import flat_labels
        >>> flat_labels(torch.tensor([[1, 0, -1], [2, -1, -1]]), torch.ones(2, 4), -1).tolist()
        [1, 0, 2]
    """
    if labels is None or token_mask is None or labels.dim() < 2:
        return labels
    return labels[labels != pad].reshape(-1)


def ns_tuple(out: Any) -> Any:
    """NeuroSurgeon's ``return_dict=False`` output: ``(loss, vectors)``, or the vectors alone."""
    return (out.loss, out.hidden_states) if out.loss is not None else out.hidden_states


class NeuroSurgeonProbe:
    """What both compat probes add to the library's: NeuroSurgeon configs, its layer classes
    on the masked layers, and mask layers that follow ``train()``.

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Probing.subnetwork_probe import (
        ...     NeuroSurgeonProbe, SubnetworkProbe)
        >>> issubclass(SubnetworkProbe, NeuroSurgeonProbe)
        True
    """

    ns_config_class: ClassVar[Any]

    def __init__(self, config: Any, model: nn.Module) -> None:
        ns_config = config
        if isinstance(config, self.ns_config_class):
            config = config.to_core(model)
        super().__init__(config, model)  # type: ignore[call-arg]
        self.ns_config = ns_config
        for layer in masked_modules(self.model).values():  # type: ignore[attr-defined]
            adopt(cast(nn.Module, layer))
        self.train()

    def train(self, mode: bool = True) -> Any:  # noqa: D102 - nn.Module.train
        super().train(mode)  # type: ignore[misc]
        for layer in masked_modules(self.model).values():  # type: ignore[attr-defined]
            layer.training = mode  # mask layers follow ``mode``
        return self


class SubnetworkProbe(NeuroSurgeonProbe, CoreSubnetworkProbe):
    """Masks + probe on one cached vector (NeuroSurgeon's interface).

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Probing.subnetwork_probe import ns_tuple
        >>> from modeopt_masks.probing import ProbeOutput
        >>> ns_tuple(ProbeOutput(hidden_states=1))
        1
    """

    residual_model_class = ResidualUpdateModel
    ns_config_class = SubnetworkProbeConfig

    def forward(  # type: ignore[override]
        self, input_ids: Any = None, labels: Any = None, token_mask: Any = None,
        return_dict: bool = True, **kwargs: Any,
    ) -> Any:
        """The library's forward; NeuroSurgeon's label rows; ``return_dict=False``: its tuple."""
        if self.config.labeling == "token":
            labels = flat_labels(labels, token_mask, -1)
        out = super().forward(input_ids, labels, token_mask, **kwargs)
        return out if return_dict else ns_tuple(out)
