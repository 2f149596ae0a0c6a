"""gradnas score types: the activation score (forward only) next to the gradient scores."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import modeopt_masks as mm
from modeopt_masks.pruning import prune
from modeopt_masks.structured import collect_scores, gradnas_hparams


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))


def test_activation_score_is_the_mean_unit_norm_of_the_consumer_input_and_needs_no_loss():
    net = _net()
    data = [torch.randn(8, 4) for _ in range(3)]
    expected = torch.stack([torch.relu(net[0](x)).abs().mean(0) for x in data]).mean(0)
    net = mm.convert(net, "gradnas")
    scores = collect_scores(net, data, score_type="activation", progress=False)  # no loss_func
    torch.testing.assert_close(scores["0"], expected.double().detach(), atol=1e-6, rtol=1e-6)
    assert net[0].weight.grad is None


def test_activation_score_prunes_a_silent_channel_first():
    net = _net()
    with torch.no_grad():
        net[0].bias[3] = -100.0  # channel 3 never fires after the ReLU
    data = [(torch.randn(16, 4),) for _ in range(2)]
    net, _ = prune(net, "gradnas", constraints={"params": "85%"},
                   config={"data_loader": data, "score_type": "activation", "progress": False})
    hp = gradnas_hparams(net)["0"]
    assert float(hp.importance[3]) == 0.0 and 3 not in hp.kept


def test_unknown_score_type_names_the_valid_ones():
    net = mm.convert(_net(), "gradnas")
    with pytest.raises(ValueError, match="'gradnas', 'michel', 'activation'"):
        collect_scores(net, [torch.randn(2, 4)], score_type="taylor", progress=False)
