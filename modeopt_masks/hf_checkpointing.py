"""Library-aware Hugging Face checkpoints: ``save_pretrained`` / ``from_pretrained`` keep modes.

After [`enable_huggingface_checkpointing`][modeopt_masks.hf_checkpointing.enable_huggingface_checkpointing] (like Model Optimizer's), ``save_pretrained``
of a converted, unexported model writes, beside ``config.json`` and the weights,
``modeopt_masks_state.json``: the mode history (names, configs, metadata such as gradnas
selections) as checksummed JSON, never pickle. The mask tensors are in the ordinary
safetensors weight files, so a ``Trainer`` checkpoint (it calls ``save_pretrained``) and
``resume_from_checkpoint`` on a model converted the same way restore them as well.
``from_pretrained`` of such a folder loads the base weights, replays the modes and loads
every saved tensor, checked by name and shape: a folder whose tensors do not fit raises
[`StateError`][modeopt_masks.persistence.StateError] naming the saved class and both shapes.
A per-layer gradnas export converted again (e.g. ``"hard_concrete"``) also writes its
structure record ([`modeopt_masks.hf_remote`][modeopt_masks.hf_remote]): ``from_pretrained``, with the stock class or
``trust_remote_code=True``, builds the per-layer shapes before replaying the modes.

Without this library the folder loads as the unconverted base model, never silently:
beside the mask tensors the weights hold [`MARKER_TENSOR`][modeopt_masks.hf_checkpointing.MARKER_TENSOR] (the SHA-256 of the state
file, which also ties the two together), so transformers' load report lists it and every
mask tensor as ``UNEXPECTED``, gradnas selections included (they have no tensor of
their own). With the library those keys are expected, and not reported.

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

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file

from .conversion import ModeState, _set_history, mode_history, transaction
from .hf_remote_modeling import STRUCTURE_KEY, PrunedStructure
from .model_card import model_card
from .persistence import (
    FORMAT,
    FORMAT_VERSION,
    StateError,
    _base_state,
    _load_tensors,
    _parse_document,
    _parse_modes,
    encode_state_document,
)
from .registry import get_mode

#: the mode-state file written beside ``config.json``
HF_STATE_FILE = "modeopt_masks_state.json"
MARKER_TENSOR = "modeopt_masks_modes_not_applied"
"""The weight written beside the masks: stock transformers reports it as unexpected, so a load without this library says the modes were not applied (its value: the state file's SHA-256)."""

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
    state_bytes = b""
    if history:
        state_bytes = _state_bytes(self)
        weights = kwargs.get("state_dict")
        kwargs["state_dict"] = {**(self.state_dict() if weights is None else weights),
                                MARKER_TENSOR: _marker(state_bytes)}
    result = _ORIGINAL["save_pretrained"](self, save_directory, *args, **kwargs)
    path = Path(save_directory) / HF_STATE_FILE
    if not kwargs.get("is_main_process", True):
        return result
    card = model_card(self)
    if card:  # an exported gradnas model: say what was pruned
        (Path(save_directory) / "README.md").write_text(card)
    if history:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(state_bytes)
        tmp.replace(path)
    else:
        path.unlink(missing_ok=True)  # a plain model over an old converted checkpoint
    return result


def _state_bytes(model: nn.Module) -> bytes:
    history = mode_history(model)
    base = _base_state(model)
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "layout": "hf",
                "model_class": type(model).__qualname__,
                "mode_tensors": [k for k in model.state_dict() if k not in base],
                "modes": [{"mode": s.mode, "config": s.config.to_dict(),
                           "metadata": s.metadata} for s in history]}
    return encode_state_document(document)


def _marker(state_bytes: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(hashlib.sha256(state_bytes).digest()), dtype=torch.uint8)


def _weights(folder: Path) -> dict[str, Any]:
    tensors: dict[str, Any] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def _expected_keys(state: Path) -> list[str]:
    """The keys of a converted checkpoint that stock transformers does not know."""
    try:
        document = _parse_document(state.read_bytes(), state)
    except StateError:
        return []  # restore_modes reports it
    names = document.get("mode_tensors")
    names = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
    return [f"^{re.escape(n)}$" for n in (MARKER_TENSOR, *names)]


def _config_mismatch(cls: type, folder: Path) -> str | None:
    """Where ``config.json`` and the weight files of ``folder`` disagree, in words."""
    import transformers
    from safetensors import safe_open

    config = transformers.AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        skeleton = cls(config)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    held: dict[str, tuple[int, ...]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            held.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})  # noqa: SIM118
    wrong = [(k, held[k]) for k in expected if k in held and held[k] != expected[k]]
    if not wrong:
        return None
    key, shape = wrong[0]
    more = f" ({len(wrong) - 1} more differ)" if len(wrong) > 1 else ""
    return (f"{folder}: config.json and the weights disagree: config.json describes {key} as "
            f"{expected[key]}, the weights hold {shape}{more} (a config edited or left from "
            "another save?)")


def _from_pretrained(cls: type, pretrained_model_name_or_path: Any, *args: Any,
                     **kwargs: Any) -> Any:
    folder = Path(str(pretrained_model_name_or_path))
    state = folder / HF_STATE_FILE
    if not (folder.is_dir() and state.is_file()):
        return _ORIGINAL["from_pretrained"](cls, pretrained_model_name_or_path, *args, **kwargs)
    per_layer = _has_structure(folder)
    if per_layer:  # a converted per-layer export: build its shapes, then restore the modes
        cls = _pruned_class(cls)
    # the masks and the marker are expected here: keep them out of the load report (the class
    # attribute is read when the model is built)
    own = cls.__dict__.get("_keys_to_ignore_on_load_unexpected", None)
    inherited = getattr(cls, "_keys_to_ignore_on_load_unexpected", None)
    cls._keys_to_ignore_on_load_unexpected = {*(inherited or ()), *_expected_keys(state)}  # type: ignore[attr-defined]
    try:
        model = _ORIGINAL["from_pretrained"](cls, pretrained_model_name_or_path, *args, **kwargs)
    except RuntimeError as e:
        mismatch = _config_mismatch(cls, folder) if "ignore_mismatched_sizes" in str(e) else None
        if mismatch is None:
            raise
        raise StateError(mismatch) from e
    finally:
        if own is None:
            del cls._keys_to_ignore_on_load_unexpected  # type: ignore[attr-defined]
        else:
            cls._keys_to_ignore_on_load_unexpected = own  # type: ignore[attr-defined]
    model = restore_modes(model, folder)
    if per_layer:
        from .hf_remote import attach

        attach(model)  # its save_pretrained writes the record again
    return model


def _has_structure(folder: Path) -> bool:
    """Whether ``folder``'s ``config.json`` holds a non-empty per-layer structure record."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    record = config.get(STRUCTURE_KEY) if isinstance(config, dict) else None
    return isinstance(record, dict) and bool(record.get("modules"))


_PRUNED: dict[type, type] = {}


def _pruned_class(cls: type) -> type:
    """``cls`` with [`PrunedStructure`][modeopt_masks.hf_remote_modeling.PrunedStructure] before it (what ``trust_remote_code`` would
    load); ``cls`` itself when it already is such a class (the folder's remote code)."""
    if any(c.__name__ == PrunedStructure.__name__ for c in cls.__mro__):
        return cls
    if cls not in _PRUNED:
        _PRUNED[cls] = type(f"Pruned{cls.__name__}", (PrunedStructure, cls),
                            {"__module__": PrunedStructure.__module__})
    return _PRUNED[cls]


def restore_modes(model: nn.Module, folder: str | os.PathLike[str]) -> nn.Module:
    """Replay the modes saved in ``folder`` on ``model`` (its base weights loaded) and load
    every tensor of the folder's safetensors files; a [`StateError`][modeopt_masks.persistence.StateError] leaves ``model``
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
    state_bytes = path.read_bytes()
    document = _parse_document(state_bytes, path)
    entries = _parse_modes(document)
    saved = _weights(Path(folder))
    marker = saved.pop(MARKER_TENSOR, None)
    if marker is not None and bytes(marker.tolist()) != hashlib.sha256(state_bytes).digest():
        raise StateError(f"{path} does not belong to the weights beside it (they were written "
                         "by another save_pretrained): save the model again")
    if mode_history(model):
        raise StateError("the model already has modes; load the checkpoint into a fresh model")
    saved_class = document.get("model_class")
    with transaction(model):
        history: list[ModeState] = []
        for name, config, metadata in entries:
            try:
                model = get_mode(name).restore(model, config, metadata)
            except Exception as e:  # noqa: BLE001 - a checkpoint that does not fit
                raise StateError(f"the model does not fit the saved state (saved from "
                                 f"{saved_class}): {e}") from e
            history.append(ModeState(name, config, metadata))
            _set_history(model, history)
        _load_tensors(model, saved, saved_class=saved_class)
    return model
