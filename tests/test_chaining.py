"""Converting twice, chaining modes, exporting twice, restoring into renamed modules:
each either works or fails with a message that says what to do, and a failure
leaves the model as it was.

``MODES`` is read from the mode registry, so a new mask mode is tested without editing this
file. ``gradnas`` (structured; no successors before export) has its own tests at the end.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn

import modeopt_masks as mm

#: every registered mask mode (the modes without a searcher; gradnas is tested at the end)
MODES = tuple(m for m in mm.available_modes() if not mm.get_mode(m).search_algorithm)


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _fingerprint(net: nn.Module) -> dict:
    return {
        "classes": [(n, type(m)) for n, m in net.named_modules()],
        "history": [(s.mode, s.config) for s in mm.mode_history(net)],
        "tensors": {k: v.clone() for k, v in net.state_dict().items()},
        "grad": {n: p.requires_grad for n, p in net.named_parameters()},
        "training": [m.training for m in net.modules()],
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a["classes"] == b["classes"]
    assert a["history"] == b["history"]
    assert a["grad"] == b["grad"] and a["training"] == b["training"]
    assert a["tensors"].keys() == b["tensors"].keys()
    for k in a["tensors"]:
        assert torch.equal(a["tensors"][k], b["tensors"][k]), k


def _eval(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize(("first", "second"), list(itertools.product(MODES, MODES)))
def test_a_second_mode_on_a_converted_model_fails_clearly(first, second):
    net = mm.convert(_net(), first)
    allowed = mm.get_mode(first).next_modes
    if second in allowed:
        pytest.skip(f"{second} may follow {first}")
    before = _fingerprint(net)
    with pytest.raises(ValueError, match=rf"mode '{second}' may not follow '{first}'.*"
                                         r"mm.export\(model\) or mm.unconvert\(model\)"):
        mm.convert(net, second)
    _assert_same(before, _fingerprint(net))


@pytest.mark.parametrize(("first", "second"), list(itertools.product(MODES, MODES)))
def test_a_list_that_chains_disallowed_modes_is_atomic(first, second):
    net = _net()
    before = _fingerprint(net)
    if second in mm.get_mode(first).next_modes:
        pytest.skip(f"{second} may follow {first}")
    with pytest.raises(ValueError, match="may not follow"):
        mm.convert(net, [first, (second, {})])
    _assert_same(before, _fingerprint(net))  # the first mode was undone too


def test_no_mode_declares_a_successor():
    """Chaining is refused before export for every registered mode (the tests above rely on
    it); a mode that declares successors must come with a test that they convert on top."""
    assert {m: mm.get_mode(m).next_modes for m in mm.available_modes()} == {
        m: () for m in mm.available_modes()}


@pytest.mark.parametrize("mode", MODES)
def test_converting_a_part_then_the_whole_fails_clearly(mode):
    net = _net()
    mm.convert(net[0], mode)  # the submodule carries its own history
    before = _fingerprint(net)
    with pytest.raises(ValueError, match="'0' is already converted; export or unconvert first"):
        mm.convert(net, mode)
    _assert_same(before, _fingerprint(net))
    assert not mm.mode_history(net) and type(net[2]) is nn.Linear


@pytest.mark.parametrize("mode", MODES)
def test_export_twice_and_convert_again(mode):
    net = mm.convert(_net(), (mode, {"freeze_base": True}))
    x = torch.randn(4, 6)
    ref = _eval(net, x)
    net.train()
    net = mm.export(net)
    assert [type(m) for m in net.modules()] == [nn.Sequential, nn.Linear, nn.ReLU, nn.Linear]
    assert not mm.mode_history(net)
    assert all(p.requires_grad for p in net.parameters())  # freeze_base undone
    assert net.training and all(m.training for m in net.modules())  # as the user asked last
    assert torch.equal(_eval(net, x), ref)
    before = _fingerprint(net)
    with pytest.raises(ValueError, match="no modes to export"):
        mm.export(net)
    _assert_same(before, _fingerprint(net))
    # a new round on the exported model: the earlier zeros stay zeros
    zeros = net[0].weight == 0
    net = mm.export(mm.convert(net, "magnitude_pruning"))
    assert bool((net[0].weight[zeros] == 0).all())
    assert int((net[0].weight == 0).sum()) >= int(zeros.sum())


@pytest.mark.parametrize("mode", MODES)
def test_unconvert_twice_is_harmless(mode):
    net = _net()
    before = _fingerprint(net)
    mm.unconvert(mm.convert(net, mode))
    _assert_same(before, _fingerprint(net))
    mm.unconvert(net)  # nothing to undo: the plain model comes back as it is
    _assert_same(before, _fingerprint(net))


def test_unknown_mode_and_malformed_mode_arguments():
    net = _net()
    before = _fingerprint(net)
    with pytest.raises(ValueError, match="unknown mode 'hardconcrete'; registered modes: .*"
                                         "hard_concrete"):
        mm.convert(net, "hardconcrete")
    with pytest.raises(TypeError, match=r"a mode is a name, a \(name, config\) pair"):
        mm.convert(net, ("hard_concrete", {}, "extra"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="may not follow"):
        mm.convert(net, ["hard_concrete", "hard_concrete"])
    _assert_same(before, _fingerprint(net))


# -- restore into other module names -------------------------------------------------------
class Renamed(nn.Module):
    """The same layers as ``_net`` under other names (as a library upgrade might rename them)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc_in, self.act, self.fc_out = nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))


@pytest.mark.parametrize("mode", MODES)
def test_restore_into_renamed_modules_fails_clearly(tmp_path, mode):
    mm.save(mm.convert(_net(), mode), tmp_path)
    fresh = Renamed()
    before = _fingerprint(fresh)
    with pytest.raises(mm.StateError, match=r"saved masked layers \['0', '2'\].*"
                                            r"\['fc_in', 'fc_out'\]"):
        mm.restore(fresh, tmp_path)
    _assert_same(before, _fingerprint(fresh))


def test_restore_with_a_user_glob_that_matches_nothing_fails_clearly(tmp_path):
    mm.save(mm.convert(_net(), ("hard_concrete", {"nn.Linear": {"2": {}}})), tmp_path)
    fresh = Renamed()
    before = _fingerprint(fresh)
    with pytest.raises(mm.StateError, match="does not fit.*match no module"):
        mm.restore(fresh, tmp_path)
    _assert_same(before, _fingerprint(fresh))


def test_restore_hf_head_model_into_base_model_fails_clearly(tmp_path):
    """Module names with and without the ``transformer.`` prefix (head vs base model)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16)
    torch.manual_seed(0)
    mm.save(mm.convert(transformers.GPT2LMHeadModel(cfg), "continuous_sparsification"), tmp_path)
    base = transformers.GPT2Model(cfg)
    before = _fingerprint(base)
    with pytest.raises(mm.StateError, match=r"transformer\.h\.0\.attn\.c_attn.*'h\.0\.attn\.c_attn'"):
        mm.restore(base, tmp_path)
    _assert_same(before, _fingerprint(base))
    # the matching architecture restores fine
    torch.manual_seed(1)
    ok = mm.restore(transformers.GPT2LMHeadModel(cfg), tmp_path)
    assert "transformer.h.0.attn.c_attn" in mm.masked_modules(ok)


def test_restore_into_a_converted_model_and_chaining_after_restore(tmp_path):
    mm.save(mm.convert(_net(), "hard_concrete"), tmp_path)
    converted = mm.convert(_net(1), "continuous_sparsification")
    before = _fingerprint(converted)
    with pytest.raises(mm.StateError, match="already converted"):
        mm.restore(converted, tmp_path)
    _assert_same(before, _fingerprint(converted))
    restored = mm.restore(_net(2), tmp_path)
    with pytest.raises(ValueError, match="may not follow 'hard_concrete'"):
        mm.convert(restored, "magnitude_pruning")
    assert [s.mode for s in mm.mode_history(restored)] == ["hard_concrete"]


def test_save_and_restore_a_plain_or_exported_model(tmp_path):
    net = mm.export(mm.convert(_net(), "magnitude_pruning"))
    mm.save(net, tmp_path)
    fresh = mm.restore(_net(7), tmp_path)
    x = torch.randn(3, 6)
    assert not mm.mode_history(fresh)
    assert torch.equal(_eval(fresh, x), _eval(net, x))


# -- gradnas --------------------------------------------------------------------------------
def _gnet(seed: int = 0, lead: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)]
    return nn.Sequential(*([nn.Identity()] if lead else []), *layers)


def _search_cfg() -> dict:
    g = torch.Generator().manual_seed(4)
    return {"data_loader": [(torch.randn(8, 6, generator=g),) for _ in range(2)],
            "loss_func": lambda out, b: out.pow(2).mean(), "progress": False}


def _pruned(ratio: str = "60%") -> nn.Module:
    net, _ = mm.prune(_gnet(), "gradnas", constraints={"params": ratio}, config=_search_cfg())
    return net


@pytest.mark.parametrize("second", [*MODES, "gradnas"])
def test_a_mode_after_gradnas_without_export_fails_clearly(second):
    net = _pruned()
    before = _fingerprint(net)
    kept = {n: hp.kept for n, hp in _hparams(net).items()}
    with pytest.raises(ValueError, match=rf"mode '{second}' may not follow 'gradnas'.*"
                                         r"mm.export\(model\)"):
        mm.convert(net, second)
    _assert_same(before, _fingerprint(net))
    assert {n: hp.kept for n, hp in _hparams(net).items()} == kept  # the selection too
    with pytest.raises(ValueError, match="may not follow 'gradnas'"):
        mm.convert(_gnet(), ["gradnas", second])  # atomic in one call as well


@pytest.mark.parametrize("first", MODES)
def test_gradnas_after_a_mask_mode_fails_clearly(first):
    net = mm.convert(_gnet(), first)
    before = _fingerprint(net)
    with pytest.raises(ValueError, match=f"mode 'gradnas' may not follow '{first}'"):
        mm.convert(net, "gradnas")
    _assert_same(before, _fingerprint(net))


@pytest.mark.parametrize("part", ["0", "2"])  # a producer, and a consumer (the mask site)
def test_gradnas_over_a_converted_part_fails_clearly(part):
    """Regression: a producer converted by a mask mode was accepted, and export then sliced
    its weight under a mask of the old shape."""
    net = _gnet()
    mm.convert(net[int(part)], "continuous_sparsification")
    before = _fingerprint(net)
    with pytest.raises(ValueError, match=rf"'{part}'.*already converted|another mode.*'{part}'"):
        mm.convert(net, "gradnas")
    _assert_same(before, _fingerprint(net))


def _hparams(net: nn.Module) -> dict:
    from modeopt_masks.structured import gradnas_hparams

    return gradnas_hparams(net)


@pytest.mark.parametrize("second", MODES)
def test_gradnas_export_then_a_mask_mode_works(second):
    net = _pruned()
    x = torch.randn(4, 6)
    ref = _eval(net, x)
    kept = {n: hp.active for n, hp in _hparams(net).items()}
    net = mm.export(net)
    assert net[0].out_features == kept["0"] and net[2].out_features == kept["2"]
    assert not mm.mode_history(net)
    torch.testing.assert_close(_eval(net, x), ref, rtol=1e-6, atol=1e-6)
    net = mm.convert(net, (second, {"nn.Linear": {"*": {}, "4": None}}))
    assert sorted(mm.masked_modules(net)) == ["0", "2"]
    assert tuple(net[2].weight_mask.shape) == (kept["2"], kept["0"])
    net.train()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    net(x).square().mean().backward()
    opt.step()
    plain = mm.export(net)
    assert [type(m) for m in plain.modules()] == [nn.Sequential, nn.Linear, nn.ReLU, nn.Linear,
                                                 nn.Tanh, nn.Linear]
    assert plain[0].weight.shape == (kept["0"], 6)


def test_gradnas_export_twice_fails_clearly():
    net = mm.export(_pruned())
    before = _fingerprint(net)
    with pytest.raises(ValueError, match="no modes to export"):
        mm.export(net)
    _assert_same(before, _fingerprint(net))


def test_prune_an_already_pruned_model_searches_again():
    """Before export: a new search on the same hparams (history stays one gradnas entry);
    mode rules then fail clearly. After export: a fresh conversion of the smaller model."""
    net = _pruned("60%")
    first = {n: hp.active for n, hp in _hparams(net).items()}
    net, result = mm.prune(net, "gradnas", constraints={"params": "40%"}, config=_search_cfg())
    assert [s.mode for s in mm.mode_history(net)] == ["gradnas"]
    assert result.constraints["params"]["ratio"] <= 0.40
    assert sum(result.selection.values()) < sum(first.values())
    assert {n: hp.active for n, hp in _hparams(net).items()} == result.selection
    before = _fingerprint(net)
    with pytest.raises(ValueError, match="already converted with 'gradnas'; drop the mode rules"):
        mm.prune(net, ("gradnas", {"nn.Linear": {"divisor": 2}}), constraints={"params": "40%"},
                 config=_search_cfg())
    _assert_same(before, _fingerprint(net))
    small = mm.export(net)
    n_small = sum(p.numel() for p in small.parameters())
    small, again = mm.prune(small, "gradnas", constraints={"params": "70%"}, config=_search_cfg())
    assert again.constraints["params"]["original"] == n_small
    assert mm.export(small)[0].out_features == again.selection["0"]


def test_restore_gradnas_into_other_module_names_fails_clearly(tmp_path):
    mm.save(_pruned(), tmp_path)
    shifted = _gnet(1, lead=True)  # the same layers, one index later
    before = _fingerprint(shifted)
    with pytest.raises(mm.StateError, match=r"saved hparams \['0', '2'\], this model gives "
                                            r"\['1', '3'\]"):
        mm.restore(shifted, tmp_path)
    _assert_same(before, _fingerprint(shifted))
    renamed = Renamed()  # not a Sequential: its pair is found by tracing, under another name
    before = _fingerprint(renamed)
    with pytest.raises(mm.StateError, match=r"saved hparams \['0', '2'\], this model gives "
                                            r"\['fc_in'\]"):
        mm.restore(renamed, tmp_path)
    _assert_same(before, _fingerprint(renamed))


def test_restore_gradnas_hf_head_model_into_base_model_fails_clearly(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    net = mm.convert(transformers.GPT2LMHeadModel(cfg), "gradnas")
    _hparams(net)["transformer.h.0.attn"].keep([1])
    mm.save(net, tmp_path)
    base = transformers.GPT2Model(cfg)
    before = _fingerprint(base)
    with pytest.raises(mm.StateError, match=r"'transformer\.h\.0\.attn'.*'h\.0\.attn'"):
        mm.restore(base, tmp_path)
    _assert_same(before, _fingerprint(base))
    ok = mm.restore(transformers.GPT2LMHeadModel(cfg), tmp_path)
    assert _hparams(ok)["transformer.h.0.attn"].kept == [1]
