"""``SubnetworkProbe``: a mask over chosen layers trained jointly with a probe (Cao et al. 2021).

A linear probe (or, with ``intermediate_size``, a one-hidden-layer MLP) reads
one cached vector (``probe_vector``). The masks come from
[`modeopt_masks.convert`][modeopt_masks.conversion.convert]; with no ``target_layers`` it is plain probing of
a frozen model.

Examples:
    >>> import torch, transformers
    >>> from modeopt_masks.probing import SubnetworkProbe, SubnetworkProbeConfig
    >>> bert = transformers.BertModel(transformers.BertConfig(
    ...     hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...     intermediate_size=64, vocab_size=50))
    >>> probe = SubnetworkProbe(SubnetworkProbeConfig(
    ...     probe_vector="mlp_update_1", n_classes=3, labeling="token",
    ...     target_layers=["encoder.layer.1.*"], l0_lambda=1e-4), bert)
    >>> out = probe(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[0, 2, -100]]))
    >>> tuple(out.logits.shape), out.loss.requires_grad
    ((1, 3, 3), True)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, field_validator

from .masked_probe import IGNORE_INDEX, MaskedProbe, MaskedProbeConfig


class SubnetworkProbeConfig(MaskedProbeConfig):
    """[`MaskedProbeConfig`][modeopt_masks.probing.masked_probe.MaskedProbeConfig] plus ``n_classes`` and ``intermediate_size`` (``None``: linear).

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
        n_classes: Number of classes of the probe.
        intermediate_size: Hidden width of an MLP probe (``None``: a linear probe).

    Examples:
        >>> from modeopt_masks.probing import SubnetworkProbeConfig
        >>> SubnetworkProbeConfig(probe_vector="attn_update_0", n_classes=2).target_layers
        []
    """

    n_classes: int = Field(gt=1)
    intermediate_size: int | None = Field(None, gt=0)

    @field_validator("intermediate_size", mode="before")
    @classmethod
    def _neurosurgeon_linear(cls, v: object) -> object:
        return None if v == -1 else v  # NeuroSurgeon spelled "linear probe" as -1


class SubnetworkProbe(MaskedProbe):
    """Masks + probe; ``forward`` returns [`ProbeOutput`][modeopt_masks.probing.probe_output.ProbeOutput] (``loss``, ``logits``).

    ``logits`` are ``[batch, n_classes]`` for sequence labelling and
    ``[batch, seq, n_classes]`` (every position) for token labelling; the loss is
    the cross-entropy over the labelled positions, plus ``l0_lambda * L0`` in
    training. Train ``[p for p in probe.parameters() if p.requires_grad]``.

    Args:
        config: A [`SubnetworkProbeConfig`][modeopt_masks.probing.subnetwork_probe.SubnetworkProbeConfig]
            or its fields as a dict.
        model: The base model (masked in place).

    Examples:
        >>> import torch, transformers
        >>> from modeopt_masks.probing import SubnetworkProbe
        >>> gpt = transformers.GPT2Model(transformers.GPT2Config(
        ...     n_embd=16, n_layer=1, n_head=2, vocab_size=20, n_positions=8))
        >>> probe = SubnetworkProbe({"probe_vector": "attn_update_0", "n_classes": 2}, gpt)
        >>> out = probe(input_ids=torch.tensor([[1, 2]]), labels=torch.tensor([1]),
        ...             token_mask=torch.tensor([[False, True]]))
        >>> tuple(out.logits.shape), [n for n, p in probe.named_parameters() if p.requires_grad]
        ((1, 2), ['probe.weight', 'probe.bias'])
    """

    config: SubnetworkProbeConfig

    def __init__(self, config: SubnetworkProbeConfig | dict, model: nn.Module) -> None:
        if isinstance(config, dict):
            config = SubnetworkProbeConfig.model_validate(config)
        super().__init__(config, model)
        size, n = self.hidden_size, config.n_classes
        if config.intermediate_size is None:
            self.probe: nn.Module = nn.Linear(size, n)
        else:
            self.probe = nn.Sequential(
                nn.Linear(size, config.intermediate_size), nn.ReLU(),
                nn.Linear(config.intermediate_size, n),
            )
        self.probe.to(self._device())

    def _score(
        self,
        vectors: torch.Tensor,
        chosen: torch.Tensor,
        labels: torch.Tensor | None,
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        head_dtype = next(self.probe.parameters()).dtype
        if self.config.labeling == "sequence":
            logits = selected = self.probe(chosen.to(head_dtype))
        else:  # logits at every position; the loss over the labelled ones
            logits = self.probe(vectors.to(head_dtype))
            selected = logits[positions]
        if labels is None:
            return None, logits
        loss = F.cross_entropy(selected.float(), labels.long(), ignore_index=IGNORE_INDEX)
        return loss, logits
