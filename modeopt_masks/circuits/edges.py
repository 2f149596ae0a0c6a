"""Edge-level masks (Edge Pruning, Bhaskar et al. 2024) on native modules, by forward hooks.

Writers are the embedding, every attention head and every MLP; readers are
every head's query, key and value input (per KV group under grouped-query
attention), every MLP input and the final read-out. Each reader receives its own
sum of the writers before it, weighted by a hard-concrete gate per edge:
``input_r = sum_w m[r, w] * a_w + (1 - m[r, w]) * c_w`` where ``c_w`` is the
writer's corrupted activation ([`EdgeMaskedModel.record_corruption`][modeopt_masks.circuits.edges.EdgeMaskedModel.record_corruption]) or
zero. With every gate at one this is the residual stream, so the model computes
what it computed before (up to float summation order).

How the hooks do it without touching the modeling code: the input of each
layer's output projection (``o_proj`` / ``c_proj``) is split into per-head
contributions ``z_h W_O[h] + b_O / n_heads`` and the MLP outputs are recorded;
the q/k/v projections' outputs are replaced by the projections of the normed
per-reader inputs (each reader only through its own head's columns), and the
MLP norm and final norm get their reader's input in place of the stream. The
layers' own residual sums still run and are simply not read.

Examples:
    >>> import torch, transformers
    >>> from modeopt_masks.circuits import EdgeMaskedModel
    >>> gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(
    ...     n_embd=16, n_layer=2, n_head=2, vocab_size=20, n_positions=8,
    ...     bos_token_id=0, eos_token_id=0)).eval()
    >>> ids = torch.tensor([[1, 2, 3, 4]])
    >>> ref = gpt(ids).logits
    >>> edges = EdgeMaskedModel(gpt).eval()
    >>> edges.num_edges, edges.writers[:3], edges.readers[:2]
    (46, ['embed', 'a0.h0', 'a0.h1'], ['a0.h0.q', 'a0.h1.q'])
    >>> torch.allclose(edges(ids).logits, ref, atol=1e-5)
    True
    >>> edges.remove_hooks(); torch.equal(gpt(ids).logits, ref)
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..modes.hard_concrete import HardConcreteMask


@dataclass(frozen=True)
class EdgeLayout:
    """Where the edge hooks attach in one family (paths relative to one layer).

    ``qkv``: one fused projection (GPT-2 ``attn.c_attn``) or three separate ones.
    ``final_norm``: a module name relative to the module that holds the layer list.
    ``mlp`` / ``mlp_norm``: ``None`` when the layers have no MLP.

    Args:
        family: The family name (``"gpt2"``, ``"llama"``).
        layers: Dotted-name suffixes of the layer list.
        attn: The attention module, relative to a layer.
        qkv: One fused projection or the three separate ones.
        o_proj: The attention output projection.
        attn_norm: The norm before attention.
        mlp_norm: The norm before the MLP (``None``: no MLP).
        mlp: The MLP module (``None``: no MLP).
        final_norm: The final norm, relative to the module holding the layer list.
    """

    family: str
    layers: tuple[str, ...]
    attn: str
    qkv: tuple[str, ...]
    o_proj: str
    attn_norm: str
    mlp_norm: str | None
    mlp: str | None
    final_norm: str


LAYOUTS: dict[str, EdgeLayout] = {
    "gpt2": EdgeLayout("gpt2", ("h",), "attn", ("attn.c_attn",), "attn.c_proj", "ln_1", "ln_2",
                       "mlp", "ln_f"),
    "llama": EdgeLayout(
        "llama", ("layers",), "self_attn",
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.o_proj",
        "input_layernorm", "post_attention_layernorm", "mlp", "norm",
    ),
}
"""The edge layout of each supported model family (``gpt2``, ``llama``)."""
#: HF ``config.model_type`` -> edge layout family (``tiny``: `TinyTransformer`).
MODEL_TYPES: dict[str, str] = {
    "gpt2": "gpt2", "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama",
    "tiny": "llama",
}


def _model_type(model: nn.Module) -> str:
    from .tiny_transformer import TinyTransformer

    if isinstance(model, TinyTransformer):
        return "tiny"
    for module in model.modules():
        mt = getattr(getattr(module, "config", None), "model_type", None)
        if isinstance(mt, str) and mt:
            return mt
    raise ValueError(f"cannot detect the model type; pass model_type= one of {sorted(MODEL_TYPES)}")


def _find_layers(model: nn.Module, layout: EdgeLayout) -> tuple[str, nn.ModuleList]:
    found = [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and any(name == s or name.endswith("." + s)
                                                 for s in layout.layers)
    ]
    if not found:
        raise ValueError(f"no layer list {list(layout.layers)} ({layout.family} layout) in the model")
    return min(found, key=lambda item: item[0].count("."))


def _weight_in_out(module: nn.Module) -> torch.Tensor:
    """A projection's weight as ``[in, out]`` (GPT-2 ``Conv1D`` stores it so; ``nn.Linear`` not)."""
    weight: torch.Tensor = module.weight  # type: ignore[assignment]
    return weight if type(module).__name__ == "Conv1D" else weight.t()


def _head_counts(attn: nn.Module) -> tuple[int, int, int]:
    cfg = getattr(attn, "config", None)
    n_heads = getattr(attn, "num_heads", None) or cfg.num_attention_heads  # type: ignore[union-attr]
    n_kv = getattr(attn, "num_key_value_heads", None) or getattr(cfg, "num_key_value_heads", None)
    return int(n_heads), int(n_kv or n_heads), int(attn.head_dim)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Layer:
    index: int
    n_heads: int
    n_kv: int
    head_dim: int
    first_writer: int  # index of this layer's first head in the writer list
    has_mlp: bool


class EdgeMaskedModel(nn.Module):
    """Hard-concrete masks on the edges of ``model`` (GPT-2, Llama family incl. GQA, TinyTransformer).

    ``forward`` calls the wrapped model (the hooks also act when it is called
    directly). In training the gates are sampled; in eval they are the hard
    circuit ``log_alpha > 0``. ``use_masks = False`` runs the unmodified model.
    Masks train with ``edges.mask_parameters()``; the base model is not touched.
    ``expected_density()`` makes it usable with
    [`DensityController`][modeopt_masks.training.DensityController] (``controller(edges)``),
    so a target number of edges is ``target_density = n / edges.num_edges``.

    Args:
        model: A GPT-2, Llama-family or [`TinyTransformer`][modeopt_masks.circuits.tiny_transformer.TinyTransformer] model.
        init_percentage: Initial probability that a gate is open.
        temperature: Hard-concrete temperature.
        model_type: The family (``None``: read from the model).

    Raises:
        ValueError: For an unsupported model type.

    Examples:
        >>> import torch, transformers
        >>> from modeopt_masks.circuits import EdgeMaskedModel
        >>> llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        ...     hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4,
        ...     num_key_value_heads=2, vocab_size=20)).eval()
        >>> edges = EdgeMaskedModel(llama)
        >>> edges.readers  # 4 query heads, 2 key and 2 value groups, the MLP, the logits
        ['a0.h0.q', 'a0.h1.q', 'a0.h2.q', 'a0.h3.q', 'a0.g0.k', 'a0.g1.k', 'a0.g0.v', 'a0.g1.v', 'm0', 'logits']
    """

    def __init__(
        self,
        model: nn.Module,
        init_percentage: float = 0.95,
        temperature: float = 2 / 3,
        model_type: str | None = None,
    ) -> None:
        super().__init__()
        model_type = model_type or _model_type(model)
        if model_type not in MODEL_TYPES:
            raise ValueError(
                f"edge masks do not know model type {model_type!r}; supported: {sorted(MODEL_TYPES)}"
            )
        self.wrapped_model = model
        self.layout = layout = LAYOUTS[MODEL_TYPES[model_type]]
        self.layers_name, layer_list = _find_layers(model, layout)
        parent = model.get_submodule(self.layers_name.rpartition(".")[0])
        self._final_norm_name = layout.final_norm
        parent.get_submodule(layout.final_norm)  # fails early with the module's own error

        self.writers: list[str] = ["embed"]
        self.readers: list[str] = []
        self._layers: list[_Layer] = []
        masks: dict[str, HardConcreteMask] = {}
        for i, layer in enumerate(layer_list):
            n_heads, n_kv, hd = _head_counts(layer.get_submodule(layout.attn))
            has_mlp = layout.mlp is not None and _optional(layer, layout.mlp) is not None
            info = _Layer(i, n_heads, n_kv, hd, len(self.writers), has_mlp)
            self._layers.append(info)
            kv_name = "h" if n_kv == n_heads else "g"
            self.readers += [f"a{i}.h{h}.q" for h in range(n_heads)]
            self.readers += [f"a{i}.{kv_name}{g}.{s}" for s in "kv" for g in range(n_kv)]
            masks[f"a{i}"] = HardConcreteMask(
                (n_heads + 2 * n_kv, len(self.writers)), init_percentage, temperature
            )
            self.writers += [f"a{i}.h{h}" for h in range(n_heads)]
            if has_mlp:
                self.readers.append(f"m{i}")
                masks[f"m{i}"] = HardConcreteMask((1, len(self.writers)), init_percentage, temperature)
                self.writers.append(f"m{i}")
        self.readers.append("logits")
        masks["logits"] = HardConcreteMask((1, len(self.writers)), init_percentage, temperature)
        self.masks = nn.ModuleDict(masks)

        self.use_masks = True
        self._override: dict[str, torch.Tensor] | None = None
        self._corrupt: torch.Tensor | None = None
        self._recording = False
        self._stack: list[torch.Tensor] = []
        self._normed: dict[int, torch.Tensor] = {}
        #: set to ``{}`` to collect every reader's input (``[batch, seq, d]``) of the next forwards
        self.captured: dict[str, torch.Tensor] | None = None
        self.hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._parent_name = self.layers_name.rpartition(".")[0]
        self.add_hooks()

    # -- structure ---------------------------------------------------------------------------
    def gate_masks(self) -> dict[str, HardConcreteMask]:
        """The gates by mask name (``a{i}``: layer i's q/k/v readers, ``m{i}``, ``logits``)."""
        return dict(self.masks.items())  # type: ignore[arg-type]

    @property
    def num_edges(self) -> int:
        """How many edges the graph has (every mask entry is one edge)."""
        return sum(math.prod(m.shape) for m in self.gate_masks().values())

    def group_edges(self) -> Iterator[tuple[str, list[str], list[str]]]:
        """``(mask name, its readers, its writers)`` for every mask tensor, in graph order."""
        r = 0
        for name, mask in self.gate_masks().items():
            rows, cols = mask.shape
            yield name, self.readers[r:r + rows], self.writers[:cols]
            r += rows

    def all_edges(self) -> list[tuple[str, str]]:
        """Every ``(writer, reader)`` edge of the graph."""
        return [(w, r) for _, rs, ws in self.group_edges() for r in rs for w in ws]

    def edge_list(self) -> list[tuple[str, str]]:
        """The edges of the hard circuit (gate ``log_alpha > 0``) as ``(writer, reader)``."""
        out = []
        for name, readers, writers in self.group_edges():
            keep = self.gate_masks()[name].circuit()
            out += [(writers[c], readers[r]) for r, c in keep.nonzero().tolist()]
        return out

    def set_edges(self, edges: Iterable[tuple[str, str]], value: float = 10.0) -> None:
        """Make exactly ``edges`` the circuit (``log_alpha = +value`` on them, ``-value`` elsewhere)."""
        wanted = set(map(tuple, edges))
        unknown = wanted - set(self.all_edges())
        if unknown:
            raise ValueError(f"{sorted(unknown)[:5]} are not edges of this graph (see all_edges())")
        with torch.no_grad():
            for name, readers, writers in self.group_edges():
                la = self.gate_masks()[name].log_alpha
                for r, reader in enumerate(readers):
                    for c, writer in enumerate(writers):
                        la[r, c] = value if (writer, reader) in wanted else -value

    def heads_per_group(self) -> dict[str, int]:
        """Query heads per KV group by attention layer name (``{"a0": 2}``), for [`draw_edges`][modeopt_masks.circuits.graph.draw_edges]."""
        return {f"a{i.index}": i.n_heads // i.n_kv for i in self._layers}

    def draw(self, path: str | None = None, title: str | None = None) -> Any:
        """[`draw_edges`][modeopt_masks.circuits.graph.draw_edges] of the hard circuit."""
        from .graph import draw_edges

        return draw_edges(self.edge_list(), self.heads_per_group(), path, title)

    def mask_parameters(self) -> list[nn.Parameter]:
        """The gates' ``log_alpha`` tensors (give these to the optimiser)."""
        return list(self.masks.parameters())

    def expected_density(self) -> torch.Tensor:
        """Expected fraction of edges kept (differentiable in training; the hard fraction in eval)."""
        return torch.stack([m.l0() for m in self.gate_masks().values()]).sum() / self.num_edges

    def hard_density(self) -> torch.Tensor:
        """Fraction of edges in the hard circuit (what `edge_list` returns), no gradient."""
        kept = torch.stack([m.circuit().sum() for m in self.gate_masks().values()]).sum()
        return kept.detach().float() / self.num_edges

    def l0(self) -> torch.Tensor:
        """Expected number of edges kept."""
        return torch.stack([m.l0() for m in self.gate_masks().values()]).sum()

    def set_temperature(self, temperature: float) -> None:
        """Set beta of every gate."""
        for m in self.gate_masks().values():
            m.temperature = float(temperature)

    # -- ablation source --------------------------------------------------------------------
    def record_corruption(self, *args: Any, **kwargs: Any) -> None:
        """Run the model on corrupted inputs and keep its writers' activations as the ablation.

        Later forwards (same batch and sequence shape) replace an edge that is off by
        the corrupted activation of its writer instead of zero (activation patching).
        """
        self._corrupt = None
        self._recording = True
        try:
            with torch.no_grad():
                self.wrapped_model(*args, **kwargs)
            self._corrupt = torch.cat(self._stack).detach()
        finally:
            self._recording = False
            self._stack = []

    def clear_corruption(self) -> None:
        """Back to zero ablation."""
        self._corrupt = None

    @contextmanager
    def gates(self, values: dict[str, torch.Tensor]) -> Iterator[None]:
        """Use ``values`` (mask name -> tensor of that mask's shape) as the gates inside the block."""
        previous, self._override = self._override, values
        try:
            yield
        finally:
            self._override = previous

    # -- forward ------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the wrapped model with the edge masks."""
        return self.wrapped_model(*args, **kwargs)

    def _active(self) -> bool:
        return self.use_masks and not self._recording

    def _gate(self, name: str) -> torch.Tensor:
        if self._override is not None:
            return self._override[name]
        return self.gate_masks()[name].mask()

    def _reader_input(self, name: str) -> torch.Tensor:
        """``[readers, batch, seq, d_model]`` for the readers of mask ``name``."""
        gate = self._gate(name)
        writers = torch.cat(self._stack)  # [n_w, b, t, d]
        gate = gate.to(writers.dtype)
        out = torch.einsum("rw,wbtd->rbtd", gate, writers)
        if self._corrupt is not None:
            corrupt = self._corrupt[: writers.shape[0]]
            if corrupt.shape != writers.shape:
                raise ValueError(
                    f"corrupted activations have shape {tuple(corrupt.shape)}, this forward "
                    f"{tuple(writers.shape)}: record_corruption on inputs of the same shape"
                )
            out = out + torch.einsum("rw,wbtd->rbtd", 1 - gate, corrupt.to(writers.dtype))
        if self.captured is not None:
            readers = next(rs for n, rs, _ in self.group_edges() if n == name)
            self.captured.update(zip(readers, out, strict=True))
        return out

    def add_hooks(self) -> None:
        """Register the hooks (no-op if registered)."""
        if self.hooks:
            return
        lay = self.layout
        layer_list: nn.ModuleList = self.wrapped_model.get_submodule(self.layers_name)  # type: ignore[assignment]
        parent = self.wrapped_model.get_submodule(self._parent_name)
        add = self.hooks.append
        add(layer_list[0].register_forward_pre_hook(_Embed(self), with_kwargs=True))
        for info, layer in zip(self._layers, layer_list, strict=True):
            norm = layer.get_submodule(lay.attn_norm)
            for which, path in enumerate(lay.qkv):
                hook = _QKV(self, info, norm, None if len(lay.qkv) == 1 else which)
                add(layer.get_submodule(path).register_forward_hook(hook))
            add(layer.get_submodule(lay.o_proj).register_forward_pre_hook(_Heads(self, info)))
            if info.has_mlp:
                assert lay.mlp is not None and lay.mlp_norm is not None
                add(layer.get_submodule(lay.mlp_norm).register_forward_pre_hook(
                    _ReplaceInput(self, f"m{info.index}")))
                add(layer.get_submodule(lay.mlp).register_forward_hook(_MLPOut(self)))
        add(parent.get_submodule(self._final_norm_name).register_forward_pre_hook(
            _ReplaceInput(self, "logits")))

    def remove_hooks(self) -> None:
        """Remove the hooks: the wrapped model computes exactly as before."""
        for h in self.hooks:
            h.remove()
        self.hooks = []
        self._stack = []


def _optional(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


class _Embed:
    def __init__(self, owner: EdgeMaskedModel) -> None:
        self.owner = owner

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        self.owner._stack = [x.unsqueeze(0)]
        self.owner._normed = {}


class _Heads:
    """Pre-hook of the output projection: per-head writers ``z_h W_O[h] + b_O / H``."""

    def __init__(self, owner: EdgeMaskedModel, info: _Layer) -> None:
        self.owner, self.info = owner, info

    def __call__(self, module: nn.Module, args: tuple) -> None:
        if not (self.owner._active() or self.owner._recording):
            return
        z = args[0]
        h, hd = self.info.n_heads, self.info.head_dim
        w = _weight_in_out(module).reshape(h, hd, -1).to(z.dtype)
        heads = torch.einsum("bthk,hkd->hbtd", z.reshape(*z.shape[:-1], h, hd), w)
        bias = getattr(module, "bias", None)
        if bias is not None:
            heads = heads + bias.to(z.dtype) / h
        self.owner._stack.append(heads)


class _MLPOut:
    def __init__(self, owner: EdgeMaskedModel) -> None:
        self.owner = owner

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.owner._active() or self.owner._recording:
            out = output[0] if isinstance(output, tuple) else output
            self.owner._stack.append(out.unsqueeze(0))


class _ReplaceInput:
    """Pre-hook of the MLP norm / final norm: its reader's input in place of the stream."""

    def __init__(self, owner: EdgeMaskedModel, name: str) -> None:
        self.owner, self.name = owner, name

    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:
        if not self.owner._active():
            return None
        return (self.owner._reader_input(self.name)[0], *args[1:])


class _QKV:
    """Forward hook of a q/k/v projection: each head's columns from its own reader input.

    ``which`` is 0/1/2 for separate q/k/v projections, ``None`` for GPT-2's fused ``c_attn``.
    """

    def __init__(self, owner: EdgeMaskedModel, info: _Layer, norm: nn.Module,
                 which: int | None) -> None:
        self.owner, self.info, self.norm, self.which = owner, info, norm, which

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        owner, info = self.owner, self.info
        if not owner._active():
            return None
        normed = owner._normed.get(info.index)
        if normed is None:
            normed = self.norm.forward(owner._reader_input(f"a{info.index}"))
            owner._normed[info.index] = normed
        hq, hkv, hd = info.n_heads, info.n_kv, info.head_dim
        # reader rows: q heads, then k groups, then v groups
        parts = [(0, hq), (hq, hkv), (hq + hkv, hkv)]
        chosen = parts if self.which is None else [parts[self.which]]
        weight = _weight_in_out(module)
        bias = getattr(module, "bias", None)
        outs, col = [], 0
        for start, n in chosen:
            x = normed[start:start + n]  # [n, b, t, d]
            w = weight[:, col:col + n * hd].reshape(weight.shape[0], n, hd).to(x.dtype)
            y = torch.einsum("nbtd,dnk->btnk", x, w).reshape(*x.shape[1:-1], n * hd)
            if bias is not None:
                y = y + bias[col:col + n * hd].to(y.dtype)
            outs.append(y)
            col += n * hd
        return torch.cat(outs, dim=-1).to(output.dtype)
