"""Start learned masks from a hard circuit (e.g. a Wanda or magnitude mask).

[`init_from_circuit`][modeopt_masks.mask_init.init_from_circuit] sets the parameter of each learned mask
(``continuous_sparsification`` logits, ``hard_concrete`` ``log_alpha``: the masks whose
circuit is ``parameter > 0``) to ``+margin`` where the circuit keeps an entry and
``-margin`` where it drops one, so training starts from that subnetwork.

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> from modeopt_masks.mask_init import init_from_circuit
    >>> net = mm.convert(nn.Sequential(nn.Linear(4, 4)), "magnitude_pruning")
    >>> circuit = {"0": net[0].weight_mask.circuit().clone()}
    >>> net = mm.convert(mm.unconvert(net), "continuous_sparsification")
    >>> init_from_circuit(net, circuit)
    >>> torch.equal(net[0].weight_mask.circuit(), circuit["0"])
    True
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from .mask_controls import masked_modules


def circuits_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The hard weight circuit of every masked layer of ``model`` (copies)."""
    return {n: layer.weight_mask.circuit().detach().clone()
            for n, layer in masked_modules(model).items()}


def init_from_circuit(model: nn.Module, circuits: Mapping[str, torch.Tensor] | nn.Module,
                      margin: float = 3.0) -> None:
    """Set the learned weight masks of ``model`` so that their circuit is ``circuits``.

    ``circuits``: ``{layer name: bool tensor}`` or a model with masks (its circuits).
    Layers of ``model`` not named keep their masks. A name that is not a masked layer,
    a shape that differs, or a mask that is not learned raises a ``ValueError``.
    """
    if isinstance(circuits, nn.Module):
        circuits = circuits_of(circuits)
    if not margin > 0:
        raise ValueError(f"margin must be positive, got {margin}")
    layers = masked_modules(model)
    unknown = sorted(set(circuits) - set(layers))
    if unknown:
        raise ValueError(f"{unknown} are not masked layers of the model; it has {list(layers)}")
    planned = []
    for name, circuit in circuits.items():
        tech = layers[name].weight_mask
        params = [p for p in tech.parameters(recurse=False) if tuple(p.shape) == tuple(circuit.shape)]
        if not tech.learnable or len(params) != 1:
            raise ValueError(
                f"{name!r}: its mask ({type(tech).__name__}, shape {tech.shape}) has no learned "
                f"parameter of the circuit's shape {tuple(circuit.shape)}; convert with "
                "continuous_sparsification or hard_concrete on the same layers"
            )
        planned.append((name, tech, params[0], circuit.to(params[0].device).bool()))
    for name, tech, param, circuit in planned:
        old = param.detach().clone()
        with torch.no_grad():
            param.copy_(torch.where(circuit, margin, -margin).to(param.dtype))
        if not torch.equal(tech.circuit(), circuit):
            with torch.no_grad():
                param.copy_(old)
            raise ValueError(f"{name!r}: {type(tech).__name__} does not read its circuit as "
                             "parameter > 0; cannot start it from a circuit")
