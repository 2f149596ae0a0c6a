"""Where the residual-stream updates live in each supported transformer family (one table).

A :class:`ResidualLayout` names, relative to one transformer layer, the module
whose output *is* each quantity cached by
:class:`~modeopt_masks.probing.ResidualUpdateModel`. A :class:`HookPoint`
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

:data:`LAYOUTS` holds the transformers 5 layout of each family;
:data:`LEGACY_LAYOUTS` holds alternatives for older transformers versions where
the module names differ (ViT in 4.x: ``encoder.layer.N`` with BERT-like
``attention.output`` / ``output`` blocks). :func:`layout_candidates` lists them
in order; the first whose layer list and hook points exist in the model is used.

Examples:
    >>> from modeopt_masks.probing.residual_layouts import layout_for
    >>> layout_for("roberta").family, layout_for("gpt2").post_ln
    ('bert', False)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HookPoint:
    """The output of submodule ``path`` (``""`` = the layer) on its ``call``-th call per layer."""

    path: str
    call: int = 0


@dataclass(frozen=True)
class ResidualLayout:
    """Module names of one transformer family (see the module docstring for the definitions).

    ``layers``: candidate dotted-name suffixes of the ``nn.ModuleList`` of layers.
    ``attn_stream``: a hook point for post-LN families, ``None`` for pre-LN ones
    (where it is computed as layer input + ``attn_update``).
    """

    family: str
    layers: tuple[str, ...]
    attn_update: HookPoint
    mlp_update: HookPoint
    attn_stream: HookPoint | None
    mlp_stream: HookPoint
    post_ln: bool

    def hook_points(self) -> list[HookPoint]:
        """Every hook point this layout reads (all must exist in each target layer)."""
        points = [self.attn_update, self.mlp_update, self.mlp_stream]
        return points if self.attn_stream is None else [*points, self.attn_stream]


_BERT_LIKE = dict(
    layers=("encoder.layer",),
    mlp_update=HookPoint("output.dropout"),
    mlp_stream=HookPoint("output"),
    post_ln=True,
)

#: One entry per family.
LAYOUTS: dict[str, ResidualLayout] = {
    "bert": ResidualLayout(
        "bert",
        attn_update=HookPoint("attention.output.dropout"),
        attn_stream=HookPoint("attention.output"),
        **_BERT_LIKE,  # type: ignore[arg-type]
    ),
    "mpnet": ResidualLayout(
        "mpnet",
        attn_update=HookPoint("attention.dropout"),
        attn_stream=HookPoint("attention"),
        **_BERT_LIKE,  # type: ignore[arg-type]
    ),
    "gpt2": ResidualLayout(
        "gpt2", ("h",), HookPoint("attn"), HookPoint("mlp"), None, HookPoint(""), False
    ),
    "gpt_neox": ResidualLayout(
        "gpt_neox",
        ("layers",),
        HookPoint("post_attention_dropout"),
        HookPoint("post_mlp_dropout"),
        None,
        HookPoint(""),
        False,
    ),
    "llama": ResidualLayout(
        "llama", ("layers",), HookPoint("self_attn"), HookPoint("mlp"), None, HookPoint(""), False
    ),
    # transformers 5 ViT: ``layers.N`` with one ``dropout`` used after attention, then after MLP.
    "vit": ResidualLayout(
        "vit",
        ("layers",),
        HookPoint("dropout", 0),
        HookPoint("dropout", 1),
        None,
        HookPoint(""),
        False,
    ),
}

#: Alternatives for older transformers versions, tried after ``LAYOUTS[family]``.
LEGACY_LAYOUTS: dict[str, tuple[ResidualLayout, ...]] = {
    # transformers 4.x ViT: ``encoder.layer.N``; ViTSelfOutput and ViTOutput each end in their
    # own dropout (ViTOutput then adds the residual itself).
    "vit": (
        ResidualLayout(
            "vit",
            ("encoder.layer",),
            HookPoint("attention.output.dropout"),
            HookPoint("output.dropout"),
            None,
            HookPoint(""),
            False,
        ),
    ),
}

#: Hugging Face ``config.model_type`` (and short aliases) -> family.
MODEL_TYPE_TO_FAMILY: dict[str, str] = {
    "bert": "bert",
    "roberta": "bert",
    "electra": "bert",
    "ernie": "bert",
    "convbert": "bert",
    "mpnet": "mpnet",
    "gpt2": "gpt2",
    "gpt": "gpt2",
    "gpt_neox": "gpt_neox",
    "gptneox": "gpt_neox",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "vit": "vit",
}


def layout_for(model_type: str) -> ResidualLayout:
    """The layout of a family or HF ``model_type``; an error naming the supported ones.

    Examples:
        >>> from modeopt_masks.probing.residual_layouts import layout_for
        >>> layout_for("mistral").family
        'llama'
    """
    family = MODEL_TYPE_TO_FAMILY.get(model_type)
    if family is None:
        raise ValueError(
            f"ResidualUpdateModel does not know model type {model_type!r}; supported families: "
            f"{sorted(LAYOUTS)}; recognised model types: {sorted(MODEL_TYPE_TO_FAMILY)}"
        )
    return LAYOUTS[family]


def layout_candidates(model_type: str) -> list[ResidualLayout]:
    """The transformers 5 layout of ``model_type``, then its older-version alternatives.

    Examples:
        >>> from modeopt_masks.probing.residual_layouts import layout_candidates
        >>> [lay.layers for lay in layout_candidates("vit")]
        [('layers',), ('encoder.layer',)]
    """
    layout = layout_for(model_type)
    return [layout, *LEGACY_LAYOUTS.get(layout.family, ())]
