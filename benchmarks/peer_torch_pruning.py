"""Torch-Pruning (PyPI ``torch-pruning``) next to gradnas on SmolLM2-135M, same tokens, targets, recovery.

Peer: Torch-Pruning's ``MetaPruner`` with Taylor importance (``|w * dL/dw|`` summed over a
channel's group, gradients accumulated over the calibration batches) on the MLP channels
only (every ``Linear`` but ``gate_proj``/``up_proj`` is an ignored root, so attention and
the hidden size stay whole), one pruning ratio for every layer, chosen so the model lands
at each ``--targets`` share of its parameters; ``config.intermediate_size`` is updated by
hand so that ``save_pretrained`` folders reload. Ours: ``bench_llm_prune.prune_method``
with ``heads_mlp`` (gradnas over attention heads and MLP channels, per-layer counts by the
threshold search, then ``export``), i.e. exactly that script's ``heads_mlp`` rows.

Tokens are ``bench_llm_prune``'s (``split_tokens(cal + rank, steps * batch, eval, seq)``):
calibration = the first ``--cal`` rows of ``--seq`` tokens of ``pydoc_data.topics``,
recovery training = the ``steps * batch`` rows after the ``--cal + --rank`` rows,
evaluation = the last ``--eval`` rows. Timings alternate with a plain forward+backward over
the calibration rows in this process (each candidate's ratio is to the mean of the plain
runs just before and after it): the whole Torch-Pruning call (graph tracing, gradients,
step), our whole prune call (convert, score, search), and our score collection alone.
Reload: ``save_pretrained`` then ``AutoModelForCausalLM.from_pretrained`` of the folder,
with ``trust_remote_code=True`` where the folder has the per-layer modeling file
(``modeopt_masks.hf_remote``: a heterogeneous export), stock otherwise; the max absolute
logit difference on one evaluation row. Recovery: Torch-Pruning's result is distilled with
the budget of ``bench_llm_prune`` (``mm.distill``, ``--steps`` x ``--batch`` x ``--seq``,
``--lr``, ``--temperature``, seed 0), then evaluated and reloaded again. One thread.

Run: ``python benchmarks/peer_torch_pruning.py --out /tmp/peer_tp.jsonl [--cal 8] [--rank 2]
[--eval 16] [--seq 256] [--targets 0.8 0.6] [--steps 100]``; one JSON object per line.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def mlp_ratio_for(model, target: float) -> float:
    """The share of MLP channels to remove in every layer so the model keeps ``target``."""
    from modeopt_masks.searchers import count_params

    mlp = sum(p.numel() for n, p in model.named_parameters() if ".mlp." in n)
    return (1 - target) * count_params(model) / mlp


def torch_pruning_call(model, cal, ratio: float):
    """Torch-Pruning Taylor pruning of the MLP channels, in place; returns the model."""
    import torch
    import torch_pruning as tp

    roots = ("gate_proj", "up_proj")
    ignored = [m for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and not n.endswith(roots)]
    pruner = tp.pruner.MetaPruner(
        model, example_inputs=cal[0]["input_ids"], importance=tp.importance.TaylorImportance(),
        pruning_ratio=ratio, ignored_layers=ignored, global_pruning=False,
        output_transform=lambda out: out.logits)
    for b in cal:
        model(**b).loss.backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    model.config.intermediate_size = model.model.layers[0].mlp.gate_proj.out_features
    return model


def reload_check(model, rows) -> dict:
    """``save_pretrained`` + ``from_pretrained`` (``trust_remote_code=True`` exactly when the
    folder carries the per-layer modeling file): does it load, and are the logits the same?"""
    import torch
    import transformers

    from modeopt_masks.hf_remote import MODELING_FILE

    # the GGUF load marks the (dequantised, fp32) model as quantized, which blocks saving
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    with tempfile.TemporaryDirectory() as folder:
        remote = False
        try:
            model.save_pretrained(folder)
            remote = (Path(folder) / MODELING_FILE).exists()
            again = transformers.AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch.float32, trust_remote_code=remote)
        except Exception as exc:  # the figure is whether it reloads; report why not
            return {"reloads": False, "remote_code": remote,
                    "reload_error": f"{type(exc).__name__}: {exc}"[:300]}
    with torch.no_grad():
        a = model(input_ids=rows[:1]).logits
        b = again.eval()(input_ids=rows[:1]).logits
    return {"reloads": True, "remote_code": remote, "reload_class": type(again).__name__,
            "reload_max_abs_logit_diff": float((a - b).abs().max())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--cal", type=int, default=8)
    parser.add_argument("--rank", type=int, default=2,
                        help="rows after the calibration rows that bench_llm_prune keeps for "
                             "ranking joint candidates (unused here; sets where training starts)")
    parser.add_argument("--eval", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=100, help="recovery steps (0: none)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.6])
    args = parser.parse_args(argv)

    import torch
    from bench_llm_prune import emit, lm_batches, prune_method, split_tokens
    from bench_oneshot import load_model, perplexity

    import modeopt_masks as mm
    from modeopt_masks.searchers import count_params
    from modeopt_masks.structured import collect_scores

    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = split_tokens(args.cal + args.rank, args.steps * args.batch, args.eval, args.seq)
    cal = [{"input_ids": r[None], "labels": r[None]} for r in data["cal"][: args.cal]]
    train = [{"input_ids": b["input_ids"]} for b in lm_batches(data["train"], args.batch)]
    dense = load_model()
    full = count_params(dense)
    emit(args.out, {"method": "dense", "params": full, "ppl": perplexity(dense, data["eval"]),
                    "cal_tokens": args.cal * args.seq, "eval_tokens": args.eval * args.seq,
                    "load": os.getloadavg()[0]})
    plain_model = copy.deepcopy(dense)
    plain_s: list[float] = []

    def plain() -> None:
        start = time.perf_counter()
        for b in cal:
            plain_model(**b).loss.backward()
        plain_model.zero_grad(set_to_none=True)
        plain_s.append(time.perf_counter() - start)

    def timed(fn, *a):
        start = time.perf_counter()
        value = fn(*a)
        return value, time.perf_counter() - start

    scored = mm.convert(copy.deepcopy(dense), "gradnas")
    plain()  # warm-up
    peers = []
    for target in args.targets:
        ratio = mlp_ratio_for(dense, target)
        plain_s.clear()
        plain()
        tp_model, tp_s = timed(torch_pruning_call, copy.deepcopy(dense), cal, ratio)
        plain()
        torch.manual_seed(0)  # as bench_llm_prune does before each method
        (ours_model, ours_s, _), _ = timed(prune_method, dense, "heads_mlp", target, cal)
        plain()
        _, score_s = timed(lambda: collect_scores(scored, cal, progress=False))
        plain()
        p = plain_s
        emit(args.out, {"timing": "alternating", "target": target, "plain_fwd_bwd_s": p,
                        "torch_pruning_s": tp_s,
                        "torch_pruning_vs_fwd_bwd": tp_s / ((p[0] + p[1]) / 2),
                        "ours_prune_s": ours_s,
                        "ours_prune_vs_fwd_bwd": ours_s / ((p[1] + p[2]) / 2),
                        "ours_scores_s": score_s,
                        "ours_scores_vs_fwd_bwd": score_s / ((p[2] + p[3]) / 2),
                        "cal_tokens": args.cal * args.seq, "load": os.getloadavg()[0]})
        for name, model in (("torch_pruning_taylor_mlp", tp_model), ("gradnas_heads_mlp", ours_model)):
            row = {"method": name, "target": target, "stage": "pruned",
                   "params": count_params(model), "params_ratio": count_params(model) / full,
                   "ppl_before": perplexity(model, data["eval"]),
                   "intermediate_size": model.config.intermediate_size,
                   **reload_check(model, data["eval"]), "load": os.getloadavg()[0]}
            if name.startswith("torch"):
                row["mlp_pruning_ratio"] = ratio
                peers.append((row, model))
            emit(args.out, row)
        del ours_model
    if args.steps == 0:
        return
    for row, model in peers:  # ours (heads_mlp) is recovered by bench_llm_prune, same rows
        torch.manual_seed(0)
        result = mm.distill(model, dense, train, steps=args.steps, lr=args.lr,
                            temperature=args.temperature, progress=False)
        row = {**row, "stage": "recovered", "ppl_after": perplexity(model, data["eval"]),
               "recovery_steps": result.steps, "recovery_s": result.seconds,
               "recovery_tokens": result.steps * args.batch * args.seq,
               "final_kl": result.history[-1]["kl"]}
        row.update({k: v for k, v in reload_check(model, data["eval"]).items()})
        row["load"] = os.getloadavg()[0]
        emit(args.out, row)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
