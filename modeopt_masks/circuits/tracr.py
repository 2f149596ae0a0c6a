"""Tracr's compiled transformers as [`TinyTransformer`][modeopt_masks.circuits.tiny_transformer.TinyTransformer] models, with their ground-truth edges.

Tracr (``tracr-pypi``) compiles a RASP program into a transformer whose residual
stream is a direct sum of labelled one-hot subspaces; every block reads and
writes only its own subspaces. [`tiny_from_tracr`][modeopt_masks.circuits.tracr.tiny_from_tracr] copies the compiled haiku
weights (no layer norm, ReLU MLPs, ``softmax(QK^T / sqrt(key_size))``, non-causal)
into a [`TinyTransformer`][modeopt_masks.circuits.tiny_transformer.TinyTransformer]; [`compiled_edges`][modeopt_masks.circuits.tracr.compiled_edges] reads the program's edges
off the weights: writer ``w`` feeds reader ``r`` exactly when the residual
dimensions ``w`` writes meet the dimensions ``r`` reads. Nothing here imports jax:
``benchmarks/ground_truth_tracr_compile.py`` caches compiled programs as ``.npz``.

Examples:
    >>> import numpy as np, torch
    >>> from modeopt_masks.circuits import EdgeMaskedModel, compiled_edges, tiny_from_tracr
    >>> d, hd = 4, 2  # a one-layer "program": the head copies dim 0 (written by the embedding) to 3
    >>> p = {f"transformer/layer_0/attn/{n}": {"w": np.zeros((d, hd)), "b": np.zeros(hd)}
    ...      for n in ("query", "key", "value")}
    >>> p["transformer/layer_0/attn/value"]["w"][0, 0] = 1
    >>> p["transformer/layer_0/attn/linear"] = {"w": np.zeros((hd, d)), "b": np.zeros(d)}
    >>> p["transformer/layer_0/attn/linear"]["w"][0, 3] = 1
    >>> p["transformer/layer_0/mlp/linear_1"] = {"w": np.zeros((d, 1)), "b": np.zeros(1)}
    >>> p["transformer/layer_0/mlp/linear_2"] = {"w": np.zeros((1, d)), "b": np.zeros(d)}
    >>> p["token_embed"] = {"embeddings": np.eye(3, d)}
    >>> p["pos_embed"] = {"embeddings": np.zeros((3, d))}
    >>> net = tiny_from_tracr(p, num_heads=1, unembed=np.eye(d)[3:])
    >>> compiled_edges(EdgeMaskedModel(net))
    [('embed', 'a0.h0.v'), ('a0.h0', 'logits')]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .edges import EdgeMaskedModel
from .tiny_transformer import TinyTransformer, TinyTransformerConfig


def _t(a: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


def tiny_from_tracr(
    params: Mapping[str, Mapping[str, Any]],
    num_heads: int,
    unembed: Any,
    causal: bool = False,
) -> TinyTransformer:
    """A [`TinyTransformer`][modeopt_masks.circuits.tiny_transformer.TinyTransformer] computing what the compiled Tracr model ``params`` computes.

    ``params``: the assembled model's ``params`` (haiku module name -> ``{"w", "b"}``);
    ``unembed``: ``[n_out, d_model]``, the projection of the residual onto the output space.
    The output is that projection (argmax it for categorical programs).

    Args:
        params: The assembled model's ``params``.
        num_heads: Attention heads per layer.
        unembed: ``[n_out, d_model]`` output projection.
        causal: Causal attention.

    Returns:
        The TinyTransformer.
    """
    tok = _t(params["token_embed"]["embeddings"])
    pos = _t(params["pos_embed"]["embeddings"])
    n_layers = 1 + max(int(k.split("/")[1].split("_")[1]) for k in params if k.startswith("transformer/"))
    q0 = _t(params["transformer/layer_0/attn/query"]["w"])
    d_model, inner = q0.shape
    d_mlp = _t(params["transformer/layer_0/mlp/linear_1"]["w"]).shape[1]
    unembed_t = _t(unembed)
    cfg = TinyTransformerConfig(
        vocab_size=tok.shape[0], d_model=d_model, n_layers=n_layers, n_heads=num_heads,
        d_head=inner // num_heads, d_mlp=d_mlp, max_len=pos.shape[0], norm=False, causal=causal,
        n_out=unembed_t.shape[0],
    )
    net = TinyTransformer(cfg)
    with torch.no_grad():
        net.embed_tokens.weight.copy_(tok)
        net.embed_positions.weight.copy_(pos)
        net.unembed.weight.copy_(unembed_t)
        for i, layer in enumerate(net.blocks()):
            attn = f"transformer/layer_{i}/attn/"
            for ours, theirs in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"),
                                 ("o_proj", "linear")):
                lin = getattr(layer.self_attn, ours)
                lin.weight.copy_(_t(params[attn + theirs]["w"]).t())
                lin.bias.copy_(_t(params[attn + theirs]["b"]))
            mlp = f"transformer/layer_{i}/mlp/"
            assert layer.mlp is not None
            for lin, name in ((_linear(layer.mlp, 0), "linear_1"), (_linear(layer.mlp, 2), "linear_2")):
                lin.weight.copy_(_t(params[mlp + name]["w"]).t())
                lin.bias.copy_(_t(params[mlp + name]["b"]))
    return net.eval()


def _linear(seq: torch.nn.Sequential, index: int) -> torch.nn.Linear:
    layer = seq[index]
    assert isinstance(layer, torch.nn.Linear)
    return layer


def _dims(rows: torch.Tensor) -> set[int]:
    """Residual dimensions touched by ``rows`` (``[..., d_model]``, any nonzero entry)."""
    return set(torch.nonzero(rows.reshape(-1, rows.shape[-1]).abs().sum(0)).reshape(-1).tolist())


def compiled_edges(edges: EdgeMaskedModel) -> list[tuple[str, str]]:
    """The edges of a norm-free [`TinyTransformer`][modeopt_masks.circuits.tiny_transformer.TinyTransformer] read off its weights (Tracr ground truth).

    ``(w, r)`` is an edge when the dimensions ``w`` writes (nonzero output weights or
    bias) meet the dimensions ``r`` reads (nonzero input weights). Heads and MLPs that
    write nothing are not in the graph, nor are the edges into them.

    Args:
        edges: An edge-masked norm-free TinyTransformer.

    Returns:
        The ``(writer, reader)`` edges.
    """
    net = edges.wrapped_model
    if not isinstance(net, TinyTransformer) or net.config.norm:
        raise ValueError("compiled_edges reads weights of a TinyTransformer with norm=False")
    writes: dict[str, set[int]] = {
        "embed": _dims(net.embed_tokens.weight) | _dims(net.embed_positions.weight)
    }
    reads: dict[str, set[int]] = {"logits": _dims(net.unembed.weight)}
    with torch.no_grad():
        for i, layer in enumerate(net.blocks()):
            attn = layer.self_attn
            hd = attn.head_dim
            for h in range(attn.num_heads):
                cols = slice(h * hd, (h + 1) * hd)
                wo = attn.o_proj.weight[:, cols].t()
                out = _dims(wo) | _dims(attn.o_proj.bias)
                if not out or not _dims(attn.v_proj.weight[cols]):
                    continue
                writes[f"a{i}.h{h}"] = out
                for s, proj in (("q", attn.q_proj), ("k", attn.k_proj), ("v", attn.v_proj)):
                    reads[f"a{i}.h{h}.{s}"] = _dims(proj.weight[cols])
            if layer.mlp is not None:
                down, up = _linear(layer.mlp, 2), _linear(layer.mlp, 0)
                out = _dims(down.weight.t()) | _dims(down.bias)
                if out:
                    writes[f"m{i}"] = out
                    reads[f"m{i}"] = _dims(up.weight)
    return [
        (w, r) for w, r in edges.all_edges()
        if w in writes and r in reads and writes[w] & reads[r]
    ]


CANONICAL_EDGES: dict[str, tuple[tuple[str, str], ...]] = {
    "reverse": (
        ("embed", "a0.h0.v"), ("embed", "m0"), ("a0.h0", "m0"), ("embed", "m1"), ("m0", "m1"),
        ("m1", "m2"), ("m2", "a3.h0.q"), ("embed", "a3.h0.k"), ("embed", "a3.h0.v"),
        ("a3.h0", "logits"),
    ),
    "frac_prevs": (
        ("embed", "m0"), ("embed", "a1.h0.q"), ("embed", "a1.h0.k"), ("m0", "a1.h0.v"),
        ("a1.h0", "logits"),
    ),
}
"""The published ground-truth circuits of Tracr ``reverse`` and ``frac_prevs``, in this graph's names.

Source: Conmy et al. 2023, "Towards Automated Circuit Discovery for Mechanistic
Interpretability" (ACDC), whose code gives them as ``get_tracr_reverse_edges`` and
``get_tracr_proportion_edges`` in ``acdc/tracr_task/utils.py`` ("edges generated from
ACDC run with threshold epsilon, metric l2 and zero ablation"); Edge Pruning (Bhaskar et
al. 2024) scores against the same circuits. Their TransformerLens nodes map to ours as:
``hook_embed`` and ``hook_pos_embed`` -> ``embed`` (token and position embedding are one
writer here), ``blocks.i.attn`` head 0 -> ``a{i}.h0`` (its ``hook_q/k/v_input`` ->
``a{i}.h0.q/k/v``), ``blocks.i`` MLP -> ``m{i}``, the last ``hook_resid_post`` ->
``logits``; the edges inside a node (input -> q/k/v -> result, ``mlp_in`` -> ``mlp_out``)
are not edges of this graph. The layer numbers are the same in both compilations.

The weight overlap ([`compiled_edges`][modeopt_masks.circuits.tracr.compiled_edges]) has 3 more edges for ``reverse``, all
inert: ``embed -> a0.h0.q`` and ``embed -> a0.h0.k`` (the length head's selector is
``Select(tokens, tokens, TRUE)``: it attends uniformly to BOS and every token, and with
its query or key zeroed every score is 0, the same uniform pattern) and ``embed -> a3.h0.q`` (the reversing head's query
also reads the constant ``one`` direction, whose BOS score its saturated softmax
ignores whenever a key matches). For ``frac_prevs`` the two agree.

Examples:
    >>> from modeopt_masks.circuits.tracr import canonical_edges
    >>> canonical_edges("frac_prevs")
    [('embed', 'm0'), ('embed', 'a1.h0.q'), ('embed', 'a1.h0.k'), ('m0', 'a1.h0.v'), ('a1.h0', 'logits')]
"""


def canonical_edges(name: str) -> list[tuple[str, str]]:
    """The published ground-truth circuit of Tracr program ``name`` ([`CANONICAL_EDGES`][modeopt_masks.circuits.tracr.CANONICAL_EDGES]).

    Args:
        name: ``"reverse"`` or ``"frac_prevs"``.

    Returns:
        Its ``(writer, reader)`` edges.

    Raises:
        ValueError: For a program without a published circuit.

    Examples:
        >>> from modeopt_masks.circuits.tracr import canonical_edges
        >>> len(canonical_edges("reverse"))
        10
    """
    if name not in CANONICAL_EDGES:
        raise ValueError(f"no canonical circuit for Tracr program {name!r}; known: {sorted(CANONICAL_EDGES)}")
    return list(CANONICAL_EDGES[name])


def functional_edges(edges: EdgeMaskedModel, truth: list[tuple[str, str]],
                     batches: list[torch.Tensor], tol: float = 1e-4) -> list[tuple[str, str]]:
    """The edges of ``truth`` that compute something: removing one alone (the rest of
    ``truth`` on) moves some output after BOS by more than ``tol`` on some input.

    Weight overlap ([`compiled_edges`][modeopt_masks.circuits.tracr.compiled_edges]) also counts reads that no input can make
    matter (e.g. a query read of a head whose scores do not depend on it); this is the
    ground truth that an output-matching method can be asked to recover. The gates are
    left at ``truth``.
    """
    edges.eval()
    edges.set_edges(truth)
    with torch.no_grad():
        refs = [edges(b) for b in batches]
        keep = []
        for edge in truth:
            edges.set_edges([e for e in truth if e != edge])
            moved = max(float((edges(b) - r)[:, 1:].abs().max())
                        for b, r in zip(batches, refs, strict=True))
            if moved > tol:
                keep.append(edge)
    edges.set_edges(truth)
    return keep


@dataclass
class TracrFixture:
    """A compiled program cached by ``benchmarks/ground_truth_tracr_compile.py``.

    ``inputs``: token ids per sequence (BOS first, every sequence of every length);
    ``outputs``: the compiled model's outputs after BOS (class indices, or numbers).
    """

    name: str
    model: TinyTransformer
    categorical: bool
    inputs: list[list[int]]
    outputs: list[list[float]]
    meta: dict[str, Any]


def load_tracr_fixture(path: str) -> TracrFixture:
    """Read a ``tracr_<name>.npz`` fixture into a [`TracrFixture`][modeopt_masks.circuits.tracr.TracrFixture].

    Args:
        path: The ``.npz`` file.

    Returns:
        The fixture's parameters, unembedding and true edges.
    """
    data = np.load(path)
    meta = json.loads(str(data["meta"]))
    params: dict[str, dict[str, np.ndarray]] = {}
    for key in data.files:
        if key.startswith("param/"):
            module, _, leaf = key[len("param/"):].rpartition("/")
            params.setdefault(module, {})[leaf] = data[key]
    net = tiny_from_tracr(params, meta["num_heads"], data["unembed"], causal=meta["causal"])
    return TracrFixture(
        meta["name"], net, meta["categorical"], json.loads(str(data["inputs"])),
        json.loads(str(data["outputs"])), meta,
    )


def fixture_batches(fixture: TracrFixture) -> list[torch.Tensor]:
    """The fixture's inputs as one ``[n, length]`` id tensor per sequence length."""
    by_len: dict[int, list[list[int]]] = {}
    for ids in fixture.inputs:
        by_len.setdefault(len(ids), []).append(ids)
    return [torch.tensor(v) for _, v in sorted(by_len.items())]


def circuit_objective(edges: EdgeMaskedModel, loss_fn: Callable[[EdgeMaskedModel], torch.Tensor],
                      circuit: list[tuple[str, str]], l0_lambda: float) -> float:
    """The training objective of a hard circuit: ``loss_fn`` with exactly ``circuit`` on, plus
    ``l0_lambda * len(circuit) / num_edges`` (what [`fit_edges`][modeopt_masks.circuits.ground_truth.fit_edges] minimises, with deterministic gates).

    The gates are left at ``circuit``.

    Examples:
        >>> import torch
        >>> from modeopt_masks.circuits import EdgeMaskedModel, TinyTransformer, TinyTransformerConfig
        >>> from modeopt_masks.circuits.tracr import circuit_objective
        >>> edges = EdgeMaskedModel(TinyTransformer(TinyTransformerConfig(
        ...     vocab_size=5, d_model=8, n_layers=1, n_heads=1, d_head=4, d_mlp=0)))
        >>> zero = lambda e: torch.zeros(())  # a loss no edge changes: only the edge count costs
        >>> circuit_objective(edges, zero, [("embed", "logits")], l0_lambda=1.0) * edges.num_edges
        1.0
    """
    edges.eval()
    edges.set_edges(circuit)
    with torch.no_grad():
        return float(loss_fn(edges)) + l0_lambda * len(circuit) / edges.num_edges


def refine_circuit(edges: EdgeMaskedModel, loss_fn: Callable[[EdgeMaskedModel], torch.Tensor],
                   circuit: list[tuple[str, str]], l0_lambda: float,
                   max_passes: int = 20) -> list[tuple[str, str]]:
    """Local search on the deterministic objective from ``circuit``: switch single edges off
    (the circuit's, in order) or on (the others) whenever that lowers
    [`circuit_objective`][modeopt_masks.circuits.tracr.circuit_objective], until no single flip does.

    Hard-concrete training ends near a minimum of the objective but its stochastic gates
    leave reads whose task gradient is only noise (no output depends on them once the
    circuit is on) barely moved by a small L0 penalty; one forward per edge settles them.
    Returns a circuit no single flip improves (or after ``max_passes`` sweeps over all
    edges); the gates are left at it.

    Examples:
        >>> import torch
        >>> from modeopt_masks.circuits import EdgeMaskedModel, TinyTransformer, TinyTransformerConfig
        >>> from modeopt_masks.circuits.tracr import refine_circuit
        >>> net = TinyTransformer(TinyTransformerConfig(vocab_size=5, d_model=8, n_layers=1,
        ...                                             n_heads=1, d_head=4, d_mlp=0))
        >>> edges = EdgeMaskedModel(net)
        >>> ids = torch.tensor([[1, 2, 3]])
        >>> # a loss that only the direct embed -> logits edge can lower
        >>> loss = lambda e: (e(ids) - net.unembed(net.embed_tokens(ids)
        ...                   + net.embed_positions.weight[:3])).pow(2).mean()
        >>> refine_circuit(edges, loss, edges.all_edges(), l0_lambda=0.1)
        [('embed', 'logits')]
    """
    current = set(circuit)
    best = circuit_objective(edges, loss_fn, sorted(current), l0_lambda)
    for _ in range(max_passes):
        changed = False
        order = [e for e in edges.all_edges() if e in current]
        order += [e for e in edges.all_edges() if e not in current]
        for edge in order:
            trial = current ^ {edge}
            value = circuit_objective(edges, loss_fn, sorted(trial), l0_lambda)
            if value < best:
                best, current, changed = value, trial, True
        if not changed:
            break
    edges.set_edges(current)
    return [e for e in edges.all_edges() if e in current]


def recover_tracr_edges(
    fixture: TracrFixture, steps: int = 300, l0_lambda: float = 1.0, lr: float = 0.05, seed: int = 0,
    init_percentage: float = 0.99, l0_warmup: float = 0.3, refine: bool = True,
    restarts: int = 2, history: list[dict[str, Any]] | None = None,
) -> tuple[EdgeMaskedModel, list[tuple[str, str]]]:
    """Edge-mask the fixture's model to reproduce its outputs with few edges; (edges, circuit).

    The objective is the mean squared difference to the full model's outputs on every
    input (all lengths, the mean over lengths), plus ``l0_lambda`` times the expected
    fraction of edges kept. How it is minimised, and why:

    * ``init_percentage=0.99``: every gate starts nearly always open, so the sampled
      circuit starts whole; at 0.9 a 10-edge chain is whole in ~1% of samples and its
      gates get no consistent signal (``reverse`` lost its length path on 2 of 5 seeds).
    * ``l0_warmup=0.3``: the penalty ramps up over the first 30% of the steps
      ([`fit_edges`][modeopt_masks.circuits.ground_truth.fit_edges]), so necessary edges are open and stable before it prunes.
    * ``refine=True``: [`refine_circuit`][modeopt_masks.circuits.tracr.refine_circuit] then takes single-edge flips that lower the
      same objective with deterministic gates (a read whose task gradient is only noise,
      such as ``reverse``'s ``embed -> a3.h0.q``, is otherwise left on by Adam).
    * ``restarts=2``: train that many times (one seed, consecutive random streams) and keep
      the circuit with the lowest objective ([`circuit_objective`][modeopt_masks.circuits.tracr.circuit_objective]); one run in 20
      still lost part of ``reverse``'s length path (the first of seed 7), a higher objective.

    Args:
        fixture: The compiled program.
        steps: Adam steps.
        l0_lambda: Weight of the expected fraction of edges kept. Must stay below the
            smallest loss increase of removing a necessary edge times ``num_edges``
            (about 0.07 x 23 for ``frac_prevs``, 0.12 x 77 for ``reverse``).
        lr: Adam learning rate on the gates' ``log_alpha``.
        seed: Seed of the gate samples and initialisation.
        init_percentage: Initial probability that a gate is open.
        l0_warmup: Fraction of ``steps`` over which the penalty ramps up from 0.
        refine: Run [`refine_circuit`][modeopt_masks.circuits.tracr.refine_circuit] on the trained hard circuit.
        restarts: Independent trainings; the lowest objective wins.
        history: If given, gets one ``{"trained", "circuit", "objective"}`` dict per restart.

    Returns:
        The edge-masked model (gates at the circuit, eval mode) and the circuit.

    Examples:
        >>> import numpy as np
        >>> from modeopt_masks.circuits.tracr import TracrFixture, recover_tracr_edges, tiny_from_tracr
        >>> d, hd = 4, 2  # one head averages "token is 0" (dim 0) into dim 3, the output
        >>> p = {f"transformer/layer_0/attn/{n}": {"w": np.zeros((d, hd)), "b": np.zeros(hd)}
        ...      for n in ("query", "key", "value")}
        >>> p["transformer/layer_0/attn/value"]["w"][0, 0] = 1
        >>> p["transformer/layer_0/attn/linear"] = {"w": np.eye(hd, d, k=3), "b": np.zeros(d)}
        >>> p["transformer/layer_0/mlp/linear_1"] = {"w": np.zeros((d, 1)), "b": np.zeros(1)}
        >>> p["transformer/layer_0/mlp/linear_2"] = {"w": np.zeros((1, d)), "b": np.zeros(d)}
        >>> p["token_embed"] = {"embeddings": np.eye(3, d)}
        >>> p["pos_embed"] = {"embeddings": np.zeros((3, d))}
        >>> net = tiny_from_tracr(p, num_heads=1, unembed=np.eye(d)[3:])
        >>> ids = [[0, a, b] for a in range(3) for b in range(3)]
        >>> fx = TracrFixture("mean_of_zeros", net, False, ids, [], {})
        >>> recover_tracr_edges(fx, steps=30, restarts=1)[1]
        [('embed', 'a0.h0.v'), ('a0.h0', 'logits')]
    """
    from .ground_truth import fit_edges

    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    torch.manual_seed(seed)
    batches = fixture_batches(fixture)
    with torch.no_grad():
        targets = [fixture.model(b) for b in batches]

    def loss(e: EdgeMaskedModel) -> torch.Tensor:
        return torch.stack([(e(b) - t)[:, 1:].pow(2).mean()
                            for b, t in zip(batches, targets, strict=True)]).mean()

    best: tuple[float, EdgeMaskedModel, list[tuple[str, str]]] | None = None
    for _ in range(restarts):
        edges = EdgeMaskedModel(fixture.model, init_percentage=init_percentage)
        fit_edges(edges, loss, steps, lr=lr, l0_lambda=l0_lambda, l0_warmup=l0_warmup)
        trained = edges.edge_list()
        circuit = refine_circuit(edges, loss, trained, l0_lambda) if refine else trained
        value = circuit_objective(edges, loss, circuit, l0_lambda)
        if history is not None:
            history.append({"trained": trained, "circuit": circuit, "objective": value})
        edges.remove_hooks()  # one set of hooks on the model at a time
        if best is None or value < best[0]:
            best = (value, edges, circuit)
    assert best is not None
    _, edges, circuit = best
    edges.add_hooks()
    edges.eval().set_edges(circuit)
    return edges, circuit


def fixture_accuracy(fixture: TracrFixture, model: Any) -> float:
    """Fraction of the fixture's sequences ``model`` gets entirely right (after BOS).

    Categorical programs: argmax equals the compiled output; numerical: within ``1e-3``.
    """
    by_len: dict[int, list[int]] = {}
    for i, ids in enumerate(fixture.inputs):
        by_len.setdefault(len(ids), []).append(i)
    right = 0
    with torch.no_grad():
        for rows in by_len.values():
            want = torch.tensor([fixture.outputs[i] for i in rows])
            y = model(torch.tensor([fixture.inputs[i] for i in rows]))[:, 1:]
            if fixture.categorical:
                right += int((y.argmax(-1) == want).all(-1).sum())
            else:
                right += int(((y[..., 0] - want).abs().max(-1).values < 1e-3).sum())
    return right / len(fixture.inputs)
