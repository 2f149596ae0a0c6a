"""Scores to keep-masks: per tensor, per row, N:M groups and one global threshold.

Every selector drops exactly the number of entries asked for, never more on
ties: among equal scores the lowest flat index is dropped first (what a stable
sort gives). Scores must be finite; a NaN or inf raises a ``ValueError`` (a NaN
cannot be ranked, and ``kthvalue`` would otherwise keep nothing).

The global threshold is found by an exact two-pass radix select over the
float32 bit patterns of the scores (a 32768-bin histogram of the high 16 bits,
then a 65536-bin one of the low 16 bits inside the chosen bin), reading the
layers in chunks: its extra memory is one chunk, not a copy of every score.

Examples:
    >>> import torch
    >>> from modeopt_masks.selection import keep_n_of_m
    >>> keep_n_of_m(torch.tensor([[4.0, 1.0, 3.0, 2.0]]), 2, 4).tolist()
    [[True, False, True, False]]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

#: entries scored per step of the global threshold (bounds its extra memory)
CHUNK = 1 << 20


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> ``None``; ``"N:M"`` -> ``(N, M)`` (keep N of every M).

    Examples:
        >>> parse_pattern("2:4"), parse_pattern("unstructured")
        ((2, 4), None)
    """
    if pattern == "unstructured":
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", pattern)
    if match is None or not 0 < int(match[1]) < int(match[2]):
        raise ValueError(
            f"pattern {pattern!r}: expected 'unstructured' or 'N:M' with 0 < N < M "
            "(keep N of every M consecutive input weights), e.g. '2:4' or '4:8'"
        )
    return int(match[1]), int(match[2])


def check_finite(scores: torch.Tensor, what: str = "scores") -> None:
    """A ``ValueError`` if ``scores`` holds a NaN or an infinity."""
    if bool(torch.isfinite(scores).all()):
        return
    bad = int((~torch.isfinite(scores)).sum())
    raise ValueError(
        f"{what} has {bad} NaN/inf entr{'y' if bad == 1 else 'ies'} of {scores.numel()}: "
        "they cannot be ranked (fix the weights or data, e.g. torch.nan_to_num, or exclude "
        "the layer)"
    )


def keep_largest(scores: torch.Tensor, prune_fraction: float) -> torch.Tensor:
    """Boolean mask that drops exactly ``round(prune_fraction * n)`` smallest scores.

    Examples:
        >>> import torch
        >>> keep_largest(torch.tensor([3.0, -5.0, 1.0, 4.0]).abs(), 0.5).tolist()
        [False, True, False, True]
    """
    check_finite(scores)
    flat = scores.reshape(-1)
    k = round(prune_fraction * flat.numel())
    if k == 0:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    # O(n) selection instead of a sort: the k-th smallest value, then ties broken by index
    threshold = flat.kthvalue(k).values
    keep = flat > threshold
    ties = torch.nonzero(flat == threshold).reshape(-1)
    drop_from_ties = k - int((flat < threshold).sum())
    keep[ties[drop_from_ties:]] = True
    return keep.reshape(scores.shape)


def keep_largest_per_row(scores: torch.Tensor, prune_fraction: float,
                         check: bool = True) -> torch.Tensor:
    """Drop ``round(prune_fraction * columns)`` smallest scores of every row of a 2-D tensor.

    Examples:
        >>> import torch
        >>> keep_largest_per_row(torch.tensor([[1.0, 2.0], [4.0, 3.0]]), 0.5).tolist()
        [[False, True], [True, False]]
    """
    return _drop_smallest_per_row(scores, round(prune_fraction * scores.shape[1]), check)


def _drop_smallest_per_row(scores: torch.Tensor, k: int, check: bool = True) -> torch.Tensor:
    """Keep-mask dropping the ``k`` smallest of each row, ties lowest index first (O(n), no
    sort: a per-row ``kthvalue`` threshold, then the ties ranked by a cumulative sum)."""
    if check:
        check_finite(scores)
    if k == 0:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    threshold = scores.kthvalue(k, dim=1, keepdim=True).values
    less = scores < threshold
    ties = scores == threshold
    room = k - less.sum(1, keepdim=True)
    return ~(less | (ties & (ties.cumsum(1) <= room)))


def keep_n_of_m(scores: torch.Tensor, n: int, m: int, check: bool = True) -> torch.Tensor:
    """Keep the ``n`` largest of every ``m`` consecutive scores along the last axis.

    Examples:
        >>> import torch
        >>> keep_n_of_m(torch.arange(8.0).reshape(1, 8), 1, 4).tolist()
        [[False, False, False, True, False, False, False, True]]
    """
    if scores.shape[-1] % m:
        raise ValueError(
            f"an {n}:{m} pattern needs the input size to be a multiple of {m}, got "
            f"{scores.shape[-1]}; use 'unstructured' for this layer"
        )
    keep = _drop_smallest_per_row(scores.reshape(-1, m), m - n, check)
    return keep.reshape(scores.shape)


def _bits(scores: torch.Tensor) -> torch.Tensor:
    """int32 bit patterns of non-negative float32 scores (ordered like the scores)."""
    if bool((scores < 0).any()):
        raise ValueError("global selection needs non-negative scores")
    return scores.float().contiguous().view(torch.int32)


def global_keep(
    chunks: Sequence[Callable[[], Iterable[torch.Tensor]]],
    total: int,
    prune_fraction: float,
    write: Callable[[int, torch.Tensor], None],
) -> None:
    """Keep-masks over several tensors at once: drop ``round(prune_fraction * total)`` smallest.

    ``chunks[i]()`` yields the non-negative float scores of tensor ``i`` as an iterable of
    1-D chunks in flat order (re-run once per pass); ``write(i, keep)`` receives tensor
    ``i``'s keep chunks in the same order. Ties are dropped lowest (tensor, index) first.

    Examples:
        >>> import torch
        >>> from modeopt_masks.selection import global_keep
        >>> a, b = torch.tensor([1.0, 5.0]), torch.tensor([2.0, 0.5, 3.0])
        >>> out = {0: [], 1: []}
        >>> global_keep([lambda: [a], lambda: [b]], 5, 0.4, lambda i, k: out[i].append(k))
        >>> [torch.cat(v).tolist() for v in out.values()]
        [[False, True], [True, False, True]]
    """
    k = round(prune_fraction * total)

    def each() -> Iterator[tuple[int, torch.Tensor]]:
        for i, make in enumerate(chunks):
            for chunk in make():
                check_finite(chunk)
                yield i, chunk

    if k == 0:
        for i, chunk in each():
            write(i, torch.ones(chunk.shape, dtype=torch.bool, device=chunk.device))
        return
    # pass 1: which high-16-bit bin holds the k-th smallest score
    hist = torch.zeros(1 << 15, dtype=torch.int64)
    for _, chunk in each():
        hist += torch.bincount((_bits(chunk) >> 16).reshape(-1), minlength=1 << 15).cpu()
    cum = hist.cumsum(0)
    high = int(torch.searchsorted(cum, torch.tensor(k)))
    below = int(cum[high - 1]) if high else 0
    # pass 2: the low 16 bits inside that bin
    hist_low = torch.zeros(1 << 16, dtype=torch.int64)
    for _, chunk in each():
        bits = _bits(chunk).reshape(-1)
        inside = bits[(bits >> 16) == high] & 0xFFFF
        hist_low += torch.bincount(inside, minlength=1 << 16).cpu()
    cum_low = hist_low.cumsum(0)
    low = int(torch.searchsorted(cum_low, torch.tensor(k - below)))
    below += int(cum_low[low - 1]) if low else 0
    threshold = (high << 16) | low
    drop_ties = k - below  # entries equal to the threshold still to drop, in global order
    for i, chunk in each():
        bits = _bits(chunk)
        keep = bits > threshold
        if drop_ties > 0:
            ties = bits == threshold
            n_ties = int(ties.sum())
            if n_ties:
                rank = ties.reshape(-1).cumsum(0).reshape(bits.shape)
                keep |= ties & (rank > drop_ties)
                drop_ties -= min(n_ties, drop_ties)
        else:
            keep |= bits == threshold
        write(i, keep)
