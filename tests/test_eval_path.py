"""The eval path keeps no cache: every write shows in the next forward, and no copy of the
weights stays resident (issue 16 defect 3, issue 11 item 4, the eval memory bound); the
compact path (``mm.compact_masks``) computes the same outputs from 1 bit per mask entry."""

from __future__ import annotations

import os

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


# -- the hard mask each eval forward multiplies by ---------------------------------------------
@pytest.mark.parametrize("mode", MASK_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_hard_mask_is_the_circuit_in_the_tensors_dtype(mode, dtype):
    net = _net(mode)
    tech = net[0].weight_mask
    if tech.learnable:  # NaN and exact-zero logits sit outside the circuit
        p = next(tech.parameters())
        with torch.no_grad():
            p.data.view(-1)[:3] = torch.tensor([float("nan"), 0.0, -0.0])
    hard = tech.hard_mask(dtype)
    assert hard.dtype == dtype and hard.shape == tech.circuit().shape
    assert torch.equal(hard, tech.circuit().to(dtype))


@pytest.mark.parametrize("mode", MASK_MODES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_eval_output_is_the_reference_product_in_other_dtypes(mode, dtype):
    net = _net(mode).to(dtype)
    layer, x = net[0], torch.randn(3, 6, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(net(x), _reference(layer, x))


# -- the compact path -----------------------------------------------------------------------
def _pair(mode: str, **rule) -> tuple[nn.Sequential, nn.Sequential]:
    """The same converted two-layer net twice: as converted, and compacted."""
    def make() -> nn.Sequential:
        torch.manual_seed(1)
        net = mm.convert(nn.Sequential(nn.Linear(13, 11), nn.ReLU(), nn.Linear(11, 7)),
                         (mode, {"nn.Linear": {"mask_bias": True, **rule}}))
        with torch.no_grad():
            for layer in (net[0], net[2]):
                for _, tech in layer._mask_modules():
                    for t in [*tech.parameters(), *tech.buffers()]:
                        t.data.copy_(torch.rand(t.shape) > 0.4 if t.dtype == torch.bool
                                     else torch.randn(t.shape))
        return net.eval()
    return make(), mm.compact_masks(make())


@pytest.mark.parametrize("mode", MASK_MODES)
@pytest.mark.parametrize("unit", ["weight", "neuron"])
def test_compact_outputs_equal_the_masked_outputs_bit_for_bit(mode, unit):
    masked, compact = _pair(mode, mask_unit=unit)
    x = torch.randn(5, 13)
    with torch.no_grad():
        assert torch.equal(compact(x), masked(x))
        for ablation in ("zero_ablate", "none"):
            mm.set_ablation(masked, ablation)
            mm.set_ablation(compact, ablation)
            assert torch.equal(compact(x), masked(x))
    for a, b in zip(masked.modules(), compact.modules(), strict=True):
        if isinstance(a, mm.MaskedLayer):
            for (_, ta), (_, tb) in zip(a._mask_modules(), b._mask_modules(), strict=True):
                assert isinstance(tb, mm.CompactMask)
                assert torch.equal(ta.circuit(), tb.circuit())
                assert float(ta.l0()) == float(tb.l0())


@pytest.mark.parametrize("mode", MASK_MODES)
def test_compact_path_sees_writes_to_the_weight(mode):
    _, compact = _pair(mode)
    layer, x = compact[0], torch.randn(3, 13)
    with torch.no_grad():
        compact(x)
        layer.weight.data.mul_(-3.0)  # through `.data`: no version bump
        w = layer.weight * layer.weight_mask.circuit()
        b = layer.bias * layer.bias_mask.circuit()
        assert torch.equal(compact[0](x), F.linear(x, w, b))
        layer.weight = nn.Parameter(torch.randn_like(layer.weight))
        assert torch.equal(compact[0](x), F.linear(x, layer.weight * layer.weight_mask.circuit(), b))


def _tensor_bytes(module: nn.Module) -> tuple[int, int]:
    """(bytes of the masks' parameters and buffers, bytes of all the others)."""
    mask_ids = {id(t) for m in module.modules() if isinstance(m, mm.MaskTechnique)
                for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]}
    tensors = [*module.parameters(), *module.buffers()]
    mask = sum(t.numel() * t.element_size() for t in tensors if id(t) in mask_ids)
    return mask, sum(t.numel() * t.element_size() for t in tensors if id(t) not in mask_ids)


@pytest.mark.parametrize("mode", MASK_MODES)
@pytest.mark.parametrize("keep_logits", [False, True])
def test_compact_masks_hold_one_bit_per_entry(mode, keep_logits):
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(300, 200), nn.Linear(200, 50))
    base_bytes = sum(p.numel() * p.element_size() for p in plain.parameters())
    net = mm.compact_masks(mm.convert(plain, mode), keep_logits=keep_logits)
    mask_bytes, other_bytes = _tensor_bytes(net)
    assert other_bytes == base_bytes
    assert mask_bytes == -(-300 * 200 // 8) + -(-200 * 50 // 8)
    assert (mask_bytes + other_bytes) / base_bytes < 1.04  # 1/32 of float32 weights
    # the kept originals (keep_logits) are outside parameters, buffers and state_dict
    assert all(k.endswith((".weight", ".bias", ".bits")) for k in net.state_dict())
    held = _held_bytes(net)
    assert held == mask_bytes + other_bytes  # no other tensor attribute either
    with torch.no_grad():
        net(torch.randn(2, 300))
    assert _held_bytes(net) == held  # the forward kept nothing


@pytest.mark.parametrize("mode", MASK_MODES)
def test_one_way_compaction_refuses_training_save_and_expand(mode, tmp_path):
    _, net = _pair(mode)
    x = torch.randn(2, 13)
    with torch.no_grad():
        before = net(x)
    net.train()
    with pytest.raises(RuntimeError, match="compact_masks.*model.eval"):
        net(x)
    with pytest.raises(ValueError, match="compacted for evaluation"):
        mm.save(net, tmp_path)
    assert os.listdir(tmp_path) == []
    techniques = [m for m in net.modules() if isinstance(m, mm.CompactMask)]
    with pytest.raises(ValueError, match="without keep_logits=True"):
        mm.expand_masks(net)
    assert [m for m in net.modules() if isinstance(m, mm.CompactMask)] == techniques
    with torch.no_grad():
        assert torch.equal(net.eval()(x), before)
    exported = mm.export(net)  # baking the compact circuits gives the same function
    assert not any(isinstance(m, mm.MaskedLayer) for m in exported.modules())
    with torch.no_grad():
        assert torch.equal(exported(x), before)


@pytest.mark.parametrize("mode", MASK_MODES)
def test_keep_logits_round_trip_restores_the_same_techniques(mode, tmp_path):
    masked, _ = _pair(mode)
    originals = {n: m for n, m in masked.named_modules() if isinstance(m, mm.MaskTechnique)}
    values = {n: [t.clone() for t in [*m.parameters(), *m.buffers()]] for n, m in originals.items()}
    mm.compact_masks(masked, keep_logits=True)
    assert not any(isinstance(m, mm.MaskTechnique) and not isinstance(m, mm.CompactMask)
                   for m in masked.modules())
    mm.expand_masks(masked)
    back = {n: m for n, m in masked.named_modules() if isinstance(m, mm.MaskTechnique)}
    assert back.keys() == originals.keys()
    for name, tech in back.items():
        assert tech is originals[name]
        assert all(torch.equal(a, b) for a, b in
                   zip(values[name], [*tech.parameters(), *tech.buffers()], strict=True))
    mm.save(masked, tmp_path)  # saving works again
    masked.train()(torch.randn(2, 13))  # and training


def test_compact_masks_is_atomic(monkeypatch):
    net, _ = _pair("continuous_sparsification")
    before = [(n, m) for n, m in net.named_modules()]
    calls = {"n": 0}
    real = mm.CompactMask.of.__func__

    def failing(cls, circuit, source):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected")
        return real(cls, circuit, source)

    monkeypatch.setattr(mm.CompactMask, "of", classmethod(failing))
    with pytest.raises(RuntimeError, match="injected"):
        mm.compact_masks(net)
    assert [(n, m) for n, m in net.named_modules()] == before


def test_compact_masks_refuses_bad_input():
    with pytest.raises(ValueError, match="no masked layers"):
        mm.compact_masks(nn.Sequential(nn.Linear(2, 2)))
    net = mm.convert(nn.Sequential(nn.Linear(2, 2)), "hard_concrete")
    with pytest.raises(TypeError, match="keep_logits"):
        mm.compact_masks(net, keep_logits="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 64, 1001])
def test_packed_bits_round_trip(numel):
    from modeopt_masks.compact import pack_bits, unpack_bits

    torch.manual_seed(numel)
    circuit = torch.rand(numel) > 0.5
    bits = pack_bits(circuit)
    assert bits.numel() == -(-numel // 8) and bits.dtype == torch.uint8
    assert torch.equal(unpack_bits(bits, (numel,), torch.bool), circuit)
    assert torch.equal(unpack_bits(bits, (numel,), torch.float16), circuit.half())
