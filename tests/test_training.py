"""Mask-training helpers: schedules, the density controller, the HF Trainer callback."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import tiny_bert

import modeopt_masks as mm
from modeopt_masks.circuit import CircuitConfig, CircuitModel
from modeopt_masks.training import DensityController, ExponentialSchedule, expected_density


def test_exponential_schedule():
    s = ExponentialSchedule(initial=2.0, final=200.0, total=4)
    assert s(0) == 2.0 and s(4) == pytest.approx(200.0) and s(10) == pytest.approx(200.0)
    assert s(2) == pytest.approx(20.0)  # geometric midpoint
    ratios = [s(t + 1) / s(t) for t in range(4)]
    assert ratios == pytest.approx([100 ** 0.25] * 4)  # constant factor per step/epoch
    net = mm.convert(nn.Sequential(nn.Linear(3, 3)), "continuous_sparsification")
    assert s.apply(net, 2) == pytest.approx(20.0) and mm.get_temperature(net) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        ExponentialSchedule(0.0, 1.0, 3)
    with pytest.raises(ValueError):
        ExponentialSchedule(1.0, 2.0, 0)


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


def _trained_mlp(x, y):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        loss = nn.functional.cross_entropy(net(x[:1400]), y[:1400])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


@pytest.mark.parametrize("method,hparams", [
    ("hard_concrete", {"mask_init_percentage": 0.9}),
    ("continuous_sparsification", {"mask_init_value": 0.5}),
])
def test_density_controller_reaches_the_requested_density(method, hparams):
    x, y = _digits()
    net = _trained_mlp(x, y)
    mm.convert(net, (method, {"nn.Linear": hparams, "freeze_base": True}))
    net.train()
    target, steps = 0.05, 400
    ctrl = DensityController(target, warmup_steps=steps // 3)
    sched = ExponentialSchedule(1.0, 20.0, total=steps)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], 0.1)
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        if method == "continuous_sparsification":
            sched.apply(net, step)
        idx = torch.randint(0, 1400, (256,), generator=gen)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx]) + ctrl(net)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ctrl.target() == target and int(ctrl.steps) == steps
    assert abs(ctrl.last_density - target) < 0.02  # expected density in training
    net.eval()
    hard = float(expected_density(net))  # the hard circuit's kept fraction
    assert abs(hard - target) < 0.02, hard
    with torch.no_grad():
        acc = (net(x[1400:]).argmax(1) == y[1400:]).float().mean().item()
    assert acc > 0.5  # 5% of the weights still do the task (chance is 0.1)


def test_density_controller_ascent_and_errors():
    net = mm.convert(nn.Sequential(nn.Linear(4, 4)), "continuous_sparsification")
    ctrl = DensityController(0.1, lr=2.0, lambda_2_init=1.0)
    p = ctrl(net)  # density 0.5, gap 0.4: uses the old multipliers, then ascends
    assert float(p.detach()) == pytest.approx(0.0 * 0.4 + 1.0 * 0.16)
    assert ctrl.lambda_1.item() == pytest.approx(0.8)
    assert ctrl.lambda_2.item() == pytest.approx(1.0 + 2.0 * 0.16)
    p.backward()
    assert net[0].weight_mask.logits.grad.abs().sum() > 0
    with torch.no_grad():  # no ascent without grad (evaluation)
        ctrl(net)
    assert ctrl.lambda_1.item() == pytest.approx(0.8)
    assert "lambda_1" in ctrl.state_dict()
    mp = mm.convert(nn.Sequential(nn.Linear(4, 4)), "magnitude_pruning")
    with pytest.raises(ValueError, match="nothing to control"):
        DensityController(0.1)(mp)
    with pytest.raises(ValueError):
        DensityController(1.5)


def test_warmup_moves_the_target_linearly():
    net = mm.convert(nn.Sequential(nn.Linear(4, 4)), "continuous_sparsification")
    ctrl = DensityController(0.1, warmup_steps=4)
    targets = []
    for _ in range(6):
        ctrl(net)
        targets.append(ctrl.target())
    assert targets == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.1, 0.1])  # from 0.5 to 0.1


def test_circuit_model_uses_the_controller_instead_of_lambda():
    model, inputs = tiny_bert()
    inputs["labels"] = torch.tensor([0, 1])
    ctrl = DensityController(0.2)
    circuit = CircuitModel(
        CircuitConfig(target_layers=["*.output.dense"], l0_lambda=1.0), model, ctrl
    ).train()
    assert "density_controller.lambda_1" in circuit.state_dict()
    ctrl.lambda_1.fill_(3.0)
    ctrl.lambda_2.fill_(5.0)
    out = circuit(**inputs)
    task = circuit.wrapped_model(**inputs).loss
    gap = expected_density(circuit.wrapped_model) - 0.2
    assert out.loss.detach().item() == pytest.approx((task + 3.0 * gap + 5.0 * gap**2).item())
    assert ctrl.lambda_1.item() > 3.0  # one ascent step per training forward


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n=16):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 99, (n, 7), generator=g)
        self.labels = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def _trainer(circuit, callback, tmp_path, **args):
    from transformers import Trainer, TrainingArguments

    targs = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=0.05,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
        logging_steps=2, dataloader_num_workers=0, **args,
    )
    return Trainer(model=circuit, args=targs, train_dataset=_Tokens(), callbacks=[callback])


def test_trainer_callback_anneals_per_step_and_logs(tmp_path):
    from transformers import TrainerCallback

    from modeopt_masks.training import MaskTrainingCallback

    model, _ = tiny_bert()
    circuit = CircuitModel(CircuitConfig(target_layers=["*.output.dense"],
                                         mask_hparams={"mask_init_value": 0.5}), model)
    sched = ExponentialSchedule(1.0, 50.0, total=6)
    cb = MaskTrainingCallback(sched, unit="step")
    assert isinstance(cb, TrainerCallback)
    logits_before = {n: p.clone() for n, p in circuit.named_parameters() if "weight_mask" in n}
    trainer = _trainer(circuit, cb, tmp_path, max_steps=6)
    trainer.train()
    assert cb.history == [(s, pytest.approx(sched(s))) for s in range(7)]
    assert circuit.temperature == pytest.approx(50.0)
    params = dict(circuit.named_parameters())
    assert any(not torch.equal(params[n], v) for n, v in logits_before.items())  # masks trained
    logged = [h for h in trainer.state.log_history if "mask_l0" in h]
    assert len(logged) >= 3  # logging_steps=2 over 6 steps, plus the final summary
    assert all(0 < h["mask_density"] <= 1 for h in logged)
    assert [h["mask_temperature"] for h in logged[:3]] == pytest.approx([sched(s) for s in (2, 4, 6)])


def test_trainer_callback_per_epoch_with_density_controller(tmp_path):
    from modeopt_masks.training import MaskTrainingCallback

    model, _ = tiny_bert()
    ctrl = DensityController(0.3)
    circuit = CircuitModel(CircuitConfig(mask_method="hard_concrete",
                                         target_layers=["*.output.dense"]), model, ctrl)
    sched = ExponentialSchedule(2 / 3, 0.1, total=3)
    cb = MaskTrainingCallback(sched, unit="epoch", density_controller=ctrl)
    trainer = _trainer(circuit, cb, tmp_path, num_train_epochs=3)
    trainer.train()
    assert [t for _, t in cb.history] == pytest.approx([sched(e) for e in range(4)])
    assert [s for s, _ in cb.history] == [0, 4, 8, 12]  # 16 examples / batch 4 per epoch
    assert circuit.temperature == pytest.approx(0.1)
    assert int(ctrl.steps) == 12 and ctrl.lambda_1.item() != 0.0
    logs = [h for h in trainer.state.log_history if "mask_l0" in h]
    assert logs and all("density_target" in h and "density_lambda_1" in h for h in logs)


def test_works_without_transformers():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import torch.nn as nn, modeopt_masks as mm\n"
        "from modeopt_masks.training import DensityController, ExponentialSchedule\n"
        "from modeopt_masks.circuit import CircuitConfig, CircuitModel\n"
        "c = CircuitModel(CircuitConfig(target_layers=['0']), nn.Sequential(nn.Linear(2, 2)))\n"
        "ExponentialSchedule(1, 10, 5).apply(c, 5); print(c.temperature)\n"
        "import modeopt_masks.training as t\n"
        "try:\n    t.MaskTrainingCallback(ExponentialSchedule(1, 10, 5))\n"
        "except ImportError as e:\n    print('needs transformers' in str(e))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["10.0", "True"]
