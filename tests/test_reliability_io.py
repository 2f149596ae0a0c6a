"""One test per reliability defect of convert / restore / export / save (issue: no lost
checkpoints, no half-converted models, no silent no-ops), and hypothesis property tests
over checkpoint tampering. The step-by-step fault injection lives in test_fault_injection.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from test_fault_injection import assert_unchanged, fingerprint

import modeopt_masks as mm
from modeopt_masks.persistence import FORMAT_VERSION, STATE_FILE, encode_state_document


def _base(seed: int = 0, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8, bias=bias), nn.ReLU(), nn.Linear(8, 3, bias=bias))


def _cs(seed: int = 0) -> nn.Module:
    net = mm.convert(_base(seed), ("continuous_sparsification",
                                   {"nn.Linear": {"mask_init_value": 0.1}}))
    with torch.no_grad():
        for layer in mm.masked_modules(net).values():
            layer.weight_mask.logits.add_(torch.randn_like(layer.weight_mask.logits))
    mm.set_temperature(net, 3.0)
    return net


def _out(net: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(torch.linspace(-1, 1, 12).reshape(2, 6))


def _manifest(d: Path) -> dict:
    return json.loads((d / STATE_FILE).read_text())


def _tensor_path(d: Path) -> Path:
    return d / _manifest(d)["tensor_file"]


def _rewrite(d: Path, fn) -> None:
    """A deliberate edit, sealed as save seals the manifest."""
    doc = _manifest(d)
    fn(doc)
    (d / STATE_FILE).write_bytes(encode_state_document(doc))


def _replace_tensors(d: Path, fn) -> None:
    path = _tensor_path(d)
    data = save_bytes(fn(load_bytes(path.read_bytes())))
    path.write_bytes(data)
    _rewrite(d, lambda doc: doc.update(tensors_sha256=hashlib.sha256(data).hexdigest()))


# -- defect 1: a failed restore leaves the model converted ---------------------------------
@pytest.mark.parametrize("temperatures", ["abc", {"0": "abc"}, {"0": [1]}, {"nope": 1.0}, [1.0]])
def test_defect1_failed_restore_is_undone_and_a_good_checkpoint_then_restores(
        tmp_path, temperatures):
    good, bad = tmp_path / "good", tmp_path / "bad"
    net = _cs()
    mm.save(net, good)
    mm.save(net, bad)
    _rewrite(bad, lambda doc: doc["modes"][0]["metadata"].update(temperatures=temperatures))
    fresh = _base(seed=5)
    before = fingerprint(fresh)
    with pytest.raises(mm.StateError, match="temperature|fit"):
        mm.restore(fresh, bad)
    assert_unchanged(before, fresh)
    assert mm.masked_modules(fresh) == {}
    assert torch.equal(_out(mm.restore(fresh, good)), _out(net))


# -- defect 2: a crash during save over a checkpoint loses both ----------------------------
@pytest.mark.parametrize("crash_at", [0, 1])
def test_defect2_crash_between_the_renames_keeps_the_old_checkpoint(tmp_path, monkeypatch,
                                                                    crash_at):
    old, new = _cs(seed=0), _cs(seed=1)
    mm.save(old, tmp_path)
    real, calls = os.replace, []

    def crash(src, dst):
        calls.append(dst)
        if len(calls) > crash_at:
            raise KeyboardInterrupt("killed")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        mm.save(new, tmp_path)
    monkeypatch.undo()
    assert torch.equal(_out(mm.restore(_base(seed=3), tmp_path)), _out(old))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and not any(n.endswith(".tmp") for n in names), names


# -- defect 4: an exclusion glob that matches nothing --------------------------------------
def test_defect4_exclusion_glob_that_matches_nothing_is_an_error():
    net = nn.Sequential()
    net.add_module("body", nn.Linear(4, 4))
    net.add_module("classifier", nn.Linear(4, 2))
    before = fingerprint(net)
    with pytest.raises(ValueError, match="clasifier"):
        mm.convert(net, ("magnitude_pruning", {"nn.Linear": {"*": {}, "*clasifier*": None}}))
    assert_unchanged(before, net)
    # the spelled-right exclusion works, and repeating a default exclusion is fine
    # on a model without that head
    mm.convert(net, ("magnitude_pruning", {"nn.Linear": {"*": {}, "*classifier*": None,
                                                          "*lm_head*": None}}))
    assert sorted(mm.masked_modules(net)) == ["body"]


# -- defect 7: save of a model whose submodule was converted -------------------------------
def test_defect7_save_refuses_a_model_with_a_separately_converted_submodule(tmp_path):
    net = _base()
    mm.convert(net[0], "magnitude_pruning")
    with pytest.raises(ValueError, match=r"\['0'\].*mm.save\(model.<name>"):
        mm.save(net, tmp_path / "whole")
    assert not (tmp_path / "whole" / STATE_FILE).exists()
    mm.save(net[0], tmp_path / "part")  # what the message suggests works
    part = mm.restore(nn.Linear(6, 8), tmp_path / "part")
    assert torch.equal(part.weight_mask.keep, net[0].weight_mask.keep)


# -- defect 10: save follows a planted symlink ---------------------------------------------
def test_defect10_save_never_writes_through_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    d = tmp_path / "ckpt"
    d.mkdir()
    for name in ("modeopt_state.json.tmp", "model.safetensors.tmp", "model.safetensors"):
        (d / name).symlink_to(victim)
    net = _cs()
    mm.save(net, d)
    mm.save(net, d)  # and over an existing checkpoint
    assert victim.read_text() == "precious"
    assert torch.equal(_out(mm.restore(_base(seed=2), d)), _out(net))
    saved = [d / STATE_FILE, _tensor_path(d)]
    assert not any(p.is_symlink() for p in saved)
    assert all(p.stat().st_mode & 0o002 == 0 for p in saved)  # not world-writable


# -- defect 11: convert / export / restore are not atomic mid-loop -------------------------
def test_defect11_failure_in_the_class_swap_loop_undoes_the_layers_already_swapped(monkeypatch):
    net = _base()
    before = fingerprint(net)
    real, calls = mm.MaskedLayer._mm_init, []

    def fail_second(self, *args):
        calls.append(self)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(self, *args)

    monkeypatch.setattr(mm.MaskedLayer, "_mm_init", fail_second)
    with pytest.raises(RuntimeError, match="boom"):
        mm.convert(net, "hard_concrete")
    assert len(calls) == 2
    assert_unchanged(before, net)


def test_defect11_failure_in_freeze_base_unfreezes_and_unconverts(monkeypatch):
    net = _base()
    before = fingerprint(net)
    real, calls = torch.Tensor.requires_grad_, []

    def fail_third(self, flag=True):
        calls.append(flag)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, flag)

    monkeypatch.setattr(torch.Tensor, "requires_grad_", fail_third)
    with pytest.raises(KeyboardInterrupt):
        mm.convert(net, ("continuous_sparsification", {"freeze_base": True}))
    monkeypatch.undo()
    assert_unchanged(before, net)
    assert all(p.requires_grad for p in net.parameters())


def test_defect11_gradnas_export_failing_halfway_leaves_the_model_searchable(monkeypatch):
    from modeopt_masks.structured import gradnas_hparams
    from modeopt_masks.structured import structure as structure_module

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    net = mm.convert(net, ("gradnas", {"nn.Linear": {}})).eval()
    for hp in gradnas_hparams(net).values():
        hp.keep([0, 2, 3])
    ref = _out(net)
    before = fingerprint(net)
    # fail halfway through applying the planned slices (tensors of layer 0 already replaced)
    real, calls = structure_module._sync_dims, []

    def fail_second(*args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args)

    monkeypatch.setattr(structure_module, "_sync_dims", fail_second)
    with pytest.raises(RuntimeError, match="boom"):
        mm.export(net)
    monkeypatch.undo()
    assert_unchanged(before, net)
    assert net[0].weight.shape == (8, 6) and [s.mode for s in mm.mode_history(net)] == ["gradnas"]
    assert torch.equal(_out(net), ref)
    torch.testing.assert_close(_out(mm.export(net)), ref, rtol=1e-6, atol=1e-6)
    assert net[0].weight.shape == (3, 6)


def test_defect11_restore_puts_back_base_weights_a_failing_load_already_copied(tmp_path,
                                                                               monkeypatch):
    mm.save(_cs(), tmp_path)
    fresh = _base(seed=5)
    before = fingerprint(fresh)
    real, calls = torch.Tensor.copy_, []

    def fail_third(self, src, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return real(self, src, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "copy_", fail_third)
    with pytest.raises(mm.StateError, match="device lost"):
        mm.restore(fresh, tmp_path)
    monkeypatch.undo()
    assert_unchanged(before, fresh)


# -- defect 12: non-finite temperatures ----------------------------------------------------
@pytest.mark.parametrize("mode", ["continuous_sparsification", "hard_concrete"])
@pytest.mark.parametrize("temperature", [math.inf, -math.inf, math.nan, 1e300, 1e-300, 0, -5])
def test_defect12_rules_refuse_unusable_temperatures(mode, temperature):
    net = _base()
    with pytest.raises(ValueError, match="temperature"):
        mm.convert(net, (mode, {"nn.Linear": {"temperature": temperature}}))
    assert mm.masked_modules(net) == {}
    net = mm.convert(net, mode)
    with pytest.raises(ValueError, match="temperature"):
        mm.set_temperature(net, temperature)


@pytest.mark.parametrize("temperature", [0, -5, 1e300, "NaN"])
def test_defect12_restore_refuses_tampered_temperatures(tmp_path, temperature):
    mm.save(_cs(), tmp_path)
    if temperature == "NaN":  # the non-standard JSON the old save wrote
        text = (tmp_path / STATE_FILE).read_text().replace('"0": 3.0', '"0": NaN')
        (tmp_path / STATE_FILE).write_text(text)
    else:
        _rewrite(tmp_path, lambda d: d["modes"][0]["metadata"]["temperatures"].update(
            {"0": temperature}))
    fresh = _base(seed=1)
    before = fingerprint(fresh)
    with pytest.raises(mm.StateError, match="temperature|NaN"):
        mm.restore(fresh, tmp_path)
    assert_unchanged(before, fresh)


def test_defect12_save_writes_standard_json_only(tmp_path):
    net = _cs()
    mm.save(net, tmp_path)
    net[0].weight_mask.temperature = math.inf  # set behind the library's back
    with pytest.raises(ValueError, match="non-finite|NaN or infinite"):
        mm.save(net, tmp_path)
    json.loads((tmp_path / STATE_FILE).read_text(), parse_constant=lambda c: 1 / 0)
    net[0].weight_mask.temperature = 3.0
    assert torch.equal(_out(mm.restore(_base(seed=2), tmp_path)), _out(net))


# -- defect 13: restore does not check dtypes ----------------------------------------------
@pytest.mark.parametrize("case", ["float_keep", "int_weight", "complex_weight"])
def test_defect13_restore_refuses_tensors_of_another_dtype_kind(tmp_path, case):
    net = mm.convert(_base(), "magnitude_pruning")
    mm.save(net, tmp_path)
    if case == "float_keep":
        swap = {"0.weight_mask.keep": torch.full((8, 6), 0.3)}
    elif case == "int_weight":
        swap = {"0.weight": torch.ones(8, 6, dtype=torch.int64)}
    else:
        swap = {"0.weight": torch.ones(8, 6, dtype=torch.complex64)}
    _replace_tensors(tmp_path, lambda t: {**t, **swap})
    fresh = _base(seed=1)
    before = fingerprint(fresh)
    with pytest.raises(mm.StateError, match="dtype|float|int|complex|bool"):
        mm.restore(fresh, tmp_path)
    assert_unchanged(before, fresh)


# -- defect 14: restore verifies one read and loads another --------------------------------
def test_defect14_restore_loads_the_bytes_it_verified(tmp_path, monkeypatch):
    from modeopt_masks import persistence

    net, other = mm.convert(_base(0), "magnitude_pruning"), mm.convert(_base(1), "magnitude_pruning")
    mm.save(net, tmp_path / "a")
    mm.save(other, tmp_path / "b")
    target, swapped_in = _tensor_path(tmp_path / "a"), _tensor_path(tmp_path / "b").read_bytes()
    size, real = target.stat().st_size, hashlib.sha256

    class SwapAfterHashing:  # a concurrent writer replaces the file right after it is hashed
        def __init__(self, data: bytes = b"") -> None:
            self.inner, self.seen = real(), 0
            self.update(data)

        def update(self, data: bytes) -> None:
            self.inner.update(data)
            self.seen += len(data)

        def hexdigest(self) -> str:
            if self.seen == size:
                target.write_bytes(swapped_in)
            return self.inner.hexdigest()

    monkeypatch.setattr(persistence.hashlib, "sha256", SwapAfterHashing)
    fresh = mm.restore(_base(seed=2), tmp_path / "a")
    monkeypatch.undo()
    assert torch.equal(fresh[0].weight, net[0].weight)
    assert torch.equal(fresh[0].weight_mask.keep, net[0].weight_mask.keep)


# -- defect 15: malformed checkpoints raise other errors -----------------------------------
@pytest.mark.parametrize("case", ["deep_json", "huge_int", "not_safetensors"])
def test_defect15_malformed_checkpoints_raise_state_error(tmp_path, case):
    mm.save(_cs(), tmp_path)
    if case == "deep_json":
        (tmp_path / STATE_FILE).write_text('{"format": "modeopt-masks", "x": '
                                           + "[" * 100_000 + "]" * 100_000 + "}")
    elif case == "huge_int":
        _rewrite(tmp_path, lambda d: None)
        text = (tmp_path / STATE_FILE).read_text()
        (tmp_path / STATE_FILE).write_text(text.replace(f'"format_version": {FORMAT_VERSION}',
                                                        '"format_version": ' + "7" * 5000))
    else:
        junk = b"this is not a safetensors file" * 10
        _tensor_path(tmp_path).write_bytes(junk)
        _rewrite(tmp_path, lambda d: d.update(tensors_sha256=hashlib.sha256(junk).hexdigest()))
    fresh = _base(seed=1)
    before = fingerprint(fresh)
    with pytest.raises(mm.StateError):
        mm.restore(fresh, tmp_path)
    assert_unchanged(before, fresh)


# -- defect 20: small silent gaps ------------------------------------------------------------
def test_defect20_empty_mode_list_is_an_error():
    with pytest.raises(ValueError, match="no mode given"):
        mm.convert(_base(), [])


def test_defect20_internal_user_keys_field_is_refused():
    with pytest.raises(ValueError, match="user_keys"):
        mm.convert(_base(), ("magnitude_pruning", {"user_keys": ["nn.Linear"]}))


def test_defect20_use_masks_takes_a_bool_only():
    net = mm.convert(_base(), "magnitude_pruning")
    with pytest.raises(TypeError, match="True or False"):
        mm.use_masks(net, "False")
    assert all(layer.use_masks for layer in mm.masked_modules(net).values())


def test_defect20_circuit_config_refuses_infinite_l0_lambda():
    with pytest.raises(ValueError, match="l0_lambda"):
        mm.CircuitConfig(target_layers=["0"], l0_lambda=math.inf)


def test_defect20_mask_bias_that_reaches_no_bias_is_an_error():
    net = _base(bias=False)
    before = fingerprint(net)
    with pytest.raises(ValueError, match=r"mask_bias=True reaches no bias.*\['0', '2'\]"):
        mm.convert(net, ("hard_concrete", {"nn.Linear": {"mask_bias": True}}))
    assert_unchanged(before, net)
    mixed = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3, bias=False))
    with pytest.raises(ValueError, match=r"'2'"):  # names the bias-less layer exactly
        mm.convert(mixed, ("hard_concrete", {"nn.Linear": {"*": {}, "2": {"mask_bias": True}}}))
    # a glob over mixed layers masks the biases that exist
    mm.convert(mixed, ("hard_concrete", {"nn.Linear": {"mask_bias": True}}))
    assert mixed[0].bias_mask is not None and mixed[2].bias_mask is None


def test_defect20_a_params_fraction_below_one_suggests_a_percentage():
    from modeopt_masks.searchers.base import parse_constraints

    with pytest.raises(ValueError, match="'70%'"):
        parse_constraints({"params": 0.7}, {"params": 1000.0})
    assert parse_constraints({"params": 700}, {"params": 1000.0}) == {"params": 700.0}


# -- property tests: any tampering of either file is a StateError ----------------------------
_CHECKPOINT: dict[str, Path] = {}


def _checkpoint() -> Path:
    if "d" not in _CHECKPOINT:
        d = Path(tempfile.mkdtemp())
        mm.save(mm.convert(_base(), ("hard_concrete", {"nn.Linear": {"mask_bias": True}})), d)
        _CHECKPOINT["d"] = d
    return _CHECKPOINT["d"]


def _tampered_restore(which: str, edit) -> None:
    d = Path(tempfile.mkdtemp())
    try:
        for p in _checkpoint().iterdir():
            shutil.copy(p, d / p.name)
        path = d / STATE_FILE if which == "manifest" else _tensor_path(d)
        path.write_bytes(edit(path.read_bytes()))
        fresh = _base(seed=1)
        before = fingerprint(fresh)
        with pytest.raises(mm.StateError):
            mm.restore(fresh, d)
        assert_unchanged(before, fresh)
    finally:
        shutil.rmtree(d)


_FILES = st.sampled_from(["manifest", "tensors"])
_SETTINGS = settings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(which=_FILES, where=st.floats(0, 1, exclude_max=True), byte=st.integers(1, 255))
def test_any_byte_change_of_either_file_is_a_state_error(which, where, byte):
    def flip(data: bytes) -> bytes:
        i = int(where * len(data))
        return data[:i] + bytes([data[i] ^ byte]) + data[i + 1:]
    _tampered_restore(which, flip)


@_SETTINGS
@given(which=_FILES, keep=st.floats(0, 1, exclude_max=True))
def test_any_truncation_of_either_file_is_a_state_error(which, keep):
    _tampered_restore(which, lambda data: data[: int(keep * len(data))])


def test_an_untampered_copy_restores():
    """The property tests' copy-and-restore path works when nothing is changed."""
    d = Path(tempfile.mkdtemp())
    for p in _checkpoint().iterdir():
        shutil.copy(p, d / p.name)
    assert mm.masked_modules(mm.restore(_base(seed=1), d))


def test_a_version_1_checkpoint_still_restores(tmp_path):
    """Directories the earlier save wrote (``model.safetensors``, an unsealed manifest)."""
    from safetensors.torch import save_model

    net = _cs()
    mm.save(net, tempfile.mkdtemp())  # refresh the metadata as save does
    save_model(net, str(tmp_path / "model.safetensors"))
    state = mm.mode_history(net)[0]
    (tmp_path / STATE_FILE).write_text(json.dumps({
        "format": "modeopt-masks", "format_version": 1, "model_class": "Sequential",
        "modes": [{"mode": state.mode, "config": state.config.to_dict(),
                   "metadata": state.metadata}],
        "tensors_sha256": hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest(),
    }))
    assert torch.equal(_out(mm.restore(_base(seed=4), tmp_path)), _out(net))
    mm.save(net, tmp_path)  # saving over it replaces the version-1 files
    assert not (tmp_path / "model.safetensors").exists()
    assert torch.equal(_out(mm.restore(_base(seed=5), tmp_path)), _out(net))
