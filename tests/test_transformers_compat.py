"""transformers 4.x layouts stay supported while transformers 5 is installed.

The plugin tables hold one entry per transformers generation where module names
differ (ViT: ``layers.N.attention.q_proj`` / ``mlp.fc1`` in 5.x,
``encoder.layer.N.attention.attention.query`` / ``intermediate.dense`` in 4.x).
Whatever version is installed, these tests run the 4.x entries on a
line-for-line copy of transformers 4.46's eager ViT layer, so they cannot rot.
"""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn as nn

import modeopt_masks as mm
from modeopt_masks.probing import ResidualUpdateModel, ResidualUpdateModelConfig, select_layout
from modeopt_masks.structured import gradnas_hparams
from modeopt_masks.structured.families import attention_layout, mlp_layout

transformers = pytest.importorskip("transformers")

H, HEADS, FF, SEQ = 16, 4, 24, 5


# -- transformers 4.46 ViT (eager), trimmed to what the layout uses ---------------------------
class ViTSelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.num_attention_heads = HEADS
        self.attention_head_size = H // HEADS
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query, self.key, self.value = (nn.Linear(H, self.all_head_size) for _ in range(3))
        self.dropout = nn.Dropout(0.0)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.num_attention_heads, self.attention_head_size).permute(
            0, 2, 1, 3)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor]:
        q, k, v = (self._split(m(hidden_states)) for m in (self.query, self.key, self.value))
        probs = (q @ k.transpose(-1, -2) / math.sqrt(self.attention_head_size)).softmax(-1)
        ctx = (self.dropout(probs) @ v).permute(0, 2, 1, 3).contiguous()
        return (ctx.view(*ctx.shape[:-2], self.all_head_size),)


class ViTSelfOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense, self.dropout = nn.Linear(H, H), nn.Dropout(0.0)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states))


class ViTAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention, self.output = ViTSelfAttention(), ViTSelfOutput()

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.output(self.attention(hidden_states)[0]),)


class ViTIntermediate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(H, FF)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.dense(hidden_states))


class ViTOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense, self.dropout = nn.Linear(FF, H), nn.Dropout(0.0)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states)) + input_tensor


class ViTLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention, self.intermediate, self.output = ViTAttention(), ViTIntermediate(), ViTOutput()
        self.layernorm_before, self.layernorm_after = nn.LayerNorm(H), nn.LayerNorm(H)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor]:
        hidden_states = self.attention(self.layernorm_before(hidden_states))[0] + hidden_states
        return (self.output(self.intermediate(self.layernorm_after(hidden_states)), hidden_states),)


class ViTEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList([ViTLayer() for _ in range(2)])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden_states = layer(hidden_states)[0]
        return hidden_states


class ViT4(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(model_type="vit", chunk_size_feed_forward=0)
        self.encoder = ViTEncoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


for _cls in (ViTSelfAttention, ViTSelfOutput, ViTAttention, ViTIntermediate, ViTOutput, ViTLayer,
             ViTEncoder, ViT4):  # gradnas only treats transformers' classes as HF blocks
    _cls.__module__ = "transformers.models.vit.modeling_vit"


def _vit4() -> ViT4:
    torch.manual_seed(0)
    return ViT4().eval()


def _vit5_layer_attention() -> nn.Module:
    cfg = transformers.ViTConfig(hidden_size=H, num_hidden_layers=1, num_attention_heads=HEADS,
                                 intermediate_size=FF, image_size=8, patch_size=4, num_channels=1)
    model = transformers.ViTModel(cfg)
    layers = model.layers if hasattr(model, "layers") else model.encoder.layer  # 5.x / 4.x
    return layers[0].attention


# -- tests ------------------------------------------------------------------------------------
def test_same_class_name_resolves_to_the_entry_whose_modules_exist():
    old = _vit4().encoder.layer[0]
    assert attention_layout(old.attention).o == "output.dense"
    assert mlp_layout(old.intermediate).down == "../output.dense"
    installed = _vit5_layer_attention()  # whichever generation is installed
    expected = "o_proj" if hasattr(installed, "o_proj") else "output.dense"
    assert attention_layout(installed).o == expected


def test_gradnas_on_4x_vit_slices_heads_and_channels_and_matches_masked_model():
    model = mm.convert(_vit4(), "gradnas")
    hps = gradnas_hparams(model)
    assert sorted(hps) == [f"encoder.layer.{i}.{b}" for i in (0, 1)
                           for b in ("attention", "intermediate")]
    hps["encoder.layer.0.attention"].keep([1, 3])
    hps["encoder.layer.1.intermediate"].keep(list(range(0, FF, 3)))
    x = torch.randn(3, SEQ, H)
    with torch.no_grad():
        masked = model(x)
    model = mm.export(model)
    layer0, layer1 = model.encoder.layer
    sa = layer0.attention.attention
    assert (sa.num_attention_heads, sa.all_head_size, sa.query.out_features) == (2, 8, 8)
    assert layer0.attention.output.dense.in_features == 8
    assert layer1.intermediate.dense.out_features == FF // 3 == layer1.output.dense.in_features
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked, atol=1e-5, rtol=1e-5)


def test_residual_update_model_uses_the_4x_vit_layout():
    model = _vit4()
    assert select_layout(model, "vit").layers == ("encoder.layer",)
    rum = ResidualUpdateModel(ResidualUpdateModelConfig(target_layers=[0, 1], stream=True), model)
    x = torch.randn(2, SEQ, H)
    out = rum(x)
    cache = rum.vector_cache
    layer_in = x
    for i in (0, 1):
        torch.testing.assert_close(cache[f"attn_stream_{i}"], layer_in + cache[f"attn_update_{i}"])
        torch.testing.assert_close(
            cache[f"mlp_stream_{i}"],
            layer_in + cache[f"attn_update_{i}"] + cache[f"mlp_update_{i}"])
        layer_in = cache[f"mlp_stream_{i}"]
    assert torch.equal(cache["mlp_stream_1"], out)


@pytest.mark.parametrize("conv1d_has_nx", [True, False])
def test_gpt2_export_updates_embed_dim_and_conv1d_widths(conv1d_has_nx):
    """4.4x's GPT-2 SDPA attention reshapes with ``embed_dim``; 4.40's Conv1D has no ``nx``."""
    torch.manual_seed(0)
    model = transformers.GPT2Model(transformers.GPT2Config(
        vocab_size=40, n_positions=16, n_embd=32, n_layer=1, n_head=4)).eval()
    if not conv1d_has_nx:  # as in transformers 4.40
        for module in model.modules():
            if type(module).__name__ == "Conv1D" and "nx" in vars(module):
                del module.nx
    model = mm.convert(model, ("gradnas", {"hf.mlp": None}))
    gradnas_hparams(model)["h.0.attn"].keep([0, 2])
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        masked = model(input_ids=ids).last_hidden_state
        model = mm.export(model)
        attn = model.h[0].attn
        assert (attn.num_heads, attn.split_size, attn.embed_dim) == (2, 16, 16)
        assert attn.c_attn.nf == 48 and getattr(attn.c_proj, "nx", 16) == 16
        torch.testing.assert_close(model(input_ids=ids).last_hidden_state, masked,
                                   atol=1e-5, rtol=1e-5)
