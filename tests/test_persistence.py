"""save -> restore reproduces outputs for every mask mode; a wrong model fails clearly."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import MASK_MODES, output_tensor, tiny_bert, tiny_gpt2

import modeopt_masks as mm


@pytest.mark.parametrize("mode", MASK_MODES)
def test_save_restore_reproduces_outputs(tmp_path, mode):
    model, inputs = tiny_gpt2()
    cfg = {"hf.Conv1D": {"*": {"mask_unit": "weight"}, "*.mlp.*": {"mask_unit": "neuron",
                                                                  "mask_bias": True}}}
    model = mm.convert(model, (mode, cfg))
    with torch.no_grad():  # move the masks away from their init so restore must load them
        for layer in mm.masked_modules(model).values():
            for _, tech in layer._mask_modules():
                for p in tech.parameters():
                    p.copy_(torch.randn_like(p))
    if mode != "magnitude_pruning":
        mm.set_temperature(model, 3.5)
    model.eval()
    with torch.no_grad():
        expected = output_tensor(model, inputs)
    mm.save(model, tmp_path)
    assert json.loads((tmp_path / "modeopt_state.json").read_text())["modes"][0]["mode"] == mode

    fresh, _ = tiny_gpt2()
    torch.manual_seed(123)
    fresh = mm.restore(fresh, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(output_tensor(fresh, inputs), expected)
    assert [s.mode for s in mm.mode_history(fresh)] == [mode]
    assert sorted(mm.masked_modules(fresh)) == sorted(mm.masked_modules(model))
    if mode != "magnitude_pruning":
        assert mm.get_temperature(fresh) == 3.5
    fresh.train()
    mm.l0_loss(fresh)  # the restored masks work in training too


def test_restore_onto_another_architecture_fails_clearly_and_leaves_it(tmp_path):
    model, _ = tiny_gpt2()
    mm.save(mm.convert(model, "hard_concrete"), tmp_path)
    other, _ = tiny_bert()
    classes = {n: type(m) for n, m in other.named_modules()}
    with pytest.raises(mm.StateError, match="does not fit"):
        mm.restore(other, tmp_path)
    assert {n: type(m) for n, m in other.named_modules()} == classes
    assert mm.mode_history(other) == []


def test_restore_onto_a_differently_sized_model_fails_before_loading(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model, _ = tiny_gpt2()
    mm.save(mm.convert(model, "continuous_sparsification"), tmp_path)
    wider = GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=48, n_layer=2, n_head=4,
                                       n_positions=32))
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(mm.StateError, match="saved"):
        mm.restore(wider, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())
    assert mm.masked_modules(wider) == {}


def test_save_writes_no_pickle(tmp_path):
    model, _ = tiny_bert()
    mm.save(mm.convert(model, "magnitude_pruning"), tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and names[1] == "modeopt_state.json"
    assert re.fullmatch(r"model\.[0-9a-f]{16}\.safetensors", names[0]), names
