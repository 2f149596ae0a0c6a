"""Rebuild a model whose layers have their own shapes, with transformers and torch alone.

This file is the template of ``modeling_modeopt_pruned.py``, the modeling file that
[`modeopt_masks.hf_remote.save_pretrained`][modeopt_masks.hf_remote.save_pretrained] writes beside a pruned export whose
per-layer shapes ``config.json`` cannot express. It imports nothing from modeopt-masks:
``AutoModel*.from_pretrained(folder, trust_remote_code=True)`` loads it where the library
is not installed. The save appends ``import transformers`` and one class per saved
architecture, e.g.::

    class PrunedLlamaForCausalLM(PrunedStructure, transformers.LlamaForCausalLM):
        ...

Such a class builds the stock model from the config, then applies
``config.modeopt_structure`` ([`apply_structure`][modeopt_masks.hf_remote_modeling.apply_structure]): every listed module gets empty
parameters of the recorded shapes (``from_pretrained`` then loads the saved weights into
them) and its recorded attributes (head counts, widths, ...).

Examples:
    >>> import transformers as tf
    >>> from modeopt_masks.hf_remote_modeling import apply_structure
    >>> m = tf.GPT2Model(tf.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=8))
    >>> record = {"format": 1, "modules": {
    ...     "h.0.mlp.c_fc": {"shapes": {"weight": [16, 8], "bias": [8]}, "attrs": {"nf": 8}},
    ...     "h.0.mlp.c_proj": {"shapes": {"weight": [8, 16]}}}}
    >>> _ = apply_structure(m, record)
    >>> tuple(m.h[0].mlp.c_fc.weight.shape), m.h[0].mlp.c_fc.nf
    ((16, 8), 8)
"""

from __future__ import annotations

import copy
from typing import Any

import torch

STRUCTURE_KEY = "modeopt_structure"
"""The ``config.json`` key holding the per-module shapes and attributes."""
#: version of the record's layout
STRUCTURE_FORMAT = 1


def apply_structure(model: torch.nn.Module, structure: dict[str, Any] | None) -> torch.nn.Module:
    """Give the modules listed in ``structure`` their recorded parameter shapes (new, empty
    tensors on the same device and dtype: loading fills them) and attributes; ``None`` or an
    empty record leaves ``model`` as it is. Raises ``ValueError`` naming what does not fit."""
    if not structure:
        return model
    if structure.get("format") != STRUCTURE_FORMAT:
        raise ValueError(f"{STRUCTURE_KEY} has format {structure.get('format')!r}; this "
                         f"modeling file reads format {STRUCTURE_FORMAT}")
    modules = dict(model.named_modules())
    entries = structure.get("modules", {})
    unknown = [name for name in entries if name not in modules]
    if unknown:
        raise ValueError(f"{type(model).__name__} has no module(s) {unknown} named in "
                         f"{STRUCTURE_KEY}; load the folder with the class it was saved from "
                         f"(config.architectures)")
    fresh = []
    for name, entry in entries.items():
        module = modules[name]
        for tensor_name, shape in entry.get("shapes", {}).items():
            fresh.append(_replace_tensor(module, name, tensor_name, shape))
        for attr, value in entry.get("attrs", {}).items():
            if isinstance(getattr(module, attr, None), tuple) and isinstance(value, list):
                value = tuple(value)  # JSON has no tuples (e.g. LayerNorm.normalized_shape)
            setattr(module, attr, value)
        if entry.get("config"):  # a per-layer config copy (e.g. Phi-3 reads heads from it)
            module.config = copy.copy(module.config)
            for key, value in entry["config"].items():
                setattr(module.config, key, value)
    if any(t.device.type != "meta" for t in fresh):  # built outside from_pretrained: init them
        init = getattr(model, "_init_weights", None)
        for name in entries:
            if callable(init) and entries[name].get("shapes"):
                init(modules[name])
    tie = getattr(model, "tie_weights", None)
    if callable(tie):
        tie()  # tied embeddings point at the new tensors (a no-op inside from_pretrained)
    return model


def _replace_tensor(module: torch.nn.Module, name: str, tensor_name: str,
                    shape: list[int]) -> torch.Tensor:
    old = getattr(module, tensor_name, None)
    if not isinstance(old, torch.Tensor):
        raise ValueError(f"{STRUCTURE_KEY}: {name}.{tensor_name} is not a tensor of "
                         f"{type(module).__name__}")
    new = torch.empty(tuple(shape), dtype=old.dtype, device=old.device)
    if tensor_name in module._parameters:
        module._parameters[tensor_name] = torch.nn.Parameter(new,
                                                             requires_grad=old.requires_grad)
    else:
        module._buffers[tensor_name] = new  # keeps the buffer's persistence
    return new


def _share_stock_conversions(cls: type) -> None:
    """Let ``cls`` load checkpoints saved by its stock parent: transformers 5 renames saved
    keys per architecture (e.g. ViT's ``encoder.layer`` -> ``layers``, GPT-NeoX's
    ``embed_out`` -> ``lm_head``) but skips that for remote-code classes unless registered
    under their own name. transformers 4.x has no renaming: nothing to do."""
    try:
        from transformers.conversion_mapping import (
            get_checkpoint_conversion_mapping,
            register_checkpoint_conversion_mapping,
        )
    except ImportError:
        return
    model_type = getattr(getattr(cls, "config_class", None), "model_type", None)
    stock = next((c.__name__ for c in cls.__mro__[1:] if c.__module__.startswith("transformers.")),
                 None)
    conversions = (get_checkpoint_conversion_mapping(stock) if stock else None) or (
        get_checkpoint_conversion_mapping(model_type) if model_type else None)
    if conversions:
        register_checkpoint_conversion_mapping(cls.__name__, conversions, overwrite=True)


class PrunedStructure:
    """Mixin placed before a transformers model class: build it, then apply the config's
    [`STRUCTURE_KEY`][modeopt_masks.hf_remote_modeling.STRUCTURE_KEY] record ([`apply_structure`][modeopt_masks.hf_remote_modeling.apply_structure]).

    Examples:
        >>> import transformers as tf
        >>> from modeopt_masks.hf_remote_modeling import PrunedStructure
        >>> class PrunedGPT2Model(PrunedStructure, tf.GPT2Model):
        ...     pass
        >>> cfg = tf.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=8, modeopt_structure={
        ...     "format": 1, "modules": {"h.0.mlp.c_fc": {"shapes": {"weight": [16, 4],
        ...     "bias": [4]}, "attrs": {"nf": 4}}, "h.0.mlp.c_proj": {"shapes": {"weight": [4, 16]}}}})
        >>> PrunedGPT2Model(cfg).h[0].mlp.c_proj.weight.shape
        torch.Size([4, 16])
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _share_stock_conversions(cls)

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)  # type: ignore[call-arg]
        apply_structure(self, getattr(config, STRUCTURE_KEY, None))  # type: ignore[arg-type]


# ---- classes appended by modeopt_masks.hf_remote.save_pretrained ----
