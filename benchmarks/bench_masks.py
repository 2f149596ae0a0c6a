"""Mask-training and eval overhead of continuous sparsification vs the plain model.

Workload (issue 2): 4-layer BERT and GPT-2, hidden 256, batch 16 x 128, 2 threads.
* train: a masked training step (masks on every linear layer, base frozen, Adam on
  the masks) vs a full fine-tuning step of the plain model (Adam on all weights);
* eval: masked eval forward (cached hard masks) vs plain eval forward;
* memory: per variant, in a fresh process, the peak RSS a training step adds on top
  of the resident state, plus that state (parameters, gradients, optimiser state);
* eval memory: per variant, in a fresh process, the peak RSS eval forwards add on top of
  the resident state (``eval_added_mb``: activations, and for the masked model anything
  its eval path allocates or keeps), plus the resident parameters and buffers. The masked
  model's resident state includes its mask parameters (continuous sparsification: one
  float32 logit per weight), so ``eval_peak_rss_ratio`` is reported both with them and
  without them (``eval_peak_rss_ratio_base``: base weights + what eval adds).

Run: ``python -m benchmarks.bench_masks [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

import modeopt_masks as mm
from benchmarks.common import (
    current_rss_mb,
    interleaved_ratio,
    peak_rss_mb,
    reset_peak_rss,
    run_isolated,
)

HIDDEN, LAYERS, HEADS, VOCAB = 256, 4, 4, 1000


def build(family: str, quick: bool):
    from transformers.utils import logging

    logging.set_verbosity_error()
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    seq = 32 if quick else 128
    if family == "bert":
        model = BertForMaskedLM(BertConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, intermediate_size=4 * HIDDEN, max_position_embeddings=seq,
        ))
        key = "nn.Linear"
    else:
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=seq,
        ))
        key = "hf.Conv1D"
    ids = torch.randint(0, VOCAB, (16, seq))
    return model, ids, key


def _loss(model, ids):
    logits = model(input_ids=ids).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1))


def _train_step(model, ids, opt, l0_weight: float = 0.0):
    def step():
        loss = _loss(model, ids)
        if l0_weight:
            loss = loss + l0_weight * mm.l0_loss(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _eval_forward(model, ids):
    def forward():
        with torch.no_grad():
            model(input_ids=ids)
    return forward


def _masked(model, key: str):
    # every linear layer of the kind, output heads included
    return mm.convert(model, ("continuous_sparsification", {
        "freeze_base": True, key: {"*": {"mask_init_value": 0.5}},
        **({"nn.Linear": {"*": {"mask_init_value": 0.5}}} if key != "nn.Linear" else {}),
    }))


def memory_probe(family: str, variant: str, quick: str) -> dict:
    """Peak RSS of a few training steps of one variant (run in a fresh process)."""
    torch.set_num_threads(2)
    model, ids, key = build(family, quick == "1")
    if variant == "masked":
        model = _masked(model, key).train()
    else:
        model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)
    step = _train_step(model, ids, opt, 1e-8 if variant == "masked" else 0.0)
    step()  # optimiser state exists from here on
    baseline = current_rss_mb()
    reset_peak_rss()  # measure the steps alone, not the imports
    for _ in range(3):
        step()
    return {"peak_rss_mb": peak_rss_mb() - baseline + _state_mb(model, opt)}


def eval_memory_probe(family: str, variant: str, quick: str) -> dict:
    """Peak RSS of a few eval forwards of one variant (run in a fresh process)."""
    torch.set_num_threads(2)
    model, ids, key = build(family, quick == "1")
    if variant == "masked":
        model = _masked(model, key)
    model.eval()
    forward = _eval_forward(model, ids)
    baseline = current_rss_mb()  # before the first forward: what it leaves behind counts
    reset_peak_rss()
    for _ in range(3):
        forward()
    added = peak_rss_mb() - baseline
    mask_ids = {id(t) for m in model.modules() if isinstance(m, mm.MaskTechnique)
                for t in [*m.parameters(), *m.buffers()]}
    tensors = [*model.parameters(), *model.buffers()]
    return {
        "added_mb": added,
        "state_mb": _bytes_mb(tensors),
        "base_state_mb": _bytes_mb([t for t in tensors if id(t) not in mask_ids]),
    }


def _bytes_mb(tensors) -> float:
    seen: dict[int, int] = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values()) / 2**20


def _state_mb(model, opt) -> float:
    """Parameters + gradients + optimiser state resident across steps, in MiB."""
    tensors = list(model.parameters()) + [
        t for state in opt.state.values() for t in state.values() if torch.is_tensor(t)
    ]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += list(model.buffers())
    seen, total = set(), 0
    for t in tensors:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total / 2**20


def run(quick: bool = False) -> dict:
    """All figures as a dict (ratios: masked / plain, same process)."""
    torch.set_num_threads(2)
    rounds = 3 if quick else 7
    results: dict = {"threads": 2, "batch": [16, 32 if quick else 128]}
    for family in ("bert", "gpt2"):
        plain, ids, key = build(family, quick)
        masked, _, _ = build(family, quick)
        masked = _masked(masked, key)
        plain.train()
        masked.train()
        opt_plain = torch.optim.Adam(plain.parameters(), 1e-4)
        opt_masked = torch.optim.Adam([p for p in masked.parameters() if p.requires_grad], 1e-2)
        train = interleaved_ratio(
            _train_step(masked, ids, opt_masked, 1e-8), _train_step(plain, ids, opt_plain),
            rounds, per_round=2,
        )
        plain.eval()
        masked.eval()

        evaluation = interleaved_ratio(
            _eval_forward(masked, ids), _eval_forward(plain, ids), rounds, per_round=3
        )
        mem = {
            v: run_isolated("benchmarks.bench_masks", "memory_probe", family, v,
                            "1" if quick else "0")["peak_rss_mb"]
            for v in ("plain", "masked")
        }
        eval_mem = {
            v: run_isolated("benchmarks.bench_masks", "eval_memory_probe", family, v,
                            "1" if quick else "0")
            for v in ("plain", "masked")
        }
        plain_eval = eval_mem["plain"]["added_mb"] + eval_mem["plain"]["state_mb"]
        results[family] = {
            "train_step_ratio": round(train["ratio"], 3),
            "train_step_plain_s": round(train["baseline_s"], 4),
            "eval_forward_ratio": round(evaluation["ratio"], 3),
            "eval_forward_plain_s": round(evaluation["baseline_s"], 4),
            "peak_rss_mb": {k: round(v, 1) for k, v in mem.items()},
            "peak_rss_ratio": round(mem["masked"] / mem["plain"], 3),
            "eval_added_mb": {k: round(v["added_mb"], 1) for k, v in eval_mem.items()},
            "eval_peak_rss_mb": {k: round(v["added_mb"] + v["state_mb"], 1)
                                 for k, v in eval_mem.items()},
            "eval_peak_rss_ratio": round(
                (eval_mem["masked"]["added_mb"] + eval_mem["masked"]["state_mb"]) / plain_eval, 3),
            "eval_peak_rss_ratio_base": round(
                (eval_mem["masked"]["added_mb"] + eval_mem["masked"]["base_state_mb"])
                / plain_eval, 3),
        }
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short sequences, fewer rounds")
    args = parser.parse_args(argv)
    json.dump(run(args.quick), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
