"""What subnetwork probing and circuit probing share: masks on chosen layers + one cached vector.

[`MaskedProbeConfig`][modeopt_masks.probing.masked_probe.MaskedProbeConfig] says which layers get a mask (through
[`modeopt_masks.convert`][modeopt_masks.conversion.convert]; no second masking implementation), which cached
vector is probed (``probe_vector``, e.g. ``"mlp_update_3"``; see
[`ResidualUpdateModel`][modeopt_masks.probing.residual_update_model.ResidualUpdateModel]) and how labels map to
positions (``labeling``). [`MaskedProbe`][modeopt_masks.probing.masked_probe.MaskedProbe] wraps the model and picks, on
each forward, one vector per label.

Label layouts:

* ``labeling="sequence"``: ``labels`` ``[batch]``; ``token_mask`` ``[batch, seq]``
  (bool) with exactly one ``True`` per row, the position whose vector is probed
  (e.g. the CLS token, or the last token of a decoder).
* ``labeling="token"``: ``labels`` ``[batch, seq]`` with ``-100`` where there is
  no label; an optional ``token_mask`` restricts the positions further (a label
  outside it is an error). Labels may also be given one per ``True`` of
  ``token_mask``: flat, or NeuroSurgeon's ``[batch, n]`` rows padded with ``-1``.
* NeuroSurgeon's ``[batch, 1]`` sequence labels are accepted too.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import AliasChoices, ConfigDict, Field, field_validator

from ..conversion import convert
from ..mask_controls import l0_loss, l0_stats, masked_modules, set_ablation
from ..masking import hard_masks
from ..targets import MaskTargets
from .probe_output import ProbeOutput
from .residual_update_model import ResidualUpdateModel, ResidualUpdateModelConfig

IGNORE_INDEX = -100
#: NeuroSurgeon pads token labels ``[batch, n_labels]`` with -1.
NS_LABEL_PAD = -1
_VECTOR = re.compile(r"^(attn|mlp)_(update|stream)_(\d+)$")


class MaskedProbeConfig(MaskTargets):
    """Shared probe settings (see the module docstring).

    ``target_layers`` (``[]``: no mask), ``mask_method``, ``mask_hparams`` (rule
    fields, mode options such as ``scope``, and ``ablation``) and ``freeze_base``
    (only masks and probe train; the base stays in eval): the mask-target
    front-end shared with [`CircuitConfig`][modeopt_masks.circuit.CircuitConfig]
    ([`MaskTargets`][modeopt_masks.targets.MaskTargets]), validated when the config is
    built. ``add_l0`` / ``l0_lambda``: add ``l0_lambda * mm.l0_loss`` to the loss in
    training. ``hidden_size``: the probed vector's size, read from the model's
    config when ``None``.

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

    Examples:
        >>> from modeopt_masks.probing import SubnetworkProbeConfig
        >>> cfg = SubnetworkProbeConfig(probe_vectors="mlp_update_0", n_classes=2,
        ...                             mask_hparams={"ablation": "zero_ablate"})
        >>> cfg.probe_vectors, cfg.ablation
        ('mlp_update_0', 'zero_ablate')
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    #: NeuroSurgeon's names ``probe_vectors`` / ``probe_activations`` are accepted too.
    probe_vector: str = Field(
        validation_alias=AliasChoices("probe_vector", "probe_vectors", "probe_activations")
    )
    add_l0: bool = True
    l0_lambda: float = Field(1e-8, ge=0)
    labeling: Literal["sequence", "token"] = "sequence"
    model_type: str | None = None
    hidden_size: int | None = Field(None, gt=0)
    #: Not a setting: the HF ``Trainer`` writes ``model.config.use_cache`` (here the probe's
    #: config); the one field that may be assigned on this frozen config; kept out of dumps.
    use_cache: bool | None = Field(None, exclude=True, repr=False)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "use_cache":  # frozen otherwise: ``Trainer.__init__`` would raise
            self.__dict__[name] = value
            return
        super().__setattr__(name, value)

    @property
    def probe_vectors(self) -> str:
        """NeuroSurgeon's name of ``probe_vector``."""
        return self.probe_vector

    @field_validator("probe_vector")
    @classmethod
    def _vector(cls, v: str) -> str:
        if not _VECTOR.match(v):
            raise ValueError(
                f"probe_vector {v!r} must look like attn_update_3, mlp_update_0, attn_stream_1 "
                "or mlp_stream_2"
            )
        return v

    def resid_config(self) -> ResidualUpdateModelConfig:
        """The [`ResidualUpdateModelConfig`][modeopt_masks.probing.residual_update_model.ResidualUpdateModelConfig] that caches exactly ``probe_vector``."""
        match = _VECTOR.match(self.probe_vector)
        assert match is not None
        block, kind, layer = match.groups()
        return ResidualUpdateModelConfig(
            model_type=self.model_type,
            target_layers=[int(layer)],
            attn=block == "attn",
            mlp=block == "mlp",
            updates=kind == "update",
            stream=kind == "stream",
        )


def hidden_size_of(model: nn.Module) -> int:
    """``hidden_size`` (or ``n_embd``) of the first submodule with an HF config."""
    for module in model.modules():
        config = getattr(module, "config", None)
        for attr in ("hidden_size", "n_embd"):
            value = getattr(config, attr, None)
            if isinstance(value, int):
                return value
    raise ValueError("cannot read the hidden size from the model; set hidden_size in the config")


class MaskedProbe(nn.Module):
    """Base of [`SubnetworkProbe`][modeopt_masks.probing.subnetwork_probe.SubnetworkProbe] and [`CircuitProbe`][modeopt_masks.probing.circuit_probe.CircuitProbe] (not used directly).

    ``wrapped_model`` is the [`ResidualUpdateModel`][modeopt_masks.probing.residual_update_model.ResidualUpdateModel] around the (masked)
    model; ``model`` is the model itself. A new probe is in training mode; call
    ``.eval()`` for hard masks (ablations, evaluation).

    Saving: ``torch.save(probe.state_dict(), path)`` keeps masks and probe head; to load,
    build the probe with the same config on a fresh base model and ``load_state_dict``.
    ``mm.save(probe.model, dir)`` / ``mm.restore(fresh_base, dir)`` keeps the masked model
    alone (no probe head). Copies (``copy.deepcopy``, ``pickle``) cache and train on their own.

    Args:
        config: The probe's config.
        model: The base model (masked in place).
    """

    #: the class of ``wrapped_model`` (a subclass may use its own ``ResidualUpdateModel``)
    residual_model_class: type[ResidualUpdateModel] = ResidualUpdateModel

    def __init__(self, config: MaskedProbeConfig, model: nn.Module) -> None:
        super().__init__()
        self.config = config
        resid = self.residual_model_class(config.resid_config(), model)  # validates before converting
        resid.remove_hooks()
        self.hidden_size = config.hidden_size or hidden_size_of(model)
        self.has_masks = bool(config.target_layers)
        if self.has_masks:
            model = convert(model, config.mode_spec(model))
            if config.ablation != "none":
                set_ablation(model, config.ablation)
        elif config.freeze_base:
            for param in model.parameters():
                param.requires_grad_(False)
        resid.wrapped_model = model
        resid.add_hooks()
        self.wrapped_model = resid
        self.train()  # a new module trains, as nn.Module does (the base stays eval if frozen)

    @property
    def model(self) -> nn.Module:
        """The probed (masked) model."""
        return self.wrapped_model.wrapped_model

    def train(self, mode: bool = True) -> MaskedProbe:  # noqa: D102 - nn.Module.train
        super().train(mode)
        if self.config.freeze_base and not self.has_masks:
            self.model.train(False)  # with masks, freeze_base keeps the base in eval already
        return self

    def l0_term(self) -> torch.Tensor | None:
        """``l0_lambda * L0`` when it belongs in the loss (training, masks, ``add_l0``)."""
        if not (self.training and self.has_masks and self.config.add_l0):
            return None
        return self.config.l0_lambda * l0_loss(self.model)

    def _with_l0(self, loss: torch.Tensor) -> torch.Tensor:
        l0 = self.l0_term()
        return loss if l0 is None else loss + l0.to(loss.device)

    def _device(self) -> torch.device:
        return next(iter(self.model.parameters()), torch.zeros(())).device

    def compute_l0_statistics(self) -> dict:
        """``total_l0``, ``max_l0``, ``layer2l0``, ``layer2maxl0`` of the hard circuit.

        Counts are hard (eval masks) whatever the train state, as in
        [`CircuitModel.compute_l0_statistics`][modeopt_masks.circuit.CircuitModel.compute_l0_statistics].
        """
        if not masked_modules(self.model):
            raise ValueError("this probe has no masked layers (target_layers is empty)")
        with hard_masks(self.model):
            return l0_stats(self.model)

    # -- forward ------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> ProbeOutput | tuple[torch.Tensor, ...]:
        """Run the model and score ``probe_vector`` (``labels``/``token_mask``: module doc).

        The loss (with ``labels``) is the subclass's objective plus, in training,
        ``l0_lambda * L0``. The common model inputs are named parameters because the HF
        ``Trainer`` (``remove_unused_columns=True``, its default) silently drops every batch
        key that is not one; pass any other model input with ``remove_unused_columns=False``.
        ``return_dict=False`` gives the present fields as a tuple (``ProbeOutput.to_tuple``).
        """
        named = {"attention_mask": attention_mask, "token_type_ids": token_type_ids,
                 "position_ids": position_ids, "pixel_values": pixel_values}
        kwargs = {**{k: v for k, v in named.items() if v is not None}, **kwargs}
        vectors = self._run(input_ids, kwargs)
        chosen, chosen_labels, positions = self.select(vectors, labels, token_mask)
        loss, logits = self._score(vectors, chosen, chosen_labels, positions)
        if loss is not None:
            loss = self._with_l0(loss)
        out = ProbeOutput(loss=loss, logits=logits, hidden_states=chosen, labels=chosen_labels)
        return out if return_dict else out.to_tuple()

    def _score(
        self,
        vectors: torch.Tensor,
        chosen: torch.Tensor,
        labels: torch.Tensor | None,
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(objective loss or None without labels, logits or None)`` of the selected vectors."""
        raise NotImplementedError

    # -- the probed vectors -----------------------------------------------------------------
    def _run(self, input_ids: torch.Tensor | None, kwargs: dict[str, Any]) -> torch.Tensor:
        if input_ids is not None:
            kwargs = {"input_ids": input_ids, **kwargs}
        self.wrapped_model(**kwargs)
        name = self.config.probe_vector
        if name not in self.wrapped_model.vector_cache:
            raise RuntimeError(f"the forward cached no {name!r}; were the hooks removed?")
        return self.wrapped_model.vector_cache[name]

    def select(
        self,
        vectors: torch.Tensor,
        labels: torch.Tensor | None,
        token_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(vectors [n, hidden], labels [n] or None, positions [batch, seq] bool)``."""
        batch, seq = vectors.shape[:2]
        if token_mask is not None:
            token_mask = token_mask.to(device=vectors.device).bool()
            if token_mask.shape != (batch, seq):
                raise ValueError(
                    f"token_mask must be [batch, seq] = {(batch, seq)}, got {tuple(token_mask.shape)}"
                )
        if self.config.labeling == "sequence":
            if token_mask is None:
                raise ValueError(
                    "labeling='sequence' needs token_mask [batch, seq] with one True per row "
                    "(the position to probe, e.g. the CLS or the last token)"
                )
            if not bool((token_mask.sum(dim=1) == 1).all()):
                raise ValueError("labeling='sequence': token_mask needs exactly one True per row")
            positions = token_mask
            if labels is not None and labels.shape == (batch, 1):
                labels = labels.reshape(batch)  # NeuroSurgeon's [batch, 1]
            if labels is not None and labels.shape != (batch,):
                raise ValueError(
                    f"sequence labels must be [batch] or [batch, 1] = [{batch}], got "
                    f"{tuple(labels.shape)}"
                )
            return vectors[positions], labels, positions
        # token labelling
        if labels is not None and token_mask is not None and (
            labels.dim() == 1 or bool((labels == NS_LABEL_PAD).any()) or labels.shape != (batch, seq)
        ):  # one label per True of token_mask: flat, or NeuroSurgeon's rows padded with -1
            flat = labels.reshape(-1)
            flat = flat[flat != NS_LABEL_PAD] if labels.dim() > 1 else flat
            if int(token_mask.sum()) != flat.numel():
                raise ValueError(
                    f"token_mask selects {int(token_mask.sum())} positions but labels give "
                    f"{flat.numel()} (flat labels, or rows padded with -1, are read one per True "
                    "of token_mask)"
                )
            return vectors[token_mask], flat, token_mask
        if labels is not None and labels.shape != (batch, seq):
            raise ValueError(
                f"token labels must be [batch, seq] = {(batch, seq)} with -100 where unlabelled, "
                f"flat with one per True of token_mask, or [batch, n] padded with -1; got "
                f"{tuple(labels.shape)}"
            )
        positions = torch.ones(batch, seq, dtype=torch.bool, device=vectors.device)
        if labels is not None:
            positions = positions & (labels != IGNORE_INDEX)
            if token_mask is not None and bool((positions & ~token_mask).any()):
                raise ValueError(
                    "labels [batch, seq] label positions outside token_mask; use -100 for "
                    "unlabelled positions, or give one label per True of token_mask "
                    "(flat, or rows padded with -1)"
                )
        if token_mask is not None:
            positions = positions & token_mask
        return vectors[positions], None if labels is None else labels[positions], positions
