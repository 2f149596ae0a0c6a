"""Masks trained on a small real task (scikit-learn digits) with the weights frozen."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import modeopt_masks as mm


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32) / 16
    y = torch.tensor(y)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    return X[perm[:1400]], y[perm[:1400]], X[perm[1400:]], y[perm[1400:]]


def accuracy(net, X, y):
    with torch.no_grad():
        return (net(X).argmax(-1) == y).float().mean().item()


@pytest.mark.parametrize("mode", ["continuous_sparsification", "hard_concrete"])
def test_trained_masks_are_sparse_accurate_and_beat_random_masks(digits, mode):
    Xtr, ytr, Xte, yte = digits
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        loss = F.cross_entropy(net(Xtr), ytr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dense = accuracy(net.eval(), Xte, yte)
    weights_before = {n: p.detach().clone() for n, p in net.named_parameters()}

    rule = {"mask_init_value": 0.5} if mode == "continuous_sparsification" else {
        "mask_init_percentage": 0.9}
    net = mm.convert(net, (mode, {"freeze_base": True, "nn.Linear": rule})).train()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], 5e-2)
    steps, lam = (300, 2e-4) if mode == "continuous_sparsification" else (400, 1e-3)
    for step in range(steps):
        if mode == "continuous_sparsification":
            mm.set_temperature(net, 200.0 ** (step / steps))
        idx = torch.randint(0, len(Xtr), (256,))
        loss = F.cross_entropy(net(Xtr[idx]), ytr[idx]) + lam * mm.l0_loss(net)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    stats = mm.l0_stats(net)
    density = stats["total_l0"] / stats["max_l0"]
    masked = accuracy(net, Xte, yte)
    assert density <= 0.15, density
    assert masked >= dense - 0.03, (masked, dense)
    for n, p in net.named_parameters():  # the base never moved
        if n in weights_before:
            assert torch.equal(p, weights_before[n])

    # random masks with the same number of kept weights per layer
    random_accs = []
    for seed in range(3):
        rand = copy.deepcopy(net)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in mm.masked_modules(rand).values():
                tech = layer.weight_mask
                circuit = tech.circuit()
                keep = torch.zeros(circuit.numel(), dtype=torch.bool)
                keep[torch.randperm(circuit.numel(), generator=gen)[: int(circuit.sum())]] = True
                param = tech.logits if hasattr(tech, "logits") else tech.log_alpha
                param.copy_(torch.where(keep.view_as(circuit), 1.0, -1.0))
        random_accs.append(accuracy(rand, Xte, yte))
    assert max(random_accs) < masked - 0.3, (random_accs, masked)
