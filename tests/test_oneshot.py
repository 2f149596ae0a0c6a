"""wanda and sparsegpt against direct reimplementations of the papers' formulas, N:M
patterns, sequential calibration, NaN/inf refusal, and the masks as ordinary library masks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import modeopt_masks as mm
from modeopt_masks.mask_init import init_from_circuit
from modeopt_masks.modes.sparsegpt import sparsegpt_prune


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


def _data(n: int = 3, rows: int = 24, width: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, width, generator=g) for _ in range(n)]


def _fingerprint(net: nn.Module) -> dict:
    return {"classes": [(n, type(m)) for n, m in net.named_modules()],
            "tensors": {k: v.clone() for k, v in net.state_dict().items()},
            "history": len(mm.mode_history(net))}


def _same(a: dict, b: dict) -> bool:
    return (a["classes"] == b["classes"] and a["history"] == b["history"]
            and a["tensors"].keys() == b["tensors"].keys()
            and all(_bitwise(a["tensors"][k], b["tensors"][k]) for k in a["tensors"]))


def _bitwise(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal entries, NaN where NaN (a NaN weight must stay as it was too)."""
    if not a.is_floating_point():
        return torch.equal(a, b)
    return a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)


def _inputs_of(net: nn.Module, names: list[str], data: list[torch.Tensor]) -> dict:
    """Every calibration input of the named layers, concatenated (the test's own hooks)."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    mods = dict(net.named_modules())
    hs = [mods[n].register_forward_hook(lambda m, a, o, n=n: seen[n].append(a[0].detach()))
          for n in names]
    with torch.no_grad():
        for x in data:
            net(x)
    for h in hs:
        h.remove()
    return {n: torch.cat([t.reshape(-1, t.shape[-1]) for t in v]) for n, v in seen.items()}


def _wanda_reference(weight: torch.Tensor, x: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Sun et al.: S_ij = |W_ij| * ||X_j||_2; drop the lowest per output row (stable order)."""
    score = weight.abs() * x.norm(dim=0)[None]
    k = int(weight.shape[1] * sparsity)
    drop = torch.zeros_like(weight, dtype=torch.bool)
    drop.scatter_(1, torch.sort(score, dim=1, stable=True).indices[:, :k], True)
    return ~drop


LAYERS = ["0", "2", "4"]


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_wanda_one_pass_equals_the_formula(sparsity):
    net, data = _mlp(), _data()
    xs = _inputs_of(net, LAYERS, data)
    expected = {n: _wanda_reference(dict(net.named_modules())[n].weight.detach(), xs[n], sparsity)
                for n in LAYERS}
    net = mm.convert(net, ("wanda", {"nn.Linear": {"sparsity": sparsity}, "data_loader": data,
                                     "sequential": False, "progress": False}))
    for n in LAYERS:
        assert torch.equal(dict(net.named_modules())[n].weight_mask.keep, expected[n]), n


def test_wanda_sequential_uses_the_pruned_earlier_layers():
    """Layer 2 is scored on the outputs of the already pruned layer 0 (the references)."""
    net, data = _mlp(), _data()
    ref = copy.deepcopy(net)
    for n in LAYERS:  # the test's own sequential Wanda: prune, then feed forward
        layer = dict(ref.named_modules())[n]
        x = _inputs_of(ref, [n], data)[n]
        keep = _wanda_reference(layer.weight.detach(), x, 0.5)
        with torch.no_grad():
            layer.weight.mul_(keep)
        layer.keep = keep
    net = mm.convert(net, ("wanda", {"data_loader": data, "progress": False}))
    mods, ref_mods = dict(net.named_modules()), dict(ref.named_modules())
    for n in LAYERS:
        assert torch.equal(mods[n].weight_mask.keep, ref_mods[n].keep), n
    dense = mm.convert(_mlp(), ("wanda", {"data_loader": data, "progress": False,
                                          "pruned_inputs": False}))
    one_pass = mm.convert(_mlp(), ("wanda", {"data_loader": data, "progress": False,
                                             "sequential": False}))
    for n in LAYERS:  # dense inputs block by block = one pass over the unpruned model
        a, b = dict(dense.named_modules())[n], dict(one_pass.named_modules())[n]
        assert torch.equal(a.weight_mask.keep, b.weight_mask.keep)
    assert not torch.equal(mods["4"].weight_mask.keep,
                           dict(one_pass.named_modules())["4"].weight_mask.keep)


def test_wanda_layer_and_global_scope_follow_the_score():
    net, data = _mlp(), _data()
    xs = _inputs_of(net, LAYERS, data)
    scores = {n: dict(net.named_modules())[n].weight.detach().abs() * xs[n].norm(dim=0)[None]
              for n in LAYERS}
    layer = mm.convert(copy.deepcopy(net), ("wanda", {"scope": "layer", "data_loader": data,
                                                      "sequential": False, "progress": False}))
    for n in LAYERS:
        s = scores[n]
        expect = s > s.reshape(-1).kthvalue(s.numel() // 2).values
        assert torch.equal(dict(layer.named_modules())[n].weight_mask.keep, expect)
    glob = mm.convert(copy.deepcopy(net), ("wanda", {"scope": "global", "data_loader": data,
                                                     "pruned_inputs": False, "progress": False}))
    flat = torch.cat([scores[n].reshape(-1) for n in LAYERS])
    threshold = flat.kthvalue(flat.numel() // 2).values
    for n in LAYERS:
        expect = scores[n] > threshold
        got = dict(glob.named_modules())[n].weight_mask.keep
        assert torch.equal(got, expect), n
    with pytest.raises(ValueError, match="pruned_inputs=False"):
        mm.convert(copy.deepcopy(net), ("wanda", {"scope": "global", "data_loader": data}))


def _sparsegpt_reference(w, h, sparsity, block=128, damp=0.01, prune_nm=None):
    """IST-DASLab's fasterprune, with an exact count per block (unstructured) or, with
    ``prune_nm=(n, m)``, the m - n smallest of each m columns chosen when the sweep reaches
    them (on the weights as updated so far)."""
    w, h = w.clone().float(), h.clone().float()
    cols = w.shape[1]
    h[torch.arange(cols), torch.arange(cols)] += damp * torch.mean(torch.diag(h))
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    mask = torch.zeros_like(w, dtype=torch.bool)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, q1, err1 = w[:, i1:i2].clone(), torch.zeros(w.shape[0], i2 - i1), torch.zeros(
            w.shape[0], i2 - i1)
        hinv1 = hinv[i1:i2, i1:i2]
        tmp = w1 ** 2 / torch.diag(hinv1)[None] ** 2
        k = round(tmp.numel() * sparsity)
        mask1 = torch.zeros_like(tmp, dtype=torch.bool).reshape(-1)
        mask1[torch.sort(tmp.reshape(-1), stable=True).indices[:k]] = True
        mask1 = mask1.reshape(tmp.shape)
        if prune_nm is not None:
            mask1[:] = False
        for i in range(i2 - i1):
            if prune_nm is not None and i % prune_nm[1] == 0:
                n, m = prune_nm
                part = w1[:, i:i + m] ** 2 / torch.diag(hinv1)[i:i + m][None] ** 2
                order = torch.sort(part, dim=1, stable=True).indices[:, :m - n]
                mask1[:, i:i + m] = torch.zeros_like(part, dtype=torch.bool).scatter(1, order, True)
            col, d = w1[:, i], hinv1[i, i]
            q = col.clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            e = (col - q) / d
            w1[:, i:] -= e[:, None] @ hinv1[i, i:][None]
            err1[:, i] = e
        w[:, i1:i2] = q1
        mask[:, i1:i2] = mask1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return ~mask, w


def test_sparsegpt_hand_computed_case():
    """One output, two inputs, H = X^T X = [[2, 1], [1, 2]], w = [1, 3], no dampening:
    w_0 scores 1 / (H^-1)_00 = 1.5 < w_1's 9 * H_11 = 18, so w_0 goes and w_1 absorbs it:
    w_1 + w_0 * H_01 / H_11 = 3.5 (the least-squares fit of x.w by x_1 alone)."""
    net = nn.Sequential(nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 3.0]]))
    x = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    net = mm.convert(net, ("sparsegpt", {"nn.Linear": {"sparsity": 0.5, "dampening_frac": 0.0},
                                         "data_loader": [x], "progress": False}))
    assert net[0].weight_mask.keep.tolist() == [[False, True]]
    assert torch.allclose(net[0].effective_weight(), torch.tensor([[0.0, 3.5]]))
    assert net[0].weight[0, 0] == 1.0  # the pruned entry keeps its value; the mask removes it


def test_sparsegpt_equals_the_reference_and_reconstructs_better_than_masking():
    torch.manual_seed(0)
    w = torch.randn(12, 40)
    x = torch.randn(200, 40) @ torch.randn(40, 40) * 0.3  # correlated inputs
    keep, new = sparsegpt_prune(w, x.t() @ x, 0.5, block_size=16)
    ref_keep, ref_new = _sparsegpt_reference(w, x.t() @ x, 0.5, block=16)
    assert torch.equal(keep, ref_keep)
    assert torch.allclose(new, ref_new, atol=1e-4, rtol=1e-4)
    err = (x @ (new * keep).t() - x @ w.t()).square().sum()
    masked_only = (x @ (w * keep).t() - x @ w.t()).square().sum()
    assert err < 0.7 * masked_only


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_sparsegpt_n_of_m_equals_the_reference(pattern):
    n, m = map(int, pattern.split(":"))
    torch.manual_seed(1)
    w = torch.randn(10, 48)
    x = torch.randn(300, 48) @ torch.randn(48, 48) * 0.3
    keep, new = sparsegpt_prune(w, x.t() @ x, 0.5, (n, m), block_size=16)
    ref_keep, ref_new = _sparsegpt_reference(w, x.t() @ x, 0.5, block=16, prune_nm=(n, m))
    assert torch.equal(keep, ref_keep)
    assert torch.allclose(new, ref_new, atol=1e-4, rtol=1e-4)
    assert bool((keep.reshape(10, -1, m).sum(-1) == n).all())


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
@pytest.mark.parametrize("mode", ["magnitude_pruning", "wanda", "sparsegpt"])
def test_n_of_m_keeps_exactly_n_of_every_m_inputs(mode, pattern):
    n, m = map(int, pattern.split(":"))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 8))
    cfg: dict = {"nn.Linear": {"pattern": pattern}}
    if mode != "magnitude_pruning":
        cfg.update(data_loader=_data(width=16), progress=False)
    net = mm.convert(net, (mode, cfg))
    for layer in (net[0], net[2]):
        groups = layer.weight_mask.keep.reshape(layer.weight.shape[0], -1, m)  # along inputs
        assert bool((groups.sum(-1) == n).all())
    exported = mm.export(net)
    assert bool(((exported[0].weight != 0).reshape(8, -1, m).sum(-1) <= n).all())


def test_n_of_m_on_hf_conv1d_groups_the_input_axis():
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    net = nn.Sequential(Conv1D(6, 8))  # weight [in=8, out=6]
    net = mm.convert(net, ("wanda", {"hf.Conv1D": {"pattern": "2:4"},
                                     "data_loader": _data(width=8), "progress": False}))
    keep = net[0].weight_mask.keep  # [in, out]: groups of 4 consecutive inputs per output
    assert bool((keep.t().reshape(6, 2, 4).sum(-1) == 2).all())
    assert transformers is not None


def test_n_of_m_that_does_not_divide_the_inputs_fails_clearly():
    net = nn.Sequential(nn.Linear(6, 4))
    before = _fingerprint(net)
    with pytest.raises(ValueError, match="6 input features.*not a multiple of 4"):
        mm.convert(net, ("wanda", {"nn.Linear": {"pattern": "2:4"}, "data_loader": [torch.ones(2, 6)]}))
    with pytest.raises(ValueError, match="'N:M' with 0 < N < M"):
        mm.convert(net, ("sparsegpt", {"nn.Linear": {"pattern": "4:2"}, "data_loader": []}))
    assert _same(before, _fingerprint(net))


@pytest.mark.parametrize("mode", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_calibration_data_or_weights_fail_and_change_nothing(mode, bad):
    net = _mlp()
    before = _fingerprint(net)
    data = _data()
    data[1][3, 2] = bad
    with pytest.raises(ValueError, match="calibration inputs of \\['0'\\] contain NaN/inf"):
        mm.convert(net, (mode, {"data_loader": data, "progress": False}))
    assert _same(before, _fingerprint(net))
    with torch.no_grad():
        net[2].weight[1, 1] = bad
    before = _fingerprint(net)
    with pytest.raises(ValueError, match="the weight of '2' has 1 NaN/inf entry"):
        mm.convert(net, (mode, {"data_loader": _data(), "progress": False}))
    assert _same(before, _fingerprint(net))


class _Overflow(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float("inf")


def test_a_late_failure_puts_back_the_weights_sparsegpt_already_updated():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), _Overflow(), nn.Linear(8, 2))
    before = _fingerprint(net)
    with pytest.raises(ValueError, match="calibration inputs of \\['4'\\]"):
        mm.convert(net, ("sparsegpt", {"data_loader": _data(), "progress": False}))
    assert _same(before, _fingerprint(net))  # layers 0 and 2 were updated, then restored


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_nan_weights_fail_clearly_instead_of_keeping_nothing(scope):
    """Defect: 10 NaN and prune_percentage=0.95 kept 0 of 100 (global: 0 of 200)."""
    net = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    with torch.no_grad():
        net[0].weight.view(-1)[:10] = float("nan")
    before = _fingerprint(net)
    with pytest.raises(ValueError, match="magnitude_pruning: the weight of '0' has 10 NaN/inf"):
        mm.convert(net, ("magnitude_pruning", {"nn.Linear": {"prune_percentage": 0.95},
                                               "scope": scope}))
    assert _same(before, _fingerprint(net))


def test_magnitude_global_streaming_threshold_equals_the_concatenated_ranking():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 50), nn.Linear(50, 3))
    with torch.no_grad():  # many ties, across layers too
        for layer in net:
            layer.weight.copy_(torch.randint(-4, 5, layer.weight.shape).float() / 4)
    flat = torch.cat([layer.weight.detach().abs().reshape(-1) for layer in net])
    from modeopt_masks.selection import keep_largest

    expected = keep_largest(flat, 0.37)
    net = mm.convert(net, ("magnitude_pruning", {"scope": "global",
                                                 "nn.Linear": {"prune_percentage": 0.37}}))
    got = torch.cat([layer.weight_mask.keep.reshape(-1) for layer in net])
    assert torch.equal(got, expected) and int((~got).sum()) == round(0.37 * flat.numel())


@pytest.mark.parametrize("mode", ["wanda", "sparsegpt"])
def test_masks_are_ordinary_library_masks(tmp_path, mode):
    net, data = _mlp(), _data()
    x = torch.randn(5, 8)
    dense_out = net(x).detach()
    net = mm.convert(net, (mode, {"data_loader": data, "progress": False})).eval()
    masked = net(x).detach()
    stats = mm.l0_stats(net)
    assert stats["total_l0"] == sum(
        int(layer.weight_mask.keep.sum()) for layer in mm.masked_modules(net).values())
    assert stats["total_l0"] == stats["max_l0"] / 2
    mm.use_masks(net, False)
    if mode == "wanda":  # weights untouched: masks off is the original model
        assert torch.equal(net(x), dense_out)
    mm.use_masks(net, True)
    mm.set_ablation(net, "zero_ablate")
    assert not torch.allclose(net(x), masked)
    mm.set_ablation(net, "none")
    # save / restore needs no calibration data; the history keeps no data loader
    assert mm.mode_history(net)[0].config.data_loader is None
    mm.save(net, tmp_path)
    fresh = mm.restore(_mlp(), tmp_path).eval()
    assert torch.equal(fresh(x), masked)
    exported = mm.export(net)
    assert type(exported[0]) is nn.Linear
    assert torch.allclose(exported(x), masked, atol=1e-6)
    assert int((exported[0].weight == 0).sum()) >= exported[0].weight.numel() // 2


@pytest.mark.parametrize("learned", ["continuous_sparsification", "hard_concrete"])
def test_learned_masks_start_from_a_wanda_circuit(learned):
    net, data = _mlp(), _data()
    x = torch.randn(5, 8)
    net = mm.convert(net, ("wanda", {"data_loader": data, "progress": False})).eval()
    wanda_out = net(x).detach()
    circuits = {n: layer.weight_mask.circuit().clone()
                for n, layer in mm.masked_modules(net).items()}
    net = mm.convert(mm.unconvert(net), learned)
    init_from_circuit(net, circuits)
    net.eval()
    assert torch.equal(net(x), wanda_out)
    net.train()  # and the soft masks train from there
    loss = net(x).square().mean() + 1e-3 * mm.l0_loss(net)
    loss.backward()
    assert any(p.grad is not None for n, p in net.named_parameters() if "mask" in n)


def test_calibration_options_collect_func_and_max_iter():
    net = _mlp()
    seen = []
    batches = [{"x": t, "label": i} for i, t in enumerate(_data(n=5))]

    def collect(batch):
        seen.append(batch["label"])
        return batch["x"]

    mm.convert(net, ("sparsegpt", {"data_loader": batches, "collect_func": collect,
                                   "max_iter_data_loader": 2, "progress": False}))
    assert seen == [0, 1]  # two batches, once each (the first block's inputs are captured)
    with pytest.raises(ValueError, match="wanda needs calibration data"):
        mm.convert(_mlp(), "wanda")


def test_sequential_on_a_tiny_llama_matches_one_pass_on_dense_inputs():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=32)
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(cfg).eval()
    data = [{"input_ids": torch.randint(0, 64, (2, 12))} for _ in range(2)]
    common = {"data_loader": data, "progress": False}
    seq = mm.convert(copy.deepcopy(base), ("wanda", {**common, "pruned_inputs": False}))
    one = mm.convert(copy.deepcopy(base), ("wanda", {**common, "sequential": False}))
    pruned = mm.convert(copy.deepcopy(base), ("wanda", common))
    a, b, c = (mm.masked_modules(m) for m in (seq, one, pruned))
    assert list(a) == list(b) and "lm_head" not in a
    for n in a:
        assert torch.equal(a[n].weight_mask.keep, b[n].weight_mask.keep), n
    assert all(torch.equal(c[n].weight_mask.keep, b[n].weight_mask.keep)
               for n in c if n.startswith("model.layers.0."))
    assert not all(torch.equal(c[n].weight_mask.keep, b[n].weight_mask.keep)
                   for n in c if n.startswith("model.layers.1."))
    assert seq.config.use_cache == base.config.use_cache  # put back
