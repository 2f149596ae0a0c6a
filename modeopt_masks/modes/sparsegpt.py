"""``sparsegpt``: one-shot pruning with reconstruction (Frantar & Alistarh 2023).

From the calibration inputs' ``H = X^T X`` (plus ``dampening_frac`` times its
mean diagonal), columns are visited in blocks of ``block_size``; each block's
mask drops the ``sparsity`` fraction with the smallest ``w^2 / [U]_jj^2`` (``U``
the upper Cholesky factor of ``H^-1``; with an ``"N:M"`` ``pattern``: the
``M - N`` smallest of every ``M`` columns), and the error of each dropped
weight is spread over the weights not yet visited (the optimal brain surgeon
update), so the layer's output on the calibration data changes as little as
possible.

``update_weights=True`` (the method) writes the updated values of the *kept*
weights into the layer (the pruned entries keep their original values; the
mask removes them): the masked model is SparseGPT's model, ``export`` bakes it,
and ``use_masks=False`` / ``unconvert`` give the updated dense weights, not the
original ones (keep a copy if you need those). ``update_weights=False`` keeps
the weights and only chooses the mask. Convolutions with ``groups > 1`` are
pruned group by group. See :mod:`modeopt_masks.modes.oneshot` for the
calibration options.

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(8, 4))
    >>> data = [torch.randn(32, 8) for _ in range(2)]
    >>> net = mm.convert(net, ("sparsegpt", {"nn.Linear": {"sparsity": 0.5}, "data_loader": data,
    ...                                      "progress": False}))
    >>> int(net[0].weight_mask.keep.sum())
    16
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
from pydantic import Field

from ..calibration import Hessian, Statistic, from_matrix, weight_matrix
from ..masking import MaskedLayer
from ..registry import register_mode
from ..selection import keep_largest, keep_n_of_m
from .magnitude_pruning import MagnitudeMask
from .oneshot import OneShotConfig, OneShotDescriptor, OneShotRule


class SparseGPTRule(OneShotRule):
    """Per-layer settings of ``sparsegpt``: ``sparsity`` / ``pattern``, ``block_size``,
    ``dampening_frac``."""

    block_size: int = Field(128, ge=1)
    dampening_frac: float = Field(0.01, ge=0)


class SparseGPTConfig(OneShotConfig):
    """Rule config of ``sparsegpt``: type keys, ``update_weights`` and calibration options."""

    rule_class: ClassVar = SparseGPTRule
    update_weights: bool = True


def sparsegpt_prune(
    weight: torch.Tensor, hessian: torch.Tensor, sparsity: float,
    n_of_m: tuple[int, int] | None = None, block_size: int = 128, dampening_frac: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, updated weight)`` of a ``[outputs, features]`` matrix given ``H = X^T X``.

    The updated weight is zero where ``keep`` is False.

    Examples:
        >>> import torch
        >>> w, h = torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, 1.0], [1.0, 2.0]])
        >>> keep, new = sparsegpt_prune(w, h, 0.5, dampening_frac=0.0)
        >>> keep.tolist(), new.tolist()  # w_1 absorbs w_0: 3 + 1 * H01 / H11
        ([[False, True]], [[0.0, 3.5]])
    """
    # the sweep runs over rows of the transposed matrix: each column of the weight is then
    # one contiguous row, and each step is one rank-1 update (addr_) of the rows not yet visited
    wt = weight.detach().t().to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    h = hessian.detach().float().clone()
    cols = wt.shape[0]
    if n_of_m is not None and block_size % n_of_m[1]:
        raise ValueError(f"block_size {block_size} must be a multiple of M={n_of_m[1]}")
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    wt[dead] = 0
    diag = torch.arange(cols, device=h.device)
    h[diag, diag] += dampening_frac * torch.mean(torch.diag(h))
    try:  # in place: H becomes its Cholesky factor, then H^-1, then U with H^-1 = U^T U
        h = torch.linalg.cholesky(h, out=h)
        h = torch.cholesky_inverse(h, out=h)
        hinv = torch.linalg.cholesky(h, upper=True, out=h)
    except RuntimeError as e:  # torch.linalg.LinAlgError
        raise ValueError(
            f"sparsegpt: the calibration Hessian is not positive definite ({e}); raise "
            "dampening_frac or give more calibration data"
        ) from e
    drop = torch.zeros(wt.shape, dtype=torch.bool, device=wt.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1, hinv1 = wt[i1:i2], hinv[i1:i2, i1:i2]
        d = torch.diag(hinv1)
        drop1 = drop[i1:i2]
        if n_of_m is None:
            # ranked in the weight's [outputs, block] order: ties fall as in the reference
            drop1.copy_(~keep_largest((w1.square() / d.square()[:, None]).t(), sparsity).t())
            scale = drop1 / d[:, None]  # err_i = w_i / U_ii where dropped, 0 where kept
        else:
            scale = torch.empty(w1.shape, device=wt.device)
        err1 = torch.empty_like(w1)
        for i in range(i2 - i1):
            if n_of_m is not None and i % n_of_m[1] == 0:
                m = n_of_m[1]
                part = w1[i:i + m]
                drop1[i:i + m] = ~keep_n_of_m((part.square() / d[i:i + m, None].square()).t(),
                                              *n_of_m, check=False).t()
                torch.div(drop1[i:i + m], d[i:i + m, None], out=scale[i:i + m])
            torch.mul(w1[i], scale[i], out=err1[i])
            w1[i:].addr_(hinv1[i, i:], err1[i], alpha=-1)  # w_i itself becomes q_i (0 or kept)
        w1.masked_fill_(drop1, 0)  # exactly 0, not a rounding residue
        wt[i2:].addmm_(hinv[i1:i2, i2:].t(), err1, alpha=-1)
    return ~drop.t(), wt.t()


class SparseGPTMode(OneShotDescriptor):
    """Descriptor of ``sparsegpt``."""

    name = "sparsegpt"
    config_class = SparseGPTConfig
    statistic = Hessian
    writes_weights = True

    def prune_layers(self, layers: dict[str, MaskedLayer], stats: dict[str, Statistic],
                     config: Any, state: dict[str, Any]) -> None:
        results = {}
        for name, layer in layers.items():  # all first: a failure leaves the weights as they are
            rule = layer.weight_mask.rule
            matrix = weight_matrix(layer, layer.weight.detach())
            hessians = stats[name].value
            per = matrix.shape[0] // hessians.shape[0]
            parts = [sparsegpt_prune(matrix[g * per:(g + 1) * per], hessians[g], rule.sparsity,
                                     rule.n_of_m, rule.block_size, rule.dampening_frac)
                     for g in range(hessians.shape[0])]
            keep = torch.cat([p[0] for p in parts])
            new = torch.cat([p[1] for p in parts])
            results[name] = (keep, new)
        for name, layer in layers.items():
            keep, new = results[name]
            shape = tuple(layer.weight.shape)
            mask = cast(MagnitudeMask, layer.weight_mask)
            mask.keep.copy_(from_matrix(layer, keep, shape))
            if config.update_weights:
                with torch.no_grad():
                    updated = torch.where(keep, new.to(layer.weight.dtype),
                                          weight_matrix(layer, layer.weight.detach()))
                    layer.weight.copy_(from_matrix(layer, updated, shape))


register_mode(SparseGPTMode())
