"""Library-aware Hugging Face checkpoints: ``save_pretrained`` / ``from_pretrained`` keep modes.

After :func:`enable_huggingface_checkpointing` (like Model Optimizer's), ``save_pretrained``
of a converted, unexported model writes, beside ``config.json`` and the weights,
``modeopt_masks_state.json``: the mode history (names, configs, metadata such as gradnas
selections) as checksummed JSON, never pickle. The mask tensors are in the ordinary
safetensors weight files, so a ``Trainer`` checkpoint (it calls ``save_pretrained``) and
``resume_from_checkpoint`` on a model converted the same way restore them as well.
``from_pretrained`` of such a folder loads the base weights, replays the modes and loads
every saved tensor, checked by name and shape: a folder whose tensors do not fit raises
:class:`~modeopt_masks.StateError` naming both shapes. Without this library the folder
loads as the unconverted base model (transformers lists the mask tensors it skipped).

Examples:
    >>> import tempfile, torch, transformers as tf, modeopt_masks as mm
    >>> mm.enable_huggingface_checkpointing()
    >>> cfg = tf.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=8)
    >>> m = mm.convert(tf.GPT2LMHeadModel(cfg), "hard_concrete").eval()
    >>> d = tempfile.mkdtemp(); m.save_pretrained(d)
    >>> again = tf.GPT2LMHeadModel.from_pretrained(d).eval()
    >>> [s.mode for s in mm.mode_history(again)]
    ['hard_concrete']
    >>> x = torch.tensor([[1, 2, 3]]); torch.equal(again(x).logits, m(x).logits)
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch.nn as nn
from safetensors.torch import load_file

from .conversion import ModeState, _set_history, mode_history, transaction
from .model_card import model_card
from .persistence import (
    FORMAT,
    FORMAT_VERSION,
    StateError,
    _load_tensors,
    _parse_document,
    _parse_modes,
    encode_state_document,
)
from .registry import get_mode

#: the mode-state file written beside ``config.json``
HF_STATE_FILE = "modeopt_masks_state.json"

_ORIGINAL: dict[str, Any] = {}


def enable_huggingface_checkpointing() -> None:
    """Make ``PreTrainedModel.save_pretrained`` / ``from_pretrained`` save and restore modes
    (idempotent).

    Examples:
        >>> import transformers as tf, modeopt_masks as mm
        >>> mm.enable_huggingface_checkpointing(); mm.enable_huggingface_checkpointing()
        >>> tf.PreTrainedModel.save_pretrained.__name__
        '_save_pretrained'
    """
    import transformers

    cls = transformers.PreTrainedModel
    if _ORIGINAL:
        return
    _ORIGINAL["save_pretrained"] = cls.save_pretrained
    _ORIGINAL["from_pretrained"] = cls.from_pretrained.__func__  # type: ignore[attr-defined]
    cls.save_pretrained = _save_pretrained  # type: ignore[method-assign]
    cls.from_pretrained = classmethod(_from_pretrained)  # type: ignore[method-assign,assignment]


def _save_pretrained(self: nn.Module, save_directory: str | os.PathLike[str], *args: Any,
                     **kwargs: Any) -> Any:
    history = mode_history(self)
    for state in history:
        state.descriptor.update_metadata(self, state.config, state.metadata)
    result = _ORIGINAL["save_pretrained"](self, save_directory, *args, **kwargs)
    path = Path(save_directory) / HF_STATE_FILE
    if not kwargs.get("is_main_process", True):
        return result
    card = model_card(self)
    if card:  # an exported gradnas model: say what was pruned
        (Path(save_directory) / "README.md").write_text(card)
    if history:
        document = {"format": FORMAT, "format_version": FORMAT_VERSION, "layout": "hf",
                    "modes": [{"mode": s.mode, "config": s.config.to_dict(),
                               "metadata": s.metadata} for s in history]}
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(encode_state_document(document))
        tmp.replace(path)
    else:
        path.unlink(missing_ok=True)  # a plain model over an old converted checkpoint
    return result


def _weights(folder: Path) -> dict[str, Any]:
    tensors: dict[str, Any] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def _from_pretrained(cls: type, pretrained_model_name_or_path: Any, *args: Any,
                     **kwargs: Any) -> Any:
    model = _ORIGINAL["from_pretrained"](cls, pretrained_model_name_or_path, *args, **kwargs)
    folder = Path(str(pretrained_model_name_or_path))
    state = folder / HF_STATE_FILE
    if not (folder.is_dir() and state.is_file()):
        return model
    return restore_modes(model, folder)


def restore_modes(model: nn.Module, folder: str | os.PathLike[str]) -> nn.Module:
    """Replay the modes saved in ``folder`` on ``model`` (its base weights loaded) and load
    every tensor of the folder's safetensors files; a :class:`StateError` leaves ``model``
    unchanged.

    Examples:
        >>> import tempfile, torch.nn as nn
        >>> from modeopt_masks.hf_checkpointing import restore_modes
        >>> try:
        ...     restore_modes(nn.Linear(2, 2), tempfile.mkdtemp())
        ... except Exception as e:
        ...     print(type(e).__name__)
        StateError
    """
    path = Path(folder) / HF_STATE_FILE
    if not path.is_file():
        raise StateError(f"{folder}: no {HF_STATE_FILE} (not saved with modes)")
    document = _parse_document(path.read_bytes(), path)
    entries = _parse_modes(document)
    saved = _weights(Path(folder))
    if mode_history(model):
        raise StateError("the model already has modes; load the checkpoint into a fresh model")
    with transaction(model):
        history: list[ModeState] = []
        for name, config, metadata in entries:
            try:
                model = get_mode(name).restore(model, config, metadata)
            except Exception as e:  # noqa: BLE001 - a checkpoint that does not fit
                raise StateError(f"the model does not fit the saved state: {e}") from e
            history.append(ModeState(name, config, metadata))
            _set_history(model, history)
        _load_tensors(model, saved)
    return model
