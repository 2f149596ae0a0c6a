"""``import modeopt_masks`` is lean: neither torch._dynamo nor transformers until needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import modeopt_masks as mm


def _run(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_loads_neither_dynamo_nor_transformers():
    loaded = _run(
        "import json, sys, modeopt_masks\n"
        "print(json.dumps({m: m in sys.modules for m in ('torch._dynamo', 'transformers')}))"
    )
    assert loaded == {"torch._dynamo": False, "transformers": False}


def test_converting_a_plain_torch_model_stays_lean_and_lazy_names_still_load():
    loaded = _run(
        "import json, sys, torch, modeopt_masks as mm\n"
        "net = mm.convert(torch.nn.Sequential(torch.nn.Linear(4, 4)), 'magnitude_pruning')\n"
        "net.eval()(torch.randn(2, 4)); mm.set_ablation(net, 'randomly_sampled')\n"
        "net(torch.randn(2, 4)); mm.export(net)\n"
        "lean = {m: m in sys.modules for m in ('torch._dynamo', 'transformers')}\n"
        "lazy = mm.MaskTrainingCallback.__module__\n"
        "print(json.dumps({**lean, 'lazy': lazy, 'tf_now': 'transformers' in sys.modules}))"
    )
    assert loaded == {"torch._dynamo": False, "transformers": False,
                      "lazy": "modeopt_masks.training", "tf_now": True}


def test_every_public_name_resolves():
    missing = [name for name in mm.__all__ if not hasattr(mm, name)]
    assert missing == []
    assert set(mm.__all__) <= set(dir(mm))
    try:
        mm.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:  # pragma: no cover
        raise AssertionError("unknown attribute did not raise")


def test_gpt2_conv1d_layers_are_found_once_transformers_is_loaded():
    from transformers.pytorch_utils import Conv1D

    net = mm.convert(torch_seq(Conv1D(4, 3)), "magnitude_pruning")
    assert list(mm.masked_modules(net)) == ["0"]


def torch_seq(*layers):
    import torch.nn as nn

    return nn.Sequential(*layers)
