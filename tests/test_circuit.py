"""CircuitModel / CircuitConfig: the NeuroSurgeon interface on mm.convert."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from conftest import tiny_bert, tiny_gpt2

import modeopt_masks as mm
from modeopt_masks.circuit import CircuitConfig, CircuitModel
from modeopt_masks.masking import MaskTechnique

TARGETS = {
    "bert": ["bert.encoder.layer.0.attention.self.query", "*.output.dense"],
    "gpt2": ["transformer.h.0.attn.c_attn", "*.mlp.c_fc"],
}
HPARAMS = {
    "continuous_sparsification": {"mask_init_value": 0.2},
    "hard_concrete": {"mask_init_percentage": 0.8},
    "magnitude_pruning": {"prune_percentage": 0.3},
}


def _model(arch):
    model, inputs = {"bert": tiny_bert, "gpt2": tiny_gpt2}[arch]()
    model.train()  # a freshly built HF model trains with dropout on
    labels = torch.tensor([0, 2]) if arch == "bert" else inputs["input_ids"]
    return model, {**inputs, "labels": labels}


def _circuit(arch, method="continuous_sparsification", **kw):
    model, inputs = _model(arch)
    cfg = CircuitConfig(mask_method=method, target_layers=TARGETS[arch],
                        mask_hparams=HPARAMS[method], **kw)
    return CircuitModel(cfg, model), inputs


def _mask_params(module):
    return {id(p) for m in module.modules() if isinstance(m, MaskTechnique)
            for p in m.parameters()}


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@pytest.mark.parametrize("method", ["continuous_sparsification", "hard_concrete"])
def test_loss_includes_exactly_lambda_times_l0(arch, method):
    circuit, inputs = _circuit(arch, method, l0_lambda=1e-3)
    circuit.train()
    torch.manual_seed(5)
    out = circuit(**inputs)
    torch.manual_seed(5)  # same hard-concrete draws; base dropout is off (freeze_base)
    task = circuit.wrapped_model(**inputs).loss
    l0 = mm.l0_loss(circuit.wrapped_model)
    assert float(l0.detach()) > 100  # the term is not negligible
    assert torch.equal(out.loss, task + 1e-3 * l0)
    # tuple outputs (return_dict=False) get the same term on their first element
    torch.manual_seed(5)
    out_t = circuit(**inputs, return_dict=False)
    assert isinstance(out_t, tuple) and torch.equal(out_t[0], out.loss)
    # no term in eval, nor with add_l0=False
    circuit.eval()
    assert torch.equal(circuit(**inputs).loss, circuit.wrapped_model(**inputs).loss)
    circuit.config.add_l0 = False
    circuit.train()
    torch.manual_seed(5)
    assert torch.equal(circuit(**inputs).loss, task)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_base_gets_no_gradient_and_stays_unchanged_through_an_optimiser_step(arch):
    circuit, inputs = _circuit(arch, l0_lambda=1e-4)
    circuit.train()
    mask_ids = _mask_params(circuit)
    base = {n: p.detach().clone() for n, p in circuit.named_parameters() if id(p) not in mask_ids}
    masks = {n: p.detach().clone() for n, p in circuit.named_parameters() if id(p) in mask_ids}
    assert masks and len(base) > 10
    opt = torch.optim.AdamW(circuit.parameters(), lr=0.1, weight_decay=0.1)
    circuit(**inputs).loss.backward()
    for n, p in circuit.named_parameters():
        if id(p) in mask_ids:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None and not p.requires_grad, n
    opt.step()
    params = dict(circuit.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in base.items())
    assert all(not torch.equal(params[n], v) for n, v in masks.items())


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_freeze_base_keeps_dropout_off_after_train(arch):
    circuit, inputs = _circuit(arch)
    circuit.eval().train()
    dropouts = [m for m in circuit.modules() if isinstance(m, nn.Dropout)]
    techniques = [m for m in circuit.modules() if isinstance(m, MaskTechnique)]
    assert dropouts and not any(m.training for m in dropouts)
    assert techniques and all(m.training for m in techniques)
    assert circuit.training
    a, b = circuit(**inputs).logits, circuit(**inputs).logits
    assert torch.equal(a, b)  # no dropout noise (continuous sparsification is deterministic)
    # without freeze_base the base trains: dropout on, forwards differ, base has gradients
    free, _ = _circuit(arch, freeze_base=False)
    free.train()
    assert any(m.training for m in free.modules() if isinstance(m, nn.Dropout))
    assert not torch.equal(free(**inputs).logits, free(**inputs).logits)
    assert all(p.requires_grad for p in free.parameters())


def test_targets_exact_names_and_globs_convert_exactly_those_layers():
    circuit, _ = _circuit("bert")
    expected = ["bert.encoder.layer.0.attention.self.query"] + [
        f"bert.encoder.layer.{i}.{part}.dense" for i in range(2) for part in
        ("attention.output", "output")
    ]
    assert sorted(circuit.masked_layers()) == sorted(expected)
    assert [s.mode for s in mm.mode_history(circuit.wrapped_model)] == [
        "continuous_sparsification"]
    # explicit globs include output heads when they match
    model, _ = _model("bert")
    c2 = CircuitModel(CircuitConfig(target_layers=["classifier"]), model)
    assert c2.masked_layers() == ["classifier"]


def test_bad_targets_and_hparams_raise_clearly_and_leave_model_unchanged():
    model, inputs = _model("gpt2")
    state = copy.deepcopy(model.state_dict())
    cls_before = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(ValueError, match="matches no module.*transformer.h.0.attn.c_attn"):
        CircuitModel(CircuitConfig(target_layers=["transformer.h.0.attn.c_atn"]), model)
    with pytest.raises(ValueError, match="unsupported.*Embedding"):
        CircuitModel(CircuitConfig(target_layers=["transformer.wte"]), model)
    with pytest.raises(ValueError, match="drop '.weight'"):
        CircuitModel(CircuitConfig(target_layers=["transformer.h.0.attn.c_attn.weight"]), model)
    with pytest.raises(ValueError, match="valid keys"):
        CircuitConfig(mask_method="magnitude_pruning", target_layers=["x"],
                      mask_hparams={"mask_init_value": 0.0})
    with pytest.raises(ValueError):
        CircuitConfig(mask_method="magnitude_pruning", target_layers=["x"],
                      mask_hparams={"prune_percentage": 1.5})
    with pytest.raises(ValueError, match="ablation"):
        CircuitConfig(target_layers=["x"], mask_hparams={"ablation": "zero"})
    with pytest.raises(ValueError, match="non-empty"):
        CircuitConfig(target_layers=[""])
    assert {n: type(m) for n, m in model.named_modules()} == cls_before
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_l0_statistics_are_hard_counts_and_leave_train_state_alone():
    circuit, _ = _circuit("bert", "hard_concrete")
    circuit.train()
    stats = circuit.compute_l0_statistics()
    assert set(stats) == {"total_l0", "max_l0", "layer2l0", "layer2maxl0"}
    layers = mm.masked_modules(circuit.wrapped_model)
    for name, layer in layers.items():
        assert stats["layer2l0"][name] == float(layer.weight_mask.circuit().sum())
        assert stats["layer2maxl0"][name] == layer.weight.numel()
    assert stats["total_l0"] == sum(stats["layer2l0"].values())
    assert stats["max_l0"] == sum(stats["layer2maxl0"].values())
    assert all(m.training for m in circuit.modules() if isinstance(m, MaskTechnique))


def test_temperature_property():
    circuit, _ = _circuit("gpt2")
    assert circuit.temperature == 1.0
    circuit.temperature = 7.5
    temps = {m.temperature for m in circuit.modules() if isinstance(m, MaskTechnique)}
    assert temps == {7.5} and circuit.temperature == 7.5
    with pytest.raises(ValueError):
        circuit.temperature = -1.0
    mp, _ = _circuit("gpt2", "magnitude_pruning")
    assert mp.temperature is None
    with pytest.warns(UserWarning, match="no temperature"):
        mp.temperature = 3.0


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_ablation_and_use_masks_plumb_through(arch):
    model, inputs = _model(arch)
    model.eval()
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    ref = model(**inputs).logits
    cfg = CircuitConfig(mask_method="magnitude_pruning", target_layers=TARGETS[arch],
                        mask_hparams={"prune_percentage": 0.6})
    circuit = CircuitModel(cfg, model).eval()
    masked = circuit(**inputs).logits
    assert not torch.allclose(masked, ref)
    name = TARGETS[arch][0]
    layer = mm.masked_modules(circuit.wrapped_model)[name]
    circuit.set_ablate_mode("zero_ablate")
    assert all(m.ablation == "zero_ablate" for m in mm.masked_modules(model).values())
    keep = layer.weight_mask.keep
    assert torch.equal(layer.effective_weight(), layer.weight * (~keep).float())
    ablated = circuit(**inputs).logits
    circuit.set_ablate_mode("randomly_sampled")
    first = layer.effective_weight().clone()
    assert torch.equal(layer.effective_weight(), first)
    circuit.set_ablate_mode("randomly_sampled", force_resample=True)
    assert not torch.equal(layer.effective_weight(), first)
    circuit.set_ablate_mode("none")
    assert torch.equal(circuit(**inputs).logits, masked) and not torch.equal(ablated, masked)
    # use_masks: a named layer (with or without the wrapped_model. prefix), then all
    circuit.use_masks(False, ["wrapped_model." + name])
    assert torch.equal(layer.effective_weight(), layer.weight)
    others = [m for n, m in mm.masked_modules(model).items() if n != name]
    assert all(not torch.equal(m.effective_weight(), m.weight) for m in others)
    circuit.use_masks(False)
    assert torch.equal(circuit(**inputs).logits, ref)
    circuit.use_masks(True, name_list=[name])
    assert not torch.equal(layer.effective_weight(), layer.weight)
    with pytest.raises(ValueError, match="masked layers"):
        circuit.use_masks(True, ["nope"])
    with pytest.raises(ValueError, match="ablation"):
        circuit.set_ablate_mode("nope")


def test_initial_ablation_from_hparams_and_export():
    model, inputs = _model("bert")
    cfg = CircuitConfig(mask_method="magnitude_pruning", target_layers=["*.output.dense"],
                        mask_hparams={"ablation": "zero_ablate", "scope": "global"})
    circuit = CircuitModel(cfg, model).eval()
    assert all(m.ablation == "zero_ablate" for m in mm.masked_modules(model).values())
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    y = circuit(**inputs).logits
    plain = circuit.export()
    assert not mm.masked_modules(plain) and torch.equal(plain(**inputs).logits, y)
