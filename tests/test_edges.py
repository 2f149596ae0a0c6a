"""Edge masks on native GPT-2 / Llama (GQA) / TinyTransformer: exactness, locality, EAP, training."""

from __future__ import annotations

import pytest
import torch

from modeopt_masks.circuits import (
    EdgeMaskedModel,
    TinyTransformer,
    TinyTransformerConfig,
    edge_attribution_patching,
)
from modeopt_masks.training import DensityController

transformers = pytest.importorskip("transformers")


def _gpt2():
    cfg = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=30, n_positions=12,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _llama():
    cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=30,
                                   attention_bias=True)
    return transformers.LlamaForCausalLM(cfg).eval()


def _tiny():
    return TinyTransformer(TinyTransformerConfig(vocab_size=30, d_model=16, n_layers=2, n_heads=2,
                                                 d_head=8, d_mlp=32, max_len=12)).eval()


def _logits(out):
    return out if isinstance(out, torch.Tensor) else out.logits


MODELS = {"gpt2": _gpt2, "llama_gqa": _llama, "tiny": _tiny}


@pytest.fixture(params=list(MODELS))
def model(request):
    torch.manual_seed(0)
    return MODELS[request.param]()


IDS = torch.tensor([[1, 5, 7, 2, 9, 3], [4, 4, 8, 1, 2, 6]])


def test_all_edges_on_equals_unmasked(model):
    with torch.no_grad():
        ref = _logits(model(IDS))
        edges = EdgeMaskedModel(model).eval()
        assert len(edges.edge_list()) == edges.num_edges  # init 0.95: every gate on
        out = _logits(edges(IDS))
        assert (out - ref).abs().max() <= 1e-5
        edges.set_edges([])  # and the masks really act: no edge at all is another model
        assert (_logits(edges(IDS)) - ref).abs().max() > 1e-3
        edges.remove_hooks()
        assert torch.equal(_logits(model(IDS)), ref)


def test_one_edge_off_changes_only_that_readers_input(model):
    edges = EdgeMaskedModel(model).eval()
    # an edge into a layer-1 key reader, from a layer-0 head
    reader = next(r for r in edges.readers if r.startswith("a1.") and r.endswith(".k"))
    writer = "a0.h1"
    with torch.no_grad():
        edges.captured = {}
        edges(IDS)
        on = dict(edges.captured)
        edges.set_edges([e for e in edges.all_edges() if e != (writer, reader)])
        edges.captured = {}
        edges(IDS)
        off = dict(edges.captured)
    assert set(on) == set(edges.readers)
    layer1_attn = [r for r in edges.readers if r.startswith(("a0.", "m0", "a1."))]
    changed = [r for r in layer1_attn if not torch.equal(on[r], off[r])]
    assert changed == [reader]
    # the difference is exactly that writer's activation (its per-head o_proj contribution)
    edges.set_edges(edges.all_edges())
    stack = {}
    with torch.no_grad():
        edges(IDS)
        names = edges.writers
        writers = torch.cat(edges._stack)
        stack = dict(zip(names, writers, strict=True))
    torch.testing.assert_close(on[reader] - off[reader], stack[writer], atol=1e-6, rtol=0)


def test_readout_edge_off_changes_only_logits():
    torch.manual_seed(0)
    model = _tiny()
    edges = EdgeMaskedModel(model).eval()
    with torch.no_grad():
        edges.captured = {}
        ref = edges(IDS)
        on = dict(edges.captured)
        edges.set_edges([e for e in edges.all_edges() if e != ("m1", "logits")])
        edges.captured = {}
        out = edges(IDS)
    assert [r for r in edges.readers if not torch.equal(on[r], edges.captured[r])] == ["logits"]
    assert not torch.allclose(out, ref)


def test_corrupted_patching_all_off_gives_the_corrupted_run(model):
    corrupt = torch.tensor([[3, 3, 1, 8, 8, 2], [9, 1, 1, 5, 7, 4]])
    with torch.no_grad():
        ref_corrupt = _logits(model(corrupt))
        edges = EdgeMaskedModel(model).eval()
        edges.record_corruption(corrupt)
        edges.set_edges([])
        torch.testing.assert_close(_logits(edges(IDS)), ref_corrupt, atol=1e-5, rtol=0)
        edges.set_edges(edges.all_edges())
        torch.testing.assert_close(_logits(edges(IDS)), _logits(model(IDS)), atol=1e-5, rtol=0)


def test_eap_scores_match_the_effect_of_removing_an_edge():
    torch.manual_seed(0)
    model = TinyTransformer(TinyTransformerConfig(vocab_size=30, d_model=16, n_layers=2, n_heads=2,
                                                  d_head=8, d_mlp=32, max_len=12, norm=False))
    model = model.double().eval()
    edges = EdgeMaskedModel(model).eval()
    corrupt = torch.tensor([[3, 3, 1, 8, 8, 2], [9, 1, 1, 5, 7, 4]])

    def metric(out):
        return out[:, -1, 0].sum()

    scores = edge_attribution_patching(edges, metric, (IDS,), corrupt_args=(corrupt,))
    assert len(scores) == edges.num_edges and edges._corrupt is None
    # without a final norm the logits are linear in a readout gate: its first-order score is exact
    edges.record_corruption(corrupt)
    with torch.no_grad():
        base = metric(edges(IDS))
        edges.set_edges([e for e in edges.all_edges() if e != ("a1.h0", "logits")])
        patched = metric(edges(IDS))
    assert scores[("a1.h0", "logits")] == pytest.approx(float(patched - base), rel=1e-6, abs=1e-9)
    assert any(abs(s) > 1e-6 for s in scores.values())


def test_density_controller_lands_on_the_target_number_of_edges():
    torch.manual_seed(0)
    model = _tiny()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        ref = model(IDS)
    edges = EdgeMaskedModel(model, init_percentage=0.9).train()
    ctrl = DensityController(target_density=20 / edges.num_edges, steer="expected", lr=1.0,
                             lambda_2_init=100.0, warmup_steps=100)
    opt = torch.optim.Adam(edges.mask_parameters(), lr=0.05)
    for _ in range(200):
        loss = (edges(IDS) - ref).pow(2).mean() + ctrl(edges)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(ctrl.last_density * edges.num_edges - 20) < 1.5  # expected number of edges
    assert all(p.grad is None for p in model.parameters())


def test_graph_image_has_one_line_per_edge_into_each_head(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    torch.manual_seed(0)
    edges = EdgeMaskedModel(_llama()).eval()
    keep = [("embed", "a0.g1.k"), ("a0.h3", "a1.h0.q"), ("m1", "logits")]
    edges.set_edges(keep)
    assert sorted(edges.edge_list()) == sorted(keep)
    fig = edges.draw(path=str(tmp_path / "c.png"))
    assert len(fig.axes[0].lines) == 4  # the k-group 1 reader is drawn to heads 2 and 3
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_unknown_model_type_and_edges_are_clear_errors():
    with pytest.raises(ValueError, match="supported"):
        EdgeMaskedModel(_tiny(), model_type="bert")
    edges = EdgeMaskedModel(_tiny())
    with pytest.raises(ValueError, match="not edges"):
        edges.set_edges([("m1", "a0.h0.q")])
