"""``convert``, ``unconvert`` and ``export``: the verbs that change a model's modes.

The model carries its history as an ordered list of ``ModeState`` entries
(``mode``, validated ``config``, ``metadata``) in ``model._modeopt_state``;
:func:`mode_history` reads it.

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> x = torch.randn(2, 4); ref = net(x)
    >>> net = mm.convert(net, "magnitude_pruning")
    >>> [s.mode for s in mm.mode_history(net)]
    ['magnitude_pruning']
    >>> net = mm.unconvert(net)
    >>> torch.equal(net(x), ref), type(net[0]) is nn.Linear
    (True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from .distributed import check_not_sharded
from .registry import Metadata, ModeDescriptor, get_mode
from .rules import ModeConfig

ModeLike = str | ModeDescriptor | tuple[str, Any]
_STATE_ATTR = "_modeopt_state"


@dataclass
class ModeState:
    """One applied mode: its name, validated config and metadata.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> net = mm.convert(nn.Sequential(nn.Linear(2, 2)), "magnitude_pruning")
        >>> state = mm.mode_history(net)[0]
        >>> state.mode, state.config.scope, state.metadata["layers"]
        ('magnitude_pruning', 'layer', ['0'])
    """

    mode: str
    config: ModeConfig
    metadata: Metadata

    @property
    def descriptor(self) -> ModeDescriptor:
        return get_mode(self.mode)


def mode_history(model: nn.Module) -> list[ModeState]:
    """The modes applied to ``model``, oldest first (empty for a plain model).

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> mm.mode_history(nn.Linear(2, 2))
        []
    """
    return list(model.__dict__.get(_STATE_ATTR, []))


def _set_history(model: nn.Module, history: list[ModeState]) -> None:
    if history:
        model.__dict__[_STATE_ATTR] = list(history)
    else:
        model.__dict__.pop(_STATE_ATTR, None)


def normalise_modes(mode: ModeLike | list[ModeLike]) -> list[tuple[str, Any]]:
    """``"name"``, ``("name", config)`` or a list of those -> ``[(name, config or None)]``."""
    items = mode if isinstance(mode, list) else [mode]
    out = []
    for item in items:
        if isinstance(item, str | ModeDescriptor):
            out.append((get_mode(item).name, None))
        elif isinstance(item, tuple) and len(item) == 2:
            out.append((get_mode(item[0]).name, item[1]))
        else:
            raise TypeError(
                f"a mode is a name, a (name, config) pair or a list of those; got {item!r}"
            )
    return out


def validate_config(name: str, config: Any) -> ModeConfig:
    """Validate ``config`` (dict, ``ModeConfig`` or ``None``) against the mode's config class."""
    cls = get_mode(name).config_class
    if isinstance(config, cls):
        return config
    if isinstance(config, ModeConfig):
        config = config.to_dict()
    return cls.model_validate(config or {})


def _check_may_follow(history: list[ModeState], name: str) -> None:
    if history and name not in history[-1].descriptor.next_modes:
        prev = history[-1].mode
        allowed = list(history[-1].descriptor.next_modes) or "none"
        raise ValueError(
            f"mode {name!r} may not follow {prev!r} (allowed after {prev!r}: {allowed}); "
            "call mm.export(model) or mm.unconvert(model) first"
        )


def convert(model: nn.Module, mode: ModeLike | list[ModeLike]) -> nn.Module:
    """Apply one or more modes to ``model`` in place and return it.

    Configs are validated before anything changes; if any step fails, the modes
    applied by this call are undone and the model is as it was.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> net = mm.convert(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)),
        ...                  ("hard_concrete", {"nn.Linear": {"*": {}, "1": None}}))
        >>> sorted(mm.masked_modules(net))
        ['0']
    """
    planned = [(name, validate_config(name, cfg)) for name, cfg in normalise_modes(mode)]
    check_not_sharded(model)  # FSDP2: convert the whole model, then fully_shard
    history = mode_history(model)
    start = len(history)
    try:
        for name, config in planned:
            _check_may_follow(history, name)
            model, metadata = get_mode(name).convert(model, config)
            history.append(ModeState(name, config, metadata))
            _set_history(model, history)
    except Exception:
        _undo(model, history, start)
        raise
    return model


def _undo(model: nn.Module, history: list[ModeState], keep: int) -> nn.Module:
    while len(history) > keep:
        state = history.pop()
        model = state.descriptor.revert(model, state.config, state.metadata)
        _set_history(model, history)
    return model


def unconvert(model: nn.Module) -> nn.Module:
    """Undo every mode: original module classes, masks and hooks removed, weights untouched.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> net = mm.unconvert(mm.convert(nn.Sequential(nn.Linear(2, 2)), "hard_concrete"))
        >>> mm.mode_history(net), type(net[0]).__name__
        ([], 'Linear')
    """
    return _undo(model, mode_history(model), 0)


def export(model: nn.Module) -> nn.Module:
    """Bake every mode into plain modules of the original classes and clear the history.

    Mask modes multiply the (eval, hard) masks into the weights; structured
    modes slice the weights so the model is physically smaller. The exported
    model computes what the converted model computes in eval mode.

    Examples:
        >>> import torch, torch.nn as nn, modeopt_masks as mm
        >>> net = mm.convert(nn.Sequential(nn.Linear(8, 8)), "magnitude_pruning").eval()
        >>> x = torch.randn(2, 8); y = net(x)
        >>> net = mm.export(net)
        >>> torch.equal(net(x), y), type(net[0]) is nn.Linear, int((net[0].weight == 0).sum())
        (True, True, 32)
    """
    history = mode_history(model)
    if not history:
        raise ValueError("the model has no modes to export (convert it first, or it was exported)")
    while history:
        state = history.pop()
        model = state.descriptor.export(model, state.config, state.metadata)
        _set_history(model, history)
    return model
