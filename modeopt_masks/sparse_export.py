"""Export of 2:4 weights as ``torch.sparse`` semi-structured tensors (CUDA, optional).

A mask mode whose config has ``semi_structured=True`` exports as usual (zeros
baked in) and then swaps every masked ``nn.Linear`` weight for
``torch.sparse.to_sparse_semi_structured(weight)``, which sparse tensor cores
multiply about twice as fast. That needs a CUDA device with sparse kernels,
fp16/bf16 weights on it and an exact 2:4 pattern; anything else raises a
``ValueError`` before the model changes.

Examples:
    >>> import torch
    >>> from modeopt_masks.sparse_export import is_2_of_4
    >>> is_2_of_4(torch.tensor([[1.0, 0.0, 0.0, 2.0]]))
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .registry import Metadata


def is_2_of_4(weight: torch.Tensor) -> bool:
    """Whether every 4 consecutive entries along the last axis hold at most 2 non-zeros."""
    if weight.shape[-1] % 4:
        return False
    return bool(((weight.reshape(-1, 4) != 0).sum(1) <= 2).all())


def semi_structured_export(descriptor: Any, model: nn.Module, config: Any,
                           metadata: Metadata) -> nn.Module:
    """The mask-mode export, then 2:4 weights as semi-structured tensors if asked."""
    from .modes.mask_mode import MaskModeDescriptor

    if not getattr(config, "semi_structured", False):
        return MaskModeDescriptor.export(descriptor, model, config, metadata)
    modules = dict(model.named_modules())
    layers = [modules[n] for n in metadata["layers"]]
    for name, layer in zip(metadata["layers"], layers, strict=True):
        weight: torch.Tensor = layer.weight  # type: ignore[assignment]
        if not (torch.cuda.is_available() and weight.is_cuda
                and weight.dtype in (torch.float16, torch.bfloat16)):
            raise ValueError(
                f"semi_structured export needs fp16/bf16 weights on a CUDA device; {name!r} is "
                f"{weight.dtype} on {weight.device}: model.half().cuda() first, or export with "
                "semi_structured=False"
            )
    model = MaskModeDescriptor.export(descriptor, model, config, metadata)
    from torch.sparse import to_sparse_semi_structured

    for layer in layers:
        dense = layer.weight.detach()  # type: ignore[union-attr]
        layer.weight = nn.Parameter(to_sparse_semi_structured(dense), requires_grad=False)
    return model
