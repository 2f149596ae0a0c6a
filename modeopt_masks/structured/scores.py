"""Gradient importance of heads and channels, collected through the unit masks.

For each batch the loss is differentiated with respect to every unit mask only
(``torch.autograd.grad``), so the model's parameter ``.grad`` fields are never
touched and no weight gradients are computed. Scores (original unit order):

* ``"gradnas"`` (default): ``sum over batches of (dL/dmask)^2``;
* ``"michel"`` (Michel et al. 2019): ``mean over batches of |dL/dmask|``;
* ``"activation"`` (Minitron's activation importance): the mean over tokens and batches
  of the L2 norm of each unit's slice of the consumer's input (a head's output, an MLP
  channel's activation). Forward passes only, no loss: ``loss_func`` is not used.

A hidden-size or depth hparam whose rule sets ``score="activation"`` /
``"influence"`` gets that statistic instead, collected in the same pass (see
[`modeopt_masks.structured.stream`][modeopt_masks.structured.stream]).

Under ``torch.distributed`` (an initialised process group of more than one
rank) the per-rank sums and batch counts are all-reduced, so every rank gets
the scores of the union of the ranks' batches and a search then chooses the
same subnetwork on every rank. Every rank must then call it (a collective);
``all_reduce=False`` scores only the local batches.

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> from modeopt_masks.structured import collect_scores
    >>> _ = torch.manual_seed(0); net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 1))
    >>> net = mm.convert(net, "gradnas")
    >>> data = [torch.randn(8, 4) for _ in range(3)]
    >>> scores = collect_scores(net, data, loss_func=lambda out, batch: out.pow(2).mean(),
    ...                         progress=False)
    >>> scores["0"].shape, net[0].weight.grad is None
    (torch.Size([6]), True)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from .hparam import gradnas_hparams

ScoreType = Literal["gradnas", "michel", "activation"]
#: the valid ``score_type`` values
SCORE_TYPES: tuple[str, ...] = ("gradnas", "michel", "activation")

#: below this largest |loss| over the scoring batches, collect_scores warns that scores are noise
TINY_LOSS = 1e-6


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (dicts, lists, tuples) moved to ``device``.

    A batch that is already there is returned as is (the same object).
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        moved = {k: to_device(v, device) for k, v in batch.items()}
        if all(moved[k] is v for k, v in batch.items()):
            return batch
        return type(batch)(moved)  # type: ignore[call-arg]
    if isinstance(batch, list | tuple) and not hasattr(batch, "_fields"):
        items = [to_device(v, device) for v in batch]
        if all(a is b for a, b in zip(items, batch, strict=True)):
            return batch
        return type(batch)(items)
    return batch


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without parameters).

    Examples:
        >>> import torch
        >>> from modeopt_masks.structured.scores import model_device
        >>> model_device(torch.nn.Linear(2, 2)).type, model_device(torch.nn.ReLU()).type
        ('cpu', 'cpu')
    """
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def output_logits(output: Any, tensor_ok: bool = True) -> torch.Tensor | None:
    """``output.logits`` (HF heads, or a ``"logits"`` key); a plain tensor output itself when
    ``tensor_ok``; else ``None``.

    Examples:
        >>> import torch
        >>> from modeopt_masks.structured.scores import output_logits
        >>> output_logits({"logits": torch.zeros(1)}).shape, output_logits(torch.ones(2), False)
        (torch.Size([1]), None)
    """
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and tensor_ok and isinstance(output, torch.Tensor):
        logits = output
    return logits if isinstance(logits, torch.Tensor) else None


def run_model(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` on ``inputs``: ``**dict``, ``*tuple/list``, or a single argument."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, list | tuple):
        return model(*inputs)
    return model(inputs)


def default_loss(output: Any, batch: Any) -> torch.Tensor:
    """``output.loss`` (HF models given labels) or a scalar output; otherwise a clear error."""
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if loss is None and isinstance(output, torch.Tensor) and output.numel() == 1:
        loss = output
    if loss is None:
        raise ValueError(
            "gradnas scoring needs a scalar loss: the model output has no `.loss` "
            "(give the batch labels) and is not a scalar; pass loss_func=lambda output, batch: ..."
        )
    return loss


def collect_scores(
    model: nn.Module,
    data_loader: Iterable[Any],
    loss_func: Callable[[Any, Any], torch.Tensor] | None = None,
    collect_func: Callable[[Any], Any] | None = None,
    max_iter_data_loader: int | None = None,
    score_type: ScoreType = "gradnas",
    progress: bool = True,
    all_reduce: bool = True,
    group: Any = None,
) -> dict[str, torch.Tensor]:
    """Score every unit of a gradnas-converted model; sets and returns ``hp.importance``.

    ``collect_func(batch)`` gives the model input (default: the batch itself,
    dicts as keyword arguments); ``loss_func(output, batch)`` gives the loss
    (default: ``output.loss``). The model runs in eval mode (no dropout noise)
    and is put back in its previous mode; parameter ``.grad`` stays as found.

    With ``all_reduce`` and an initialised process group (``group``, default
    the world) of more than one rank, the sums and batch counts of all ranks
    are added up: every rank ends with the same scores, those of one process
    scoring all the ranks' batches. Scores that are not finite (an fp16
    overflow, a NaN loss) raise a ``ValueError`` naming the hparams.
    A loss whose mask gradients are all zero raises a ``ValueError`` (nothing to rank).
    A loss that is ~0 on every batch (the full model at its minimum, as with a
    self-distillation loss) has no gradient signal: a warning says so.

    Args:
        model: A gradnas-converted model.
        data_loader: Batches to score on.
        loss_func: ``loss_func(output, batch)``; default ``output.loss``.
        collect_func: ``collect_func(batch)`` gives the model input; default the batch.
        max_iter_data_loader: Stop after this many batches (``None``: all).
        score_type: ``"gradnas"`` (squared mask gradients) or ``"michel"`` (absolute ones).
        progress: Show a progress bar.
        all_reduce: Sum the scores over the ranks of ``group`` when distributed.
        group: The process group (default: the world).

    Returns:
        ``{hparam name: importance per unit}``.

    Raises:
        ValueError: For an unknown ``score_type``, non-finite scores or all-zero gradients.
    """
    if score_type not in SCORE_TYPES:
        raise ValueError(f"score_type must be one of {SCORE_TYPES}, got {score_type!r}")
    hps = gradnas_hparams(model)
    if not hps:
        raise ValueError("collect_scores needs a gradnas-converted model (mm.convert(model, 'gradnas'))")
    if score_type == "activation":
        return _activation_scores(model, hps, data_loader, collect_func, max_iter_data_loader,
                                  progress, all_reduce, group)
    loss_func = loss_func or default_loss
    device = model_device(model)
    modules: list[Any] = [hp.module for hp in hps.values()]
    masks = []
    for m in modules:
        mask = m._mm_unit_mask.detach().clone().requires_grad_(True)
        m._mm_score_mask = mask
        masks.append(mask)
        if m._mm_struct.score != "gradient":  # activation / influence: read in the forward
            n = m._mm_struct.n_units
            counts = n if m._mm_struct.kind == "blocks" else 1
            m.__dict__["_mm_stats"] = [torch.zeros(n, dtype=torch.float64, device=mask.device),
                                       torch.zeros(counts, dtype=torch.float64, device=mask.device)]
    sums = [torch.zeros(mask.numel(), dtype=torch.float64, device=mask.device) for mask in masks]
    was_training = model.training
    steps = 0
    largest: torch.Tensor | None = None
    total = max_iter_data_loader
    if total is None and hasattr(data_loader, "__len__"):
        total = len(data_loader)  # type: ignore[arg-type]
    model.eval()
    try:
        with torch.enable_grad():
            for batch in tqdm(data_loader, total=total, desc="gradnas scores", disable=not progress):
                if max_iter_data_loader is not None and steps >= max_iter_data_loader:
                    break
                batch = to_device(batch, device)
                inputs = collect_func(batch) if collect_func is not None else batch
                loss = loss_func(run_model(model, inputs), batch)
                size = loss.detach().abs().max()  # no host sync per batch
                largest = size if largest is None else torch.maximum(largest, size)
                grads = torch.autograd.grad(loss, masks, allow_unused=True)
                for acc, g in zip(sums, grads, strict=True):
                    if g is None:
                        continue
                    g = g.detach().double()
                    acc += g.square() if score_type == "gradnas" else g.abs()
                steps += 1
    finally:
        raw = {}
        for name, m in zip(hps, modules, strict=True):
            m._mm_score_mask = None
            if "_mm_stats" in m.__dict__:
                raw[name] = m.__dict__.pop("_mm_stats")
        model.train(was_training)
    extra = [t for pair in raw.values() for t in pair]  # activation / influence sums, counts
    if all_reduce:
        steps = _all_reduce([*sums, *extra], steps, group)
    stats = {name: total / count.clamp(min=1) for name, (total, count) in raw.items()}
    if steps == 0:
        raise ValueError("collect_scores: the data loader gave no batch")
    bad = [name for name, acc in zip(hps, sums, strict=True) if not bool(torch.isfinite(acc).all())]
    if bad:
        raise ValueError(
            f"collect_scores: the scores of {bad} are not finite (a NaN/inf loss or gradient, "
            "e.g. an fp16 overflow): score in float32/bfloat16 or scale the loss down"
        )
    largest_loss = float(largest) if largest is not None else 0.0
    if largest_loss >= TINY_LOSS and all(not bool(acc.any()) for acc in sums):
        raise ValueError(
            f"collect_scores: every mask gradient is zero over {steps} batch(es), so the scores "
            "cannot rank any unit (the search would keep the lowest-index units). The loss "
            "does not depend on the searched heads/channels: is loss_func reading the model "
            "output (not a constant or a detached tensor)?"
        )
    if largest_loss < TINY_LOSS:
        warnings.warn(
            f"collect_scores: the loss is ~0 on every batch (|loss| <= {largest_loss:.3g}), so "
            "the model sits at the loss's minimum and its mask gradients (the scores) are "
            "numerical noise; a distillation loss against the unpruned model's own outputs does "
            "this. Score with a task loss (labels) or one not minimised by the full model.",
            stacklevel=2,
        )
    out = {}
    for (name, hp), acc in zip(hps.items(), sums, strict=True):
        score = acc / steps if score_type == "michel" else acc
        if name in stats:  # the axis' own statistic (activation / block influence)
            score = stats[name]
        hp.importance = score
        out[name] = score.cpu()
    return out


def unit_norms(x: torch.Tensor, n_units: int, unit_size: int, dim: int) -> torch.Tensor:
    """Mean over tokens of the L2 norm of each unit's slice of ``x`` (``[n_units]``, float64)."""
    x = x.detach().double()
    if dim == 1 and x.dim() > 2:  # conv channels: [batch, channels, *spatial]
        return x.transpose(0, 1).reshape(n_units, unit_size, -1).norm(dim=1).mean(-1)
    return x.reshape(-1, n_units, unit_size).norm(dim=-1).mean(0)


def _activation_scores(model: nn.Module, hps: dict[str, Any], data_loader: Iterable[Any],
                       collect_func: Callable[[Any], Any] | None, max_iter: int | None,
                       progress: bool, all_reduce: bool, group: Any) -> dict[str, torch.Tensor]:
    """``score_type="activation"``: forward passes only, a pre-hook on every masked consumer."""
    device = model_device(model)
    sums = [torch.zeros(hp.n_units, dtype=torch.float64, device=device) for hp in hps.values()]

    def hook_for(acc: torch.Tensor, hp: Any) -> Callable[..., None]:
        s = hp.structure

        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            acc.add_(unit_norms(args[0], s.n_units, s.unit_size, s.mask_dim).to(acc.device))
        return hook

    handles = [hp.module.register_forward_pre_hook(hook_for(acc, hp))
               for acc, hp in zip(sums, hps.values(), strict=True)]
    was_training, steps = model.training, 0
    model.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(data_loader, desc="activation scores", disable=not progress):
                if max_iter is not None and steps >= max_iter:
                    break
                batch = to_device(batch, device)
                run_model(model, collect_func(batch) if collect_func is not None else batch)
                steps += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if all_reduce:
        steps = _all_reduce(sums, steps, group)
    if steps == 0:
        raise ValueError("collect_scores: the data loader gave no batch")
    out = {}
    for (name, hp), acc in zip(hps.items(), sums, strict=True):
        if not bool(torch.isfinite(acc).all()):
            raise ValueError(f"collect_scores: the activation scores of {name} are not finite")
        hp.importance = acc / steps
        out[name] = hp.importance.cpu()
    return out


def _all_reduce(sums: list[torch.Tensor], steps: int, group: Any = None) -> int:
    """Sum ``sums`` (in place) and ``steps`` over the ranks of ``group``; the total steps.

    Nothing happens without an initialised process group or with a single rank.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return steps
    device = sums[0].device if sums else torch.device("cpu")
    flat = torch.cat([*sums, torch.tensor([float(steps)], dtype=torch.float64, device=device)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    offset = 0
    for acc in sums:
        acc.copy_(flat[offset:offset + acc.numel()])
        offset += acc.numel()
    return int(round(float(flat[-1])))
