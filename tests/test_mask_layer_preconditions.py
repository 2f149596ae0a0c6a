"""Layers whose weight is not a plain parameter are refused (issue 16 defects 8, 9), and
export of a tied masked weight unties it (defect 19): exported always equals masked."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as torch_prune
from conftest import MASK_MODES

import modeopt_masks as mm


def _fingerprint(net: nn.Module) -> dict:
    return {
        "classes": [(n, type(m)) for n, m in net.named_modules()],
        "tensors": {k: v.clone() for k, v in net.state_dict().items()},
        "params": [(n, id(p)) for n, p in net.named_parameters()],
        "hooks": [len(m._forward_pre_hooks) for m in net.modules()],
    }


def _same(a: dict, b: dict) -> None:
    assert a["classes"] == b["classes"] and a["params"] == b["params"]
    assert a["hooks"] == b["hooks"] and a["tensors"].keys() == b["tensors"].keys()
    assert all(torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"])


@pytest.mark.parametrize("mode", MASK_MODES)
def test_a_layer_pruned_with_torch_prune_is_refused_and_left_intact(mode):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    torch_prune.l1_unstructured(net[0], "weight", amount=0.5)
    x = torch.randn(3, 4)
    ref = net(x)
    before = _fingerprint(net)
    with pytest.raises(ValueError, match=r"'0'.*torch.nn.utils.prune.remove\(module, 'weight'\)"):
        mm.convert(net, mode)
    _same(before, _fingerprint(net))
    assert torch.equal(net(x), ref) and mm.mode_history(net) == []
    # once made permanent, it converts and exports like any layer
    torch_prune.remove(net[0], "weight")
    net = mm.convert(net, mode).eval()
    with torch.no_grad():
        masked = net(x)
        assert torch.equal(mm.export(net)(x), masked)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("norm", ["weight_norm", "spectral_norm"])
def test_old_style_weight_norm_layers_are_refused(norm):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4))
    getattr(torch.nn.utils, norm)(net[0])
    before = _fingerprint(net)
    remedy = {"weight_norm": "remove_weight_norm", "spectral_norm": "remove_spectral_norm"}[norm]
    with pytest.raises(ValueError, match=remedy):
        mm.convert(net, ("magnitude_pruning", {"nn.Linear": {"prune_percentage": 0.5}}))
    _same(before, _fingerprint(net))


class TiedLM(nn.Module):
    """An embedding and an output head sharing one weight (``tie_word_embeddings``)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 6)
        self.body = nn.Linear(6, 6)
        self.lm_head = nn.Linear(6, 12, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.relu(self.body(self.embed(ids))))


@pytest.mark.parametrize("mode", MASK_MODES)
def test_export_of_a_masked_tied_head_unties_it_and_equals_the_masked_model(mode):
    torch.manual_seed(0)
    net = TiedLM()
    embedding = net.embed.weight.detach().clone()
    ids = torch.randint(0, 12, (2, 5))
    net = mm.convert(net, (mode, {"nn.Linear": {"*": {}, "*lm_head*": {}}})).eval()  # lm_head named
    assert "lm_head" in mm.masked_modules(net)
    with torch.no_grad():
        for tech in (net.lm_head.weight_mask,):  # a mixed circuit for every technique
            for t in [*tech.parameters(), *tech.buffers()]:
                t.view(-1)[::2] = False if t.dtype == torch.bool else -5.0
                t.view(-1)[1::2] = True if t.dtype == torch.bool else 5.0
        masked = net(ids)
        net = mm.export(net)
        exported = net(ids)
    torch.testing.assert_close(exported, masked, rtol=0, atol=0)
    assert torch.equal(net.embed.weight, embedding)  # the input embedding is not pruned
    assert net.lm_head.weight is not net.embed.weight
    assert int((net.lm_head.weight == 0).sum()) == embedding.numel() // 2


def test_export_unties_a_tied_hf_model_and_clears_its_tie_flag():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    embedding = model.model.embed_tokens.weight.detach().clone()
    ids = torch.randint(0, 64, (1, 6))
    model = mm.convert(model, ("magnitude_pruning", {"nn.Linear": {"*": {}, "*lm_head*": {}}}))
    with torch.no_grad():
        masked = model(input_ids=ids).logits
        model = mm.export(model)
        exported = model(input_ids=ids).logits
    torch.testing.assert_close(exported, masked, rtol=0, atol=0)
    assert torch.equal(model.model.embed_tokens.weight, embedding)
    assert model.config.tie_word_embeddings is False
