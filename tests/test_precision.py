"""fp16 / bf16 and dtype/device moves: masks, L0 and gradients stay finite; draws survive moves.

Runs on CPU; the device-move test also runs on CUDA where one is present.
``gradnas`` (unit masks, gradient scores, physical export) has its own tests at the end.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import modeopt_masks as mm

DTYPES = (torch.float16, torch.bfloat16)
LEARNABLE = ("continuous_sparsification", "hard_concrete")
ALL_MODES = (*LEARNABLE, "magnitude_pruning")
DRAWN = ("random_ablate", "randomly_sampled", "complement_sampled")


def _model(mode: str, **rule) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return mm.convert(net, (mode, {"nn.Linear": {"mask_bias": True, **rule}}))


def _mask_param(tech) -> torch.Tensor:
    return tech.logits if hasattr(tech, "logits") else tech.log_alpha


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.float()).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ALL_MODES)
def test_to_dtype_carries_masks(mode, dtype):
    net = _model(mode)
    x = torch.randn(6, 8)
    net.eval()
    with torch.no_grad():
        ref = net(x)  # fills the eval cache in fp32
    stats = mm.l0_stats(net)
    before = {n: t.clone() for n, t in net.state_dict().items()}
    net.to(dtype)
    for name, tensor in net.state_dict().items():
        expected = dtype if before[name].is_floating_point() else before[name].dtype
        assert tensor.dtype == expected, name  # masks moved with the model (bool keeps stay)
        assert torch.equal(tensor.float(), before[name].to(dtype).float()), name
    with torch.no_grad():
        out = net(x.to(dtype))
    assert out.dtype == dtype  # no stale fp32 cache
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    assert mm.l0_stats(net) == stats  # the same hard circuits after the cast


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", LEARNABLE)
@pytest.mark.parametrize("temperature", [1e-4, 1.0, 1e4])
@pytest.mark.parametrize("extreme", [None, "huge", "tiny", "mixed"])
def test_training_stays_finite(mode, dtype, temperature, extreme):
    net = _model(mode).to(dtype)
    top = float(torch.finfo(dtype).max) / 2
    with torch.no_grad():
        for layer in mm.masked_modules(net).values():
            for _, tech in layer._mask_modules():
                param = _mask_param(tech)
                if extreme == "huge":
                    param.fill_(top)
                elif extreme == "tiny":
                    param.fill_(-top)
                elif extreme == "mixed":
                    param.copy_(torch.where(torch.rand(param.shape) > 0.5, top, -top).to(dtype))
    mm.set_temperature(net, temperature)
    net.train()
    x = torch.randn(6, 8, dtype=dtype)
    for _ in range(3):  # hard concrete draws fresh noise each call
        masks = [tech.mask() for layer in mm.masked_modules(net).values()
                 for _, tech in layer._mask_modules()]
        assert all(_finite(m) and m.min() >= 0 and m.max() <= 1 for m in masks)
        out = net(x)
        l0 = mm.l0_loss(net)
        assert _finite(out) and _finite(l0)
        assert 0 <= float(l0.detach()) <= mm.l0_stats(net)["max_l0"]
        net.zero_grad()
        (out.float().square().mean() + 1e-3 * l0).backward()
        for name, p in net.named_parameters():
            assert p.grad is not None and _finite(p.grad), name
    net.eval()
    stats = mm.l0_stats(net)
    assert _finite(torch.tensor(stats["total_l0"]))
    if extreme == "huge":
        assert stats["total_l0"] == stats["max_l0"]
    if extreme == "tiny":
        assert stats["total_l0"] == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", LEARNABLE)
def test_autocast_training_keeps_fp32_masks(mode, dtype):
    """Mixed precision the usual way: fp32 masks, low-precision matmuls, finite fp32 grads."""
    net = _model(mode).train()
    x = torch.randn(6, 8)
    with torch.autocast("cpu", dtype=dtype):
        out = net(x)
        loss = out.float().square().mean() + 1e-3 * mm.l0_loss(net)
    assert out.dtype == dtype
    loss.backward()
    for layer in mm.masked_modules(net).values():
        param = _mask_param(layer.weight_mask)
        assert param.dtype == torch.float32 and param.grad is not None and _finite(param.grad)
        assert param.grad.abs().sum() > 0


def _with_circuit(mode: str) -> nn.Module:
    net = _model(mode, **({"prune_percentage": 0.6} if mode == "magnitude_pruning" else {}))
    with torch.no_grad():
        for layer in mm.masked_modules(net).values():
            for _, tech in layer._mask_modules():
                if mode != "magnitude_pruning":  # a circuit of ~1/3 of the entries
                    param = _mask_param(tech)
                    param.fill_(1.0)
                    param.view(-1)[1::3] = param.view(-1)[2::3] = -1.0
    return net.eval()


def _draws(net: nn.Module) -> dict:
    out = {}
    for name, layer in mm.masked_modules(net).items():
        for key, tensor in layer._mm_random.items():
            out[(name, "random", key)] = tensor.detach().cpu().float().clone()
        for key, (_version, tensor) in layer._mm_sampled.items():
            out[(name, "sampled", key)] = tensor.detach().cpu().clone()
    return out


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("mode", ALL_MODES)
def test_moves_keep_ablation_draws(mode, device):
    """``.to(dtype)``, ``.to(device)`` and back keep the drawn subnetworks (no silent redraw)."""
    net = _with_circuit(mode)
    x = torch.randn(6, 8)
    refs = {}
    with torch.no_grad():
        for ablation in DRAWN:
            mm.set_ablation(net, ablation)
            refs[ablation] = net(x)
    draws = _draws(net)
    assert {k[1] for k in draws} == {"random", "sampled"}
    net.to(device).to(torch.float64)
    with torch.no_grad():
        for ablation in DRAWN:
            mm.set_ablation(net, ablation)
            out = net(x.to(device, torch.float64))
            torch.testing.assert_close(out.float().cpu(), refs[ablation], rtol=1e-5, atol=1e-5)
    net.to("cpu").to(torch.bfloat16).float()
    after = _draws(net)
    assert after.keys() == draws.keys()
    for key, tensor in draws.items():
        if key[1] == "sampled":
            assert torch.equal(after[key], tensor), key
        else:  # random_ablate draws are values: they round through bf16
            torch.testing.assert_close(after[key], tensor, rtol=1e-2, atol=1e-2)
    # the draws can still be replaced on purpose
    mm.set_ablation(net, "randomly_sampled", force_resample=True)
    with torch.no_grad():
        assert not torch.equal(net(x), refs["randomly_sampled"])


def test_force_resample_replaces_a_cached_eval_draw():
    """Regression: under no_grad the eval cache used to return the old draw after a resample."""
    net = _with_circuit("continuous_sparsification")
    x = torch.randn(6, 8)
    with torch.no_grad():
        for ablation in DRAWN:
            mm.set_ablation(net, ablation)
            first = net(x)
            assert torch.equal(net(x), first)  # cached, same draw
            mm.set_ablation(net, ablation, force_resample=True)
            assert not torch.equal(net(x), first), ablation


# -- gradnas --------------------------------------------------------------------------------
GRADNAS_FAMILIES = ("bert", "llama", "plain_conv")


def _cast(batch: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradnas_to_dtype_carries_the_selection(dtype):
    from modeopt_masks.structured import gradnas_hparams

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    net = mm.convert(net, "gradnas")
    gradnas_hparams(net)["0"].keep([1, 2, 5, 8, 13])
    x = torch.randn(6, 8)
    with torch.no_grad():
        ref = net(x)
    net.to(dtype)
    hp = gradnas_hparams(net)["0"]
    assert hp.kept == [1, 2, 5, 8, 13]
    assert hp.module._mm_unit_mask.dtype == dtype
    with torch.no_grad():
        out = net(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    hp.keep([0, 1])  # a new selection after the cast keeps the dtype
    assert hp.module._mm_unit_mask.dtype == dtype
    assert int(hp.module._mm_unit_mask.float().sum()) == 2
    with torch.no_grad():
        masked = net(x.to(dtype))
    exported = mm.export(net)
    assert exported[0].weight.dtype == dtype and exported[0].out_features == 2
    with torch.no_grad():
        assert torch.equal(exported(x.to(dtype)), masked)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", GRADNAS_FAMILIES)
def test_gradnas_low_precision_scores_finite_and_export_matches(family, dtype):
    """Scoring and search of a model held in fp16/bf16: finite, non-zero scores, 0/1 masks,
    and the exported model computes what the masked one did."""
    pytest.importorskip("transformers")
    from gradnas_helpers import loader, loss_of, make_input, make_model, output_tensor

    from modeopt_masks.structured import gradnas_hparams

    net = make_model(family).to(dtype)
    data = [_cast(b, dtype) for b in loader(family)]
    net, result = mm.prune(net, "gradnas", constraints={"params": "80%"},
                           config={"data_loader": data, "loss_func": loss_of(), "progress": False})
    assert result.constraints["params"]["ratio"] <= 0.8
    for name, hp in gradnas_hparams(net).items():
        scores = hp.importance
        assert scores is not None and _finite(scores) and scores.min() >= 0, name
        assert scores.sum() > 0, name
        mask = hp.module._mm_unit_mask
        assert mask.dtype == dtype and set(mask.float().unique().tolist()) <= {0.0, 1.0}, name
        assert int(mask.float().sum()) == hp.active, name
    assert any(hp.active < hp.n_units for hp in gradnas_hparams(net).values())
    x = _cast(make_input(family), dtype)
    with torch.no_grad():
        masked = output_tensor(net(**x))
        exported = mm.export(net)
        out = output_tensor(exported(**x))
    assert _finite(masked) and out.dtype == dtype
    torch.testing.assert_close(out.float(), masked.float(), rtol=1e-2, atol=1e-2)


def test_gradnas_overflowing_scores_raise_clearly_and_leave_the_model():
    """An fp16 loss that overflows gives inf gradients: a clear error, not an inf-driven
    selection; ``prune`` undoes its conversion."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).to(torch.float16)
    data = [(torch.randn(4, 8, dtype=torch.float16),) for _ in range(2)]
    with pytest.raises(ValueError, match=r"scores of \['0'\] are not finite.*fp16"):
        mm.prune(net, "gradnas", constraints={"params": "70%"}, config={
            "data_loader": data, "loss_func": lambda out, b: out.pow(2).sum() * 6e4,
            "progress": False})
    assert not mm.mode_history(net) and type(net[2]) is nn.Linear
