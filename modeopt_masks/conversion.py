"""``convert``, ``unconvert`` and ``export``: the verbs that change a model's modes.

The model carries its history as an ordered list of ``ModeState`` entries
(``mode``, validated ``config``, ``metadata``) in ``model._modeopt_state``;
[`mode_history`][modeopt_masks.conversion.mode_history] reads it.

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

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch
import torch.nn as nn

from .distributed import check_not_sharded
from .dynamic import is_dynamic
from .registry import Metadata, ModeDescriptor, get_mode
from .rules import ModeConfig

ModeLike = str | ModeDescriptor | tuple[str, Any]
_STATE_ATTR = "_modeopt_state"


@dataclass
class ModeState:
    """One applied mode: its name, validated config and metadata.

    Args:
        mode: The mode's registered name.
        config: Its validated config.
        metadata: What the mode recorded when it converted the model.

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

    Args:
        model: Any model.

    Returns:
        A list of [`ModeState`][modeopt_masks.conversion.ModeState].

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


class Journal:
    """A model's state, recorded so that a failed verb can put it back bit for bit.

    On creation it records every module's class and ``__dict__`` (parameters,
    buffers, children, hooks, attributes such as ``training`` and the mode
    history) and every tensor's ``requires_grad``, ``.grad`` and storage. That
    is cheap: no tensor is copied. A step that writes tensor *values* in place
    calls [`protect`][modeopt_masks.conversion.protect] first (a CPU copy of the old values); other undo
    actions go in with `add_undo`. `rollback` undoes everything.
    Use it through [`transaction`][modeopt_masks.conversion.transaction].

    Examples:
        >>> import torch, torch.nn as nn
        >>> from modeopt_masks.conversion import Journal
        >>> net = nn.Sequential(nn.Linear(2, 2)); w = net[0].weight
        >>> journal = Journal(net)
        >>> journal.protect(w); _ = w.data.zero_(); net[0] = nn.ReLU()
        >>> journal.rollback()
        >>> net[0].weight is w, bool(w.abs().sum() > 0)
        (True, True)
    """

    def __init__(self, model: nn.Module) -> None:
        self._modules = [(m, type(m), _snapshot_dict(m.__dict__)) for m in _all_modules(model)]
        self._tensors = [
            (t, t.requires_grad, t.grad, t.data)
            for m, _, _ in self._modules
            for t in (*m._parameters.values(), *m._buffers.values())
            if t is not None
        ]
        self._values: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._undo: list[Callable[[], None]] = []

    def protect(self, tensor: torch.Tensor) -> None:
        """Keep a copy of ``tensor``'s values (once) to write back on rollback."""
        if id(tensor) not in self._values and not tensor.is_meta:  # meta: no values to keep
            self._values[id(tensor)] = (tensor, tensor.detach().to("cpu", copy=True))

    def add_undo(self, undo: Callable[[], None]) -> None:
        """Run ``undo`` on rollback (last added, first run), before the recorded state returns."""
        self._undo.append(undo)

    def rollback(self) -> None:
        """Put back every recorded module, attribute, tensor and value."""
        while self._undo:
            self._undo.pop()()
        for module, cls, saved in self._modules:
            if type(module) is not cls:
                module.__class__ = cls
            _restore_dict(module.__dict__, saved)
        with torch.no_grad():
            for tensor, requires_grad, grad, data in self._tensors:
                if not _same_view(tensor, data):
                    tensor.data = data
                if tensor.requires_grad != requires_grad:
                    tensor.requires_grad_(requires_grad)
                if tensor.grad is not grad:
                    tensor.grad = grad
            for tensor, old in self._values.values():
                tensor.copy_(old)


def _all_modules(model: nn.Module) -> list[nn.Module]:
    return list(model.modules())


def _snapshot_dict(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with every dict, list and set value paired with a shallow copy of its contents."""
    return {
        k: (v, v.copy()) if isinstance(v, dict | list | set) else (v, None) for k, v in d.items()
    }


def _restore_dict(d: dict[str, Any], saved: dict[str, Any]) -> None:
    d.clear()
    for k, (v, contents) in saved.items():
        if contents is not None:  # the same container object, with its old contents
            v.clear()
            v.update(contents) if isinstance(v, dict | set) else v.extend(contents)
        d[k] = v


def _same_view(tensor: torch.Tensor, data: torch.Tensor) -> bool:
    return (
        tensor.data_ptr() == data.data_ptr() and tensor.shape == data.shape
        and tensor.stride() == data.stride() and tensor.dtype == data.dtype
        and tensor.device == data.device
    )


_ACTIVE: ContextVar[tuple[Journal, ...]] = ContextVar("modeopt_masks_journals", default=())


@contextmanager
def transaction(model: nn.Module) -> Iterator[Journal]:
    """Run the block as one change of ``model``: on any exception (``KeyboardInterrupt``
    included) every recorded change is undone and the exception goes on.

    Steps inside the block that write tensor values in place call [`protect`][modeopt_masks.conversion.protect];
    module, class, attribute, hook and ``requires_grad`` changes need nothing.

    Examples:
        >>> import torch.nn as nn
        >>> from modeopt_masks.conversion import transaction
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> try:
        ...     with transaction(net):
        ...         _ = net.append(nn.ReLU()); _ = net[0].weight.requires_grad_(False)
        ...         raise RuntimeError("boom")
        ... except RuntimeError:
        ...     pass
        >>> len(net), net[0].weight.requires_grad
        (1, True)
    """
    journal = Journal(model)
    token = _ACTIVE.set((*_ACTIVE.get(), journal))
    try:
        yield journal
    except BaseException:
        journal.rollback()
        raise
    finally:
        _ACTIVE.reset(token)


def protect(tensor: torch.Tensor) -> None:
    """Record ``tensor``'s values in every open [`transaction`][modeopt_masks.conversion.transaction] before writing it in place.

    Outside a transaction it does nothing.

    Examples:
        >>> import torch, torch.nn as nn
        >>> from modeopt_masks.conversion import protect, transaction
        >>> lin = nn.Linear(2, 2); before = lin.weight.clone()
        >>> try:
        ...     with transaction(lin), torch.no_grad():
        ...         protect(lin.weight); _ = lin.weight.zero_(); raise KeyboardInterrupt
        ... except KeyboardInterrupt:
        ...     pass
        >>> torch.equal(lin.weight, before)
        True
    """
    for journal in _ACTIVE.get():
        journal.protect(tensor)


def protect_attributes(obj: object, *names: str) -> None:
    """Record attributes of ``obj`` (a config, say: not a module, which is recorded anyway)
    in every open [`transaction`][modeopt_masks.conversion.transaction], to be set back (or deleted, if absent) on rollback.

    Examples:
        >>> import torch.nn as nn
        >>> from types import SimpleNamespace
        >>> from modeopt_masks.conversion import protect_attributes, transaction
        >>> cfg = SimpleNamespace(heads=4)
        >>> try:
        ...     with transaction(nn.Linear(2, 2)):
        ...         protect_attributes(cfg, "heads", "extra"); cfg.heads = 2; cfg.extra = 1
        ...         raise RuntimeError
        ... except RuntimeError:
        ...     pass
        >>> cfg.heads, hasattr(cfg, "extra")
        (4, False)
    """
    missing = object()
    saved = [(name, getattr(obj, name, missing)) for name in names]

    def undo() -> None:
        for name, value in saved:
            if value is missing:
                if hasattr(obj, name):
                    delattr(obj, name)
            else:
                setattr(obj, name, value)

    for journal in _ACTIVE.get():
        journal.add_undo(undo)


def converted_submodules(model: nn.Module) -> list[str]:
    """Names of submodules (not ``model`` itself) that carry their own mode history.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.conversion import converted_submodules
        >>> net = nn.Sequential(nn.Sequential(nn.Linear(2, 2)))
        >>> _ = mm.convert(net[0], "magnitude_pruning"); converted_submodules(net)
        ['0']
    """
    return [name for name, m in model.named_modules() if name and _STATE_ATTR in m.__dict__]


def normalise_modes(mode: ModeLike | list[ModeLike]) -> list[tuple[str, Any]]:
    """``"name"``, ``("name", config)`` or a list of those -> ``[(name, config or None)]``."""
    items = mode if isinstance(mode, list) else [mode]
    if not items:
        raise ValueError("no mode given: pass a mode name, a (name, config) pair or a non-empty "
                         "list of those")
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

    Args:
        model: The model to convert.
        mode: A mode name, ``(name, config)``, or a list of them applied in order.

    Returns:
        ``model`` itself, converted.

    Raises:
        ValueError: For an unknown mode, an invalid config, or a rule that matches nothing.

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
    with transaction(model):
        for name, config in planned:
            _check_may_follow(history, name)
            model, metadata = get_mode(name).convert(model, config)
            _check_bias_masks(model, config)
            history.append(ModeState(name, config, metadata))
            _set_history(model, history)
    return model


def _check_bias_masks(model: nn.Module, config: ModeConfig) -> None:
    """A rule that sets ``mask_bias=True`` but reaches no bias would be silently ignored.

    A glob masks the biases that exist: it is an error only when it matches no module
    (of any type) that has a bias, or when the pattern names a bias-less layer exactly.
    """
    from .masking import MaskedLayer

    modules = dict(model.named_modules())
    useless = []
    for key, spec in config.rules.items():
        for pattern, rule in (spec or {}).items():
            if rule is None or not rule.explicit_fields().get("mask_bias"):
                continue
            converted = [n for n, m in modules.items() if isinstance(m, MaskedLayer)
                         and m.layer_kind.key == key and fnmatchcase(n, pattern)]
            if not converted:
                continue
            lacking = [n for n in converted if getattr(modules[n], "bias", None) is None]
            exact = not any(c in pattern for c in "*?[")
            any_bias = any(getattr(m, "bias", None) is not None
                           for n, m in modules.items() if fnmatchcase(n, pattern))
            if lacking and (exact or not any_bias):
                useless.append((key, pattern, lacking[:10]))
    if useless:
        raise ValueError(
            "mask_bias=True reaches no bias: " + "; ".join(
                f"{key!r} -> {pattern!r} converts only layers without a bias {names}"
                for key, pattern, names in useless)
            + "; drop mask_bias from that rule"
        )


def _undo(model: nn.Module, history: list[ModeState], keep: int) -> nn.Module:
    while len(history) > keep:
        state = history.pop()
        model = state.descriptor.revert(model, state.config, state.metadata)
        _set_history(model, history)
    return model


def unconvert(model: nn.Module) -> nn.Module:
    """Undo every mode: original module classes, masks and hooks removed, weights untouched.

    Args:
        model: A converted model.

    Returns:
        ``model`` itself, as before its first conversion.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> net = mm.unconvert(mm.convert(nn.Sequential(nn.Linear(2, 2)), "hard_concrete"))
        >>> mm.mode_history(net), type(net[0]).__name__
        ([], 'Linear')
    """
    with transaction(model):
        return _undo(model, mode_history(model), 0)


def export(model: nn.Module) -> nn.Module:
    """Bake every mode into plain modules of the original classes and clear the history.

    Mask modes multiply the (eval, hard) masks into the weights; structured
    modes slice the weights so the model is physically smaller. The exported
    model computes what the converted model computes in eval mode.

    Args:
        model: A converted model.

    Returns:
        ``model`` itself, with plain modules.

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
    with transaction(model):
        # exports write into the tensors of converted modules (a mask baked into a weight)
        for module in _all_modules(model):
            if is_dynamic(module):
                for tensor in (*module._parameters.values(), *module._buffers.values()):
                    if tensor is not None:
                        protect(tensor)
        while history:
            state = history.pop()
            model = state.descriptor.export(model, state.config, state.metadata)
            _set_history(model, history)
    return model
