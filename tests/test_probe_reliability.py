"""Reliability of the probing tools: copies, persistence, precision and the HF Trainer.

* ``copy.deepcopy`` / ``pickle`` of a :class:`ResidualUpdateModel` (post-LN BERT and pre-LN
  GPT-2, whose ``attn_stream`` is built from the layer input the hooks keep): the copy's hooks
  cache into the copy, never into the original, also after a forward with autograd.
* Copies of a :class:`SubnetworkProbe` / :class:`CircuitProbe` compute the same outputs and then
  train independently of the original.
* Saving a trained probe: ``probe.state_dict()`` into a probe built the same way on a fresh
  base model reproduces masks, probe and outputs; ``mm.save(probe.model)`` /
  ``mm.restore(fresh_base)`` reproduces the masked model.
* fp16 / bf16: cached vectors have the model's dtype; the SNN loss and its gradients stay finite.
* The HF ``Trainer`` trains a probe; ``attention_mask`` survives ``remove_unused_columns``.

DDP training of a ``SubnetworkProbe`` is a scenario in ``tests/test_distributed.py``.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn as nn
import transformers as T

import modeopt_masks as mm
from modeopt_masks.probing import (
    CircuitProbe,
    ResidualUpdateModel,
    SubnetworkProbe,
    soft_nearest_neighbour_loss,
)

VOCAB, HIDDEN = 40, 16
COPIES = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
}


def _bert() -> nn.Module:
    torch.manual_seed(0)
    return T.BertModel(T.BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=8, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0))


def _gpt2() -> nn.Module:
    torch.manual_seed(0)
    return T.GPT2Model(T.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=2,
                                    n_positions=8, resid_pdrop=0.0, embd_pdrop=0.0,
                                    attn_pdrop=0.0))


BASES = {"bert": _bert, "gpt2": _gpt2}


def _ids(n: int = 4, seq: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))


def _first_token(n: int = 4, seq: int = 5) -> torch.Tensor:
    mask = torch.zeros(n, seq, dtype=torch.bool)
    mask[:, 0] = True
    return mask


# -- ResidualUpdateModel copies ----------------------------------------------------------------
@pytest.mark.parametrize("how", list(COPIES))
@pytest.mark.parametrize("base", list(BASES))
def test_residual_model_copy_caches_into_itself(base, how):
    rum = ResidualUpdateModel({"target_layers": [0, 1], "stream": True}, BASES[base]())
    ids = _ids()
    rum(input_ids=ids)  # a forward with autograd: the cache holds non-leaf tensors
    ref = {k: v.detach().clone() for k, v in rum.vector_cache.items()}
    assert ref and all(v.grad_fn is not None for v in rum.vector_cache.values())

    twin = COPIES[how](rum)
    assert twin.vector_cache == {}  # past activations are not copied
    rum.vector_cache = {}
    twin(input_ids=ids)
    assert rum.vector_cache == {}, "the copy's hooks wrote into the original"
    assert sorted(twin.vector_cache) == sorted(ref)
    for key, value in ref.items():
        torch.testing.assert_close(twin.vector_cache[key], value, msg=key)
    # calling the copied model directly also caches into the copy
    twin.vector_cache = {}
    twin.wrapped_model(input_ids=ids)
    assert sorted(twin.vector_cache) == sorted(ref) and rum.vector_cache == {}

    # the original still caches into itself; removing the copy's hooks leaves it alone
    twin.remove_hooks()
    rum(input_ids=ids)
    assert sorted(rum.vector_cache) == sorted(ref) and twin.vector_cache == {}
    twin(input_ids=ids)
    assert twin.vector_cache == {}
    with rum.disabled():  # pausing one does not pause the other
        twin.add_hooks()
        twin(input_ids=ids)
        rum(input_ids=ids)
    assert sorted(twin.vector_cache) == sorted(ref) and rum.vector_cache == {}


# -- probe copies -------------------------------------------------------------------------------
def _subnetwork() -> SubnetworkProbe:
    return SubnetworkProbe({"probe_vector": "mlp_update_1", "n_classes": 3,
                            "target_layers": ["encoder.layer.1.*"], "l0_lambda": 1e-3,
                            "mask_hparams": {"mask_init_value": 0.2}}, _bert())


def _circuit() -> CircuitProbe:
    return CircuitProbe({"probe_vector": "mlp_update_0", "target_layers": ["h.0.mlp.*"],
                         "mask_method": "hard_concrete", "l0_lambda": 1e-3,
                         "mask_hparams": {"mask_init_percentage": 0.7}}, _gpt2())


PROBES = {"subnetwork": _subnetwork, "circuit": _circuit}
LABELS = torch.tensor([0, 1, 2, 1])


def _loss(probe: nn.Module, seed: int = 5) -> torch.Tensor:
    torch.manual_seed(seed)  # hard concrete draws noise in training
    return probe(input_ids=_ids(), labels=LABELS, token_mask=_first_token()).loss


def _train(probe: nn.Module, steps: int = 4) -> list[float]:
    opt = torch.optim.Adam([p for p in probe.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for step in range(steps):
        opt.zero_grad()
        loss = _loss(probe, seed=step)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _trainable(probe: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in probe.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("how", list(COPIES))
@pytest.mark.parametrize("kind", list(PROBES))
def test_probe_copy_equal_then_trains_independently(kind, how):
    probe = PROBES[kind]()
    _loss(probe).backward()  # a used probe: grads and a cache of non-leaf tensors
    probe.zero_grad(set_to_none=True)
    twin = COPIES[how](probe)
    torch.testing.assert_close(_loss(twin), _loss(probe))
    probe.eval(), twin.eval()
    with torch.no_grad():
        a = probe(input_ids=_ids(seed=1), labels=LABELS, token_mask=_first_token())
        b = twin(input_ids=_ids(seed=1), labels=LABELS, token_mask=_first_token())
    for key in a:
        torch.testing.assert_close(b[key], a[key], msg=key)

    before = _trainable(probe)
    twin.train()
    _train(twin)
    after_twin = _trainable(twin)
    assert any(not torch.equal(after_twin[n], before[n]) for n in before), "the copy did not train"
    for name, value in _trainable(probe).items():
        assert torch.equal(value, before[name]), f"training the copy moved the original's {name}"
    assert all(p.grad is None for p in probe.parameters())


# -- saving a probe -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(PROBES))
def test_trained_probe_state_dict_round_trip(kind, tmp_path):
    """How a user saves a probe: ``torch.save(probe.state_dict())``; to load, build the probe
    with the same config on a fresh base model and ``load_state_dict``."""
    probe = PROBES[kind]()
    _train(probe)
    torch.save(probe.state_dict(), tmp_path / "probe.pt")
    fresh = PROBES[kind]()
    moved = [k for k, v in fresh.state_dict().items() if not torch.equal(v, probe.state_dict()[k])]
    assert any("weight_mask" in k for k in moved)  # training moved the masks
    fresh.load_state_dict(torch.load(tmp_path / "probe.pt"))
    fresh.eval(), probe.eval()
    for name, layer in mm.masked_modules(probe.model).items():
        twin = mm.masked_modules(fresh.model)[name]
        assert torch.equal(twin.weight_mask.circuit(), layer.weight_mask.circuit()), name
    assert fresh.compute_l0_statistics() == probe.compute_l0_statistics()
    with torch.no_grad():
        torch.testing.assert_close(_loss(fresh), _loss(probe), rtol=0, atol=0)


@pytest.mark.parametrize("kind", list(PROBES))
def test_trained_probe_model_save_restore_reproduces_masks(kind, tmp_path):
    """``mm.save(probe.model)`` keeps the masked model (not the probe head): ``mm.restore``
    into a fresh base gives the same masks and the same hidden states."""
    probe = PROBES[kind]()
    _train(probe)
    probe.eval()
    mm.save(probe.model, tmp_path / "masked")
    restored = mm.restore((_bert if kind == "subnetwork" else _gpt2)(), tmp_path / "masked")
    restored.eval()
    masks, again = mm.masked_modules(probe.model), mm.masked_modules(restored)
    assert sorted(again) == sorted(masks)
    for name, layer in masks.items():
        assert torch.equal(again[name].weight_mask.circuit(), layer.weight_mask.circuit()), name
        for key, value in layer.weight_mask.state_dict().items():
            assert torch.equal(again[name].weight_mask.state_dict()[key], value), (name, key)
    with torch.no_grad():
        ref = probe.model(input_ids=_ids()).last_hidden_state
        torch.testing.assert_close(restored(input_ids=_ids()).last_hidden_state, ref,
                                   rtol=0, atol=0)


# -- precision -----------------------------------------------------------------------------------
DTYPES = (torch.float16, torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("base", list(BASES))
def test_residual_cache_has_the_model_dtype(base, dtype):
    rum = ResidualUpdateModel({"target_layers": [0, 1], "stream": True}, BASES[base]())
    with torch.no_grad():
        ref = {k: v.clone() for k, v in (rum(input_ids=_ids()), rum.vector_cache)[1].items()}
        rum.to(dtype)
        rum(input_ids=_ids())
    assert sorted(rum.vector_cache) == sorted(ref)
    for key, value in rum.vector_cache.items():
        assert value.dtype == dtype, key
        assert bool(torch.isfinite(value).all()), key
        torch.testing.assert_close(value.float(), ref[key], rtol=0.1, atol=0.1, msg=key)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("temperature", [1e-3, 1.0, 1e3])
def test_snn_loss_finite_in_low_precision(dtype, temperature):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(12, HIDDEN, generator=g) * 100).to(dtype).requires_grad_(True)
    y = torch.arange(12) % 3
    loss = soft_nearest_neighbour_loss(x, y, temperature)
    loss.backward()
    assert loss.dtype == torch.float32 and bool(torch.isfinite(loss))
    assert x.grad is not None and x.grad.dtype == dtype and bool(torch.isfinite(x.grad).all())
    ref = soft_nearest_neighbour_loss(x.detach().float(), y, temperature)
    torch.testing.assert_close(loss, ref, rtol=0.05, atol=0.05)
    # identical vectors (zero distances) and a zero vector stay finite too
    same = torch.zeros(4, HIDDEN, dtype=dtype)
    same[:3] = 1
    assert bool(torch.isfinite(soft_nearest_neighbour_loss(same, torch.tensor([0, 0, 1, 1]))))


def test_circuit_probe_trains_in_bf16():
    probe = _circuit().to(torch.bfloat16)
    losses = _train(probe, steps=3)
    assert all(torch.isfinite(torch.tensor(losses)))
    for name, p in probe.named_parameters():
        if p.requires_grad:
            assert p.dtype == torch.bfloat16 and bool(torch.isfinite(p).all()), name
            assert p.grad is not None and bool(torch.isfinite(p.grad.float()).all()), name


# -- HF Trainer ----------------------------------------------------------------------------------
class _Padded(torch.utils.data.Dataset):
    """Sequences with padding after a random length: ``attention_mask`` matters."""

    def __init__(self, n: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, VOCAB, (n, 6), generator=g)
        self.mask = torch.ones(n, 6, dtype=torch.long)
        for i, length in enumerate(torch.randint(2, 7, (n,), generator=g).tolist()):
            self.ids[i, length:], self.mask[i, length:] = 0, 0
        self.labels = self.ids[:, 1] % 3  # learnable from the first-token vector
        self.first = _first_token(n, 6)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i],
                "token_mask": self.first[i], "labels": self.labels[i]}


def test_trainer_trains_subnetwork_probe_and_keeps_attention_mask(tmp_path):
    """Default ``remove_unused_columns=True`` keeps ``attention_mask`` and ``token_mask``
    (named forward parameters); other model inputs need ``remove_unused_columns=False``."""
    probe = _subnetwork()
    seen: list[set[str]] = []
    probe.register_forward_pre_hook(lambda m, a, kw: seen.append(set(kw)), with_kwargs=True)
    before = _trainable(probe)
    args = T.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, learning_rate=0.05,
        num_train_epochs=4, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
        logging_steps=1, dataloader_num_workers=0)
    trainer = T.Trainer(model=probe, args=args, train_dataset=_Padded())
    trainer.train()
    assert seen and all({"attention_mask", "token_mask", "labels"} <= keys for keys in seen)
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0]
    after = _trainable(probe)
    mask_keys = [n for n in before if "weight_mask" in n]
    assert mask_keys and any(not torch.equal(after[n], before[n]) for n in mask_keys)
    # the attention mask reaches the model: padding does not change the probed vector
    data = _Padded()
    probe.eval()
    with torch.no_grad():
        full = probe(input_ids=data.ids[:4], attention_mask=data.mask[:4],
                     token_mask=data.first[:4]).hidden_states
        noisy = data.ids[:4].masked_fill(data.mask[:4] == 0, 7)
        again = probe(input_ids=noisy, attention_mask=data.mask[:4],
                      token_mask=data.first[:4]).hidden_states
    torch.testing.assert_close(again, full)
