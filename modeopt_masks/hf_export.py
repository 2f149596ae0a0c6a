"""A truthful ``config`` for an exported Hugging Face model.

``mm.export`` of a gradnas model slices the weights layer by layer; this module
reads the shapes the layers now have ([`layer_shapes`][modeopt_masks.hf_export.layer_shapes]) and writes them into
``model.config`` wherever the family's config can express them
([`update_config`][modeopt_masks.hf_export.update_config]; which attribute holds which quantity is the
``config_fields`` of the model's [`Family`][modeopt_masks.structured.families.Family]
record). A quantity can be written when every layer of its kind has the same
value: then ``save_pretrained`` writes a ``config.json`` that stock
``from_pretrained`` rebuilds without this library (see ``docs/deploy.md``).
Per-layer values, or a quantity the config has no field for (BERT's head count,
since its head size is ``hidden_size / num_attention_heads``), are left as they
were and listed by [`update_config`][modeopt_masks.hf_export.update_config]; ``save_pretrained`` of the exported model
then adds a per-module structure record and a self-contained modeling file
([`modeopt_masks.hf_remote`][modeopt_masks.hf_remote]): the folder loads with ``trust_remote_code=True``,
and stock loading without it fails with a size-mismatch error, loudly, instead of
loading the wrong model.

Examples:
    >>> import torch, transformers as tf, modeopt_masks as mm
    >>> from modeopt_masks.structured import gradnas_hparams
    >>> cfg = tf.LlamaConfig(vocab_size=32, hidden_size=32, num_hidden_layers=2,
    ...                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=16)
    >>> m = mm.convert(tf.LlamaModel(cfg), "gradnas")
    >>> for name, hp in gradnas_hparams(m).items():
    ...     hp.keep(list(range(hp.n_units // 2)))
    >>> m = mm.export(m)
    >>> c = m.config
    >>> c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size
    (2, 1, 8, 8)
"""

from __future__ import annotations

import copy
from typing import Any

import torch.nn as nn

from .structured.families import FAMILIES, attention_structure, mlp_structure

QUANTITIES: tuple[str, ...] = ("heads", "kv_heads", "head_dim", "channels")


def layer_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{block name: {"family", "kind", quantity: value}}`` of every HF attention / MLP block,
    read from the (exported or unconverted) weights.

    Examples:
        >>> import transformers as tf
        >>> from modeopt_masks.hf_export import layer_shapes
        >>> m = tf.GPT2Model(tf.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=8))
        >>> layer_shapes(m)["h.0.attn"]
        {'family': 'gpt2', 'kind': 'attention', 'heads': 2, 'kv_heads': 2, 'head_dim': 8}
    """
    from .modes.gradnas import discover  # gradnas imports this module for its export

    out: dict[str, dict[str, Any]] = {}
    modules = dict(model.named_modules())
    for name, key in discover(model).keys.items():
        if key == "hf.attention":
            s = attention_structure(model, name, modules[name])  # gqa="groups": unit = KV head
            out[name] = {"family": s.family, "kind": "attention",
                         "heads": s.n_units * s.heads_per_unit, "kv_heads": s.n_units,
                         "head_dim": s.unit_size // s.heads_per_unit}
        elif key == "hf.mlp":
            s = mlp_structure(model, name, modules[name])
            out[name] = {"family": s.family, "kind": "mlp", "channels": s.n_units}
    return out


def config_updates(model: nn.Module) -> tuple[dict[str, int], list[str]]:
    """What [`update_config`][modeopt_masks.hf_export.update_config] would write (``{config attribute: value}``), and what it
    cannot express (one sentence each; empty: the config describes the model exactly)."""
    config = getattr(model, "config", None)
    shapes = layer_shapes(model)
    updates: dict[str, int] = {}
    unexpressed: list[str] = []
    for quantity in QUANTITIES:
        per_family: dict[str, dict[str, int]] = {}
        for name, shape in shapes.items():
            if quantity in shape:
                per_family.setdefault(shape["family"], {})[name] = shape[quantity]
        for family, values in per_family.items():
            fields = dict(FAMILIES[family].config_fields) if family in FAMILIES else {}
            distinct = sorted(set(values.values()))
            attr = fields.get(quantity)
            current = _current(config, attr) if attr else None
            if len(distinct) > 1:
                unexpressed.append(f"{quantity} differ per layer: {values}")
            elif attr is None or config is None:
                if _changed(model, quantity, distinct[0]):
                    unexpressed.append(f"{quantity}={distinct[0]}: the {family} config has no "
                                       "field for it")
            elif current != distinct[0] or quantity == "head_dim":  # head_dim: always
                updates[attr] = distinct[0]
    return updates, unexpressed


def _current(config: Any, attr: str) -> Any:
    value = getattr(config, attr, None)
    if attr == "n_inner" and value is None:  # GPT-2: None means 4 * n_embd
        return 4 * int(config.n_embd)
    return value


def _changed(model: nn.Module, quantity: str, value: int) -> bool:
    """Whether ``value`` differs from what the unpruned config implies for ``quantity``."""
    config = getattr(model, "config", None)
    if config is None:
        return True
    heads = getattr(config, "num_attention_heads", None)
    implied = {"heads": heads, "kv_heads": getattr(config, "num_key_value_heads", heads),
               "head_dim": getattr(config, "head_dim", None) or (
                   config.hidden_size // heads if heads else None)}.get(quantity)
    return implied != value


def update_config(model: nn.Module) -> list[str]:
    """Write the exported shapes into ``model.config`` where it can express them; return what
    it cannot (empty: ``save_pretrained`` output reloads with stock ``from_pretrained``).

    ``head_dim`` is written explicitly before the head counts change (a config that derives
    it from ``hidden_size / num_attention_heads`` would derive the wrong one).

    Examples:
        >>> import torch.nn as nn
        >>> from modeopt_masks.hf_export import update_config
        >>> update_config(nn.Linear(2, 2))  # not an HF model: nothing to write
        []
    """
    config = getattr(model, "config", None)
    updates, unexpressed = config_updates(model)
    if config is None or not hasattr(config, "to_dict"):
        return unexpressed
    trial = copy.deepcopy(config)
    for attr, value in updates.items():
        setattr(trial, attr, value)
    try:  # transformers 5 configs validate on save (e.g. hidden_size % num_attention_heads)
        validate = getattr(trial, "validate", None)
        if callable(validate):
            validate()
    except Exception as e:  # noqa: BLE001 - any validator failure: keep the original config
        return [*unexpressed, f"{updates}: {type(config).__name__} refuses it ({e})"]
    for attr, value in updates.items():
        setattr(config, attr, value)
    return unexpressed


def expressible_heads(model: nn.Module, heads: int) -> bool:
    """Whether ``model.config`` accepts ``heads`` query heads in every layer (Llama-style
    configs require ``hidden_size % num_attention_heads == 0`` even with an explicit
    ``head_dim``); ``True`` when there is no config to ask.

    Examples:
        >>> import transformers as tf
        >>> from modeopt_masks.hf_export import expressible_heads
        >>> m = tf.LlamaModel(tf.LlamaConfig(vocab_size=8, hidden_size=64, num_hidden_layers=1,
        ...                                  num_attention_heads=8, num_key_value_heads=2))
        >>> expressible_heads(m, 4), expressible_heads(m, 6)
        (True, False)
    """
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None)
    if not isinstance(hidden, int) or not hasattr(config, "validate"):
        return True
    return heads > 0 and hidden % heads == 0
