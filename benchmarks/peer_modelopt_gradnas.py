"""Model Optimizer's GradNAS on the bench_gradnas workload (run in its own environment).

``nvidia-modelopt==0.44.0`` needs ``transformers==4.57.*`` (its GradNAS hooks BERT's
``head_mask``, which transformers 5 removed), so ``bench_peers`` launches this file with
the interpreter named by ``MODEOPT_MASKS_MODELOPT_PYTHON``. It imports nothing from
``modeopt_masks``. Workload as ``bench_gradnas``: BERT 4x256, vocab 1000, 8 batches of
16x64, params target 70%, one thread. It prints one JSON line: the prune+export wall
time as a ratio to plain forward+backward over the same batches measured here, the
params ratio reached, and exported vs original inference latency.

Run: ``$MODEOPT_MASKS_MODELOPT_PYTHON benchmarks/peer_modelopt_gradnas.py [--quick]``.
"""

from __future__ import annotations

import copy
import json
import sys
import time
import warnings


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(quick: bool) -> dict:
    import modelopt
    import modelopt.torch.prune as mtp
    import torch
    import transformers
    from transformers.utils import logging

    logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    layers, hidden = (2, 128) if quick else (4, 256)
    n_batches, batch, seq = (4, 8, 32) if quick else (8, 16, 64)
    repeats = 1 if quick else 3

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=4, intermediate_size=4 * hidden,
                                  max_position_embeddings=128, attn_implementation="eager")
    base = transformers.BertForMaskedLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n_batches):
        ids = torch.randint(0, 1000, (batch, seq), generator=g)
        batches.append({"input_ids": ids, "labels": ids})

    def plain():
        for b in batches:
            base(**b).loss.backward()
        base.zero_grad(set_to_none=True)

    def count(model) -> int:
        return sum(p.numel() for p in model.parameters())

    def whole():
        model = copy.deepcopy(base)
        # positional: after conversion the forward's signature reads (*args, **kwargs),
        # which modelopt refuses keyword dummy inputs for
        dummy = batches[0]["input_ids"]
        model, _ = mtp.prune(
            model, mode="gradnas", constraints={"params": "70%"}, dummy_input=dummy,
            config={"data_loader": batches, "collect_func": lambda b: b,
                    "loss_func": lambda out, b: out.loss,
                    "max_iter_data_loader": len(batches), "verbose": False},
        )
        return model  # search exports it in place

    plain()  # warm up
    t_plain = _best(plain, repeats)
    t_copy = _best(lambda: copy.deepcopy(base), repeats)
    t_prune = _best(whole, repeats) - t_copy
    t_plain = min(t_plain, _best(plain, repeats))
    exported = whole()
    x = {"input_ids": batches[0]["input_ids"]}
    with torch.no_grad():
        base(**x), exported(**x)
        t_orig = _best(lambda: base(**x), 5 * repeats)
        t_exp = _best(lambda: exported(**x), 5 * repeats)
    return {
        "versions": {"nvidia-modelopt": modelopt.__version__,
                     "transformers": transformers.__version__, "torch": torch.__version__},
        "model": f"BERT {layers}x{hidden}, vocab 1000", "batches": f"{n_batches} x {batch}x{seq}",
        "threads": torch.get_num_threads(),
        "plain_fwd_bwd_s": t_plain,
        "prune_export_s": t_prune,
        "prune_ratio": t_prune / t_plain,
        "params_ratio": count(exported) / count(base),
        "params_target": 0.70,
        "latency_ratio": t_exp / t_orig,
        "hidden_kept": exported.bert.embeddings.word_embeddings.weight.shape[1],
        "heads_kept": [layer.attention.self.num_attention_heads
                       for layer in exported.bert.encoder.layer],
        "ffn_kept": [layer.intermediate.dense.out_features for layer in exported.bert.encoder.layer],
    }


if __name__ == "__main__":
    print(json.dumps(main("--quick" in sys.argv)))
