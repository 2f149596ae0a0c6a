"""Tiny random models of every stream family for the hidden-size / depth / joint tests."""

from __future__ import annotations

import torch
import torch.nn as nn

import modeopt_masks as mm
from modeopt_masks.pruning import prune
from modeopt_masks.structured import gradnas_hparams

transformers = __import__("pytest").importorskip("transformers")

VOCAB, SEQ = 40, 8
STREAM_FAMILIES = ("llama", "gpt2", "gpt_neox", "bert", "vit")
DECODERS = ("llama", "gpt2", "gpt_neox")


def build(family: str, hidden: int = 64, layers: int = 2, heads: int = 4, kv: int = 2,
          inter: int = 32) -> nn.Module:
    """A seeded random model; decoders have an LM head (Llama and GPT-2 tied, NeoX untied)."""
    torch.manual_seed(0)
    t = transformers
    if family == "llama":
        return t.LlamaForCausalLM(t.LlamaConfig(
            vocab_size=VOCAB, max_position_embeddings=32, hidden_size=hidden,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
            head_dim=16, intermediate_size=inter, tie_word_embeddings=True, pad_token_id=0)).eval()
    if family == "gpt2":
        return t.GPT2LMHeadModel(t.GPT2Config(
            vocab_size=VOCAB, n_positions=32, n_embd=hidden, n_layer=layers, n_head=heads,
            n_inner=inter, bos_token_id=0, eos_token_id=0, pad_token_id=0)).eval()
    if family == "gpt_neox":
        return t.GPTNeoXForCausalLM(t.GPTNeoXConfig(
            vocab_size=VOCAB, max_position_embeddings=32, hidden_size=hidden,
            num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=inter,
            pad_token_id=0, tie_word_embeddings=False)).eval()
    if family == "bert":
        return t.BertModel(t.BertConfig(
            vocab_size=VOCAB, max_position_embeddings=32, hidden_size=hidden,
            num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=inter)).eval()
    if family == "vit":
        return t.ViTModel(t.ViTConfig(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=inter, image_size=8, patch_size=4, num_channels=1)).eval()
    raise ValueError(family)


def batch(family: str, seed: int, size: int = 2) -> dict[str, torch.Tensor]:
    """One model input of ``family``."""
    g = torch.Generator().manual_seed(seed)
    if family == "vit":
        return {"pixel_values": torch.randn(size, 1, 8, 8, generator=g)}
    return {"input_ids": torch.randint(1, VOCAB, (size, SEQ), generator=g)}


def main_output(out) -> torch.Tensor:
    """Logits of an LM, else the last hidden state."""
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out.last_hidden_state


def loss(out, _batch) -> torch.Tensor:
    """Mean square of the main output on a fixed random direction (no labels needed)."""
    main = main_output(out)
    direction = torch.randn(main.shape[-1], generator=torch.Generator().manual_seed(7))
    return (main @ direction).pow(2).mean()


def _masked_and_exported(model: nn.Module, probe: dict, dense: torch.Tensor):
    """``(dense, masked, exported outputs, kept hidden, exported model)`` of a pruned model on
    ``probe`` (with a pruned hidden size, the full outputs restricted to the kept channels)."""
    hidden = [hp.kept for hp in gradnas_hparams(model).values() if hp.structure.kind == "hidden"]
    with torch.no_grad():
        masked = main_output(model(**probe))
    model = mm.export(model)
    with torch.no_grad():
        exported = main_output(model(**probe))
    kept = hidden[0] if hidden else None
    if kept is not None and masked.shape[-1] != exported.shape[-1]:
        masked, dense = masked[..., kept], dense[..., kept]
    return dense, masked, exported, kept, model


def prune_export(family: str, model: nn.Module, rules: dict, constraints: dict,
                 n_batches: int = 4, **search):
    """Prune, then export; returns ``(result, dense, masked, exported outputs, kept hidden,
    exported model)`` on a probe batch (hidden outputs of base models restricted to the kept
    channels, so they compare with the exported ones)."""
    probe = batch(family, 99)
    with torch.no_grad():
        dense = main_output(model(**probe))
    data = [batch(family, i) for i in range(n_batches)]
    model, result = prune(model, ("gradnas", rules), constraints=constraints,
                          config={"data_loader": data, "loss_func": loss, "progress": False,
                                  **search})
    return (result, *_masked_and_exported(model, probe, dense))


def assert_generates_same_with_and_without_cache(model: nn.Module) -> None:
    """Greedy ``generate`` runs and gives the same tokens with and without the KV cache."""
    ids = batch("llama", 5, size=1)["input_ids"]
    with_cache = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=True,
                                pad_token_id=0)
    without = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=False,
                             pad_token_id=0)
    assert with_cache.shape == (1, SEQ + 6)
    assert torch.equal(with_cache, without)


def scored(family: str, model: nn.Module, rules: dict, n_batches: int = 4) -> nn.Module:
    """``model`` converted with ``rules`` and scored once (searches then reuse the scores)."""
    data = [batch(family, i) for i in range(n_batches)]
    model = mm.convert(model, ("gradnas", rules))
    mm.collect_scores(model, data, loss_func=loss, progress=False)
    return model


def export_at(family: str, converted: nn.Module, target: float, before: int, **search):
    """Search a copy of a scored model at ``target`` of the params (no rescoring), export it;
    returns ``(result, dense, masked, exported, kept hidden, exported model, params ratio)``."""
    import copy

    model = copy.deepcopy(converted)
    probe = batch(family, 99)
    for hp in gradnas_hparams(model).values():
        hp.keep(list(range(hp.n_units)))
    with torch.no_grad():
        dense = main_output(model(**probe))
    held_out = [batch(family, 50 + i) for i in range(2)]
    model, result = prune(model, "gradnas", constraints={"params": f"{target:.0%}"},
                          config={"rescore": False, "loss_func": loss, "progress": False,
                                  "eval_loader": held_out, **search})
    dense, masked, exported, kept, model = _masked_and_exported(model, probe, dense)
    ratio = sum(p.numel() for p in model.parameters()) / before
    return result, dense, masked, exported, kept, model, ratio
