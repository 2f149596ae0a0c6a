"""Each mask mode on BERT, GPT-2 (Conv1D), ViT and a conv net: identity, shapes, export."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import MASK_MODES, output_tensor

import modeopt_masks as mm


def fill_all_ones(model: nn.Module) -> None:
    """Make every mask keep everything (large positive parameters, all-true boolean buffers)."""
    with torch.no_grad():
        for layer in mm.masked_modules(model).values():
            for _, tech in layer._mask_modules():
                for tensor in [*tech.parameters(), *tech.buffers()]:
                    tensor.fill_(True if tensor.dtype == torch.bool else 5.0)
                assert tech.circuit().all(), f"{type(tech).__name__}: cannot fill to keep-all"


@pytest.mark.parametrize("mode", MASK_MODES)
def test_masks_off_or_all_ones_give_original_outputs(any_model, mode):
    name, model, inputs = any_model
    with torch.no_grad():
        ref = output_tensor(model, inputs)
    base_state = model.state_dict()
    params_before = {n: p for n, p in model.named_parameters()}
    model = mm.convert(model, (mode, {"nn.Linear": {"mask_bias": True}}) if name != "convnet"
                       else mode)
    assert mm.masked_modules(model), "nothing converted"
    # base parameters are the same objects under the same state_dict keys
    state = model.state_dict()
    for key, tensor in base_state.items():
        assert torch.equal(state[key], tensor)
    new_params = dict(model.named_parameters())
    assert all(new_params[n] is p for n, p in params_before.items())
    with torch.no_grad():
        mm.use_masks(model, False)
        assert torch.equal(output_tensor(model, inputs), ref)
        mm.use_masks(model, True)
        fill_all_ones(model)
        assert torch.equal(output_tensor(model, inputs), ref)


@pytest.mark.parametrize("mode", MASK_MODES)
def test_default_config_skips_output_heads_and_masks_the_rest(any_model, mode):
    name, model, inputs = any_model
    model = mm.convert(model, mode)
    masked = mm.masked_modules(model)
    heads = [n for n in masked if any(h in n for h in ("lm_head", "classifier", "score", "pooler"))]
    assert heads == []
    supported = [n for n, m in model.named_modules() if mm.layer_kinds.kind_of(m) is not None]
    expected = [n for n in supported if not any(
        h in n for h in ("lm_head", "classifier", "score", "pooler"))]
    assert sorted(masked) == sorted(expected)
    with torch.no_grad():
        mm.set_ablation(model, "none")
        masked_out = output_tensor(model.eval(), inputs)
    assert torch.isfinite(masked_out).all()


def test_neuron_masks_have_one_entry_per_output_unit(any_model):
    name, model, inputs = any_model
    from fnmatch import fnmatch

    heads = ("*lm_head*", "*classifier*", "*score*", "*pooler*")  # excluded by default
    present = {mm.layer_kinds.kind_of(m).key for n, m in model.named_modules()
               if mm.layer_kinds.kind_of(m) is not None and not any(fnmatch(n, g) for g in heads)}
    rule = {"mask_unit": "neuron", "mask_bias": True}
    model = mm.convert(model, ("hard_concrete", dict.fromkeys(present, rule)))
    checked = set()
    for layer in mm.masked_modules(model).values():
        kind = layer.layer_kind
        out_units = layer.weight.shape[kind.out_dim]
        assert layer.weight_mask.log_alpha.numel() == out_units
        assert layer.weight_mask.shape[kind.out_dim] == out_units
        # a hard mask removing one unit zeroes exactly that unit's weights
        with torch.no_grad():
            layer.weight_mask.log_alpha.fill_(3.0)
            layer.weight_mask.log_alpha.view(-1)[1] = -3.0
        layer.eval()
        w = layer.effective_weight()
        removed = w.select(kind.out_dim, 1)
        assert torch.all(removed == 0)
        assert torch.equal(w.select(kind.out_dim, 0), layer.weight.select(kind.out_dim, 0))
        checked.add(kind.key)
    expected = {"bert": {"nn.Linear"}, "gpt2": {"hf.Conv1D"}, "vit": {"nn.Linear", "nn.Conv2d"},
                "convnet": {"nn.Linear", "nn.Conv1d", "nn.Conv2d"}}[name]
    assert checked == expected


@pytest.mark.parametrize("mode", MASK_MODES)
def test_export_gives_plain_classes_with_equal_outputs(any_model, mode):
    name, model, inputs = any_model
    original_classes = {n: type(m) for n, m in model.named_modules()}
    model = mm.convert(model, mode).eval()
    with torch.no_grad():
        masked = output_tensor(model, inputs)
        model = mm.export(model)
        exported = output_tensor(model, inputs)
    assert {n: type(m) for n, m in model.named_modules()} == original_classes
    assert mm.mode_history(model) == []
    torch.testing.assert_close(exported, masked, rtol=0, atol=1e-6)


def test_continuous_sparsification_soft_mask_and_l0():
    lin = nn.Sequential(nn.Linear(3, 2))
    net = mm.convert(lin, ("continuous_sparsification",
                           {"nn.Linear": {"mask_init_value": 0.5, "temperature": 2.0}})).train()
    tech = net[0].weight_mask
    expected = torch.sigmoid(torch.tensor(1.0))
    torch.testing.assert_close(tech.mask(), torch.full((2, 3), float(expected)))
    torch.testing.assert_close(mm.l0_loss(net), 6 * expected)
    mm.set_temperature(net, 10.0)
    torch.testing.assert_close(mm.l0_loss(net), 6 * torch.sigmoid(torch.tensor(5.0)))
    net.eval()
    assert torch.equal(tech.mask(), torch.ones(2, 3))
    assert mm.l0_stats(net) == {"total_l0": 6.0, "max_l0": 6, "layer2l0": {"0": 6.0},
                                "layer2maxl0": {"0": 6}}


def test_hard_concrete_matches_louizos_formulas():
    torch.manual_seed(0)
    net = mm.convert(nn.Sequential(nn.Linear(50, 40)),
                     ("hard_concrete", {"nn.Linear": {"mask_init_percentage": 0.8}})).train()
    tech = net[0].weight_mask
    la = tech.log_alpha.detach()
    # init: log_alpha ~ N(log(p/(1-p)), 0.01)
    assert abs(float(la.mean()) - torch.log(torch.tensor(4.0)).item()) < 0.01
    assert 0.005 < float(la.std()) < 0.015
    beta = 2 / 3
    expected_l0 = torch.sigmoid(la - beta * torch.log(torch.tensor(0.1 / 1.1))).sum()
    torch.testing.assert_close(mm.l0_loss(net), expected_l0)
    samples = torch.stack([tech.mask() for _ in range(200)])
    assert samples.min() >= 0 and samples.max() <= 1
    assert (samples == 1).any() and ((samples > 0) & (samples < 1)).any()
    # the sampled gate is differentiable w.r.t. log_alpha
    tech.mask().sum().backward()
    assert tech.log_alpha.grad is not None and tech.log_alpha.grad.abs().sum() > 0
    net.eval()
    assert torch.equal(tech.mask(), (la > 0).float())


def test_magnitude_pruning_ranks_absolute_values_per_layer_and_globally():
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[-9.0, 1.0], [2.0, -0.5]]))
        net[1].weight.copy_(torch.tensor([[0.1, 0.2], [-3.0, 0.3]]))
    layer = mm.convert(net, ("magnitude_pruning", {"nn.Linear": {"prune_percentage": 0.5}}))
    # signed quantiles would keep 1.0 and 2.0 and drop -9.0; |w| keeps -9.0 and 2.0
    assert net[0].weight_mask.keep.tolist() == [[True, False], [True, False]]
    assert layer[1].weight_mask.keep.tolist() == [[False, False], [True, True]]
    mm.unconvert(net)
    net = mm.convert(net, ("magnitude_pruning", {"scope": "global",
                                                 "nn.Linear": {"prune_percentage": 0.5}}))
    # the 4 smallest of all 8 |w| (0.1, 0.2, 0.3, 0.5) go, wherever they are
    assert net[0].weight_mask.keep.tolist() == [[True, True], [True, False]]
    assert net[1].weight_mask.keep.tolist() == [[False, False], [True, False]]


def test_magnitude_global_scope_rejects_mixed_percentages_and_leaves_model():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    cfg = {"scope": "global", "nn.Linear": {"*": {"prune_percentage": 0.5},
                                             "1": {"prune_percentage": 0.2}}}
    with pytest.raises(ValueError, match="one prune_percentage"):
        mm.convert(net, ("magnitude_pruning", cfg))
    assert type(net[0]) is nn.Linear and type(net[1]) is nn.Linear
    assert mm.mode_history(net) == []


def test_freeze_base_keeps_base_in_eval_and_frozen():
    net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    net = mm.convert(net, ("continuous_sparsification", {"freeze_base": True}))
    net.train()
    assert not net[1].training and not net[0].training
    assert net[0].weight_mask.training
    assert all(not p.requires_grad for n, p in net.named_parameters() if "mask" not in n)
    x = torch.randn(16, 4)
    assert torch.equal(net(x), net(x))  # dropout off
    net(x).sum().backward()
    assert net[0].weight.grad is None and net[0].weight_mask.logits.grad is not None
    net.eval()
    assert not net[0].weight_mask.training
    mm.export(net)
    assert all(p.requires_grad for p in net.parameters())
    assert type(net) is nn.Sequential


def test_l0_stats_counts_hard_masks_exactly_beyond_float32_precision():
    # 2**24 + 1 kept entries: a float32 sum would round it to 2**24
    n = 2**24 + 1
    layer = nn.Linear(n, 1, bias=False, device="meta")
    model = nn.Sequential(layer).to_empty(device="cpu")
    with torch.no_grad():  # to_empty leaves whatever was in memory, NaN bit patterns included
        model[0].weight.fill_(1.0)
    net = mm.convert(model, "magnitude_pruning")
    with torch.no_grad():
        net[0].weight_mask.keep.fill_(True)
    assert mm.l0_stats(net)["total_l0"] == n
