"""Compatibility packages: other libraries' APIs on this library's modes.

* [`modeopt_masks.compat.neurosurgeon`][modeopt_masks.compat.neurosurgeon]: NeuroSurgeon's module paths and names
  (change ``from NeuroSurgeon.`` to ``from modeopt_masks.compat.neurosurgeon.``).

Examples:
    >>> from modeopt_masks.compat.neurosurgeon.Models.model_configs import CircuitConfig
    >>> CircuitConfig().target_layers
    []
"""
