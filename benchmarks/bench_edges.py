"""Edge- and head-mask training steps vs a plain training step of the same model (runtime ratios).

Workload: 4-layer GPT-2 and Llama (GQA 8 query / 2 KV heads), hidden 256, batch 8 x 64,
one thread. Candidates: a step of edge-mask training (all edges gated, base frozen, Adam
on the gates) and a step of head-mask training (``hard_concrete`` with
``mask_unit="head"`` on every attention output projection, base frozen, Adam on the
gates, plus the expected density); baseline: a full fine-tuning step of the plain model
(Adam on all weights). Each ratio is candidate step time / plain step time, interleaved
A B A B, median over rounds. Also the eval forward with hard edge gates vs the plain eval
forward.

Run: ``python -m benchmarks.bench_edges [--quick]``.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

import modeopt_masks as mm
from benchmarks.common import interleaved_ratio
from modeopt_masks.circuits import EdgeMaskedModel
from modeopt_masks.heads import head_layouts
from modeopt_masks.targets import MaskTargets
from modeopt_masks.training import expected_density

HIDDEN, LAYERS, VOCAB = 256, 4, 1000


def build(family: str, quick: bool):
    from transformers.utils import logging

    logging.set_verbosity_error()
    import transformers as tf

    torch.manual_seed(0)
    hidden, layers = (64, 2) if quick else (HIDDEN, LAYERS)
    if family == "gpt2":
        cfg = tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=8, vocab_size=VOCAB,
                            n_positions=128, bos_token_id=0, eos_token_id=0)
        return tf.GPT2LMHeadModel(cfg)
    cfg = tf.LlamaConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=2, vocab_size=VOCAB)
    return tf.LlamaForCausalLM(cfg)


def measure(family: str, quick: bool) -> dict:
    batch, seq = (2, 16) if quick else (8, 64)
    ids = torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(0))

    plain = build(family, quick).train()
    plain.config.use_cache = False
    opt_plain = torch.optim.Adam(plain.parameters(), lr=1e-4)

    def plain_step():
        loss = F.cross_entropy(plain(ids).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        opt_plain.zero_grad()
        loss.backward()
        opt_plain.step()

    base = build(family, quick).eval()  # dropout off: the edge masks train, the base is fixed
    base.config.use_cache = False
    for p in base.parameters():
        p.requires_grad_(False)
    edges = EdgeMaskedModel(base).train()
    opt_edges = torch.optim.Adam(edges.mask_parameters(), lr=0.1)

    def edge_step():
        out = edges(ids).logits
        loss = F.cross_entropy(out[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss = loss + edges.expected_density()
        opt_edges.zero_grad()
        loss.backward()
        opt_edges.step()

    heads = build(family, quick).eval()
    heads.config.use_cache = False
    method, spec = MaskTargets(mask_method="hard_concrete", target_layers=list(head_layouts(heads)),
                               mask_hparams={"mask_unit": "head"}).mode_spec(heads)
    heads = mm.convert(heads, (method, spec))
    for p in heads.parameters():
        p.requires_grad_(False)
    head_gates = [tech.log_alpha for layer in mm.masked_modules(heads).values()
                  for _, tech in layer._mask_modules()]
    for p in head_gates:
        p.requires_grad_(True)
    heads.train()
    opt_heads = torch.optim.Adam(head_gates, lr=0.1)

    def head_step():
        out = heads(ids).logits
        loss = F.cross_entropy(out[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss = loss + expected_density(heads)
        opt_heads.zero_grad()
        loss.backward()
        opt_heads.step()

    rounds = 2 if quick else 5
    train = interleaved_ratio(edge_step, plain_step, rounds=rounds)
    head_train = interleaved_ratio(head_step, plain_step, rounds=rounds)
    plain.eval()
    edges.eval()

    def plain_eval():
        with torch.no_grad():
            plain(ids)

    def edge_eval():
        with torch.no_grad():
            edges(ids)

    ev = interleaved_ratio(edge_eval, plain_eval, rounds=rounds)
    return {"family": family, "edges": edges.num_edges, "train_step": train,
            "head_mask_train_step": head_train, "eval_forward": ev}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps([measure(f, args.quick) for f in ("gpt2", "llama")], indent=1))


if __name__ == "__main__":
    main()
