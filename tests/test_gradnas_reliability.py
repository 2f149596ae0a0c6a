"""gradnas reliability (issue 16 defects 6, 11, 16, 17) and one acceptance rule for layer kinds.

Each test failed on the code before the fix: a sliced producer converted after gradnas was
exported into a model whose forward raised; a failing export left layer 0 sliced; a failing
class swap left converted layers; a zero-width pair raised ZeroDivisionError; a loss with
all-zero mask gradients was accepted silently; mask modes refused a Linear subclass that
gradnas sliced.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import modeopt_masks as mm
from modeopt_masks.layer_kinds import LAYER_KINDS, kind_of
from modeopt_masks.structured import gradnas_hparams
from modeopt_masks.structured import structure as structure_mod
from modeopt_masks.structured.hparam import UnitMasked


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(),
                         nn.Linear(12, 3))


def _cfg(loss=None) -> dict:
    g = torch.Generator().manual_seed(4)
    return {"data_loader": [(torch.randn(8, 6, generator=g),) for _ in range(2)],
            "loss_func": loss or (lambda out, b: out.pow(2).mean()), "progress": False}


def _snapshot(net: nn.Module) -> dict:
    return {"classes": [(n, type(m)) for n, m in net.named_modules()],
            "tensors": {k: v.clone() for k, v in net.state_dict().items()},
            "history": [s.mode for s in mm.mode_history(net)]}


def _assert_same(a: dict, b: dict) -> None:
    assert a["classes"] == b["classes"] and a["history"] == b["history"]
    assert a["tensors"].keys() == b["tensors"].keys()
    assert all(torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"])


def _pruned() -> nn.Module:
    net, _ = mm.prune(_net(), "gradnas", constraints={"params": "60%"}, config=_cfg())
    return net


def test_export_refuses_a_sliced_producer_converted_after_gradnas():  # defect 6
    net = _pruned()
    mm.convert(net[0], "magnitude_pruning")
    before = _snapshot(net)
    with pytest.raises(ValueError, match=r"'0' \(sliced by 0\) was converted by another mode"):
        mm.export(net)
    _assert_same(before, _snapshot(net))
    mm.export(net[0])  # the advice works: then the gradnas export runs
    x = torch.randn(3, 6)
    with torch.no_grad():
        ref = net(x)
    net = mm.export(net)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref)


def test_export_failing_midway_leaves_the_model_as_it_was(monkeypatch):  # defect 11
    net = _pruned()
    before = _snapshot(net)
    kept = {n: hp.kept for n, hp in gradnas_hparams(net).items()}
    calls = {"n": 0}
    original = structure_mod.Slice.indices

    def failing(self, units):
        calls["n"] += 1
        if calls["n"] == 4:  # after the first structure's slices
            raise RuntimeError("injected")
        return original(self, units)

    monkeypatch.setattr(structure_mod.Slice, "indices", failing)
    with pytest.raises(RuntimeError, match="injected"):
        mm.export(net)
    _assert_same(before, _snapshot(net))
    assert {n: hp.kept for n, hp in gradnas_hparams(net).items()} == kept
    monkeypatch.undo()
    assert mm.export(net)[0].out_features == len(kept["0"])


def test_convert_failing_in_the_swap_loop_leaves_no_converted_layer(monkeypatch):  # defect 11
    net = _net()
    before = _snapshot(net)
    calls = {"n": 0}
    original = UnitMasked._mm_init

    def failing(self, structure, choices):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        original(self, structure, choices)

    monkeypatch.setattr(UnitMasked, "_mm_init", failing)
    with pytest.raises(KeyboardInterrupt):
        mm.convert(net, "gradnas")
    _assert_same(before, _snapshot(net))
    assert not any(hasattr(m, "_mm_unit_mask") for m in net.modules())


def test_a_zero_width_pair_is_not_searched():  # defect 16
    net = nn.Sequential(nn.Linear(4, 0), nn.ReLU(), nn.Linear(0, 2))
    with pytest.raises(ValueError, match="selects no searchable dimension"):
        mm.prune(net, "gradnas", constraints={"params": "50%"}, config=_cfg())
    wide = nn.Sequential(nn.Linear(4, 0), nn.ReLU(), nn.Linear(0, 8), nn.ReLU(), nn.Linear(8, 1))
    assert list(gradnas_hparams(mm.convert(wide, "gradnas"))) == ["2"]  # the others still work


def test_a_loss_with_all_zero_mask_gradients_is_refused():  # defect 17
    net = _net()
    before = _snapshot(net)
    with pytest.raises(ValueError, match="every mask gradient is zero"):
        mm.prune(net, "gradnas", constraints={"params": "60%"},
                 config=_cfg(lambda out, b: out.sum() * 0.0 + 1.0))
    _assert_same(before, _snapshot(net))  # the conversion was undone


class _Tagged(nn.Linear):
    """A subclass that keeps Linear's forward."""


class _Doubled(nn.Linear):
    """A subclass with its own forward: the library cannot see what it computes."""

    def forward(self, x):
        return 2 * super().forward(x)


@pytest.mark.parametrize(("cls", "accepted"), [(_Tagged, True), (_Doubled, False)])
def test_every_mode_applies_the_same_acceptance_rule_to_subclasses(cls, accepted):
    def net():
        torch.manual_seed(0)
        return nn.Sequential(cls(4, 8), nn.ReLU(), cls(8, 2))

    mask_modes = [m for m in mm.available_modes() if not mm.get_mode(m).search_algorithm
                  and not getattr(mm.get_mode(m), "needs_calibration", False)]
    for mode in mask_modes:
        if accepted:
            assert sorted(mm.masked_modules(mm.convert(net(), mode))) == ["0", "2"]
        else:
            with pytest.raises(ValueError):
                mm.convert(net(), mode)
    if accepted:
        assert list(gradnas_hparams(mm.convert(net(), "gradnas"))) == ["0"]
    else:
        with pytest.raises(ValueError, match="no searchable dimension"):
            mm.convert(net(), "gradnas")


_MAKE = {
    "nn.Linear": lambda: nn.Linear(5, 7),
    "nn.Conv1d": lambda: nn.Conv1d(5, 7, 3),
    "nn.Conv2d": lambda: nn.Conv2d(5, 7, 3),
    "hf.Conv1D": lambda: __import__("transformers").pytorch_utils.Conv1D(7, 5),
}


@pytest.mark.parametrize("key", sorted(LAYER_KINDS))
def test_each_layer_kind_knows_its_axes_and_resyncs_its_sizes(key):
    assert set(_MAKE) == set(LAYER_KINDS), "a new layer kind needs a constructor here"
    module = _MAKE[key]()
    kind = kind_of(module)
    assert kind is LAYER_KINDS[key]
    assert (kind.in_width(module), kind.out_width(module)) == (5, 7)
    spatial = (9, 9) if key == "nn.Conv2d" else (9,)
    x = torch.randn(2, 5, *spatial) if kind.input_axis == 1 else torch.randn(2, 5)
    assert module(x).shape[kind.input_axis] == 7  # the output axis holds the 7 units
    with torch.no_grad():
        keep_out, keep_in = torch.tensor([0, 3, 6]), torch.tensor([1, 4])
        w = module.weight.index_select(kind.out_dim, keep_out).index_select(kind.in_dim, keep_in)
        module.weight = nn.Parameter(w)
        module.bias = nn.Parameter(module.bias[keep_out])
    kind.sync_sizes(module)
    x = torch.randn(2, 2, *spatial) if kind.input_axis == 1 else torch.randn(2, 2)
    assert module(x).shape[kind.input_axis] == 3
    assert (kind.in_width(module), kind.out_width(module)) == (2, 3)


def test_defect18_save_of_an_exported_gradnas_model_is_refused_clearly(tmp_path):
    """Issue 16 defect 18: mm.save after a gradnas export used to succeed silently and the
    checkpoint then failed to restore with a shape mismatch."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    net = mm.convert(net, ("gradnas", {"nn.Linear": {}}))
    for hp in mm.gradnas_hparams(net).values():
        hp.keep([0, 2, 3])
    small = mm.export(net)
    assert small[0].weight.shape == (3, 6)
    with pytest.raises(ValueError, match="physically pruned by a gradnas export"):
        mm.save(small, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())
    # modes applied after the export still save, with a warning naming the right target
    small = mm.convert(small, "magnitude_pruning")
    with pytest.warns(UserWarning, match="exported architecture"):
        mm.save(small, tmp_path / "after")
    fresh = nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2))
    again = mm.restore(fresh, tmp_path / "after")
    assert torch.equal(again[0].weight_mask.keep, small[0].weight_mask.keep)
