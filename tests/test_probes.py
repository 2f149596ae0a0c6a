"""SubnetworkProbe and CircuitProbe: shapes, losses, training, and a planted-variable circuit."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

transformers = pytest.importorskip("transformers")

import modeopt_masks as mm  # noqa: E402
from modeopt_masks.probing import (  # noqa: E402
    CircuitProbe,
    CircuitProbeConfig,
    SubnetworkProbe,
    SubnetworkProbeConfig,
    collect_vectors,
    compare_ablations,
    knn_accuracy,
    nearest_centroid_accuracy,
    soft_nearest_neighbour_loss,
)

T = transformers
VOCAB, HIDDEN, INNER, PLANT_DIM = 12, 16, 32, 15


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention on a shared machine
    yield
    torch.set_num_threads(threads)


class PlantedToy(nn.Module):
    """A 1-layer GPT-2 whose layer-0 MLP computes ``token in S`` in a few planted weights.

    Token ``t`` is embedded one-hot; attention writes nothing. Of the 32 MLP
    neurons, one per token of ``S`` fires only for that token (one ``c_fc``
    weight) and writes into residual dimension ``PLANT_DIM`` (one ``c_proj``
    weight); the others are random noise writing elsewhere. ``head`` reads
    ``PLANT_DIM`` after ``ln_f``: the task is per-token ``t in S``.
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        cfg = T.GPT2Config(
            vocab_size=VOCAB, n_embd=HIDDEN, n_layer=1, n_head=2, n_inner=INNER, n_positions=8,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
        )
        self.gpt = T.GPT2Model(cfg)
        self.head = nn.Linear(HIDDEN, 2)
        self.in_set = torch.zeros(VOCAB, dtype=torch.bool)
        self.in_set[torch.randperm(VOCAB, generator=g)[: VOCAB // 2]] = True
        block = self.gpt.h[0]
        with torch.no_grad():
            self.gpt.wte.weight.copy_(torch.eye(VOCAB, HIDDEN))
            self.gpt.wpe.weight.zero_()
            block.attn.c_proj.weight.zero_()
            block.attn.c_proj.bias.zero_()
            fc, proj = block.mlp.c_fc, block.mlp.c_proj  # Conv1D weights are [in, out]
            fc.weight.copy_(torch.randn(HIDDEN, INNER, generator=g) * 0.5)
            fc.bias.zero_()
            proj.weight.copy_(torch.randn(INNER, HIDDEN, generator=g) * 0.5)
            proj.weight[:, PLANT_DIM] = 0
            proj.bias.zero_()
            self.planted = []
            for neuron, token in enumerate(torch.nonzero(self.in_set).flatten().tolist()):
                fc.weight[:, neuron] = 0
                fc.weight[token, neuron] = 3.0
                proj.weight[neuron, :] = 0
                proj.weight[neuron, PLANT_DIM] = 1.0
                self.planted.append(neuron)
            # the head thresholds PLANT_DIM halfway between the two classes
            value = self.gpt(input_ids=torch.arange(VOCAB)[:, None]).last_hidden_state[:, 0, PLANT_DIM]
            threshold = (value[self.in_set].min() + value[~self.in_set].max()) / 2
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.weight[1, PLANT_DIM] = 1.0
            self.head.bias[1] = -threshold
        self.eval()

    def forward(self, input_ids: torch.Tensor, **kwargs):
        return self.head(self.gpt(input_ids=input_ids, **kwargs).last_hidden_state)

    def labels(self, ids: torch.Tensor) -> torch.Tensor:
        return self.in_set[ids].long()


def _ids(n: int, seq: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))


def _tiny_bert(**kw) -> nn.Module:
    torch.manual_seed(0)
    return T.BertModel(T.BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=INNER, max_position_embeddings=8, **kw))


# -- SubnetworkProbe -------------------------------------------------------------------------
def test_subnetwork_probe_shapes_and_loss_sequence_and_token():
    ids = _ids(3, 5, 0)
    first = torch.zeros(3, 5, dtype=torch.bool)
    first[:, 0] = True
    seq_probe = SubnetworkProbe(
        {"probe_vector": "attn_update_1", "n_classes": 4, "intermediate_size": 8}, _tiny_bert())
    out = seq_probe(input_ids=ids, labels=torch.tensor([0, 3, 1]), token_mask=first)
    assert out.logits.shape == (3, 4) and out.hidden_states.shape == (3, HIDDEN)
    ref = nn.functional.cross_entropy(out.logits, torch.tensor([0, 3, 1]))
    torch.testing.assert_close(out.loss, ref)  # no masks: no L0 term
    assert seq_probe(input_ids=ids, token_mask=first).loss is None

    labels = torch.tensor([[0, 1, -100, 2, 1]] * 3)
    tok_probe = SubnetworkProbe(
        SubnetworkProbeConfig(probe_vector="mlp_stream_0", n_classes=3, labeling="token",
                              target_layers=["encoder.layer.0.*"], l0_lambda=1e-3,
                              mask_hparams={"mask_init_value": 0.5}),
        _tiny_bert(),
    )
    out = tok_probe(input_ids=ids, labels=labels)
    assert out.logits.shape == (3, 5, 3) and out.hidden_states.shape == (12, HIDDEN)
    ce = nn.functional.cross_entropy(out.logits[labels != -100], labels[labels != -100])
    torch.testing.assert_close(out.loss, ce + 1e-3 * mm.l0_loss(tok_probe.model))
    # token_mask restricts further; flat labels line up with it
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[:, 1] = True
    flat = tok_probe(input_ids=ids, labels=torch.tensor([1, 1, 1]), token_mask=mask)
    torch.testing.assert_close(flat.hidden_states, out.hidden_states[1::4])
    tok_probe.eval()  # no L0 term outside training
    out = tok_probe(input_ids=ids, labels=labels)
    ce = nn.functional.cross_entropy(out.logits[labels != -100], labels[labels != -100])
    torch.testing.assert_close(out.loss, ce)


def test_subnetwork_probe_freezes_base_and_trains_probe_and_masks():
    probe = SubnetworkProbe(
        {"probe_vector": "mlp_update_0", "n_classes": 2, "labeling": "token",
         "target_layers": ["h.0.mlp.c_fc"], "mask_hparams": {"mask_init_value": 0.5},
         "hidden_size": HIDDEN},
        PlantedToy(0).gpt,
    )
    trainable = {n for n, p in probe.named_parameters() if p.requires_grad}
    assert trainable == {"probe.weight", "probe.bias",
                         "wrapped_model.wrapped_model.h.0.mlp.c_fc.weight_mask.logits"}
    probe.train()
    assert not probe.model.training and probe.model.h[0].mlp.c_fc.weight_mask.training
    plain = SubnetworkProbe({"probe_vector": "mlp_update_0", "n_classes": 2}, _tiny_bert(
        hidden_dropout_prob=0.5))
    assert {n for n, p in plain.named_parameters() if p.requires_grad} == {
        "probe.weight", "probe.bias"}
    plain.train()
    assert not plain.model.training  # frozen base keeps dropout off


def test_subnetwork_probe_training_improves_accuracy():
    torch.manual_seed(0)
    toy = PlantedToy(1)
    probe = SubnetworkProbe(
        {"probe_vector": "mlp_update_0", "n_classes": 2, "labeling": "token",
         "target_layers": ["h.0.mlp.*"], "mask_hparams": {"mask_init_value": 0.5},
         "l0_lambda": 1e-4},
        toy.gpt,
    )
    test_ids = _ids(64, 4, 99)

    def accuracy() -> float:
        probe.eval()
        with torch.no_grad():
            logits = probe(input_ids=test_ids).logits
        probe.train()
        return float((logits.argmax(-1) == toy.labels(test_ids)).float().mean())

    before = accuracy()
    opt = torch.optim.Adam([p for p in probe.parameters() if p.requires_grad], lr=0.05)
    for step in range(60):
        ids = _ids(32, 4, step)
        loss = probe(input_ids=ids, labels=toy.labels(ids)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = accuracy()
    assert before < 0.8 and after > 0.95, (before, after)


def test_probe_config_errors():
    bert = _tiny_bert()
    state = {k: v.clone() for k, v in bert.state_dict().items()}
    with pytest.raises(ValueError, match="attn_update_3"):
        SubnetworkProbeConfig(probe_vector="attn_3", n_classes=2)
    with pytest.raises(ValueError, match="matches no module.*supported layers.*encoder.layer"):
        SubnetworkProbe({"probe_vector": "mlp_update_0", "n_classes": 2,
                         "target_layers": ["nope.*"]}, bert)
    with pytest.raises(ValueError, match="out of range"):
        SubnetworkProbe({"probe_vector": "mlp_update_7", "n_classes": 2,
                         "target_layers": ["*"]}, bert)
    assert not mm.masked_modules(bert) and not mm.mode_history(bert)  # left unchanged
    assert all(torch.equal(v, bert.state_dict()[k]) for k, v in state.items())
    probe = SubnetworkProbe({"probe_vector": "mlp_update_0", "n_classes": 2}, bert)
    with pytest.raises(ValueError, match="token_mask"):
        probe(input_ids=_ids(2, 3, 0), labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="valid fields.*n_classes"):
        SubnetworkProbeConfig(probe_vector="mlp_update_0", n_classes=2, n_clases=3)
    with pytest.raises(ValueError, match="mask_init_value"):  # a bad mask rule field
        SubnetworkProbe({"probe_vector": "mlp_update_0", "n_classes": 2, "target_layers": ["*"],
                         "mask_hparams": {"mask_init": 1.0}}, bert)
    assert not mm.masked_modules(bert) and not mm.mode_history(bert)
    # NeuroSurgeon spellings
    ns = SubnetworkProbeConfig(probe_vectors="mlp_update_0", n_classes=2, intermediate_size=-1)
    assert (ns.probe_vector, ns.intermediate_size) == ("mlp_update_0", None)
    with pytest.raises(ValueError, match="target_layers"):
        CircuitProbeConfig(probe_vector="mlp_update_0")
    with pytest.raises(ValueError, match="n_classes"):
        CircuitProbeConfig(probe_vector="mlp_update_0", target_layers=["*"], objective="linear")


# -- SNN loss and evaluation helpers ---------------------------------------------------------
def test_snn_loss_prefers_label_clusters_and_is_scale_free():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    centers = torch.randn(2, 8, generator=g)
    clustered = centers[labels] + 0.05 * torch.randn(6, 8, generator=g)
    shuffled = clustered[torch.tensor([0, 3, 1, 4, 2, 5])]
    good = soft_nearest_neighbour_loss(clustered, labels)
    assert good < soft_nearest_neighbour_loss(shuffled, labels)
    torch.testing.assert_close(good, soft_nearest_neighbour_loss(10 * clustered, labels))
    # anchors without a same-label partner are skipped, not rewarded
    assert float(soft_nearest_neighbour_loss(clustered[:2], torch.tensor([0, 1]))) == 0.0
    assert nearest_centroid_accuracy(clustered, labels) == 1.0
    assert knn_accuracy(clustered, labels, k=1) == 1.0
    assert knn_accuracy(shuffled, labels, k=1) < 1.0


# -- CircuitProbe on a planted variable --------------------------------------------------------
def _train_circuit_probe(toy: PlantedToy, objective: str, seed: int) -> CircuitProbe:
    torch.manual_seed(seed)
    probe = CircuitProbe(
        CircuitProbeConfig(
            probe_vector="mlp_update_0", target_layers=["gpt.h.0.mlp.*"], labeling="token",
            objective=objective, n_classes=2 if objective == "linear" else None,
            mask_hparams={"mask_init_value": 0.05}, l0_lambda=1e-3,
        ),
        toy,
    )
    opt = torch.optim.Adam([p for p in probe.parameters() if p.requires_grad], lr=0.05)
    for step in range(100):
        if step % 10 == 0:
            mm.set_temperature(probe.model, 1.6 ** (step // 10))
        ids = _ids(32, 4, 1000 * seed + step)
        loss = probe(input_ids=ids, labels=toy.labels(ids)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return probe.eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_circuit_probe_finds_planted_variable_and_ablation_hurts_more_than_random(seed):
    toy = PlantedToy(seed)
    test_ids = _ids(64, 4, 7)
    test_labels = toy.labels(test_ids)

    def task_accuracy() -> float:
        return float((toy(test_ids).argmax(-1) == test_labels).float().mean())

    assert task_accuracy() == 1.0
    probe = _train_circuit_probe(toy, "snn", seed)
    stats = probe.compute_l0_statistics()
    density = stats["total_l0"] / stats["max_l0"]
    assert 0 < density < 0.2, density
    # the circuit alone separates the variable; the planted weights are in it
    train_x, train_y = collect_vectors(probe, [{"input_ids": _ids(64, 4, 8),
                                                "labels": toy.labels(_ids(64, 4, 8))}])
    test_x, test_y = collect_vectors(probe, [{"input_ids": test_ids, "labels": test_labels}])
    assert nearest_centroid_accuracy(train_x, train_y, test_x, test_y) > 0.95
    fc_circuit = toy.gpt.h[0].mlp.c_fc.weight_mask.circuit()
    planted_tokens = torch.nonzero(toy.in_set).flatten()
    assert bool(fc_circuit[planted_tokens, torch.tensor(toy.planted)].all())
    # ablating the circuit breaks the task; random subnetworks of its size barely matter
    results = compare_ablations(toy, task_accuracy, n_samples=5, seed=seed)
    assert results["zero_ablate"][0] < 0.75
    random_mean = sum(results["randomly_sampled"]) / 5
    assert min(results["complement_sampled"]) == 1.0
    assert results["zero_ablate"][0] < random_mean - 0.2, results
    assert len(set(results["randomly_sampled"])) > 1 or random_mean == 1.0
    assert mm.masked_modules(toy)["gpt.h.0.mlp.c_fc"].ablation == "none"


def test_circuit_probe_linear_variant_separates_the_variable():
    toy = PlantedToy(3)
    probe = _train_circuit_probe(toy, "linear", 3)
    ids = _ids(64, 4, 7)
    with torch.no_grad():
        out = probe(input_ids=ids, labels=toy.labels(ids))
    assert out.logits.shape == (256, 2)
    assert float((out.logits.argmax(-1) == out.labels).float().mean()) > 0.95
    stats = probe.compute_l0_statistics()
    assert stats["total_l0"] < stats["max_l0"] * 0.5
