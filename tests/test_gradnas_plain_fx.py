"""gradnas on plain PyTorch modules with a hand-written forward (found by torch.fx tracing)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import modeopt_masks as mm
from modeopt_masks.pruning import prune
from modeopt_masks.structured import gradnas_hparams


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(8, 32), nn.Linear(32, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(x + self.fc2(F.gelu(self.fc1(x)).relu()))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn, self.act = nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU()
        self.conv2 = nn.Conv2d(12, 4, 3)

    def forward(self, x):
        return self.conv2(self.act(self.bn(self.conv1(x)))).mean((2, 3))


class Branchy(nn.Module):
    """fc1's output is used twice: its channels must not be searched."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(torch.relu(h)) + h


class Untraceable(nn.Module):
    def __init__(self, sequential: bool):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)
        self.seq = nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 2)) if sequential else None

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: symbolic_trace fails
            x = -x
        y = self.fc2(F.relu(self.fc1(x)))
        return self.seq(y) if self.seq is not None else y


def _data(shape, n=3):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(*shape, generator=g),) for _ in range(n)]


@pytest.mark.parametrize("make,shape,producer,consumer", [
    (Residual, (6, 8), "fc1", "fc2"), (ConvNet, (4, 1, 6, 6), "conv1", "conv2")])
def test_traced_custom_module_prunes_exports_and_matches(make, shape, producer, consumer):
    torch.manual_seed(0)
    model = make().eval()
    model, result = prune(model, ("gradnas", {"nn.Linear": {"*": {}, "head": None}}
                                  if make is Residual else {}),
                          constraints={"params": "80%"},
                          config={"data_loader": _data(shape),
                                  "loss_func": lambda out, b: out.pow(2).mean(), "progress": False})
    assert list(gradnas_hparams(model)) == [producer]
    kept = result.selection[producer]
    assert 0 < kept < getattr(model, producer).weight.shape[0]
    x = _data(shape, 1)[0][0]
    with torch.no_grad():
        masked = model(x)
    model = mm.export(model)
    assert getattr(model, producer).weight.shape[0] == kept == getattr(model, consumer).weight.shape[1]
    if make is ConvNet:
        assert model.bn.num_features == kept and model.bn.running_mean.shape == (kept,)
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked, atol=1e-5, rtol=1e-5)


def test_a_value_used_twice_is_not_a_structure():
    with pytest.raises(ValueError, match="no searchable dimension"):
        mm.convert(Branchy(), "gradnas")


def test_untraceable_model_error_names_the_tracing_failure_and_leaves_model_unchanged():
    net = Untraceable(sequential=False)
    with pytest.raises(ValueError, match=r"symbolic_trace\(Untraceable\) failed"):
        mm.convert(net, "gradnas")
    assert mm.mode_history(net) == [] and type(net.fc2) is nn.Linear
    net = mm.convert(Untraceable(sequential=True), "gradnas")  # Sequential pairs still work
    assert list(gradnas_hparams(net)) == ["seq.0"]
