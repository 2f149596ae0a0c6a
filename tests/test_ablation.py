"""The five ablation modes, on every layer kind and mask unit."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import modeopt_masks as mm

LAYERS = {
    "linear": lambda: nn.Linear(12, 10),
    "conv1d": lambda: nn.Conv1d(4, 6, 3),
    "conv2d": lambda: nn.Conv2d(3, 5, 3),
}
INPUTS = {
    "linear": lambda: torch.randn(3, 12),
    "conv1d": lambda: torch.randn(2, 4, 9),
    "conv2d": lambda: torch.randn(2, 3, 7, 7),
}


def hf_conv1d():
    from transformers.pytorch_utils import Conv1D

    return Conv1D(10, 12)


LAYERS["hf_conv1d"] = hf_conv1d
INPUTS["hf_conv1d"] = lambda: torch.randn(3, 12)


def circuit_layer(kind: str, unit: str, fraction: float = 0.3):
    """A hard-concrete layer whose circuit is a random ``fraction`` of its mask entries."""
    torch.manual_seed(1)
    net = nn.Sequential(LAYERS[kind]())
    net = mm.convert(net, ("hard_concrete", {"*" if False else k: {"mask_unit": unit,
                                              "mask_bias": True}
                                             for k in [mm.layer_kinds.kind_of(net[0]).key]}))
    layer = net[0]
    with torch.no_grad():
        for _, tech in layer._mask_modules():
            la = torch.where(torch.rand(tech.shape) < fraction, 3.0, -3.0)
            tech.log_alpha.copy_(la)
    return net.eval(), layer


def entries_changed(layer, tensor, reference):
    """Bool per mask entry: did any weight of that entry change?"""
    diff = tensor != reference
    shape = layer.weight_mask.shape
    if tuple(diff.shape) == tuple(shape):
        return diff
    dims = [d for d in range(diff.dim()) if shape[d] == 1]
    return diff.any(dim=dims, keepdim=True) if dims else diff


@pytest.mark.parametrize("unit", ["weight", "neuron"])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_zero_and_random_ablation_touch_exactly_the_circuit(kind, unit):
    net, layer = circuit_layer(kind, unit)
    x = INPUTS[kind]()
    with torch.no_grad():
        original = net(x).clone()
        mm.use_masks(net, False)
        plain = net(x).clone()
        mm.use_masks(net, True)
        circuit = layer.weight_mask.circuit()
        assert 0 < int(circuit.sum()) < circuit.numel()
        weight_before = layer.weight.clone()

        mm.set_ablation(net, "zero_ablate")
        w = layer.effective_weight()
        assert torch.equal(entries_changed(layer, w, layer.weight), circuit)
        assert torch.all(w[circuit.expand_as(w)] == 0)
        b = layer.effective_bias()
        assert torch.equal(b == 0, layer.bias_mask.circuit() | (layer.bias == 0))

        mm.set_ablation(net, "random_ablate")
        w = layer.effective_weight()
        assert torch.equal(entries_changed(layer, w, layer.weight), circuit)
        assert torch.equal(net(x), net(x))  # drawn once, stable
        assert torch.equal(layer.weight, weight_before)  # original never overwritten

        mm.set_ablation(net, "none")
        assert torch.equal(net(x), original)
        assert not torch.equal(original, plain)


@pytest.mark.parametrize("unit", ["weight", "neuron"])
@pytest.mark.parametrize("kind", ["linear", "hf_conv1d", "conv2d"])
def test_sampled_ablations_remove_circuit_size_entries(kind, unit):
    net, layer = circuit_layer(kind, unit, fraction=0.3)
    x = INPUTS[kind]()
    circuit = layer.weight_mask.circuit()
    k = int(circuit.sum())
    draws = {}
    with torch.no_grad():
        for ablation in ("randomly_sampled", "complement_sampled"):
            mm.set_ablation(net, ablation)
            y1 = net(x)
            removed = entries_changed(layer, layer.effective_weight(), layer.weight)
            # exactly |circuit| entries removed (a weight that is already 0 can't show change)
            sampled = layer._mm_sampled[("weight", ablation)][1]
            assert int((~sampled).sum()) == k
            assert torch.equal(removed, (~sampled) & entries_changed(layer, torch.zeros_like(
                layer.weight), layer.weight))
            assert torch.equal(net(x), y1)  # stable across forwards
            bias_sampled = layer._mm_sampled[("bias", ablation)][1]
            assert int((~bias_sampled).sum()) == int(layer.bias_mask.circuit().sum())
            draws[ablation] = sampled.clone()
            if ablation == "complement_sampled":
                assert not ((~sampled) & circuit).any()  # nothing from inside the circuit
            mm.set_ablation(net, ablation, force_resample=True)
            redrawn = (net(x), layer._mm_sampled[("weight", ablation)][1])
            if circuit.numel() - k > k + 2:  # enough room for a different draw
                assert not torch.equal(redrawn[1], sampled)
    # the two modes never share a draw
    assert not torch.equal(draws["randomly_sampled"], draws["complement_sampled"])


def test_complement_sampled_needs_a_large_enough_complement():
    net, layer = circuit_layer("linear", "weight", fraction=0.9)
    mm.set_ablation(net, "complement_sampled")
    with pytest.raises(ValueError, match="randomly_sampled"):
        net(torch.randn(2, 12))


def test_ablation_while_training_soft_masks_is_an_error():
    net, layer = circuit_layer("linear", "weight")
    mm.set_ablation(net, "zero_ablate")
    net.train()
    with pytest.raises(RuntimeError, match="eval"):
        net(torch.randn(2, 12))


def test_unknown_ablation_names_the_choices():
    net, _ = circuit_layer("linear", "weight")
    with pytest.raises(ValueError, match="complement_sampled"):
        mm.set_ablation(net, "zero")


def test_use_masks_and_ablation_by_name():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    net = mm.convert(net, "magnitude_pruning").eval()
    mm.set_ablation(net, "zero_ablate", names=["1"])
    assert net[0].ablation == "none" and net[1].ablation == "zero_ablate"
    mm.use_masks(net, False, names=["0"])
    assert torch.equal(net[0].effective_weight(), net[0].weight)
    with pytest.raises(ValueError, match="masked layers"):
        mm.use_masks(net, False, names=["nope*"])
