"""The eval path keeps no cache: every write shows in the next forward, and no copy of the
weights stays resident (issue 16 defect 3, issue 11 item 4, the eval memory bound)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import MASK_MODES

import modeopt_masks as mm


def _net(mode: str) -> nn.Sequential:
    torch.manual_seed(0)
    net = mm.convert(nn.Sequential(nn.Linear(6, 5)), (mode, {"nn.Linear": {"mask_bias": True}}))
    with torch.no_grad():  # a mixed circuit: every other entry kept
        for _, tech in net[0]._mask_modules():
            for t in [*tech.parameters(), *tech.buffers()]:
                t.data.view(-1)[::2] = True if t.dtype == torch.bool else 5.0
    return net.eval()


def _reference(layer, x: torch.Tensor) -> torch.Tensor:
    """What the layer must compute: its current tensors times its current hard circuits."""
    w = layer.weight * layer.weight_mask.circuit()
    b = layer.bias * layer.bias_mask.circuit()
    return F.linear(x, w, b)


def _drop_everything(tensor: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(tensor) if tensor.dtype == torch.bool else torch.full_like(tensor, -5.0)


@pytest.mark.parametrize("mode", MASK_MODES)
def test_writes_through_data_show_in_the_next_eval_forward(mode):
    net = _net(mode)
    layer, x = net[0], torch.randn(3, 6)
    with torch.no_grad():
        net(x)  # a first eval forward (the old cache was filled here)
        layer.weight.data.mul_(2.0)  # `.data` writes do not bump `_version`
        torch.testing.assert_close(net(x), _reference(layer, x), rtol=0, atol=0)
        for tensor in [*layer.weight_mask.parameters(), *layer.weight_mask.buffers()]:
            tensor.data.copy_(_drop_everything(tensor))
        out = net(x)
    assert not layer.weight_mask.circuit().any()
    torch.testing.assert_close(out, _reference(layer, x), rtol=0, atol=0)
    torch.testing.assert_close(out, (layer.bias * layer.bias_mask.circuit()).expand(3, -1))


@pytest.mark.parametrize("mode", MASK_MODES)
def test_replacing_a_mask_parameter_object_shows_in_the_next_eval_forward(mode):
    """NeuroSurgeon's idiom: assign a new ``nn.Parameter`` (or buffer) to the mask."""
    net = _net(mode)
    layer, x = net[0], torch.randn(3, 6)
    with torch.no_grad():
        before = net(x)
        tech = layer.weight_mask
        for name, p in list(tech.named_parameters(recurse=False)):
            setattr(tech, name, nn.Parameter(_drop_everything(p)))
        for name, b in list(tech.named_buffers(recurse=False)):
            setattr(tech, name, _drop_everything(b))
        after = net(x)
    assert not tech.circuit().any()
    torch.testing.assert_close(after, _reference(layer, x), rtol=0, atol=0)
    assert not torch.equal(before, after)


@pytest.mark.parametrize("mode", MASK_MODES)
def test_replacing_the_base_weight_shows_in_the_next_eval_forward(mode):
    net = _net(mode)
    layer, x = net[0], torch.randn(3, 6)
    with torch.no_grad():
        net(x)
        layer.weight = nn.Parameter(torch.randn_like(layer.weight))
        torch.testing.assert_close(net(x), _reference(layer, x), rtol=0, atol=0)


def _held_bytes(module: nn.Module) -> int:
    """Bytes of every tensor the module holds: parameters, buffers and attributes."""
    seen: dict[int, int] = {}

    def visit(obj) -> None:
        if isinstance(obj, torch.Tensor):
            seen[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
        elif isinstance(obj, dict):
            for v in obj.values():
                visit(v)
        elif isinstance(obj, list | tuple):
            for v in obj:
                visit(v)

    for m in module.modules():
        visit(m.__dict__)
    return sum(seen.values())


@pytest.mark.parametrize("mode", MASK_MODES)
def test_eval_forward_keeps_no_copy_of_the_weights(mode):
    net = _net(mode)
    net[0].weight = nn.Parameter(torch.randn(256, 6))  # weight-dominated layer
    net[0].bias = nn.Parameter(torch.randn(256))
    net = mm.convert(mm.unconvert(net), mode).eval()
    x = torch.randn(3, 6)
    before = _held_bytes(net)
    with torch.no_grad():
        net(x)
        net(x)
    assert _held_bytes(net) == before


def test_ablation_draws_follow_a_changed_circuit():
    """Sampled ablations remove |circuit| entries of the *current* circuit, however it changed."""
    net = _net("continuous_sparsification")
    layer = net[0]
    with torch.no_grad():
        layer.weight_mask.logits.data.fill_(1.0)
    mm.set_ablation(net, "randomly_sampled")
    with torch.no_grad():
        removed = int((layer.effective_weight() == 0).sum())
        assert removed == layer.weight.numel()  # everything is in the circuit
        layer.weight_mask.logits.data.view(-1)[::2] = -1.0  # half out, through `.data`
        kept_circuit = int(layer.weight_mask.circuit().sum())
        removed = int((layer.effective_weight() == 0).sum())
    assert removed == kept_circuit
