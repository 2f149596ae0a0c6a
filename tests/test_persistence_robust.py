"""Converted models survive deepcopy, pickle and state_dict round trips; ``restore`` of a
corrupted, truncated or mismatched checkpoint raises ``StateError`` and leaves the model as it was.

A new mode = one entry in ``MODES``; a new way to break a checkpoint = one entry in
``CORRUPTIONS``. ``gradnas`` (a pruned, unexported model: its selection and scores live in
the mode metadata, not in tensors) and ``CircuitModel`` have their own tests at the end;
the gradnas checkpoint tests run every ``CORRUPTIONS`` entry that applies plus
``GRADNAS_CORRUPTIONS`` (broken selections and scores).
"""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import modeopt_masks as mm
from modeopt_masks.persistence import STATE_FILE, _sha256, encode_state_document

TENSOR_FILE = "<tensors>"  # the tensor file the manifest names


def _path(d: Path, name: str) -> Path:
    if name == TENSOR_FILE:
        return d / json.loads((d / STATE_FILE).read_text())["tensor_file"]
    return d / name

MODES = {
    "continuous_sparsification": {"nn.Linear": {"mask_init_value": 0.1, "mask_bias": True}},
    "hard_concrete": {"nn.Linear": {"mask_init_percentage": 0.6, "mask_unit": "neuron"}},
    "magnitude_pruning": {"nn.Linear": {"prune_percentage": 0.3}, "scope": "global"},
    "cs_frozen": {"nn.Linear": {"*": {"mask_init_value": 0.1}, "2": None}, "freeze_base": True},
}


def _base(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _mode(key: str) -> tuple[str, dict]:
    return ("continuous_sparsification" if key == "cs_frozen" else key, MODES[key])


def _converted(key: str, seed: int = 0) -> nn.Module:
    net = mm.convert(_base(seed), _mode(key))
    with torch.no_grad():  # move the masks off their init so a lost mask shows
        for layer in mm.masked_modules(net).values():
            for p in layer.weight_mask.parameters():
                p.add_(torch.randn_like(p))
    mm.set_temperature(net, 3.0) if key != "magnitude_pruning" else None
    return net


def _eval_out(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was = net.training
    net.eval()
    with torch.no_grad():
        out = net(x)
    net.train(was)
    return out


def _fingerprint(net: nn.Module) -> dict:
    """Everything a failed restore must leave alone."""
    return {
        "classes": [(n, type(m)) for n, m in net.named_modules()],
        "history": mm.mode_history(net),
        "tensors": {k: v.clone() for k, v in net.state_dict().items()},
        "requires_grad": {n: p.requires_grad for n, p in net.named_parameters()},
        "training": [m.training for m in net.modules()],
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a["classes"] == b["classes"]
    assert a["history"] == b["history"] == []
    assert a["tensors"].keys() == b["tensors"].keys()
    for k in a["tensors"]:
        assert torch.equal(a["tensors"][k], b["tensors"][k]), k
    assert a["requires_grad"] == b["requires_grad"]
    assert a["training"] == b["training"]


# -- deepcopy / pickle / state_dict ---------------------------------------------------------
@pytest.mark.parametrize("key", MODES)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_and_pickle_round_trip(key, how):
    net = _converted(key)
    x = torch.randn(4, 6)
    net.eval()
    mm.set_ablation(net, "randomly_sampled")  # a draw is state too
    ref_ablated = _eval_out(net, x)
    mm.set_ablation(net, "none")
    ref = _eval_out(net, x)
    clone = copy.deepcopy(net) if how == "deepcopy" else pickle.loads(pickle.dumps(net))
    assert [type(m) for m in clone.modules()] == [type(m) for m in net.modules()]
    assert [(s.mode, s.config, s.metadata) for s in mm.mode_history(clone)] == [
        (s.mode, s.config, s.metadata) for s in mm.mode_history(net)]
    assert torch.equal(_eval_out(clone, x), ref)
    mm.set_ablation(clone, "randomly_sampled")
    assert torch.equal(_eval_out(clone, x), ref_ablated)  # the same draw, not a new one
    mm.set_ablation(clone, "none")
    # independent: changing the copy's masks leaves the original alone
    with torch.no_grad():
        for layer in mm.masked_modules(clone).values():
            for t in layer.weight_mask.state_dict(keep_vars=True).values():
                t.copy_(~t if t.dtype == torch.bool else -t)
    assert torch.equal(_eval_out(net, x), ref)
    assert not torch.equal(_eval_out(clone, x), ref)
    # the copy still trains (freeze_base included) and still exports to plain modules
    clone.train()
    expected_trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert {n for n, p in clone.named_parameters() if p.requires_grad} == expected_trainable
    if key == "cs_frozen":
        assert not clone[0].training and clone[0].weight_mask.training
    clone(x).sum().backward()
    plain = mm.export(clone)
    assert all(type(m) in (nn.Sequential, nn.Linear, nn.ReLU) for m in plain.modules())


@pytest.mark.parametrize("key", MODES)
def test_state_dict_round_trip(key):
    src, dst = _converted(key, seed=0), _converted(key, seed=1)
    x = torch.randn(4, 6)
    assert not torch.equal(_eval_out(src, x), _eval_out(dst, x))
    sd = src.state_dict()
    assert any("_mask." in k for k in sd), "masks must be in the state dict"
    missing, unexpected = dst.load_state_dict(sd)
    assert not missing and not unexpected
    assert torch.equal(_eval_out(dst, x), _eval_out(src, x))
    # loading a converted state dict into a plain model fails and names the mask tensors
    with pytest.raises(RuntimeError, match="_mask"):
        _base().load_state_dict(sd)


# -- save / restore of broken checkpoints ------------------------------------------------
def _rewrite_json(fn: Callable[[dict], object]) -> Callable[[Path], None]:
    def corrupt(d: Path) -> None:
        doc = json.loads((d / STATE_FILE).read_text())
        result = fn(doc)
        new = doc if result is None else result
        # sealed as save seals it: a deliberate edit, not a random corruption (a NaN, which
        # save never writes, goes in as the non-standard JSON Python writes)
        try:
            data = encode_state_document(new) if isinstance(new, dict) else json.dumps(new).encode()
        except ValueError:
            data = json.dumps(new).encode()
        (d / STATE_FILE).write_bytes(data)
    return corrupt


def _replace_tensors(fn: Callable[[dict], dict]) -> Callable[[Path], None]:
    """Write a consistent (checksummed) tensor file with other contents."""
    def corrupt(d: Path) -> None:
        from safetensors.torch import load_file
        path = _path(d, TENSOR_FILE)
        tensors = fn(load_file(str(path)))
        save_file(tensors, str(path))
        doc = json.loads((d / STATE_FILE).read_text())
        doc["tensors_sha256"] = _sha256(path)
        (d / STATE_FILE).write_bytes(encode_state_document(doc))
    return corrupt


def _truncate(name: str, keep: float) -> Callable[[Path], None]:
    def corrupt(d: Path) -> None:
        path = _path(d, name)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
    return corrupt


def _flip_byte(name: str, where: float) -> Callable[[Path], None]:
    def corrupt(d: Path) -> None:
        path = _path(d, name)
        data = bytearray(path.read_bytes())
        data[int(len(data) * where)] ^= 0xFF
        path.write_bytes(bytes(data))
    return corrupt


def _set_entry(field: str, value: object) -> Callable[[dict], None]:
    def fn(doc: dict) -> None:
        doc["modes"][0][field] = value
    return fn


def _drop_entry(field: str) -> Callable[[dict], None]:
    def fn(doc: dict) -> None:  # (a falsy popped value, e.g. an empty config, is dropped too)
        doc["modes"][0].pop(field)
    return fn


def _drop_one(kind: str) -> Callable[[dict], dict]:
    def fn(tensors: dict) -> dict:
        victim = next(k for k in sorted(tensors) if kind in k)
        return {k: v for k, v in tensors.items() if k != victim}
    return fn


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    # name: (corrupt the checkpoint directory, what the error must say)
    "json_truncated": (_truncate(STATE_FILE, 0.5), "corrupted or truncated"),
    "json_empty": (_truncate(STATE_FILE, 0.0), "corrupted or truncated"),
    "json_binary": (_flip_byte(STATE_FILE, 0.0), "corrupted|not a modeopt-masks"),
    "json_not_ours": (_rewrite_json(lambda doc: {"hello": 1}), "not a modeopt-masks"),
    "json_a_list": (_rewrite_json(lambda doc: [1, 2]), "not a modeopt-masks"),
    "json_future_version": (_rewrite_json(lambda doc: doc.update(format_version=99)), "version"),
    "json_no_modes": (_rewrite_json(lambda doc: doc.pop("modes") and None), "modes"),
    "json_modes_not_list": (_rewrite_json(lambda doc: doc.update(modes="x")), "modes"),
    "json_unknown_mode": (_rewrite_json(_set_entry("mode", "no_such_mode")), "no_such_mode"),
    "json_no_config": (_rewrite_json(_drop_entry("config")), "config"),
    "json_no_metadata": (_rewrite_json(_drop_entry("metadata")), "metadata"),
    "json_bad_config": (_rewrite_json(_set_entry("config", {"nn.Linear": {"bogus": 1}})), "bogus"),
    "json_config_not_dict": (_rewrite_json(_set_entry("config", 7)), "config|dict"),
    "json_wrong_layers": (_rewrite_json(_set_entry("metadata", {"layers": ["9"]})), "fit"),
    "json_metadata_garbage": (_rewrite_json(_set_entry("metadata", "x")), "metadata|fit"),
    "tensors_truncated": (_truncate(TENSOR_FILE, 0.6), "checksum"),
    "tensors_empty": (_truncate(TENSOR_FILE, 0.0), "checksum"),
    "tensors_flipped": (_flip_byte(TENSOR_FILE, 0.9), "checksum"),
    "tensors_missing_mask": (_replace_tensors(_drop_one("_mask.")), "missing"),
    "tensors_missing_weight": (_replace_tensors(_drop_one("2.weight")), "missing"),
    "tensors_extra": (_replace_tensors(lambda t: {**t, "extra.weight": torch.zeros(2)}),
                      "unexpected"),
    "tensors_wrong_shape": (
        _replace_tensors(lambda t: {**t, "0.weight": torch.zeros(3, 3)}), "0.weight"),
    "tensors_checksum_lost": (_rewrite_json(lambda doc: doc.pop("tensors_sha256") and None),
                              "checksum"),
    "no_state_file": (lambda d: (d / STATE_FILE).unlink(), "missing"),
    "no_tensor_file": (lambda d: _path(d, TENSOR_FILE).unlink(), "missing"),
}


@pytest.mark.parametrize("key", MODES)
@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_broken_checkpoint_raises_state_error_and_leaves_model(tmp_path, key, corruption):
    corrupt, message = CORRUPTIONS[corruption]
    mm.save(_converted(key), tmp_path)
    corrupt(tmp_path)
    fresh = _base(seed=5)
    before = _fingerprint(fresh)
    with pytest.raises(mm.StateError, match=message):
        mm.restore(fresh, tmp_path)
    _assert_same(before, _fingerprint(fresh))
    # and the model is still good for a clean conversion
    assert mm.masked_modules(mm.convert(fresh, _mode(key)))


def test_restore_into_a_model_with_extra_parameters_is_atomic(tmp_path):
    """The tensor file lacks the extra module's tensors: nothing may be half-loaded."""
    key = "continuous_sparsification"
    mm.save(_converted(key), tmp_path)
    torch.manual_seed(5)
    fresh = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), nn.LayerNorm(3))
    before = _fingerprint(fresh)
    with pytest.raises(mm.StateError, match="missing"):
        mm.restore(fresh, tmp_path)
    _assert_same(before, _fingerprint(fresh))


@pytest.mark.parametrize("key", MODES)
def test_clean_round_trip_still_works(tmp_path, key):
    net = _converted(key)
    x = torch.randn(4, 6)
    mm.save(net, tmp_path)
    fresh = mm.restore(_base(seed=9), tmp_path)
    assert torch.equal(_eval_out(fresh, x), _eval_out(net, x))
    assert [s.mode for s in mm.mode_history(fresh)] == [s.mode for s in mm.mode_history(net)]
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == {
        n for n, p in net.named_parameters() if p.requires_grad}


def test_tied_weights_round_trip(tmp_path):
    """A tiny GPT-2 ties ``lm_head.weight`` to ``wte``: the file holds it once, restore is fine."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16)

    def fresh(seed: int):
        torch.manual_seed(seed)
        return transformers.GPT2LMHeadModel(cfg).eval()

    net = mm.convert(fresh(0), ("continuous_sparsification",
                                {"hf.Conv1D": {"mask_init_value": 0.1}}))
    assert net.lm_head.weight is net.transformer.wte.weight
    mm.save(net, tmp_path)
    other = mm.restore(fresh(1), tmp_path)
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        assert torch.equal(other(ids).logits, net(ids).logits)
    assert other.lm_head.weight is other.transformer.wte.weight


# -- gradnas: a pruned (searched, unexported) model ----------------------------------------
def _gradnas_base(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(),
                         nn.Linear(12, 3))


def _pruned(seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(11)
    data = [(torch.randn(8, 6, generator=g),) for _ in range(3)]
    net, _ = mm.prune(_gradnas_base(seed), "gradnas", constraints={"params": "60%"}, config={
        "data_loader": data, "loss_func": lambda out, b: out.pow(2).mean(), "progress": False})
    return net


def _gradnas_state(net: nn.Module) -> dict:
    from modeopt_masks.structured import gradnas_hparams

    return {n: (hp.kept, hp.choices, None if hp.importance is None else hp.importance.tolist())
            for n, hp in gradnas_hparams(net).items()}


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_gradnas_copy_and_pickle_round_trip(how):
    from modeopt_masks.structured import gradnas_hparams

    net = _pruned()
    x = torch.randn(4, 6)
    ref = _eval_out(net, x)
    state = _gradnas_state(net)
    assert any(kept != list(range(len(kept))) or len(kept) < 16 for kept, _, _ in state.values())
    clone = copy.deepcopy(net) if how == "deepcopy" else pickle.loads(pickle.dumps(net))
    assert [type(m) for m in clone.modules()] == [type(m) for m in net.modules()]
    assert _gradnas_state(clone) == state
    assert [(s.mode, s.config) for s in mm.mode_history(clone)] == [
        (s.mode, s.config) for s in mm.mode_history(net)]
    assert torch.equal(_eval_out(clone, x), ref)
    # independent: a new selection on the copy leaves the original alone
    gradnas_hparams(clone)["0"].keep(list(range(16)))
    assert torch.equal(_eval_out(net, x), ref) and not torch.equal(_eval_out(clone, x), ref)
    gradnas_hparams(clone)["0"].keep(state["0"][0])
    exported = mm.export(clone)
    assert exported[0].out_features == len(state["0"][0])
    torch.testing.assert_close(_eval_out(exported, x), ref, rtol=1e-6, atol=1e-6)


def test_gradnas_state_dict_holds_the_weights_only():
    """By design the state dict has the plain model's keys (a converted model loads a plain
    checkpoint and vice versa); the selection travels in the mode metadata (``mm.save``)."""
    from modeopt_masks.structured import gradnas_hparams

    src, dst = _pruned(seed=0), mm.convert(_gradnas_base(seed=1), "gradnas")
    sd = src.state_dict()
    assert list(sd) == list(_gradnas_base().state_dict())
    missing, unexpected = dst.load_state_dict(sd)
    assert not missing and not unexpected
    for name, (kept, _, _) in _gradnas_state(src).items():
        gradnas_hparams(dst)[name].keep(kept)
    x = torch.randn(4, 6)
    assert torch.equal(_eval_out(dst, x), _eval_out(src, x))
    plain = _gradnas_base(seed=2)
    plain.load_state_dict(sd)
    assert torch.equal(_eval_out(plain, x), _eval_out(mm.unconvert(copy.deepcopy(src)), x))


def test_gradnas_clean_round_trip(tmp_path):
    net = _pruned()
    x = torch.randn(4, 6)
    mm.save(net, tmp_path)
    fresh = mm.restore(_gradnas_base(seed=9), tmp_path)
    assert _gradnas_state(fresh) == _gradnas_state(net)
    assert torch.equal(_eval_out(fresh, x), _eval_out(net, x))
    # the restored selection exports like the original
    assert torch.equal(_eval_out(mm.export(fresh), x), _eval_out(mm.export(net), x))


def _gradnas_meta(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(doc: dict) -> None:
        fn(doc["modes"][0]["metadata"])
    return _rewrite_json(edit)


GRADNAS_CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "hparams_renamed": (_gradnas_meta(lambda m: m.update(hparams=["0", "9"])),
                        r"saved hparams \['0', '9'\]"),
    "hparams_missing": (_gradnas_meta(lambda m: m.pop("hparams")), "saved hparams None"),
    "selection_out_of_range": (_gradnas_meta(lambda m: m["selection"].update({"0": [0, 99]})),
                               r"\[0, 16\)"),
    "selection_duplicates": (_gradnas_meta(lambda m: m["selection"].update({"0": [0] * 9})),
                             "distinct"),
    "selection_unknown_hparam": (_gradnas_meta(lambda m: m["selection"].update({"zz": [0]})),
                                 r"\['zz'\] this model does not have"),
    "selection_not_a_dict": (_gradnas_meta(lambda m: m.update(selection=[1, 2])),
                             "'selection' must be a dict"),
    "selection_garbage": (_gradnas_meta(lambda m: m["selection"].update({"0": "abc"})),
                          "invalid literal"),
    "scores_short": (_gradnas_meta(lambda m: m["scores"].update({"2": [1.0, 2.0]})),
                     "must be 12 finite numbers"),
    "scores_nan": (_gradnas_meta(lambda m: m["scores"].update({"2": [float("nan")] * 12})),
                   "finite|NaN"),
    "scores_garbage": (_gradnas_meta(lambda m: m["scores"].update({"2": "x"})), "fit"),
}
_NOT_FOR_GRADNAS = ("tensors_missing_mask",)  # gradnas has no mask tensors


@pytest.mark.parametrize("corruption", [
    *(c for c in CORRUPTIONS if c not in _NOT_FOR_GRADNAS), *GRADNAS_CORRUPTIONS])
def test_gradnas_broken_checkpoint_raises_state_error_and_leaves_model(tmp_path, corruption):
    corrupt, message = {**CORRUPTIONS, **GRADNAS_CORRUPTIONS}[corruption]
    mm.save(_pruned(), tmp_path)
    corrupt(tmp_path)
    fresh = _gradnas_base(seed=5)
    before = _fingerprint(fresh)
    with pytest.raises(mm.StateError, match=message):
        mm.restore(fresh, tmp_path)
    _assert_same(before, _fingerprint(fresh))
    assert not any(hasattr(m, "_mm_struct") for m in fresh.modules())  # no partial unit mask


# -- CircuitModel ------------------------------------------------------------------------------
class _LossNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.fc2(torch.relu(self.fc1(x)))
        if labels is None:
            return {"logits": logits}
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def _circuit(seed: int = 0):
    from modeopt_masks.circuit import CircuitConfig, CircuitModel

    torch.manual_seed(seed)
    cfg = CircuitConfig(mask_method="hard_concrete", target_layers=["fc*"],
                        mask_hparams={"mask_init_percentage": 0.7, "mask_bias": True},
                        l0_lambda=1e-2)
    circuit = CircuitModel(cfg, _LossNet())
    with torch.no_grad():
        for p in circuit.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    circuit.temperature = 2.0
    return circuit


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_circuit_model_copy_and_pickle_round_trip(how):
    import inspect

    circuit = _circuit()
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 1])
    clone = copy.deepcopy(circuit) if how == "deepcopy" else pickle.loads(pickle.dumps(circuit))
    assert clone.config == circuit.config and clone.temperature == 2.0
    assert clone.forward.owner is clone  # the bound forward points at the copy, not the original
    assert inspect.signature(clone.forward) == inspect.signature(circuit.wrapped_model.forward)
    assert clone.compute_l0_statistics() == circuit.compute_l0_statistics()
    clone.train()
    circuit.train()
    torch.manual_seed(3)  # the same hard concrete noise in both
    a = clone(x, labels=y)["loss"]
    torch.manual_seed(3)
    b = circuit(x, labels=y)["loss"]
    assert torch.equal(a, b)
    # the copy trains on its own: the original's masks do not move
    before = {k: v.clone() for k, v in circuit.state_dict().items()}
    a.backward()
    torch.optim.SGD([p for p in clone.parameters() if p.requires_grad], lr=1.0).step()
    after = circuit.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(clone.state_dict()["wrapped_model.fc1.weight_mask.log_alpha"],
                           before["wrapped_model.fc1.weight_mask.log_alpha"])
    assert not clone.wrapped_model.fc1.weight.requires_grad  # freeze_base survived the copy


def test_circuit_model_state_dict_round_trip():
    src, dst = _circuit(seed=0), _circuit(seed=1)
    x = torch.randn(4, 6)
    src.eval()
    dst.eval()
    assert not torch.equal(dst(x)["logits"], src(x)["logits"])
    missing, unexpected = dst.load_state_dict(src.state_dict())
    assert not missing and not unexpected
    assert torch.equal(dst(x)["logits"], src(x)["logits"])
    assert dst.compute_l0_statistics() == src.compute_l0_statistics()
