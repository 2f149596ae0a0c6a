"""The Llama-like decoders of the installed transformers, discovered, and tiny models of them.

A model type counts as Llama-like when it has a causal-LM class and its modeling file
defines a decoder layer with ``self_attn`` (``q_proj``/``k_proj``/``v_proj``/``o_proj`` or a
fused ``qkv_proj``) and a dense ``mlp``: no experts, no state-space or linear-attention mixers,
no cross-attention. The list is read from the installed transformers' source, so a new
release's Llama-like families are tested without editing this file.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch
import torch.nn as nn

transformers = __import__("pytest").importorskip("transformers")

#: source markers of a non-dense or hybrid decoder (its blocks are not Llama's)
_NOT_LLAMA = ("Experts", "mamba", "Mamba", "linear_attn", "cross_attn", "LinearAttention",
              "conv1d", "ssm", "recurrent", "Recurrent", "lstm")
#: model types the tiny config cannot describe (they need extra sub-configs or their
#: modeling class is not a plain decoder); each with why
NOT_A_PLAIN_DECODER = {
    "gemma3": "a vision-language model (its text part is gemma3_text)",
    "gemma3n": "a multimodal model (audio/vision towers)",
    "gemma4_unified": "a multimodal model",
    "mllama": "cross-attention layers between its self-attention layers",
    "moshi": "a speech model with a depth decoder",
    "phi4_multimodal": "a multimodal model",
    "blt": "byte-level patcher with a local encoder/decoder around the transformer",
}


def discover() -> list[str]:
    """Model types of the installed transformers that look Llama-like (see the module doc)."""
    from transformers.models.auto.configuration_auto import model_type_to_module_name
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    found = []
    for model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        module = model_type_to_module_name(model_type)
        spec = importlib.util.find_spec(f"transformers.models.{module}")
        if spec is None or not spec.submodule_search_locations:
            continue
        path = os.path.join(list(spec.submodule_search_locations)[0], f"modeling_{module}.py")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            src = f.read()
        attn = ("self.q_proj" in src and "self.o_proj" in src) or "self.qkv_proj" in src
        if (attn and "DecoderLayer" in src and "self.self_attn" in src and "self.mlp" in src
                and not any(m in src for m in _NOT_LLAMA)):
            found.append(model_type)
    return sorted(found)


TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_model(model_type: str) -> nn.Module:
    """A seeded tiny random causal LM of ``model_type`` (hidden 32, 2 layers, GQA 4/2)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = CONFIG_MAPPING[model_type](**TINY)
        for name in ("layer_types", "sliding_window_pattern"):  # one full-attention layer kind
            if hasattr(cfg, name) and isinstance(getattr(cfg, name), list):
                setattr(cfg, name, ["full_attention"] * cfg.num_hidden_layers)
        torch.manual_seed(0)
        return getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])(cfg).eval()
