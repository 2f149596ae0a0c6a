"""The model-family records: one [`Family`][modeopt_masks.structured.families.Family] per family, read by gradnas and probing.

A family record holds everything the library knows about one model family:
its Hugging Face ``model_type`` values, where its attention and MLP projections
are (and how fused ones are laid out), which attributes hold head counts, and
where [`ResidualUpdateModel`][modeopt_masks.probing.residual_update_model.ResidualUpdateModel] reads the residual
updates. Paths are relative to the matched block; a leading ``../`` goes to its
parent. [`SUPPORTED_FAMILIES`][modeopt_masks.structured.families.SUPPORTED_FAMILIES] and the probing tables are derived from
[`FAMILIES`][modeopt_masks.structured.families.FAMILIES]; a new family is one [`register_family`][modeopt_masks.structured.families.register_family] call.

Blocks are matched by class name first (a class may have several layouts, one
per transformers generation: ViT's ``q_proj``/``o_proj`` in 5.x,
``attention.query``/``output.dense`` in 4.x; the first whose submodules exist
is used), then *structurally*: any transformers ``*Attention`` / ``*MLP``
class with the submodules of a ``structural`` family's layout (``q_proj``,
``k_proj``, ``v_proj``, ``o_proj``; Phi-3's fused ``qkv_proj``) is searched
like it, the head dim read from the block or its config. So Gemma, OLMo 2,
Granite, SmolLM3 and other Llama-like decoders work without a record.
Grouped-query attention (fewer KV heads than query heads) is pruned in one of
two ways, chosen by the rule field ``gqa``:

* ``"groups"`` (default): the unit is a whole KV group (its K/V head and all
  its query heads), so ``num_key_value_groups`` is unchanged;
* ``"even"``: the unit is one query head, K/V are kept, and every KV group
  keeps the same number of query heads, so the exported model runs with a
  smaller ``num_key_value_groups``.

With as many KV heads as query heads both are plain per-head pruning. A block
that cannot be pruned exactly (OLMo 2 normalises q and k over all heads at
once) raises an error that says so and how to switch it off.

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
from typing import Any, TypeVar

import torch.nn as nn

from ..layer_kinds import LAYER_KINDS, LayerKind, kind_of
from .structure import AttrUpdate, Slice, Structure


@dataclass(frozen=True)
class AttentionLayout:
    """How one family lays out attention. ``fused``: ``""``, ``"gpt2"``, ``"neox"`` or
    ``"qkv"`` (one projection of ``[q heads | k heads | v heads]``, e.g. Phi-3's ``qkv_proj``)."""

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
    #: (relative module path, attribute, "heads" | "kv_heads" | "size" | "groups"); an
    #: attribute ``config.name`` is set on a per-module copy of the module's config
    attrs: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class MLPLayout:
    """How one family lays out its MLP: up projections (output dim pruned), down projection.

    ``sections`` > 1: each up projection holds that many fused equal sections (Phi-3's
    ``gate_up_proj`` is ``[gate | up]``: 2).
    """

    family: str
    classes: tuple[str, ...]
    up: tuple[str, ...]
    down: str
    sections: int = 1


@dataclass(frozen=True)
class HookPoint:
    """The output of submodule ``path`` (``""`` = the layer) on its ``call``-th call per layer.

    Args:
        path: The submodule, relative to the layer (``""``: the layer).
        call: Which call per layer (0: the first).
    """

    path: str
    call: int = 0


@dataclass(frozen=True)
class ResidualLayout:
    """Where one family's residual-stream updates live (see [`modeopt_masks.probing.residual_layouts`][modeopt_masks.probing.residual_layouts]).

    ``layers``: candidate dotted-name suffixes of the ``nn.ModuleList`` of layers.
    ``attn_stream``: a hook point for post-LN families, ``None`` for pre-LN ones
    (where it is computed as layer input + ``attn_update``). ``scale``: a layer attribute
    the updates are multiplied by before they are added (Granite's ``residual_multiplier``).

    Args:
        family: The family name.
        layers: Candidate dotted-name suffixes of the layer list.
        attn_update: Where the attention update is read.
        mlp_update: Where the MLP update is read.
        attn_stream: The stream after attention (post-LN families; ``None`` for pre-LN).
        mlp_stream: The stream after the MLP.
        post_ln: Whether the family normalises after the residual addition.
        scale: A layer attribute the updates are multiplied by.
    """

    family: str
    layers: tuple[str, ...]
    attn_update: HookPoint
    mlp_update: HookPoint
    attn_stream: HookPoint | None
    mlp_stream: HookPoint
    post_ln: bool
    scale: str = ""

    def hook_points(self) -> list[HookPoint]:
        """Every hook point this layout reads (all must exist in each target layer)."""
        points = [self.attn_update, self.mlp_update, self.mlp_stream]
        return points if self.attn_stream is None else [*points, self.attn_stream]

    def fits(self, layer: nn.Module) -> bool:
        """Whether ``layer`` has every hook point (and the scale attribute) of this layout."""
        return all(_has(layer, p.path) for p in self.hook_points()) and (
            not self.scale or hasattr(layer, self.scale))


@dataclass(frozen=True)
class StreamLayout:
    """Where one family's residual stream and its blocks live (the hidden-size and depth axes).

    ``blocks``: dotted-name suffix of the ``nn.ModuleList`` of blocks; the part of the name
    before it is the *backbone* (``"model."`` in ``LlamaForCausalLM``, ``""`` in
    ``LlamaModel``). Backbone-relative: ``embeddings`` (modules whose parameters make the
    stream: ``nn.Embedding`` weights lose columns, a patch conv loses output channels, a
    container's own tensors such as ViT's ``cls_token`` lose their last dim; their outputs are
    masked), ``outer_norms`` (norms outside the blocks: BERT's embedding LayerNorm, the final
    norm), ``poolers`` (hidden -> hidden layers: both sides sliced). Block-relative: ``norms``
    (every norm over the stream). Root-relative: ``heads`` (output layers reading the stream,
    e.g. ``lm_head``; one tied to the embedding stays tied). The projections reading and
    writing the stream inside a block come from the family's attention and MLP layouts.
    """

    family: str
    blocks: str
    embeddings: tuple[str, ...]
    norms: tuple[str, ...]
    outer_norms: tuple[str, ...] = ()
    heads: tuple[str, ...] = ("lm_head",)
    poolers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    """Everything the library knows about one model family, in one record.

    ``model_types``: the Hugging Face ``config.model_type`` values (and aliases) it covers.
    ``attention`` / ``mlp``: gradnas layouts, one per transformers generation whose module
    names differ (the first whose submodules exist is used); empty: gradnas does not
    search this family. ``residual``: ``ResidualUpdateModel`` hook points, likewise.
    ``structural``: also match decoders of *any* class whose blocks have this family's
    submodules (so a new Llama-like family works without a record); structural families
    are tried in registration order, the most specific first. ``config_fields``: which
    ``model.config`` attribute holds each exported quantity (``"heads"``, ``"kv_heads"``,
    ``"head_dim"``, ``"channels"``, ``"hidden"``, ``"layers"``), so export can write the pruned
    shapes into the config; ``stream``: where the residual stream and the blocks are
    ([`StreamLayout`][modeopt_masks.structured.families.StreamLayout]; empty: no hidden-size / depth axes for this family);
    a quantity missing here cannot be expressed by the family's config (BERT derives its head
    size from ``hidden_size / num_attention_heads``, so fewer heads are not expressible).

    Examples:
        >>> from modeopt_masks.structured.families import FAMILIES
        >>> fam = FAMILIES["phi3"]
        >>> fam.attention[0].qkv, fam.mlp[0].up, fam.residual[0].attn_update.path
        ('qkv_proj', ('gate_up_proj',), 'resid_attn_dropout')
        >>> dict(FAMILIES["bert"].config_fields)
        {'channels': 'intermediate_size', 'hidden': 'hidden_size', 'layers': 'num_hidden_layers'}
        >>> FAMILIES["llama"].stream[0].embeddings
        ('embed_tokens',)
    """

    name: str
    label: str
    model_types: tuple[str, ...]
    attention: tuple[AttentionLayout, ...] = ()
    mlp: tuple[MLPLayout, ...] = ()
    residual: tuple[ResidualLayout, ...] = ()
    structural: bool = False
    #: blocks of these classes cannot be searched, for the reason in ``why_not`` (an error says so)
    refused: tuple[str, ...] = ()
    why_not: str = ""
    config_fields: tuple[tuple[str, str], ...] = ()
    stream: tuple[StreamLayout, ...] = ()


#: the hidden-size and depth fields every supported config has (GPT-2 maps them to n_embd/n_layer)
STREAM_CONFIG_FIELDS = (("hidden", "hidden_size"), ("layers", "num_hidden_layers"))
#: config attributes of Llama-style configs (``head_dim`` is read by attention and rotary)
LLAMA_CONFIG_FIELDS = (("heads", "num_attention_heads"), ("kv_heads", "num_key_value_heads"),
                       ("head_dim", "head_dim"), ("channels", "intermediate_size"),
                       *STREAM_CONFIG_FIELDS)
#: configs that can only express the MLP width (head size = hidden size / heads)
MLP_ONLY_CONFIG_FIELDS = (("channels", "intermediate_size"), *STREAM_CONFIG_FIELDS)


FAMILIES: dict[str, Family] = {}
"""Every registered family by name (``register_family`` adds to it)."""
_VERSION = [0]  # bumped by register_family (the class-name index is rebuilt then)


def register_family(family: Family) -> Family:
    """Make a model family known to gradnas and ``ResidualUpdateModel``.

    Examples:
        >>> from modeopt_masks.structured.families import FAMILIES, register_family
        >>> register_family(FAMILIES["gpt2"]).label
        'GPT-2 (GPT2Attention)'
    """
    names = [lay.family for lay in family.attention] + [lay.family for lay in family.mlp] + [
        lay.family for lay in family.residual]
    for name in names:
        if name != family.name:
            raise ValueError(f"family {family.name!r}: a layout names family {name!r}")
    FAMILIES[family.name] = family
    _VERSION[0] += 1
    return family


_BERT_CLASSES = ("BertAttention", "RobertaAttention", "ElectraAttention", "XLMRobertaAttention",
                 "CamembertAttention")
_BERT_RESIDUAL = dict(
    layers=("encoder.layer",), mlp_update=HookPoint("output.dropout"),
    mlp_stream=HookPoint("output"), post_ln=True,
)
#: q/k/v/o attention of Llama-style decoders (``hidden_size``: transformers 4.4x reshapes with it)
_LLAMA_ATTRS = (("", "num_heads", "heads"), ("", "num_key_value_heads", "kv_heads"),
                ("", "num_key_value_groups", "groups"), ("", "hidden_size", "size"))


def _pre_ln(family: str, attn: str, mlp: str, scale: str = "") -> ResidualLayout:
    return ResidualLayout(family, ("layers",), HookPoint(attn), HookPoint(mlp), None,
                          HookPoint(""), False, scale)


def _llama_like(name: str, label: str, model_types: tuple[str, ...], classes: tuple[str, ...],
                mlp_classes: tuple[str, ...], residual: ResidualLayout,
                stream: tuple[StreamLayout, ...] = ()) -> Family:
    """A decoder with Llama's q/k/v/o attention and gated MLP; only ``residual`` differs."""
    return Family(
        name, label, model_types,
        attention=(AttentionLayout(name, classes, o="o_proj", q="q_proj", k="k_proj", v="v_proj",
                                   attrs=_LLAMA_ATTRS),),
        mlp=(MLPLayout(name, mlp_classes, up=("gate_proj", "up_proj"), down="down_proj"),
             # ungated MLPs of Llama-like decoders (Apertus, StarCoder2, NanoChat)
             MLPLayout(name, (), up=("up_proj",), down="down_proj"),
             MLPLayout(name, (), up=("c_fc",), down="c_proj"),
             MLPLayout(name, (), up=("fc1",), down="fc2"),
             MLPLayout(name, mlp_classes, up=("gate_up_proj",), down="down_proj", sections=2)),
        residual=(residual,), structural=True, config_fields=LLAMA_CONFIG_FIELDS, stream=stream,
    )


register_family(Family(
    "bert", "BERT/RoBERTa/ELECTRA/ERNIE/ConvBERT/XLM-R (BertAttention...)",
    ("bert", "roberta", "electra", "ernie", "convbert", "xlm-roberta", "camembert"),
    attention=(AttentionLayout(
        "bert", _BERT_CLASSES, o="output.dense", q="self.query", k="self.key", v="self.value",
        head_dim=("self", ("attention_head_size",)),
        attrs=(("self", "num_attention_heads", "heads"), ("self", "all_head_size", "size")),
    ),),
    mlp=(MLPLayout("bert", ("BertIntermediate", "RobertaIntermediate", "ElectraIntermediate",
                            "XLMRobertaIntermediate", "CamembertIntermediate"),
                   up=("dense",), down="../output.dense"),),
    residual=(ResidualLayout("bert", attn_update=HookPoint("attention.output.dropout"),
                             attn_stream=HookPoint("attention.output"),
                             **_BERT_RESIDUAL),),  # type: ignore[arg-type]
    config_fields=MLP_ONLY_CONFIG_FIELDS,
    stream=(StreamLayout(
        "bert", "encoder.layer", ("embeddings.word_embeddings", "embeddings.position_embeddings",
                                  "embeddings.token_type_embeddings"),
        ("attention.output.LayerNorm", "output.LayerNorm"), ("embeddings.LayerNorm",), (),
        ("pooler.dense",)),),
))
register_family(Family(
    "mpnet", "MPNet (ResidualUpdateModel only)", ("mpnet",),
    residual=(ResidualLayout("mpnet", attn_update=HookPoint("attention.dropout"),
                             attn_stream=HookPoint("attention"),
                             **_BERT_RESIDUAL),),  # type: ignore[arg-type]
))
register_family(Family(
    "gpt2", "GPT-2 (GPT2Attention)", ("gpt2", "gpt"),
    attention=(AttentionLayout(
        "gpt2", ("GPT2Attention",), o="c_proj", qkv="c_attn", fused="gpt2",
        # transformers 4.4x's SDPA path reshapes with ``embed_dim``
        attrs=(("", "num_heads", "heads"), ("", "split_size", "size"), ("", "embed_dim", "size")),
    ),),
    mlp=(MLPLayout("gpt2", ("GPT2MLP",), up=("c_fc",), down="c_proj"),),
    residual=(ResidualLayout("gpt2", ("h",), HookPoint("attn"), HookPoint("mlp"), None,
                             HookPoint(""), False),),
    config_fields=(("channels", "n_inner"), *STREAM_CONFIG_FIELDS),  # head dim = n_embd / n_head
    stream=(StreamLayout("gpt2", "h", ("wte", "wpe"), ("ln_1", "ln_2"), ("ln_f",)),),
))
register_family(Family(
    "gpt_neox", "GPT-NeoX (GPTNeoXAttention)", ("gpt_neox", "gptneox"),
    attention=(AttentionLayout(
        "gpt_neox", ("GPTNeoXAttention",), o="dense", qkv="query_key_value", fused="neox",
        head_dim=("", ("head_size",)),
        attrs=(("", "num_attention_heads", "heads"), ("", "hidden_size", "size")),
    ),),
    mlp=(MLPLayout("gpt_neox", ("GPTNeoXMLP",), up=("dense_h_to_4h",), down="dense_4h_to_h"),),
    residual=(_pre_ln("gpt_neox", "post_attention_dropout", "post_mlp_dropout"),),
    config_fields=MLP_ONLY_CONFIG_FIELDS,  # head size = hidden_size / num_attention_heads
    stream=(StreamLayout("gpt_neox", "layers", ("embed_in",),
                         ("input_layernorm", "post_attention_layernorm"), ("final_layer_norm",),
                         ("lm_head", "embed_out")),),
))
register_family(Family(
    "vit", "ViT (ViTAttention; transformers 5 and 4.x layouts)", ("vit",),
    attention=(
        AttentionLayout(  # transformers 5
            "vit", ("ViTAttention",), o="o_proj", q="q_proj", k="k_proj", v="v_proj",
            attrs=(("", "num_attention_heads", "heads"), ("", "all_head_size", "size")),
        ),
        AttentionLayout(  # transformers 4.x: ViTSelfAttention under ``attention``
            "vit", ("ViTAttention",), o="output.dense", q="attention.query", k="attention.key",
            v="attention.value", head_dim=("attention", ("attention_head_size",)),
            attrs=(("attention", "num_attention_heads", "heads"),
                   ("attention", "all_head_size", "size")),
        ),
    ),
    mlp=(MLPLayout("vit", ("ViTMLP",), up=("fc1",), down="fc2"),  # transformers 5
         MLPLayout("vit", ("ViTIntermediate",), up=("dense",), down="../output.dense")),  # 4.x
    residual=(
        # transformers 5: ``layers.N`` with one ``dropout`` used after attention, then after MLP
        ResidualLayout("vit", ("layers",), HookPoint("dropout", 0), HookPoint("dropout", 1), None,
                       HookPoint(""), False),
        # transformers 4.x: ``encoder.layer.N``; ViTSelfOutput and ViTOutput end in dropouts
        ResidualLayout("vit", ("encoder.layer",), HookPoint("attention.output.dropout"),
                       HookPoint("output.dropout"), None, HookPoint(""), False),
    ),
    config_fields=(("heads", "num_attention_heads"), ("head_dim", "head_dim"),
                   ("channels", "intermediate_size"), *STREAM_CONFIG_FIELDS),
    stream=(StreamLayout("vit", "layers", ("embeddings",), ("layernorm_before", "layernorm_after"),
                         ("layernorm",), (), ("pooler.dense",)),
            StreamLayout("vit", "encoder.layer", ("embeddings",),
                         ("layernorm_before", "layernorm_after"), ("layernorm",), (),
                         ("pooler.dense",))),
))
# Llama-like decoders, most specific first (structural matching tries them in this order).
register_family(Family(
    "phi3", "Phi-3 (fused qkv_proj and gate_up_proj)", ("phi3",),
    attention=(AttentionLayout(
        "phi3", ("Phi3Attention",), o="o_proj", qkv="qkv_proj", fused="qkv",
        # the query width is read from the config: each pruned layer gets its own config copy
        attrs=(("", "num_key_value_heads", "kv_heads"), ("", "config.num_attention_heads",
                                                         "heads")),
    ),),
    mlp=(MLPLayout("phi3", ("Phi3MLP",), up=("gate_up_proj",), down="down_proj", sections=2),),
    residual=(_pre_ln("phi3", "resid_attn_dropout", "resid_mlp_dropout"),),
    structural=True, config_fields=LLAMA_CONFIG_FIELDS,
))
register_family(_llama_like(
    "sandwich", "Gemma 2/3, OLMo 2 (norms after attention and MLP)",
    ("gemma2", "gemma3_text", "olmo2", "olmo3"),
    ("Gemma2Attention", "Gemma3Attention", "Olmo2Attention"),
    ("Gemma2MLP", "Gemma3MLP", "Olmo2MLP"),
    _pre_ln("sandwich", "post_attention_layernorm", "post_feedforward_layernorm"),
))
register_family(_llama_like(
    "glm4", "GLM-4 (norms after attention and MLP, other names)", ("glm4",),
    ("Glm4Attention",), ("Glm4MLP",),
    _pre_ln("glm4", "post_self_attn_layernorm", "post_mlp_layernorm"),
))
register_family(_llama_like(
    "hyperclovax", "HyperCLOVA X (post-norms, updates scaled by residual_multiplier)",
    ("hyperclovax",), ("HyperCLOVAXAttention",), ("HyperCLOVAXMLP",),
    _pre_ln("hyperclovax", "post_norm1", "post_norm2", "residual_multiplier"),
))
register_family(_llama_like(
    "granite", "Granite (updates scaled by residual_multiplier)", ("granite",),
    ("GraniteAttention",), ("GraniteMLP",), _pre_ln("granite", "self_attn", "mlp", "residual_multiplier"),
))
register_family(_llama_like(
    "llama", "Llama and Llama-like decoders (q/k/v/o_proj; Mistral, Qwen2/3, Gemma, SmolLM3, ...)",
    ("llama", "mistral", "qwen2", "qwen3", "gemma", "smollm3"),
    ("LlamaAttention", "MistralAttention", "Qwen2Attention", "Qwen3Attention"),
    ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"),
    _pre_ln("llama", "self_attn", "mlp"),
    (StreamLayout("llama", "layers", ("embed_tokens",),
                  ("input_layernorm", "post_attention_layernorm"), ("norm",)),),
))

# Llama-like by their module names, but their attention heads are not independent units.
register_family(Family(
    "diffllama", "DiffLlama (refused: differential attention)", ("diffllama",),
    refused=("DiffLlamaAttention",),
    why_not="differential attention subtracts two attention maps per output head and "
            "normalises all heads together, so its heads cannot be removed one at a time",
))
register_family(Family(
    "doge", "Doge (refused: dynamic mask attention)", ("doge",), refused=("DogeAttention",),
    why_not="dynamic mask attention computes a gate per head from all heads' values (dt_proj), "
            "so its heads cannot be removed one at a time",
))

ATTENTION_LAYOUTS: tuple[AttentionLayout, ...] = tuple(
    lay for fam in FAMILIES.values() for lay in fam.attention)
MLP_LAYOUTS: tuple[MLPLayout, ...] = tuple(lay for fam in FAMILIES.values() for lay in fam.mlp)


def supported_families() -> str:
    """The families gradnas searches, for messages (derived from [`FAMILIES`][modeopt_masks.structured.families.FAMILIES]).

    Examples:
        >>> from modeopt_masks.structured.families import supported_families
        >>> "GPT-NeoX" in supported_families()
        True
    """
    names = [fam.label for fam in FAMILIES.values() if fam.attention or fam.mlp]
    return "; ".join(names) + (
        "; and any transformers decoder whose attention has q_proj/k_proj/v_proj/o_proj "
        "(or qkv_proj/o_proj) and whose config gives the head counts")


SUPPORTED_FAMILIES = supported_families()
"""The names of the families registered when the library loads."""


_L = TypeVar("_L", AttentionLayout, MLPLayout)


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


def _kind(module: nn.Module, block: str, role: str) -> LayerKind:
    """The layer kind of a block's projection ``module`` (a clear error when it has none)."""
    kind = kind_of(module)
    if kind is None:
        raise ValueError(
            f"{block}: its {role} is a {type(module).__name__}, which is no layer kind "
            f"({sorted(LAYER_KINDS)}; a subclass with its own forward is refused): gradnas "
            "cannot slice it"
        )
    return kind


def is_hf_module(module: nn.Module) -> bool:
    """Whether ``module``'s class comes from transformers."""
    return type(module).__module__.startswith("transformers.") or any(
        c.__module__.startswith("transformers.") for c in type(module).__mro__[1:2]
    )


def _index(layouts: Callable[[Family], tuple[_L, ...]]) -> tuple[dict[str, list[_L]], list[_L]]:
    """``({class name: layouts}, structural layouts in order)`` over [`FAMILIES`][modeopt_masks.structured.families.FAMILIES]."""
    by_class: dict[str, list[_L]] = {}
    structural: list[_L] = []
    for fam in FAMILIES.values():
        for layout in layouts(fam):
            for name in layout.classes:
                by_class.setdefault(name, []).append(layout)
            if fam.structural:
                structural.append(layout)
    return by_class, structural


_INDEX: dict[str, tuple[int, Any]] = {}


def _lookup(part: str) -> tuple[dict[str, list[Any]], list[Any]]:
    """The (cached) class-name index of ``part`` ("attention" or "mlp"), rebuilt when a
    family is registered."""
    cached = _INDEX.get(part)
    if cached is None or cached[0] != _VERSION[0]:
        cached = (_VERSION[0], _index(lambda fam: getattr(fam, part)))
        _INDEX[part] = cached
    return cached[1]


def _find(module: nn.Module, part: str, paths: Callable[[Any], tuple[str, ...]]) -> Any:
    by_class, structural = _lookup(part)
    for cls in type(module).__mro__:
        if cls.__name__ in by_class:
            return _pick(by_class[cls.__name__], module, paths)
    looks = looks_like_attention if part == "attention" else looks_like_mlp
    if looks(module):
        return next((lay for lay in structural if all(_has(module, rel) for rel in paths(lay))),
                    None)
    return None


def _attn_paths(lay: AttentionLayout) -> tuple[str, ...]:
    return tuple(p for p in (lay.o, lay.q, lay.k, lay.v, lay.qkv, lay.head_dim[0]) if p)


def _mlp_paths(lay: MLPLayout) -> tuple[str, ...]:
    return (*lay.up, lay.down)


def attention_layout(module: nn.Module) -> AttentionLayout | None:
    """The family layout of attention block ``module``: by class name, else (a transformers
    ``*Attention`` class) by its submodules; ``None``: not a known attention block."""
    return _find(module, "attention", _attn_paths)


def mlp_layout(module: nn.Module) -> MLPLayout | None:
    """The family layout of MLP block ``module`` (by class name, else by submodules), or ``None``."""
    return _find(module, "mlp", _mlp_paths)


def looks_like_attention(module: nn.Module) -> bool:
    """A transformers module whose class name says it is attention."""
    return is_hf_module(module) and type(module).__name__.endswith("Attention")


def looks_like_mlp(module: nn.Module) -> bool:
    """A transformers module whose class name says it is an MLP block."""
    return is_hf_module(module) and type(module).__name__.endswith("MLP")


class Submodules:
    """``root``'s submodules by dotted name, looked up on demand (``dict(named_modules())``
    per block made describing every block of a deep model quadratic)."""

    def __init__(self, root: nn.Module) -> None:
        self.root = root

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _has(self.root, name) if name else True

    def __getitem__(self, name: str) -> nn.Module:
        return self.root.get_submodule(name)


def _get(modules: Submodules, name: str, family: str, block: str) -> nn.Module:
    if name not in modules:
        raise ValueError(
            f"{block}: the {family} plugin expects a submodule {name!r} that this model lacks; "
            "is this a different version of the architecture?"
        )
    return modules[name]


GQA_MODES: tuple[str, ...] = ("groups", "even")


def _head_dim(owner: nn.Module, names: tuple[str, ...], block: str) -> int:
    """The head dim: an attribute of ``owner``, else its config's ``head_dim`` or
    ``hidden_size // num_attention_heads``."""
    for attr in names:
        if isinstance(getattr(owner, attr, None), int):
            return int(getattr(owner, attr))
    cfg = getattr(owner, "config", None)
    if isinstance(getattr(cfg, "head_dim", None), int):
        return int(cfg.head_dim)  # type: ignore[union-attr]
    hidden, heads = getattr(cfg, "hidden_size", None), getattr(cfg, "num_attention_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        return hidden // heads
    raise ValueError(
        f"{block}: no head count: neither an attribute {list(names)} nor a config with "
        "head_dim or hidden_size and num_attention_heads"
    )


def _check_no_cross_head_norm(module: nn.Module, block: str, widths: set[int], head_dim: int,
                              skip: set[str]) -> None:
    """Refuse blocks that normalise q or k over all heads at once (OLMo 2's ``q_norm``)."""
    for child_name, child in module.named_children():
        weight = getattr(child, "weight", None)
        if child_name in skip or not isinstance(weight, nn.Parameter) or weight.dim() != 1:
            continue
        if weight.numel() in widths and weight.numel() != head_dim:
            raise ValueError(
                f"{block}: {child_name} ({type(child).__name__}) normalises over all "
                f"{weight.numel() // head_dim} heads together, so removing a head would change "
                "the other heads' values and the exported model would not compute the masked "
                "one; gradnas cannot prune these heads. Switch attention off with "
                "{'hf.attention': {'*': None}} (the MLPs stay searchable)."
            )


def _check_not_refused(module: nn.Module, name: str, key: str) -> None:
    for fam in FAMILIES.values():
        if type(module).__name__ in fam.refused:
            raise ValueError(
                f"{name}: gradnas cannot search {type(module).__name__}: {fam.why_not}. Switch "
                f"it off with {{{key!r}: {{'*': None}}}}."
            )


def attention_structure(root: nn.Module, name: str, module: nn.Module,
                        gqa: str = "groups") -> Structure:
    """The heads [`Structure`][modeopt_masks.structured.structure.Structure] of attention block ``name`` (a known family).

    ``gqa`` (grouped-query attention only): ``"groups"`` prunes whole KV groups,
    ``"even"`` prunes query heads evenly within every KV group.
    """
    if gqa not in GQA_MODES:
        raise ValueError(f"{name}: gqa must be one of {list(GQA_MODES)}, got {gqa!r}")
    _check_not_refused(module, name, "hf.attention")
    layout = attention_layout(module)
    if layout is None:
        raise ValueError(
            f"{name}: attention class {type(module).__name__} is not in the gradnas plugin "
            f"table and has no known submodule layout. Supported families: "
            f"{supported_families()}. Switch it off with "
            f"{{'hf.attention': {{'{name}': None}}}} or register a Family."
        )
    modules = Submodules(root)
    fam = layout.family
    head_dim = _head_dim(_get(modules, _join(name, layout.head_dim[0]), fam, name),
                         layout.head_dim[1], name)
    if head_dim <= 0:
        raise ValueError(f"{name}: head dim {head_dim} must be positive")
    o_name = _join(name, layout.o)
    o_mod = _get(modules, o_name, fam, name)
    o_kind = _kind(o_mod, name, "output projection")
    n_heads = o_kind.in_width(o_mod) // head_dim
    if n_heads == 0:
        raise ValueError(f"{name}: its output projection has no input heads to search")
    slices: list[Slice] = []
    kv_heads = n_heads
    if layout.fused:
        qkv = _join(name, layout.qkv)
        qkv_mod = _get(modules, qkv, fam, name)
        qkv_kind = _kind(qkv_mod, name, "qkv projection")
        if getattr(module, "is_cross_attention", False):
            raise ValueError(f"{name}: cross-attention is not supported by gradnas")
        width = n_heads * head_dim
        if layout.fused == "qkv":
            kv_heads = (qkv_kind.out_width(qkv_mod) - width) // (2 * head_dim)
    else:
        q, k, v = (_join(name, p) for p in (layout.q, layout.k, layout.v))
        q_mod, k_mod, v_mod = (_get(modules, p, fam, name) for p in (q, k, v))
        for mod, role in ((q_mod, "q projection"), (v_mod, "v projection")):
            _kind(mod, name, role)
        k_kind = _kind(k_mod, name, "k projection")
        kv_heads = k_kind.out_width(k_mod) // head_dim
        _check_no_cross_head_norm(module, name, {n_heads * head_dim, kv_heads * head_dim},
                                  head_dim, {layout.q, layout.k, layout.v, layout.o})
    if kv_heads <= 0 or n_heads % kv_heads:
        raise ValueError(f"{name}: {n_heads} query heads do not split into {kv_heads} KV groups")
    group = n_heads // kv_heads
    even = gqa == "even" and group > 1 and not layout.fused
    if even:  # unit: one query head; K/V stay, every KV group keeps the same number of heads
        n_units, per_unit_heads, groups = n_heads, 1, kv_heads
    else:  # unit: a whole KV group (one K/V head and its query heads)
        n_units, per_unit_heads, groups = kv_heads, group, 1
    unit_len = per_unit_heads * head_dim  # query/output entries per unit
    if layout.fused == "gpt2":
        slices += [Slice(qkv, "weight", qkv_kind.out_dim, head_dim, 3, width),
                   Slice(qkv, "bias", 0, head_dim, 3, width)]
    elif layout.fused == "neox":
        slices += [Slice(qkv, "weight", qkv_kind.out_dim, 3 * head_dim),
                   Slice(qkv, "bias", 0, 3 * head_dim)]
    elif layout.fused == "qkv":  # [q (kv groups x group heads) | k (kv heads) | v (kv heads)]
        parts = ((0, unit_len), (width, head_dim), (width + kv_heads * head_dim, head_dim))
        slices += [Slice(qkv, t, qkv_kind.out_dim if t == "weight" else 0, unit_len, parts=parts)
                   for t in ("weight", "bias")]
    else:
        slices += [Slice(q, "weight", k_kind.out_dim, unit_len), Slice(q, "bias", 0, unit_len)]
        if not even:
            slices += [Slice(p, "weight", k_kind.out_dim, head_dim) for p in (k, v)]
            slices += [Slice(p, "bias", 0, head_dim) for p in (k, v)]
    slices.append(Slice(o_name, "weight", o_kind.in_dim, unit_len))
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
    """The hidden-channels [`Structure`][modeopt_masks.structured.structure.Structure] of MLP block ``name`` (a known family)."""
    layout = mlp_layout(module)
    if layout is None:
        raise ValueError(
            f"{name}: MLP class {type(module).__name__} is not in the gradnas plugin table and "
            f"has no known submodule layout. Supported families: {supported_families()}. "
            f"Switch it off with {{'hf.mlp': {{'{name}': None}}}} or register a Family."
        )
    modules = Submodules(root)
    slices = []
    widths = set()
    for rel in layout.up:
        up_name = _join(name, rel)
        up = _get(modules, up_name, layout.family, name)
        kind = _kind(up, name, f"up projection {rel!r}")
        width = kind.out_width(up) // layout.sections
        widths.add(width)
        slices += [Slice(up_name, "weight", kind.out_dim, 1, layout.sections, width),
                   Slice(up_name, "bias", 0, 1, layout.sections, width)]
    down_name = _join(name, layout.down)
    down = _get(modules, down_name, layout.family, name)
    down_kind = _kind(down, name, "down projection")
    widths.add(down_kind.in_width(down))
    if len(widths) != 1 or 0 in widths:
        raise ValueError(f"{name}: the up and down projections disagree on the hidden width "
                         f"({sorted(widths)}); gradnas cannot pair them")
    for child_name, child in module.named_children():
        weight = getattr(child, "weight", None)
        if (child_name not in (*layout.up, layout.down) and isinstance(weight, nn.Parameter)
                and weight.dim() == 1 and weight.numel() in widths):
            raise ValueError(
                f"{name}: {child_name} ({type(child).__name__}) normalises over all "
                f"{weight.numel()} hidden channels together, so removing a channel would change "
                "the others and the exported model would not compute the masked one; gradnas "
                "cannot prune these channels. Switch it off with {'hf.mlp': {'*': None}}."
            )
    slices.append(Slice(down_name, "weight", down_kind.in_dim, 1))
    scope = [name] if down_name.startswith(name + ".") else [name, down_name]
    return Structure(
        name=name, key="hf.mlp", kind="channels", family=layout.family, n_units=widths.pop(),
        unit_size=1, mask_module=down_name, mask_dim=-1, slices=slices, flop_scope=scope,
    )
