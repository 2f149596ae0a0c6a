"""gradnas benchmarks, as ratios to the plain model measured in the same process.

1. score collection over N batches vs plain forward+backward over the same batches;
2. the whole ``prune`` call (convert, scores, search) plus ``export`` on BERT 4x256,
   vocab 1000, 8 batches of 16x64, vs plain forward+backward over those batches;
3. exported model inference latency vs the original, next to the params ratio.

Run ``python benchmarks/bench_gradnas.py [--quick]``; prints JSON. ``run(quick)`` returns it.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import modeopt_masks as mm  # noqa: E402
from modeopt_masks.pruning import prune  # noqa: E402
from modeopt_masks.searchers import count_params  # noqa: E402
from modeopt_masks.structured import collect_scores  # noqa: E402


def _bert(layers: int, hidden: int):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=4, intermediate_size=4 * hidden,
                                  max_position_embeddings=128)
    return transformers.BertForMaskedLM(cfg).eval()


def _batches(n: int, batch: int, seq: int):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 1000, (batch, seq), generator=g)
        out.append({"input_ids": ids, "labels": ids})
    return out


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _plain_fwd_bwd(model, batches):
    def go():
        for b in batches:
            model(**b).loss.backward()
        model.zero_grad(set_to_none=True)
    return go


def run(quick: bool = False, threads: int | None = 1) -> dict:
    """Measure and return the figures (``quick``: smaller model and fewer repeats).

    ``threads=1`` by default: on a shared machine, multi-threaded kernels make
    timings swing by several x; ratios within one thread are stable.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    layers, hidden = (2, 128) if quick else (4, 256)
    n_batches, batch, seq = (4, 8, 32) if quick else (8, 16, 64)
    repeats = 1 if quick else 3
    batches = _batches(n_batches, batch, seq)
    base = _bert(layers, hidden)
    results: dict = {"model": f"BERT {layers}x{hidden}, vocab 1000",
                     "batches": f"{n_batches} x {batch}x{seq}", "threads": torch.get_num_threads()}

    plain = _plain_fwd_bwd(base, batches)
    scored = mm.convert(copy.deepcopy(base), "gradnas")
    plain()  # warm up
    collect_scores(scored, batches[:1], progress=False)
    t_plain = t_scores = float("inf")
    for _ in range(repeats):  # interleaved, so both see the same machine load
        t_plain = min(t_plain, _best(plain, 1))
        t_scores = min(t_scores, _best(lambda: collect_scores(scored, batches, progress=False), 1))
    results["plain_fwd_bwd_s"] = t_plain
    results["scores_s"] = t_scores
    results["scores_ratio"] = t_scores / t_plain

    def whole():
        model, result = prune(copy.deepcopy(base), "gradnas", constraints={"params": "70%"},
                              config={"data_loader": batches, "progress": False})
        return mm.export(model), result

    t_copy = _best(lambda: copy.deepcopy(base), repeats)
    t_prune = _best(whole, repeats) - t_copy
    exported, result = whole()
    results["prune_export_s"] = t_prune
    results["prune_ratio"] = t_prune / t_plain
    results["params_ratio"] = count_params(exported) / count_params(base)
    results["params_target"] = 0.70

    x = {"input_ids": batches[0]["input_ids"]}
    with torch.no_grad():
        base(**x), exported(**x)
        t_orig = _best(lambda: base(**x), 5 * repeats)
        t_exp = _best(lambda: exported(**x), 5 * repeats)
    results["latency_original_s"] = t_orig
    results["latency_exported_s"] = t_exp
    results["latency_ratio"] = t_exp / t_orig
    return results


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
