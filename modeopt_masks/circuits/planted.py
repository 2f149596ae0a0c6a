"""Planted circuits: a known subnetwork of a larger model, recovered by weight, head or edge masks.

The teacher is the model restricted to a planted circuit (a random subset of weights,
of attention heads, or of edges of the [`EdgeMaskedModel`][modeopt_masks.circuits.edges.EdgeMaskedModel] graph); masks trained to match the teacher's
logits under a density controller set to the planted size should find exactly it.
[`recover_planted`][modeopt_masks.circuits.planted.recover_planted] reports precision/recall, the faithfulness of the recovered circuit
(top-1 agreement with the teacher) and the same for same-size random circuits.

Examples:
    >>> from modeopt_masks.circuits.planted import recover_planted
    >>> try:
    ...     recover_planted("neuron")
    ... except ValueError as e:
    ...     print(e)
    level must be one of 'weight', 'head', 'edge', got 'neuron'
"""

from __future__ import annotations

import copy
import random
from typing import Any, cast

import torch
import torch.nn as nn

from ..masking import MaskTechnique
from ..modes.hard_concrete import HardConcreteMask
from ..training import DensityController
from .edges import EdgeMaskedModel
from .ground_truth import evaluate_with_edges, fit_edges, precision_recall

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
                                             eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                             attn_pdrop=0.0)).eval()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_proj.weight.mul_(30)
    return model


def _agreement(logits: torch.Tensor, teacher: torch.Tensor) -> float:
    return float((logits.argmax(-1) == teacher.argmax(-1)).float().mean())


#: the levels [`recover_planted`][modeopt_masks.circuits.planted.recover_planted] plants a circuit at
LEVELS = ("weight", "head", "edge")


def recover_planted(level: str, n_layer: int = 4, planted: int = 4, steps: int = 300,
                    n_random: int = 10, seed: int = 0, density: float = 0.15,
                    equal_magnitude: bool = True, method: str = "continuous_sparsification",
                    restarts: int = 1, tol: float = 1e-3) -> dict[str, Any]:
    """Plant a circuit in a random GPT-2 at ``level`` and recover it with the library's masks.

    * ``"weight"``: a random ``density`` of the entries of every layer's residual-stream
      writers (``attn.c_proj``, ``mlp.c_proj``), recovered by weight masks (``method``:
      ``"continuous_sparsification"`` or ``"hard_concrete"``), see
      [`recover_planted_weights`][modeopt_masks.circuits.planted.recover_planted_weights];
    * ``"head"``: ``planted`` attention heads, recovered by head masks (best of
      ``restarts`` runs by task loss);
    * ``"edge"``: a connected edge circuit through ``planted`` heads (one a layer, see
      [`planted_edges`][modeopt_masks.circuits.planted.planted_edges]), recovered by edge masks;
      the ground truth is the planted edges whose single removal moves the teacher's
      logits (relative MSE above ``tol``), best of ``restarts`` runs by task loss.

    Returns ``precision``, ``recall``, ``faithfulness`` (top-1 agreement of the recovered
    circuit alone with the teacher), ``full_model`` (the same for the whole model),
    ``random`` (for ``n_random`` random circuits of the planted size), ``size`` and
    ``total`` (units in the graph); level-specific extras are documented with each level.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(map(repr, LEVELS))}, got {level!r}")
    if level == "weight":
        return recover_planted_weights(n_layer=n_layer, density=density, steps=steps,
                                       n_random=n_random, seed=seed,
                                       equal_magnitude=equal_magnitude, method=method)
    model = planted_model(n_layer=n_layer, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, 50, (8, 12), generator=g)
    rng = random.Random(seed)
    with torch.no_grad():
        full = model(ids).logits
    if level == "head":
        return _heads(model, ids, full, planted, steps, n_random, rng, restarts)
    return _edges(model, ids, full, planted, steps, n_random, rng, restarts, tol)


def _heads(model: nn.Module, ids: torch.Tensor, full: torch.Tensor, planted: int, steps: int,
           n_random: int, rng: random.Random, restarts: int) -> dict[str, Any]:
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
    start = [g.detach().clone() for g in gates]
    best: tuple[float, list[Unit]] | None = None
    for r in range(restarts):  # the gate search is non-convex: keep the best fit
        torch.manual_seed(1000 + r)
        with torch.no_grad():
            for g, s in zip(gates, start, strict=True):
                g.copy_(s + 0.01 * torch.randn_like(s))
        controller = DensityController(target_density=planted / len(units), steer="expected",
                                       lr=1.0, lambda_2_init=10.0, warmup_steps=0)
        opt = torch.optim.Adam(gates, lr=0.05)
        masked.train()
        for _ in range(steps):
            loss = (300 * torch.nn.functional.mse_loss(masked(ids).logits, teacher)
                    + controller(masked))
            opt.zero_grad()
            loss.backward()
            opt.step()
        masked.eval()
        found = [(n, str(h)) for n in layouts
                 for h in gate(n).circuit().nonzero().flatten().tolist()]
        fit = float((logits_with(found) - teacher).pow(2).mean())
        if best is None or fit < best[0]:
            best = (fit, found)
    assert best is not None
    found = best[1]
    return _report(found, truth, units, teacher, full, logits_with, n_random, rng)


def _edges(model: nn.Module, ids: torch.Tensor, full: torch.Tensor, heads: int, steps: int,
           n_random: int, rng: random.Random, restarts: int, tol: float) -> dict[str, Any]:
    edges = EdgeMaskedModel(model)
    units = edges.all_edges()
    planted = planted_edges(edges, heads, rng)

    def logits_with(keep: list[Unit]) -> torch.Tensor:
        return evaluate_with_edges(edges, keep, lambda out: out.logits, ids)

    teacher = logits_with(planted)
    scale = teacher.var()

    def moved(keep: list[Unit]) -> float:  # relative MSE to the teacher
        return float((logits_with(keep) - teacher).pow(2).mean() / scale)

    # at random init attention is nearly uniform: some planted q/k reads change nothing,
    # and no output-matching method can be asked for them (cf. tracr.functional_edges)
    truth = [e for e in planted if moved([x for x in planted if x != e]) > tol]
    start = [p.detach().clone() for p in edges.mask_parameters()]
    best: tuple[float, list[Unit]] | None = None
    for r in range(restarts):  # hard-concrete edge search is non-convex: keep the best fit
        torch.manual_seed(1000 + r)
        with torch.no_grad():
            for p, s in zip(edges.mask_parameters(), start, strict=True):
                p.copy_(s + 0.01 * torch.randn_like(s))
        controller = DensityController(target_density=len(truth) / len(units), steer="expected",
                                       lr=1.0, lambda_2_init=10.0, warmup_steps=0)
        fit_edges(edges, lambda e: 300 * torch.nn.functional.mse_loss(e(ids).logits, teacher),
                  steps, lr=0.05, controller=controller)
        found = reaching_logits(edges.edge_list())
        loss = moved(found)
        if best is None or loss < best[0]:
            best = (loss, found)
    assert best is not None
    report = _report(best[1], truth, units, teacher, full, logits_with, n_random, rng)
    p_all, r_all = precision_recall(best[1], planted)
    report.update(planted_size=len(planted), planted_precision=p_all, planted_recall=r_all,
                  restarts=restarts)
    edges.remove_hooks()
    return report


def reaching_logits(circuit: list[Unit]) -> list[Unit]:
    """The edges of ``circuit`` on a path to ``logits`` (an edge into a node whose output
    goes nowhere in the circuit cannot change the output).

    Examples:
        >>> from modeopt_masks.circuits.planted import reaching_logits
        >>> reaching_logits([("embed", "a0.h0.v"), ("a0.h0", "logits"), ("embed", "a0.h1.q")])
        [('embed', 'a0.h0.v'), ('a0.h0', 'logits')]
    """
    def node(reader: str) -> str:  # the reader "a0.h1.q" belongs to the node "a0.h1"
        return reader.rsplit(".", 1)[0]

    live = {"logits"}
    changed = True
    while changed:
        changed = False
        for w, r in circuit:
            if node(r) in live and w not in live:
                live.add(w)
                changed = True
    return [(w, r) for w, r in circuit if node(r) in live]


def recover_planted_weights(n_layer: int = 2, width: int = 32, density: float = 0.15,
                            steps: int = 1000, n_random: int = 10, seed: int = 0,
                            equal_magnitude: bool = True,
                            method: str = "continuous_sparsification") -> dict[str, Any]:
    """Plant a random ``density`` of the weights of every residual-stream writer
    (``attn.c_proj``, ``mlp.c_proj``) of a random GPT-2 and recover them with weight masks.

    The teacher is the model with only the planted entries of those layers kept (built
    by zeroing the others, without the library); the student is the full model
    converted with ``method`` on the same layers, its masks (base frozen) trained with
    Adam to the teacher's logits on fresh random tokens every step, under a
    [`DensityController`][modeopt_masks.training.DensityController] set to ``density``.
    The planted entries are a uniform random subset: with ``equal_magnitude`` (default)
    every entry of a masked layer is ``sign(w) * std(w)``, so magnitude carries no
    information and every entry matters as much; otherwise the layers keep their
    Gaussian init and the entries near 0, which change nothing, cannot be told apart.

    Input-side weights (``c_attn``, ``c_fc``) are not planted: their entries are seen only
    through a later projection (``c_fc``: 4d hidden units into d outputs, a large null
    space of a near-linear GELU) or not at all (query/key at random init).

    Returns the keys of [`recover_planted`][modeopt_masks.circuits.planted.recover_planted]
    (``random``: ``n_random`` random subsets of the planted size in every layer) and
    ``magnitude``, the ``precision``/``recall``/``faithfulness`` of the library's
    ``magnitude_pruning`` at the planted density (about ``density`` if the task is not
    trivial).

    Examples:
        >>> from modeopt_masks.circuits.planted import recover_planted_weights
        >>> r = recover_planted_weights(n_layer=1, steps=2, n_random=1)  # 15% of 32x32 + 128x32
        >>> r["size"], r["total"]
        (768, 5120)
    """
    import modeopt_masks as mm

    from ..targets import target_rules

    if method not in ("continuous_sparsification", "hard_concrete"):
        raise ValueError(f"method must be 'continuous_sparsification' or 'hard_concrete', got {method!r}")
    if not 0 < density < 1:
        raise ValueError(f"density is a fraction in (0, 1), got {density}")
    model = planted_model(n_layer=n_layer, d=width, seed=seed)
    layers = [f"transformer.h.{i}.{part}.c_proj" for i in range(n_layer) for part in ("attn", "mlp")]
    g = torch.Generator().manual_seed(seed + 1)
    truth: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for block in cast(Any, model).transformer.h:  # the MLPs matter as much as the heads
            block.mlp.c_fc.weight.mul_(8)
            block.mlp.c_proj.weight.mul_(8)
        for name in layers:
            w = _weight(model, name)
            if equal_magnitude:
                w.copy_(w.sign() * w.std())
            truth[name] = _random_subset(w.shape, round(density * w.numel()), g)
    teacher_model = copy.deepcopy(model)
    with torch.no_grad():
        for name in layers:
            _weight(teacher_model, name).mul_(truth[name])

    def convert(mode: str, rule: dict[str, Any]) -> nn.Module:
        return mm.convert(copy.deepcopy(model), (mode, target_rules({"hf.Conv1D": layers}, rule)))

    rule = ({"mask_init_value": 1.0} if method == "continuous_sparsification"
            else {"mask_init_percentage": 0.9})
    student = convert(method, rule)
    for p in student.parameters():
        p.requires_grad_(False)
    gates = {n: _gate_parameter(_mask(student, n)) for n in layers}
    ids = torch.randint(0, 50, (32, 16), generator=g)  # evaluation tokens
    with torch.no_grad():
        teacher, full = teacher_model(ids).logits, model(ids).logits
    scale = teacher.var()
    for p in gates.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(list(gates.values()), lr=0.1)
    controller = DensityController(density, warmup_steps=max(1, int(0.4 * steps)))
    student.train()
    for _ in range(steps):
        batch = torch.randint(0, 50, (32, 16), generator=g)
        with torch.no_grad():
            target = teacher_model(batch).logits
        task = torch.nn.functional.mse_loss(student(batch).logits, target) / scale
        loss = task + controller(student)
        opt.zero_grad()
        loss.backward()
        opt.step()
    student.eval()
    found = {n: _mask(student, n).circuit().clone() for n in layers}

    def logits_with(keep: dict[str, torch.Tensor]) -> torch.Tensor:
        net = copy.deepcopy(model)
        with torch.no_grad():
            for name in layers:
                _weight(net, name).mul_(keep[name])
            return net(ids).logits

    magnitude_model = convert("magnitude_pruning", {"prune_percentage": 1 - density})
    magnitude = {n: _mask(magnitude_model, n).circuit().clone() for n in layers}

    def scores(keep: dict[str, torch.Tensor]) -> dict[str, float]:
        hit = sum(int((keep[n] & truth[n]).sum()) for n in layers)
        kept = sum(int(keep[n].sum()) for n in layers)
        return {"precision": hit / max(kept, 1), "recall": hit / sum(int(t.sum()) for t in truth.values()),
                "faithfulness": _agreement(logits_with(keep), teacher)}

    recovered = scores(found)
    randoms = [{n: _random_subset(t.shape, int(t.sum()), g) for n, t in truth.items()}
               for _ in range(n_random)]
    return {
        **recovered,
        "full_model": _agreement(full, teacher),
        "random": [_agreement(logits_with(r), teacher) for r in randoms],
        "magnitude": scores(magnitude),
        "size": sum(int(t.sum()) for t in truth.values()),
        "found": sum(int(f.sum()) for f in found.values()),
        "total": sum(t.numel() for t in truth.values()),
    }


def _random_subset(shape: torch.Size, k: int, g: torch.Generator) -> torch.Tensor:
    flat = torch.zeros(shape.numel(), dtype=torch.bool)
    flat[torch.randperm(shape.numel(), generator=g)[:k]] = True
    return flat.view(shape)


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    return cast(torch.Tensor, model.get_submodule(name).weight)


def _mask(model: nn.Module, name: str) -> MaskTechnique:
    return cast(MaskTechnique, model.get_submodule(name).weight_mask)


def _gate_parameter(mask: nn.Module) -> nn.Parameter:
    """The trainable tensor of a continuous-sparsification or hard-concrete mask."""
    return cast(nn.Parameter, getattr(mask, "logits", None) if hasattr(mask, "logits")
                else mask.log_alpha)


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
