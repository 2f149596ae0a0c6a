"""Tiny randomly initialised models shared by the tests (no downloads)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import modeopt_masks as mm
from modeopt_masks.modes.mask_mode import MaskModeDescriptor

torch.set_num_threads(1)


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, num_labels=3,
    )
    return BertForSequenceClassification(cfg).eval(), {"input_ids": torch.randint(0, 99, (2, 7))}


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    return GPT2LMHeadModel(cfg).eval(), {"input_ids": torch.randint(0, 99, (2, 7))}


def tiny_vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, num_labels=5,
    )
    return ViTForImageClassification(cfg).eval(), {"pixel_values": torch.randn(2, 3, 16, 16)}


class TinyConvNet(nn.Module):
    """Conv2d, Conv1d and Linear in one model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1d = nn.Conv1d(8, 6, 3, padding=1, padding_mode="circular")
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        h = torch.relu(self.conv(x))  # [B, 8, H, W]
        h = torch.relu(self.conv1d(h.flatten(2)))  # [B, 6, H*W]
        return self.fc(h.mean(-1))


def tiny_convnet():
    torch.manual_seed(0)
    return TinyConvNet().eval(), {"x": torch.randn(2, 3, 6, 6)}


MODEL_FACTORIES = {
    "bert": tiny_bert,
    "gpt2": tiny_gpt2,
    "vit": tiny_vit,
    "convnet": tiny_convnet,
}
#: every registered mask mode (read from the registry, so a new technique is tested too)
MASK_MODES = sorted(
    name for name in mm.available_modes() if isinstance(mm.get_mode(name), MaskModeDescriptor)
)


def output_tensor(model, inputs):
    out = model(**inputs)
    if isinstance(out, torch.Tensor):
        return out
    return out.logits


@pytest.fixture(params=sorted(MODEL_FACTORIES))
def any_model(request):
    return request.param, *MODEL_FACTORIES[request.param]()
