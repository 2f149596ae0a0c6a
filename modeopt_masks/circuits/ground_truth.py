"""Helpers to check discovered circuits against known ones: training loops, scores, baselines.

* [`fit_edges`][modeopt_masks.circuits.ground_truth.fit_edges]: train edge masks on a loss (L0 penalty or a density controller).
* [`precision_recall`][modeopt_masks.circuits.ground_truth.precision_recall]: of a recovered edge set against the true one.
* [`random_edge_sets`][modeopt_masks.circuits.ground_truth.random_edge_sets]: same-size random subnetworks (the usual baseline).
* [`evaluate_with_edges`][modeopt_masks.circuits.ground_truth.evaluate_with_edges], [`evaluate_without_edges`][modeopt_masks.circuits.ground_truth.evaluate_without_edges]: a metric with only a circuit on, or with it ablated.
* [`induction_batch`][modeopt_masks.circuits.ground_truth.induction_batch], [`train_induction_model`][modeopt_masks.circuits.ground_truth.train_induction_model], [`previous_token_head`][modeopt_masks.circuits.ground_truth.previous_token_head],
  [`induction_head`][modeopt_masks.circuits.ground_truth.induction_head], [`head_output_norms`][modeopt_masks.circuits.ground_truth.head_output_norms],
  [`heads_in_use`][modeopt_masks.circuits.ground_truth.heads_in_use], [`induction_circuit`][modeopt_masks.circuits.ground_truth.induction_circuit]: the 2-layer attention-only induction model.

Examples:
    >>> from modeopt_masks.circuits.ground_truth import precision_recall
    >>> precision_recall([("a", "b"), ("b", "c")], [("a", "b"), ("a", "c")])
    (0.5, 0.5)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch

from ..training import DensityController
from .edges import EdgeMaskedModel
from .tiny_transformer import TinyTransformer, TinyTransformerConfig

Edge = tuple[str, str]


def precision_recall(found: Iterable[Edge], truth: Iterable[Edge]) -> tuple[float, float]:
    """``(precision, recall)`` of ``found`` against ``truth`` (1.0 for empty denominators)."""
    found_s, truth_s = set(found), set(truth)
    hit = len(found_s & truth_s)
    return (hit / len(found_s) if found_s else 1.0, hit / len(truth_s) if truth_s else 1.0)


def random_edge_sets(edges: EdgeMaskedModel, size: int, n: int, seed: int = 0) -> list[list[Edge]]:
    """``n`` random sets of ``size`` edges of the graph.

    Examples:
        >>> import torch
        >>> from modeopt_masks.circuits import EdgeMaskedModel, TinyTransformer, TinyTransformerConfig
        >>> from modeopt_masks.circuits.ground_truth import random_edge_sets
        >>> e = EdgeMaskedModel(TinyTransformer(TinyTransformerConfig(
        ...     vocab_size=5, d_model=8, n_layers=1, n_heads=2, d_head=4)))
        >>> [len(s) for s in random_edge_sets(e, 3, 2)]
        [3, 3]
    """
    rng = random.Random(seed)
    pool = edges.all_edges()
    return [rng.sample(pool, size) for _ in range(n)]


def fit_edges(
    edges: EdgeMaskedModel,
    loss_fn: Callable[[EdgeMaskedModel], torch.Tensor],
    steps: int,
    lr: float = 0.1,
    l0_lambda: float = 0.0,
    controller: DensityController | None = None,
    temperature: tuple[float, float] | None = None,
    l0_warmup: float = 0.0,
) -> list[float]:
    """Train the edge gates for ``steps`` Adam steps on ``loss_fn(edges)`` plus sparsity.

    Sparsity is ``l0_lambda * expected edges / num_edges`` or the ``controller``'s
    penalty. ``temperature=(start, end)`` anneals beta geometrically. ``l0_warmup``: the
    fraction of ``steps`` over which ``l0_lambda`` ramps linearly up from 0 (0: constant),
    so that the gates of a long chain of necessary edges first learn to stay open
    together before the penalty prunes. Returns the task losses; the base model is left
    untouched and the gates end in eval (hard) mode.
    """
    edges.train()
    opt = torch.optim.Adam(edges.mask_parameters(), lr=lr)
    losses = []
    for step in range(steps):
        if temperature is not None:
            t0, t1 = temperature
            edges.set_temperature(t0 * (t1 / t0) ** (step / max(steps - 1, 1)))
        task = loss_fn(edges)
        ramp = min(1.0, step / (l0_warmup * steps)) if l0_warmup > 0 else 1.0
        loss = task + (controller(edges) if controller is not None
                       else ramp * l0_lambda * edges.expected_density())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(task.detach()))
    edges.eval()
    return losses


# -- induction ------------------------------------------------------------------------------
def induction_batch(
    batch: int, half: int, vocab: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[batch, 2 half]`` and the mask of copy positions ``[batch, 2 half - 1]``.

    Each row is a random sequence of random length ``h`` in ``[half // 2, half]``, then the
    same sequence again, then random filler; position ``t`` is a copy position when the next
    token is determined by the first copy (``h <= t < 2 h - 1``). The varying ``h`` rules
    out a purely positional solution: only induction copies.
    """
    ids = torch.randint(0, vocab, (batch, 2 * half), generator=generator)
    lengths = torch.randint(half // 2, half + 1, (batch,), generator=generator)
    pos = torch.arange(2 * half)
    second = (pos >= lengths[:, None]) & (pos < 2 * lengths[:, None])
    source = (pos - lengths[:, None]).clamp(min=0)
    ids = torch.where(second, ids.gather(1, source), ids)
    t = pos[:-1]
    copy = (t >= lengths[:, None]) & (t < 2 * lengths[:, None] - 1)
    return ids, copy


def copying_accuracy(logits: torch.Tensor, ids: torch.Tensor, copy: torch.Tensor) -> float:
    """Next-token accuracy at the copy positions."""
    pred = logits[:, :-1].argmax(-1)
    return float((pred == ids[:, 1:])[copy].float().mean())


def induction_loss(logits: torch.Tensor, ids: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the next token at the copy positions."""
    return torch.nn.functional.cross_entropy(logits[:, :-1][copy], ids[:, 1:][copy])


def train_induction_model(
    vocab: int = 24, half: int = 8, n_heads: int = 8, d_model: int = 64, steps: int = 1500,
    batch: int = 64, seed: int = 0, head_sparsity: float = 0.1, d_head: int | None = None,
) -> tuple[TinyTransformer, float]:
    """A 2-layer attention-only transformer trained to copy the repeated half; (model, accuracy).

    ``head_sparsity`` weighs a penalty ``sum_h ||o_h||^(1/2)`` on every head's output
    ``o_h = z_h W_O[h]`` (root mean square over batch and positions). Being concave, it
    prefers one head doing a job to several sharing it, so the model ends with one
    previous-token head and one induction head and the other heads silent: a circuit with
    a known answer. Without it (``0``) every layer-1 head becomes an induction head. The
    penalty is off for the first quarter of ``steps`` (so that induction forms at all) and
    ramps up linearly over the second. ``d_head`` defaults to ``d_model // n_heads``.

    Raises:
        ValueError: For a negative ``head_sparsity``, or ``d_model`` not a multiple of
            ``n_heads`` without a ``d_head``.

    Examples:
        >>> from modeopt_masks.circuits.ground_truth import train_induction_model
        >>> net, acc = train_induction_model(steps=2)
        >>> net.config.n_heads, 0.0 <= acc <= 1.0
        (8, True)
    """
    if head_sparsity < 0:
        raise ValueError(f"head_sparsity must be >= 0 (0: no penalty), got {head_sparsity}")
    if d_head is None and d_model % n_heads:
        raise ValueError(f"d_model={d_model} is not a multiple of n_heads={n_heads}: pass d_head")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    d_head = d_head or d_model // n_heads
    net = TinyTransformer(TinyTransformerConfig(
        vocab_size=vocab, d_model=d_model, n_layers=2, n_heads=n_heads,
        d_head=d_head, d_mlp=0, max_len=2 * half, norm=False))
    head_sq_norms: list[torch.Tensor] = []
    hooks = _record_head_sq_norms(net, head_sq_norms) if head_sparsity else []
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    try:
        for step in range(steps):
            ids, copy = induction_batch(batch, half, vocab, gen)
            head_sq_norms.clear()
            loss = induction_loss(net(ids), ids, copy)
            ramp = min(1.0, max(0.0, (step - steps / 4) / (steps / 4)))
            if head_sparsity and ramp:
                # the eps keeps the gradient of x^(1/4) finite at a silent head
                loss = loss + ramp * head_sparsity * sum(
                    (x + 1e-6).pow(0.25).sum() for x in head_sq_norms)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for hook in hooks:
            hook.remove()
    net.eval()
    with torch.no_grad():
        ids, copy = induction_batch(256, half, vocab, gen)
        acc = copying_accuracy(net(ids), ids, copy)
    return net, acc


def head_output_norms(net: TinyTransformer, ids: torch.Tensor) -> torch.Tensor:
    """RMS norm of every head's output ``z_h W_O[h]`` on ``ids``: ``[n_layers, n_heads]``.

    Examples:
        >>> import torch
        >>> from modeopt_masks.circuits import TinyTransformer, TinyTransformerConfig
        >>> from modeopt_masks.circuits.ground_truth import head_output_norms
        >>> net = TinyTransformer(TinyTransformerConfig(vocab_size=5, d_model=8, n_layers=2,
        ...                                              n_heads=2, d_head=4))
        >>> tuple(head_output_norms(net, torch.tensor([[1, 2, 3]])).shape)
        (2, 2)
    """
    rows: list[torch.Tensor] = []
    hooks = _record_head_sq_norms(net, rows)
    try:
        with torch.no_grad():
            net(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(rows).sqrt()


def heads_in_use(norms: torch.Tensor, rel: float = 0.01) -> list[list[int]]:
    """Per layer, the heads whose output norm exceeds ``rel`` times the layer's largest.

    ``norms``: [`head_output_norms`][modeopt_masks.circuits.ground_truth.head_output_norms]'s
    ``[n_layers, n_heads]``.

    Examples:
        >>> import torch
        >>> from modeopt_masks.circuits.ground_truth import heads_in_use
        >>> heads_in_use(torch.tensor([[1.0, 0.001, 0.0], [0.5, 0.0, 2.0]]))
        [[0], [0, 2]]
    """
    return [(row > rel * row.max()).nonzero().flatten().tolist() for row in norms]


def induction_circuit(prev: int, ind: int) -> list[Edge]:
    """The textbook induction circuit of previous-token head ``prev`` and induction head ``ind``.

    The embedding into the previous-token head's q/k/v, that head into the induction head's
    key (K-composition), the embedding into the induction head's query and value, and the
    induction head into the logits: 7 edges.

    Examples:
        >>> from modeopt_masks.circuits.ground_truth import induction_circuit
        >>> induction_circuit(0, 6)[3]
        ('a0.h0', 'a1.h6.k')
    """
    return [("embed", f"a0.h{prev}.q"), ("embed", f"a0.h{prev}.k"), ("embed", f"a0.h{prev}.v"),
            (f"a0.h{prev}", f"a1.h{ind}.k"), ("embed", f"a1.h{ind}.q"), ("embed", f"a1.h{ind}.v"),
            (f"a1.h{ind}", "logits")]


def _record_head_sq_norms(
    net: TinyTransformer, into: list[torch.Tensor]
) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that append each layer's per-head mean squared output norm ``[n_heads]`` to ``into``."""
    d_head = net.config.d_head

    def record(o_proj: torch.nn.Linear, args: tuple[torch.Tensor, ...]) -> None:
        z = args[0].unflatten(-1, (-1, d_head))
        w_o = o_proj.weight.unflatten(1, (-1, d_head))
        into.append(torch.einsum("bthd,mhd->bthm", z, w_o).pow(2).sum(-1).mean((0, 1)))

    return [block.self_attn.o_proj.register_forward_pre_hook(record) for block in net.blocks()]


def _pattern_score(net: TinyTransformer, layer: int, ids: torch.Tensor, offset: Callable[[int], int],
                   positions: Sequence[int]) -> torch.Tensor:
    with torch.no_grad():
        net(ids)
    pattern = net.blocks()[layer].self_attn.last_pattern
    assert pattern is not None
    return torch.stack([pattern[:, :, t, offset(t)] for t in positions]).mean(dim=(0, 1))


def previous_token_head(net: TinyTransformer, ids: torch.Tensor) -> tuple[int, float]:
    """The layer-0 head that attends most to the previous position: (head, mean attention)."""
    scores = _pattern_score(net, 0, ids, lambda t: t - 1, range(1, ids.shape[1]))
    return int(scores.argmax()), float(scores.max())


def induction_head(net: TinyTransformer, ids: torch.Tensor) -> tuple[int, float]:
    """The layer-1 head that attends most to the token after the earlier occurrence.

    ``ids``: sequences repeated exactly once (``[A, A]``, e.g. ``induction_batch`` with
    ``half // 2 == half``... or any ``torch.cat([a, a], 1)``).
    """
    half = ids.shape[1] // 2
    scores = _pattern_score(net, 1, ids, lambda t: t - half + 1, range(half, ids.shape[1]))
    return int(scores.argmax()), float(scores.max())


_T = TypeVar("_T")


def evaluate_with_edges(edges: EdgeMaskedModel, keep: Iterable[Edge],
                        metric: Callable[[Any], _T], *args: Any) -> _T:
    """``metric(output)`` with exactly ``keep`` switched on (the gates are restored after)."""
    saved = [p.detach().clone() for p in edges.mask_parameters()]
    try:
        edges.eval()
        edges.set_edges(keep)
        with torch.no_grad():
            return metric(edges(*args))
    finally:
        with torch.no_grad():
            for p, s in zip(edges.mask_parameters(), saved, strict=True):
                p.copy_(s)


def evaluate_without_edges(edges: EdgeMaskedModel, drop: Iterable[Edge],
                           metric: Callable[[Any], _T], *args: Any) -> _T:
    """``metric(output)`` with ``drop`` switched off and every other edge on (an ablation).

    Examples:
        >>> import torch
        >>> from modeopt_masks.circuits import EdgeMaskedModel, TinyTransformer, TinyTransformerConfig
        >>> from modeopt_masks.circuits.ground_truth import evaluate_without_edges
        >>> net = TinyTransformer(TinyTransformerConfig(vocab_size=5, d_model=8, n_layers=1,
        ...                                              n_heads=2, d_head=4)).eval()
        >>> e, ids = EdgeMaskedModel(net), torch.tensor([[1, 2, 3]])
        >>> torch.allclose(evaluate_without_edges(e, [], lambda out: out, ids), net(ids), atol=1e-5)
        True
    """
    off = set(drop)
    return evaluate_with_edges(edges, [e for e in edges.all_edges() if e not in off], metric, *args)
