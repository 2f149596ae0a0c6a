"""Torch-Pruning (PyPI ``torch-pruning``) next to gradnas on SmolLM2-135M, same tokens and target.

Peer: Torch-Pruning's ``MetaPruner`` with Taylor importance (``|w * dL/dw|`` summed over a
channel's group, gradients accumulated over the calibration batches) on the MLP channels
only (every ``Linear`` but ``gate_proj``/``up_proj`` is an ignored root, so attention and
the hidden size stay whole), one pruning ratio for every layer, chosen so the model lands
at ``--target`` of its parameters; ``config.intermediate_size`` is updated by hand so that
``save_pretrained`` folders reload. Ours: ``prune(model, "gradnas")`` (attention heads and
MLP channels, per-layer counts by the threshold search) then ``export``.

Both see the same calibration rows (``bench_llm_prune.split_tokens``: the first ``--cal``
rows of ``--seq`` tokens of ``pydoc_data.topics``) and are evaluated on the same held-out
rows (the last ``--eval``). Timings alternate with a plain forward+backward over the
calibration rows in this process (each candidate's ratio is to the mean of the plain runs
just before and after it): the whole Torch-Pruning call (graph tracing, gradients, step),
our whole prune call (convert, score, search), and our score collection alone. One thread.

Run: ``python benchmarks/peer_torch_pruning.py --out /tmp/peer_tp.jsonl [--cal 8]
[--eval 8] [--seq 128] [--target 0.8]``; one JSON object per line.
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


def ours_call(model, cal, target: float):
    import modeopt_masks as mm

    model, _ = mm.prune(model, "gradnas", constraints={"params": f"{target:.0%}"},
                        config={"data_loader": cal, "progress": False})
    return mm.export(model)


def reload_check(model, rows) -> dict:
    """``save_pretrained`` + ``from_pretrained``: does it load, and are the logits the same?"""
    import torch
    import transformers

    # the GGUF load marks the (dequantised, fp32) model as quantized, which blocks saving
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    with tempfile.TemporaryDirectory() as folder:
        try:
            model.save_pretrained(folder)
            again = transformers.AutoModelForCausalLM.from_pretrained(folder,
                                                                      dtype=torch.float32)
        except Exception as exc:  # the figure is whether it reloads; report why not
            return {"reloads": False, "reload_error": f"{type(exc).__name__}: {exc}"[:300]}
    with torch.no_grad():
        a = model(input_ids=rows[:1]).logits
        b = again.eval()(input_ids=rows[:1]).logits
    return {"reloads": True, "reload_max_abs_logit_diff": float((a - b).abs().max())}


def recover(args, dense, cal, eval_rows, full: int) -> None:
    """Torch-Pruning's result before and after the recovery budget of bench_llm_prune."""
    from bench_llm_prune import emit, split_tokens
    from bench_oneshot import perplexity

    import modeopt_masks as mm
    from modeopt_masks.searchers import count_params

    model = torch_pruning_call(copy.deepcopy(dense), cal, mlp_ratio_for(dense, args.target))
    before = perplexity(model, eval_rows)
    train = split_tokens(args.cal + 2, args.recover_steps, args.eval, args.seq)["train"]
    result = mm.distill(model, dense, [{"input_ids": r[None]} for r in train],
                        steps=args.recover_steps, lr=1e-4, temperature=1.0, progress=False)
    emit(args.out, {"method": "torch_pruning_taylor_mlp", "target": args.target,
                    "params_ratio": count_params(model) / full, "ppl_before": before,
                    "ppl_after": perplexity(model, eval_rows), "recovery_steps": result.steps,
                    "recovery_s": result.seconds, "final_kl": result.history[-1]["kl"],
                    "load": os.getloadavg()[0]})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--cal", type=int, default=8)
    parser.add_argument("--eval", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--recover-steps", type=int, default=0,
                        help="only prune with Torch-Pruning, then distil this many steps on "
                             "bench_llm_prune's recovery rows (its --rank 2 layout)")
    args = parser.parse_args(argv)

    import torch
    from bench_llm_prune import emit, split_tokens
    from bench_oneshot import load_model, perplexity

    import modeopt_masks as mm
    from modeopt_masks.searchers import count_params
    from modeopt_masks.structured import collect_scores

    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = split_tokens(args.cal, 0, args.eval, args.seq)
    cal = [{"input_ids": r[None], "labels": r[None]} for r in data["cal"]]
    dense = load_model()
    full = count_params(dense)
    emit(args.out, {"method": "dense", "params": full, "ppl": perplexity(dense, data["eval"]),
                    "cal_tokens": args.cal * args.seq, "eval_tokens": args.eval * args.seq,
                    "load": os.getloadavg()[0]})
    if args.recover_steps:
        recover(args, dense, cal, data["eval"], full)
        return
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

    ratio = mlp_ratio_for(dense, args.target)
    plain()  # warm-up
    plain_s.clear()
    plain()
    tp_model, tp_s = timed(torch_pruning_call, copy.deepcopy(dense), cal, ratio)
    plain()
    ours_model, ours_s = timed(ours_call, copy.deepcopy(dense), cal, args.target)
    plain()
    scored = mm.convert(copy.deepcopy(dense), "gradnas")
    _, score_s = timed(lambda: collect_scores(scored, cal, progress=False))
    plain()
    _, score_s2 = timed(lambda: collect_scores(scored, cal, progress=False))
    plain()
    p = plain_s
    emit(args.out, {"timing": "alternating", "plain_fwd_bwd_s": p,
                    "torch_pruning_s": tp_s, "torch_pruning_vs_fwd_bwd": tp_s / ((p[0] + p[1]) / 2),
                    "ours_prune_s": ours_s, "ours_prune_vs_fwd_bwd": ours_s / ((p[1] + p[2]) / 2),
                    "ours_scores_s": [score_s, score_s2],
                    "ours_scores_vs_fwd_bwd": [score_s / ((p[2] + p[3]) / 2),
                                               score_s2 / ((p[3] + p[4]) / 2)],
                    "cal_tokens": args.cal * args.seq, "load": os.getloadavg()[0]})
    for name, model in (("torch_pruning_taylor_mlp", tp_model), ("gradnas_heads_mlp", ours_model)):
        row = {"method": name, "target": args.target, "params": count_params(model),
               "params_ratio": count_params(model) / full,
               "ppl": perplexity(model, data["eval"]),
               "intermediate_size": model.config.intermediate_size,
               **reload_check(model, data["eval"]), "load": os.getloadavg()[0]}
        if name.startswith("torch"):
            row["mlp_pruning_ratio"] = ratio
        emit(args.out, row)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
