"""``wanda``: prune by ``|W_ij| * ||X_j||_2`` (Sun et al. 2023, "Pruning by Weights and
activations").

``X_j`` is input feature ``j`` of the layer over every calibration token (for a
convolution: every patch position). The lowest-scoring ``sparsity`` fraction
is removed per output row (``scope="row"``, the paper's choice), per layer
(``"layer"``) or over all converted layers at once (``"global"``, one fraction
for all; the inputs are then those of the unpruned model, so it needs
``pruned_inputs=False``); an ``"N:M"`` ``pattern`` keeps the N best of every M
consecutive input weights. Weights are not changed. See
[`modeopt_masks.modes.oneshot`][modeopt_masks.modes.oneshot] for the calibration options.

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(8, 4))
    >>> data = [torch.randn(16, 8) for _ in range(2)]
    >>> net = mm.convert(net, ("wanda", {"nn.Linear": {"pattern": "2:4"}, "data_loader": data,
    ...                                  "progress": False}))
    >>> net[0].weight_mask.keep.reshape(-1, 4).sum(1).unique().tolist()
    [2]
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any, ClassVar, Literal, cast

import torch

from ..calibration import SquaredNorms, Statistic, from_matrix, weight_matrix
from ..masking import MaskedLayer
from ..registry import register_mode
from ..rules import ModeConfig
from ..selection import CHUNK, global_keep, keep_largest, keep_largest_per_row, keep_n_of_m
from .magnitude_pruning import MagnitudeMask
from .oneshot import OneShotConfig, OneShotDescriptor, OneShotRule


class WandaRule(OneShotRule):
    """Per-layer settings of ``wanda``: ``sparsity`` or ``pattern``."""


class WandaConfig(OneShotConfig):
    """Rule config of ``wanda``: type keys, ``scope`` and the calibration options."""

    rule_class: ClassVar = WandaRule
    scope: Literal["row", "layer", "global"] = "row"


def wanda_scores(layer: MaskedLayer, norms_sq: torch.Tensor,
                 rows: slice = slice(None)) -> torch.Tensor:
    """``|W| * sqrt(norms_sq)`` as a float32 ``[outputs, features]`` matrix (``rows`` of it).

    ``norms_sq`` is ``[groups, features]``: the output rows of group ``g`` use row ``g``.
    """
    w = weight_matrix(layer, layer.weight.detach())[rows].float().abs()
    out = weight_matrix(layer).shape[0]
    norms = norms_sq.sqrt().float().to(w.device)
    per_row = norms.repeat_interleave(out // norms.shape[0], dim=0)[rows]
    return w * per_row


class WandaMode(OneShotDescriptor):
    """Descriptor of ``wanda``."""

    name = "wanda"
    config_class = WandaConfig
    statistic = SquaredNorms

    def convert(self, model: Any, config: ModeConfig) -> Any:
        assert isinstance(config, WandaConfig)
        if config.scope == "global" and config.pruned_inputs and config.sequential:
            raise ValueError(
                "wanda scope='global' picks one threshold after every layer is calibrated, "
                "so no layer sees pruned inputs: set pruned_inputs=False (or sequential=False)"
            )
        return super().convert(model, config)

    def prune_layers(self, layers: dict[str, MaskedLayer], stats: dict[str, Statistic],
                     config: Any, state: dict[str, Any]) -> None:
        for name, layer in layers.items():
            rule = layer.weight_mask.rule
            if config.scope == "global" and rule.n_of_m is None:
                state[name] = stats[name].value  # chosen in finish()
                continue
            scores = wanda_scores(layer, stats[name].value)
            nm = rule.n_of_m
            if nm is not None:
                keep = keep_n_of_m(scores, *nm)
            elif config.scope == "row":
                keep = keep_largest_per_row(scores, rule.sparsity)
            else:
                keep = keep_largest(scores, rule.sparsity)
            cast(MagnitudeMask, layer.weight_mask).keep.copy_(from_matrix(layer, keep, tuple(layer.weight.shape)))

    def finish(self, layers: dict[str, MaskedLayer], config: Any, state: dict[str, Any]) -> None:
        if config.scope != "global" or not state:
            return
        chosen = {n: layers[n] for n in state}
        fractions = {layer.weight_mask.rule.sparsity for layer in chosen.values()}
        if len(fractions) != 1:
            raise ValueError(f"wanda scope='global' needs one sparsity for every layer, got "
                             f"{sorted(fractions)}; use scope='row' or 'layer' for per-layer ones")
        names = list(chosen)
        written: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(names))}

        def chunks(name: str) -> Iterator[torch.Tensor]:
            layer = chosen[name]
            out, width = weight_matrix(layer).shape
            step = max(1, CHUNK // max(width, 1))
            for start in range(0, out, step):
                yield wanda_scores(layer, state[name], slice(start, start + step)).reshape(-1)

        total = sum(int(layer.weight.numel()) for layer in chosen.values())
        def write(i: int, keep: torch.Tensor) -> None:
            written[i].append(keep)

        global_keep([partial(chunks, n) for n in names], total, fractions.pop(), write)
        for i, name in enumerate(names):
            layer = chosen[name]
            keep = torch.cat(written[i]).reshape(weight_matrix(layer).shape)
            cast(MagnitudeMask, layer.weight_mask).keep.copy_(from_matrix(layer, keep, tuple(layer.weight.shape)))


register_mode(WandaMode())
