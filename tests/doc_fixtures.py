"""Small named objects that the README's and docs' code blocks take as given.

A block that uses ``model``, ``batch``, ``loader`` ... without defining them gets the fixture
of that name (built fresh, tiny, random, offline) from :func:`namespace_for`. Which model a
name stands for depends on the page: the README's quickstarts fine-tune a sequence
classifier (``PROFILES`` default ``"classifier"``), the deployment and LLM pages a causal
LM (``"causal_lm"``).

>>> ns = namespace_for("README.md", {"model", "batch"})
>>> type(ns["model"]).__name__, sorted(ns["batch"])
('BertForSequenceClassification', ['attention_mask', 'input_ids', 'labels'])
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

VOCAB, SEQ, BATCH = 100, 12, 4

# page glob -> profile; the first match wins, "classifier" otherwise
PROFILES = {
    "docs/deploy.md": "causal_lm",
    "docs/llm_pruning.md": "causal_lm",
    "docs/oneshot.md": "causal_lm",
    "docs/cli.md": "causal_lm",
    "docs/eval_path.md": "classifier",
    "docs/circuits.md": "causal_lm",
}

_FIXTURES: dict[tuple[str, str], Callable[[], Any]] = {}


def fixture(name: str, *profiles: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Register a builder for ``name`` under ``profiles`` (all profiles when none given)."""

    def register(build: Callable[[], Any]) -> Callable[[], Any]:
        for profile in profiles or ("classifier", "causal_lm"):
            _FIXTURES[(profile, name)] = build
        return build

    return register


def profile_of(page: str) -> str:
    for pattern, profile in PROFILES.items():
        if fnmatch.fnmatch(page, pattern):
            return profile
    return "classifier"


def namespace_for(page: str, names: set[str], profile: str | None = None) -> dict[str, Any]:
    """Build the fixtures among ``names`` that ``profile`` (default: ``page``'s) defines."""
    profile = profile or profile_of(page)
    return {n: _FIXTURES[(profile, n)]() for n in sorted(names) if (profile, n) in _FIXTURES}


def setup_page(page: str, workdir: Path) -> None:
    """Create the files a page's blocks read (the CLI page reads a `prune` output)."""
    if page == "docs/cli.md":
        from modeopt_masks import cli

        model_dir = workdir / "tiny-llama"
        _tiny_llama().save_pretrained(model_dir)
        _tiny_tokenizer().save_pretrained(model_dir)
        text = workdir / "text.txt"
        text.write_text(_english(0, 6000))
        code = cli.main(["prune", str(model_dir), "--params", "80%", "--data", str(text),
                         "--out", str(workdir / "pruned"), "--uniform", "--seq-len", "16",
                         "--max-sequences", "8", "--no-progress"])
        assert code in (0, None), code


# --- models -------------------------------------------------------------------------------


def _tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=256, max_position_embeddings=64, num_labels=5)).eval()


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)).eval()


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                      n_positions=64, bos_token_id=0,
                                      eos_token_id=0)).eval()


def _tiny_tokenizer():
    """A byte-level BPE tokenizer trained on a few lines of English (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<eos>"],
                                  initial_alphabet=[])
    tok.train_from_iterator([_english(0, 4000)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def _english(start: int, stop: int) -> str:
    from pydoc_data.topics import topics

    return " ".join(topics.values())[start:stop]


def _ids(seed: int, n: int = BATCH) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed))


def _classifier_batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": _ids(seed), "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long),
            "labels": torch.randint(0, 5, (BATCH,), generator=g)}


def _lm_batch(seed: int) -> dict[str, torch.Tensor]:
    ids = _ids(seed)
    return {"input_ids": ids, "labels": ids}


@fixture("model", "classifier")
def model_classifier():
    return _tiny_bert()


@fixture("fresh_model", "classifier")
def fresh_model_classifier():
    return _tiny_bert()


@fixture("model", "causal_lm")
def model_causal_lm():
    return _tiny_llama()


@fixture("fresh_model", "causal_lm")
def fresh_model_causal_lm():
    return _tiny_llama()


@fixture("train_dataset")
def train_dataset():
    """Sixteen single examples (the ``Trainer`` batches them itself)."""
    return [{k: v[i] for k, v in _classifier_batch(b).items()} for b in range(4) for i in range(BATCH)]


@fixture("dense_teacher", "causal_lm")
def dense_teacher():
    return _tiny_llama()


@fixture("train_batches", "causal_lm")
def train_batches():
    return [_lm_batch(i) for i in range(4)]


@fixture("held_out", "causal_lm")
def held_out():
    return [_lm_batch(100 + i) for i in range(2)]


@fixture("gpt2")
def gpt2():
    return _tiny_gpt2()


@fixture("batch", "classifier")
def batch_classifier():
    return _classifier_batch(0)


@fixture("batch", "causal_lm")
def batch_causal_lm():
    return _lm_batch(0)


@fixture("loader", "classifier")
def loader_classifier():
    return [_classifier_batch(i) for i in range(4)]


@fixture("loader", "causal_lm")
def loader_causal_lm():
    return [_lm_batch(i) for i in range(4)]


@fixture("batches")
@fixture("calibration_batches")
def calibration_batches():
    return [_lm_batch(i) for i in range(4)]


@fixture("held_out_batches")
def held_out_batches():
    return [_lm_batch(100 + i) for i in range(2)]


@fixture("calibration_ids")
def calibration_ids():
    return [row[None] for row in _ids(7, 8)]          # sequences of shape (1, SEQ)


@fixture("total_steps")
def total_steps():
    return 4


@fixture("token_labels")
def token_labels():
    return torch.randint(0, 5, (BATCH, SEQ), generator=torch.Generator().manual_seed(3))


@fixture("ids")
def ids():
    return _ids(11)


@fixture("corrupt_ids")
def corrupt_ids():
    return _ids(12)


@fixture("labels")
def labels():
    return torch.tensor([0, 1] * (BATCH // 2))


@fixture("last_token")
def last_token():
    mask = torch.zeros(BATCH, SEQ, dtype=torch.bool)
    mask[:, -1] = True
    return mask


@fixture("metric")
def metric():
    """Logit of token 1 at the last position, averaged over the batch."""
    def logit_of_token_1(out):
        logits = out.logits if hasattr(out, "logits") else out
        return logits[:, -1, 1].mean()

    return logit_of_token_1


@fixture("task_accuracy")
def task_accuracy():
    """Share of last tokens whose argmax is token 1 on fixed inputs (a stand-in task)."""
    def accuracy(model):
        with torch.no_grad():
            return (model(input_ids=_ids(21)).logits[:, -1].argmax(-1) == 1).float().mean().item()

    return accuracy


@fixture("name")
def name():
    """A local model folder: ``AutoModel.from_pretrained(name)`` loads the tiny BERT body."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="doc-model-"))
    _tiny_bert().bert.save_pretrained(path)
    return str(path)
