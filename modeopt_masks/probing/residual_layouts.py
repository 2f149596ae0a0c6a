"""Where the residual-stream updates live in each supported transformer family.

The tables here are views of the family records in
[`modeopt_masks.structured.families`][modeopt_masks.structured.families] (the one source gradnas reads too); a new family
is one ``register_family`` call there. A decoder of an unknown ``model_type`` whose layers
have a structural family's hook points (Llama-like: ``self_attn`` and ``mlp``) is recognised
by its modules ([`structural_layout`][modeopt_masks.probing.residual_layouts.structural_layout]).

A [`ResidualLayout`][modeopt_masks.structured.families.ResidualLayout] names, relative to one transformer layer, the module
whose output *is* each quantity cached by
[`ResidualUpdateModel`][modeopt_masks.probing.residual_update_model.ResidualUpdateModel]. A [`HookPoint`][modeopt_masks.structured.families.HookPoint]
``(path, call)`` means "the output of submodule ``path`` on its ``call``-th
call within one forward of the layer" (ViT calls its one dropout module for
both residual branches); a tuple output is read at index 0.

Definitions (``x`` is the layer's input, i.e. ``hidden_states[i]``):

* **post-LN** families (BERT, RoBERTa, ELECTRA, ERNIE, ConvBERT, MPNet), where
  each sub-block computes ``LayerNorm(x + dropout(f(x)))``:
  ``attn_update_i`` = ``dropout(attention output projection)``, the value
  added to ``x`` *before* the LayerNorm; ``attn_stream_i`` = the normalised sum
  ``LayerNorm(x + attn_update_i)``; ``mlp_update_i`` = ``dropout(MLP down
  projection)``; ``mlp_stream_i = LayerNorm(attn_stream_i + mlp_update_i)`` =
  ``hidden_states[i + 1]``. Updates do not sum to the difference of hidden
  states here, because of the LayerNorms.
* **pre-LN** families (GPT-2, GPT-NeoX, Llama-style, ViT), where each
  sub-block adds ``f(norm(x))`` to an un-normalised residual stream:
  ``attn_update_i`` / ``mlp_update_i`` = exactly the tensors added to the
  stream (after residual dropout where the model has it);
  ``attn_stream_i = x + attn_update_i`` and ``mlp_stream_i`` = the layer's
  output, so ``x + attn_update_i + mlp_update_i = mlp_stream_i``. For GPT-NeoX
  with ``use_parallel_residual=True`` the MLP reads ``x``, not
  ``attn_stream_i``; the identities still hold. The model's last entry of
  ``hidden_states`` has the final norm applied (GPT-2, NeoX, Llama) and so
  differs from the last ``mlp_stream``.

Only self-attention is covered (cross-attention of encoder-decoder BERTs is not).

[`LAYOUTS`][modeopt_masks.probing.residual_layouts.LAYOUTS] holds the transformers 5 layout of each family;
[`LEGACY_LAYOUTS`][modeopt_masks.probing.residual_layouts.LEGACY_LAYOUTS] holds alternatives for older transformers versions where
the module names differ (ViT in 4.x: ``encoder.layer.N`` with BERT-like
``attention.output`` / ``output`` blocks). [`layout_candidates`][modeopt_masks.probing.residual_layouts.layout_candidates] lists them
in order; the first whose layer list and hook points exist in the model is used.

Examples:
    >>> from modeopt_masks.probing.residual_layouts import layout_for
    >>> layout_for("roberta").family, layout_for("gpt2").post_ln
    ('bert', False)
"""

from __future__ import annotations

import torch.nn as nn

from ..structured.families import FAMILIES, HookPoint, ResidualLayout

__all__ = ["LAYOUTS", "LEGACY_LAYOUTS", "MODEL_TYPE_TO_FAMILY", "HookPoint", "ResidualLayout",
           "layout_candidates", "layout_for", "structural_layout"]

LAYOUTS: dict[str, ResidualLayout] = {n: f.residual[0] for n, f in FAMILIES.items() if f.residual}
"""One entry per family (its transformers 5 layout), from `..structured.families.FAMILIES`."""

LEGACY_LAYOUTS: dict[str, tuple[ResidualLayout, ...]] = {
    n: f.residual[1:] for n, f in FAMILIES.items() if len(f.residual) > 1
}
"""Alternatives for older transformers versions, tried after ``LAYOUTS[family]``."""

MODEL_TYPE_TO_FAMILY: dict[str, str] = {
    t: n for n, f in FAMILIES.items() if f.residual for t in f.model_types
}
"""Hugging Face ``config.model_type`` (and short aliases) -> family."""


def layout_for(model_type: str) -> ResidualLayout:
    """The layout of a family or HF ``model_type``; an error naming the supported ones.

    Args:
        model_type: A family or HF ``model_type``.

    Returns:
        Its [`ResidualLayout`][modeopt_masks.structured.families.ResidualLayout].

    Raises:
        ValueError: For an unsupported model type.

    Examples:
        >>> from modeopt_masks.probing.residual_layouts import layout_for
        >>> layout_for("mistral").family
        'llama'
    """
    family = FAMILIES.get(model_type)
    if family is None or not family.residual:
        family = next((f for f in FAMILIES.values() if model_type in f.model_types
                       and f.residual), None)
    if family is None:
        raise ValueError(
            f"ResidualUpdateModel does not know model type {model_type!r}; supported families: "
            f"{sorted(n for n, f in FAMILIES.items() if f.residual)}; recognised model types: "
            f"{sorted(t for f in FAMILIES.values() if f.residual for t in f.model_types)}; a "
            "Llama-like decoder (layers with self_attn and mlp) is also recognised by its modules"
        )
    return family.residual[0]


def layout_candidates(model_type: str) -> list[ResidualLayout]:
    """The transformers 5 layout of ``model_type``, then its older-version alternatives.

    Args:
        model_type: A family or HF ``model_type``.

    Returns:
        The candidate layouts, newest first.

    Examples:
        >>> from modeopt_masks.probing.residual_layouts import layout_candidates
        >>> [lay.layers for lay in layout_candidates("vit")]
        [('layers',), ('encoder.layer',)]
    """
    layout = layout_for(model_type)
    return list(FAMILIES[layout.family].residual)


def structural_layout(layer: nn.Module) -> ResidualLayout | None:
    """The layout of the first structural (Llama-like) family whose hook points ``layer`` has.

    Examples:
        >>> import transformers
        >>> from modeopt_masks.probing.residual_layouts import structural_layout
        >>> cfg = transformers.Gemma2Config(vocab_size=32, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8)
        >>> structural_layout(transformers.Gemma2Model(cfg).layers[0]).family
        'sandwich'
    """
    for family in FAMILIES.values():
        if family.structural:
            for layout in family.residual:
                if layout.fits(layer):
                    return layout
    return None
