"""``CircuitModel`` / ``CircuitConfig``: the NeuroSurgeon circuit-discovery interface on our modes.

``CircuitModel(config, model)`` converts the layers named by ``config.target_layers``
(exact module names or globs) with one of the mask modes through [`mm.convert`][modeopt_masks.conversion.convert],
so everything else (save/restore, export, ablations, ``mm.l0_loss``) works on
``circuit.wrapped_model`` as on any converted model. In training with ``add_l0``
its forward adds ``l0_lambda * mm.l0_loss(model)`` (or, with a
[`DensityController`][modeopt_masks.training.DensityController], the controller's penalty) to
the loss of a Hugging Face output.

Examples:
    >>> import torch, torch.nn as nn
    >>> from modeopt_masks.circuit import CircuitConfig, CircuitModel
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)
    ...     def forward(self, x, labels=None):
    ...         logits = self.fc2(torch.relu(self.fc1(x)))
    ...         return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}
    >>> cfg = CircuitConfig(mask_method="continuous_sparsification", target_layers=["fc*"],
    ...                     mask_hparams={"mask_init_value": 0.5}, l0_lambda=1e-3)
    >>> circuit = CircuitModel(cfg, Net())   # starts in training mode, as any new module
    >>> out = circuit(torch.randn(3, 4), labels=torch.tensor([0, 1, 1]))
    >>> sorted(circuit.compute_l0_statistics()["layer2maxl0"].items())
    [('fc1', 32), ('fc2', 16)]
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from collections.abc import Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from pydantic import ConfigDict, Field

from .conversion import convert, export
from .mask_controls import (
    get_temperature,
    l0_loss,
    l0_stats,
    masked_modules,
    set_ablation,
    set_temperature,
    use_masks,
)
from .masking import hard_masks
from .targets import MaskTargets, resolve_targets

if TYPE_CHECKING:
    from .training import DensityController

_WRAPPED = "wrapped_model"


class CircuitConfig(MaskTargets):
    """How [`CircuitModel`][modeopt_masks.circuit.CircuitModel] masks a model (NeuroSurgeon's ``CircuitConfig``).

    ``mask_method``, ``mask_hparams``, ``target_layers``, ``freeze_base``: see
    [`MaskTargets`][modeopt_masks.targets.MaskTargets] (shared with the probes; validated
    when the config is built). ``target_layers=[]`` (the default) masks nothing.
    Globs mean exactly what they match: output heads are included when a glob
    covers them. ``add_l0`` / ``l0_lambda``: add ``l0_lambda * L0`` to the output's
    loss in training (L0 as [`modeopt_masks.l0_loss`][modeopt_masks.mask_controls.l0_loss] counts it: one per mask
    entry, so a neuron mask counts units).

    Attributes:
        mask_method: The mask mode (e.g. ``"continuous_sparsification"``, ``"hard_concrete"``).
        mask_hparams: Rule fields and mode options for that mode.
        target_layers: Module names or globs to mask (``[]``: none).
        freeze_base: Train only the masks.
        add_l0: Add ``l0_lambda * L0`` to the loss in training.
        l0_lambda: Weight of the L0 penalty.
        use_cache: Not a setting (the HF ``Trainer`` writes it); excluded from dumps.

    Examples:
        >>> from modeopt_masks.circuit import CircuitConfig
        >>> CircuitConfig(mask_method="hard_concrete", target_layers=["*.query"],
        ...               mask_hparams={"mask_init_percentage": 0.9}).l0_lambda
        1e-08
        >>> try:
        ...     CircuitConfig(mask_method="hard_concrete", target_layers=["x"],
        ...                   mask_hparams={"mask_init_value": 0.1})
        ... except ValueError as e:
        ...     print("mask_init_percentage" in str(e))
        True
        >>> CircuitConfig().to_dict()["target_layers"]
        []
    """

    model_config = ConfigDict(validate_assignment=True)

    add_l0: bool = True
    l0_lambda: float = Field(1e-8, ge=0)
    #: Not a setting: the HF ``Trainer`` writes ``model.config.use_cache``; kept out of dumps.
    use_cache: bool | None = Field(None, exclude=True, repr=False)

    # -- the serialisation methods of a transformers ``PretrainedConfig`` --------------------
    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (``PretrainedConfig.to_dict``)."""
        return self.model_dump()

    def to_json_string(self) -> str:
        """The settings as JSON (``PretrainedConfig.to_json_string``)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        """Write ``circuit_config.json`` into ``save_directory`` (created if missing).

        Examples:
            >>> import tempfile
            >>> from modeopt_masks.circuit import CircuitConfig
            >>> cfg = CircuitConfig(target_layers=["fc*"], l0_lambda=1e-4)
            >>> with tempfile.TemporaryDirectory() as d:
            ...     cfg.save_pretrained(d)
            ...     CircuitConfig.from_pretrained(d) == cfg
            True
        """
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, _CONFIG_FILE), "w") as f:
            f.write(self.to_json_string())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> CircuitConfig:
        """Read what `save_pretrained` wrote."""
        with open(os.path.join(directory, _CONFIG_FILE)) as f:
            return cls.model_validate(json.load(f))


_CONFIG_FILE = "circuit_config.json"


class CircuitModel(nn.Module):
    """Wrap ``model``, converting ``config.target_layers`` with ``config.mask_method``.

    The conversion is [`modeopt_masks.convert`][modeopt_masks.conversion.convert] (atomic: on any error the model
    is left as it was). ``forward`` passes everything through; in training with
    ``add_l0`` it adds ``l0_lambda * mm.l0_loss(model)`` to the output's ``loss``
    (a ``ModelOutput``/dict ``"loss"``, or the first element of a tuple when that
    is a scalar tensor). With ``density_controller`` the controller's penalty is
    added instead of ``l0_lambda * L0`` (ask for a density, don't tune a lambda).

    Args:
        config: A [`CircuitConfig`][modeopt_masks.circuit.CircuitConfig] or its fields as a dict.
        model: The model to mask (converted in place).
        density_controller: A [`DensityController`][modeopt_masks.training.DensityController]
            whose penalty replaces ``l0_lambda * L0``.

    Raises:
        ValueError: When a target matches no maskable module (the model is unchanged).

    Examples:
        >>> import torch, torch.nn as nn
        >>> from modeopt_masks.circuit import CircuitConfig, CircuitModel
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2))
        >>> circuit = CircuitModel(CircuitConfig(mask_method="magnitude_pruning",
        ...                                      target_layers=["0", "2"]), net)
        >>> _ = circuit.train()
        >>> net[1].training, net[0].weight.requires_grad   # frozen base stays in eval
        (False, False)
        >>> circuit.compute_l0_statistics()["total_l0"]
        12.0
    """

    def __init__(
        self,
        config: CircuitConfig | Mapping[str, Any],
        model: nn.Module,
        density_controller: DensityController | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, CircuitConfig):
            config = CircuitConfig.model_validate(dict(config))
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.config = config
        if config.target_layers:
            model = convert(model, config.mode_spec(model))
        elif config.freeze_base:  # no masks: a frozen model (plain probing)
            for param in model.parameters():
                param.requires_grad_(False)
        self.wrapped_model = model
        self.density_controller = density_controller
        self._warned_no_loss = False
        # ``forward`` advertises the wrapped model's signature (HF Trainer reads it to keep
        # the dataset columns the model takes)
        self.forward = _ForwardWithSignature(self)  # type: ignore[method-assign]
        if config.ablation != "none" and config.target_layers:
            set_ablation(model, config.ablation)
        self.train()  # a new module trains, as nn.Module (and NeuroSurgeon's CircuitModel) does

    def train(self, mode: bool = True) -> CircuitModel:  # noqa: D102 - nn.Module.train
        super().train(mode)
        if self.config.freeze_base and not self.config.target_layers:
            self.wrapped_model.train(False)  # with masks, the converted root keeps the base in eval
        return self

    # -- targets -------------------------------------------------------------------------
    @staticmethod
    def resolve_targets(targets: Iterable[str], model: nn.Module) -> dict[str, list[str]]:
        """Group target names/globs by the type key of the supported modules they match.

        [`modeopt_masks.targets.resolve_targets`][modeopt_masks.targets.resolve_targets] (the probes use it too): a
        target that matches no module, or only unsupported ones, raises a
        ``ValueError`` naming it and what is there.

        Examples:
            >>> import torch.nn as nn
            >>> net = nn.Sequential(nn.Linear(2, 2), nn.Conv1d(2, 2, 1), nn.ReLU())
            >>> CircuitModel.resolve_targets(["0", "*"], net)
            {'nn.Linear': ['0', '*'], 'nn.Conv1d': ['*']}
        """
        return resolve_targets(model, targets)

    # -- forward -------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the wrapped model; in training with ``add_l0`` add the L0 term to its loss."""
        output = self.wrapped_model(*args, **kwargs)
        if not (self.training and self.config.add_l0):
            return output
        loss = _get_loss(output)
        if loss is None:
            if not self._warned_no_loss:
                self._warned_no_loss = True
                warnings.warn(
                    "CircuitModel(add_l0=True) got an output without a loss (pass labels, or "
                    "add circuit.l0_term() to your own loss); no L0 term was added",
                    stacklevel=2,
                )
            return output
        return _set_loss(output, loss + self.l0_term().to(loss.device, loss.dtype))

    def l0_term(self) -> torch.Tensor:
        """The regulariser the forward adds: ``l0_lambda * mm.l0_loss`` or the controller's."""
        if not self.config.target_layers:
            return torch.zeros(())
        if self.density_controller is not None:
            return self.density_controller(self.wrapped_model)
        return self.config.l0_lambda * l0_loss(self.wrapped_model)

    # -- NeuroSurgeon interface ----------------------------------------------------------
    def compute_l0_statistics(self) -> dict[str, Any]:
        """``total_l0``, ``max_l0``, ``layer2l0``, ``layer2maxl0`` of the hard circuit.

        Counts are hard (eval masks) whatever the train state, as in NeuroSurgeon;
        nothing else about the model's state changes. Counts are mask entries (a
        neuron mask counts units; ``modeopt_masks.compat.neurosurgeon`` counts the
        weights they gate, as NeuroSurgeon does).
        """
        if not self.config.target_layers:
            return {"total_l0": 0.0, "max_l0": 0, "layer2l0": {}, "layer2maxl0": {}}
        with hard_masks(self.wrapped_model):
            return l0_stats(self.wrapped_model)

    @property
    def temperature(self) -> float | None:
        """The masks' temperature (``None`` for ``magnitude_pruning``, which has none).

        Examples:
            >>> import torch.nn as nn
            >>> from modeopt_masks.circuit import CircuitConfig, CircuitModel
            >>> c = CircuitModel(CircuitConfig(target_layers=["0"]), nn.Sequential(nn.Linear(2, 2)))
            >>> c.temperature = 10.0; c.temperature
            10.0
        """
        if self.config.mask_method == "magnitude_pruning":
            return None
        return get_temperature(self.wrapped_model)

    @temperature.setter
    def temperature(self, value: float) -> None:
        if self.config.mask_method == "magnitude_pruning":
            warnings.warn("magnitude_pruning masks have no temperature; ignored", stacklevel=2)
            return
        set_temperature(self.wrapped_model, value)

    def set_ablate_mode(self, ablation: str, force_resample: bool = False) -> None:
        """Set the ablation mode of every masked layer (one of ``mm.ABLATIONS``).

        Examples:
            >>> import torch.nn as nn
            >>> from modeopt_masks.circuit import CircuitConfig, CircuitModel
            >>> c = CircuitModel(CircuitConfig(mask_method="magnitude_pruning",
            ...                                target_layers=["0"]), nn.Sequential(nn.Linear(4, 4)))
            >>> c.set_ablate_mode("zero_ablate"); c.wrapped_model[0].ablation
            'zero_ablate'
        """
        set_ablation(self.wrapped_model, ablation, force_resample=force_resample)

    def use_masks(self, value: bool, name_list: Iterable[str] | None = None) -> None:
        """Switch masks on/off for all, or the named (exact or glob) masked layers.

        Names are relative to the wrapped model; a ``"wrapped_model."`` prefix (the
        CircuitModel's own module names, as NeuroSurgeon used) is accepted too.

        Examples:
            >>> import torch.nn as nn
            >>> from modeopt_masks.circuit import CircuitConfig, CircuitModel
            >>> c = CircuitModel(CircuitConfig(target_layers=["*"]),
            ...                  nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
            >>> c.use_masks(False, ["wrapped_model.1"])
            >>> [m.use_masks for m in c.wrapped_model]
            [True, False]
        """
        names = None
        if name_list is not None:
            name_list = [name_list] if isinstance(name_list, str) else list(name_list)
            prefix = _WRAPPED + "."
            names = [n[len(prefix):] if n.startswith(prefix) else n for n in name_list]
        use_masks(self.wrapped_model, value, names)

    def masked_layers(self) -> list[str]:
        """Names (in the wrapped model) of the converted layers."""
        return list(masked_modules(self.wrapped_model))

    def export(self) -> nn.Module:
        """Bake the hard masks into the weights; returns the plain wrapped model."""
        return export(self.wrapped_model)


class _ForwardWithSignature:
    """``CircuitModel.forward`` bound to one instance, with the wrapped model's signature."""

    def __init__(self, owner: CircuitModel) -> None:
        self.owner = owner

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.owner.wrapped_model.forward)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return type(self.owner).forward(self.owner, *args, **kwargs)


def _get_loss(output: Any) -> torch.Tensor | None:
    if isinstance(output, Mapping):
        loss = output.get("loss")
        return loss if isinstance(loss, torch.Tensor) else None
    if isinstance(output, tuple | list) and output:
        first = output[0]
        if isinstance(first, torch.Tensor) and first.dim() == 0 and first.is_floating_point():
            return first
    return None


def _set_loss(output: Any, loss: torch.Tensor) -> Any:
    if isinstance(output, MutableMapping):  # ModelOutput: item and attribute both updated
        output["loss"] = loss
        return output
    if isinstance(output, tuple):
        return (loss, *output[1:])
    output[0] = loss
    return output
