"""In-place class swapping, as Model Optimizer does it.

``swap_class(module, Mixin)`` turns ``module`` into an instance of a generated
subclass ``Mixin + type(module)``: the parameters stay the same objects,
``isinstance(module, type(module))`` still holds, nothing is copied.
``unswap_class`` undoes it. Generated classes pickle and deepcopy by reference to
the original class and the mixin, so converted models survive both.

Examples:
    >>> import torch.nn as nn
    >>> from modeopt_masks.dynamic import swap_class, unswap_class
    >>> class Tag:
    ...     pass
    >>> lin = nn.Linear(2, 2); w = lin.weight
    >>> _ = swap_class(lin, Tag)
    >>> isinstance(lin, Tag), isinstance(lin, nn.Linear), lin.weight is w
    (True, True, True)
    >>> type(unswap_class(lin)) is nn.Linear
    True
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

_CLASS_CACHE: dict[tuple[type, type], type] = {}


def _rebuild(original: type, mixin: type) -> Any:
    cls = dynamic_class(original, mixin)
    return object.__new__(cls)


def _reduce_ex(self: Any, protocol: Any) -> Any:
    cls = type(self)
    return (_rebuild, (cls._mm_original_cls, cls._mm_mixin), self.__dict__.copy())


def dynamic_class(original: type, mixin: type) -> type:
    """The cached generated subclass of ``original`` with ``mixin`` in front."""
    key = (original, mixin)
    if key not in _CLASS_CACHE:
        _CLASS_CACHE[key] = type(
            f"{mixin.__name__}{original.__name__}",
            (mixin, original),
            {
                "_mm_original_cls": original,
                "_mm_mixin": mixin,
                "__reduce_ex__": _reduce_ex,
                "__module__": original.__module__,
            },
        )
    return _CLASS_CACHE[key]


def swap_class(module: nn.Module, mixin: type) -> nn.Module:
    """Make ``module`` an instance of ``mixin + type(module)`` in place and return it."""
    if is_dynamic(module):
        raise TypeError(
            f"{type(module).__name__} is already converted "
            f"({type(module).__dict__['_mm_mixin'].__name__}); "
            "export or unconvert it first"
        )
    module.__class__ = dynamic_class(type(module), mixin)
    return module


def unswap_class(module: nn.Module) -> nn.Module:
    """Give ``module`` its original class back and return it."""
    if is_dynamic(module):
        module.__class__ = type(module).__dict__["_mm_original_cls"]
    return module


def is_dynamic(module: nn.Module, mixin: type | None = None) -> bool:
    """Whether ``module`` was swapped (by ``mixin``, when given)."""
    cls = type(module)
    if "_mm_original_cls" not in cls.__dict__:
        return False
    return mixin is None or cls.__dict__["_mm_mixin"] is mixin
