"""Mode descriptors and the registry that maps mode names to them.

A *mode* is one technique (``continuous_sparsification``, ``gradnas``, ...). Its
descriptor says how to convert a model, how to replay that conversion on a fresh
model (``restore``), how to undo it (``revert``) and how to export a plain model.

Examples:
    >>> import modeopt_masks as mm
    >>> mm.get_mode("hard_concrete").name
    'hard_concrete'
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn as nn

from .rules import ModeConfig

Metadata = dict[str, Any]


class ModeDescriptor:
    """Describes one mode. Subclass it, set the class attributes, register an instance.

    Examples:
        >>> import modeopt_masks as mm
        >>> desc = mm.get_mode("magnitude_pruning")
        >>> desc.config_class.__name__
        'MagnitudePruningConfig'
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[ModeConfig]] = ModeConfig
    #: names of modes that may be converted on top of this one (``()`` = none).
    next_modes: ClassVar[tuple[str, ...]] = ()
    #: name of the searcher ``prune`` uses for this mode, or ``None``.
    search_algorithm: ClassVar[str | None] = None

    def convert(self, model: nn.Module, config: ModeConfig) -> tuple[nn.Module, Metadata]:
        """Make the matching modules dynamic. Must leave the model unchanged on error."""
        raise NotImplementedError

    def restore(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> nn.Module:
        """Replay the conversion on a fresh model; tensors are loaded afterwards."""
        model, _ = self.convert(model, config)
        return model

    def update_metadata(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> None:
        """Refresh ``metadata`` in place from the model before it is saved."""

    def revert(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> nn.Module:
        """Undo the conversion: the original modules, without masks."""
        raise NotImplementedError

    def export(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> nn.Module:
        """Return plain modules of the original classes that compute what the model computes."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<mode {self.name!r}>"


_REGISTRY: dict[str, ModeDescriptor] = {}


def register_mode(descriptor: ModeDescriptor) -> ModeDescriptor:
    """Add a mode to the registry (one call per mode file).

    Args:
        descriptor: The mode's [`ModeDescriptor`][modeopt_masks.registry.ModeDescriptor].

    Returns:
        ``descriptor`` (so it can decorate or be assigned).

    Examples:
        >>> import modeopt_masks as mm
        >>> class Noop(mm.ModeDescriptor):
        ...     name = "doc_noop"
        >>> _ = mm.register_mode(Noop())
        >>> "doc_noop" in mm.available_modes()
        True
    """
    if not descriptor.name:
        raise ValueError("a mode descriptor needs a non-empty `name`")
    if descriptor.name in _REGISTRY and type(_REGISTRY[descriptor.name]) is not type(descriptor):
        raise ValueError(f"mode {descriptor.name!r} is already registered")
    _REGISTRY[descriptor.name] = descriptor
    return descriptor


def get_mode(name: str | ModeDescriptor) -> ModeDescriptor:
    """The descriptor registered under ``name``; an unknown name lists the registered modes.

    Args:
        name: A registered mode name (or a descriptor, returned as is).

    Returns:
        The [`ModeDescriptor`][modeopt_masks.registry.ModeDescriptor].

    Raises:
        ValueError: For an unknown name.

    Examples:
        >>> import modeopt_masks as mm
        >>> mm.get_mode("continuous_sparsification").search_algorithm is None
        True
    """
    if isinstance(name, ModeDescriptor):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown mode {name!r}; registered modes: {', '.join(sorted(_REGISTRY))}"
        ) from None


def available_modes() -> list[str]:
    """Names of all registered modes, sorted.

    Examples:
        >>> import modeopt_masks as mm
        >>> "hard_concrete" in mm.available_modes()
        True
    """
    return sorted(_REGISTRY)
