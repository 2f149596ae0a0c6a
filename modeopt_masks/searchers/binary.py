"""``BinarySearcher``: sensitivities measured with a user ``score_func`` (the FastNAS way).

For every hparam and every choice the hparam alone is shrunk to that choice
(its least important units removed: by gradient importance when the hparam has
scores, otherwise by the L2 norm of the consumer's input weights) and
``score_func(model)`` (higher is better, e.g. validation accuracy) is measured.
The sensitivity is the relative drop ``(base - score) / |base|``. Cost: one
``score_func`` call per choice, so keep ``ratios`` short on large models.

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> from modeopt_masks.pruning import prune
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> x = torch.randn(32, 4); y = net(x).detach()
    >>> score = lambda m: -float((m(x) - y).pow(2).mean())
    >>> net, result = prune(net, ("gradnas", {"nn.Linear": {"ratios": [0.5, 1.0]}}),
    ...                        constraints={"params": "70%"}, searcher="binary",
    ...                        config={"score_func": score})
    >>> result.selection
    {'0': 4}
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..layer_kinds import kind_of
from ..structured.hparam import StructuredHParam
from .base import BaseSearcher


def weight_norm_order(hp: StructuredHParam) -> torch.Tensor:
    """Units by decreasing L2 norm of the consumer's input weights (no data needed)."""
    kind = kind_of(hp.module)
    if kind is None:  # pragma: no cover - gradnas only masks modules of a layer kind
        raise TypeError(f"{hp.name}: {type(hp.module).__name__} is not a layer kind")
    w = hp.module.weight.detach().movedim(kind.in_dim, 0)  # type: ignore[union-attr,operator]
    norms = w.reshape(hp.n_units, -1).float().norm(dim=1).cpu()
    return torch.sort(-norms, stable=True).indices


class BinarySearcher(BaseSearcher):
    """Binary search over a global threshold on measured sensitivities.

    Config: ``score_func`` (required; ``model -> float``, higher is better),
    ``progress``.

    Examples:
        >>> from modeopt_masks.searchers import BinarySearcher
        >>> try:
        ...     BinarySearcher().sanitize_config({})
        ... except ValueError as e:
        ...     print("score_func" in str(e))
        True
    """

    name = "binary"
    default_config: dict[str, Any] = {"score_func": ..., "progress": False}

    def unit_orders(self, hparams: dict[str, StructuredHParam]) -> dict[str, torch.Tensor]:  # noqa: D102
        return {
            n: hp.unit_order() if hp.importance is not None else weight_norm_order(hp)
            for n, hp in hparams.items()
        }

    def sensitivities(self, model: nn.Module, hparams: dict[str, StructuredHParam],
                      orders: dict[str, torch.Tensor], config: dict[str, Any]
                      ) -> dict[str, list[float]]:  # noqa: D102
        score_func = config["score_func"]
        full = {n: list(range(hp.n_units)) for n, hp in hparams.items()}
        for n, hp in hparams.items():
            hp.keep(full[n])
        with torch.no_grad():
            base = float(score_func(model))
            scale = max(abs(base), 1e-12)
            out = {}
            for n, hp in hparams.items():
                sens = []
                for c in hp.choices:
                    if c == hp.n_units:
                        sens.append(0.0)
                        continue
                    hp.keep(hp.top(c, orders[n]))
                    sens.append((base - float(score_func(model))) / scale)
                hp.keep(full[n])
                out[n] = sens
        return out
