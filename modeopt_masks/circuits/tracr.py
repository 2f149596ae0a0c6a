"""Tracr's compiled transformers as :class:`TinyTransformer` models, with their ground-truth edges.

Tracr (``tracr-pypi``) compiles a RASP program into a transformer whose residual
stream is a direct sum of labelled one-hot subspaces; every block reads and
writes only its own subspaces. :func:`tiny_from_tracr` copies the compiled haiku
weights (no layer norm, ReLU MLPs, ``softmax(QK^T / sqrt(key_size))``, non-causal)
into a :class:`TinyTransformer`; :func:`compiled_edges` reads the program's edges
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
from collections.abc import Mapping
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
    """A :class:`TinyTransformer` computing what the compiled Tracr model ``params`` computes.

    ``params``: the assembled model's ``params`` (haiku module name -> ``{"w", "b"}``);
    ``unembed``: ``[n_out, d_model]``, the projection of the residual onto the output space.
    The output is that projection (argmax it for categorical programs).
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
    """The edges of a norm-free :class:`TinyTransformer` read off its weights (Tracr ground truth).

    ``(w, r)`` is an edge when the dimensions ``w`` writes (nonzero output weights or
    bias) meet the dimensions ``r`` reads (nonzero input weights). Heads and MLPs that
    write nothing are not in the graph, nor are the edges into them.
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


def functional_edges(edges: EdgeMaskedModel, truth: list[tuple[str, str]],
                     batches: list[torch.Tensor], tol: float = 1e-4) -> list[tuple[str, str]]:
    """The edges of ``truth`` that compute something: removing one alone (the rest of
    ``truth`` on) moves some output after BOS by more than ``tol`` on some input.

    Weight overlap (:func:`compiled_edges`) also counts reads that no input can make
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
    """Read a ``tracr_<name>.npz`` fixture into a :class:`TracrFixture`."""
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


def recover_tracr_edges(
    fixture: TracrFixture, steps: int = 300, l0_lambda: float = 1.0, lr: float = 0.1, seed: int = 0
) -> tuple[EdgeMaskedModel, list[tuple[str, str]]]:
    """Edge-mask the fixture's model to reproduce its outputs with few edges; (edges, circuit).

    The loss is the mean squared difference to the full model's outputs on every input
    (all lengths), plus ``l0_lambda`` times the expected fraction of edges kept.
    """
    from .ground_truth import fit_edges

    torch.manual_seed(seed)
    batches = fixture_batches(fixture)
    with torch.no_grad():
        targets = [fixture.model(b) for b in batches]
    edges = EdgeMaskedModel(fixture.model, init_percentage=0.9)

    def loss(e: EdgeMaskedModel) -> torch.Tensor:
        return torch.stack([(e(b) - t)[:, 1:].pow(2).mean()
                            for b, t in zip(batches, targets, strict=True)]).mean()

    fit_edges(edges, loss, steps, lr=lr, l0_lambda=l0_lambda)
    return edges, edges.edge_list()


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
