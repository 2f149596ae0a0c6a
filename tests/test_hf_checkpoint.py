"""Library-aware HF checkpoints: save_pretrained / from_pretrained / Trainer resume keep modes."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

import modeopt_masks as mm
from modeopt_masks.hf_checkpointing import HF_STATE_FILE, MARKER_TENSOR, restore_modes
from modeopt_masks.structured import gradnas_hparams

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _llama(intermediate: int = 32):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=intermediate, max_position_embeddings=16)
    return transformers.LlamaForCausalLM(cfg).eval()


def _perturb(model, mode: str) -> None:
    """Give the mode a non-default state (so a restore that drops it would be seen)."""
    if mode == "gradnas":
        for hp in gradnas_hparams(model).values():
            hp.keep(list(range(hp.n_units // 2)))
        return
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "mask" in name:
                p.copy_(torch.randn(p.shape, generator=g))


X = torch.tensor([[1, 5, 7, 2, 9, 3]])


@pytest.fixture(autouse=True)
def _enabled():
    mm.enable_huggingface_checkpointing()


@pytest.mark.parametrize("mode", ["continuous_sparsification", "hard_concrete",
                                  "magnitude_pruning", "gradnas"])
def test_save_from_pretrained_restores_modes(tmp_path, mode):
    model = mm.convert(_llama(), mode)
    _perturb(model, mode)
    model.eval()
    with torch.no_grad():
        expected = model(X).logits
        base = mm.unconvert(copy.deepcopy(model))(X).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / HF_STATE_FILE).is_file()
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert [s.mode for s in mm.mode_history(again)] == [mode]
    with torch.no_grad():
        got = again(X).logits
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(base, expected, atol=1e-4)  # the modes change the outputs
    if mode == "gradnas":
        assert {n: hp.kept for n, hp in gradnas_hparams(again).items()} == {
            n: hp.kept for n, hp in gradnas_hparams(model).items()}


def test_checkpoint_that_does_not_fit_is_a_clear_error(tmp_path):
    model = mm.convert(_llama(32), "hard_concrete")
    model.save_pretrained(tmp_path)
    other = _llama(48)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(mm.StateError, match=r"saved from LlamaForCausalLM.*first differing shape "
                       r"model.layers.0.mlp.gate_proj.weight: saved \(32, 32\), model \(48, 32\)"):
        restore_modes(other, tmp_path)
    assert mm.mode_history(other) == []
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


_BLOCKED_LOAD = textwrap.dedent("""
    import importlib.abc, sys
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "modeopt_masks":
                raise ImportError("blocked")
    sys.meta_path.insert(0, Blocker())
    import torch, transformers
    m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
    with torch.no_grad():
        out = m(torch.tensor([[1, 5, 7, 2, 9, 3]])).logits
    torch.save(out, sys.argv[2])
""")


@pytest.mark.parametrize("mode", ["hard_concrete", "gradnas"])
def test_without_the_library_it_loads_the_unconverted_base_and_says_so(tmp_path, mode):
    """Never a silent drop: transformers' load report lists the marker and every mask tensor
    (gradnas has no tensor of its own: the marker alone says the selections were dropped)."""
    model = mm.convert(_llama(), mode)
    _perturb(model, mode)
    with torch.no_grad():
        base = mm.unconvert(copy.deepcopy(model)).eval()(X).logits
    masks = [k for k in model.state_dict() if "_mask." in k]
    assert bool(masks) == (mode != "gradnas")
    model.save_pretrained(tmp_path / "ckpt")
    proc = subprocess.run([sys.executable, "-I", "-c", _BLOCKED_LOAD, str(tmp_path / "ckpt"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert torch.allclose(torch.load(tmp_path / "out.pt"), base, atol=1e-6)
    report = proc.stderr + proc.stdout
    assert f"{MARKER_TENSOR} | UNEXPECTED" in " ".join(report.split())
    # (the report folds layer indices: model.layers.{0, 1}.mlp...)
    assert all(re.sub(r"layers\.\d+\.", "layers.{0, 1}.", name) in report for name in masks)


def test_with_the_library_the_expected_keys_are_not_reported(tmp_path, capfd):
    model = mm.convert(_llama(), "hard_concrete")
    model.save_pretrained(tmp_path)
    capfd.readouterr()
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path)
    out = "".join(capfd.readouterr())
    assert MARKER_TENSOR not in out and "weight_mask" not in out and "UNEXPECTED" not in out
    assert [s.mode for s in mm.mode_history(again)] == ["hard_concrete"]
    # the class attribute borrowed during the load is put back
    assert "_keys_to_ignore_on_load_unexpected" not in transformers.LlamaForCausalLM.__dict__


def test_a_state_file_from_another_save_is_refused(tmp_path):
    a = mm.convert(_llama(), "hard_concrete")
    b = mm.convert(_llama(), ("hard_concrete", {"nn.Linear": {"*": {}, "*mlp*": None}}))
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    (tmp_path / "a" / HF_STATE_FILE).write_bytes((tmp_path / "b" / HF_STATE_FILE).read_bytes())
    with pytest.raises(mm.StateError, match="does not belong to the weights beside it"):
        transformers.LlamaForCausalLM.from_pretrained(tmp_path / "a")


def test_config_and_weights_that_disagree_name_both_shapes(tmp_path):
    mm.convert(_llama(32), "magnitude_pruning").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
    with pytest.raises(mm.StateError, match=r"config.json describes model.layers.0.mlp.gate_proj"
                       r".weight as \(40, 32\), the weights hold \(32, 32\) \(5 more differ\)"):
        transformers.LlamaForCausalLM.from_pretrained(tmp_path)


_TRAIN = textwrap.dedent("""
    import json, sys
    import torch, transformers as tf, modeopt_masks as mm
    torch.set_num_threads(1)
    mm.enable_huggingface_checkpointing()
    out, resume = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
    if resume:  # a fresh process: the modes come back with the checkpoint
        model = tf.GPT2LMHeadModel.from_pretrained(resume)
        assert [s.mode for s in mm.mode_history(model)] == ["continuous_sparsification"]
    else:
        torch.manual_seed(0)
        cfg = tf.GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = mm.convert(tf.GPT2LMHeadModel(cfg), "continuous_sparsification")
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 32, (24, 8), generator=g)]
    args = tf.TrainingArguments(out, max_steps=6, save_steps=3, logging_steps=1,
                                per_device_train_batch_size=4, learning_rate=0.05, use_cpu=True,
                                report_to=[], seed=0, disable_tqdm=True, save_only_model=False)
    schedule = mm.ExponentialSchedule(1.0, 50.0, total=6)
    trainer = tf.Trainer(model=model, args=args, train_dataset=data,
                         callbacks=[mm.MaskTrainingCallback(schedule, unit="step")])
    trainer.train(resume_from_checkpoint=resume)
    losses = {int(h["step"]): h["loss"] for h in trainer.state.log_history if "loss" in h}
    masks = {k: v.tolist() for k, v in model.state_dict().items() if "mask" in k}
    print("RESULT" + json.dumps({"losses": losses, "masks": masks}))
""")


def _train(*argv: str) -> dict:
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _TRAIN, *argv], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_trainer_resume_in_a_fresh_process_continues_the_same_run(tmp_path):
    full = _train(str(tmp_path / "full"))
    ckpt = tmp_path / "full" / "checkpoint-3"
    assert (ckpt / HF_STATE_FILE).is_file()
    resumed = _train(str(tmp_path / "resumed"), str(ckpt))
    assert full["masks"] and resumed["masks"].keys() == full["masks"].keys()
    for name, values in full["masks"].items():
        assert torch.allclose(torch.tensor(resumed["masks"][name]), torch.tensor(values),
                              atol=1e-6), name
    later = {s: v for s, v in full["losses"].items() if int(s) > 3}
    assert later and all(resumed["losses"][s] == pytest.approx(v, abs=1e-6)
                         for s, v in later.items())
    # the masks did train (a resume that dropped them would not match anyway)
    assert full["losses"]["1"] != full["losses"]["6"]


def test_exported_save_writes_a_model_card(tmp_path):
    model = _llama(32)
    before = sum(p.numel() for p in model.parameters())
    batches = [{"input_ids": X, "labels": X}]
    model, result = mm.prune(model, ("gradnas", {"uniform": True}), constraints={"params": "85%"},
                             config={"data_loader": batches, "progress": False})
    kept = {n: hp.active for n, hp in gradnas_hparams(model).items()}
    model = mm.export(model)
    after = sum(p.numel() for p in model.parameters())
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert f"params: {before} -> {after}" in card
    assert f"target {result.constraints['params']['target']:.6g}" in card
    assert "1 batches from data_loader" in card
    for name, active in kept.items():
        assert f"| {name} | {active} of " in card
    assert not (tmp_path / HF_STATE_FILE).exists()  # exported: no modes left to restore


def test_converted_per_layer_export_round_trips(tmp_path):
    """A per-layer gradnas export converted again: the folder carries the structure record,
    so both the library's load and trust_remote_code build the per-layer shapes first."""
    model = mm.convert(_llama(32), ("gradnas", {"hf.attention": None}))
    for i, hp in enumerate(gradnas_hparams(model).values()):
        hp.keep(list(range(hp.n_units // (2 + i))))  # every layer keeps its own width
    model = mm.convert(mm.export(model), "hard_concrete")
    _perturb(model, "hard_concrete")
    model.eval()
    widths = {n: tuple(p.shape) for n, p in model.named_parameters()
              if n.endswith("gate_proj.weight")}
    assert len(set(widths.values())) == 2, widths
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["modeopt_structure"]["modules"] and "auto_map" in config
    assert "modeopt_structure" not in model.config.to_dict()  # the model is left as it was
    with torch.no_grad():
        want = model(X).logits
    for load in (lambda: transformers.LlamaForCausalLM.from_pretrained(tmp_path),
                 lambda: transformers.AutoModelForCausalLM.from_pretrained(
                     tmp_path, trust_remote_code=True)):
        again = load().eval()
        assert [s.mode for s in mm.mode_history(again)] == ["hard_concrete"]
        saved, loaded = model.state_dict(), again.state_dict()
        assert saved.keys() == loaded.keys()
        assert all(torch.equal(saved[k], loaded[k]) for k in saved)
        with torch.no_grad():
            assert torch.equal(again(X).logits, want)
    # the reloaded model saves the record again
    again.save_pretrained(tmp_path / "again")
    third = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "again").eval()
    with torch.no_grad():
        assert torch.equal(third(X).logits, want)


def test_converted_per_layer_export_the_record_cannot_describe_is_refused(tmp_path):
    """gradnas again on a per-layer export replaces layer classes: save_pretrained refuses
    before writing anything, and the route it names (mm.save / mm.restore) works."""
    model = mm.convert(_llama(32), ("gradnas", {"hf.attention": None}))
    for i, hp in enumerate(gradnas_hparams(model).values()):
        hp.keep(list(range(hp.n_units // (2 + i))))
    model = mm.export(model).eval()
    model.save_pretrained(tmp_path / "export")
    model = mm.convert(model, ("gradnas", {"hf.attention": None}))
    _perturb(model, "gradnas")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"converted again \(\['gradnas'\]\).*mm\.save.*"
                       r"mm\.restore"):
        model.save_pretrained(tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    assert [s.mode for s in mm.mode_history(model)] == ["gradnas"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.warns(UserWarning, match="restore this checkpoint into the exported"):
        mm.save(model, tmp_path / "state")
    export = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export",
                                                               trust_remote_code=True).eval()
    again = mm.restore(export, tmp_path / "state")
    with torch.no_grad():
        assert torch.equal(again(X).logits, model(X).logits)
