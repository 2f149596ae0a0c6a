"""Planted circuits: a known subnetwork of a larger model, recovered by head or edge masks.

The teacher is the model restricted to a planted circuit (a random set of attention heads,
or of edges of the :class:`EdgeMaskedModel` graph); masks trained to match the teacher's
logits under a density controller set to the planted size should find exactly it.
:func:`recover_planted` reports precision/recall, the faithfulness of the recovered circuit
(top-1 agreement with the teacher) and the same for same-size random circuits.

Examples:
    >>> from modeopt_masks.circuits.planted import recover_planted
    >>> try:
    ...     recover_planted("neuron")
    ... except ValueError as e:
    ...     print(e)
    level must be 'head' or 'edge', got 'neuron'
"""

from __future__ import annotations

import copy
import random
from typing import Any, cast

import torch
import torch.nn as nn

from ..modes.hard_concrete import HardConcreteMask
from ..training import DensityController
from .edges import EdgeMaskedModel
from .ground_truth import fit_edges, precision_recall

Unit = tuple[str, str]


def planted_model(n_layer: int = 4, n_head: int = 4, d: int = 64, seed: int = 0) -> nn.Module:
    """A random GPT-2 (vocab 50) whose attention outputs are scaled up so every head matters.

    Examples:
        >>> from modeopt_masks.circuits.planted import planted_model
        >>> planted_model(n_layer=1).config.n_head
        4
    """
    import transformers as tf

    torch.manual_seed(seed)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=d, n_head=n_head, n_layer=n_layer,
                                             vocab_size=50, n_positions=16, bos_token_id=0,
                                             eos_token_id=0)).eval()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_proj.weight.mul_(30)
    return model


def _agreement(logits: torch.Tensor, teacher: torch.Tensor) -> float:
    return float((logits.argmax(-1) == teacher.argmax(-1)).float().mean())


def recover_planted(level: str, n_layer: int = 4, planted: int = 4, steps: int = 300,
                    n_random: int = 10, seed: int = 0) -> dict[str, Any]:
    """Plant ``planted`` heads (``level="head"``) or a connected edge circuit through
    ``planted`` heads (``"edge"``, see :func:`planted_edges`), and recover it.

    Returns ``precision``, ``recall``, ``faithfulness`` (top-1 agreement of the recovered
    circuit alone with the teacher), ``full_model`` (the same for the whole model),
    ``random`` (for ``n_random`` random circuits of the planted size), ``size`` and
    ``total`` (units in the graph).
    """
    if level not in ("head", "edge"):
        raise ValueError(f"level must be 'head' or 'edge', got {level!r}")
    model = planted_model(n_layer=n_layer, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, 50, (8, 12), generator=g)
    rng = random.Random(seed)
    with torch.no_grad():
        full = model(ids).logits
    if level == "head":
        return _heads(model, ids, full, planted, steps, n_random, rng)
    return _edges(model, ids, full, planted, steps, n_random, rng)


def _heads(model: nn.Module, ids: torch.Tensor, full: torch.Tensor, planted: int, steps: int,
           n_random: int, rng: random.Random) -> dict[str, Any]:
    import modeopt_masks as mm

    from ..heads import head_layouts
    from ..targets import target_rules

    layouts = head_layouts(model)
    units = [(name, str(h)) for name, lay in layouts.items() for h in range(lay.heads)]
    truth = rng.sample(units, planted)
    masked = mm.convert(copy.deepcopy(model), ("hard_concrete", target_rules(
        {"hf.Conv1D": list(layouts)}, {"mask_unit": "head", "mask_init_percentage": 0.9})))

    def gate(name: str) -> HardConcreteMask:
        return cast(HardConcreteMask, masked.get_submodule(name).weight_mask)

    def set_units(keep: list[Unit]) -> None:
        with torch.no_grad():
            for name, lay in layouts.items():
                la = gate(name).log_alpha
                la.copy_(torch.tensor([3.0 if (name, str(h)) in keep else -3.0
                                       for h in range(lay.heads)]))

    def logits_with(keep: list[Unit]) -> torch.Tensor:
        saved = {n: gate(n).log_alpha.detach().clone() for n in layouts}
        set_units(keep)
        masked.eval()
        with torch.no_grad():
            out = masked(ids).logits
        with torch.no_grad():
            for n, s in saved.items():
                gate(n).log_alpha.copy_(s)
        return out

    teacher = logits_with(truth)
    gates = [gate(n).log_alpha for n in layouts]
    controller = DensityController(target_density=planted / len(units), lr=1.0, lambda_2_init=10.0)
    opt = torch.optim.Adam(gates, lr=0.05)
    masked.train()
    for _ in range(steps):
        loss = 300 * torch.nn.functional.mse_loss(masked(ids).logits, teacher) + controller(masked)
        opt.zero_grad()
        loss.backward()
        opt.step()
    masked.eval()
    found = [(n, str(h)) for n in layouts
             for h in gate(n).circuit().nonzero().flatten().tolist()]
    return _report(found, truth, units, teacher, full, logits_with, n_random, rng)


def _edges(model: nn.Module, ids: torch.Tensor, full: torch.Tensor, planted: int, steps: int,
           n_random: int, rng: random.Random) -> dict[str, Any]:
    edges = EdgeMaskedModel(model)
    units = edges.all_edges()
    truth = planted_edges(edges, planted, rng)

    def logits_with(keep: list[Unit]) -> torch.Tensor:
        saved = [p.detach().clone() for p in edges.mask_parameters()]
        edges.eval()
        edges.set_edges(keep)
        with torch.no_grad():
            out = edges(ids).logits
            for p, s in zip(edges.mask_parameters(), saved, strict=True):
                p.copy_(s)
        return out

    teacher = logits_with(truth)
    controller = DensityController(target_density=planted / len(units), lr=1.0, lambda_2_init=10.0)
    fit_edges(edges, lambda e: 300 * torch.nn.functional.mse_loss(e(ids).logits, teacher),
              steps, lr=0.05, controller=controller)
    found = edges.edge_list()
    report = _report(found, truth, units, teacher, full, logits_with, n_random, rng)
    edges.remove_hooks()
    return report


def planted_edges(edges: EdgeMaskedModel, heads: int, rng: random.Random) -> list[Unit]:
    """A connected planted edge circuit through ``heads`` random heads (at most one a layer).

    ``embed -> logits``; each chosen head reads its key and value from ``embed`` and its
    query from the previous chosen head (``embed`` for the first), and writes to ``logits``.

    Examples:
        >>> import random
        >>> from modeopt_masks.circuits.planted import planted_edges, planted_model
        >>> from modeopt_masks.circuits import EdgeMaskedModel
        >>> e = EdgeMaskedModel(planted_model(n_layer=2))
        >>> len(planted_edges(e, 2, random.Random(0)))
        9
    """
    n_layers = len(edges._layers)
    if not 1 <= heads <= n_layers:
        raise ValueError(f"heads must be in [1, {n_layers}] (one a layer), got {heads}")
    out: list[Unit] = [("embed", "logits")]
    previous = "embed"
    for i in sorted(rng.sample(range(n_layers), heads)):
        head = f"a{i}.h{rng.randrange(edges._layers[i].n_heads)}"
        out += [(previous, f"{head}.q"), ("embed", f"{head}.k"), ("embed", f"{head}.v"),
                (head, "logits")]
        previous = head
    return out


def _report(found: list[Unit], truth: list[Unit], units: list[Unit], teacher: torch.Tensor,
            full: torch.Tensor, logits_with: Any, n_random: int,
            rng: random.Random) -> dict[str, Any]:
    precision, recall = precision_recall(found, truth)
    random_sets = [rng.sample(units, len(truth)) for _ in range(n_random)]
    return {
        "precision": precision, "recall": recall,
        "faithfulness": _agreement(logits_with(found), teacher),
        "full_model": _agreement(full, teacher),
        "random": [_agreement(logits_with(s), teacher) for s in random_sets],
        "size": len(truth), "found": len(found), "total": len(units),
    }
