"""Joint search over heads, MLP channels, hidden size and depth under one target.

Scores of different axes are not on one scale (a residual channel's gradient
is no measure of a head's), so one global threshold cannot trade them. The
joint search does what Minitron does with its candidate architectures: the
*outer* axes (hidden size, depth) take a few candidate ratios each
(``axis_ratios``, default ``1.0, 0.9, ..., 0.5``, within each rule's
``min_ratio``); for every combination the *inner* axes (heads, MLP channels)
are fitted to the target by the usual threshold search on their own scores, and
each candidate that meets the target is scored on held-out calibration batches
(the masked model, no training): by default (``rank_by="auto"``) the KL divergence
of its outputs from the unpruned model's where they have logits, else the task loss
(``"kl"`` and ``"loss"`` force one; see
[`CandidateRanker`][modeopt_masks.searchers.joint.CandidateRanker] for the
measurement behind the default). The candidate with the lowest score among those
that land within 1% under the target wins (a candidate
whose outer axes alone already undershoot it by more cannot spend the budget);
every one is listed in ``SearchResult.candidates``.

Without inner axes the last outer axis (hidden size, else depth) is the one
fitted to the target and the others take the candidates. Cost: one evaluation
per candidate plus one of the unpruned model (held-out batches, forward only), on
top of one scoring pass.

Examples:
    >>> from modeopt_masks.searchers.joint import candidate_counts
    >>> candidate_counts([4, 8, 12, 16], (1.0, 0.75, 0.5))
    [16, 12, 8]
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from ..recovery import Distiller, per_token_kl
from ..structured.scores import default_loss, model_device, output_logits, run_model, to_device
from .base import SearchPlan, SearchResult

#: hparam kinds the joint search enumerates (the others are fitted to the target)
OUTER_KINDS: tuple[str, ...] = ("hidden", "blocks")
#: default candidate ratios per outer axis (``axis_ratios`` overrides them by axis name)
DEFAULT_RATIOS: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
AXIS_NAMES = {"hidden": "hidden", "blocks": "depth"}
#: a candidate "lands" on the target when it is at most this fraction under it
TOLERANCE = 0.01
#: ways to rank candidates ([`CandidateRanker`][modeopt_masks.searchers.joint.CandidateRanker])
RANK_BY: tuple[str, ...] = ("auto", "kl", "loss")


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


class CandidateRanker:
    """Scores a candidate subnetwork on held-out batches: KL to the unpruned model, or loss.

    ``rank_by="kl"`` compares the softmax of the candidate's logits with the unpruned
    model's on the same batches (mean over every position); ``"loss"`` takes the task loss
    (``loss_func``, default ``output.loss``); ``"auto"`` is KL when the model's output has
    ``logits``, else loss. KL is the default because it ranks with far fewer tokens: on
    SmolLM2-135M at 80% params, mean LM loss on 512 held-out tokens put a 29-block
    candidate first (3.590 vs 3.619), held-out perplexity on 4,096 other tokens says the
    opposite (20.00 vs 18.36), KL on the same 512 tokens agrees with it (0.518 vs 0.480).
    The unpruned model's log-probabilities of the batches are kept (batch x positions x
    classes floats per batch). The model is left in the mode it was in. Under
    ``torch.distributed`` with ``all_reduce`` each score is averaged over the ranks (each
    ranking its own batches), so every rank picks the same candidate.

    Examples:
        >>> import torch
        >>> from modeopt_masks.searchers.joint import CandidateRanker
        >>> net = torch.nn.Linear(3, 4)
        >>> ranker = CandidateRanker(net, [torch.ones(2, 3)], rank_by="kl")
        >>> ranker(net)["kl"]
        0.0
    """

    def __init__(self, model: nn.Module, batches: Sequence[Any], rank_by: str = "auto",
                 loss_func: Callable[..., Any] | None = None,
                 collect_func: Callable[[Any], Any] | None = None,
                 all_reduce: bool = True) -> None:
        if rank_by not in RANK_BY:
            raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
        self.batches, self.loss_func, self.collect_func = list(batches), loss_func, collect_func
        self.all_reduce = all_reduce
        self.references: list[torch.Tensor] | None = None
        self.key = "loss"
        if rank_by != "loss":
            refs = [output_logits(out, tensor_ok=rank_by == "kl") for out, _ in self._outputs(model)]
            if all(r is not None for r in refs) and refs:
                self.references = [torch.log_softmax(r.float(), -1) for r in refs if r is not None]
                self.key = "kl"
            elif rank_by == "kl":
                raise ValueError("rank_by='kl' needs model outputs with logits (or a tensor)")

    def _outputs(self, model: nn.Module) -> list[tuple[Any, Any]]:
        device = model_device(model)
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = []
                for batch in self.batches:
                    batch = to_device(batch, device)
                    inputs = self.collect_func(batch) if self.collect_func is not None else batch
                    out.append((run_model(model, inputs), batch))
                return out
        finally:
            model.train(was)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        """``{"kl": ..., "loss": ...}`` of ``model`` as it is now (each where available)."""
        kl, losses = [], []
        for i, (out, batch) in enumerate(self._outputs(model)):
            if self.references is not None:
                logits = output_logits(out)
                assert logits is not None
                logp = torch.log_softmax(logits.float(), -1)
                kl.append(float(per_token_kl(logp, self.references[i]).mean()))
            if self.loss_func is not None or self.key == "loss":
                losses.append(float((self.loss_func or default_loss)(out, batch)))
            elif getattr(out, "loss", None) is not None:
                losses.append(float(out.loss))
        n = max(1, len(self.batches))
        scores = {"loss": sum(losses) / n} if losses else {}
        if kl:
            scores["kl"] = sum(kl) / n
        if self.all_reduce and dist.is_available() and dist.is_initialized():
            keys = sorted(scores)
            both = torch.tensor([scores[k] for k in keys], dtype=torch.float64,
                                device=model_device(model))
            dist.all_reduce(both)
            scores = dict(zip(keys, (both / dist.get_world_size()).tolist(), strict=True))
        return scores


def recovered_scores(model: nn.Module, teacher: nn.Module, ranker: CandidateRanker,
                     batches: Sequence[Any], steps: int, lr: float) -> dict[str, float]:
    """The candidate's ranking scores after ``steps`` distillation steps from ``teacher``
    (Minitron's lightweight retraining before it ranks); the weights are restored after.

    Examples:
        >>> import torch
        >>> from modeopt_masks.searchers.joint import CandidateRanker, recovered_scores
        >>> _ = torch.manual_seed(0)
        >>> teacher, student = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
        >>> x = [torch.randn(8, 3)]
        >>> ranker = CandidateRanker(teacher, x, rank_by="kl")
        >>> before = student.weight.clone()
        >>> recovered_scores(student, teacher, ranker, x, 20, 0.05)["kl"] < ranker(student)["kl"]
        True
        >>> torch.equal(student.weight, before)
        True
    """
    distiller = Distiller(model, teacher, lr=lr)
    params = distiller.trainable_parameters()
    saved = [p.detach().clone() for p in params]
    was = model.training
    try:
        for i in range(steps):
            distiller.step(batches[i % len(batches)])
        return ranker(model)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        model.train(was)


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
    for hp in hps.values():  # the reference outputs are the unpruned model's
        hp.keep(list(range(hp.n_units)))
    ranker = CandidateRanker(model, eval_batches, cfg["rank_by"], cfg["loss_func"],
                             cfg["collect_func"], cfg["all_reduce"])
    rank_steps = cfg["rank_steps"]
    if rank_steps:  # the teacher of the candidates' short recovery: the unpruned model
        if cfg["data_loader"] is None:
            raise ValueError("rank_steps needs config['data_loader'] (the batches the "
                             "candidates are distilled on)")
        teacher = copy.deepcopy(model).eval()
        train_batches = list(cfg["data_loader"])
    ratios = cfg["axis_ratios"] or {}
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
        scores = ranker(model)
        if rank_steps:
            scores = {**{f"{k}_before_steps": v for k, v in scores.items()},
                      **recovered_scores(model, teacher, ranker, train_batches, rank_steps,
                                         cfg["rank_lr"])}
        # a candidate whose other axes cannot spend the budget (it lands > 1% under the
        # target even with them at full width) only ranks when no candidate lands on it
        tight = all(v["achieved"] >= (1 - TOLERANCE) * v["target"]
                    for v in result.constraints.values())
        tried.append({**{f"{n}": c for n, c in fixed.items()}, "feasible": True, **scores,
                      "tight": tight, **{k: v["ratio"] for k, v in result.constraints.items()}})
        rank = (not tight, scores[ranker.key])
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
