"""Tiny models of every gradnas family, and their data (shared by the gradnas tests)."""

from __future__ import annotations

import torch
import torch.nn as nn

transformers = __import__("pytest").importorskip("transformers")

VOCAB, SEQ = 40, 8


def _lm(cfg_cls, **kw):
    return cfg_cls(vocab_size=VOCAB, max_position_embeddings=16, **kw)


def make_model(family: str) -> nn.Module:
    """A small randomly initialised model of ``family`` (seeded)."""
    torch.manual_seed(0)
    t = transformers
    if family == "bert":
        return t.BertModel(_lm(t.BertConfig, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64)).eval()
    if family == "roberta":
        return t.RobertaModel(t.RobertaConfig(vocab_size=VOCAB, max_position_embeddings=20,
                                              hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=64)).eval()
    if family == "electra":
        return t.ElectraModel(_lm(t.ElectraConfig, embedding_size=16, hidden_size=32,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64)).eval()
    if family == "gpt2":
        return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=32,
                                              n_layer=2, n_head=4, bos_token_id=0,
                                              eos_token_id=0)).eval()
    if family == "gpt_neox":
        return t.GPTNeoXModel(_lm(t.GPTNeoXConfig, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64)).eval()
    if family == "llama":
        return t.LlamaForCausalLM(_lm(t.LlamaConfig, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=64)).eval()
    if family == "mistral":
        return t.MistralModel(_lm(t.MistralConfig, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=64)).eval()
    if family == "qwen2":
        return t.Qwen2Model(_lm(t.Qwen2Config, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=4,
                                intermediate_size=64)).eval()
    if family == "vit":
        return t.ViTModel(t.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, image_size=8, patch_size=4,
                                      num_channels=1)).eval()
    if family == "plain_mlp":
        return nn.Sequential(nn.Linear(12, 48), nn.GELU(), nn.Dropout(0.0), nn.Linear(48, 32),
                             nn.ReLU(), nn.Linear(32, 3)).eval()
    if family == "plain_conv":
        return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                             nn.Conv2d(24, 4, 1)).eval()
    raise ValueError(family)


FAMILIES = ("bert", "roberta", "electra", "gpt2", "gpt_neox", "llama", "mistral", "qwen2", "vit",
            "plain_mlp", "plain_conv")


def make_input(family: str, batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """One model input for ``family`` as keyword arguments."""
    g = torch.Generator().manual_seed(seed)
    if family == "vit":
        return {"pixel_values": torch.randn(batch, 1, 8, 8, generator=g)}
    if family == "plain_mlp":
        return {"input": torch.randn(batch, 12, generator=g)}
    if family == "plain_conv":
        return {"input": torch.randn(batch, 1, 6, 6, generator=g)}
    ids = torch.randint(1, VOCAB, (batch, SEQ), generator=g)
    if family in ("gpt2", "llama"):
        return {"input_ids": ids, "labels": ids}
    return {"input_ids": ids}


def output_tensor(out) -> torch.Tensor:
    """The main tensor of a model output (logits or last hidden state)."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if value is not None:
            return value
    raise TypeError(type(out))


def loss_of(scale: float = 1.0):
    """A loss_func: the model's own loss, or the mean square of its main output projected on a
    fixed random direction (a plain mean square is constant after a LayerNorm), times ``scale``."""

    def loss(out, batch):
        own = getattr(out, "loss", None)
        if own is not None:
            return scale * own
        t = output_tensor(out)
        dim = -1 if t.dim() != 4 else 1
        g = torch.Generator().manual_seed(123)
        direction = torch.randn(t.shape[dim], generator=g)
        if dim == 1:
            direction = direction.view(-1, 1, 1)
        return scale * (t * direction).sum(dim).pow(2).mean()

    return loss


def loader(family: str, n: int = 3) -> list[dict[str, torch.Tensor]]:
    """``n`` batches for ``family``."""
    return [make_input(family, seed=i + 1) for i in range(n)]
