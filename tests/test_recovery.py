"""Recovery by distillation (modeopt_masks.recovery): plain loop, step object, Trainer."""

from __future__ import annotations

import copy

import pytest
import torch

import modeopt_masks as mm
from modeopt_masks.pruning import prune
from modeopt_masks.recovery import Distiller, mask_parameters
from modeopt_masks.structured import gradnas_hparams

transformers = pytest.importorskip("transformers")

VOCAB = 64


def tiny_llama(hidden: int = 32, vocab: int = VOCAB, seed: int = 0):
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        initializer_range=0.3, tie_word_embeddings=True)  # sharp logits: a KL worth reducing
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg)
    model.config.use_cache = False
    return model.eval()


def batches(n: int, seed: int, batch: int = 4, seq: int = 12, vocab: int = VOCAB):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, vocab, (batch, seq), generator=g)} for _ in range(n)]


def pruned_copy(teacher, target: str = "60%"):
    """A gradnas-masked (not exported) copy of ``teacher`` at ``target`` params."""
    data = [{**b, "labels": b["input_ids"]} for b in batches(3, seed=7)]
    model, _ = prune(copy.deepcopy(teacher), "gradnas", constraints={"params": target},
                     config={"data_loader": data, "progress": False})
    return model


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"]).logits


def test_distilling_an_exported_pruned_model_lowers_its_loss_and_kl_to_the_teacher():
    teacher = tiny_llama()
    student = mm.export(pruned_copy(teacher))
    held_out = batches(3, seed=99)
    before = mm.kl_to_teacher(student, teacher, held_out)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = mm.distill(student, teacher, batches(6, seed=1), steps=40, lr=3e-3, progress=False)
    after = mm.kl_to_teacher(student, teacher, held_out)
    assert result.steps == 40 and len(result.history) == 40
    first = sum(h["loss"] for h in result.history[:5]) / 5
    last = sum(h["loss"] for h in result.history[-5:]) / 5
    assert last < 0.7 * first
    assert after < 0.9 * before  # on batches it never trained on
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_state.items())
    assert not student.training  # put back in its mode


def test_a_gradnas_masked_student_keeps_its_masks_and_exports_as_if_distilled_after_export():
    teacher = tiny_llama()
    masked = pruned_copy(teacher)
    kept = {n: hp.kept for n, hp in gradnas_hparams(masked).items()}
    exported_first = mm.export(copy.deepcopy(masked))
    data = batches(4, seed=2)
    torch.manual_seed(0)
    mm.distill(masked, teacher, data, steps=8, lr=3e-3, progress=False)
    torch.manual_seed(0)
    mm.distill(exported_first, teacher, data, steps=8, lr=3e-3, progress=False)
    assert {n: hp.kept for n, hp in gradnas_hparams(masked).items()} == kept
    probe = batches(1, seed=5)[0]
    masked_logits = logits(masked, probe)
    torch.testing.assert_close(logits(mm.export(masked), probe), masked_logits,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(exported_first, probe), masked_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("train_masks", [False, True])
def test_mask_mode_masks_stay_fixed_unless_train_masks(train_masks):
    teacher = tiny_llama()
    student = mm.convert(copy.deepcopy(teacher), ("continuous_sparsification", {
        "nn.Linear": {"*": {"mask_init_value": 1.0}, "*lm_head*": None}}))
    with torch.no_grad():  # a circuit that drops every other input column
        for p in mask_parameters(student):
            p[..., ::2] = -1.0
    masks = [p.detach().clone() for p in mask_parameters(student)]
    assert masks
    layer = student.model.layers[0].mlp.up_proj
    weight = layer.weight.detach().clone()
    mm.distill(student, teacher, batches(3, seed=3), steps=6, lr=1e-2, progress=False,
               train_masks=train_masks)
    changed = [not torch.equal(p, m) for p, m in zip(mask_parameters(student), masks, strict=True)]
    assert any(changed) == train_masks and (all(changed) or not train_masks)
    assert not torch.equal(layer.weight, weight)  # the weights did train
    assert all(p.requires_grad for p in mask_parameters(student))  # flags put back
    if not train_masks:  # the dropped entries are still out of the weight the forward uses
        student.eval()
        assert not bool(layer.effective_weight()[:, ::2].any())


def test_trainer_path_matches_the_plain_loop_on_the_same_seed_and_batches(tmp_path):
    teacher = tiny_llama()
    base = mm.export(pruned_copy(teacher))
    rows = batches(1, seed=4, batch=12)[0]["input_ids"]

    class Rows(torch.utils.data.IterableDataset):  # not shuffled: batches in order
        def __iter__(self):
            return iter([{"input_ids": r} for r in rows])

    loop_batches = [{"input_ids": rows[i:i + 4]} for i in range(0, 12, 4)]
    loop_student = copy.deepcopy(base)
    result = mm.distill(loop_student, teacher, loop_batches, steps=3, lr=2e-3,
                        temperature=2.0, max_grad_norm=1.0, progress=False)
    args = transformers.TrainingArguments(
        str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=2e-3,
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
        report_to=[], disable_tqdm=True, save_strategy="no", logging_strategy="no",
        dataloader_num_workers=0, use_cpu=True)
    trainer_student = copy.deepcopy(base)
    trainer = mm.DistillationTrainer(model=trainer_student, teacher=teacher, args=args,
                                     train_dataset=Rows(), temperature=2.0)
    trainer.train()
    assert len(trainer.distill_history) == 3
    for ours, theirs in zip(result.history, trainer.distill_history, strict=True):
        assert ours["kl"] == pytest.approx(theirs["kl"], rel=1e-4, abs=1e-6)
    probe = batches(1, seed=5)[0]
    torch.testing.assert_close(logits(trainer_student, probe), logits(loop_student, probe),
                               atol=1e-4, rtol=1e-4)


def test_hidden_state_loss_trains_a_projection_for_a_narrower_student():
    teacher, student = tiny_llama(hidden=32), tiny_llama(hidden=16, seed=1)
    distiller = Distiller(student, teacher, lr=3e-3, hidden_weight=1.0, kl_weight=0.5)
    projection = distiller.criterion.projection
    assert isinstance(projection, torch.nn.Linear) and projection.weight.shape == (32, 16)
    data = batches(4, seed=6)
    distiller.step(data[0])
    start = projection.weight.detach().clone()  # least-squares start, fitted on batch 0
    with torch.no_grad():
        before = float(distiller.loss(data[1])["hidden"])
    for i in range(1, 30):
        distiller.step(data[i % 4])
    with torch.no_grad():
        after = float(distiller.loss(data[1])["hidden"])
    assert 0 < after < 0.8 * before
    assert not torch.equal(projection.weight, start)  # trained with the student


def test_same_width_hidden_loss_compares_directly_and_is_zero_for_a_copy():
    teacher = tiny_llama()
    distiller = Distiller(copy.deepcopy(teacher), teacher, hidden_weight=1.0,
                          hidden_layers=[(1, 1), (-1, -1)])
    with torch.no_grad():
        parts = distiller.loss(batches(1, seed=8)[0])
    assert distiller.criterion.projection is None
    assert float(parts["hidden"]) < 1e-10 and float(parts["kl"]) < 1e-6


def test_bad_input_raises_clearly_and_leaves_the_student_unchanged():
    teacher = tiny_llama()
    other_vocab = tiny_llama(vocab=VOCAB + 8)
    before = {k: v.clone() for k, v in other_vocab.state_dict().items()}
    with pytest.raises(ValueError, match="vocabulary has 72 tokens and the teacher's 64"):
        mm.distill(other_vocab, teacher, batches(2, seed=1), steps=2, progress=False)
    assert all(torch.equal(v, other_vocab.state_dict()[k]) for k, v in before.items())
    student = copy.deepcopy(teacher)
    state = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(ValueError, match="gave no batch"):
        mm.distill(student, teacher, [], steps=5, progress=False)
    with pytest.raises(ValueError, match="the student is the teacher"):
        mm.distill(teacher, teacher, batches(1, seed=1), progress=False)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        mm.distill(student, teacher, batches(1, seed=1), temperature=0.0, progress=False)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        mm.distill(student, teacher, batches(1, seed=1), steps=0, progress=False)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in state.items())


def test_vocab_mismatch_without_configs_is_caught_on_the_logits():
    teacher, student = torch.nn.Linear(4, 5), torch.nn.Linear(4, 6)
    with pytest.raises(ValueError, match="student predicts 6 classes .* teacher 5"):
        mm.distill(student, teacher, [torch.randn(2, 4)], progress=False)


def test_steps_beyond_the_batches_repeat_them_and_a_one_shot_iterator_ends_early():
    teacher, student = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    data = [torch.randn(2, 3) for _ in range(2)]
    assert mm.distill(student, teacher, data, steps=5, progress=False).steps == 5
    with pytest.warns(UserWarning, match="ran out after 2 of 5 steps"):
        result = mm.distill(student, teacher, iter(data), steps=5, progress=False)
    assert result.steps == 2
