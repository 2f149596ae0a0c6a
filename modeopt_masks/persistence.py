"""``save`` and ``restore``: a converted model's whole state, without pickle.

``save(model, directory)`` writes ``modeopt_state.json`` (the mode history:
names, configs, metadata, and a SHA-256 of the tensor file) and
``model.safetensors`` (every parameter and buffer, masks included).
``restore(fresh_model, directory)`` replays the modes on a model of the same
architecture and loads the tensors; anything that does not fit raises a clear
error and leaves the model as it was.

Examples:
    >>> import tempfile, torch, torch.nn as nn, modeopt_masks as mm
    >>> _ = torch.manual_seed(0); net = nn.Sequential(nn.Linear(4, 4))
    >>> net = mm.convert(net, "hard_concrete").eval()
    >>> d = tempfile.mkdtemp(); mm.save(net, d)
    >>> fresh = mm.restore(nn.Sequential(nn.Linear(4, 4)), d).eval()
    >>> x = torch.randn(2, 4); torch.equal(fresh(x), net(x))
    True
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_model, save_model

from .conversion import ModeState, _set_history, _undo, mode_history, validate_config
from .registry import get_mode

STATE_FILE = "modeopt_state.json"
TENSOR_FILE = "model.safetensors"
FORMAT = "modeopt-masks"
FORMAT_VERSION = 1


class StateError(ValueError):
    """A saved state is missing, corrupted, or does not fit the model.

    Examples:
        >>> import tempfile, torch.nn as nn, modeopt_masks as mm
        >>> try:
        ...     mm.restore(nn.Linear(2, 2), tempfile.mkdtemp())
        ... except mm.StateError as e:
        ...     print("was the directory written by modeopt_masks.save?" in str(e))
        True
    """


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save(model: nn.Module, directory: str | os.PathLike[str]) -> None:
    """Write the model's mode history and tensors to ``directory`` (created if needed).

    Examples:
        >>> import os, tempfile, torch.nn as nn, modeopt_masks as mm
        >>> d = tempfile.mkdtemp()
        >>> mm.save(mm.convert(nn.Sequential(nn.Linear(2, 2)), "magnitude_pruning"), d)
        >>> sorted(os.listdir(d))
        ['model.safetensors', 'modeopt_state.json']
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    history = mode_history(model)
    for state in history:
        state.descriptor.update_metadata(model, state.config, state.metadata)
    tmp_tensors = out / (TENSOR_FILE + ".tmp")
    save_model(model, str(tmp_tensors), force_contiguous=True)
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_class": type(model).__qualname__,
        "modes": [
            {"mode": s.mode, "config": s.config.to_dict(), "metadata": s.metadata} for s in history
        ],
        "tensors_sha256": _sha256(tmp_tensors),
    }
    tmp_state = out / (STATE_FILE + ".tmp")
    tmp_state.write_text(json.dumps(document, indent=2, sort_keys=True))
    os.replace(tmp_tensors, out / TENSOR_FILE)
    os.replace(tmp_state, out / STATE_FILE)


def load_state_document(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``modeopt_state.json`` and the tensor file's checksum."""
    root = Path(directory)
    state_path, tensor_path = root / STATE_FILE, root / TENSOR_FILE
    for path in (state_path, tensor_path):
        if not path.is_file():
            raise StateError(f"{path} is missing: was the directory written by modeopt_masks.save?")
    try:
        document = json.loads(state_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StateError(f"{state_path} is corrupted or truncated: {e}") from e
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise StateError(f"{state_path} is not a modeopt-masks state file")
    if document.get("format_version") != FORMAT_VERSION:
        raise StateError(
            f"{state_path} has format version {document.get('format_version')}, "
            f"this library reads {FORMAT_VERSION}"
        )
    if _sha256(tensor_path) != document.get("tensors_sha256"):
        raise StateError(f"{tensor_path} is corrupted or truncated (checksum mismatch)")
    return document


def _check_tensor_shapes(model: nn.Module, tensor_path: Path) -> None:
    """Check names and shapes before loading: a failed load must not half-write the model."""
    expected = model.state_dict(keep_vars=True)
    with safe_open(str(tensor_path), framework="pt") as f:
        saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    unexpected = sorted(set(saved) - set(expected))
    wrong = sorted(k for k in saved if k in expected and tuple(expected[k].shape) != saved[k])
    # save_model writes a tied (shared) tensor once: a name absent from the file is fine
    # when it shares storage with one that is there
    loaded = {expected[k].untyped_storage().data_ptr() for k in saved if k in expected}
    missing = sorted(
        k for k in expected
        if k not in saved and expected[k].untyped_storage().data_ptr() not in loaded
    )
    if unexpected or wrong or missing:
        details = [f"unexpected tensors {unexpected[:10]}"] if unexpected else []
        details += [f"missing tensors {missing[:10]}"] if missing else []
        details += [f"{k}: saved {saved[k]}, model {tuple(expected[k].shape)}" for k in wrong[:10]]
        raise StateError("the model does not fit the saved state: " + "; ".join(details))


def _parse_modes(document: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
    """``[(mode name, validated config, metadata)]`` of a state document, or ``StateError``."""
    modes = document.get("modes")
    if not isinstance(modes, list):
        raise StateError(f"the state file's 'modes' must be a list of entries, got {modes!r:.80}")
    parsed = []
    for i, entry in enumerate(modes):
        try:
            if not isinstance(entry, dict):
                raise TypeError(f"an entry is an object, got {entry!r:.80}")
            name = get_mode(entry["mode"]).name
            config = validate_config(name, entry["config"])
            metadata = entry["metadata"]
            if not isinstance(metadata, dict):
                raise TypeError(f"'metadata' must be an object, got {metadata!r:.80}")
        except (KeyError, TypeError, ValueError) as e:
            what = f"missing key {e}" if isinstance(e, KeyError) else str(e)
            raise StateError(f"mode entry {i} of the state file is invalid: {what}") from e
        parsed.append((name, config, metadata))
    return parsed


def restore(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Replay the saved modes on ``model`` (a fresh model of the same architecture), load tensors.

    Raises :class:`StateError` (the model unchanged) if the files are corrupted
    or the model does not fit.

    Examples:
        >>> import tempfile, torch.nn as nn, modeopt_masks as mm
        >>> d = tempfile.mkdtemp()
        >>> mm.save(mm.convert(nn.Sequential(nn.Linear(2, 2)), "hard_concrete"), d)
        >>> [s.mode for s in mm.mode_history(mm.restore(nn.Sequential(nn.Linear(2, 2)), d))]
        ['hard_concrete']
    """
    document = load_state_document(directory)
    entries = _parse_modes(document)
    if mode_history(model):
        raise StateError("restore needs a model without modes; this one is already converted")
    history: list[ModeState] = []
    try:
        for name, config, metadata in entries:
            try:
                model = get_mode(name).restore(model, config, metadata)
            except StateError:
                raise
            except Exception as e:
                raise StateError(f"the model does not fit the saved state: {e}") from e
            history.append(ModeState(name, config, metadata))
            _set_history(model, history)
        tensor_path = Path(directory) / TENSOR_FILE
        _check_tensor_shapes(model, tensor_path)
        missing, unexpected = load_model(model, str(tensor_path), strict=False)
        if missing or unexpected:
            raise StateError(
                f"the model does not fit the saved state: missing {sorted(missing)[:10]}, "
                f"unexpected {sorted(unexpected)[:10]}"
            )
    except Exception:
        _undo(model, history, 0)
        raise
    return model
