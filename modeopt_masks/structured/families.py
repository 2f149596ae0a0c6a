"""The architecture plugin table: one entry per Hugging Face family.

Everything gradnas knows about a family's module layout lives here: which
modules are q/k/v/o (or the fused ``c_attn`` / ``query_key_value``), where the
MLP's up and down projections are, and which attributes hold head counts.
Paths are relative to the matched block; a leading ``../`` goes to its parent.

Supported attention families (:data:`SUPPORTED_FAMILIES`): BERT/RoBERTa/ELECTRA
(and XLM-R), GPT-2, GPT-NeoX, Llama/Mistral/Qwen2/Qwen3, ViT. A class may have
several entries (one per transformers generation: ViT's ``q_proj``/``o_proj`` in
5.x, ``attention.query``/``output.dense`` in 4.x); the first entry whose own
submodules exist in the block is used. Grouped-query attention (Llama-style,
fewer KV heads than query heads) is pruned in one of two ways, chosen by the
rule field ``gqa``:

* ``"groups"`` (default): the unit is a whole KV group (its K/V head and all
  its query heads), so ``num_key_value_groups`` is unchanged;
* ``"even"``: the unit is one query head, K/V are kept, and every KV group
  keeps the same number of query heads, so the exported model runs with a
  smaller ``num_key_value_groups``.

With as many KV heads as query heads both are plain per-head pruning.

Examples:
    >>> import transformers as tf
    >>> from modeopt_masks.structured.families import attention_structure
    >>> cfg = tf.LlamaConfig(vocab_size=32, hidden_size=32, num_hidden_layers=1,
    ...                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=16)
    >>> m = tf.LlamaModel(cfg)
    >>> s = attention_structure(m, "layers.0.self_attn", m.layers[0].self_attn)
    >>> (s.family, s.n_units, s.heads_per_unit, s.unit_size)
    ('llama', 2, 2, 16)
    >>> s = attention_structure(m, "layers.0.self_attn", m.layers[0].self_attn, gqa="even")
    >>> (s.n_units, s.heads_per_unit, s.unit_size, s.groups)
    (4, 1, 8, 2)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch.nn as nn

from .structure import AttrUpdate, Slice, Structure, weight_of


@dataclass(frozen=True)
class AttentionLayout:
    """How one family lays out attention. ``fused``: ``""``, ``"gpt2"`` or ``"neox"``."""

    family: str
    classes: tuple[str, ...]
    o: str
    q: str = ""
    k: str = ""
    v: str = ""
    qkv: str = ""
    fused: str = ""
    #: module (relative path) and attribute names that hold the head dim
    head_dim: tuple[str, tuple[str, ...]] = ("", ("head_dim",))
    #: (relative module path, attribute, "heads" | "kv_heads" | "size" | "groups")
    attrs: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class MLPLayout:
    """How one family lays out its MLP: up projections (output dim pruned), down projection."""

    family: str
    classes: tuple[str, ...]
    up: tuple[str, ...]
    down: str


_BERT_CLASSES = ("BertAttention", "RobertaAttention", "ElectraAttention", "XLMRobertaAttention",
                 "CamembertAttention")
_LLAMA_CLASSES = ("LlamaAttention", "MistralAttention", "Qwen2Attention", "Qwen3Attention")

ATTENTION_LAYOUTS: tuple[AttentionLayout, ...] = (
    AttentionLayout(
        "bert", _BERT_CLASSES, o="output.dense", q="self.query", k="self.key", v="self.value",
        head_dim=("self", ("attention_head_size",)),
        attrs=(("self", "num_attention_heads", "heads"), ("self", "all_head_size", "size")),
    ),
    AttentionLayout(
        "gpt2", ("GPT2Attention",), o="c_proj", qkv="c_attn", fused="gpt2",
        # transformers 4.4x's SDPA path reshapes with ``embed_dim``
        attrs=(("", "num_heads", "heads"), ("", "split_size", "size"), ("", "embed_dim", "size")),
    ),
    AttentionLayout(
        "gpt_neox", ("GPTNeoXAttention",), o="dense", qkv="query_key_value", fused="neox",
        head_dim=("", ("head_size",)),
        attrs=(("", "num_attention_heads", "heads"), ("", "hidden_size", "size")),
    ),
    AttentionLayout(
        "llama", _LLAMA_CLASSES, o="o_proj", q="q_proj", k="k_proj", v="v_proj",
        # ``hidden_size``: transformers 4.4x reshapes the attention output with it
        attrs=(("", "num_heads", "heads"), ("", "num_key_value_heads", "kv_heads"),
               ("", "num_key_value_groups", "groups"), ("", "hidden_size", "size")),
    ),
    AttentionLayout(  # transformers 5
        "vit", ("ViTAttention",), o="o_proj", q="q_proj", k="k_proj", v="v_proj",
        attrs=(("", "num_attention_heads", "heads"), ("", "all_head_size", "size")),
    ),
    AttentionLayout(  # transformers 4.x: ViTSelfAttention under ``attention``, BERT-like output
        "vit", ("ViTAttention",), o="output.dense", q="attention.query", k="attention.key",
        v="attention.value", head_dim=("attention", ("attention_head_size",)),
        attrs=(("attention", "num_attention_heads", "heads"),
               ("attention", "all_head_size", "size")),
    ),
)

MLP_LAYOUTS: tuple[MLPLayout, ...] = (
    MLPLayout("bert", ("BertIntermediate", "RobertaIntermediate", "ElectraIntermediate",
                       "XLMRobertaIntermediate", "CamembertIntermediate"),
              up=("dense",), down="../output.dense"),
    MLPLayout("gpt2", ("GPT2MLP",), up=("c_fc",), down="c_proj"),
    MLPLayout("gpt_neox", ("GPTNeoXMLP",), up=("dense_h_to_4h",), down="dense_4h_to_h"),
    MLPLayout("llama", ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"),
              up=("gate_proj", "up_proj"), down="down_proj"),
    MLPLayout("vit", ("ViTMLP",), up=("fc1",), down="fc2"),  # transformers 5
    MLPLayout("vit", ("ViTIntermediate",), up=("dense",), down="../output.dense"),  # 4.x
)

SUPPORTED_FAMILIES = (
    "BERT/RoBERTa/ELECTRA/XLM-R (BertAttention...), GPT-2 (GPT2Attention), "
    "GPT-NeoX (GPTNeoXAttention), Llama/Mistral/Qwen2/Qwen3 (LlamaAttention...), "
    "ViT (ViTAttention; transformers 5 and 4.x layouts)"
)


_L = TypeVar("_L", AttentionLayout, MLPLayout)


def _by_class(layouts: tuple[_L, ...]) -> dict[str, list[_L]]:
    table: dict[str, list[_L]] = {}
    for layout in layouts:
        for c in layout.classes:
            table.setdefault(c, []).append(layout)
    return table


_ATTN_BY_CLASS: dict[str, list[AttentionLayout]] = _by_class(ATTENTION_LAYOUTS)
_MLP_BY_CLASS: dict[str, list[MLPLayout]] = _by_class(MLP_LAYOUTS)


def _has(module: nn.Module, rel: str) -> bool:
    """Whether ``module`` has submodule ``rel`` (paths into the parent count as present)."""
    if not rel or rel.startswith("../"):
        return True
    try:
        module.get_submodule(rel)
    except AttributeError:
        return False
    return True


def _pick(candidates: list[_L], module: nn.Module, paths: Callable[[_L], tuple[str, ...]]) -> _L:
    """The first candidate whose own submodules exist in ``module`` (else the first one)."""
    for layout in candidates:
        if all(_has(module, rel) for rel in paths(layout)):
            return layout
    return candidates[0]


def _join(base: str, rel: str) -> str:
    while rel.startswith("../"):
        base, rel = (base.rsplit(".", 1)[0] if "." in base else ""), rel[3:]
    if not rel:
        return base
    return f"{base}.{rel}" if base else rel


def _out_dim(module: nn.Module) -> int:
    """Axis of the output units in ``module.weight`` (Conv1D stores ``[in, out]``)."""
    return 1 if type(module).__name__ == "Conv1D" or hasattr(module, "nf") else 0


def is_hf_module(module: nn.Module) -> bool:
    """Whether ``module``'s class comes from transformers."""
    return type(module).__module__.startswith("transformers.") or any(
        c.__module__.startswith("transformers.") for c in type(module).__mro__[1:2]
    )


def attention_layout(module: nn.Module) -> AttentionLayout | None:
    """The plugin entry for ``module``'s class (``None``: not a known attention block)."""
    for cls in type(module).__mro__:
        if cls.__name__ in _ATTN_BY_CLASS:
            return _pick(_ATTN_BY_CLASS[cls.__name__], module,
                         lambda lay: (lay.o, lay.q, lay.k, lay.v, lay.qkv, lay.head_dim[0]))
    return None


def mlp_layout(module: nn.Module) -> MLPLayout | None:
    """The plugin entry for ``module``'s MLP class, or ``None``."""
    for cls in type(module).__mro__:
        if cls.__name__ in _MLP_BY_CLASS:
            return _pick(_MLP_BY_CLASS[cls.__name__], module, lambda lay: (*lay.up, lay.down))
    return None


def looks_like_attention(module: nn.Module) -> bool:
    """A transformers module whose class name says it is attention."""
    return is_hf_module(module) and type(module).__name__.endswith("Attention")


def looks_like_mlp(module: nn.Module) -> bool:
    """A transformers module whose class name says it is an MLP block."""
    return is_hf_module(module) and type(module).__name__.endswith("MLP")


def _get(modules: dict[str, nn.Module], name: str, family: str, block: str) -> nn.Module:
    if name not in modules:
        raise ValueError(
            f"{block}: the {family} plugin expects a submodule {name!r} that this model lacks; "
            "is this a different version of the architecture?"
        )
    return modules[name]


GQA_MODES: tuple[str, ...] = ("groups", "even")


def attention_structure(root: nn.Module, name: str, module: nn.Module,
                        gqa: str = "groups") -> Structure:
    """The heads :class:`Structure` of attention block ``name`` (a known family).

    ``gqa`` (grouped-query attention only): ``"groups"`` prunes whole KV groups,
    ``"even"`` prunes query heads evenly within every KV group.
    """
    if gqa not in GQA_MODES:
        raise ValueError(f"{name}: gqa must be one of {list(GQA_MODES)}, got {gqa!r}")
    layout = attention_layout(module)
    if layout is None:
        raise ValueError(
            f"{name}: attention class {type(module).__name__} is not in the gradnas plugin "
            f"table. Supported families: {SUPPORTED_FAMILIES}. Switch it off with "
            f"{{'hf.attention': {{'{name}': None}}}} or add an AttentionLayout."
        )
    modules = dict(root.named_modules())
    fam = layout.family
    hd_owner = _get(modules, _join(name, layout.head_dim[0]), fam, name)
    head_dim = next(
        (int(getattr(hd_owner, a)) for a in layout.head_dim[1] if hasattr(hd_owner, a)), None
    )
    if head_dim is None:
        raise ValueError(f"{name}: no head-dim attribute {layout.head_dim[1]} found")
    o_name = _join(name, layout.o)
    o_mod = _get(modules, o_name, fam, name)
    o_in = weight_of(o_mod).shape[1 - _out_dim(o_mod)]
    n_heads = o_in // head_dim
    slices: list[Slice] = []
    kv_heads = n_heads
    if layout.fused == "gpt2":
        qkv = _join(name, layout.qkv)
        qkv_mod = _get(modules, qkv, fam, name)
        if getattr(module, "is_cross_attention", False):
            raise ValueError(f"{name}: GPT-2 cross-attention is not supported by gradnas")
        width = n_heads * head_dim
        slices += [Slice(qkv, "weight", 1, head_dim, 3, width), Slice(qkv, "bias", 0, head_dim, 3, width)]
        del qkv_mod
    elif layout.fused == "neox":
        qkv = _join(name, layout.qkv)
        _get(modules, qkv, fam, name)
        slices += [Slice(qkv, "weight", 0, 3 * head_dim), Slice(qkv, "bias", 0, 3 * head_dim)]
    else:
        q, k, v = (_join(name, p) for p in (layout.q, layout.k, layout.v))
        k_mod = _get(modules, k, fam, name)
        _get(modules, q, fam, name), _get(modules, v, fam, name)
        kv_heads = weight_of(k_mod).shape[0] // head_dim
    if n_heads % kv_heads:
        raise ValueError(f"{name}: {n_heads} query heads do not split into {kv_heads} KV groups")
    group = n_heads // kv_heads
    even = gqa == "even" and group > 1 and not layout.fused
    if even:  # unit: one query head; K/V stay, every KV group keeps the same number of heads
        n_units, per_unit_heads, groups = n_heads, 1, kv_heads
    else:  # unit: a whole KV group (one K/V head and its query heads)
        n_units, per_unit_heads, groups = kv_heads, group, 1
    unit_len = per_unit_heads * head_dim  # query/output entries per unit
    if not layout.fused:
        slices += [Slice(q, "weight", 0, unit_len), Slice(q, "bias", 0, unit_len)]
        if not even:
            slices += [Slice(p, t, 0, head_dim) for p in (k, v) for t in ("weight", "bias")]
    o_dim = 1 - _out_dim(o_mod)
    slices.append(Slice(o_name, "weight", o_dim, unit_len))
    attrs = []
    for rel, attr, what in layout.attrs:
        if what == "kv_heads" and even:
            continue
        if what == "groups":
            if even:
                attrs.append(AttrUpdate(_join(name, rel), attr, 1, divisor=kv_heads))
            continue
        per_unit = {"heads": per_unit_heads, "kv_heads": 1, "size": unit_len}[what]
        attrs.append(AttrUpdate(_join(name, rel), attr, per_unit))
    scope = [name] if o_name.startswith(name + ".") else [name, o_name]
    return Structure(
        name=name, key="hf.attention", kind="heads", family=fam, n_units=n_units,
        unit_size=unit_len, mask_module=o_name, mask_dim=-1, slices=slices, attrs=attrs,
        flop_scope=scope, heads_per_unit=per_unit_heads, groups=groups,
    )


def mlp_structure(root: nn.Module, name: str, module: nn.Module) -> Structure:
    """The hidden-channels :class:`Structure` of MLP block ``name`` (a known family)."""
    layout = mlp_layout(module)
    if layout is None:
        raise ValueError(
            f"{name}: MLP class {type(module).__name__} is not in the gradnas plugin table. "
            f"Supported families: {SUPPORTED_FAMILIES}. Switch it off with "
            f"{{'hf.mlp': {{'{name}': None}}}} or add an MLPLayout."
        )
    modules = dict(root.named_modules())
    slices = []
    n_units = None
    for rel in layout.up:
        up_name = _join(name, rel)
        up = _get(modules, up_name, layout.family, name)
        dim = _out_dim(up)
        n_units = weight_of(up).shape[dim]
        slices += [Slice(up_name, "weight", dim, 1), Slice(up_name, "bias", 0, 1)]
    down_name = _join(name, layout.down)
    down = _get(modules, down_name, layout.family, name)
    slices.append(Slice(down_name, "weight", 1 - _out_dim(down), 1))
    assert n_units is not None
    scope = [name] if down_name.startswith(name + ".") else [name, down_name]
    return Structure(
        name=name, key="hf.mlp", kind="channels", family=layout.family, n_units=n_units,
        unit_size=1, mask_module=down_name, mask_dim=-1, slices=slices, flop_scope=scope,
    )
