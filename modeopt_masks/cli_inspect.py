"""The ``inspect`` command: what a checkpoint or an exported folder holds, read from its files.

[`describe`][modeopt_masks.cli_inspect.describe] reads an ``mm.save`` checkpoint (``modeopt_state.json``: the model
class and the modes with their configs) or a ``save_pretrained`` folder
(``config.json``, the modes in ``modeopt_masks_state.json`` if any, the ``report.json``
a ``prune`` run wrote), and the tensor shapes and parameter count from the safetensors
headers (no tensor is loaded). [`render`][modeopt_masks.cli_inspect.render] prints it compactly: tensors whose names
differ only by a layer index share a line.

Examples:
    >>> import tempfile, torch.nn as nn, modeopt_masks as mm
    >>> from modeopt_masks.cli_inspect import describe
    >>> d = tempfile.mkdtemp()
    >>> mm.save(mm.convert(nn.Sequential(nn.Linear(4, 4)), "magnitude_pruning"), d)
    >>> info = describe(d)
    >>> info["kind"], [m["mode"] for m in info["modes"]], info["params"]
    ('mm.save checkpoint', ['magnitude_pruning'], 20)
    >>> info["mask_tensors"]  # the magnitude mask of the weight
    1
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .cli import CLIError
from .summary import layer_template

#: ``config.json`` fields worth showing (those that exist in the file)
CONFIG_FIELDS = ("model_type", "architectures", "vocab_size", "hidden_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
                 "n_embd", "n_layer", "n_head", "n_inner", "torch_dtype", "dtype")
_MASK_WORDS = ("mask", "log_alpha")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CLIError(f"cannot read {str(path)!r}: {str(e).splitlines()[0][:200]}") from e


def tensor_shapes(folder: Path) -> dict[str, list[int]]:
    """``{tensor name: shape}`` from the headers of every ``*.safetensors`` file in ``folder``."""
    from safetensors import safe_open

    shapes: dict[str, list[int]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), "pt") as fh:
                for key in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                    shapes[key] = list(fh.get_slice(key).get_shape())
        except Exception as e:  # noqa: BLE001 - SafetensorError and friends
            raise CLIError(f"{str(file)!r} is not a readable safetensors file: "
                           f"{str(e).splitlines()[0][:200]}") from e
    return shapes


def _numel(shape: list[int]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def _modes(document: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for entry in document.get("modes") or []:
        if not isinstance(entry, dict):
            continue
        meta = entry.get("metadata") or {}
        config = entry.get("config") or {}
        out.append({"mode": entry.get("mode"), "config": config,
                    "metadata_keys": sorted(meta) if isinstance(meta, dict) else []})
    return out


def describe(directory: str) -> dict[str, Any]:
    """What ``directory`` holds (see the module docstring); ``CLIError`` if it is neither."""
    folder = Path(directory)
    if not folder.exists():
        raise CLIError(f"{directory!r} does not exist")
    if not folder.is_dir():
        raise CLIError(f"{directory!r} is not a directory")
    info: dict[str, Any] = {"directory": str(folder)}
    if (folder / "modeopt_state.json").is_file():
        doc = _read_json(folder / "modeopt_state.json")
        info.update(kind="mm.save checkpoint", model_class=doc.get("model_class"),
                    modes=_modes(doc))
    elif (folder / "config.json").is_file():
        config = _read_json(folder / "config.json")
        info.update(kind="save_pretrained folder",
                    config={k: config[k] for k in CONFIG_FIELDS if k in config}, modes=[])
        if (folder / "modeopt_masks_state.json").is_file():
            info["modes"] = _modes(_read_json(folder / "modeopt_masks_state.json"))
        if (folder / "report.json").is_file():
            report = _read_json(folder / "report.json")
            info["report"] = {k: report[k] for k in (
                "model", "target", "params_before", "params_after", "perplexity_before",
                "perplexity_after", "perplexity_after_recovery", "stock_from_pretrained")
                if k in report}
        info["model_card"] = (folder / "README.md").is_file()
    else:
        raise CLIError(f"{directory!r} is neither an mm.save checkpoint (modeopt_state.json) "
                       "nor a save_pretrained folder (config.json)")
    shapes = tensor_shapes(folder)
    if not shapes:
        raise CLIError(f"{directory!r} has no *.safetensors weights")
    masks = {k for k in shapes if any(w in part for part in k.split(".")[-2:] for w in _MASK_WORDS)}
    info["params"] = sum(_numel(s) for k, s in shapes.items() if k not in masks)
    info["mask_tensors"] = len(masks)
    info["tensors"] = shapes
    return info


def shape_rows(shapes: dict[str, list[int]], max_rows: int = 40) -> list[str]:
    """One line per tensor template (``layers.*.…``): its layer count and distinct shapes.

    Examples:
        >>> from modeopt_masks.cli_inspect import shape_rows
        >>> shape_rows({"l.0.w": [4, 2], "l.1.w": [3, 2], "head": [2]})
        ['  l.*.w  [2 layers]  4x2 3x2', '  head  2']
    """
    groups: dict[str, list[str]] = {}
    for name, shape in shapes.items():
        groups.setdefault(layer_template(name), []).append("x".join(map(str, shape)) or "scalar")
    rows = []
    for template, dims in list(groups.items())[:max_rows]:
        distinct = list(dict.fromkeys(dims))
        text = " ".join(distinct if len(distinct) <= 8 else [*distinct[:8], "..."])
        label = f"  [{len(dims)} layers]" if len(dims) > 1 else ""
        rows.append(f"  {template}{label}  {text}")
    if len(groups) > max_rows:
        rows.append(f"  ... {len(groups) - max_rows} more")
    return rows


def render(info: dict[str, Any]) -> str:
    """The description as text."""
    lines = [f"{info['directory']}: {info['kind']}"]
    if info.get("model_class"):
        lines.append(f"  model class: {info['model_class']}")
    for key, value in (info.get("config") or {}).items():
        lines.append(f"  {key}: {value}")
    lines.append(f"  params: {info['params']:,}"
                 + (f" (+{info['mask_tensors']} mask tensors)" if info["mask_tensors"] else ""))
    modes = info.get("modes") or []
    lines.append("  modes: " + (", ".join(str(m["mode"]) for m in modes) if modes else
                                "none (plain weights)"))
    for m in modes:
        keys = ", ".join(sorted(m["config"])) or "defaults"
        lines.append(f"    {m['mode']}: config {keys}; metadata {', '.join(m['metadata_keys'])}")
    for key, value in (info.get("report") or {}).items():
        lines.append(f"  report {key}: {value}")
    lines.append("  tensors:")
    lines += shape_rows(info["tensors"])
    return "\n".join(lines)
