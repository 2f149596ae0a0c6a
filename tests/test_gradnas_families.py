"""gradnas on every supported family: export runs, has the selected shapes, equals the masked model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import modeopt_masks as mm
from modeopt_masks.pruning import prune
from modeopt_masks.searchers import count_params
from modeopt_masks.structured import gradnas_hparams

try:
    from .gradnas_helpers import FAMILIES, loader, loss_of, make_input, make_model, output_tensor
except ImportError:  # tests/ is not a package
    from gradnas_helpers import FAMILIES, loader, loss_of, make_input, make_model, output_tensor


def _prune(family: str, target: str = "70%"):
    model = make_model(family)
    return prune(model, "gradnas", constraints={"params": target},
                 config={"data_loader": loader(family), "loss_func": loss_of(),
                         "progress": False})


def _input_width(module: nn.Module) -> int:
    w = module.weight
    if type(module).__name__ == "Conv1D":
        return w.shape[0]
    return w.shape[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_export_runs_has_selected_shapes_and_matches_masked_model(family):
    model, result = _prune(family)
    x = make_input(family)
    with torch.no_grad():
        masked = output_tensor(model(**x))
    hps = gradnas_hparams(model)
    assert set(result.selection) == set(hps)
    assert any(hp.active < hp.n_units for hp in hps.values()), "70% must prune something"
    structures = {n: hp.structure for n, hp in hps.items()}
    model = mm.export(model)
    assert mm.mode_history(model) == [] and not gradnas_hparams(model)
    modules = dict(model.named_modules())
    for name, s in structures.items():
        kept = result.selection[name]
        site = modules[s.mask_module]
        assert type(site) in (nn.Linear, nn.Conv2d) or type(site).__name__ == "Conv1D"
        assert _input_width(site) == kept * s.unit_size
        for upd in s.attrs:
            if hasattr(modules[upd.module], upd.attr):
                assert getattr(modules[upd.module], upd.attr) == kept * upd.per_unit // upd.divisor
    assert count_params(model) == result.constraints["params"]["achieved"]
    with torch.no_grad():
        exported = output_tensor(model(**x))
    assert exported.shape == masked.shape
    torch.testing.assert_close(exported, masked, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_full_selection_exports_the_original_model(family):
    original = make_model(family)
    x = make_input(family)
    with torch.no_grad():
        ref = output_tensor(original(**x))
    model, result = _prune(family, target="100%")
    assert all(result.selection[n] == hp.n_units for n, hp in gradnas_hparams(model).items())
    model = mm.export(model)
    assert all(type(a) is type(b) for a, b in zip(model.modules(), original.modules(), strict=True))
    sd, ref_sd = model.state_dict(), original.state_dict()
    assert sd.keys() == ref_sd.keys()
    assert all(torch.equal(sd[k], ref_sd[k]) for k in sd)
    with torch.no_grad():
        assert torch.equal(output_tensor(model(**x)), ref)


def test_gqa_prunes_whole_kv_groups_and_exported_llama_generates():
    model, result = _prune("llama", target="60%")
    attn = {n: k for n, k in result.selection.items() if n.endswith("self_attn")}
    assert set(attn.values()) <= {1, 2}
    model = mm.export(model)
    for name, kept in attn.items():
        layer = model.get_submodule(name)
        assert layer.k_proj.out_features == kept * 8 and layer.v_proj.out_features == kept * 8
        assert layer.q_proj.out_features == kept * 2 * 8 == layer.o_proj.in_features
        assert layer.num_key_value_groups == 2
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)


def test_gpt2_fused_qkv_slices_each_section():
    model = make_model("gpt2")
    model = mm.convert(model, ("gradnas", {"hf.mlp": None}))
    hp = gradnas_hparams(model)["transformer.h.0.attn"]
    hp.keep([1, 3])
    c_attn = model.transformer.h[0].attn.c_attn.weight.detach().clone()
    model = mm.export(model)
    attn = model.transformer.h[0].attn
    cols = [s * 32 + h * 8 + j for s in range(3) for h in (1, 3) for j in range(8)]
    assert torch.equal(attn.c_attn.weight, c_attn[:, cols])
    assert (attn.num_heads, attn.split_size, attn.c_attn.nf) == (2, 16, 48)
    assert attn.c_proj.weight.shape[0] == getattr(attn.c_proj, "nx", 16) == 16  # nx: 4.41+


def test_neox_fused_per_head_rows():
    model = make_model("gpt_neox")
    model = mm.convert(model, ("gradnas", {"hf.mlp": None}))
    gradnas_hparams(model)["layers.1.attention"].keep([0, 2])
    qkv = model.layers[1].attention.query_key_value.weight.detach().clone()
    model = mm.export(model)
    rows = [h * 24 + j for h in (0, 2) for j in range(24)]
    assert torch.equal(model.layers[1].attention.query_key_value.weight, qkv[rows])


def test_save_restore_replays_conversion_and_selection(tmp_path):
    model, result = _prune("bert")
    x = make_input("bert")
    with torch.no_grad():
        ref = output_tensor(model(**x))
    mm.save(model, tmp_path)
    fresh = mm.restore(make_model("bert"), tmp_path)
    hps = gradnas_hparams(fresh)
    assert {n: hp.kept for n, hp in hps.items()} == result.kept
    assert hps["encoder.layer.0.attention"].importance is not None
    with torch.no_grad():
        assert torch.equal(output_tensor(fresh(**x)), ref)
        exported = output_tensor(mm.export(fresh)(**x))
    torch.testing.assert_close(exported, ref, atol=1e-5, rtol=1e-5)


def test_deepcopy_and_unconvert():
    model, _ = _prune("gpt2")
    x = make_input("gpt2")
    twin = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(output_tensor(twin(**x)), output_tensor(model(**x)))
    model = mm.unconvert(model)
    with torch.no_grad():
        assert torch.equal(output_tensor(model(**x)), output_tensor(make_model("gpt2")(**x)))
    assert not gradnas_hparams(model)


def test_scoring_leaves_parameter_grads_as_found():
    model = make_model("bert")
    params = list(model.parameters())
    marker = torch.full_like(params[3], 7.0)
    params[3].grad = marker
    model, _ = prune(model, "gradnas", constraints={"params": "80%"},
                     config={"data_loader": loader("bert"), "loss_func": loss_of(),
                             "progress": False})
    assert params[3].grad is marker and torch.equal(marker, torch.full_like(marker, 7.0))
    assert all(p.grad is None for i, p in enumerate(params) if i != 3)


def test_unknown_attention_class_names_supported_families():
    class FooAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

    FooAttention.__module__ = "transformers.models.foo.modeling_foo"
    net = nn.Sequential(FooAttention(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="Supported families.*GPT-NeoX"):
        mm.convert(net, "gradnas")
    assert mm.mode_history(net) == [] and type(net[3]) is nn.Linear
    net = mm.convert(net, ("gradnas", {"hf.attention": None}))
    assert list(gradnas_hparams(net)) == ["1"]


def test_rules_switch_blocks_off_and_set_choices():
    model = mm.convert(make_model("bert"), ("gradnas", {
        "hf.attention": {"*": {"ratios": [0.5, 1.0]}, "*layer.1.*": None},
        "hf.mlp": {"divisor": 16},
    }))
    hps = gradnas_hparams(model)
    assert list(hps) == ["encoder.layer.0.attention", "encoder.layer.0.intermediate",
                         "encoder.layer.1.intermediate"]
    assert hps["encoder.layer.0.attention"].choices == [2, 4]
    assert hps["encoder.layer.1.intermediate"].choices == [16, 32, 48, 64]


def test_exported_hf_model_reloads_through_mm_restore_not_from_pretrained(tmp_path):
    model, result = _prune("bert")
    x = make_input("bert")
    mm.save(model, tmp_path / "mm")
    model = mm.export(model)
    with torch.no_grad():
        ref = output_tensor(model(**x))
    assert model.config.num_attention_heads == 4  # the config is not per layer: unchanged
    model.save_pretrained(tmp_path / "hf")
    with pytest.raises(RuntimeError, match="mismatch"):  # documented limit
        type(model).from_pretrained(tmp_path / "hf")
    rebuilt = mm.export(mm.restore(make_model("bert"), tmp_path / "mm"))
    torch.save(model, tmp_path / "model.pt")
    pickled = torch.load(tmp_path / "model.pt", weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(rebuilt(**x)), ref, atol=1e-6, rtol=1e-6)
        assert torch.equal(output_tensor(pickled(**x)), ref)
