"""Attention heads as mask units: which output-projection inputs belong to which head.

``mask_unit="head"`` (one mask entry per query head) and ``mask_unit="kv_group"`` (one per
key/value group of grouped-query attention: a K/V head and all its query heads) mask the
*input columns* of an attention block's output projection, one head's ``head_dim``
columns (a group's ``heads_per_group * head_dim``) per entry. Turning an entry off is
exactly zeroing that head's (group's) attention output before the projection, so the
other heads and the projection's bias are untouched. The layout comes from the family
records (:func:`modeopt_masks.structured.families.attention_structure`, the one gradnas
uses): BERT-family, GPT-2, GPT-NeoX, Llama-family (with GQA), ViT and every
Llama-like decoder the records match structurally.

Examples:
    >>> import transformers as tf
    >>> from modeopt_masks.heads import head_layouts
    >>> cfg = tf.LlamaConfig(vocab_size=32, hidden_size=32, num_hidden_layers=1,
    ...                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=16)
    >>> layout = head_layouts(tf.LlamaModel(cfg))["layers.0.self_attn.o_proj"]
    >>> layout.heads, layout.kv_heads, layout.units("head"), layout.units("kv_group")
    (4, 2, (4, 8), (2, 16))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .layer_kinds import LayerKind

#: the ``mask_unit`` values that mask attention heads
HEAD_UNITS: tuple[str, ...] = ("head", "kv_group")


@dataclass(frozen=True)
class HeadLayout:
    """One attention block's heads as its output projection ``projection`` sees them.

    Examples:
        >>> from modeopt_masks.heads import HeadLayout
        >>> HeadLayout("attn", "attn.c_proj", heads=4, kv_heads=4, head_dim=8).units("kv_group")
        (4, 8)
    """

    block: str
    projection: str
    heads: int
    kv_heads: int
    head_dim: int

    def units(self, unit: str) -> tuple[int, int]:
        """``(number of mask entries, projection input columns per entry)`` for ``unit``."""
        if unit == "head":
            return self.heads, self.head_dim
        if unit == "kv_group":
            return self.kv_heads, self.heads // self.kv_heads * self.head_dim
        raise ValueError(f"unknown head unit {unit!r}; choose one of {list(HEAD_UNITS)}")


def head_layouts(model: nn.Module) -> dict[str, HeadLayout]:
    """Every attention block the family records know, by its output projection's name.

    A block whose layout the records cannot read (e.g. a refused class) is left out;
    :func:`head_layout_of` names why when such a projection is asked for.
    """
    return {k: v for k, v in scan_heads(model).items() if isinstance(v, HeadLayout)}


def head_layout_of(model: nn.Module, name: str,
                   scanned: dict[str, HeadLayout | str] | None = None) -> HeadLayout:
    """The :class:`HeadLayout` whose output projection is module ``name``, else a clear error.

    Examples:
        >>> import transformers as tf
        >>> from modeopt_masks.heads import head_layout_of
        >>> m = tf.GPT2Model(tf.GPT2Config(n_embd=16, n_head=2, n_layer=1, vocab_size=8,
        ...                                 bos_token_id=0, eos_token_id=0))
        >>> head_layout_of(m, "h.0.attn.c_proj").heads
        2
        >>> try:
        ...     head_layout_of(m, "h.0.mlp.c_proj")
        ... except ValueError as e:
        ...     print(str(e)[:60])
        'h.0.mlp.c_proj' is not the output projection of an attentio
    """
    scanned = scan_heads(model) if scanned is None else scanned
    found = scanned.get(name)
    if isinstance(found, HeadLayout):
        return found
    if isinstance(found, str):
        raise ValueError(f"{name!r}: head masks need its attention block's layout: {found}")
    raise ValueError(
        f"{name!r} is not the output projection of an attention block the family records know, "
        f"so mask_unit {list(HEAD_UNITS)} cannot apply to it. Attention output projections of "
        f"this model: {[k for k, v in scanned.items() if isinstance(v, HeadLayout)][:20]}"
    )


def scan_heads(model: nn.Module) -> dict[str, HeadLayout | str]:
    """Output projection name -> its :class:`HeadLayout`, or why the records could not read it.

    ``scanned`` for :func:`head_layout_of` (one scan serves every layer of a conversion).

    Examples:
        >>> import transformers as tf
        >>> from modeopt_masks.heads import scan_heads
        >>> m = tf.BertModel(tf.BertConfig(hidden_size=16, num_attention_heads=2,
        ...                                num_hidden_layers=1, intermediate_size=8))
        >>> list(scan_heads(m))
        ['encoder.layer.0.attention.output.dense']
    """
    from .structured.families import _join, attention_layout, attention_structure

    out: dict[str, HeadLayout | str] = {}
    for block, module in model.named_modules():
        layout = attention_layout(module)
        if layout is None:
            continue
        try:
            s = attention_structure(model, block, module, gqa="groups")
        except ValueError as e:
            out.setdefault(_join(block, layout.o), str(e))
            continue
        head_dim = s.unit_size // s.heads_per_unit
        out[s.mask_module] = HeadLayout(block, s.mask_module, heads=s.n_units * s.heads_per_unit,
                                        kv_heads=s.n_units, head_dim=head_dim)
    return out


def spread_units(units: torch.Tensor, axis: int, width: int, ndim: int) -> torch.Tensor:
    """A per-unit mask (1-D) spread over ``width`` entries each along tensor axis ``axis``.

    The result broadcasts against a tensor of ``ndim`` dims.

    Examples:
        >>> import torch
        >>> from modeopt_masks.heads import spread_units
        >>> spread_units(torch.tensor([True, False]), axis=1, width=2, ndim=2)
        tensor([[ True,  True, False, False]])
    """
    shape = [1] * ndim
    shape[axis] = units.numel()
    return units.reshape(shape).repeat_interleave(width, dim=axis)


def head_scores(kind: LayerKind, weight: torch.Tensor, n_units: int) -> torch.Tensor:
    """L2 norm of each unit's output-projection input columns (``n_units`` equal groups).

    Examples:
        >>> import torch
        >>> from modeopt_masks.heads import head_scores
        >>> from modeopt_masks.layer_kinds import kind_of
        >>> w = torch.tensor([[3.0, 4.0, 0.0, 1.0]])
        >>> head_scores(kind_of(torch.nn.Linear(4, 1)), w, 2)
        tensor([5., 1.])
    """
    columns = weight.detach().float().movedim(kind.in_dim, 0)
    return torch.linalg.vector_norm(columns.reshape(n_units, -1), dim=1)
