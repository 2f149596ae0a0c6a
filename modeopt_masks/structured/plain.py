"""Plain PyTorch structures: ``Linear -> act -> Linear`` and ``Conv -> BN -> act -> Conv``.

A producer layer (``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``; ungrouped)
whose output goes only through channel-wise operations (activations, dropout,
batch norm after a conv, identity) into a consumer of the same kind has
searchable output channels. The mask sits on the consumer's input; export
slices the producer's outputs, the batch norms and the consumer's inputs.

Such pairs are found in two ways:

* inside any ``nn.Sequential`` (children in order), always;
* in custom modules (``forward`` written by hand), by tracing the model with
  ``torch.fx.symbolic_trace``, when the model has no Hugging Face blocks. The
  chain must then be a straight line: the producer's output (and every
  channel-wise step's) feeds exactly one operation, e.g. ``self.fc2(F.relu(self.fc1(x)))``.
  A residual add, a reshape, a concatenation or a second use between the two
  layers ends the chain (those channels are not searched). Recognised
  channel-wise functions: ``F.relu``, ``F.gelu``, ``F.silu``, ``torch.tanh`` and
  the like ([`CHANNELWISE_FUNCTIONS`][modeopt_masks.structured.plain.CHANNELWISE_FUNCTIONS]), and the matching tensor methods.
  Models that ``symbolic_trace`` cannot trace (data-dependent control flow,
  for instance) keep only their ``nn.Sequential`` pairs;
  [`plain_structures_report`][modeopt_masks.structured.plain.plain_structures_report] says why tracing failed, and ``gradnas``
  puts that reason in its error when nothing is searchable.

Examples:
    >>> import torch.nn as nn
    >>> from modeopt_masks.structured.plain import plain_structures
    >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    >>> s = plain_structures(net)["0"]
    >>> (s.key, s.n_units, s.mask_module, s.mask_dim)
    ('nn.Conv2d', 8, '3', 1)
    >>> import torch.nn.functional as F
    >>> class Block(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.up, self.down = nn.Linear(4, 16), nn.Linear(16, 4)
    ...     def forward(self, x):
    ...         return x + self.down(F.gelu(self.up(x)))
    >>> s = plain_structures(Block())["up"]
    >>> (s.n_units, s.mask_module)
    (16, 'down')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from ..layer_kinds import LAYER_KINDS, LayerKind, kind_of, plain_pair_keys
from .structure import Slice, Structure

#: module types that act channel by channel (a channel pruned before them stays pruned after)
CHANNELWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.AlphaDropout,
)
PLAIN_KEYS: tuple[str, ...] = plain_pair_keys()


def _kind(module: nn.Module) -> LayerKind | None:
    """The layer kind of ``module`` if gradnas may pair it as a plain producer / consumer."""
    kind = kind_of(module)
    if kind is None or not kind.plain_pairs or not kind.sliceable(module):
        return None
    return kind


def _key(module: nn.Module) -> str | None:
    kind = _kind(module)
    return None if kind is None else kind.key


def _structure(key: str, prod: tuple[str, nn.Module], middle: list[tuple[str, nn.Module]],
               cons: tuple[str, nn.Module]) -> Structure | None:
    """The channels structure of ``producer -> middle... -> consumer`` (``None``: shapes differ)."""
    full, producer = prod
    cons_name, consumer = cons
    kind = LAYER_KINDS[key]
    n = kind.out_width(producer)
    if n == 0 or kind.in_width(consumer) != n:  # zero width: nothing to search
        return None
    slices = [Slice(full, "weight", kind.out_dim, 1), Slice(full, "bias", 0, 1)]
    for bn, mid in middle:
        if isinstance(mid, nn.modules.batchnorm._BatchNorm):
            slices += [Slice(bn, t, 0, 1) for t in ("weight", "bias", "running_mean", "running_var")]
    slices.append(Slice(cons_name, "weight", kind.in_dim, 1))
    return Structure(
        name=full, key=key, kind="channels", family="plain", n_units=n, unit_size=1,
        mask_module=cons_name, mask_dim=kind.input_axis,
        slices=slices, flop_scope=[full, cons_name],
    )


def _is_channelwise_module(module: nn.Module, key: str) -> bool:
    return isinstance(module, CHANNELWISE) or (
        isinstance(module, nn.modules.batchnorm._BatchNorm) and LAYER_KINDS[key].input_axis == 1)


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == s or name.startswith(s + ".") for s in skip)


def sequential_structures(root: nn.Module, skip: tuple[str, ...] = ()) -> dict[str, Structure]:
    """``{producer name: Structure}`` for the producer/consumer pairs in ``root``'s Sequentials."""
    out: dict[str, Structure] = {}
    for seq_name, seq in root.named_modules():
        if not isinstance(seq, nn.Sequential) or _skipped(seq_name, skip):
            continue
        prefix = f"{seq_name}." if seq_name else ""
        children = list(seq.named_children())
        for i, (pname, producer) in enumerate(children):
            key = _key(producer)
            if key is None:
                continue
            middle: list[tuple[str, nn.Module]] = []
            consumer = None
            for cname, child in children[i + 1:]:
                if _is_channelwise_module(child, key):
                    middle.append((prefix + cname, child))
                    continue
                if _key(child) == key:
                    consumer = (prefix + cname, child)
                break
            if consumer is None:
                continue
            found = _structure(key, (prefix + pname, producer), middle, consumer)
            if found is not None:
                out[found.name] = found
    return out


CHANNELWISE_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    F.relu, F.relu6, F.gelu, F.silu, F.elu, F.leaky_relu, F.mish, F.hardswish, F.hardsigmoid,
    F.softplus, F.dropout, F.sigmoid, F.tanh, torch.relu, torch.sigmoid, torch.tanh,
)
"""Functions (and same-named tensor methods) that act channel by channel, for traced graphs."""
_CHANNELWISE_METHODS = frozenset({"relu", "relu_", "sigmoid", "tanh", "sigmoid_", "tanh_"})


def traced_structures(root: nn.Module, skip: tuple[str, ...] = ()) -> dict[str, Structure]:
    """``{producer name: Structure}`` found in ``torch.fx.symbolic_trace(root)``'s graph.

    Raises whatever ``symbolic_trace`` raises when ``root`` cannot be traced.
    """
    graph = torch.fx.symbolic_trace(root).graph
    modules = dict(root.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    out: dict[str, Structure] = {}
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1 or _skipped(node.target, skip):
            continue
        producer = modules[node.target]
        key = _key(producer)
        if key is None:
            continue
        middle: list[tuple[str, nn.Module]] = []
        current, consumer = node, None
        while len(current.users) == 1:
            (user,) = current.users
            if not user.args or user.args[0] is not current or any(
                a is current for a in list(user.args[1:]) + list(user.kwargs.values())
            ):
                break
            if user.op == "call_module":
                mod = modules[user.target]
                if calls[user.target] != 1:
                    break
                if _is_channelwise_module(mod, key):
                    middle.append((user.target, mod))
                    current = user
                    continue
                if _key(mod) == key:
                    consumer = (user.target, mod)
                break
            if (user.op == "call_function" and user.target in CHANNELWISE_FUNCTIONS) or (
                user.op == "call_method" and user.target in _CHANNELWISE_METHODS
            ):
                current = user
                continue
            break
        if consumer is None or _skipped(consumer[0], skip):
            continue
        found = _structure(key, (node.target, producer), middle, consumer)
        if found is not None:
            out[found.name] = found
    return out


def plain_structures_report(
    root: nn.Module, skip: tuple[str, ...] = (), trace: bool = True
) -> tuple[dict[str, Structure], str | None]:
    """Sequential pairs plus (``trace=True``) traced pairs, and why tracing failed (or ``None``)."""
    out = sequential_structures(root, skip)
    reason = None
    if trace:
        try:
            traced = traced_structures(root, skip)
        except Exception as exc:  # noqa: BLE001 - any tracing failure only limits what is found
            reason = f"torch.fx.symbolic_trace({type(root).__name__}) failed: {type(exc).__name__}: {exc}"
        else:
            for name, structure in traced.items():
                out.setdefault(name, structure)
    return out, reason


def plain_structures(root: nn.Module, skip: tuple[str, ...] = (), trace: bool = True
                     ) -> dict[str, Structure]:
    """``{producer name: Structure}`` for every producer/consumer pair in ``root``.

    Modules under a name in ``skip`` (blocks a family plugin handles) are ignored;
    ``trace=False`` looks only inside ``nn.Sequential`` containers.
    """
    return plain_structures_report(root, skip, trace)[0]
