"""A tiny ViT trained on scikit-learn digits: gradnas keeps far more accuracy than random heads."""

from __future__ import annotations

import random

import pytest
import torch

import modeopt_masks as mm
from modeopt_masks.pruning import prune
from modeopt_masks.structured import gradnas_hparams

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic training, and fair to a shared machine
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_gradnas_half_heads_beats_random_half_heads(one_thread):
    torch.manual_seed(2)
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(y))
    x, y = x[perm], y[perm]
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (
        (x[:1100], y[:1100]), (x[1100:1400], y[1100:1400]), (x[1400:], y[1400:]))
    cfg = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=16, intermediate_size=64,
        image_size=8, patch_size=4, num_channels=1, num_labels=10, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    model = transformers.ViTForImageClassification(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(15):
        for i in range(0, len(y_tr), 50):
            loss = model(pixel_values=x_tr[i:i + 50], labels=y_tr[i:i + 50]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()

    def accuracy(m) -> float:
        with torch.no_grad():
            return (m(pixel_values=x_te).logits.argmax(-1) == y_te).float().mean().item()

    assert accuracy(model) > 0.93
    model = mm.convert(model, ("gradnas", {"hf.mlp": None}))
    hps = gradnas_hparams(model)
    per_head = next(iter(hps.values())).structure.params_per_unit(model)
    full = sum(p.numel() for p in model.parameters())
    half = sum(hp.n_units for hp in hps.values()) // 2
    # held-out examples one at a time: the summed squared gradients estimate the Fisher score
    scoring = [{"pixel_values": x_va[i:i + 1], "labels": y_va[i:i + 1]} for i in range(300)]
    model, result = prune(model, "gradnas", constraints={"params": full - per_head * half},
                          config={"data_loader": scoring, "progress": False})
    assert sum(result.selection.values()) == half
    gradnas_acc = accuracy(model)

    random_accs = []
    for seed in range(5):
        rng = random.Random(seed)
        for hp in hps.values():
            hp.keep(rng.sample(range(hp.n_units), result.selection[hp.name]))
        random_accs.append(accuracy(model))
    mean_random = sum(random_accs) / len(random_accs)
    assert gradnas_acc > 0.85, (gradnas_acc, random_accs)
    assert gradnas_acc > mean_random + 0.1, (gradnas_acc, random_accs)
    assert gradnas_acc >= max(random_accs), (gradnas_acc, random_accs)
