"""The benchmark workloads through peer libraries, where they are installed.

Each peer runs the workload of one of our benchmarks, in the same process as ours
(figures are ratios to the plain model measured in that run), beside our figure:

* NeuroSurgeon (``neurosurgeon==0.1.0``): its CircuitModel with continuous
  sparsification on every linear layer of bench_masks' BERT 4x256 (base frozen):
  masked training step and eval forward as ratios to the plain model, beside ours.
* ``torch.nn.utils.prune`` (always there): ``l1_unstructured`` at 50% on every linear
  layer of the same BERT (a forward pre-hook recomputes ``weight_orig * mask``):
  training step (all weights trained) and eval forward, beside our
  ``magnitude_pruning`` at 50%.
* Torch-Pruning (``torch-pruning``): structured pruning of bench_gradnas' BERT 4x256
  to 70% of the params (Taylor importance from the same 8 batches, stepped until
  the target is reached, hidden size kept): time as a ratio to plain
  forward+backward over those batches, params reached, exported latency ratio;
  ours is bench_gradnas' ``prune(..., "gradnas")`` + ``export`` run here.
* Model Optimizer (``nvidia-modelopt==0.44.0``): its GradNAS needs BERT's
  ``head_mask`` (transformers < 5), so it runs ``benchmarks/peer_modelopt_gradnas.py``
  under the Python named by ``MODEOPT_MASKS_MODELOPT_PYTHON`` (an environment with
  ``transformers==4.57.*``); its ratios are measured in that process.

Peers are found on the normal import path, or in the directories listed in
``MODEOPT_MASKS_PEERS_PATH`` (``os.pathsep``-separated, put first on ``sys.path``),
e.g. after ``pip install --no-deps --target /tmp/peers neurosurgeon==0.1.0 torch-pruning``.
A peer that is missing or fails is reported as ``{"skipped": "<why>"}``.

Run: ``MODEOPT_MASKS_PEERS_PATH=/tmp/peers MODEOPT_MASKS_MODELOPT_PYTHON=/tmp/venv-modelopt/bin/python
python -m benchmarks.bench_peers [--quick]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import modeopt_masks as mm
from benchmarks.bench_masks import _eval_forward, _train_step, build
from benchmarks.common import interleaved_ratio

PEERS_PATH_ENV = "MODEOPT_MASKS_PEERS_PATH"
MODELOPT_PYTHON_ENV = "MODEOPT_MASKS_MODELOPT_PYTHON"


def _neurosurgeon(quick: bool) -> dict:
    try:
        from NeuroSurgeon.Models.circuit_model import CircuitConfig, CircuitModel
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return {"skipped": f"NeuroSurgeon not importable ({type(e).__name__}: {e})"}
    rounds = 3 if quick else 5
    plain, ids, _ = build("bert", quick)
    ours, _, _ = build("bert", quick)
    theirs, _, _ = build("bert", quick)
    targets = [n for n, m in theirs.named_modules() if type(m) is torch.nn.Linear]
    ns = CircuitModel(CircuitConfig(
        mask_method="continuous_sparsification", target_layers=targets, freeze_base=True,
        add_l0=False,
        mask_hparams={"ablation": "none", "mask_unit": "weight", "mask_bias": False,
                      "mask_init_value": 0.5},
    ), theirs)
    ours = mm.convert(ours, ("continuous_sparsification", {
        "freeze_base": True, "nn.Linear": {"*": {"mask_init_value": 0.5}}}))
    plain.train()
    ours.train()
    ns.train()
    opt_plain = torch.optim.Adam(plain.parameters(), 1e-4)
    opt_ours = torch.optim.Adam([p for p in ours.parameters() if p.requires_grad], 1e-2)
    opt_ns = torch.optim.Adam([p for p in ns.parameters() if p.requires_grad], 1e-2)
    plain_step = _train_step(plain, ids, opt_plain)
    result = {
        "train_step_ratio": {
            "modeopt_masks": interleaved_ratio(_train_step(ours, ids, opt_ours), plain_step,
                                               rounds, 2)["ratio"],
            "neurosurgeon": interleaved_ratio(_train_step(ns, ids, opt_ns), plain_step,
                                              rounds, 2)["ratio"],
        }
    }
    plain.eval()
    ours.eval()
    ns.eval()
    plain_fwd = _eval_forward(plain, ids)
    result["eval_forward_ratio"] = {
        "modeopt_masks": interleaved_ratio(_eval_forward(ours, ids), plain_fwd, rounds)["ratio"],
        "neurosurgeon": interleaved_ratio(_eval_forward(ns, ids), plain_fwd, rounds)["ratio"],
    }
    return {k: {n: round(v, 3) for n, v in d.items()} for k, d in result.items()}


def _torch_prune(quick: bool) -> dict:
    """torch.nn.utils.prune at 50% on every linear layer vs our magnitude_pruning at 50%."""
    from torch.nn.utils import prune as tprune

    rounds = 3 if quick else 5
    plain, ids, _ = build("bert", quick)
    ours, _, _ = build("bert", quick)
    theirs, _, _ = build("bert", quick)
    ours = mm.convert(ours, ("magnitude_pruning", {"nn.Linear": {"*": {"prune_percentage": 0.5}}}))
    for m in theirs.modules():
        if type(m) is torch.nn.Linear:
            tprune.l1_unstructured(m, "weight", amount=0.5)
    models = {"plain": plain, "modeopt_masks": ours, "torch.nn.utils.prune": theirs}
    for m in models.values():
        m.train()
    steps = {k: _train_step(m, ids, torch.optim.Adam(m.parameters(), 1e-4))
             for k, m in models.items()}
    result = {"train_step_ratio": {
        k: interleaved_ratio(steps[k], steps["plain"], rounds, 2)["ratio"]
        for k in ("modeopt_masks", "torch.nn.utils.prune")}}
    for m in models.values():
        m.eval()
    fwd = {k: _eval_forward(m, ids) for k, m in models.items()}
    result["eval_forward_ratio"] = {
        k: interleaved_ratio(fwd[k], fwd["plain"], rounds)["ratio"]
        for k in ("modeopt_masks", "torch.nn.utils.prune")}
    return {k: {n: round(v, 3) for n, v in d.items()} for k, d in result.items()}


def _gradnas_workload(quick: bool):
    from benchmarks import bench_gradnas as bg

    layers, hidden = (2, 128) if quick else (4, 256)
    n_batches, batch, seq = (4, 8, 32) if quick else (8, 16, 64)
    return bg._bert(layers, hidden), bg._batches(n_batches, batch, seq), 1 if quick else 3


def _ours_gradnas(quick: bool) -> dict:
    from benchmarks import bench_gradnas as bg

    r = bg.run(quick, threads=1)
    return {k: round(r[k], 3) for k in ("prune_ratio", "params_ratio", "latency_ratio")}


def _torch_pruning(quick: bool) -> dict:
    """Torch-Pruning to 70% params on the bench_gradnas workload (one thread)."""
    try:
        import torch_pruning as tp
        from transformers.models.bert.modeling_bert import BertSelfAttention
    except Exception as e:  # noqa: BLE001
        return {"skipped": f"torch_pruning not importable ({type(e).__name__}: {e})"}
    from benchmarks.bench_gradnas import _best, _plain_fwd_bwd

    torch.set_num_threads(1)
    base, batches, repeats = _gradnas_workload(quick)
    n0 = sum(p.numel() for p in base.parameters())
    hidden, vocab = base.config.hidden_size, base.config.vocab_size

    def whole():
        model = copy.deepcopy(base)
        heads = {lin: m.num_attention_heads for m in model.modules()
                 if isinstance(m, BertSelfAttention) for lin in (m.query, m.key, m.value)}
        # keep the hidden size (as gradnas does): layers writing the residual stream
        # and the LM head are not pruned; with them ignored Torch-Pruning prunes no heads
        ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear)
                   and m.out_features in (hidden, vocab)]
        pruner = tp.pruner.MetaPruner(
            model, {"input_ids": batches[0]["input_ids"]},
            importance=tp.importance.GroupTaylorImportance(), global_pruning=True,
            pruning_ratio=0.9, iterative_steps=40, ignored_layers=ignored, num_heads=heads,
            prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.9,
            output_transform=lambda out: out.logits.sum())
        for b in batches:  # Taylor scores from the same batches, once
            model(**b).loss.backward()
        for _ in range(40):
            if sum(p.numel() for p in model.parameters()) <= 0.70 * n0:
                break
            pruner.step()
        for m in model.modules():
            if isinstance(m, BertSelfAttention):
                m.num_attention_heads = pruner.num_heads[m.query]
                m.all_head_size = m.query.out_features
        model.zero_grad(set_to_none=True)
        return model

    plain = _plain_fwd_bwd(base, batches)
    plain()
    t_plain = _best(plain, repeats)
    t_copy = _best(lambda: copy.deepcopy(base), repeats)
    t_prune = _best(whole, repeats) - t_copy
    t_plain = min(t_plain, _best(plain, repeats))
    pruned = whole()
    x = {"input_ids": batches[0]["input_ids"]}
    with torch.no_grad():
        base(**x), pruned(**x)
        t_orig = _best(lambda: base(**x), 5 * repeats)
        t_exp = _best(lambda: pruned(**x), 5 * repeats)
    layers = pruned.bert.encoder.layer
    return {
        "prune_ratio": round(t_prune / t_plain, 3),
        "params_ratio": round(sum(p.numel() for p in pruned.parameters()) / n0, 3),
        "latency_ratio": round(t_exp / t_orig, 3),
        "heads_kept": [layer.attention.self.query.out_features * base.config.num_attention_heads
                       // hidden for layer in layers],
        "ffn_kept": [layer.intermediate.dense.out_features for layer in layers],
    }


def _modelopt(quick: bool) -> dict:
    """Model Optimizer's GradNAS, in the environment named by MODEOPT_MASKS_MODELOPT_PYTHON."""
    python = os.environ.get(MODELOPT_PYTHON_ENV)
    if not python:
        return {"skipped": f"{MODELOPT_PYTHON_ENV} not set: nvidia-modelopt 0.44 needs "
                           "transformers 4.57 (head_mask) in an environment of its own"}
    script = Path(__file__).resolve().parent / "peer_modelopt_gradnas.py"
    try:
        out = subprocess.run([python, str(script), *(["--quick"] if quick else [])],
                             capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"skipped": f"{python} did not run ({type(e).__name__}: {e})"}
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": f"{script.name} failed under {python}: {tail}"}
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {"versions": r["versions"],
            **{k: round(r[k], 3) for k in ("prune_ratio", "params_ratio", "latency_ratio")},
            **{k: r[k] for k in ("hidden_kept", "heads_kept", "ffn_kept")}}


def _add_peer_path() -> None:
    """Put the directories of ``MODEOPT_MASKS_PEERS_PATH`` first on ``sys.path``."""
    for entry in reversed(os.environ.get(PEERS_PATH_ENV, "").split(os.pathsep)):
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)


def _guarded(fn, quick: bool) -> dict:
    try:
        return fn(quick)
    except Exception as e:  # noqa: BLE001 - a peer that breaks is reported, not raised
        return {"skipped": f"failed at run time ({type(e).__name__}: {e})"}


def run(quick: bool = False) -> dict:
    """Peer figures beside ours, or why each peer was skipped."""
    _add_peer_path()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # bench_masks' workloads run on 2 threads
        results = {"neurosurgeon": _guarded(_neurosurgeon, quick),
                   "torch_nn_utils_prune": _guarded(_torch_prune, quick)}
        # bench_gradnas' workload runs on one thread; ours measured here, beside the peers
        results["gradnas_modeopt_masks"] = _ours_gradnas(quick)
        results["torch_pruning"] = _guarded(_torch_pruning, quick)
        results["nvidia_modelopt"] = _guarded(_modelopt, quick)
    finally:
        torch.set_num_threads(threads)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    json.dump(run(parser.parse_args(argv).quick), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
