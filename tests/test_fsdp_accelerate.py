"""The HF ``Trainer`` with FSDP2 under ``accelerate launch`` (2 CPU processes, gloo).

``tests/fsdp_trainer_script.py`` trains masks with ``MaskTrainingCallback`` on a
model sharded by ``shard_masked_model``, checkpoints (sharded), and resumes in a
fresh model and Trainer; the resumed run must end where the uninterrupted one did.
The launch has a timeout: a hung job fails the test instead of hanging CI.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None or importlib.util.find_spec("transformers")
    is None, reason="needs accelerate and transformers")

HERE = Path(__file__).resolve().parent
CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
use_cpu: true
num_machines: 1
num_processes: 2
main_process_ip: 127.0.0.1
main_process_port: {port}
mixed_precision: 'no'
fsdp_config:
  fsdp_version: 2
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_reshard_after_forward: true
"""


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    from test_fsdp import free_port

    out = tmp_path_factory.mktemp("trainer")
    config = out / "fsdp2.yaml"
    config.write_text(CONFIG.format(port=free_port()))
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true",
               PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
           str(HERE / "fsdp_trainer_script.py"), str(out)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"accelerate launch did not finish in 300 s: {str(e.stderr)[-2000:]}")
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(out / "result.pt", weights_only=False)


def test_trainer_ran_sharded_on_two_processes(result):
    first = result["first"]
    assert first["distributed"] == 2
    assert first["wrapped"].startswith("FSDP")  # the FSDP2 module itself, not a DDP wrapper
    assert len(first["losses"]) == 4 and all(torch.isfinite(torch.tensor(first["losses"])))
    # MaskTrainingCallback annealed per step and logged the density
    assert first["temperature"] == pytest.approx(10.0)
    assert len(first["mask_density"]) >= 4  # every step's log (and the summary)
    assert "pytorch_model_fsdp_0" in result["files"] and "optimizer_0" in result["files"]


def test_trainer_resume_from_sharded_checkpoint_equals_uninterrupted(result):
    first, resumed = result["first"], result["resumed"]
    # the resumed Trainer's log history starts with the checkpoint's two steps
    assert resumed["losses"] == pytest.approx(first["losses"], rel=1e-5)
    assert resumed["history"][0][0] == 2  # the callback re-annealed from step 2
    assert resumed["temperature"] == first["temperature"]
    assert first["final"].keys() == resumed["final"].keys()
    for key, value in first["final"].items():
        torch.testing.assert_close(resumed["final"][key], value, rtol=1e-5, atol=1e-6)
    masks = [k for k in first["final"] if k.endswith("weight_mask.logits")]
    assert masks and all((first["final"][k] - 0.05).abs().max() > 1e-3 for k in masks)
