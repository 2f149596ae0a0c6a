"""Target layers: "mask these modules (exact names or globs)" as a mask mode's type-key rules.

:class:`~modeopt_masks.circuit.CircuitModel` and the probes
(:mod:`modeopt_masks.probing`) take ``target_layers``; both resolve them here, so
the same globs mean the same modules and a bad target gets the same helpful error.
Globs are ``fnmatch`` patterns on the full dotted module name (``*`` crosses dots)
and mean exactly what they match: output heads are included when a glob covers them.

Examples:
    >>> import torch.nn as nn
    >>> from modeopt_masks.targets import resolve_targets, target_rules
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Conv1d(2, 2, 1), nn.ReLU())
    >>> targets = resolve_targets(net, ["0", "*"])
    >>> targets
    {'nn.Linear': ['0', '*'], 'nn.Conv1d': ['*']}
    >>> target_rules(targets, {"mask_bias": True})["nn.Conv1d"]
    {'*': {'mask_bias': True}}
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any, Literal

import torch.nn as nn

from .layer_kinds import MASKABLE_KEYS, kind_of

#: The mask modes that ``target_layers`` interfaces (circuits, probes) accept.
MaskMethod = Literal["continuous_sparsification", "hard_concrete", "magnitude_pruning"]


def resolve_targets(model: nn.Module, targets: Iterable[str]) -> dict[str, list[str]]:
    """Group target names/globs by the type key of the maskable modules they match.

    Every target must match at least one maskable module (the root module is not
    a target); otherwise a ``ValueError`` names each bad target with what is
    there: the closest maskable names, or the unsupported layers it matched.

    Examples:
        >>> import torch.nn as nn
        >>> from modeopt_masks.targets import resolve_targets
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Embedding(3, 2))
        >>> resolve_targets(net, ["0"])
        {'nn.Linear': ['0']}
        >>> try:
        ...     resolve_targets(net, ["1"])
        ... except ValueError as e:
        ...     print(str(e)[:48])
        target '1' matches only unsupported layers [('1'
    """
    modules = [(n, m) for n, m in model.named_modules() if n]
    supported = [(n, k.key) for n, m in modules if (k := kind_of(m)) is not None]
    out: dict[str, list[str]] = {}
    errors = []
    for target in targets:
        keys = [k for n, k in supported if fnmatchcase(n, target)]
        if not keys:
            errors.append(_target_error(target, modules, supported))
        for key in dict.fromkeys(keys):
            out.setdefault(key, []).append(target)
    if errors:
        raise ValueError("\n".join(errors))
    return out


def target_rules(targets: Mapping[str, list[str]], rule: Mapping[str, Any]) -> dict[str, Any]:
    """A mask mode's type-key entries: ``{type key: {target: rule}}``, ``None`` for no targets.

    ``targets`` is what :func:`resolve_targets` returns; every type key of
    ``MASKABLE_KEYS`` gets an entry, so the mode's defaults switch nothing else on.

    Examples:
        >>> from modeopt_masks.targets import target_rules
        >>> target_rules({"nn.Linear": ["fc*"]}, {})["nn.Linear"], target_rules({}, {})["nn.Linear"]
        ({'fc*': {}}, None)
    """
    out: dict[str, Any] = {}
    for key in MASKABLE_KEYS:
        patterns = targets.get(key)
        out[key] = {p: dict(rule) for p in patterns} if patterns else None
    return out


def _target_error(
    target: str, modules: list[tuple[str, nn.Module]], supported: list[tuple[str, str]]
) -> str:
    matched = [(n, type(m).__name__) for n, m in modules if fnmatchcase(n, target)]
    names = [n for n, _ in supported]
    if matched:
        return (
            f"target {target!r} matches only unsupported layers {matched[:10]}; supported "
            f"layer types: {list(MASKABLE_KEYS)}. Supported layers here: {names[:20]}"
        )
    hint = ""
    for suffix in (".weight", ".bias"):
        if target.endswith(suffix):
            hint = f" (target_layers are module names: drop {suffix!r})"
    close = difflib.get_close_matches(target, names, n=5)
    if close:
        listing = f"closest supported layers: {close}"
    else:
        more = f" (first 10 of {len(names)})" if len(names) > 10 else ""
        listing = f"supported layers{more}: {names[:10]}"
    return f"target {target!r} matches no module of the model{hint}; {listing}"
