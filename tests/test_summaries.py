"""Every result object prints a short summary: under 2,000 characters for any model.

Each case uses a model large enough that the object's full field dump (what ``print``
showed before) is far longer than the bound, and checks the summary says what matters.
"""

from __future__ import annotations

import torch

import modeopt_masks as mm
from modeopt_masks.searchers import SearchResult
from modeopt_masks.summary import MAX_CHARS

transformers = __import__("pytest").importorskip("transformers")


def _bert() -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=64, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=32)).eval()


def _ids(seed: int, vocab: int = 64) -> torch.Tensor:
    return torch.randint(1, vocab, (2, 12), generator=torch.Generator().manual_seed(seed))


def test_search_result_of_a_4_layer_bert():
    batches = [{"input_ids": x, "labels": x} for x in (_ids(1), _ids(2))]
    model, result = mm.prune(_bert(), "gradnas", constraints={"params": "85%"},
                             config={"data_loader": batches, "progress": False})
    assert len(repr(result.to_dict())) > 10 * MAX_CHARS  # the field dump print showed before
    text = str(result)
    assert len(text) < MAX_CHARS and repr(result) == text == result.summary()
    c = result.constraints["params"]
    assert f"reached {100 * c['ratio']:.1f}%" in text and "target 85.0%" in text
    assert "gradient_binary" in text and result.seconds is not None and result.seconds > 0
    lines = text.splitlines()
    attn = next(ln for ln in lines if "attention" in ln)
    mlp = next(ln for ln in lines if "intermediate" in ln)
    assert "[4 layers, of 4]" in attn and "[4 layers, of 128]" in mlp
    per_layer = [v for n, v in result.selection.items() if "intermediate" in n]
    assert mlp.endswith(" ".join(map(str, per_layer)))


def test_search_result_stays_short_for_any_depth_and_width():
    names = [f"model.layers.{i}.{part}" for i in range(400) for part in ("self_attn", "mlp")]
    names += [f"extra{i}.block" for i in range(300)]  # rows that cannot be grouped
    result = SearchResult(selection={n: 7 + i % 90 for i, n in enumerate(names)},
                          choices={n: list(range(1, 11009)) for n in names},
                          constraints={"params": {"target": 5e9, "achieved": 4.9e9,
                                                  "original": 7e9, "ratio": 0.7}},
                          searcher="gradient_binary", seconds=12.0)
    text = str(result)
    assert len(text) <= MAX_CHARS
    assert "model.layers.*.self_attn  [400 layers, of 11008]" in text
    assert "(range 7-95)" in text and "(range 8-96)" in text  # too long a row: the range
    assert "more row(s)" in text


def test_l0_stats_of_a_4_layer_bert():
    model = mm.convert(_bert(), ("magnitude_pruning", {"nn.Linear": {"prune_percentage": 0.25}}))
    stats = mm.l0_stats(model)
    assert len(repr(dict(stats))) > MAX_CHARS
    text = str(stats)
    assert len(text) < MAX_CHARS and repr(stats) == text
    assert f"{stats['max_l0']:,} mask entries" in text and "(75.0%)" in text
    assert "bert.encoder.layer.*.attention.self.query" in text
    row = next(ln for ln in text.splitlines() if "attention.self.query" in ln)
    assert row.endswith("[4 layers]  all 75%")
    assert stats["total_l0"] == 0.75 * stats["max_l0"]  # still the plain dict it was


def test_probe_output_prints_shapes_not_values():
    out = mm.ProbeOutput(loss=torch.tensor(0.5), logits=torch.randn(64, 10),
                         hidden_states=torch.randn(64, 256))
    assert len(repr(dict(out))) > MAX_CHARS
    text = str(out)
    assert text == ("ProbeOutput(loss=0.5, logits=tensor[64, 10] float32, "
                    "hidden_states=tensor[64, 256] float32)")
    assert out["logits"].shape == (64, 10) and out[0] == out.loss


def test_edge_scores_of_a_llama():
    from modeopt_masks.circuits import EdgeMaskedModel, edge_attribution_patching, top_edges

    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=40)).eval()
    edges = EdgeMaskedModel(llama).eval()
    scores = edge_attribution_patching(edges, lambda out: out.logits[:, -1, 0].sum(),
                                       (_ids(3, 40),))
    assert len(repr(dict(scores))) > MAX_CHARS
    text = str(scores)
    assert len(text) < MAX_CHARS
    assert text.startswith(f"EdgeScores: {edges.num_edges} edges; top 10 by |score|:")
    writer, reader = top_edges(scores, 1)[0]
    assert text.splitlines()[1].startswith(f"  {writer} -> {reader}  ")
