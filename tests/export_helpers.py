"""Tiny models, inputs and the library-free reload shared by the export tests.

``reload(folders)`` runs one ``python -I`` subprocess in which importing ``modeopt_masks``
raises, loads every folder with ``AutoModel*.from_pretrained`` and recomputes the output
saved beside it (``expected.safetensors``, written by :func:`save_expected`) and, for
decoders, greedy ``generate()`` tokens with the KV cache on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

VOCAB, SEQ = 48, 8
DECODER_PREFIXES = ("gpt2", "gpt_neox", "llama", "mistral", "phi3")


def _lm_kw(**kw):
    return dict(vocab_size=VOCAB, max_position_embeddings=32, **kw)


def build(case: str) -> torch.nn.Module:
    """The tiny random model of ``case`` (its family name, optionally ``_suffix``)."""
    import transformers as t

    torch.manual_seed(0)
    if case.startswith("bert"):
        return t.BertModel(t.BertConfig(**_lm_kw(hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=96)))
    if case.startswith("gpt2"):
        return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32,
                                              n_layer=2, n_head=4, bos_token_id=0,
                                              eos_token_id=0, pad_token_id=0))
    if case.startswith("gpt_neox"):
        return t.GPTNeoXForCausalLM(t.GPTNeoXConfig(**_lm_kw(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
            pad_token_id=0)))
    if case.startswith(("llama", "mistral")):
        cls = (t.LlamaForCausalLM, t.LlamaConfig) if case.startswith("llama") else (
            t.MistralForCausalLM, t.MistralConfig)
        return cls[0](cls[1](**_lm_kw(hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                                      num_key_value_heads=2, intermediate_size=96,
                                      pad_token_id=0)))
    if case.startswith("phi3"):
        return t.Phi3ForCausalLM(t.Phi3Config(**_lm_kw(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
            intermediate_size=96, pad_token_id=0)))
    if case.startswith("vit"):
        return t.ViTModel(t.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=96, image_size=8, patch_size=4,
                                      num_channels=1))
    raise ValueError(case)


def is_decoder(case: str) -> bool:
    return case.startswith(DECODER_PREFIXES)


def inputs(case: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if case.startswith("vit"):
        return {"pixel_values": torch.randn(2, 1, 8, 8, generator=g)}
    return {"input_ids": torch.randint(1, VOCAB, (2, SEQ), generator=g),
            "attention_mask": torch.ones(2, SEQ, dtype=torch.long)}


def main_output(out) -> torch.Tensor:
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def loss(out, batch):
    direction = torch.randn(main_output(out).shape[-1],
                            generator=torch.Generator().manual_seed(1))
    return (main_output(out) @ direction).pow(2).mean()


def save_expected(folder: Path, output: torch.Tensor, x: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({"exported": output.contiguous(), **{f"in.{k}": v for k, v in x.items()}},
              str(Path(folder) / "expected.safetensors"))


#: start of every reload script: this library (and the benchmarks, which import it) cannot
#: be imported in the subprocess, and the script checks that it really cannot
BLOCK_LIBRARY = textwrap.dedent("""
    import importlib.abc, sys

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeopt_masks", "benchmarks"):
                raise ImportError(name + " is blocked in this process")
            return None

    sys.meta_path.insert(0, Blocker())
    try:
        import modeopt_masks  # noqa: F401
        raise SystemExit("modeopt_masks was importable")
    except ImportError:
        pass
""")

_RELOAD = BLOCK_LIBRARY + textwrap.dedent("""
    import json
    import torch, transformers
    from safetensors.torch import load_file
    torch.set_num_threads(1)
    options = json.loads(sys.argv[1])
    remote = options["trust_remote_code"]

    def load(folder):
        cfg = transformers.AutoConfig.from_pretrained(folder)
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in cfg.architectures)
        auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
        kw = {"trust_remote_code": True} if remote else {}
        return causal, auto.from_pretrained(folder, **kw).eval()

    def check(folder, data):
        causal, model = load(folder)
        inputs = {k[3:]: v for k, v in data.items() if k.startswith("in.")}
        with torch.no_grad():
            out = model(**inputs)
        main = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
        res = {"diff": float((main - data["exported"]).abs().max()),
               "class": type(model).__name__, "hf_module": type(model).__module__,
               "params": sum(p.numel() for p in model.parameters())}
        head, embed = model.get_output_embeddings(), model.get_input_embeddings()
        if head is not None and getattr(model.config, "tie_word_embeddings", False):
            res["tied"] = head.weight is embed.weight
        if causal:
            tokens = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=True)
            res["tokens"] = tokens.tolist()
        return model, res

    results = {}
    for folder in options["folders"]:
        data = load_file(folder + "/expected.safetensors")
        model, results[folder] = check(folder, data)
        if folder in options.get("resave", ()):  # saved again without the library
            model.save_pretrained(folder + "_resaved")
            results[folder]["resaved"] = check(folder + "_resaved", data)[1]
    print("RESULTS" + json.dumps(results))
""")


def reload(folders: list[Path], root: Path, trust_remote_code: bool = False,
           resave: tuple[Path, ...] = ()) -> dict[str, dict]:
    """``{folder: {"diff", "class", "hf_module", "params", ["tied"], ["tokens"],
    ["resaved"]}}`` from one subprocess that cannot import ``modeopt_masks``."""
    options = {"trust_remote_code": trust_remote_code, "folders": [str(f) for f in folders],
               "resave": [str(f) for f in resave]}
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _RELOAD, json.dumps(options)],
        capture_output=True, text=True, cwd=root, timeout=600,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
             "HF_HOME": str(root / "hf_home")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS"))
    return json.loads(line[len("RESULTS"):])


def pydoc_text(n_topics: int = 6) -> str:
    """The first ``n_topics`` topics of ``pydoc_data.topics``, joined by blank lines."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n\n".join(topics[k] for k in sorted(topics)[:n_topics])


def tiny_word_llama(text: str, n_words: int, **config):
    """A tiny random LlamaForCausalLM (GQA: 8 heads, 2 KV groups; ``config`` overrides) and a
    WordLevel tokenizer over the ``n_words`` most common words of ``text``."""
    import collections
    import re

    import tokenizers
    import transformers

    words = collections.Counter(re.findall(r"\w+|[^\w\s]", text))
    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "[EOS]",
                                         *[w for w, _ in words.most_common(n_words)]])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                                pad_token="[PAD]", eos_token="[EOS]")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{
        "vocab_size": len(vocab), "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 96,
        "max_position_embeddings": 64, "pad_token_id": 1, "eos_token_id": 2, "bos_token_id": 2,
        **config}))
    return model, fast
