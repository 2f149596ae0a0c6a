"""Converting twice, chaining modes, exporting twice, restoring into renamed modules:
each either works or fails with a message that says what to do, and a failure
leaves the model as it was.

A new mode = one entry in ``MODES`` (and, if it allows successors, a case in
``test_allowed_successors_chain``).
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn

import modeopt_masks as mm

MODES = ("continuous_sparsification", "hard_concrete", "magnitude_pruning")


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


def test_allowed_successors_chain():
    """Every declared successor really converts on top (none for the mask modes today)."""
    for first in mm.available_modes():
        for second in mm.get_mode(first).next_modes:
            if first not in MODES or second not in MODES:
                continue  # other modes test their own chains
            net = mm.convert(_net(), [first, second])
            assert [s.mode for s in mm.mode_history(net)] == [first, second]


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
