"""The hidden-size and depth axes: residual-stream channels and whole blocks.

Both axes use a family's [`StreamLayout`][modeopt_masks.structured.families.StreamLayout] (where the blocks,
embeddings, norms and output heads are) and its attention / MLP layouts (which
projections read and write the stream).

* **Hidden size** (type key ``"hf.hidden"``): one mask over the residual-stream
  channels, shared by every read of the stream (it multiplies the outputs of all
  norms, i.e. the inputs of q/k/v, gate/up, the LM head). Masked-model semantics
  equal the exported model's: the embeddings' outputs and every block's output
  are zero on pruned channels, and each norm computes its statistics over the
  kept channels only (an RMSNorm over 48 of 64 channels divides by 48). Export
  slices the embeddings (a tied LM head stays tied), every norm, the inputs of
  the readers, the outputs of ``o``/``down`` (and the BERT/GPT-2/NeoX/ViT
  equivalents), position embeddings, ViT's ``cls_token`` and poolers.
* **Depth** (type key ``"hf.depth"``): one scalar gate per block on its residual
  contribution (``x + g * (block(x) - x)``); a dropped block passes its input on.
  Export removes the blocks and renumbers the rest (``layer_idx``, so KV caches
  index the right layers).

Scores: the gradient of the shared mask / the gates (the default), or Minitron's
activation score (``score="activation"``: mean |norm output| per channel) and
block influence (``score="influence"``: mean ``1 - cos(block input, output)``,
ShortGPT / Minitron).

Examples:
    >>> import transformers as tf
    >>> from modeopt_masks.structured.stream import depth_structure, find_stream, hidden_structure
    >>> cfg = tf.LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2,
    ...                      num_attention_heads=2, intermediate_size=8, tie_word_embeddings=True)
    >>> m = tf.LlamaForCausalLM(cfg)
    >>> st = find_stream(m)
    >>> (st.family, st.blocks_name, len(st.blocks))
    ('llama', 'model.layers', 2)
    >>> h = hidden_structure(m, st); (h.name, h.n_units, h.kind)
    ('model.embed_tokens', 16, 'hidden')
    >>> depth_structure(m, st).blocks
    ['model.layers.0', 'model.layers.1']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..dynamic import is_dynamic, swap_class, unswap_class
from ..layer_kinds import kind_of
from .families import (
    FAMILIES,
    StreamLayout,
    _join,
    attention_layout,
    mlp_layout,
)
from .hparam import UnitMasked
from .structure import Slice, Structure


@dataclass
class Stream:
    """A model's residual stream, found through its family's [`StreamLayout`][modeopt_masks.structured.families.StreamLayout]."""

    family: str
    layout: StreamLayout
    backbone: str  # prefix of the backbone's module names ("model." or "")
    blocks_name: str
    blocks: list[str]
    width: int


def _prefixed(backbone: str, rel: str) -> str:
    return f"{backbone}{rel}"


def _fits(modules: dict[str, nn.Module], backbone: str, layout: StreamLayout) -> bool:
    return all(_prefixed(backbone, p) in modules for p in (*layout.embeddings, *layout.outer_norms))


def find_stream(model: nn.Module) -> Stream | None:
    """The residual stream of ``model`` (``None``: no family with a [`StreamLayout`][modeopt_masks.structured.families.StreamLayout] fits).

    The family is the one of ``model.config.model_type`` when it has a fitting layout, else
    the first structural family (Llama-like decoders) whose layout fits.
    """
    modules = dict(model.named_modules())
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    ordered = sorted(FAMILIES.values(), key=lambda f: model_type not in f.model_types)
    for fam in ordered:
        if model_type not in fam.model_types and not fam.structural:
            continue
        for layout in fam.stream:
            for name, module in modules.items():
                if not isinstance(module, nn.ModuleList) or not (
                        name == layout.blocks or name.endswith("." + layout.blocks)):
                    continue
                backbone = name[: len(name) - len(layout.blocks)]
                if not _fits(modules, backbone, layout) or len(module) == 0:
                    continue
                blocks = [f"{name}.{i}" for i in range(len(module))]
                first = modules[blocks[0]]
                if not all(_has_child(first, n) for n in layout.norms):
                    continue
                norm = modules[blocks[0] + "." + layout.norms[0]]
                weight = getattr(norm, "weight", None)
                if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
                    continue  # weightless norms (OLMo, NanoChat): no hidden/depth axes here
                width = _norm_width(norm)
                return Stream(fam.name, layout, backbone, name, blocks, width)
    return None


def _has_child(module: nn.Module, rel: str) -> bool:
    try:
        module.get_submodule(rel)
    except AttributeError:
        return False
    return True


def _norm_width(norm: nn.Module) -> int:
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        raise ValueError(f"{type(norm).__name__}: a stream norm needs a 1-D weight")
    return int(weight.shape[0])


def _block_projections(model: nn.Module, block: str) -> tuple[list[str], list[str]]:
    """``(readers, writers)`` of ``block``: the projections whose inputs / outputs are the
    stream, from the family's attention and MLP layouts."""
    readers: list[str] = []
    writers: list[str] = []
    done: list[str] = []
    for rel, module in model.get_submodule(block).named_modules():
        full = f"{block}.{rel}" if rel else block
        if any(full.startswith(d + ".") for d in done) or not rel:
            continue
        attn = attention_layout(module)
        if attn is not None:
            readers += [_join(full, p) for p in ((attn.qkv,) if attn.fused else (attn.q, attn.k,
                                                                                attn.v))]
            writers.append(_join(full, attn.o))
            done.append(full)
            continue
        mlp = mlp_layout(module)
        if mlp is not None:
            readers += [_join(full, p) for p in mlp.up]
            writers.append(_join(full, mlp.down))
            done.append(full)
    if not readers or not writers:
        raise ValueError(f"{block}: found no attention / MLP projections reading the stream")
    return readers, writers


#: model types whose forward reads ``config.hidden_size`` (Gemma's embedding scale)
REFUSED_HIDDEN: tuple[str, ...] = ("gemma",)


def _check_all_norms_listed(model: nn.Module, block: str, norms: tuple[str, ...],
                            projections: list[str], width: int) -> None:
    """Refuse a block with a norm over the stream the layout does not name (Gemma 2's
    ``pre_feedforward_layernorm``): it would average over pruned channels in the masked model
    and the exported model would compute something else."""
    owners = {p.rsplit(".", 1)[0] for p in projections}  # attention / MLP blocks
    for rel, module in model.get_submodule(block).named_modules():
        full = f"{block}.{rel}"
        weight = getattr(module, "weight", None)
        if (not rel or rel in norms or kind_of(module) is not None or any(
                full == o or full.startswith(o + ".") for o in owners)):
            continue
        if isinstance(weight, nn.Parameter) and weight.dim() == 1 and weight.shape[0] == width:
            raise ValueError(f"{full}: a {type(module).__name__} over the residual stream that "
                             f"the stream layout does not list (it lists {list(norms)}); the "
                             "hidden size axis cannot prune this block exactly")


def _linear_slices(modules: dict[str, nn.Module], name: str, side: str) -> list[Slice]:
    module = modules[name]
    kind = kind_of(module)
    if kind is None:
        raise ValueError(f"{name}: a {type(module).__name__} on the residual stream is no layer "
                         "kind; the hidden size cannot be sliced")
    if side == "in":
        return [Slice(name, "weight", kind.in_dim, 1)]
    return [Slice(name, "weight", kind.out_dim, 1), Slice(name, "bias", 0, 1)]


def _embedding_slices(modules: dict[str, nn.Module], name: str, width: int
                      ) -> tuple[list[Slice], list[str]]:
    """Slices of an embedding module (or container) and the norms inside it."""
    slices: list[Slice] = []
    norms: list[str] = []
    root = modules[name]
    for rel, module in root.named_modules():
        full = f"{name}.{rel}" if rel else name
        if isinstance(module, nn.Embedding):
            slices.append(Slice(full, "weight", 1, 1))
            continue
        if kind_of(module) is not None:  # a projection into the stream (ViT patches, ELECTRA)
            slices += _linear_slices(modules, full, "out")
            continue
        own = dict(module.named_parameters(recurse=False))
        weight = own.get("weight")
        if weight is not None and weight.dim() == 1 and weight.shape[0] == width:
            norms.append(full)
            slices += [Slice(full, "weight", 0, 1), Slice(full, "bias", 0, 1)]
            continue
        for pname, p in own.items():  # ViT's cls_token, position_embeddings, mask_token
            if p.shape[-1] == width:
                slices.append(Slice(full, pname, p.dim() - 1, 1))
    return slices, norms


def hidden_structure(model: nn.Module, stream: Stream | None = None) -> Structure:
    """The residual-stream channels [`Structure`][modeopt_masks.structured.structure.Structure] of ``model`` (key ``"hf.hidden"``)."""
    stream = stream or find_stream(model)
    if stream is None:
        raise ValueError(no_stream_message(model, "hidden size"))
    modules = dict(model.named_modules())
    lay, bb = stream.layout, stream.backbone
    slices: list[Slice] = []
    sites: list[tuple[str, str]] = []
    scope: list[str] = []
    for rel in lay.embeddings:
        name = _prefixed(bb, rel)
        sl, norms = _embedding_slices(modules, name, stream.width)
        slices += sl
        sites.append((name, "write"))
        sites += [(n, "norm") for n in norms]
        scope.append(name)
    for rel in lay.outer_norms:
        if rel.startswith(tuple(lay.embeddings)):
            continue  # BERT's embeddings.LayerNorm: a norm inside an embedding container
        name = _prefixed(bb, rel)
        slices += [Slice(name, "weight", 0, 1), Slice(name, "bias", 0, 1)]
        sites.append((name, "norm"))
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    if model_type.startswith(REFUSED_HIDDEN):
        raise ValueError(f"the hidden size axis cannot prune {model_type}: it scales its "
                         "embeddings by sqrt(config.hidden_size), so the exported model would "
                         "compute something else; leave the hidden axis off")
    for block in stream.blocks:
        for rel in lay.norms:
            name = f"{block}.{rel}"
            slices += [Slice(name, "weight", 0, 1), Slice(name, "bias", 0, 1)]
            sites.append((name, "norm"))
        readers, writers = _block_projections(model, block)
        _check_all_norms_listed(model, block, lay.norms, readers + writers, stream.width)
        for name in readers:
            slices += _linear_slices(modules, name, "in")
        for name in writers:
            slices += _linear_slices(modules, name, "out")
        scope += readers + writers
        sites.append((block, "block"))
    for rel in lay.poolers:
        name = _prefixed(bb, rel)
        if name in modules:
            slices += _linear_slices(modules, name, "in") + _linear_slices(modules, name, "out")
            scope.append(name)
    for rel in lay.heads:
        if rel in modules and kind_of(modules[rel]) is not None:
            slices += _linear_slices(modules, rel, "in")
            scope.append(rel)
    for name, _role in sites:
        if name not in modules:
            raise ValueError(f"{name}: the {stream.family} stream layout names a module this "
                             "model lacks")
    holder = _prefixed(bb, lay.embeddings[0])
    return Structure(
        name=holder, key="hf.hidden", kind="hidden", family=stream.family, n_units=stream.width,
        unit_size=1, mask_module=holder, mask_dim=-1, slices=slices, flop_scope=scope,
        sites=sites,
    )


def depth_structure(model: nn.Module, stream: Stream | None = None) -> Structure:
    """The blocks [`Structure`][modeopt_masks.structured.structure.Structure] of ``model`` (key ``"hf.depth"``; one unit per block)."""
    stream = stream or find_stream(model)
    if stream is None:
        raise ValueError(no_stream_message(model, "depth"))
    return Structure(
        name=stream.blocks_name, key="hf.depth", kind="blocks", family=stream.family,
        n_units=len(stream.blocks), unit_size=1, mask_module=stream.blocks_name, mask_dim=-1,
        sites=[(b, "block") for b in stream.blocks], blocks=list(stream.blocks),
    )


def no_stream_message(model: nn.Module, axis: str) -> str:
    """Why ``model`` has no ``axis`` ("hidden size" / "depth") to search, and what to do."""
    known = sorted(f.name for f in FAMILIES.values() if f.stream)
    return (f"the {axis} axis needs a residual-stream layout; {type(model).__name__} fits none "
            f"(families with one: {known}). Leave the axis off or register a Family with a "
            "StreamLayout")


# -- the masked model -------------------------------------------------------------------------
class StreamMasked(UnitMasked):
    """Mixin of every module on the stream: holders keep a shared mask (the hparam), sites
    read it (``_mm_roles``: ``{"write" | "norm" | "hidden": holder, "depth": (holder, i)}``)."""

    def _mm_init(self, structure: Structure, choices: list[int]) -> None:
        param = next(self.parameters(), None)  # type: ignore[attr-defined]
        dtype = param.dtype if param is not None and param.is_floating_point() else (
            torch.get_default_dtype())
        self._mm_struct = structure
        self._mm_choices = list(choices)
        self._mm_importance = None
        self._mm_kept = list(range(structure.n_units))
        self._mm_full = True
        self._mm_score_mask = None
        self.register_buffer(  # type: ignore[attr-defined]
            "_mm_unit_mask", torch.ones(structure.n_units, dtype=dtype,
                                        device=param.device if param is not None else None),
            persistent=False,
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        roles = self.__dict__.get("_mm_roles")
        if not roles or self.__dict__.get("_mm_bypass"):
            return super(UnitMasked, self).forward(*args, **kwargs)  # type: ignore[misc]
        if "norm" in roles:
            return self._mm_norm(roles["norm"], *args, **kwargs)
        x = args[0] if args else kwargs.get("hidden_states")
        out = super(UnitMasked, self).forward(*args, **kwargs)  # type: ignore[misc]
        h, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, None)
        depth = roles.get("depth")
        if depth is not None and isinstance(x, torch.Tensor):
            h = _gate(depth[0], depth[1], x, h)
        hidden = roles.get("write", roles.get("hidden"))
        if hidden is not None and not hidden._mm_full and hidden._mm_score_mask is None:
            h = h * hidden._mm_unit_mask.to(h.dtype)
        return h if rest is None else (h, *rest)

    def _mm_norm(self, holder: Any, *args: Any, **kwargs: Any) -> Any:
        score = holder._mm_score_mask
        if holder._mm_full or score is not None:
            out = super(UnitMasked, self).forward(*args, **kwargs)  # type: ignore[misc]
            stats = holder.__dict__.get("_mm_stats")
            if stats is not None:  # activation score: mean |normalised hidden state|
                flat = out.detach().abs().reshape(-1, out.shape[-1])
                stats[0] += flat.sum(0).double()
                stats[1] += flat.shape[0]
            return out if score is None else out * score.to(out.dtype)
        x = args[0] if args else kwargs["hidden_states"]
        kept = torch.tensor(holder._mm_kept, device=x.device)
        width = x.shape[-1]
        xs = x.index_select(-1, kept)
        if isinstance(self, nn.LayerNorm):
            w = None if self.weight is None else self.weight.index_select(0, kept)
            b = None if self.bias is None else self.bias.index_select(0, kept)
            y = F.layer_norm(xs, (len(holder._mm_kept),), w, b, self.eps)
        else:  # any norm over the last dim (RMSNorm variants): its own forward on the kept
            params = {n: p.index_select(0, kept)
                      for n, p in self.named_parameters(recurse=False)  # type: ignore[attr-defined]
                      if p.dim() == 1 and p.shape[0] == width}
            self.__dict__["_mm_bypass"] = True
            try:
                y = torch.func.functional_call(self, params, (xs,))  # type: ignore[arg-type]
            finally:
                self.__dict__["_mm_bypass"] = False
        out = y.new_zeros(*y.shape[:-1], width)
        return out.index_copy(-1, kept, y)


def _gate(holder: Any, index: int, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Block ``index``'s output under the depth mask of ``holder``."""
    stats = holder.__dict__.get("_mm_stats")
    if stats is not None:  # block influence: 1 - cos(input, output), per token
        cos = F.cosine_similarity(x.detach().double(), h.detach().double(), dim=-1)
        stats[0][index] += (1.0 - cos).sum()
        stats[1][index] += cos.numel()
    score = holder._mm_score_mask
    if score is not None:
        return x + score[index].to(h.dtype) * (h - x)
    if holder._mm_full or index in holder._mm_kept:
        return h
    return x


def install_stream_sites(modules: dict[str, nn.Module], structure: Structure,
                         choices: list[int]) -> list[nn.Module]:
    """Make ``structure``'s holder and sites [`StreamMasked`][modeopt_masks.structured.stream.StreamMasked]; return the modules swapped."""
    swapped: list[nn.Module] = []

    def ensure(module: nn.Module, name: str) -> None:
        if is_dynamic(module, StreamMasked):
            return
        if is_dynamic(module):
            raise ValueError(f"gradnas: {name!r} (on the residual stream of {structure.name}) is "
                             "already converted by another mode; export or unconvert it first")
        swap_class(module, StreamMasked)
        swapped.append(module)

    holder: Any = modules[structure.mask_module]
    ensure(holder, structure.mask_module)
    holder._mm_init(structure, choices)
    sites: list[nn.Module] = []
    for i, (name, role) in enumerate(structure.sites):
        module = modules[name]
        ensure(module, name)
        roles = module.__dict__.setdefault("_mm_roles", {})
        if structure.kind == "blocks":
            roles["depth"] = (holder, i)
        else:
            roles["hidden" if role == "block" else role] = holder
        sites.append(module)
    holder.__dict__["_mm_site_modules"] = sites
    return swapped


def release_stream_sites(holder: nn.Module) -> None:
    """Undo [`install_stream_sites`][modeopt_masks.structured.stream.install_stream_sites] for ``holder``'s hparam (its sites lose their roles;
    modules left with none get their class back)."""
    sites = holder.__dict__.pop("_mm_site_modules", [])
    holder.__dict__.pop("_mm_stats", None)
    for site in [*sites, holder]:
        roles = site.__dict__.get("_mm_roles", {})
        for role in [r for r, v in roles.items() if (v[0] if isinstance(v, tuple) else v)
                     is holder]:
            del roles[role]
        if not roles:
            site.__dict__.pop("_mm_roles", None)
    holder._mm_teardown()  # type: ignore[operator]
    for site in dict.fromkeys([*sites, holder]):
        if not site.__dict__.get("_mm_roles") and "_mm_struct" not in site.__dict__:
            unswap_class(site)


def drop_blocks(model: nn.Module, structure: Structure, kept: list[int]) -> None:
    """Keep only blocks ``kept`` (sorted) of a depth ``structure``; renumber their
    ``layer_idx`` attributes (KV caches index layers by it) and the block list."""
    blocks = model.get_submodule(structure.name)
    assert isinstance(blocks, nn.ModuleList)
    chosen = [blocks[i] for i in kept]
    blocks._modules.clear()
    for new, block in enumerate(chosen):
        blocks._modules[str(new)] = block
        for sub in block.modules():
            if isinstance(getattr(sub, "layer_idx", None), int):
                setattr(sub, "layer_idx", new)  # noqa: B010 - a module attribute, not a submodule


def update_stream_config(model: nn.Module, hidden: int | None, kept_blocks: list[int] | None,
                         n_blocks: int) -> None:
    """Write the new hidden size / number of blocks (and ``layer_types``) into ``model.config``."""
    config = getattr(model, "config", None)
    if config is None:
        return
    if hidden is not None:
        config.hidden_size = hidden
    if kept_blocks is not None:
        config.num_hidden_layers = len(kept_blocks)
        types = getattr(config, "layer_types", None)
        if isinstance(types, list | tuple) and len(types) == n_blocks:
            config.layer_types = [types[i] for i in kept_blocks]
