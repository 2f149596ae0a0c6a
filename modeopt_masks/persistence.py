"""``save`` and ``restore``: a converted model's whole state, without pickle.

``save(model, directory)`` writes ``model.<hash>.safetensors`` (every parameter
and buffer, masks included; ``<hash>`` starts its SHA-256) and then
``modeopt_state.json``, the manifest: the mode history (names, configs,
metadata), the tensor file's name and SHA-256, and a SHA-256 of the manifest
itself. ``restore(fresh_model, directory)`` replays the modes on a model of the
same architecture and loads the tensors; anything that does not fit raises
[`StateError`][modeopt_masks.persistence.StateError] and leaves the model as it was.

Guarantees:

* A checkpoint appears all at once. Each file is written under a fresh
  unpredictable temporary name (``mkstemp``: created exclusively, so a planted
  symlink is never followed), flushed to disk, then renamed into place; the
  manifest goes last, so a crash at any point leaves either the old or the new
  checkpoint restorable. The old tensor file is removed only after the new
  manifest is in place; a failed save removes what it wrote.
* ``restore`` reads each file once into memory, verifies those bytes and loads
  the same bytes: a file swapped in between is never loaded unverified. Any
  change to either file (a flipped byte, a truncation) raises ``StateError``.
* ``restore`` is a transaction ([`transaction`][modeopt_masks.conversion.transaction]):
  on any error, ``KeyboardInterrupt`` included, the model is as it was.

Masks-only checkpoints: ``save(model, directory, base_weights=False)`` writes only
the tensors the modes added (mask parameters, ``keep`` buffers; gradnas selections
live in the manifest), like a peft adapter. The manifest always records a
fingerprint of the base (the model with its modes undone): its class and every
tensor's name, shape, dtype and a SHA-256 of a few of its entries.
``restore(fresh_base, directory)`` checks the fresh model against it, so another
base model is a [`StateError`][modeopt_masks.persistence.StateError] naming the saved class and the first differing
shapes (with the model unchanged); for a masks-only checkpoint the sampled
values must match as well (another checkpoint of the same architecture, or a base
whose weights were trained or rewritten after converting, is refused).

Directories written by format versions 1 (``model.safetensors``, no manifest
checksum) and 2 (no fingerprint) still restore.

Examples:
    >>> import tempfile, torch, torch.nn as nn, modeopt_masks as mm
    >>> _ = torch.manual_seed(0); net = nn.Sequential(nn.Linear(4, 4))
    >>> net = mm.convert(net, "hard_concrete").eval()
    >>> d = tempfile.mkdtemp(); mm.save(net, d)
    >>> fresh = mm.restore(nn.Sequential(nn.Linear(4, 4)), d).eval()
    >>> x = torch.randn(2, 4); torch.equal(fresh(x), net(x))
    True
    >>> _ = torch.manual_seed(0); base = nn.Sequential(nn.Linear(4, 4))
    >>> m = tempfile.mkdtemp(); mm.save(net, m, base_weights=False)  # the mask alone
    >>> torch.equal(mm.restore(base, m).eval()(x), net(x))
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import _remove_duplicate_names
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .conversion import (
    ModeState,
    _set_history,
    converted_submodules,
    mode_history,
    protect,
    transaction,
    validate_config,
)
from .dynamic import is_dynamic
from .registry import get_mode

STATE_FILE = "modeopt_state.json"
#: the tensor file of format version 1 (version 2 names a content-addressed file)
TENSOR_FILE = "model.safetensors"
FORMAT = "modeopt-masks"
FORMAT_VERSION = 3
_READABLE_VERSIONS = (1, 2, 3)
_TENSOR_NAME = re.compile(r"model\.[0-9a-f]{16}\.safetensors")
_TMP_PREFIX = ".modeopt-"
_SEAL = "state_sha256"
#: entries at each end of a flattened base tensor whose bytes the fingerprint hashes
_SAMPLED = 256


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
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the manifest ---------------------------------------------------------------------------
def _dump(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2, sort_keys=True, allow_nan=False).encode()


def encode_state_document(document: dict[str, Any]) -> bytes:
    """The manifest bytes ``save`` writes for ``document``: canonical JSON, sealed with the
    SHA-256 of the rest (any other byte sequence fails [`load_state_document`][modeopt_masks.persistence.load_state_document]).

    Examples:
        >>> from modeopt_masks.persistence import encode_state_document
        >>> b'"state_sha256"' in encode_state_document({"format": "modeopt-masks"})
        True
    """
    body = {k: v for k, v in document.items() if k != _SEAL}
    return _dump({**body, _SEAL: hashlib.sha256(_dump(body)).hexdigest()})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _parse_document(data: bytes, path: Path) -> dict[str, Any]:
    try:
        document = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, huge ints
        raise StateError(f"{path} is corrupted or truncated: {str(e)[:200]}") from e
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise StateError(f"{path} is not a modeopt-masks state file")
    version = document.get("format_version")
    if version not in _READABLE_VERSIONS or isinstance(version, bool):
        raise StateError(
            f"{path} has format version {version!r:.20}, this library reads {_READABLE_VERSIONS}"
        )
    if version >= 2:
        try:
            canonical = encode_state_document(document)
        except (ValueError, RecursionError):
            canonical = b""
        if canonical != data:
            raise StateError(f"{path} is corrupted or was edited (its checksum does not match)")
    return document


def _tensor_name(document: dict[str, Any], path: Path) -> str:
    if document["format_version"] == 1:
        return TENSOR_FILE
    name = document.get("tensor_file")
    if not isinstance(name, str) or not _TENSOR_NAME.fullmatch(name):
        raise StateError(f"{path} names no valid tensor file (got {name!r:.80})")
    return name


def _read_checkpoint(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], bytes]:
    """The checked manifest and the verified bytes of the tensor file, each read once."""
    root = Path(directory)
    state_path = root / STATE_FILE
    try:
        state_bytes = state_path.read_bytes()
    except OSError as e:
        raise StateError(
            f"{state_path} is missing or unreadable ({e.strerror}): was the directory written "
            "by modeopt_masks.save?"
        ) from e
    document = _parse_document(state_bytes, state_path)
    tensor_path = root / _tensor_name(document, state_path)
    try:
        tensor_bytes = tensor_path.read_bytes()
    except OSError as e:
        raise StateError(
            f"{tensor_path} is missing or unreadable ({e.strerror}): was the directory written "
            "by modeopt_masks.save?"
        ) from e
    if hashlib.sha256(tensor_bytes).hexdigest() != document.get("tensors_sha256"):
        raise StateError(f"{tensor_path} is corrupted or truncated (checksum mismatch)")
    return document, tensor_bytes


def load_state_document(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``modeopt_state.json`` and the tensor file's checksum.

    Examples:
        >>> import tempfile, torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.persistence import load_state_document
        >>> d = tempfile.mkdtemp()
        >>> mm.save(mm.convert(nn.Sequential(nn.Linear(2, 2)), "magnitude_pruning"), d)
        >>> [m["mode"] for m in load_state_document(d)["modes"]]
        ['magnitude_pruning']
    """
    return _read_checkpoint(directory)[0]


# -- the base fingerprint ---------------------------------------------------------------------
def _sample_digest(tensor: torch.Tensor) -> str | None:
    """SHA-256 (16 hex digits) of the bytes of the first and last ``_SAMPLED`` entries.

    Cheap on any model; it tells two checkpoints of one architecture apart, it is
    not a checksum of the whole tensor. ``None`` for a tensor without values (meta).
    """
    if tensor.is_meta:
        return None
    flat = tensor.detach().reshape(-1)
    if flat.numel() > 2 * _SAMPLED:
        flat = torch.cat([flat[:_SAMPLED], flat[-_SAMPLED:]])
    raw = flat.cpu().contiguous().view(torch.uint8)
    return hashlib.sha256(raw.numpy().tobytes()).hexdigest()[:16]


def _fingerprint_of(state: dict[str, torch.Tensor]) -> list[list[Any]]:
    return [[name, list(t.shape), str(t.dtype).removeprefix("torch."), _sample_digest(t)]
            for name, t in state.items()]


def _base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the tensors the modes added: those of the mask modules
    ([`MaskTechnique`][modeopt_masks.masking.MaskTechnique]; gradnas adds no saved tensor).

    Read off the model as it is, without reverting anything: a save never changes the
    model, not even for a moment. A mode that added tensors elsewhere would show up at
    restore as tensors missing from the checkpoint, never as silently dropped ones.
    """
    from .masking import MaskTechnique

    added = {id(t) for m in model.modules() if isinstance(m, MaskTechnique)
             for t in (*m.parameters(), *m.buffers())}
    # by identity: an alias of a mask tensor elsewhere (NeuroSurgeon's weight_mask_params)
    # is the mask too
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if id(v) not in added}


def base_fingerprint(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint records about the base of ``model`` (its modes undone): the class
    and, per tensor, ``[name, shape, dtype, sample digest]``.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.persistence import base_fingerprint
        >>> fp = base_fingerprint(mm.convert(nn.Sequential(nn.Linear(2, 3)), "hard_concrete"))
        >>> fp["model_class"], [t[:3] for t in fp["tensors"]]
        ('Sequential', [['0.weight', [3, 2], 'float32'], ['0.bias', [3], 'float32']])
    """
    return {"model_class": type(model).__qualname__,
            "tensors": _fingerprint_of(_base_state(model))}


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise ValueError(f"a shape is a list of integers, got {value!r:.80}")
    return tuple(value)


def _parse_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise StateError(f"the state file's base fingerprint names an unknown dtype {name!r:.40}")
    return dtype


def _check_consistent(document: dict[str, Any], saved: dict[str, torch.Tensor]) -> None:
    """The manifest's base fingerprint and the tensor file must describe the same tensors."""
    base = document.get("base")
    if base is None:
        return
    try:
        shapes = {str(entry[0]): _shape(entry[1]) for entry in base["tensors"]}
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise StateError(f"the state file's base fingerprint is malformed: {str(e)[:200]}") from e
    for name, tensor in saved.items():
        if name in shapes and tuple(tensor.shape) != shapes[name]:
            raise StateError(
                f"the checkpoint is inconsistent: its state file records {name} as "
                f"{shapes[name]}, its tensor file holds {tuple(tensor.shape)} (files from two "
                "different saves?)")


def _base_problem(model: nn.Module, document: dict[str, Any]) -> str | None:
    """How a fresh ``model`` differs from the saved base fingerprint (names and shapes and,
    for a masks-only checkpoint, the sampled values), in words; ``None``: it fits."""
    base = document.get("base")
    if base is None:
        return None
    try:
        saved = {str(n): (_shape(shape), str(dtype), digest)
                 for n, shape, dtype, digest in base["tensors"]}
        saved_class = str(base["model_class"])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise StateError(f"the state file's base fingerprint is malformed: {str(e)[:200]}") from e
    current = model.state_dict()
    saved_from = f"saved from {saved_class}, this model is {type(model).__qualname__}"
    wrong = [(n, saved[n][0], tuple(current[n].shape)) for n in saved
             if n in current and tuple(current[n].shape) != saved[n][0]]
    missing = [n for n in saved if n not in current]
    extra = [n for n in current if n not in saved]
    if wrong or missing or extra:
        details = []
        if wrong:
            name, was, now = wrong[0]
            details.append(f"first differing shape {name}: saved {was}, model {now}"
                           + (f" ({len(wrong) - 1} more differ)" if len(wrong) > 1 else ""))
        if missing:
            details.append(f"{len(missing)} saved tensors the model lacks "
                           f"{missing[:3]}")
        if extra:
            details.append(f"{len(extra)} model tensors missing from the saved state {extra[:3]}")
        return f"the model does not fit the saved state ({saved_from}): " + "; ".join(details)
    kinds = [n for n in saved if _dtype_kind(current[n].dtype) != _dtype_kind(
        _parse_dtype(saved[n][1]))]
    if kinds:
        n = kinds[0]
        return (f"the model does not fit the saved state ({saved_from}): {n}: saved "
                f"{saved[n][1]}, model {str(current[n].dtype).removeprefix('torch.')}")
    if document.get("base_weights", True):
        return None  # the base weights come from the file: their values do not matter
    other_dtype = [n for n in saved if str(current[n].dtype).removeprefix("torch.") != saved[n][1]]
    if other_dtype:
        n = other_dtype[0]
        warnings.warn(
            f"{len(other_dtype)} base tensors have another dtype than when the masks were saved "
            f"(e.g. {n}: saved {saved[n][1]}, model "
            f"{str(current[n].dtype).removeprefix('torch.')}): their values were not compared",
            stacklevel=3)
    differ = [n for n in saved if n not in other_dtype and saved[n][2] is not None
              and (digest := _sample_digest(current[n])) is not None and digest != saved[n][2]]
    if differ:
        return (
            f"the base model's weights are not the ones these masks were saved with ({saved_from}; "
            f"{len(differ)} tensors differ, first {differ[0]}): load the same pretrained "
            "checkpoint; if the base was trained or rewritten after converting (e.g. sparsegpt "
            "with update_weights=True), save with base_weights=True")
    return None


# -- save -------------------------------------------------------------------------------------
def _tensor_file_bytes(model: nn.Module, skip: AbstractSet[str] = frozenset()) -> bytes:
    """The safetensors bytes of the state dict but ``skip``; a tied tensor is written once."""
    state = {k: v for k, v in model.state_dict().items() if k not in skip}
    metadata: dict[str, str] = {}
    for kept, removed in _remove_duplicate_names(state).items():
        for name in removed:
            metadata[name] = kept
            del state[name]
    # metadata=None when empty: safetensors writes an unreadable header for ({}, {})
    return save_safetensors({k: v.contiguous() for k, v in state.items()},
                            metadata=metadata or None)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_file(directory: Path, name: str, data: bytes) -> None:
    """Write ``data`` to a fresh temporary file, flush it to disk, rename it to ``name``."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_TMP_PREFIX, suffix=".tmp")
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, 0o666 & ~_umask())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, directory / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _current_tensor_file(directory: Path) -> str | None:
    """The tensor file the checkpoint now in ``directory`` uses (``None``: no valid one)."""
    try:
        document, _ = _read_checkpoint(directory)
        return _tensor_name(document, directory / STATE_FILE)
    except StateError:
        return None


def _check_saveable(model: nn.Module) -> None:
    from .structured.structure import sliced_by_export

    nested = converted_submodules(model)
    if nested:
        raise ValueError(
            f"submodule(s) {nested[:10]} were converted on their own and carry their own mode "
            "history, which a save of the whole model cannot replay: save the converted "
            "submodule itself (mm.save(model.<name>, ...)), or convert the whole model"
        )
    sliced = sliced_by_export(model)
    if sliced and not mode_history(model):
        raise ValueError(
            f"this model was physically pruned by a gradnas export ({len(sliced)} structures "
            "sliced) and carries no mode to save; mm.restore would replay nothing onto the "
            "original shapes: save before export, or save the exported model with "
            "save_pretrained (uniform exports reload with from_pretrained) or torch.save"
        )
    if sliced:
        warnings.warn(
            "saving modes applied after a gradnas export: restore this checkpoint into the "
            "exported architecture (e.g. its save_pretrained folder), not the original model",
            stacklevel=3)
    if not mode_history(model):
        stray = [n or "<root>" for n, m in model.named_modules() if is_dynamic(m)]
        if stray:
            raise ValueError(f"modules {stray[:10]} are converted but the model has no mode "
                             "history (a broken conversion?); unconvert or re-convert it")


def _check_masks_only(model: nn.Module) -> None:
    history = mode_history(model)
    if not history:
        raise ValueError("base_weights=False saves what the modes added, and this model has no "
                         "modes: convert it first, or save it with base_weights=True")
    # a mode that rewrites the base weights it keeps (sparsegpt's update_weights) makes the
    # base in memory differ from every fresh one: a masks-only checkpoint could not restore it
    rewriting = [s.mode for s in history if getattr(s.config, "update_weights", False)]
    if rewriting:
        raise ValueError(f"{rewriting[0]} with update_weights=True rewrote the base weights it "
                         "kept: a masks-only checkpoint would restore its masks over the "
                         "original weights; save with base_weights=True, or convert with "
                         "update_weights=False")


def save(model: nn.Module, directory: str | os.PathLike[str], *,
         base_weights: bool = True) -> None:
    """Write the model's mode history and tensors to ``directory`` (created if needed).

    ``base_weights=False`` writes only the tensors the modes added (a masks-only
    checkpoint): restore it onto a fresh copy of the same base, e.g. the same
    ``from_pretrained`` checkpoint. Saving over an earlier checkpoint replaces it all at
    once (see the module docstring).

    Args:
        model: A converted (or plain) model.
        directory: Where to write (created if needed).
        base_weights: Also write the base model's tensors (``False``: masks-only).

    Examples:
        >>> import os, tempfile, torch.nn as nn, modeopt_masks as mm
        >>> d = tempfile.mkdtemp()
        >>> mm.save(mm.convert(nn.Sequential(nn.Linear(2, 2)), "magnitude_pruning"), d)
        >>> [name.split(".")[-1] for name in sorted(os.listdir(d))]
        ['safetensors', 'json']
    """
    _check_saveable(model)
    if not base_weights:
        _check_masks_only(model)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    history = mode_history(model)
    for state in history:
        state.descriptor.update_metadata(model, state.config, state.metadata)
    base = _base_state(model)
    tensor_bytes = _tensor_file_bytes(model, set() if base_weights else set(base))
    digest = hashlib.sha256(tensor_bytes).hexdigest()
    tensor_name = f"model.{digest[:16]}.safetensors"
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_class": type(model).__qualname__,
        "base": {"model_class": type(model).__qualname__, "tensors": _fingerprint_of(base)},
        "base_weights": base_weights,
        "modes": [
            {"mode": s.mode, "config": s.config.to_dict(), "metadata": s.metadata} for s in history
        ],
        "tensor_file": tensor_name,
        "tensors_sha256": digest,
    }
    try:
        state_bytes = encode_state_document(document)
    except ValueError as e:
        raise ValueError(f"the mode state cannot be saved: {e} (a NaN or infinite setting?)") from e
    previous = _current_tensor_file(out)
    committed = False
    try:
        _write_file(out, tensor_name, tensor_bytes)
        _write_file(out, STATE_FILE, state_bytes)  # the commit point
        committed = True
        _fsync_directory(out)
    finally:
        if not committed and tensor_name != previous:
            (out / tensor_name).unlink(missing_ok=True)
    if previous is not None and previous != tensor_name:
        (out / previous).unlink(missing_ok=True)


# -- restore ----------------------------------------------------------------------------------
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
        except Exception as e:  # noqa: BLE001 - whatever a tampered entry raises is a StateError
            what = f"missing key {e}" if isinstance(e, KeyError) else str(e)[:500]
            raise StateError(f"mode entry {i} of the state file is invalid: {what}") from e
        parsed.append((name, config, metadata))
    return parsed


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "float" if dtype.is_floating_point else "integer"


def _check_tensors(model: nn.Module, saved: dict[str, torch.Tensor],
                   skip: AbstractSet[str] = frozenset(), saved_class: str | None = None) -> None:
    """Names, shapes and dtype kinds, all checked before one value is written (``skip``:
    tensors the file need not hold, the base of a masks-only checkpoint)."""
    expected = {k: v for k, v in model.state_dict(keep_vars=True).items() if k not in skip}
    unexpected = sorted(set(saved) - set(expected))
    common = [k for k in expected if k in saved]  # the model's order: a stable "first"
    wrong = [k for k in common if tuple(expected[k].shape) != tuple(saved[k].shape)]
    kinds = [k for k in common if _dtype_kind(expected[k].dtype) != _dtype_kind(saved[k].dtype)]
    # a tied (shared) tensor is in the file once: a name absent from the file is fine
    # when it shares storage with one that is there
    loaded = {expected[k].untyped_storage().data_ptr() for k in common}
    missing = sorted(
        k for k in expected
        if k not in saved and expected[k].untyped_storage().data_ptr() not in loaded
    )
    if unexpected or wrong or missing or kinds:
        details = []
        if wrong:
            k = wrong[0]
            details.append(f"first differing shape {k}: saved {tuple(saved[k].shape)}, model "
                           f"{tuple(expected[k].shape)}"
                           + (f" ({len(wrong) - 1} more differ)" if len(wrong) > 1 else ""))
        details += [f"{len(unexpected)} unexpected tensors {unexpected[:5]}"] if unexpected else []
        details += [f"{len(missing)} missing tensors {missing[:5]}"] if missing else []
        details += [f"{k}: saved {saved[k].dtype}, model {expected[k].dtype}" for k in kinds[:3]]
        origin = (f" (saved from {saved_class}, this model is {type(model).__qualname__})"
                  if saved_class else "")
        raise StateError(f"the model does not fit the saved state{origin}: " + "; ".join(details))


def _load_tensors(model: nn.Module, saved: dict[str, torch.Tensor],
                  skip: AbstractSet[str] = frozenset(), saved_class: str | None = None) -> None:
    _check_tensors(model, saved, skip, saved_class)
    current = model.state_dict(keep_vars=True)
    for name in saved:
        protect(current[name])
    model.load_state_dict(saved, strict=False)


def restore(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Replay the saved modes on ``model`` (a fresh model of the same architecture), load tensors.

    Raises [`StateError`][modeopt_masks.persistence.StateError] (the model unchanged) if the files are corrupted
    or the model does not fit.

    Args:
        model: A fresh model of the saved architecture.
        directory: A directory written by [`save`][modeopt_masks.persistence.save].

    Returns:
        ``model``, converted and loaded.

    Raises:
        StateError: When the files are corrupted or the model does not fit.

    Examples:
        >>> import tempfile, torch.nn as nn, modeopt_masks as mm
        >>> d = tempfile.mkdtemp()
        >>> mm.save(mm.convert(nn.Sequential(nn.Linear(2, 2)), "hard_concrete"), d)
        >>> [s.mode for s in mm.mode_history(mm.restore(nn.Sequential(nn.Linear(2, 2)), d))]
        ['hard_concrete']
    """
    document, tensor_bytes = _read_checkpoint(directory)
    entries = _parse_modes(document)
    try:
        saved = load_safetensors(tensor_bytes)
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends
        raise StateError(f"the tensor file is not a valid safetensors file: {str(e)[:200]}") from e
    del tensor_bytes
    _check_consistent(document, saved)
    if mode_history(model) or converted_submodules(model):
        raise StateError("restore needs a model without modes; this one is already converted")
    # read before anything changes; reported after the modes are replayed (in the
    # transaction), so a mode's own words on what does not fit come with it
    problem = _base_problem(model, document)
    saved_class = document.get("model_class")
    base = set() if document.get("base_weights", True) else set(model.state_dict())
    with transaction(model):
        history: list[ModeState] = []
        for name, config, metadata in entries:
            try:
                model = get_mode(name).restore(model, config, metadata)
            except StateError:
                raise
            except Exception as e:  # noqa: BLE001 - a checkpoint that does not fit
                if problem:
                    raise StateError(f"{problem}; replaying {name}: {e}") from e
                raise StateError(f"the model does not fit the saved state (saved from "
                                 f"{saved_class}): {e}") from e
            history.append(ModeState(name, config, metadata))
            _set_history(model, history)
        if problem:
            raise StateError(problem)
        try:
            _load_tensors(model, saved, base, saved_class)
        except StateError:
            raise
        except Exception as e:  # noqa: BLE001
            raise StateError(f"the model does not fit the saved state: {e}") from e
    return model
