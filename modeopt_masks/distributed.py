"""Helpers for masks under ``torch.distributed`` (DDP).

Mask parameters are ordinary parameters and buffers, so DDP broadcasts them
from rank 0 when it wraps the model and all-reduces their gradients: masks
trained under DDP stay identical on every rank with nothing extra to do.

Ablation *draws* are not parameters. ``random_ablate`` (a fresh init of the
circuit's weights), ``randomly_sampled`` and ``complement_sampled`` (which
entries are removed) are drawn from the process's own random generator the
first time a layer needs them, so two ranks draw different subnetworks unless
they were seeded identically. :func:`sync_ablation_draws` makes every rank
use rank ``src``'s draws (it draws where needed, then broadcasts). Call it
after ``set_ablation`` (and again after ``force_resample=True``).

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> from modeopt_masks.distributed import sync_ablation_draws
    >>> net = mm.convert(nn.Sequential(nn.Linear(4, 4)), "magnitude_pruning").eval()
    >>> mm.set_ablation(net, "randomly_sampled")
    >>> sync_ablation_draws(net)  # no process group: one process, nothing to agree on
    0
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from .mask_controls import masked_modules
from .masking import DRAWN_ABLATIONS


def sync_ablation_draws(model: nn.Module, src: int = 0, group: Any = None) -> int:
    """Give every rank rank ``src``'s ablation draws; returns how many tensors were broadcast.

    A collective: every rank of ``group`` must call it with the same model
    structure and the same ablation per layer (an error says where they
    differ). Layers must be in eval mode (ablations need hard masks). Without
    an initialised process group (or with one process) it only draws and
    returns ``0``.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.distributed import sync_ablation_draws
        >>> net = mm.convert(nn.Sequential(nn.Linear(3, 3)), "hard_concrete").eval()
        >>> mm.set_ablation(net, "random_ablate"); sync_ablation_draws(net)
        0
    """
    entries: list[tuple[str, Any, torch.Tensor]] = []  # (layer name, draw key, tensor)
    layers = masked_modules(model)
    for name, layer in layers.items():
        if not layer.use_masks or layer.ablation not in DRAWN_ABLATIONS:
            continue
        with torch.no_grad():
            layer._effective_tensors()  # draws what is missing (raises clearly in training)
        if layer.ablation == "random_ablate":
            entries += [(name, key, t) for key, t in sorted(layer._mm_random.items())]
        else:
            entries += [
                (name, key, v[1]) for key, v in sorted(layer._mm_sampled.items())
                if key[1] == layer.ablation
            ]
    if not dist.is_available() or not dist.is_initialized():
        return 0
    if dist.get_world_size(group) == 1:
        return 0
    signature = [(n, str(k), tuple(t.shape), str(t.dtype)) for n, k, t in entries]
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, signature, group=group)
    for rank, other in enumerate(gathered):
        if other != gathered[src]:
            raise RuntimeError(
                f"sync_ablation_draws: rank {rank} has draws {other} but rank {src} has "
                f"{gathered[src]}; every rank needs the same model and the same set_ablation"
            )
    for name, key, tensor in entries:
        buffer = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor.contiguous()
        dist.broadcast(buffer, src=src, group=group)
        layer = layers[name]
        if layer.ablation == "random_ablate":
            layer._mm_random[key] = buffer
        else:
            version = layer._mm_sampled[key][0]
            layer._mm_sampled[key] = (version, buffer.to(tensor.dtype))
    return len(entries)
