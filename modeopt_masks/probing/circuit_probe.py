"""``CircuitProbe``: find the subnetwork that computes an intermediate variable (Lepori et al. 2023).

Masks on ``target_layers`` are trained so that the cached ``probe_vector``
clusters by label: the loss is the soft-nearest-neighbour loss on cosine
distance (same label = neighbours, see [`snn_loss`][modeopt_masks.probing.snn_loss])
plus ``l0_lambda * L0``. ``objective="linear"`` trains a linear probe on the
vector instead (cross-entropy). Evaluate the found circuit with
[`nearest_centroid_accuracy`][modeopt_masks.probing.evaluation.nearest_centroid_accuracy] on
collected vectors, and ablate it with ``mm.set_ablation(probe.model, ...)``
(compare with [`compare_ablations`][modeopt_masks.probing.evaluation.compare_ablations]).

Examples:
    >>> import torch, transformers
    >>> from modeopt_masks.probing import CircuitProbe, CircuitProbeConfig
    >>> gpt = transformers.GPT2Model(transformers.GPT2Config(
    ...     n_embd=32, n_layer=2, n_head=2, vocab_size=50, n_positions=16))
    >>> cp = CircuitProbe(CircuitProbeConfig(
    ...     probe_vector="mlp_update_0", target_layers=["h.0.mlp.*"],
    ...     mask_hparams={"mask_init_value": 0.5}), gpt)
    >>> ids = torch.randint(0, 50, (4, 3)); last = torch.zeros(4, 3, dtype=torch.bool)
    >>> last[:, -1] = True
    >>> out = cp(input_ids=ids, labels=torch.tensor([0, 1, 0, 1]), token_mask=last)
    >>> out.loss.backward(); cp.model.h[0].mlp.c_fc.weight_mask.logits.grad is not None
    True
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator

from .masked_probe import MaskedProbe, MaskedProbeConfig
from .snn_loss import soft_nearest_neighbour_loss


class CircuitProbeConfig(MaskedProbeConfig):
    """[`MaskedProbeConfig`][modeopt_masks.probing.masked_probe.MaskedProbeConfig] plus the objective.

    ``objective``: ``"snn"`` (soft nearest neighbours, ``snn_temperature``) or
    ``"linear"`` (a linear probe with ``n_classes`` outputs). ``target_layers``
    must name at least one module: circuit probing trains masks.

    Attributes:
        mask_method: The mask mode of the masked layers.
        mask_hparams: Rule fields, mode options and ``ablation``.
        target_layers: Module names or globs to mask.
        freeze_base: Train only masks and probe; the base stays in eval.
        probe_vector: The cached vector probed, e.g. ``"mlp_update_3"``.
        add_l0: Add ``l0_lambda * L0`` to the loss in training.
        l0_lambda: Weight of the L0 penalty.
        labeling: ``"sequence"`` (one label per input) or ``"token"`` (per position).
        model_type: The family or HF ``model_type`` (``None``: read from the model).
        hidden_size: Size of the probed vector (``None``: from the model's config).
        use_cache: Not a setting (the HF ``Trainer`` writes it).
        objective: ``"snn"`` (soft nearest neighbours) or ``"linear"`` (a linear probe).
        snn_temperature: Temperature of the SNN loss.
        n_classes: Outputs of the linear probe (``objective="linear"``).

    Examples:
        >>> from modeopt_masks.probing import CircuitProbeConfig
        >>> CircuitProbeConfig(probe_vector="mlp_update_0", target_layers=["*"]).objective
        'snn'
    """

    objective: Literal["snn", "linear"] = "snn"
    snn_temperature: float = Field(1.0, gt=0)
    n_classes: int | None = Field(None, gt=1)

    @model_validator(mode="after")
    def _check(self) -> CircuitProbeConfig:
        if not self.target_layers:
            raise ValueError("circuit probing trains masks: give target_layers (names or globs)")
        if self.objective == "linear" and self.n_classes is None:
            raise ValueError("objective='linear' needs n_classes")
        return self


class CircuitProbe(MaskedProbe):
    """Mask training against the SNN (or linear-probe) loss on one cached vector.

    ``forward`` returns [`ProbeOutput`][modeopt_masks.probing.probe_output.ProbeOutput]: ``loss`` (with ``l0_lambda * L0``
    in training), ``hidden_states`` (the selected vectors ``[n, hidden]``),
    ``labels`` and, for the linear objective, ``logits``.

    Args:
        config: A [`CircuitProbeConfig`][modeopt_masks.probing.circuit_probe.CircuitProbeConfig]
            or its fields as a dict.
        model: The base model (masked in place).

    Examples:
        >>> import transformers
        >>> from modeopt_masks.probing import CircuitProbe
        >>> gpt = transformers.GPT2Model(transformers.GPT2Config(
        ...     n_embd=16, n_layer=1, n_head=2, vocab_size=20, n_positions=8))
        >>> cp = CircuitProbe({"probe_vector": "mlp_stream_0", "target_layers": ["h.0.attn.c_attn"],
        ...                    "mask_hparams": {"mask_init_value": 1.0}}, gpt)
        >>> cp.compute_l0_statistics()["layer2l0"]
        {'h.0.attn.c_attn': 768.0}
    """

    config: CircuitProbeConfig

    def __init__(self, config: CircuitProbeConfig | dict, model: nn.Module) -> None:
        if isinstance(config, dict):
            config = CircuitProbeConfig.model_validate(config)
        super().__init__(config, model)
        self.probe: nn.Module | None = None
        if config.objective == "linear":
            assert config.n_classes is not None
            self.probe = nn.Linear(self.hidden_size, config.n_classes).to(self._device())

    def _score(
        self,
        vectors: torch.Tensor,
        chosen: torch.Tensor,
        labels: torch.Tensor | None,
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        logits = None
        if self.probe is not None:
            dtype = next(self.probe.parameters()).dtype
            logits = self.probe(chosen.to(dtype))
        if labels is None:
            return None, logits
        if logits is not None:
            return F.cross_entropy(logits.float(), labels.long()), logits
        return soft_nearest_neighbour_loss(chosen, labels, self.config.snn_temperature), None
