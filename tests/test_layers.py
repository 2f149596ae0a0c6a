"""NeuroSurgeon layer-level names: thin names over mm.convert, same outputs and parameters."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

import modeopt_masks as mm
from modeopt_masks import layers as L

KINDS = {  # name suffix -> (type key, factory of the original layer, input)
    "Linear": ("nn.Linear", lambda: nn.Linear(6, 5), lambda: torch.randn(3, 6)),
    "GPTConv1D": ("hf.Conv1D", lambda: Conv1D(5, 6), lambda: torch.randn(3, 4, 6)),
    "Conv1d": ("nn.Conv1d", lambda: nn.Conv1d(3, 4, 3, padding=1), lambda: torch.randn(2, 3, 7)),
    "Conv2d": ("nn.Conv2d", lambda: nn.Conv2d(3, 4, 3), lambda: torch.randn(2, 3, 6, 6)),
}
FAMILIES = {
    "ContSparse": ("continuous_sparsification", {"mask_init_value": 0.3, "temperature": 2.0}),
    "HardConcrete": ("hard_concrete", {"mask_init_percentage": 0.7}),
    "MagPrune": ("magnitude_pruning", {"prune_percentage": 0.4}),
}
CASES = [(f, k) for f in FAMILIES for k in KINDS]


@pytest.mark.parametrize("family,kind", CASES)
@pytest.mark.parametrize("train", [False, True])
def test_from_layer_matches_convert_and_keeps_parameters(family, kind, train):
    mode, rule = FAMILIES[family]
    key, make, make_x = KINDS[kind]
    name = getattr(L, family + kind)
    torch.manual_seed(0)
    layer = make()
    ref = copy.deepcopy(layer)
    params = {n: p for n, p in layer.named_parameters()}
    torch.manual_seed(1)  # same mask init draws for both
    out_layer = name.from_layer(layer, mask_unit="neuron", **rule) if mode != "magnitude_pruning" \
        else name.from_layer(layer, **rule)
    torch.manual_seed(1)
    mm.convert(ref, (mode, {key: {**rule, **({"mask_unit": "neuron"} if mode != "magnitude_pruning"
                                               else {})}}))
    assert out_layer is layer
    assert all(dict(layer.named_parameters())[n] is p for n, p in params.items())
    assert isinstance(layer, name) and isinstance(layer, make().__class__)
    assert isinstance(layer, getattr(L, family + "Layer"))
    layer.train(train), ref.train(train)
    x = make_x()
    torch.manual_seed(2)
    y = layer(x)
    torch.manual_seed(2)
    assert torch.equal(y, ref(x))
    assert mm.l0_stats(layer)["max_l0"] == mm.l0_stats(ref)["max_l0"]
    assert [s.mode for s in mm.mode_history(layer)] == [mode]


@pytest.mark.parametrize("family,kind", CASES)
def test_constructor_builds_the_original_layer_and_converts_it(family, kind):
    mode, rule = FAMILIES[family]
    name = getattr(L, family + kind)
    args = {"Linear": (6, 5), "GPTConv1D": (5, 6), "Conv1d": (3, 4, 3), "Conv2d": (3, 4, 3)}[kind]
    layer = name(*args, **rule)
    key, make, make_x = KINDS[kind]
    assert type(layer)._mm_original_cls is type(make())
    assert tuple(layer.weight.shape) == tuple(make().weight.shape)
    assert isinstance(layer, name)
    plain = mm.unconvert(layer)
    assert type(plain) is type(make()) and not isinstance(plain, name)


def test_isinstance_separates_techniques_and_kinds():
    cs = L.ContSparseLinear(4, 4)
    hc = L.HardConcreteConv2d(2, 2, 1)
    assert isinstance(cs, L.ContSparseLinear) and not isinstance(cs, L.HardConcreteLinear)
    assert not isinstance(cs, L.ContSparseConv2d)
    assert isinstance(hc, L.HardConcreteConv2d) and not isinstance(hc, L.MagPruneConv2d)
    assert not isinstance(nn.Linear(2, 2), L.ContSparseLinear)
    # a layer converted through a whole-model mm.convert is recognised too
    net = mm.convert(nn.Sequential(nn.Linear(3, 3)), "magnitude_pruning")
    assert isinstance(net[0], L.MagPruneLinear)


def test_neurosurgeon_positional_order_and_ablation():
    layer = L.ContSparseLinear.from_layer(nn.Linear(4, 4), "zero_ablate", "neuron", True, 0.3)
    assert layer.ablation == "zero_ablate"
    assert layer.weight_mask.shape == (4, 1) and layer.bias_mask is not None
    assert torch.all(layer.weight_mask.logits == 0.3)
    mp = L.MagPruneLinear.from_layer(nn.Linear(10, 10), "none", False, 0.9)
    assert int(mp.weight_mask.keep.sum()) == 10


def test_bad_inputs_raise_and_leave_the_layer_unchanged():
    lin = nn.Linear(3, 3)
    with pytest.raises(TypeError, match="nn.Linear"):
        L.ContSparseLinear.from_layer(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="valid fields"):
        L.ContSparseLinear.from_layer(lin, mask_init_vale=1.0)
    with pytest.raises(ValueError, match="ablation"):
        L.HardConcreteLinear.from_layer(lin, ablation="nope")
    with pytest.raises(ValueError):
        L.MagPruneLinear.from_layer(lin, prune_percentage=1.5)
    assert type(lin) is nn.Linear and not mm.mode_history(lin)
    L.ContSparseLinear.from_layer(lin)
    with pytest.raises(ValueError, match="already converted"):
        L.HardConcreteLinear.from_layer(lin)
    with pytest.raises(TypeError, match="isinstance"):
        L.ContSparseLayer(3, 3)
    with pytest.raises(TypeError, match="rule fields"):
        L.ContSparseLinear(3, 3, mask_inti_value=0.1)
