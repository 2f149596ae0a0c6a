"""Soft-nearest-neighbour loss on cosine distance (Frosst et al. 2019; circuit probing).

For each anchor ``i`` with at least one other same-label point,
``-log( sum_{j != i, y_j = y_i} exp(-d_ij / T) / sum_{j != i} exp(-d_ij / T) )``
with ``d_ij = 1 - cos(x_i, x_j)``; the loss is the mean over those anchors
(anchors without a same-label partner are skipped, not rewarded).

Examples:
    >>> import torch
    >>> from modeopt_masks.probing.snn_loss import soft_nearest_neighbour_loss
    >>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> good = soft_nearest_neighbour_loss(x, torch.tensor([0, 0, 1, 1]))
    >>> bad = soft_nearest_neighbour_loss(x, torch.tensor([0, 1, 0, 1]))
    >>> bool(good < bad)
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_nearest_neighbour_loss(
    vectors: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """SNN loss of ``vectors`` ``[n, d]`` under ``labels`` ``[n]`` (same label = neighbours).

    Args:
        vectors: ``[n, d]`` vectors.
        labels: ``[n]`` labels.
        temperature: Softmax temperature of the similarities.

    Returns:
        The scalar loss (lower: vectors cluster by label).

    Examples:
        >>> import torch
        >>> from modeopt_masks.probing import soft_nearest_neighbour_loss
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> float(soft_nearest_neighbour_loss(x, torch.tensor([0, 0, 1]))) < 0.5
        True
    """
    if vectors.dim() != 2 or labels.shape != vectors.shape[:1]:
        raise ValueError(
            f"expected vectors [n, d] and labels [n]; got {tuple(vectors.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    unit = F.normalize(vectors.float(), dim=-1)
    logits = (unit @ unit.T - 1.0) / temperature  # -d_ij / T
    eye = torch.eye(len(labels), dtype=torch.bool, device=vectors.device)
    logits = logits.masked_fill(eye, float("-inf"))
    same = (labels[:, None] == labels[None, :]) & ~eye
    valid = same.any(dim=1)
    if not bool(valid.any()):
        return vectors.sum() * 0.0  # no pair shares a label: nothing to pull together
    numerator = torch.logsumexp(logits.masked_fill(~same, float("-inf")), dim=1)
    denominator = torch.logsumexp(logits, dim=1)
    return -(numerator - denominator)[valid].mean()
