"""Base searcher: constraints, config sanitising, the cost model and the threshold search.

A searcher turns per-hparam *sensitivities* (the normalised cost of keeping
each choice, 0 for keeping everything) into one global threshold ``t``: every
hparam keeps its smallest choice whose sensitivity is ``<= t``. The params
(and FLOPs) of that selection fall as ``t`` grows, so the searcher bisects
over the sorted candidate thresholds (the sensitivities themselves) for the
smallest ``t`` that meets every constraint. Because the candidates are the
sensitivity values, the search is exact and independent of the scale of the
scores (no absolute tolerance), and ends after ``log2(#choices)`` steps. The
budget left by the last threshold step (pruning one head can free much more
than the target asks) is then refilled greedily, one choice at a time, so the
result lands just under the target.

Params are counted analytically (units x parameters per unit); FLOPs are
measured once with ``torch.utils.flop_counter`` on ``dummy_input``, and only
when a ``flops`` constraint is given.

Examples:
    >>> from modeopt_masks.searchers.base import parse_constraints
    >>> parse_constraints({"params": "70%"}, {"params": 1000.0})
    {'params': 700.0}
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..structured.hparam import StructuredHParam, gradnas_hparams
from ..structured.scores import run_model, to_device
from ..summary import Summarised, search_summary

CONSTRAINT_KINDS = ("params", "flops")
#: what a cost term scales with: an hparam's kept units, or ``(depth hparam, block)`` kept
Factor = str | tuple[str, int]


@dataclass(repr=False)
class SearchResult(Summarised):
    """What a search chose and why.

    ``print(result)`` / ``result.summary()`` give a short summary.

    Args:
        selection: Kept units per hparam name.
        kept: Indices of the kept units per hparam.
        choices: Allowed unit counts per hparam.
        scores: Importance per unit, in original order.
        sensitivities: Per-hparam sensitivity values (binary searcher).
        constraints: Per kind, ``{"target", "achieved", "original", "ratio"}``.
        threshold: The importance threshold the search settled on.
        history: One entry per search step (threshold and costs).
        searcher: Name of the searcher that produced the result.
        candidates: The candidate subnetworks tried (joint search).
        seconds: How long the search took.

    Examples:
        >>> from modeopt_masks.searchers import SearchResult
        >>> r = SearchResult(selection={"a": 2}, kept={"a": [0, 3]})
        >>> r.to_dict()["selection"]
        {'a': 2}
    """

    selection: dict[str, int] = field(default_factory=dict)
    kept: dict[str, list[int]] = field(default_factory=dict)
    choices: dict[str, list[int]] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)
    sensitivities: dict[str, list[float]] = field(default_factory=dict)
    constraints: dict[str, dict[str, float]] = field(default_factory=dict)
    threshold: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    searcher: str = ""
    #: joint search (hidden size / depth with other axes): every candidate of per-axis counts
    #: it scored, with its held-out calibration loss and costs (see `.joint`)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the result."""
        return asdict(self)

    def summary(self) -> str:
        """Searcher, time, constraints reached and kept units per layer (short)."""
        return search_summary(self)


def parse_constraints(
    constraints: Mapping[str, Any], original: Mapping[str, float]
) -> dict[str, float]:
    """``{"params": "70%" | 1.2e6, "flops": ...}`` -> absolute targets.

    Examples:
        >>> parse_constraints({"flops": 5e6}, {"flops": 1e7})
        {'flops': 5000000.0}
    """
    if not constraints:
        raise ValueError(f"give at least one constraint; valid kinds: {list(CONSTRAINT_KINDS)}")
    out = {}
    for kind, value in constraints.items():
        if kind not in CONSTRAINT_KINDS:
            raise ValueError(f"unknown constraint {kind!r}; valid kinds: {list(CONSTRAINT_KINDS)}")
        if isinstance(value, str):
            text = value.strip()
            if not text.endswith("%"):
                raise ValueError(f"constraint {kind}={value!r}: a string must be a percentage like '70%'")
            try:
                frac = float(text[:-1]) / 100.0
            except ValueError:
                raise ValueError(f"constraint {kind}={value!r} is not a percentage") from None
            if not 0.0 < frac <= 1.0:
                raise ValueError(f"constraint {kind}={value!r} must be in (0%, 100%]")
            out[kind] = frac * original[kind]
        elif isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1:
            raise ValueError(f"constraint {kind}={value!r}: a number is an absolute count of "
                             f"{kind}; for a fraction write a percentage like "
                             f"'{value * 100:g}%'")
        elif isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            out[kind] = float(value)
        else:
            raise ValueError(f"constraint {kind}={value!r}: expected a positive number or 'N%'")
    return out


def count_params(model: nn.Module) -> int:
    """Parameters of ``model`` (shared tensors once).

    Args:
        model: Any module.

    Returns:
        The number of parameter entries, counting shared tensors once.
    """
    return sum(p.numel() for p in model.parameters())


class CostModel:
    """Params (exact, analytic) and FLOPs (measured once) of a selection.

    Every sliced tensor (and every module's own FLOPs) scales with the product
    of ``kept / n_units`` of the hparams that slice it: a layer between two
    searched dimensions (``Linear -> Linear -> Linear``) shrinks on both sides,
    so the count is exact, not a per-unit approximation.
    """

    def __init__(
        self, model: nn.Module, hparams: Mapping[str, StructuredHParam], kinds: tuple[str, ...],
        dummy_input: Any = None,
    ) -> None:
        self.n_units = {n: hp.n_units for n, hp in hparams.items()}
        self.original: dict[str, float] = {"params": float(count_params(model))}
        self.const: dict[str, float] = {}
        self.terms: dict[str, list[tuple[float, tuple[Factor, ...]]]] = {}
        #: depth hparams: their block names, and the order in which blocks are kept (most
        #: important first; the searcher sets it once scores exist)
        self.blocks = {n: list(hp.structure.blocks) for n, hp in hparams.items()
                       if hp.structure.kind == "blocks"}
        self.orders: dict[str, list[int]] = {n: list(range(len(b))) for n, b in self.blocks.items()}
        modules = dict(model.named_modules())
        # per tensor: the hparams slicing it, once per sliced dim (a pooler's weight loses
        # hidden channels on both sides: h^2; tied embeddings are one tensor, one dim)
        touched: dict[int, list[str]] = {}
        for n, hp in hparams.items():
            dims: dict[int, set[int]] = {}
            for sl in hp.structure.slices:
                tensor = getattr(modules[sl.module], sl.param, None)
                if isinstance(tensor, nn.Parameter) and sl.dim % tensor.dim() not in dims.setdefault(
                        id(tensor), set()):
                    dims[id(tensor)].add(sl.dim % tensor.dim())
                    touched.setdefault(id(tensor), []).append(n)
        self.const["params"] = 0.0
        self.terms["params"] = []
        seen: set[int] = set()
        for mname, module in modules.items():
            for p in module.parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                slicers = touched.get(id(p), [])
                factors: list[Factor] = list(slicers)
                block = self._block_of(mname)
                if block is not None:
                    factors.append(block)
                if not factors:
                    self.const["params"] += p.numel()
                    continue
                count = float(p.numel())
                for n in slicers:
                    count /= self.n_units[n]
                self.terms["params"].append((count, tuple(factors)))
        if "flops" in kinds:
            if dummy_input is None:
                raise ValueError("a 'flops' constraint needs dummy_input (one model input)")
            total, per_module = measure_flops(model, dummy_input)
            self.original["flops"] = float(total)
            exclusive = dict(per_module)
            for name, value in per_module.items():
                parent = _parent_in(name, per_module)
                if parent is not None:
                    exclusive[parent] -= value
            self.const["flops"] = float(total - per_module.get("", total))
            self.terms["flops"] = []
            for name, value in exclusive.items():
                scaled_by = tuple(
                    n for n, hp in hparams.items()
                    if any(name == s or name.startswith(s + ".") for s in hp.structure.flop_scope)
                )
                block = self._block_of(name)
                if not scaled_by and block is None:
                    self.const["flops"] += value
                    continue
                flops = float(value)
                for n in scaled_by:
                    flops /= self.n_units[n]
                self.terms["flops"].append(
                    (flops, scaled_by if block is None else (*scaled_by, block)))

    def _block_of(self, name: str) -> tuple[str, int] | None:
        """``(depth hparam, block index)`` of the block module ``name`` lies in, if any."""
        for n, blocks in self.blocks.items():
            for i, b in enumerate(blocks):
                if name == b or name.startswith(b + "."):
                    return (n, i)
        return None

    def cost(self, counts: Mapping[str, int]) -> dict[str, float]:
        """Params / FLOPs when hparam ``n`` keeps ``counts[n]`` units (a depth hparam keeps
        its first ``counts[n]`` blocks in `orders`)."""
        kept = {n: set(self.orders[n][: counts[n]]) for n in self.blocks}
        out = {}
        for kind, terms in self.terms.items():
            total = self.const[kind]
            for base, names in terms:
                for f in names:
                    if isinstance(f, tuple):
                        if f[1] not in kept[f[0]]:
                            base = 0.0
                            break
                    else:
                        base *= counts[f]
                total += base
            out[kind] = total
        return out


def _parent_in(name: str, names: Mapping[str, Any]) -> str | None:
    """The closest proper ancestor of ``name`` among ``names`` (``""`` is the root)."""
    if name == "":
        return None
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        cand = ".".join(parts[:i])
        if cand in names:
            return cand
    return "" if "" in names else None


def measure_flops(model: nn.Module, dummy_input: Any) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one forward on ``dummy_input`` and FLOPs per module name.

    Args:
        model: The model to run.
        dummy_input: Its input (a tensor, a tuple of positional args or a dict of kwargs).

    Returns:
        ``(total, per_module)``: FLOPs of the forward and FLOPs per module name.
    """
    param = next(model.parameters(), None)
    inputs = to_device(dummy_input, param.device) if param is not None else dummy_input
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            run_model(model, inputs)
    finally:
        model.train(was_training)
    per_module: dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = key.split(".", 1)[1] if "." in key else ""
        per_module[name] = int(sum(ops.values()))
    return int(counter.get_total_flops()), per_module


class BaseSearcher:
    """Shared search machinery; subclasses supply ``sensitivities`` and ``unit_orders``.

    Examples:
        >>> from modeopt_masks.searchers import GradientBinarySearcher
        >>> sorted(GradientBinarySearcher.default_config)[:3]
        ['all_reduce', 'axis_ratios', 'collect_func']
    """

    name = "base"
    #: valid config keys and their defaults (``...`` marks a required key)
    default_config: dict[str, Any] = {}

    def sanitize_config(self, config: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults filled in; unknown or missing required keys raise, naming the valid keys."""
        config = dict(config or {})
        unknown = sorted(set(config) - set(self.default_config))
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: unknown config key(s) {unknown}; valid keys: "
                f"{sorted(self.default_config)}"
            )
        out = {**self.default_config, **config}
        missing = sorted(k for k, v in out.items() if v is ...)
        if missing:
            raise ValueError(f"{type(self).__name__}: config needs {missing}")
        return out

    # -- subclass API -----------------------------------------------------------------------
    def prepare(self, model: nn.Module, hparams: dict[str, StructuredHParam],
                config: dict[str, Any], keep_pruned: bool = False) -> None:
        """Collect whatever the sensitivities need (scores, measurements). ``keep_pruned``:
        an iterative step, the units pruned by the earlier steps must stay pruned."""

    def unit_orders(self, hparams: dict[str, StructuredHParam]) -> dict[str, torch.Tensor]:
        """Units of each hparam from most to least important."""
        return {n: hp.unit_order() for n, hp in hparams.items()}

    def sensitivities(self, model: nn.Module, hparams: dict[str, StructuredHParam],
                      orders: dict[str, torch.Tensor], config: dict[str, Any]
                      ) -> dict[str, list[float]]:
        """Per hparam, per choice: the cost of keeping only that many units (full: 0)."""
        raise NotImplementedError

    # -- the search: plan, score, threshold, refill -----------------------------------------
    def search(
        self, model: nn.Module, constraints: Mapping[str, Any], dummy_input: Any = None,
        config: Mapping[str, Any] | None = None,
        hparams: dict[str, StructuredHParam] | None = None,
    ) -> SearchResult:
        """Validate ``config``, then `run` (``hparams``: default, those of ``model``)."""
        start = time.perf_counter()
        result = self.run(model, constraints, dummy_input, self.sanitize_config(config), hparams)
        result.seconds = time.perf_counter() - start
        return result

    def run(
        self, model: nn.Module, constraints: Mapping[str, Any], dummy_input: Any,
        cfg: dict[str, Any], hparams: dict[str, StructuredHParam] | None = None,
    ) -> SearchResult:
        """Plan, score, bisect the global threshold, refill, apply; ``cfg`` already sanitised."""
        plan = self.plan(model, constraints, dummy_input, hparams)
        sens, orders = self.score(model, plan, cfg)
        return self.select(plan, sens, orders)

    def plan(self, model: nn.Module, constraints: Mapping[str, Any], dummy_input: Any = None,
             hparams: dict[str, StructuredHParam] | None = None) -> SearchPlan:
        """The hparams, cost model and absolute targets; fails early when none can be met."""
        hparams = gradnas_hparams(model) if hparams is None else hparams
        if not hparams:
            raise ValueError("search needs a gradnas-converted model")
        for kind in constraints:
            if kind not in CONSTRAINT_KINDS:
                raise ValueError(f"unknown constraint {kind!r}; valid kinds: {list(CONSTRAINT_KINDS)}")
        kinds = tuple(k for k in CONSTRAINT_KINDS if k in constraints)
        cost_model = CostModel(model, hparams, kinds, dummy_input)
        plan = SearchPlan(hparams, cost_model, parse_constraints(constraints, cost_model.original),
                          {n: hp.choices for n, hp in hparams.items()},
                          uniform_ties(model, hparams))
        smallest = cost_model.cost({n: ch[0] for n, ch in plan.choices.items()})
        for kind, target in plan.targets.items():
            if smallest[kind] > target:
                orig = cost_model.original[kind]
                raise ValueError(
                    f"the {kind} constraint {constraints[kind]!r} ({target:.6g}) cannot be met: the "
                    f"smallest reachable {kind} with this config is {smallest[kind]:.6g} "
                    f"({100 * smallest[kind] / orig:.2f}% of {orig:.6g}). Lower the ratios, "
                    "switch more blocks on, or relax the constraint."
                )
        return plan

    def score(self, model: nn.Module, plan: SearchPlan, cfg: dict[str, Any],
              keep_pruned: bool = False) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
        """Sensitivities and unit orders; the selection is put back if anything fails."""
        previous = {n: hp.kept for n, hp in plan.hparams.items()}
        try:
            self.prepare(model, plan.hparams, cfg, keep_pruned)
            orders = self.unit_orders(plan.hparams)
            return self.sensitivities(model, plan.hparams, orders, cfg), orders
        except Exception:
            for n, hp in plan.hparams.items():
                hp.keep(previous[n])
            raise

    @staticmethod
    def threshold(plan: SearchPlan, sens: dict[str, list[float]]
                  ) -> tuple[float, list[dict[str, float]]]:
        """The smallest candidate threshold (a sensitivity value) that meets every target."""
        candidates = sorted({float("-inf")} | {s for v in sens.values() for s in v})
        history: list[dict[str, float]] = []

        def feasible(i: int) -> bool:
            costs = plan.cost_model.cost(plan.counts_at(candidates[i], sens))
            ok = all(costs[k] <= plan.targets[k] for k in plan.targets)
            history.append({"threshold": candidates[i], **costs, "feasible": float(ok)})
            return ok

        lo, hi = 0, len(candidates) - 1  # hi (keep everything) is feasible: plan checked it
        if feasible(lo):
            hi = lo
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if feasible(mid):
                hi = mid
            else:
                lo = mid
        return candidates[hi], history

    @staticmethod
    def refill(plan: SearchPlan, counts: dict[str, int], sens: dict[str, list[float]]
               ) -> dict[str, int]:
        """Spend the budget one threshold step leaves: grow, one choice at a time, the hparam
        whose next choice recovers the most sensitivity, while every constraint still holds."""
        choices = plan.choices
        counts = dict(counts)
        blocked: set[tuple[str, ...]] = set()
        while True:  # tied hparams (``uniform``) grow together, by their summed sensitivity
            best, best_gain = None, float("-inf")
            for group in plan.groups():
                n = group[0]
                i = choices[n].index(counts[n])
                if group in blocked or i + 1 == len(choices[n]):
                    continue
                gain = sens[n][i] - sens[n][i + 1]
                if gain > best_gain:
                    best, best_gain = group, gain
            if best is None:
                return counts
            trial = dict(counts)
            for n in best:
                trial[n] = choices[n][choices[n].index(counts[n]) + 1]
            costs = plan.cost_model.cost(trial)
            if all(costs[k] <= plan.targets[k] for k in plan.targets):
                counts = trial
            else:
                blocked.add(best)

    def select(self, plan: SearchPlan, sens: dict[str, list[float]],
               orders: dict[str, torch.Tensor]) -> SearchResult:
        """Threshold, refill, keep the chosen units; the result says what and why."""
        for n in plan.cost_model.blocks:  # depth: the blocks go in the order of their scores
            plan.cost_model.orders[n] = [int(i) for i in orders[n]]
        sens = plan.tie(sens)
        threshold, history = self.threshold(plan, sens)
        counts = self.refill(plan, plan.counts_at(threshold, sens), sens)
        hparams, cost_model, targets = plan.hparams, plan.cost_model, plan.targets
        for n, hp in hparams.items():
            hp.keep(hp.top(counts[n], orders[n]))
        achieved = cost_model.cost(counts)
        return SearchResult(
            selection=counts,
            kept={n: hp.kept for n, hp in hparams.items()},
            choices=plan.choices,
            scores={n: [float(v) for v in hp.importance] for n, hp in hparams.items()
                    if hp.importance is not None},
            sensitivities={n: [float(v) for v in s] for n, s in sens.items()},
            constraints={
                k: {"target": targets[k], "achieved": achieved[k],
                    "original": cost_model.original[k],
                    "ratio": achieved[k] / cost_model.original[k]}
                for k in targets
            },
            threshold=threshold,
            history=history,
            searcher=self.name,
        )


@dataclass
class SearchPlan:
    """What a search works on: the hparams, their cost model, absolute targets and choices."""

    hparams: dict[str, StructuredHParam]
    cost_model: CostModel
    targets: dict[str, float]
    choices: dict[str, list[int]]
    #: groups of hparams that keep the same number of units (gradnas ``uniform``)
    ties: list[tuple[str, ...]] = field(default_factory=list)

    def groups(self) -> list[tuple[str, ...]]:
        """Every hparam in one group: the ties, and a group of one for each other hparam."""
        tied = {n for group in self.ties for n in group}
        return [*self.ties, *((n,) for n in self.hparams if n not in tied)]

    def tie(self, sens: Mapping[str, list[float]]) -> dict[str, list[float]]:
        """Sensitivities with every tied hparam given its group's sum (so every threshold keeps
        the same count in the whole group)."""
        out = {n: list(v) for n, v in sens.items()}
        for group in self.ties:
            total = [sum(vals) for vals in zip(*(sens[n] for n in group), strict=True)]
            out.update({n: list(total) for n in group})
        return out

    def counts_at(self, t: float, sens: Mapping[str, list[float]]) -> dict[str, int]:
        """Per hparam the smallest choice whose sensitivity is ``<= t``."""
        # the last choice is always the full width (GradNASRule.choices)
        return {
            n: next(c for c, s in zip(choices, sens[n], strict=True)
                    if s <= t or c == choices[-1])
            for n, choices in self.choices.items()
        }


def uniform_ties(model: nn.Module, hparams: Mapping[str, StructuredHParam]
                 ) -> list[tuple[str, ...]]:
    """With gradnas ``uniform=True``: the hparams of each type key (and equal choices) as one
    tie, so every layer of a kind keeps the same number of units; else ``[]``.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.searchers.base import uniform_ties
        >>> from modeopt_masks.structured import gradnas_hparams
        >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(),
        ...                     nn.Linear(4, 1))
        >>> net = mm.convert(net, ("gradnas", {"uniform": True}))
        >>> uniform_ties(net, gradnas_hparams(net))
        [('0', '2')]
    """
    from ..conversion import mode_history  # the searchers are imported by conversion's users

    if not any(s.mode == "gradnas" and getattr(s.config, "uniform", False)
               for s in mode_history(model)):
        return []
    by_kind: dict[tuple[str, tuple[int, ...]], list[str]] = {}
    for n, hp in hparams.items():
        by_kind.setdefault((hp.structure.key, tuple(hp.choices)), []).append(n)
    keys = [key for key, _ in by_kind]
    for key in ("hf.attention", "hf.mlp"):
        if keys.count(key) > 1:
            sizes = {n: hp.n_units for n, hp in hparams.items() if hp.structure.key == key}
            raise ValueError(f"gradnas uniform=True: the {key} layers have different sizes or "
                             f"choices ({sizes}), so they cannot keep the same number of units; "
                             "give them one rule, or set uniform=False")
    return [tuple(names) for names in by_kind.values() if len(names) > 1]
