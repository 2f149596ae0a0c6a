"""Turn "mask these layers (names or globs) with this method" into a ``convert`` mode spec.

The probes mask through :func:`modeopt_masks.convert` only; this module just
builds the mode config with :mod:`modeopt_masks.targets` (shared with
:class:`~modeopt_masks.circuit.CircuitModel`): for every layer type key, the
user's globs that match modules of that type switch masking on, everything
else stays off.

Examples:
    >>> import torch.nn as nn
    >>> from modeopt_masks.probing.mask_plan import mask_mode_spec
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    >>> mask_mode_spec(net, "hard_concrete", ["2"], {"mask_init_percentage": 0.9}, True)
    ('hard_concrete', {'nn.Linear': {'2': {'mask_init_percentage': 0.9}}, 'nn.Conv1d': None, 'nn.Conv2d': None, 'hf.Conv1D': None, 'freeze_base': True})
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..targets import resolve_targets, target_rules


def mask_mode_spec(
    model: nn.Module,
    method: str,
    target_layers: list[str],
    hparams: dict[str, Any],
    freeze_base: bool,
) -> tuple[str, dict[str, Any]]:
    """``(method, config)`` for ``convert`` masking exactly the modules ``target_layers`` match.

    A pattern that matches no maskable module raises, naming the closest maskable ones
    (see :func:`modeopt_masks.targets.resolve_targets`).
    """
    config = target_rules(resolve_targets(model, target_layers), hparams)
    config["freeze_base"] = freeze_base
    return method, config
