"""Model-level controls for converted mask layers: L0, temperature, ablation, switches.

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> net = mm.convert(nn.Sequential(nn.Linear(4, 3)), "continuous_sparsification")
    >>> mm.set_temperature(net, 5.0); mm.get_temperature(net)
    5.0
    >>> mm.l0_stats(net)["max_l0"]
    12
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

import torch
import torch.nn as nn

from .distributed import full_value
from .masking import MaskedLayer, MaskTechnique, check_ablation
from .rules import check_temperature
from .summary import l0_summary


def masked_modules(model: nn.Module) -> dict[str, MaskedLayer]:
    """Every converted mask layer of ``model`` by its dotted name.

    Args:
        model: Any model.

    Returns:
        ``{dotted name: MaskedLayer}``, in module order.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> net = mm.convert(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), "hard_concrete")
        >>> list(mm.masked_modules(net))
        ['0', '1']
    """
    return {name: m for name, m in model.named_modules() if isinstance(m, MaskedLayer)}


def _select(model: nn.Module, names: Iterable[str] | None) -> dict[str, MaskedLayer]:
    layers = masked_modules(model)
    if not layers:
        raise ValueError("the model has no masked layers: convert it with a mask mode first")
    if names is None:
        return layers
    names = [names] if isinstance(names, str) else list(names)
    chosen = {n: m for n, m in layers.items() if any(fnmatchcase(n, p) for p in names)}
    unknown = [p for p in names if not any(fnmatchcase(n, p) for n in layers)]
    if unknown:
        raise ValueError(f"{unknown} match no masked layer; masked layers: {list(layers)}")
    return chosen


def l0_loss(model: nn.Module) -> torch.Tensor:
    """Sum of every active mask's expected L0 (differentiable in training), float32 (or wider).

    Args:
        model: A model with masked layers.

    Returns:
        A scalar tensor (zero when nothing is masked).

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> net = mm.convert(nn.Sequential(nn.Linear(2, 2)), "continuous_sparsification")
        >>> float(mm.l0_loss(net).detach())  # sigmoid(0) * 4 entries
        2.0
    """
    layers = _select(model, None)
    terms = [
        full_value(tech.l0()) for layer in layers.values() if layer.use_masks
        for _, tech in layer._mask_modules()
    ]
    if not terms:  # every mask switched off: a zero on the model's device (not the CPU)
        return torch.zeros((), device=next(iter(layers.values())).weight.device)
    return torch.stack([t.to(terms[0].device) for t in terms]).sum()


def _count(tech: MaskTechnique) -> float:
    # hard masks are counted exactly (a float32 sum is inexact past 2**24 entries)
    if tech.training and tech.learnable:
        return float(full_value(tech.l0()))
    return float(int(full_value(tech.circuit().sum())))


class L0Stats(dict):
    """The dict [`l0_stats`][modeopt_masks.mask_controls.l0_stats] returns; ``print()`` shows a short summary (total, density
    per layer) instead of every layer's name.

    Examples:
        >>> from modeopt_masks.mask_controls import L0Stats
        >>> s = L0Stats(total_l0=2.0, max_l0=4, layer2l0={"0": 2.0}, layer2maxl0={"0": 4})
        >>> s == {"total_l0": 2.0, "max_l0": 4, "layer2l0": {"0": 2.0}, "layer2maxl0": {"0": 4}}
        True
        >>> print(s.summary().splitlines()[0])
        L0Stats: 2 of 4 mask entries on (50.0%) in 1 layer
    """

    def summary(self) -> str:
        """Total entries on, and the density of each layer (short)."""
        return l0_summary(self)

    __repr__ = summary
    __str__ = summary


def l0_stats(model: nn.Module) -> L0Stats:
    """``total_l0``, ``max_l0`` and per-layer ``layer2l0`` / ``layer2maxl0`` (weight + bias masks).

    In eval the counts are hard (entries in the circuit); in training they are
    the expected values.

    Args:
        model: A model with masked layers.

    Returns:
        An ``L0Stats`` dict.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> net = mm.convert(nn.Sequential(nn.Linear(10, 10)), "magnitude_pruning")
        >>> mm.l0_stats(net)["layer2l0"]
        {'0': 50.0}
    """
    layer2l0, layer2max = {}, {}
    with torch.no_grad():
        for name, layer in _select(model, None).items():
            techniques = [tech for _, tech in layer._mask_modules()]
            layer2l0[name] = float(sum(_count(t) for t in techniques))
            layer2max[name] = int(sum(int(torch.Size(t.shape).numel()) for t in techniques))
    return L0Stats(
        total_l0=float(sum(layer2l0.values())),
        max_l0=int(sum(layer2max.values())),
        layer2l0=layer2l0,
        layer2maxl0=layer2max,
    )


def set_temperature(model: nn.Module, temperature: float, names: Iterable[str] | None = None) -> None:
    """Set the temperature of every mask that has one (``names``: globs to restrict).

    Args:
        model: A model with masked layers.
        temperature: The new temperature (positive).
        names: Globs of layer names to restrict to (``None``: all).

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> net = mm.convert(nn.Sequential(nn.Linear(2, 2)), "hard_concrete")
        >>> mm.set_temperature(net, 0.5); net[0].weight_mask.temperature
        0.5
    """
    temperature = check_temperature(temperature)
    techniques = [t for layer in _select(model, names).values() for _, t in layer._mask_modules()]
    if not any(t.has_temperature for t in techniques):
        raise ValueError("none of these masks has a temperature (magnitude_pruning masks are fixed)")
    for tech in techniques:
        if tech.has_temperature:
            tech.temperature = temperature


def get_temperature(model: nn.Module) -> float:
    """The masks' temperature; an error if the layers disagree or none has one.

    Args:
        model: A model with masked layers.

    Returns:
        The common temperature.

    Raises:
        ValueError: When no mask has a temperature or the layers disagree.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> mm.get_temperature(mm.convert(nn.Sequential(nn.Linear(2, 2)), "hard_concrete"))
        0.6666666666666666
    """
    values = {
        t.temperature for layer in _select(model, None).values()
        for _, t in layer._mask_modules() if t.has_temperature
    }
    if not values:
        raise ValueError("none of the masks has a temperature (magnitude_pruning masks are fixed)")
    if len(values) != 1:
        raise ValueError(f"masks have no single temperature: {sorted(values)}")
    return values.pop()


def set_ablation(
    model: nn.Module,
    ablation: str,
    force_resample: bool = False,
    names: Iterable[str] | None = None,
) -> None:
    """Set the ablation mode (one of ``ABLATIONS``) of all (or the named) masked layers.

    Args:
        model: A model with masked layers.
        ablation: One of [`ABLATIONS`][modeopt_masks.masking.ABLATIONS].
        force_resample: Draw new random ablation values even if some exist.
        names: Globs of layer names to restrict to (``None``: all).

    Raises:
        ValueError: For an unknown ablation or names that match no masked layer.

    Examples:
        >>> import torch, torch.nn as nn, modeopt_masks as mm
        >>> net = mm.convert(nn.Sequential(nn.Linear(4, 4)), "magnitude_pruning").eval()
        >>> mm.set_ablation(net, "zero_ablate")
        >>> int((net[0].effective_weight() == 0).sum())  # the other half is removed
        8
    """
    check_ablation(ablation)
    for layer in _select(model, names).values():
        layer.set_ablation(ablation, force_resample=force_resample)


def use_masks(model: nn.Module, value: bool, names: Iterable[str] | None = None) -> None:
    """Switch masks on or off (off = the layer's original output), for all or the named layers.

    Args:
        model: A model with masked layers.
        value: ``True`` to apply the masks, ``False`` for the original outputs.
        names: Globs of layer names to restrict to (``None``: all).

    Examples:
        >>> import torch, torch.nn as nn, modeopt_masks as mm
        >>> net = mm.convert(nn.Sequential(nn.Linear(4, 4)), "magnitude_pruning")
        >>> mm.use_masks(net, False); torch.equal(net[0].effective_weight(), net[0].weight)
        True
    """
    if not isinstance(value, bool):  # "False" is truthy: a silent no-op otherwise
        raise TypeError(f"use_masks takes True or False, got {value!r:.80}")
    for layer in _select(model, names).values():
        layer.use_masks = value
