"""Turn "mask these layers (names or globs) with this method" into a ``convert`` mode spec.

The probes mask through [`modeopt_masks.convert`][modeopt_masks.conversion.convert] only, with the spec
[`modeopt_masks.targets.MaskTargets.mode_spec`][modeopt_masks.targets.MaskTargets.mode_spec] builds (shared with
[`CircuitModel`][modeopt_masks.circuit.CircuitModel]); this function is that, for
callers holding the fields rather than a config: for every layer type key, the
user's globs that match modules of that type switch masking on, everything
else stays off.

Examples:
    >>> import torch.nn as nn
    >>> from modeopt_masks.probing.mask_plan import mask_mode_spec
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    >>> mask_mode_spec(net, "hard_concrete", ["2"], {"mask_init_percentage": 0.9}, True)
    ('hard_concrete', {'freeze_base': True, 'nn.Linear': {'2': {'mask_init_percentage': 0.9}}, 'nn.Conv1d': None, 'nn.Conv2d': None, 'hf.Conv1D': None})
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..targets import MaskTargets


def mask_mode_spec(
    model: nn.Module,
    method: str,
    target_layers: list[str],
    hparams: dict[str, Any],
    freeze_base: bool,
) -> tuple[str, dict[str, Any]]:
    """``(method, config)`` for ``convert`` masking exactly the modules ``target_layers`` match.

    A pattern that matches no maskable module raises, naming the closest maskable ones
    (see [`modeopt_masks.targets.resolve_targets`][modeopt_masks.targets.resolve_targets]).

    Args:
        model: The model to mask.
        method: The mask mode.
        target_layers: Module names or globs.
        hparams: Rule fields and mode options.
        freeze_base: Whether only masks train.

    Returns:
        ``(method, config)`` for [`convert`][modeopt_masks.conversion.convert].
    """
    targets = MaskTargets(mask_method=method, mask_hparams=hparams, target_layers=target_layers,
                          freeze_base=freeze_base)
    return targets.mode_spec(model)
