"""Masks under FSDP2 (``fully_shard``): 2 CPU processes (gloo, 127.0.0.1, a CPU mesh).

One spawned job runs every scenario of ``SCENARIOS`` on 2 ranks; a second,
fresh job loads the sharded checkpoints the first one wrote half-way and
finishes the training. The single-process references run in the test process
(no process group, no sharding) on the whole global batch. Every join has a
timeout: a hung collective fails the test instead of hanging CI.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import modeopt_masks as mm
from modeopt_masks.distributed import (
    full_state_dict,
    gather_to,
    load_sharded,
    save_sharded,
    shard_masked_model,
    sync_ablation_draws,
)
from modeopt_masks.structured import gradnas_hparams
from modeopt_masks.training import DensityController

WORLD = 2
GLOBAL_BATCH = 4
STEPS = 4
SAVE_AT = 2  # the first job checkpoints after this many steps; the second resumes there
JOIN_TIMEOUT_S = 240.0
LR = 1.0


# -- tiny models ----------------------------------------------------------------------------
def tiny_bert(dtype: torch.dtype = torch.float32) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(cfg).to(dtype)


def tiny_llama(dtype: torch.dtype = torch.float32) -> nn.Module:
    """Grouped-query attention: 4 query heads share 2 KV heads."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg).to(dtype)


def _batch(model_name: str, rank: int, world: int) -> dict[str, torch.Tensor]:
    """This rank's share of the global batch (all of it for ``world == 1``)."""
    g = torch.Generator().manual_seed(5)
    if model_name == "llama":
        ids = torch.randint(0, 40, (GLOBAL_BATCH, 6), generator=g)
        batch = {"input_ids": ids, "labels": ids}
    else:
        batch = {"input_ids": torch.randint(0, 30, (GLOBAL_BATCH, 6), generator=g),
                 "labels": torch.arange(GLOBAL_BATCH) % 3}
    n = GLOBAL_BATCH // world
    return {k: v[rank * n: (rank + 1) * n] for k, v in batch.items()}


MODELS = {"bert": tiny_bert, "llama": tiny_llama}

#: name -> (model, dtype, mode, separate_masks)
TRAININGS: dict[str, tuple[str, torch.dtype, Any, bool]] = {
    # base trained with the masks (fp32)
    "bert_cs": ("bert", torch.float32, ("continuous_sparsification", {
        "nn.Linear": {"*": {"mask_init_value": 0.05}, "classifier": None}}), False),
    # GQA Llama, bf16 base frozen, fp32 hard-concrete logits (noise drawn in every forward)
    "llama_hc_bf16": ("llama", torch.bfloat16, ("hard_concrete", {
        "nn.Linear": {"*": {"mask_init_percentage": 0.6}, "lm_head": None},
        "freeze_base": True}), False),
    # bf16 base trained *and* fp32 masks: the masks are FSDP units of their own
    "bert_cs_bf16_trained": ("bert", torch.bfloat16, ("continuous_sparsification", {
        "nn.Linear": {"*": {"mask_init_value": 0.05}, "classifier": None}}), True),
}


def _converted(name: str) -> nn.Module:
    model_name, dtype, mode, _ = TRAININGS[name]
    return mm.convert(MODELS[model_name](dtype), mode).train()


#: the trainings that also steer the density with a DensityController (its multipliers
#: follow the global expected density, so they must agree with one process too)
CONTROLLED = ("llama_hc_bf16",)
#: the trainings checkpointed half-way and resumed in a second, fresh job
RESUMED = ("bert_cs", "llama_hc_bf16")


def _build(name: str, world: int, mesh: Any
           ) -> tuple[nn.Module, torch.optim.Optimizer, DensityController | None]:
    model = _converted(name)
    if world > 1:
        shard_masked_model(model, mesh, separate_masks=TRAININGS[name][3])
    # SGD: linear in the gradients (Adam would blow up the rounding noise of gradients that
    # are zero in exact arithmetic, such as attention key biases, to whole steps)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR, momentum=0.9)
    ctrl = DensityController(0.3, steer="expected", lr=1.0, lambda_2_init=1.0, warmup_steps=0) if name in CONTROLLED else None
    return model, opt, ctrl


def _global_mean(value: torch.Tensor, world: int) -> float:
    value = value.detach().double().clone()
    if world > 1:
        dist.all_reduce(value)
        value /= world
    return float(value)


def _steps(name: str, model: nn.Module, opt: torch.optim.Optimizer,
           ctrl: DensityController | None, rank: int, world: int, steps: range,
           ckpt: str | None = None) -> list[float]:
    batch = _batch(TRAININGS[name][0], rank, world)
    losses = []
    for step in steps:
        torch.manual_seed(100 + step)  # the same hard-concrete noise on every rank and run
        opt.zero_grad()
        task = model(**batch).loss
        loss = task.float() + 1e-3 * mm.l0_loss(model)
        if ctrl is not None:
            loss = loss + ctrl(model)
        loss.backward()
        opt.step()
        losses.append(_global_mean(task, world))
        if ckpt is not None and step + 1 == SAVE_AT:
            save_sharded(model, ckpt, opt, extra=_ctrl_state(ctrl))
    return losses


def _ctrl_state(ctrl: DensityController | None) -> dict[str, Any] | None:
    return None if ctrl is None else {"density_controller": ctrl.state_dict()}


def _final(name: str, model: nn.Module, ctrl: DensityController | None
           ) -> dict[str, torch.Tensor]:
    """The full trained state (rank 0 gets it; other ranks an empty dict), the L0 count, the
    controller's multipliers and the eval output on the global batch (every rank computes
    those: global values)."""
    state = full_state_dict(model)
    out = {k: v.float() for k, v in state.items()}
    out["l0"] = torch.tensor(mm.l0_stats(model)["total_l0"])
    model.eval()  # hard masks; under sharding the eval cache is off and must not go stale
    with torch.no_grad():
        out["eval.logits"] = model(**_batch(TRAININGS[name][0], 0, 1)).logits.float()
        out["eval.l0"] = torch.tensor(mm.l0_stats(model)["total_l0"])
    model.train()
    if ctrl is not None:
        out["ctrl.lambda_1"], out["ctrl.lambda_2"] = ctrl.lambda_1.float(), ctrl.lambda_2.float()
    return out


def training(name: str, rank: int, world: int, mesh: Any, ckpt: str | None = None
             ) -> dict[str, Any]:
    model, opt, ctrl = _build(name, world, mesh)
    losses = _steps(name, model, opt, ctrl, rank, world, range(STEPS), ckpt)
    return {"losses": losses, "final": _final(name, model, ctrl)}


def resumed(name: str, rank: int, world: int, mesh: Any, ckpt: str) -> dict[str, Any]:
    """A fresh job: convert, shard, optimizer, load the half-way checkpoint, finish."""
    model, opt, ctrl = _build(name, world, mesh)
    load_sharded(model, ckpt, opt, extra=_ctrl_state(ctrl))
    losses = _steps(name, model, opt, ctrl, rank, world, range(SAVE_AT, STEPS))
    return {"losses": losses, "final": _final(name, model, ctrl)}


GRADNAS_BATCHES = 4


def gradnas_prune(rank: int, world: int, mesh: Any, wrap: str) -> dict[str, Any]:
    """gradnas ``prune`` of a tiny BERT on this rank's half of the batches."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(9)
    batches = [{"input_ids": torch.randint(0, 30, (2, 6), generator=g),
                "labels": torch.randint(0, 3, (2,), generator=g)} for _ in range(GRADNAS_BATCHES)]
    n = GRADNAS_BATCHES // world
    model = mm.convert(tiny_bert(), ("gradnas", {"hf.attention": {"divisor": 1},
                                                 "hf.mlp": {"divisor": 4}}))
    target: nn.Module = model
    if world > 1 and wrap == "fsdp":
        shard_masked_model(model, mesh)
    elif world > 1 and wrap == "ddp":
        target = nn.parallel.DistributedDataParallel(model).module  # prune the wrapped module
    target, result = mm.prune(target, "gradnas", constraints={"params": "80%"}, config={
        "data_loader": batches[rank * n: (rank + 1) * n],
        "loss_func": lambda out, b: F.cross_entropy(out.logits, b["labels"]),
        "progress": False})
    out: dict[str, Any] = {
        "kept": {name: hp.kept for name, hp in gradnas_hparams(target).items()},
        "scores": {name: hp.importance.clone() for name, hp in gradnas_hparams(target).items()},
    }
    if wrap == "fsdp":  # the selection survives a sharded checkpoint, and gathers for export
        fresh = mm.convert(tiny_bert(), ("gradnas", {"hf.attention": {"divisor": 1},
                                                     "hf.mlp": {"divisor": 4}}))
        gathered = gather_to(model, fresh)
        if rank == 0 or world == 1:
            out["exported_logits"] = mm.export(gathered.eval())(
                input_ids=batches[0]["input_ids"]).logits.detach()
    return out


def ablation_draws(rank: int, world: int, mesh: Any) -> dict[str, torch.Tensor]:
    """Sampled ablations on a sharded model: rank-local draws differ until synced."""
    model = mm.convert(tiny_bert(), ("continuous_sparsification", {
        "nn.Linear": {"*": {"mask_init_value": 0.1}, "classifier": None}}))
    with torch.no_grad():
        for layer in mm.masked_modules(model).values():
            layer.weight_mask.logits.view(-1)[1::2] = -1.0  # a circuit of every other entry
    shard_masked_model(model, mesh)
    model.eval()
    batch = _batch("bert", 0, 1)
    torch.manual_seed(1000 + rank)  # deliberately different generators per rank
    out = {}
    for ablation in ("randomly_sampled", "random_ablate"):
        mm.set_ablation(model, ablation, force_resample=True)
        with torch.no_grad():
            out[f"{ablation}.unsynced"] = model(**batch).logits
            sync_ablation_draws(model)
            out[f"{ablation}.synced"] = model(**batch).logits
    return out


def bad_setups(rank: int, world: int, mesh: Any) -> dict[str, str]:
    from torch.distributed.fsdp import fully_shard

    out = {}
    sharded = tiny_bert()
    fully_shard(sharded, mesh=mesh)
    try:
        mm.convert(sharded, "continuous_sparsification")
    except ValueError as e:
        out["convert_after_shard"] = str(e)
    # each rank converts with its own init: the masks would be a silent mixture of both
    mismatched = mm.convert(tiny_bert(), ("continuous_sparsification", {
        "nn.Linear": {"mask_init_value": 0.1 * (rank + 1)}}))
    try:
        shard_masked_model(mismatched, mesh)
    except RuntimeError as e:
        out["mismatched_values"] = str(e)
    # rank 1 masks one layer fewer
    layers = {"*": {}, "classifier": {}} if rank == 0 else {"*": {}}  # default: no classifier
    structure = mm.convert(tiny_bert(), ("continuous_sparsification", {"nn.Linear": layers}))
    try:
        shard_masked_model(structure, mesh)
    except RuntimeError as e:
        out["mismatched_layers"] = str(e)
    return out


# -- the spawned jobs ------------------------------------------------------------------------
def _first_job(rank: int, world: int, mesh: Any, out_dir: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in TRAININGS:
        ckpt = os.path.join(out_dir, f"ckpt_{name}") if name in RESUMED else None
        results[name] = training(name, rank, world, mesh, ckpt)
    results["gradnas_fsdp"] = gradnas_prune(rank, world, mesh, "fsdp")
    results["gradnas_ddp"] = gradnas_prune(rank, world, mesh, "ddp")
    results["bad_setups"] = bad_setups(rank, world, mesh)
    results["ablation_draws"] = ablation_draws(rank, world, mesh)
    return results


def _second_job(rank: int, world: int, mesh: Any, out_dir: str) -> dict[str, Any]:
    return {name: resumed(name, rank, world, mesh, os.path.join(out_dir, f"ckpt_{name}"))
            for name in RESUMED}


JOBS = {"first": _first_job, "second": _second_job}


def _worker(rank: int, job: str, port: int, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=WORLD)
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        results = JOBS[job](rank, WORLD, mesh, out_dir)
        torch.save(results, os.path.join(out_dir, f"{job}_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_bounded(fn: Any, args: tuple, nprocs: int = WORLD, timeout_s: float = JOIN_TIMEOUT_S
                  ) -> None:
    """``mp.start_processes`` joined with a deadline; on timeout the children are killed."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:  # spawn re-imports this module in the children
        sys.path.insert(0, here)
    context = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
        if time.monotonic() >= deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"the {nprocs}-process job did not finish in {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> dict[str, list[dict[str, Any]]]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("fsdp")
    results = {}
    for job in JOBS:
        spawn_bounded(_worker, (job, free_port(), str(out)))
        results[job] = [torch.load(out / f"{job}_rank{r}.pt", weights_only=False)
                        for r in range(WORLD)]
    return results


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    torch.set_num_threads(1)
    out: dict[str, Any] = {name: training(name, 0, 1, None) for name in TRAININGS}
    out["gradnas"] = gradnas_prune(0, 1, None, "fsdp")
    return out


#: float tolerance per training: fp32 runs agree to rounding (Adam magnifies the rounding of
#: near-zero gradients to ~1e-5 of the weights); bf16 forwards round each
#: matmul to 8 bits, so a different batch split moves the losses by bf16 ulps
TOLERANCE = {"bert_cs": (1e-5, 1e-5), "llama_hc_bf16": (2e-2, 2e-3),
             "bert_cs_bf16_trained": (2e-2, 2e-3)}


def _assert_final_close(got: dict, want: dict, name: str) -> None:
    rtol, atol = TOLERANCE[name]
    assert got.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=rtol, atol=atol * 10,
                                   msg=lambda m, key=key: f"{name}: {key}: {m}")


@pytest.mark.parametrize("name", list(TRAININGS))
def test_fsdp_training_equals_single_process(jobs, single, name):
    rtol, atol = TOLERANCE[name]
    ranks = jobs["first"]
    torch.testing.assert_close(ranks[0][name]["losses"], single[name]["losses"], rtol=rtol,
                               atol=atol)
    _assert_final_close(ranks[0][name]["final"], single[name]["final"], name)
    # the full state is gathered on rank 0; the L0 count is global on both ranks
    glob = ("ctrl.", "eval.", "l0")
    assert not any("." in k for k in ranks[1][name]["final"] if not k.startswith(glob))
    for key in [k for k in ranks[1][name]["final"] if k.startswith(glob)]:
        assert torch.equal(ranks[1][name]["final"][key], ranks[0][name]["final"][key]), key
    # the run trained something: masks moved from their init
    fresh = {k: v.float() for k, v in _converted(name).state_dict().items()}
    masks = [k for k in fresh if "_mask." in k]
    assert masks and all((ranks[0][name]["final"][k] - fresh[k]).abs().max() > 1e-3
                         for k in masks)
    if name in CONTROLLED:  # the multipliers rose (by the same global density on both ranks)
        assert float(ranks[0][name]["final"]["ctrl.lambda_1"]) > 0


@pytest.mark.parametrize("name", RESUMED)
def test_sharded_checkpoint_resume_equals_uninterrupted(jobs, name):
    first, second = jobs["first"], jobs["second"]
    rtol, atol = TOLERANCE[name]
    torch.testing.assert_close(second[0][name]["losses"], first[0][name]["losses"][SAVE_AT:],
                               rtol=rtol, atol=atol)
    _assert_final_close(second[0][name]["final"], first[0][name]["final"], name)


@pytest.mark.parametrize("wrap", ["gradnas_fsdp", "gradnas_ddp"])
def test_gradnas_prune_same_selection_on_every_rank_as_single_process(jobs, single, wrap):
    ranks = jobs["first"]
    assert ranks[0][wrap]["kept"] == ranks[1][wrap]["kept"] == single["gradnas"]["kept"]
    for name, score in single["gradnas"]["scores"].items():
        torch.testing.assert_close(ranks[0][wrap]["scores"][name], score, rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(ranks[1][wrap]["scores"][name], score, rtol=1e-6, atol=1e-12)
    # the search pruned something (the comparison is not of two untouched models)
    assert any(len(kept) < hp.n_units for kept, hp in zip(
        single["gradnas"]["kept"].values(),
        gradnas_hparams(mm.convert(tiny_bert(), "gradnas")).values(), strict=True))


def test_gradnas_gathered_export_equals_single_process(jobs, single):
    torch.testing.assert_close(jobs["first"][0]["gradnas_fsdp"]["exported_logits"],
                               single["gradnas"]["exported_logits"], rtol=1e-5, atol=1e-6)


def test_bad_setups_raise_clear_errors_on_every_rank(jobs):
    for rank, result in enumerate(jobs["first"]):
        bad = result["bad_setups"]
        assert "already sharded with fully_shard" in bad["convert_after_shard"], rank
        assert "rank 1 and rank 0 hold different models" in bad["mismatched_values"], rank
        assert "weight_mask.logits" in bad["mismatched_values"], rank
        assert "on one rank only" in bad["mismatched_layers"], rank
        assert "classifier.weight_mask.logits" in bad["mismatched_layers"], rank


def test_ablation_draws_synced_across_ranks_under_sharding(jobs):
    a, b = (r["ablation_draws"] for r in jobs["first"])
    for ablation in ("randomly_sampled", "random_ablate"):
        assert not torch.equal(a[f"{ablation}.unsynced"], b[f"{ablation}.unsynced"]), ablation
        assert torch.equal(a[f"{ablation}.synced"], a[f"{ablation}.unsynced"]), ablation
        assert torch.equal(b[f"{ablation}.synced"], a[f"{ablation}.unsynced"]), ablation
