"""Masks under DDP: 2 CPU processes (gloo) spawned from the test.

Every scenario is a function ``scenario(rank, world_size) -> {name: tensor}``
in ``SCENARIOS``. One spawn runs all of them on 2 ranks; the test compares the
ranks with each other and, where the scenario is deterministic given the seed,
with a single-process run of the same function (``world_size=1``, the whole
global batch). ``cs_accelerate`` runs the ``cs`` training through
``accelerate.Accelerator`` (which the HF Trainer uses to wrap models) in the
same processes. ``gradnas`` scores a different shard of batches on each rank
(the scores are all-reduced, so both ranks choose the same subnetwork, that of
one process scoring every batch); ``gradnas_local`` turns the all-reduce off to
show that it is what makes them agree. ``circuit`` trains a ``CircuitModel``
wrapped in DDP, ``subnetwork_probe`` a ``SubnetworkProbe`` (masks and probe weights).
Adding a case = one function and one ``SCENARIOS`` entry (plus ``SINGLE_PROCESS_EQUAL`` if
it must also equal the single-process run).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import modeopt_masks as mm
from modeopt_masks.circuit import CircuitConfig, CircuitModel
from modeopt_masks.distributed import sync_ablation_draws
from modeopt_masks.structured import gradnas_hparams

WORLD = 2
GLOBAL_BATCH = 8
STEPS = 6


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    return torch.randn(GLOBAL_BATCH, 6, generator=g), torch.randn(GLOBAL_BATCH, 3, generator=g)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _train(mode, rank: int, world: int, use_accelerate: bool = False) -> dict[str, torch.Tensor]:
    """Train ``mode`` for a few steps on this rank's share of the global batch."""
    model = mm.convert(_mlp(), mode)
    net: nn.Module = model
    if world > 1 and not use_accelerate:
        net = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.3)
    backward = torch.Tensor.backward
    if use_accelerate:  # accelerate finds the process group from the env and wraps in DDP
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)
        assert accelerator.num_processes == world
        net, opt = accelerator.prepare(model, opt)
        assert isinstance(net, nn.parallel.DistributedDataParallel)
        backward = accelerator.backward
    x, y = _data()
    n = GLOBAL_BATCH // world
    x, y = x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n]
    for step in range(STEPS):
        # Hard concrete samples noise per mask entry in every forward: the same
        # seed on every rank (and in the single-process run) gives the same noise,
        # so the runs are comparable entry by entry.
        torch.manual_seed(100 + step)
        opt.zero_grad()
        loss = F.mse_loss(net(x), y) + 1e-3 * mm.l0_loss(model)
        backward(loss)
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def cs(rank: int, world: int) -> dict[str, torch.Tensor]:
    return _train(("continuous_sparsification", {"nn.Linear": {"mask_init_value": 0.05}}),
                  rank, world)


def cs_frozen_neuron(rank: int, world: int) -> dict[str, torch.Tensor]:
    return _train(("continuous_sparsification", {
        "nn.Linear": {"mask_init_value": 0.05, "mask_unit": "neuron", "mask_bias": True},
        "freeze_base": True}), rank, world)


def cs_accelerate(rank: int, world: int) -> dict[str, torch.Tensor]:
    """The same training as ``cs``, with accelerate preparing the model and optimizer."""
    return _train(("continuous_sparsification", {"nn.Linear": {"mask_init_value": 0.05}}),
                  rank, world, use_accelerate=True)


def hc(rank: int, world: int) -> dict[str, torch.Tensor]:
    return _train(("hard_concrete", {"nn.Linear": {"mask_init_percentage": 0.6}}), rank, world)


def magnitude(rank: int, world: int) -> dict[str, torch.Tensor]:
    """Fixed bool ``keep`` buffers go through DDP's buffer broadcast; base weights train."""
    return _train(("magnitude_pruning", {"nn.Linear": {"prune_percentage": 0.4}}), rank, world)


def sampled_draws(rank: int, world: int) -> dict[str, torch.Tensor]:
    """Ablation draws: differ across ranks when unseeded, agree after ``sync_ablation_draws``."""
    model = mm.convert(_mlp(), ("continuous_sparsification", {"nn.Linear": {"mask_init_value": 0.1}}))
    with torch.no_grad():
        for layer in mm.masked_modules(model).values():
            logits = layer.weight_mask.logits.view(-1)
            logits[1::3] = logits[2::3] = -1.0  # a circuit of every third entry
    model.eval()
    torch.manual_seed(1000 + rank)  # deliberately different generators per rank
    out: dict[str, torch.Tensor] = {}
    x, _ = _data()
    for ablation in ("randomly_sampled", "complement_sampled", "random_ablate"):
        mm.set_ablation(model, ablation, force_resample=True)
        with torch.no_grad():
            out[f"{ablation}.unsynced"] = model(x)
            sync_ablation_draws(model)
            out[f"{ablation}.synced"] = model(x)
            # a resample is a new local draw again; syncing again agrees again
            mm.set_ablation(model, ablation, force_resample=True)
            sync_ablation_draws(model)
            out[f"{ablation}.resynced"] = model(x)
    return out


GRADNAS_BATCHES = 4


def _gradnas_prune(rank: int, world: int, all_reduce: bool, suffix: str = ""
                   ) -> dict[str, torch.Tensor]:
    """Prune with gradnas on this rank's shard of the batches; the scores, kept units, output."""
    g = torch.Generator().manual_seed(77)
    batches = [(torch.randn(4, 6, generator=g), torch.randn(4, 3, generator=g))
               for _ in range(GRADNAS_BATCHES)]
    n = GRADNAS_BATCHES // world
    mine = batches[rank * n: (rank + 1) * n]  # a different shard of the data on each rank
    out: dict[str, torch.Tensor] = {}
    for score_type in ("gradnas", "michel"):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(),
                            nn.Linear(12, 3))
        net, result = mm.prune(net, "gradnas", constraints={"params": "55%"}, config={
            "data_loader": mine, "collect_func": lambda b: b[0],
            "loss_func": lambda o, b: F.mse_loss(o, b[1]), "score_type": score_type,
            "all_reduce": all_reduce, "progress": False})
        for name, hp in gradnas_hparams(net).items():
            out[f"{score_type}.scores.{name}{suffix}"] = hp.importance.clone()
            out[f"{score_type}.kept.{name}{suffix}"] = torch.tensor(hp.kept)
        out[f"{score_type}.output{suffix}"] = mm.export(net)(batches[0][0]).detach()
    return out


def gradnas(rank: int, world: int) -> dict[str, torch.Tensor]:
    return _gradnas_prune(rank, world, all_reduce=True)


def gradnas_local(rank: int, world: int) -> dict[str, torch.Tensor]:
    """Scores of the local shard only: the ranks disagree (compared in a test below)."""
    return _gradnas_prune(rank, world, all_reduce=False, suffix=".unsynced")


def joint(rank: int, world: int) -> dict[str, torch.Tensor]:
    """The joint search (hidden size, depth, heads, MLP) with a different shard of scoring
    and ranking batches per rank: scores and candidate KLs are averaged over the ranks, so
    both choose the candidate one process ranking every batch chooses."""
    from axes_models import batch, build, loss

    model = build("llama", hidden=32, layers=4, heads=4, kv=2, inter=64)
    scoring = [batch("llama", i) for i in range(4)]
    ranking = [batch("llama", 50 + i) for i in range(2)]
    n, m = len(scoring) // world, len(ranking) // world
    model, result = mm.prune(model, ("gradnas", {"axes": ["heads", "mlp", "hidden", "depth"]}),
                             constraints={"params": "60%"}, config={
        "data_loader": scoring[rank * n: (rank + 1) * n], "progress": False, "loss_func": loss,
        "eval_loader": ranking[rank * m: (rank + 1) * m],
        "axis_ratios": {"hidden": [1.0, 0.75, 0.5], "depth": [1.0, 0.75, 0.5]}})
    out = {f"joint.kept.{k}": torch.tensor(hp.kept) for k, hp in gradnas_hparams(model).items()}
    out["joint.kl"] = torch.tensor([c["kl"] for c in result.candidates if c["feasible"]],
                                   dtype=torch.float64)
    return out


class _LossNet(nn.Module):
    """A model that returns an HF-style ``{"loss", "logits"}`` when given labels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.fc2(torch.tanh(self.fc1(x)))
        return {"loss": F.mse_loss(logits, labels), "logits": logits}


def circuit(rank: int, world: int) -> dict[str, torch.Tensor]:
    """``CircuitModel`` (hard concrete, frozen base, L0 term in its loss) trained under DDP."""
    cfg = CircuitConfig(mask_method="hard_concrete", target_layers=["fc*"],
                        mask_hparams={"mask_init_percentage": 0.6}, l0_lambda=1e-2)
    model = CircuitModel(cfg, _LossNet()).train()
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    x, y = _data()
    n = GLOBAL_BATCH // world
    x, y = x[rank * n: (rank + 1) * n], y[rank * n: (rank + 1) * n]
    for step in range(STEPS):
        torch.manual_seed(100 + step)
        opt.zero_grad()
        net(x, labels=y)["loss"].backward()
        opt.step()
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.eval()
    for name, layer in mm.masked_modules(model.wrapped_model).items():
        out[f"circuit.{name}"] = layer.weight_mask.circuit().clone()
    return out


def subnetwork_probe(rank: int, world: int) -> dict[str, torch.Tensor]:
    """``SubnetworkProbe`` (masks on one BERT layer + a linear probe, frozen base) under DDP."""
    import transformers

    from modeopt_masks.probing import SubnetworkProbe

    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=8))
    probe = SubnetworkProbe({"probe_vector": "mlp_update_1", "n_classes": 3, "l0_lambda": 1e-3,
                             "target_layers": ["encoder.layer.1.*"],
                             "mask_hparams": {"mask_init_value": 0.2}}, bert)
    net: nn.Module = nn.parallel.DistributedDataParallel(probe) if world > 1 else probe
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    g = torch.Generator().manual_seed(5)
    ids, labels = torch.randint(0, 30, (GLOBAL_BATCH, 5), generator=g), torch.arange(8) % 3
    first = torch.zeros(GLOBAL_BATCH, 5, dtype=torch.bool)
    first[:, 0] = True
    n = GLOBAL_BATCH // world
    part = slice(rank * n, (rank + 1) * n)
    for _ in range(STEPS):
        opt.zero_grad()
        net(input_ids=ids[part], labels=labels[part], token_mask=first[part])["loss"].backward()
        opt.step()
    out = {k: v.detach().clone() for k, v in probe.state_dict().items()
           if "weight_mask" in k or k.startswith("probe.")}
    probe.eval()
    for name, layer in mm.masked_modules(probe.model).items():
        out[f"circuit.{name}"] = layer.weight_mask.circuit().clone()
    return out


SCENARIOS = {
    "cs": cs,
    "cs_frozen_neuron": cs_frozen_neuron,
    "hc": hc,
    "magnitude": magnitude,
    "sampled_draws": sampled_draws,
    "gradnas": gradnas,
    "gradnas_local": gradnas_local,
    "joint": joint,
    "circuit": circuit,
    "subnetwork_probe": subnetwork_probe,
}
#: scenarios whose DDP result must equal a single process on the global batch
SINGLE_PROCESS_EQUAL = ("cs", "cs_frozen_neuron", "hc", "magnitude", "gradnas", "joint", "circuit",
                        "subnetwork_probe")
if importlib.util.find_spec("accelerate") is not None:
    SCENARIOS["cs_accelerate"] = cs_accelerate


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    # the variables a launcher (torchrun, accelerate launch) sets; accelerate reads them
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=WORLD)
    try:
        results = {name: fn(rank, WORLD) for name, fn in SCENARIOS.items()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    out = tmp_path_factory.mktemp("ddp")
    # spawn re-imports this module in the children: make its directory importable there
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True,
                       start_method="spawn")
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_ranks_identical(ranks, name):
    a, b = ranks[0][name], ranks[1][name]
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith(".unsynced"):
            continue
        assert torch.equal(a[key], b[key]), f"{name}: {key} differs between ranks"


@pytest.mark.parametrize("name", SINGLE_PROCESS_EQUAL)
def test_ddp_equals_single_process_on_global_batch(ranks, name):
    torch.set_num_threads(1)
    single = SCENARIOS[name](0, 1)
    assert single.keys() == ranks[0][name].keys()
    for key, value in single.items():
        torch.testing.assert_close(ranks[0][name][key], value, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, key=key: f"{name}: {key}: {m}")


@pytest.mark.parametrize(("name", "mode", "key"), [
    ("cs", "continuous_sparsification", "0.weight_mask.logits"),
    ("hc", "hard_concrete", "0.weight_mask.log_alpha"),
    ("magnitude", "magnitude_pruning", "0.weight"),
])
def test_training_moved_what_it_trains(ranks, name, mode, key):
    """The comparisons above are meaningful: the trained tensors left their init."""
    fresh = mm.convert(_mlp(), mode).state_dict()[key]
    assert (ranks[0][name][key] - fresh).abs().max() > 1e-3


def test_circuit_training_moved_the_masks(ranks):
    key = "wrapped_model.fc1.weight_mask.log_alpha"
    cfg = CircuitConfig(mask_method="hard_concrete", target_layers=["fc*"],
                        mask_hparams={"mask_init_percentage": 0.6})
    fresh = CircuitModel(cfg, _LossNet()).state_dict()[key]
    assert (ranks[0]["circuit"][key] - fresh).abs().max() > 1e-3
    # the base stayed frozen on both ranks
    assert torch.equal(ranks[0]["circuit"]["wrapped_model.fc1.weight"],
                       CircuitModel(cfg, _LossNet()).state_dict()["wrapped_model.fc1.weight"])


def test_subnetwork_probe_training_moved_masks_and_probe(ranks):
    """The probe comparisons are meaningful: every mask left its init (logits 0.2)."""
    trained = ranks[0]["subnetwork_probe"]
    keys = [k for k in trained if k.endswith("weight_mask.logits")]
    assert keys and all((trained[k] - 0.2).abs().max() > 1e-4 for k in keys)
    assert {"probe.weight", "probe.bias"} <= trained.keys()


def test_gradnas_all_reduce_is_what_makes_the_ranks_agree(ranks):
    """Each rank scores its own shard: without the all-reduce the scores (and here the
    chosen units) differ; with it both ranks hold the sum, which is the union's score."""
    local = [r["gradnas_local"] for r in ranks]
    synced = ranks[0]["gradnas"]
    for name in ("0", "2"):
        a, b = (loc[f"gradnas.scores.{name}.unsynced"] for loc in local)
        assert not torch.allclose(a, b)
        torch.testing.assert_close(a + b, synced[f"gradnas.scores.{name}"], rtol=1e-12, atol=0)
        # michel scores are means over batches: the union's mean is the mean of the shards'
        a, b = (loc[f"michel.scores.{name}.unsynced"] for loc in local)
        torch.testing.assert_close((a + b) / 2, synced[f"michel.scores.{name}"], rtol=1e-12,
                                   atol=0)
    assert any(not torch.equal(local[0][k], local[1][k]) for k in local[0] if ".kept." in k)


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None, reason="needs accelerate")
def test_accelerate_equals_plain_ddp(ranks):
    for key, value in ranks[0]["cs"].items():
        torch.testing.assert_close(ranks[0]["cs_accelerate"][key], value, rtol=1e-6, atol=1e-7)


def test_unsynced_draws_differ_and_sync_takes_rank0(ranks):
    a, b = ranks[0]["sampled_draws"], ranks[1]["sampled_draws"]
    for ablation in ("randomly_sampled", "complement_sampled", "random_ablate"):
        assert not torch.equal(a[f"{ablation}.unsynced"], b[f"{ablation}.unsynced"]), ablation
        # rank 0 keeps its own draw: its synced output equals its unsynced output
        assert torch.equal(a[f"{ablation}.synced"], a[f"{ablation}.unsynced"]), ablation
        assert torch.equal(b[f"{ablation}.synced"], a[f"{ablation}.unsynced"]), ablation


def test_sync_without_process_group_is_local_and_draws():
    model = mm.convert(_mlp(), "magnitude_pruning").eval()
    mm.set_ablation(model, "randomly_sampled")
    assert sync_ablation_draws(model) == 0
    assert all(layer._mm_sampled for layer in mm.masked_modules(model).values())


def test_sync_in_training_mode_raises_clearly():
    model = mm.convert(_mlp(), "continuous_sparsification")
    mm.set_ablation(model, "randomly_sampled")
    with pytest.raises(RuntimeError, match="model.eval"):
        sync_ablation_draws(model)
