"""NeuroSurgeon's probing configs (``PretrainedConfig`` s, positional arguments in its order).

Each translates to the library's config with ``to_core()`` (validated there):
`ResidualUpdateModelConfig` to
[`modeopt_masks.probing.ResidualUpdateModelConfig`][modeopt_masks.probing.residual_update_model.ResidualUpdateModelConfig], the probe configs to
[`modeopt_masks.probing.SubnetworkProbeConfig`][modeopt_masks.probing.subnetwork_probe.SubnetworkProbeConfig] /
[`CircuitProbeConfig`][modeopt_masks.probing.circuit_probe.CircuitProbeConfig] (``circuit_config`` gives the
mask targets, ``resid_config`` the model type).

Examples:
    >>> from modeopt_masks.compat.neurosurgeon.Probing.probe_configs import (
    ...     ResidualUpdateModelConfig)
    >>> ResidualUpdateModelConfig("bert", [0, 1], True, True).to_core().vector_names()[:2]
    ['attn_update_0', 'mlp_update_0']
"""

from __future__ import annotations

from typing import Any, cast

import torch.nn as nn
from transformers import PretrainedConfig

from ....probing import MODEL_TYPE_TO_FAMILY
from ....probing import CircuitProbeConfig as CoreCircuitProbeConfig
from ....probing import ResidualUpdateModelConfig as CoreResidualUpdateModelConfig
from ....probing import SubnetworkProbeConfig as CoreSubnetworkProbeConfig
from ....probing.residual_update_model import find_model_type
from ..Models.model_configs import CircuitConfig

#: NeuroSurgeon's ``model_type`` names -> the library's families.
MODEL_TYPES = {"gpt": "gpt2", "gptneox": "gpt_neox", "gpt_neox": "gpt_neox", "bert": "bert",
               "vit": "vit"}


def resolve_model_type(model_type: str | None, model: nn.Module | None = None) -> str | None:
    """The library's model type for NeuroSurgeon's ``model_type`` (and the model, if given).

    NeuroSurgeon's ``"bert"`` covers every BERT-style encoder (BERT, RoBERTa, MPNet,
    ConvBERT, ERNIE, ELECTRA): with the model at hand its own ``config.model_type`` is
    used when it names one of them, so MPNet gets its own layout.

    Examples:
        >>> import transformers
        >>> from modeopt_masks.compat.neurosurgeon.Probing.probe_configs import resolve_model_type
        >>> mpnet = transformers.MPNetModel(transformers.MPNetConfig(hidden_size=8,
        ...     num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, vocab_size=10))
        >>> resolve_model_type("gpt"), resolve_model_type("bert", mpnet)
        ('gpt2', 'mpnet')
    """
    if model_type is None:
        return None
    resolved = MODEL_TYPES.get(model_type, model_type)
    if resolved == "bert" and model is not None:
        try:
            detected = find_model_type(model)
        except ValueError:
            return resolved
        if MODEL_TYPE_TO_FAMILY.get(detected) in ("bert", "mpnet"):
            return detected
    return resolved


class ResidualUpdateModelConfig(PretrainedConfig):
    """Which vectors a ``ResidualUpdateModel`` caches (NeuroSurgeon's argument order).

    ``model_type``: NeuroSurgeon's ``"bert"`` (BERT, RoBERTa, MPNet, ConvBERT, ERNIE,
    ELECTRA), ``"gpt"`` (GPT-2), ``"gptneox"``/``"gpt_neox"``, ``"vit"``, or any
    ``model_type`` the library knows (``"llama"``...).

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Probing.probe_configs import (
        ...     ResidualUpdateModelConfig)
        >>> cfg = ResidualUpdateModelConfig("gpt", [1], mlp=True, attn=False, stream=True)
        >>> cfg.model_type, cfg.to_core().vector_names()
        ('gpt', ['mlp_update_1', 'mlp_stream_1'])
    """

    def __init__(
        self,
        model_type: str | None = None,
        target_layers: list[int] | None = None,
        mlp: bool = True,
        attn: bool = True,
        updates: bool = True,
        stream: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_type = model_type  # type: ignore[misc,assignment]  # an instance setting here
        self.target_layers = list(target_layers or [])
        self.mlp = mlp
        self.attn = attn
        self.updates = updates
        self.stream = stream

    def to_core(self, model: nn.Module | None = None) -> CoreResidualUpdateModelConfig:
        """The library's config (``model_type`` resolved, see `resolve_model_type`)."""
        return CoreResidualUpdateModelConfig(
            model_type=resolve_model_type(self.model_type, model), target_layers=self.target_layers, mlp=self.mlp,
            attn=self.attn, updates=self.updates, stream=self.stream,
        )


class _ProbeConfig(PretrainedConfig):
    # (no class-level annotations: transformers 5 reads them as config fields)
    def _check(self) -> None:
        # NeuroSurgeon's rules for probing one vector of a frozen model
        resid = self.resid_config
        if not self.circuit_config.freeze_base:
            raise ValueError("probing needs circuit_config.freeze_base=True")
        if len(resid.target_layers) != 1:
            raise ValueError("probing reads one layer: resid_config.target_layers needs one index")
        if resid.mlp == resid.attn:
            raise ValueError("probing reads one vector: set exactly one of mlp, attn")

    def _core_fields(self, model: nn.Module | None) -> dict[str, Any]:
        self._check()
        circuit = self.circuit_config.to_core()
        resid = self.resid_config.to_core(model)
        return {
            "probe_vector": self.probe_vectors, "target_layers": circuit.target_layers,
            "mask_method": circuit.mask_method, "mask_hparams": circuit.mask_hparams,
            "freeze_base": circuit.freeze_base, "add_l0": circuit.add_l0,
            "l0_lambda": circuit.l0_lambda, "model_type": resid.model_type,
        }


class SubnetworkProbeConfig(_ProbeConfig):
    """NeuroSurgeon's ``SubnetworkProbeConfig`` (``intermediate_size=-1``: a linear probe).

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Models.model_configs import CircuitConfig
        >>> from modeopt_masks.compat.neurosurgeon.Probing.probe_configs import (
        ...     ResidualUpdateModelConfig, SubnetworkProbeConfig)
        >>> cfg = SubnetworkProbeConfig("mlp_stream_1", 2, CircuitConfig(),
        ...                             ResidualUpdateModelConfig("bert", [1], True, False))
        >>> cfg.probe_vectors, cfg.to_core().intermediate_size
        ('mlp_stream_1', None)
    """

    def __init__(
        self,
        probe_vectors: str | None = None,
        n_classes: int | None = None,
        circuit_config: CircuitConfig | None = None,
        resid_config: ResidualUpdateModelConfig | None = None,
        intermediate_size: int = -1,
        labeling: str = "sequence",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.probe_vectors = probe_vectors  # type: ignore[assignment]
        self.n_classes = n_classes
        self.circuit_config = circuit_config or CircuitConfig()
        self.resid_config = resid_config or ResidualUpdateModelConfig()
        self.intermediate_size = intermediate_size
        self.labeling = labeling

    def to_core(self, model: nn.Module | None = None) -> CoreSubnetworkProbeConfig:
        """The library's ``SubnetworkProbeConfig`` (validated) for probing ``model``."""
        return CoreSubnetworkProbeConfig(
            **self._core_fields(model), n_classes=cast(int, self.n_classes),
            intermediate_size=self.intermediate_size, labeling=cast(Any, self.labeling),
        )


class CircuitProbeConfig(_ProbeConfig):
    """NeuroSurgeon's ``CircuitProbeConfig``: ``loss="contrastive"`` (soft nearest neighbours) or ``"linear"``.

    Examples:
        >>> from modeopt_masks.compat.neurosurgeon.Models.model_configs import CircuitConfig
        >>> from modeopt_masks.compat.neurosurgeon.Probing.probe_configs import (
        ...     CircuitProbeConfig, ResidualUpdateModelConfig)
        >>> cfg = CircuitProbeConfig(probe_vectors="mlp_update_1",
        ...     circuit_config=CircuitConfig(target_layers=["encoder.layer.1.output.dense"]),
        ...     resid_config=ResidualUpdateModelConfig("bert", [1], True, False))
        >>> cfg.to_core().objective
        'snn'
    """

    def __init__(
        self,
        probe_vectors: str | None = None,
        circuit_config: CircuitConfig | None = None,
        resid_config: ResidualUpdateModelConfig | None = None,
        loss: str = "contrastive",
        n_classes: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.probe_vectors = probe_vectors  # type: ignore[assignment]
        self.circuit_config = circuit_config or CircuitConfig()
        self.resid_config = resid_config or ResidualUpdateModelConfig()
        self.loss = loss
        self.n_classes = n_classes

    def to_core(self, model: nn.Module | None = None) -> CoreCircuitProbeConfig:
        """The library's ``CircuitProbeConfig`` (validated) for probing ``model``."""
        objectives = {"contrastive": "snn", "linear": "linear"}
        if self.loss not in objectives:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {list(objectives)}")
        return CoreCircuitProbeConfig(
            **self._core_fields(model), objective=cast(Any, objectives[self.loss]), n_classes=self.n_classes,
            labeling="token",  # NeuroSurgeon's circuit probe reads every True of token_mask
        )
