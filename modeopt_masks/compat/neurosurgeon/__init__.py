"""NeuroSurgeon's API (module paths, names, defaults) on modeopt-masks' mask modes.

A NeuroSurgeon user changes one import prefix: ``NeuroSurgeon.`` becomes
``modeopt_masks.compat.neurosurgeon.``. Every class here converts layers with
[`modeopt_masks.convert`][modeopt_masks.conversion.convert] (no second masking implementation), so the
library's own tools (``mm.export``, ``mm.save``, ``mm.l0_stats``...) work on the
result. NeuroSurgeon's conventions that differ from the library's (L0 counted in
gated weights, ``prune_percentage=0.2``, layers that start in training mode,
``weight_mask`` as the last mask a forward used) hold here only; see
``docs/neurosurgeon.md`` for the list, and for where the library deliberately
differs from NeuroSurgeon.

Examples:
    >>> import torch, torch.nn as nn
    >>> from modeopt_masks.compat.neurosurgeon.Masking.contsparse_layer import ContSparseLinear
    >>> layer = ContSparseLinear.from_layer(nn.Linear(4, 3), mask_unit="neuron", mask_init_value=1.0)
    >>> _ = layer.train(False); _ = layer(torch.ones(4))
    >>> layer.calculate_l0(), layer.calculate_max_l0()   # gated weights, as NeuroSurgeon counts
    (tensor(12.), 12)
"""
