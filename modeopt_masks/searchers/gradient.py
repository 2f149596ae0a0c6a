"""``GradientBinarySearcher``: sensitivities from accumulated gradient scores (GradNAS).

Scores come from :func:`~modeopt_masks.structured.collect_scores` (sum of
``(dL/dmask)^2``, or Michel et al.'s mean ``|dL/dmask|`` with
``score_type="michel"``). They are normalised per hparam (``normalize="layer"``,
the default: each layer's scores sum to 1) or per kind over the whole model
(``"global"``). The sensitivity of keeping the top ``c`` units is the
normalised score of the units pruned, so the selection does not depend on the
loss scale.

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> from modeopt_masks.pruning import prune
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    >>> data = [(torch.randn(16, 8),) for _ in range(4)]
    >>> net, result = prune(net, "gradnas", constraints={"params": "50%"}, config={
    ...     "data_loader": data, "loss_func": lambda out, batch: out.pow(2).mean(),
    ...     "progress": False})
    >>> result.selection, result.constraints["params"]["achieved"] <= 0.5 * 321
    ({'0': 15}, True)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..structured.hparam import StructuredHParam
from ..structured.scores import collect_scores
from .base import BaseSearcher


class GradientBinarySearcher(BaseSearcher):
    """Binary search over a global threshold on normalised gradient scores.

    Config: ``data_loader`` (required unless every hparam already has scores and
    ``rescore=False``), ``loss_func``, ``collect_func``, ``max_iter_data_loader``,
    ``score_type`` (``"gradnas"`` | ``"michel"``), ``normalize`` (``"layer"`` |
    ``"global"``), ``rescore``, ``progress``.

    Examples:
        >>> from modeopt_masks.searchers import GradientBinarySearcher
        >>> GradientBinarySearcher().sanitize_config({"data_loader": []})["score_type"]
        'gradnas'
    """

    name = "gradient_binary"
    default_config: dict[str, Any] = {
        "data_loader": None,
        "loss_func": None,
        "collect_func": None,
        "max_iter_data_loader": None,
        "score_type": "gradnas",
        "normalize": "layer",
        "rescore": True,
        "progress": True,
    }

    def sanitize_config(self, config: Any) -> dict[str, Any]:  # noqa: D102
        cfg = super().sanitize_config(config)
        if cfg["normalize"] not in ("layer", "global"):
            raise ValueError(f"normalize must be 'layer' or 'global', got {cfg['normalize']!r}")
        if cfg["score_type"] not in ("gradnas", "michel"):
            raise ValueError(f"score_type must be 'gradnas' or 'michel', got {cfg['score_type']!r}")
        return cfg

    def prepare(self, model: nn.Module, hparams: dict[str, StructuredHParam],
                config: dict[str, Any]) -> None:  # noqa: D102
        have_all = all(hp.importance is not None for hp in hparams.values())
        if config["rescore"] or not have_all:
            if config["data_loader"] is None:
                raise ValueError(
                    "GradientBinarySearcher needs config['data_loader'] to score heads/channels"
                )
            collect_scores(
                model, config["data_loader"], loss_func=config["loss_func"],
                collect_func=config["collect_func"],
                max_iter_data_loader=config["max_iter_data_loader"],
                score_type=config["score_type"], progress=config["progress"],
            )

    def sensitivities(self, model: nn.Module, hparams: dict[str, StructuredHParam],
                      orders: dict[str, torch.Tensor], config: dict[str, Any]
                      ) -> dict[str, list[float]]:  # noqa: D102
        totals: dict[str, float] = {}
        for hp in hparams.values():
            assert hp.importance is not None
            kind = hp.structure.kind
            totals[kind] = totals.get(kind, 0.0) + float(hp.importance.sum())
        out = {}
        for n, hp in hparams.items():
            scores = hp.importance
            assert scores is not None
            total = float(scores.sum()) if config["normalize"] == "layer" else totals[hp.structure.kind]
            norm = scores / total if total > 0 else torch.zeros_like(scores)
            full = float(norm.sum())
            # the normalised score of the units pruned when keeping hp.top(c) (group-aware)
            out[n] = [max(0.0, full - float(norm[hp.top(c, orders[n])].sum())) for c in hp.choices]
        return out
