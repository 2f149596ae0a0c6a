"""Joint search over heads, MLP channels, hidden size and depth under one target.

Scores of different axes are not on one scale (a residual channel's gradient
is no measure of a head's), so one global threshold cannot trade them. The
joint search does what Minitron does with its candidate architectures: the
*outer* axes (hidden size, depth) take a few candidate ratios each
(``axis_ratios``, default ``1.0, 0.9, ..., 0.5``, within each rule's
``min_ratio``); for every combination the *inner* axes (heads, MLP channels)
are fitted to the target by the usual threshold search on their own scores, and
each candidate that meets the target is scored by its loss on held-out
calibration batches (the masked model, no training). The candidate with the
lowest loss among those that land within 1% under the target wins (a candidate
whose outer axes alone already undershoot it by more cannot spend the budget);
every one is listed in ``SearchResult.candidates``.

Without inner axes the last outer axis (hidden size, else depth) is the one
fitted to the target and the others take the candidates. Cost: one loss
evaluation per candidate (held-out batches, forward only), on top of one
scoring pass.

Examples:
    >>> from modeopt_masks.searchers.joint import candidate_counts
    >>> candidate_counts([4, 8, 12, 16], (1.0, 0.75, 0.5))
    [16, 12, 8]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn

from ..structured.scores import default_loss, run_model, to_device
from .base import SearchPlan, SearchResult

#: hparam kinds the joint search enumerates (the others are fitted to the target)
OUTER_KINDS: tuple[str, ...] = ("hidden", "blocks")
#: default candidate ratios per outer axis (``axis_ratios`` overrides them by axis name)
DEFAULT_RATIOS: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
AXIS_NAMES = {"hidden": "hidden", "blocks": "depth"}
#: a candidate "lands" on the target when it is at most this fraction under it
TOLERANCE = 0.01


def candidate_counts(choices: Sequence[int], ratios: Sequence[float]) -> list[int]:
    """For each ratio the choice nearest to ``ratio * full`` (deduplicated, in ratio order)."""
    full = choices[-1]
    out: list[int] = []
    for r in ratios:
        c = min(choices, key=lambda c: (abs(c - r * full), -c))
        if c not in out:
            out.append(c)
    return out


def needs_joint(plan: SearchPlan) -> bool:
    """Whether ``plan`` has an outer axis next to any other hparam (one threshold would do)."""
    kinds = [hp.structure.kind for hp in plan.hparams.values()]
    return any(k in OUTER_KINDS for k in kinds) and len(plan.hparams) > 1


def mean_loss(model: nn.Module, batches: Sequence[Any], loss_func: Callable[..., Any] | None,
              collect_func: Callable[[Any], Any] | None) -> float:
    """Mean loss of ``model`` (eval mode, no grad) over ``batches``."""
    loss_func = loss_func or default_loss
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was = model.training
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for batch in batches:
                batch = to_device(batch, device)
                inputs = collect_func(batch) if collect_func is not None else batch
                total += float(loss_func(run_model(model, inputs), batch))
    finally:
        model.train(was)
    return total / max(1, len(batches))


def joint_select(
    select: Callable[[SearchPlan, dict[str, list[float]], dict[str, torch.Tensor]], SearchResult],
    model: nn.Module, plan: SearchPlan, sens: dict[str, list[float]],
    orders: dict[str, torch.Tensor], eval_batches: Sequence[Any], cfg: dict[str, Any],
) -> SearchResult:
    """Enumerate outer-axis candidates, fit the rest with ``select``, keep the best by loss."""
    hps = plan.hparams
    outer = [n for n, hp in hps.items() if hp.structure.kind in OUTER_KINDS]
    inner = [n for n in hps if n not in outer]
    if not inner:  # fit the finest outer axis (hidden size) to the target, enumerate the rest
        fitted = next((n for n in outer if hps[n].structure.kind == "hidden"), outer[-1])
        outer = [n for n in outer if n != fitted]
    ratios = cfg.get("axis_ratios") or {}
    grids = []
    for n in outer:
        axis = AXIS_NAMES[hps[n].structure.kind]
        grids.append(candidate_counts(plan.choices[n], ratios.get(axis, DEFAULT_RATIOS)))
    best: tuple[tuple[bool, float], SearchResult] | None = None
    tried: list[dict[str, Any]] = []
    for combo in itertools.product(*grids):
        fixed = dict(zip(outer, combo, strict=True))
        sub = replace(plan, choices={**plan.choices, **{n: [c] for n, c in fixed.items()}})
        smallest = sub.cost_model.cost({n: ch[0] for n, ch in sub.choices.items()})
        if any(smallest[k] > t for k, t in sub.targets.items()):
            tried.append({**{f"{n}": c for n, c in fixed.items()}, "feasible": False})
            continue
        sub_sens = {**sens, **{n: [0.0] for n in fixed}}
        result = select(sub, sub_sens, orders)
        loss = mean_loss(model, eval_batches, cfg.get("loss_func"), cfg.get("collect_func"))
        # a candidate whose other axes cannot spend the budget (it lands > 1% under the
        # target even with them at full width) only ranks when no candidate lands on it
        tight = all(v["achieved"] >= (1 - TOLERANCE) * v["target"]
                    for v in result.constraints.values())
        tried.append({**{f"{n}": c for n, c in fixed.items()}, "feasible": True, "loss": loss,
                      "tight": tight, **{k: v["ratio"] for k, v in result.constraints.items()}})
        rank = (not tight, loss)
        if best is None or rank < best[0]:
            best = (rank, result)
    if best is None:
        raise ValueError(f"joint search: no candidate of {outer} meets the constraints "
                         f"{plan.targets}; lower the axis ratios or the min_ratio bounds")
    result = best[1]
    result.choices = dict(plan.choices)
    for n, hp in hps.items():
        hp.keep(result.kept[n])
    result.candidates = tried
    return result
