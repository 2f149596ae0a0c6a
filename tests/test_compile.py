"""``torch.compile`` of converted models gives what eager gives, for every mask mode.

The default backend here is ``aot_eager`` (dynamo tracing + AOT autograd, no
code generation: cheap on a 2-core machine). Inductor gives the same results
(hard concrete training needs ``torch._inductor.config.fallback_random = True``,
because inductor's own RNG draws different noise than eager); it costs ~10-20 s of
C++ compilation here, so that test runs only with ``MODEOPT_MASKS_TEST_INDUCTOR=1``.
A new mode = one entry in ``MODES``. ``gradnas`` (structured unit masks, no
learnable mask) has its own tests at the end: a masked (searched, unexported)
model in eval and training, a selection changed after compiling, scoring
through a compiled model, and the exported (physically smaller) model.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn

import modeopt_masks as mm

BACKEND = "aot_eager"
MODES = {
    "continuous_sparsification": {"nn.Linear": {"mask_init_value": 0.1, "mask_bias": True}},
    "hard_concrete": {"nn.Linear": {"mask_init_percentage": 0.6, "mask_bias": True}},
    "magnitude_pruning": {"nn.Linear": {"prune_percentage": 0.4, "mask_bias": True}},
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(mode: str) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    net = mm.convert(net, (mode, MODES[mode]))
    if mode == "continuous_sparsification":  # a mixed eval circuit of ~1/3 of the entries
        with torch.no_grad():
            for layer in mm.masked_modules(net).values():
                for _, tech in layer._mask_modules():
                    tech.logits.view(-1)[1::3] = tech.logits.view(-1)[2::3] = -0.1
    return net


def _grads(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", MODES)
def test_eval_matches_eager_without_graph_breaks(mode):
    net = _model(mode).eval()
    compiled = torch.compile(net, backend=BACKEND, fullgraph=True)  # a graph break would raise
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.equal(compiled(x), net(x))
        # a mask changed in place after compiling: the compiled model follows
        # (the eager eval cache is bypassed while compiling)
        layer = net[0]
        tensor = next(iter(layer.weight_mask.parameters()), None)
        if tensor is None:
            layer.weight_mask.keep.view(-1)[:5] = ~layer.weight_mask.keep.view(-1)[:5]
        else:
            tensor.neg_()
        assert torch.equal(compiled(x), net(x))
        mm.use_masks(net, False)
        assert torch.equal(compiled(x), nn.functional.linear(
            torch.relu(nn.functional.linear(x, net[0].weight, net[0].bias)),
            net[2].weight, net[2].bias))


@pytest.mark.parametrize("mode", MODES)
def test_training_outputs_and_grads_match_eager(mode):
    net = _model(mode).train()
    compiled = torch.compile(net, backend=BACKEND, fullgraph=True)
    x = torch.randn(5, 8)
    temps = (1.0, 7.0) if mode != "magnitude_pruning" else (None,)
    for temp in temps:  # a new temperature (a Python float) must not reuse a stale graph
        if temp is not None:
            mm.set_temperature(net, temp)
        net.zero_grad()
        torch.manual_seed(1)  # the same hard concrete noise in both runs
        out_c = compiled(x)
        (out_c.square().sum() + 1e-2 * mm.l0_loss(net)).backward()
        grads_c = _grads(net)
        net.zero_grad()
        torch.manual_seed(1)
        out_e = net(x)
        (out_e.square().sum() + 1e-2 * mm.l0_loss(net)).backward()
        grads_e = _grads(net)
        torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-6)
        assert grads_c.keys() == grads_e.keys() and grads_c
        for name in grads_e:
            torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-5, atol=1e-6)
    if mode != "magnitude_pruning":
        mask_grads = [n for n in grads_e if "_mask." in n]
        assert mask_grads, "masks must get gradients through the compiled graph"


@pytest.mark.parametrize("mode", MODES)
def test_ablations_match_eager(mode):
    """Draws are made once (eagerly, behind a graph break) and shared by eager and compiled."""
    net = _model(mode).eval()
    if mode == "hard_concrete":  # a circuit of ~1/3: |circuit| <= |complement|
        with torch.no_grad():
            for layer in mm.masked_modules(net).values():
                for _, tech in layer._mask_modules():
                    tech.log_alpha.view(-1)[1::3] = tech.log_alpha.view(-1)[2::3] = -1.0
    if mode == "magnitude_pruning":
        net = mm.convert(mm.unconvert(net), (mode, {"nn.Linear": {"prune_percentage": 0.6}}))
        net.eval()
    compiled = torch.compile(net, backend=BACKEND)
    x = torch.randn(5, 8)
    with torch.no_grad():
        plain = net(x)
        for ablation in ("zero_ablate", "randomly_sampled", "complement_sampled", "random_ablate"):
            mm.set_ablation(net, ablation)
            ref = net(x)
            assert not torch.equal(ref, plain), ablation
            assert torch.equal(compiled(x), ref), ablation
            assert torch.equal(compiled(x), ref), ablation  # the same draw on every call
            mm.set_ablation(net, ablation, force_resample=True)
            if ablation != "zero_ablate":  # a resample is seen by both
                redrawn = compiled(x)
                assert not torch.equal(redrawn, ref) and torch.equal(net(x), redrawn), ablation
        mm.set_ablation(net, "none")
        assert torch.equal(compiled(x), plain)  # no ablation stuck in a graph


@pytest.mark.skipif(os.environ.get("MODEOPT_MASKS_TEST_INDUCTOR") != "1",
                    reason="inductor compiles C++ (~10-20 s); set MODEOPT_MASKS_TEST_INDUCTOR=1")
@pytest.mark.parametrize("mode", MODES)
def test_inductor(mode, monkeypatch):
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    net = _model(mode)
    compiled = torch.compile(net)
    x = torch.randn(5, 8)
    torch.manual_seed(1)
    out_c = compiled(x)
    torch.manual_seed(1)
    torch.testing.assert_close(out_c, net(x))
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x))


# -- gradnas --------------------------------------------------------------------------------
def _gradnas_mlp() -> nn.Module:
    from modeopt_masks.structured import gradnas_hparams

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(),
                        nn.Linear(12, 4))
    net = mm.convert(net, ("gradnas", {"nn.Linear": {"divisor": 2}}))
    hps = gradnas_hparams(net)
    hps["0"].keep([0, 3, 4, 7, 9, 10, 13, 15])
    hps["2"].keep(list(range(2, 12)))
    return net


def test_gradnas_masked_eval_and_training_match_eager():
    from modeopt_masks.structured import gradnas_hparams

    net = _gradnas_mlp()
    compiled = torch.compile(net, backend=BACKEND, fullgraph=True)
    x = torch.randn(5, 8)
    net.eval()
    with torch.no_grad():
        masked = net(x)
        assert torch.equal(compiled(x), masked)
        # a new selection after compiling is followed (a recompile, not a stale graph)
        hps = gradnas_hparams(net)
        hps["0"].keep(list(range(16)))
        full = net(x)
        assert not torch.equal(full, masked) and torch.equal(compiled(x), full)
        hps["0"].keep([1, 2])
        assert torch.equal(compiled(x), net(x))
    net.train()
    for run in (compiled, net):
        net.zero_grad()
        run(x).square().sum().backward()
        if run is compiled:
            grads_c = _grads(net)
    grads_e = _grads(net)
    assert grads_c.keys() == grads_e.keys() and grads_e
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-5, atol=1e-6)
    # pruned units get no gradient through either graph
    assert bool((grads_e["0.weight"][[0, 3]] == 0).all())


def test_gradnas_exported_matches_eager():
    net = _gradnas_mlp().eval()
    x = torch.randn(5, 8)
    with torch.no_grad():
        masked = net(x)
    exported = mm.export(net)
    assert exported[0].out_features == 8 and exported[2].out_features == 10
    compiled = torch.compile(exported, backend=BACKEND, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), masked, rtol=1e-6, atol=1e-6)
        assert torch.equal(compiled(x), exported(x))


def test_gradnas_hf_model_scores_and_outputs_through_compile():
    """A tiny BERT: compiled masked outputs, scores collected through the compiled model, and
    the compiled exported model all equal eager."""
    pytest.importorskip("transformers")
    from gradnas_helpers import loader, loss_of, make_input, make_model, output_tensor

    from modeopt_masks.structured import collect_scores, gradnas_hparams

    net = mm.convert(make_model("bert"), "gradnas")
    for hp in gradnas_hparams(net).values():
        hp.set_active(hp.choices[len(hp.choices) // 2])
    x = make_input("bert")
    compiled = torch.compile(net, backend=BACKEND)
    with torch.no_grad():
        eager = output_tensor(net(**x))
        assert torch.equal(output_tensor(compiled(**x)), eager)
    through = collect_scores(compiled, loader("bert"), loss_func=loss_of(), progress=False)
    plain = collect_scores(net, loader("bert"), loss_func=loss_of(), progress=False)
    assert through.keys() == plain.keys() and len(plain) == 4
    for name in plain:
        assert plain[name].abs().sum() > 0
        torch.testing.assert_close(through[name], plain[name], rtol=1e-6, atol=1e-12)
    exported = mm.export(net)
    with torch.no_grad():
        out = output_tensor(torch.compile(exported, backend=BACKEND)(**x))
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
