"""Search algorithms for structured modes: a base, a binary and a gradient binary searcher.

Examples:
    >>> from modeopt_masks.searchers import get_searcher
    >>> type(get_searcher("gradient_binary")).__name__
    'GradientBinarySearcher'
"""

from __future__ import annotations

from .base import (
    BaseSearcher,
    CostModel,
    SearchResult,
    count_params,
    measure_flops,
    parse_constraints,
)
from .binary import BinarySearcher
from .gradient import GradientBinarySearcher

SEARCHERS: dict[str, type[BaseSearcher]] = {
    GradientBinarySearcher.name: GradientBinarySearcher,
    BinarySearcher.name: BinarySearcher,
}


def get_searcher(name: str | BaseSearcher) -> BaseSearcher:
    """A searcher instance by name (``"gradient_binary"``, ``"binary"``) or as given.

    Args:
        name: ``"gradient_binary"``, ``"binary"``, or a searcher instance (returned as is).

    Returns:
        A [`BaseSearcher`][modeopt_masks.searchers.base.BaseSearcher].

    Raises:
        ValueError: For an unknown name (the message lists the known ones).
    """
    if isinstance(name, BaseSearcher):
        return name
    try:
        return SEARCHERS[name]()
    except KeyError:
        raise ValueError(f"unknown searcher {name!r}; valid: {sorted(SEARCHERS)}") from None


__all__ = [
    "SEARCHERS",
    "BaseSearcher",
    "BinarySearcher",
    "CostModel",
    "GradientBinarySearcher",
    "SearchResult",
    "count_params",
    "get_searcher",
    "measure_flops",
    "parse_constraints",
]
