"""Plain PyTorch structures: ``Linear -> act -> Linear`` and ``Conv -> BN -> act -> Conv``.

Inside an ``nn.Sequential``, a producer layer (``nn.Linear``, ``nn.Conv1d``,
``nn.Conv2d``; ungrouped) followed by channel-wise modules (activations,
dropout, batch norm, identity) and then a consumer of the same kind has
searchable output channels. The mask sits on the consumer's input; export
slices the producer's outputs, the batch norms and the consumer's inputs.

Examples:
    >>> import torch.nn as nn
    >>> from modeopt_masks.structured.plain import plain_structures
    >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    >>> s = plain_structures(net)["0"]
    >>> (s.key, s.n_units, s.mask_module, s.mask_dim)
    ('nn.Conv2d', 8, '3', 1)
"""

from __future__ import annotations

import torch.nn as nn

from .structure import Slice, Structure, weight_of

#: module types that act channel by channel (a channel pruned before them stays pruned after)
CHANNELWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.AlphaDropout,
)
_KEYS: dict[type[nn.Module], str] = {nn.Linear: "nn.Linear", nn.Conv1d: "nn.Conv1d",
                                     nn.Conv2d: "nn.Conv2d"}
PLAIN_KEYS: tuple[str, ...] = tuple(_KEYS.values())


def _key(module: nn.Module) -> str | None:
    for cls, key in _KEYS.items():
        if isinstance(module, cls):
            if isinstance(module, nn.modules.conv._ConvNd) and module.groups != 1:
                return None
            return key
    return None


def plain_structures(root: nn.Module, skip: tuple[str, ...] = ()) -> dict[str, Structure]:
    """``{producer name: Structure}`` for every producer/consumer pair in ``root``'s Sequentials.

    Modules under a name in ``skip`` (blocks a family plugin handles) are ignored.
    """
    out: dict[str, Structure] = {}
    for seq_name, seq in root.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        if any(seq_name == s or seq_name.startswith(s + ".") for s in skip):
            continue
        children = list(seq.named_children())
        for i, (pname, producer) in enumerate(children):
            key = _key(producer)
            if key is None:
                continue
            middle: list[tuple[str, nn.Module]] = []
            consumer = None
            for cname, child in children[i + 1:]:
                if isinstance(child, CHANNELWISE) or (
                    isinstance(child, nn.modules.batchnorm._BatchNorm) and key != "nn.Linear"
                ):
                    middle.append((cname, child))
                    continue
                if _key(child) == key:
                    consumer = (cname, child)
                break
            if consumer is None:
                continue
            full = f"{seq_name}.{pname}" if seq_name else pname
            cons_name = f"{seq_name}.{consumer[0]}" if seq_name else consumer[0]
            n = weight_of(producer).shape[0]
            if weight_of(consumer[1]).shape[1] != n:
                continue
            slices = [Slice(full, "weight", 0, 1), Slice(full, "bias", 0, 1)]
            scope = [full, cons_name]
            for mname, mid in middle:
                if isinstance(mid, nn.modules.batchnorm._BatchNorm):
                    bn = f"{seq_name}.{mname}" if seq_name else mname
                    slices += [Slice(bn, t, 0, 1) for t in
                               ("weight", "bias", "running_mean", "running_var")]
            slices.append(Slice(cons_name, "weight", 1, 1))
            out[full] = Structure(
                name=full, key=key, kind="channels", family="plain", n_units=n, unit_size=1,
                mask_module=cons_name, mask_dim=-1 if key == "nn.Linear" else 1,
                slices=slices, flop_scope=scope,
            )
    return out
