"""Run by ``accelerate launch`` from tests/test_fsdp_accelerate.py (2 CPU processes, FSDP2).

Trains a converted tiny BERT with the HF ``Trainer`` and ``MaskTrainingCallback``
for 4 steps (sharded checkpoints at steps 2 and 4), then, in a fresh model and
Trainer, resumes from the step-2 checkpoint to step 4. Rank 0 writes both runs'
losses, temperatures and full final states to ``<out>/result.pt``.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import transformers
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.device_mesh import init_device_mesh
from transformers import Trainer, TrainingArguments

import modeopt_masks as mm
from modeopt_masks.distributed import full_state_dict, shard_masked_model
from modeopt_masks.training import ExponentialSchedule, MaskTrainingCallback

MODE = ("continuous_sparsification",
        {"nn.Linear": {"*": {"mask_init_value": 0.05}, "classifier": None}})


class Data(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(5)
        self.ids, self.labels = torch.randint(0, 30, (16, 6), generator=g), torch.arange(16) % 3

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def tiny_bert() -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def run(out: str, resume: str | None) -> dict:
    args = TrainingArguments(  # sets up the process group (accelerate's PartialState)
        out, use_cpu=True, max_steps=4, save_steps=2, per_device_train_batch_size=2,
        learning_rate=0.05, report_to=[], logging_steps=1, seed=0, disable_tqdm=True,
        fsdp="full_shard", fsdp_config={"fsdp_version": 2})
    assert args.distributed_state is not None and dist.is_initialized()
    model = mm.convert(tiny_bert(), MODE)  # convert first: the whole model, on every rank
    shard_masked_model(model, init_device_mesh("cpu", (dist.get_world_size(),)))
    callback = MaskTrainingCallback(ExponentialSchedule(1.0, 10.0, total=4), unit="step")
    trainer = Trainer(model=model, args=args, train_dataset=Data(), callbacks=[callback])
    state = trainer.accelerator.state
    # accelerate 1.15 on CPU: use_cpu gives MULTI_CPU, for which AcceleratorState never
    # selects FSDP (only accelerator device types do), so prepare() would wrap the sharded
    # model in DDP. Say it is FSDP: prepare() then returns the FSDPModule as it is.
    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")
        trainer.is_fsdp_enabled = True
    trainer.train(resume_from_checkpoint=resume)
    return {"losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
            "mask_density": [h["mask_density"] for h in trainer.state.log_history
                             if "mask_density" in h],
            "temperature": mm.get_temperature(model), "history": callback.history,
            "wrapped": type(trainer.model_wrapped).__name__,
            "distributed": state.num_processes,
            "final": full_state_dict(model)}


def main() -> None:
    torch.set_num_threads(1)
    out = sys.argv[1]
    first = run(os.path.join(out, "run"), None)
    resumed = run(os.path.join(out, "run"), os.path.join(out, "run", "checkpoint-2"))
    if dist.get_rank() == 0:
        torch.save({"first": first, "resumed": resumed,
                    "files": sorted(os.listdir(os.path.join(out, "run", "checkpoint-2")))},
                   os.path.join(out, "result.pt"))


if __name__ == "__main__":
    main()
