"""What the calibrated one-shot modes (``wanda``, ``sparsegpt``) share.

Their masks are fixed boolean ``keep`` buffers, the same masks as
``magnitude_pruning`` (ablations, ``use_masks``, ``l0_stats``, ``save`` /
``restore`` and ``export`` work as for any mask mode). ``convert`` computes them
from calibration data given in the config, with the calibration options of
gradnas: ``data_loader`` (an iterable of batches), ``collect_func(batch)`` (the
model input; default the batch, dicts as keyword arguments),
``max_iter_data_loader`` and ``progress`` (a tqdm bar), plus ``sequential``,
``pruned_inputs`` and ``blocks`` (see :mod:`modeopt_masks.calibration`). The data
options are used once and dropped: neither the mode history nor ``save`` keeps
them, and ``restore`` needs no data (the saved masks are loaded).

Rule fields: ``sparsity`` (fraction of each layer's weights removed) or
``pattern="N:M"`` (keep N of every M consecutive input weights; the fraction is
then ``(M - N) / M``). Weights or calibration inputs with NaN/inf raise a
``ValueError`` and leave the model as it was (the weights a mode rewrites are
kept on disk meanwhile: :class:`SpilledWeights`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any, ClassVar, cast

import torch
import torch.nn as nn
from pydantic import Field, model_validator

from ..calibration import Statistic, calibrate
from ..masking import MaskedLayer, MaskTechnique
from ..registry import Metadata
from ..rules import ModeConfig, match_modules
from ..selection import check_finite
from ..sparse_export import semi_structured_export
from .magnitude_pruning import MagnitudeMask
from .mask_mode import MaskModeConfig, MaskModeDescriptor, PatternRule, _kind_key


class OneShotRule(PatternRule):
    """Per-layer settings: ``sparsity`` or an ``"N:M"`` ``pattern``."""

    sparsity: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _weights_only(self) -> OneShotRule:
        if self.mask_unit != "weight" or self.mask_bias:
            raise ValueError("one-shot masks are per weight entry: mask_unit='weight', "
                             "mask_bias=False (use magnitude_pruning for neuron masks)")
        return self


class OneShotConfig(MaskModeConfig):
    """Calibration options of a one-shot mode (see the module docstring)."""

    data_loader: Any = Field(None, exclude=True)
    collect_func: Callable[[Any], Any] | None = Field(None, exclude=True)
    max_iter_data_loader: int | None = Field(None, ge=1)
    progress: bool = True
    #: block by block (``True``) or all layers in one pass over the unpruned model
    sequential: bool = True
    #: with ``sequential``: the next block sees the pruned blocks' outputs
    pruned_inputs: bool = True
    #: dotted name of the container of the blocks (``None``: found automatically)
    blocks: str | None = None
    #: export 2:4 Linear weights as ``torch.sparse`` semi-structured tensors (CUDA only)
    semi_structured: bool = False


class OneShotDescriptor(MaskModeDescriptor):
    """Converts with all-keep masks, then calibrates and prunes (``prune_layers``)."""

    config_class: ClassVar[type[MaskModeConfig]] = OneShotConfig
    #: convert needs calibration data (``data_loader``)
    needs_calibration: ClassVar[bool] = True
    #: the input statistic each layer needs
    statistic: ClassVar[Any]
    #: whether pruning writes the layers' weights (restored if convert fails)
    writes_weights: ClassVar[bool] = False

    def make_technique(self, kind: Any, tensor: torch.Tensor, shape: tuple[int, ...],
                       rule: Any) -> MaskTechnique:
        return MagnitudeMask(torch.ones(shape, dtype=torch.bool))

    def prune_layers(self, layers: dict[str, MaskedLayer], stats: dict[str, Statistic],
                     config: Any, state: dict[str, Any]) -> None:
        """Set the ``keep`` masks (and weights) of ``layers`` from their statistics.

        ``state`` is a dict kept over one ``convert`` (for :meth:`finish`)."""
        raise NotImplementedError

    def finish(self, layers: dict[str, MaskedLayer], config: Any, state: dict[str, Any]) -> None:
        """Run once every group is pruned (e.g. a global threshold)."""

    def check_plan(self, plan: list[tuple[str, nn.Module, str, Any]], config: Any) -> None:
        """Refuse what cannot be pruned before anything changes."""
        for name, module, _key, rule in plan:
            check_finite(cast(torch.Tensor, module.weight).detach(),
                         f"{self.name}: the weight of {name!r}")
            nm = rule.n_of_m
            if nm is not None:
                features = _input_width(module, _key)
                if features % nm[1]:
                    raise ValueError(
                        f"{self.name}: {name!r} has {features} input features per output, not a "
                        f"multiple of {nm[1]}, so pattern {rule.pattern!r} cannot apply; exclude "
                        "it or use pattern='unstructured' for it"
                    )
            if config.semi_structured and (nm != (2, 4) or _key != "nn.Linear"):
                raise ValueError(f"{self.name}: semi_structured=True needs pattern '2:4' on "
                                 f"nn.Linear layers; {name!r} is {_key} with {rule.pattern!r}")

    def convert(self, model: nn.Module, config: ModeConfig) -> tuple[nn.Module, Metadata]:
        assert isinstance(config, OneShotConfig)
        if config.data_loader is None:
            raise ValueError(
                f"{self.name} needs calibration data: mm.convert(model, ({self.name!r}, "
                "{'data_loader': batches, 'collect_func': lambda b: b['input_ids'], ...}))"
            )
        plan = match_modules(model, config, lambda _n, m: _kind_key(m))
        self.check_plan(plan, config)
        model, metadata = super().convert(model, config)
        layers = {name: dict(model.named_modules())[name] for name in metadata["layers"]}
        originals = SpilledWeights()
        state: dict[str, Any] = {}

        def prune(stats: dict[str, Statistic]) -> None:
            group = {n: layers[n] for n in stats}
            if self.writes_weights:
                for layer in group.values():
                    originals.add(cast(torch.Tensor, layer.weight))
            self.prune_layers(group, stats, config, state)

        try:
            calibrate(model, dict(layers), lambda _n, m: self.statistic(m), prune,
                      config.data_loader, collect_func=config.collect_func,
                      max_iter_data_loader=config.max_iter_data_loader,
                      progress=config.progress, sequential=config.sequential,
                      pruned_inputs=config.pruned_inputs, blocks=config.blocks, desc=self.name)
            self.finish(layers, config, state)
        except BaseException:
            originals.restore()
            self.revert(model, config, metadata)
            raise
        finally:
            originals.close()
        # used once: the history, pickles and save keep only the rules. (Set without
        # validate_assignment, which would re-run the config's key split on every field.)
        for field in ("data_loader", "collect_func"):
            object.__setattr__(config, field, None)
        return model, metadata

    def restore(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> nn.Module:
        """All-keep masks on the matching layers; ``mm.restore`` then loads the saved ones."""
        model, fresh = MaskModeDescriptor.convert(self, model, config)
        if fresh["layers"] != metadata["layers"]:
            self.revert(model, config, fresh)
            raise ValueError(
                f"{self.name}: the model does not fit the saved state: saved masked layers "
                f"{metadata['layers']}, this model gives {fresh['layers']}"
            )
        return model

    def export(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> nn.Module:
        assert isinstance(config, OneShotConfig)
        return semi_structured_export(self, model, config, metadata)


class SpilledWeights:
    """The original values of tensors about to be rewritten, kept in a temporary directory
    (not in memory: a model's worth of copies would double its footprint) so that a failed
    ``convert`` can put them back.

    Examples:
        >>> import torch
        >>> w = torch.ones(3); saved = SpilledWeights(); saved.add(w); _ = w.zero_()
        >>> saved.restore(); saved.close(); w.tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(self) -> None:
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._saved: list[tuple[torch.Tensor, str]] = []

    def add(self, tensor: torch.Tensor) -> None:
        """Write ``tensor``'s current values to disk."""
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="modeopt_masks_")
        path = os.path.join(self._dir.name, f"{len(self._saved)}.pt")
        torch.save(tensor.detach(), path)
        self._saved.append((tensor, path))

    def restore(self) -> None:
        """Copy the saved values back into their tensors."""
        with torch.no_grad():
            for tensor, path in self._saved:
                tensor.copy_(torch.load(path, map_location=tensor.device, weights_only=True))

    def close(self) -> None:
        """Delete the files."""
        if self._dir is not None:
            self._dir.cleanup()
        self._dir, self._saved = None, []


def _input_width(module: nn.Module, key: str) -> int:
    weight: torch.Tensor = module.weight  # type: ignore[assignment]
    if key == "hf.Conv1D":
        return int(weight.shape[0])
    return int(weight[0].numel())
