"""Turn "mask these layers (names or globs) with this method" into a ``convert`` mode spec.

The probes mask through :func:`modeopt_masks.convert` only; this module just
builds the mode config: for every layer type key, the user's globs that match
modules of that type switch masking on, everything else stays off.

Examples:
    >>> import torch.nn as nn
    >>> from modeopt_masks.probing.mask_plan import mask_mode_spec
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    >>> mask_mode_spec(net, "hard_concrete", ["2"], {"mask_init_percentage": 0.9}, True)
    ('hard_concrete', {'nn.Linear': {'*': None, '2': {'mask_init_percentage': 0.9}}, 'nn.Conv1d': None, 'nn.Conv2d': None, 'hf.Conv1D': None, 'freeze_base': True})
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Literal

import torch.nn as nn

from ..layer_kinds import MASKABLE_KEYS, kind_of

MaskMethod = Literal["continuous_sparsification", "hard_concrete", "magnitude_pruning"]


def maskable_layers(model: nn.Module) -> dict[str, str]:
    """Every module a mask mode can convert: ``{name: type key}``."""
    out = {}
    for name, module in model.named_modules():
        kind = kind_of(module)
        if kind is not None:
            out[name] = kind.key
    return out


def mask_mode_spec(
    model: nn.Module,
    method: str,
    target_layers: list[str],
    hparams: dict[str, Any],
    freeze_base: bool,
) -> tuple[str, dict[str, Any]]:
    """``(method, config)`` for ``convert`` masking exactly the modules ``target_layers`` match.

    A pattern that matches no maskable module raises, listing the maskable ones.
    """
    layers = maskable_layers(model)
    unmatched = [p for p in target_layers if not any(fnmatchcase(n, p) for n in layers)]
    if unmatched:
        raise ValueError(
            f"target_layers {unmatched} match no maskable module "
            f"({', '.join(MASKABLE_KEYS)}); maskable modules: {list(layers)}"
        )
    config: dict[str, Any] = {}
    for key in MASKABLE_KEYS:
        names = [n for n, k in layers.items() if k == key]
        patterns = [p for p in target_layers if any(fnmatchcase(n, p) for n in names)]
        config[key] = {"*": None, **{p: dict(hparams) for p in patterns}} if patterns else None
    config["freeze_base"] = freeze_base
    return method, config
