"""``ProbeOutput``: an HF-style output (attribute, key and index access) without needing HF.

Examples:
    >>> import torch
    >>> from modeopt_masks.probing.probe_output import ProbeOutput
    >>> out = ProbeOutput(loss=torch.tensor(1.0), logits=torch.zeros(2, 3))
    >>> float(out.loss), float(out["loss"]), out[1].shape, list(out.keys())
    (1.0, 1.0, torch.Size([2, 3]), ['loss', 'logits'])
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from ..summary import fields_summary

_FIELDS = ("loss", "logits", "hidden_states", "labels")


class ProbeOutput(OrderedDict):
    """``loss``, ``logits``, ``hidden_states`` (the probed vectors), ``labels``.

    Like ``transformers.utils.ModelOutput``: fields that are ``None`` are left
    out of the dict, integer indexing follows the present fields, and missing
    attributes read as ``None``. The HF ``Trainer`` reads ``out["loss"]``.

    Args:
        loss: The training loss.
        logits: The probe's outputs.
        hidden_states: The probed vectors.
        labels: The labels of those vectors.

    Examples:
        >>> import torch
        >>> from modeopt_masks.probing import ProbeOutput
        >>> out = ProbeOutput(logits=torch.zeros(1, 2))
        >>> out.loss is None, "loss" in out, len(out.to_tuple())
        (True, False, 1)
    """

    def __init__(
        self,
        loss: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
        hidden_states: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        for name, value in zip(_FIELDS, (loss, logits, hidden_states, labels), strict=True):
            if value is not None:
                self[name] = value

    def __getattr__(self, name: str) -> Any:
        if name in _FIELDS:
            return self.get(name)
        raise AttributeError(name)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int | slice):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def summary(self) -> str:
        """The present fields, tensors by shape (short; ``print(out)`` shows it)."""
        return fields_summary(type(self).__name__, self)

    __repr__ = summary
    __str__ = summary

    def to_tuple(self) -> tuple[Any, ...]:
        """The present fields in order."""
        return tuple(self.values())
