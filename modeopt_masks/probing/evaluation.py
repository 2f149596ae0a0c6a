"""Evaluating probed vectors and circuits: collection, nearest-centroid / kNN accuracy, ablations.

Examples:
    >>> import torch
    >>> from modeopt_masks.probing.evaluation import nearest_centroid_accuracy, knn_accuracy
    >>> x = torch.tensor([[1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.1, 0.8]])
    >>> y = torch.tensor([0, 0, 1, 1])
    >>> nearest_centroid_accuracy(x, y), knn_accuracy(x, y, k=1)
    (1.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..mask_controls import set_ablation
from ..masking import DRAWN_ABLATIONS


@torch.no_grad()
def collect_vectors(
    probe: nn.Module, batches: Iterable[dict[str, Any]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``probe`` (eval mode, no grad) over ``batches`` (dicts of forward kwargs with
    ``labels``) and return the selected vectors ``[n, hidden]`` and labels ``[n]``.

    ``probe`` is any module whose output has ``hidden_states`` and ``labels``
    (a [`ProbeOutput`][modeopt_masks.probing.probe_output.ProbeOutput], or a dict).

    Args:
        probe: A module whose output has ``hidden_states`` and ``labels``.
        batches: Dicts of forward kwargs, each with ``labels``.

    Returns:
        ``(vectors [n, hidden], labels [n])``.

    Examples:
        >>> import torch, torch.nn as nn
        >>> from modeopt_masks.probing import ProbeOutput, collect_vectors
        >>> class Identity(nn.Module):
        ...     def forward(self, x, labels):
        ...         return ProbeOutput(hidden_states=x, labels=labels)
        >>> x, y = collect_vectors(Identity(), [{"x": torch.ones(2, 3), "labels": torch.tensor([0, 1])}] * 2)
        >>> tuple(x.shape), y.tolist()
        ((4, 3), [0, 1, 0, 1])
    """
    was_training = probe.training
    probe.eval()
    xs, ys = [], []
    try:
        for batch in batches:
            out = probe(**batch)
            xs.append(out["hidden_states"].float().cpu())
            ys.append(out["labels"].cpu())
    finally:
        probe.train(was_training)
    if not xs:
        raise ValueError("no batches to collect from")
    return torch.cat(xs), torch.cat(ys)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def nearest_centroid_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor | None = None,
    test_y: torch.Tensor | None = None,
) -> float:
    """Accuracy of assigning each test vector the label of the most cosine-similar class
    centroid of the training vectors (train = test when no test set is given).

    Args:
        train_x: Training vectors ``[n, d]``.
        train_y: Their labels ``[n]``.
        test_x: Test vectors (``None``: the training vectors).
        test_y: Their labels.

    Returns:
        The accuracy in ``[0, 1]``.

    Examples:
        >>> import torch
        >>> from modeopt_masks.probing import nearest_centroid_accuracy
        >>> x, y = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
        >>> nearest_centroid_accuracy(x, y, torch.tensor([[0.9, 0.2], [0.8, 0.1]]), torch.tensor([0, 1]))
        0.5
    """
    if test_x is None or test_y is None:
        test_x, test_y = train_x, train_y
    classes = torch.unique(train_y)
    centroids = torch.stack(
        [F.normalize(train_x[train_y == c].float(), dim=-1).mean(0) for c in classes]
    )
    pred = classes[_cosine(test_x, centroids).argmax(dim=1)]
    return float((pred == test_y.to(pred.device)).float().mean())


def knn_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor | None = None,
    test_y: torch.Tensor | None = None,
    k: int = 1,
) -> float:
    """Majority vote of the ``k`` most cosine-similar training vectors; without a test set,
    leave-one-out on the training set.

    Args:
        train_x: Training vectors ``[n, d]``.
        train_y: Their labels ``[n]``.
        test_x: Test vectors (``None``: leave-one-out on the training set).
        test_y: Their labels.
        k: Number of neighbours.

    Returns:
        The accuracy in ``[0, 1]``.

    Examples:
        >>> import torch
        >>> from modeopt_masks.probing import knn_accuracy
        >>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> knn_accuracy(x, torch.tensor([0, 1, 1, 1]), k=1)  # leave-one-out: 0 and 1 disagree
        0.5
    """
    leave_one_out = test_x is None or test_y is None
    if leave_one_out:
        test_x, test_y = train_x, train_y
    assert test_x is not None and test_y is not None
    sim = _cosine(test_x, train_x)
    if leave_one_out:
        sim.fill_diagonal_(float("-inf"))
    k = min(k, sim.shape[1] - int(leave_one_out))
    idx = sim.topk(k, dim=1).indices
    pred = torch.mode(train_y[idx], dim=1).values
    return float((pred == test_y).float().mean())


def compare_ablations(
    model: nn.Module,
    metric: Callable[[], float],
    ablations: Sequence[str] = ("zero_ablate", "randomly_sampled", "complement_sampled"),
    n_samples: int = 5,
    seed: int = 0,
) -> dict[str, list[float]]:
    """``metric()`` of ``model`` (in eval) under each ablation of its masked layers.

    ``none`` and ``zero_ablate`` are deterministic (one value); the sampled and
    random ablations are redrawn ``n_samples`` times (seeded). The model is left
    in ablation ``none`` and its previous train/eval state.

    Args:
        model: A model with masked layers.
        metric: Evaluates the model, e.g. an accuracy on held-out data.
        ablations: The ablations to try (see [`ABLATIONS`][modeopt_masks.masking.ABLATIONS]).
        n_samples: Draws per sampled ablation.
        seed: Seed of the draws.

    Returns:
        ``{ablation: [metric values]}``.

    Examples:
        >>> import torch, torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.probing.evaluation import compare_ablations
        >>> net = mm.convert(nn.Sequential(nn.Linear(8, 1)), "magnitude_pruning")
        >>> x = torch.randn(16, 8)
        >>> res = compare_ablations(net, lambda: float(net(x).abs().mean()), n_samples=2)
        >>> sorted(res), len(res["randomly_sampled"])
        (['complement_sampled', 'none', 'randomly_sampled', 'zero_ablate'], 2)
    """
    was_training = model.training
    model.eval()
    results: dict[str, list[float]] = {}
    try:
        for ablation in ("none", *ablations):
            draws = n_samples if ablation in DRAWN_ABLATIONS else 1
            scores = []
            for k in range(draws):
                torch.manual_seed(seed + k)
                set_ablation(model, ablation, force_resample=True)
                with torch.no_grad():
                    scores.append(float(metric()))
            results[ablation] = scores
    finally:
        set_ablation(model, "none")
        model.train(was_training)
    return results
