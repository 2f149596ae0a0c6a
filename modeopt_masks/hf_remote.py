"""Save a pruned Hugging Face model whose layers differ, loadable without this library.

When the exported model's shapes are not what its (updated) config builds, e.g. a
different number of heads or MLP channels in every layer, [`save_pretrained`][modeopt_masks.hf_remote.save_pretrained] writes
into ``config.json`` a structure record ([`structure_record`][modeopt_masks.hf_remote.structure_record]): for every module whose
parameter shapes or plain attributes differ from a stock model built from the config, its
new shapes and the changed attributes. Beside it goes ``modeling_modeopt_pruned.py`` (from
the template [`modeopt_masks.hf_remote_modeling`][modeopt_masks.hf_remote_modeling], torch and transformers only), with a
``Pruned<Architecture>`` subclass per saved class, referenced by ``config.json``'s
``auto_map``: ``AutoModel*.from_pretrained(folder, trust_remote_code=True)`` rebuilds the
model anywhere. When the config describes the model exactly (a uniform export), the record
is empty and the folder is a plain one that stock ``from_pretrained`` loads.

``mm.export`` of a gradnas model installs [`save_pretrained`][modeopt_masks.hf_remote.save_pretrained] as the model's own
``save_pretrained`` ([`attach`][modeopt_masks.hf_remote.attach]), so ``model.save_pretrained(dir)`` (and a ``Trainer``
saving it) writes the record when it is needed.

Examples:
    >>> import tempfile, json, transformers as tf, modeopt_masks as mm
    >>> from modeopt_masks.structured import gradnas_hparams
    >>> cfg = tf.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=8, bos_token_id=0,
    ...                     eos_token_id=0)
    >>> m = mm.convert(tf.GPT2LMHeadModel(cfg), ("gradnas", {"hf.attention": None}))
    >>> gradnas_hparams(m)["transformer.h.0.mlp"].keep(list(range(8)))  # layer 1 keeps 64
    >>> m = mm.export(m)
    >>> d = tempfile.mkdtemp(); m.save_pretrained(d)
    >>> saved = json.load(open(f"{d}/config.json"))
    >>> saved["auto_map"]["AutoModelForCausalLM"]
    'modeling_modeopt_pruned.PrunedGPT2LMHeadModel'
    >>> saved["modeopt_structure"]["modules"]["transformer.h.0.mlp.c_fc"]
    {'attrs': {'nf': 8}, 'shapes': {'bias': [8], 'weight': [16, 8]}}
"""

from __future__ import annotations

import copy
import os
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import hf_remote_modeling
from .hf_remote_modeling import STRUCTURE_FORMAT, STRUCTURE_KEY

#: the modeling file written beside the weights (referenced by ``auto_map``)
MODELING_FILE = "modeling_modeopt_pruned.py"
_MODELING_MODULE = MODELING_FILE.removesuffix(".py")
_PLAIN = (type(None), bool, int, float, str)


def structure_record(model: nn.Module) -> dict[str, Any]:
    """``{"format", "modules": {name: {"shapes", "attrs", "config"}}}``: what differs between
    ``model`` and a stock model of its class built from ``model.config`` (on the meta
    device); ``modules`` is empty when the config describes the model exactly.

    Raises ``ValueError`` when the difference is not a matter of shapes and attributes
    (modules added, removed or of another class; a converted, unexported model).

    Examples:
        >>> import transformers as tf
        >>> from modeopt_masks.hf_remote import structure_record
        >>> m = tf.LlamaModel(tf.LlamaConfig(vocab_size=8, hidden_size=16, num_hidden_layers=1,
        ...                                  num_attention_heads=2, intermediate_size=8))
        >>> structure_record(m)["modules"]
        {}
    """
    from .conversion import mode_history

    if mode_history(model):
        raise ValueError("structure_record: the model still has modes "
                         f"({[s.mode for s in mode_history(model)]}); mm.export it first")
    return _record(model)


def base_structure_record(model: nn.Module) -> dict[str, Any]:
    """[`structure_record`][modeopt_masks.hf_remote.structure_record] of ``model``'s base: the
    mask modules a mode added (and their tensors) are left out, so a per-layer export that
    was converted again (e.g. ``"hard_concrete"``) records the shapes its folder must be
    built with before the modes are restored. Raises ``ValueError`` like it.

    Examples:
        >>> import transformers as tf, modeopt_masks as mm
        >>> from modeopt_masks.hf_remote import base_structure_record
        >>> m = tf.LlamaModel(tf.LlamaConfig(vocab_size=8, hidden_size=16, num_hidden_layers=1,
        ...                                  num_attention_heads=2, intermediate_size=8))
        >>> base_structure_record(mm.convert(m, "hard_concrete"))["modules"]
        {}
    """
    from .masking import MaskTechnique

    masks = [name for name, m in model.named_modules() if isinstance(m, MaskTechnique)]
    return _record(model, skip=tuple(masks))


def _record(model: nn.Module, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The record, leaving out the modules named in ``skip`` and everything below them."""
    from .masking import MaskTechnique

    reference = _stock_model(model)
    ours = {n: m for n, m in model.named_modules()
            if not any(n == s or n.startswith(s + ".") for s in skip)}
    theirs = dict(reference.named_modules())
    masks = {id(t) for m in model.modules() if isinstance(m, MaskTechnique)
             for t in (*m.parameters(), *m.buffers())} if skip else set()
    missing = [n for n in theirs if n not in ours]
    extra = [n for n in ours if n not in theirs]
    if missing or extra:
        raise ValueError(
            f"{type(model).__name__} differs from the model its config builds by whole "
            f"modules (missing: {missing[:5]}, extra: {extra[:5]}); only per-module shapes and "
            "attributes can be recorded (update the config, e.g. num_hidden_layers)")
    modules: dict[str, dict[str, Any]] = {}
    for name, module in ours.items():
        ref = theirs[name]
        # a mask mode's host class is a subclass of the stock one (e.g. MaskedLayerLinear)
        if type(module).__name__ != type(ref).__name__ and not (skip and isinstance(module,
                                                                                    type(ref))):
            raise ValueError(f"{name} is a {type(module).__name__}, the config builds a "
                             f"{type(ref).__name__} there; only shapes and attributes can be "
                             "recorded")
        entry = {key: value for key, value in (
            ("shapes", _shape_changes(name, module, ref, masks)),
            ("attrs", _attr_changes(module, ref)),
            ("config", _config_changes(module, ref, model))) if value}
        if entry:
            modules[name] = entry
    if not any("shapes" in entry for entry in modules.values()):
        # same shapes: the config describes the model (an attribute-only difference is a
        # size no forward reads, e.g. LlamaMLP.intermediate_size after a uniform export)
        modules = {}
    return {"format": STRUCTURE_FORMAT, "modules": modules}


def _stock_model(model: nn.Module) -> nn.Module:
    """The stock transformers class of ``model`` built from its config, on the meta device."""
    cls = _stock_class(model)
    config = copy.deepcopy(model.config)
    for key in (STRUCTURE_KEY, "auto_map"):  # a reloaded pruned model: compare to the stock one
        config.__dict__.pop(key, None)
    with torch.device("meta"):
        return cls(config)


def _shape_changes(name: str, module: nn.Module, ref: nn.Module,
                   masks: set[int] | frozenset[int] = frozenset()) -> dict[str, list[int]]:
    """Per tensor of ``module``, its shape where ``ref``'s differs; tensors whose ``id`` is
    in ``masks`` (a mode's, aliased on the host module) are left out."""
    out: dict[str, list[int]] = {}
    for kind, ours, theirs in (("parameter", module._parameters, ref._parameters),
                               ("buffer", module._buffers, ref._buffers)):
        for key in {**ours, **theirs}:
            a, b = ours.get(key), theirs.get(key)
            if a is not None and b is None and id(a) in masks:
                continue
            if (a is None) != (b is None):
                raise ValueError(f"{name}.{key}: {kind} present in only one of the exported "
                                 "model and the model its config builds")
            if a is None or b is None or a.shape == b.shape:
                continue
            if kind == "buffer" and key in module._non_persistent_buffers_set:
                raise ValueError(f"{name}.{key}: non-persistent buffer of shape "
                                 f"{tuple(a.shape)} (config builds {tuple(b.shape)}) is not "
                                 "saved with the weights; it cannot be rebuilt on load")
            out[key] = list(a.shape)
    return out


def _plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(isinstance(v, _PLAIN) for v in value)
    return isinstance(value, _PLAIN)


def _attr_changes(module: nn.Module, ref: nn.Module) -> dict[str, Any]:
    theirs = vars(ref)
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in vars(module).items()
            if not key.startswith("_") and key != "training" and _plain(value)
            and key in theirs and theirs[key] != value}


def _config_changes(module: nn.Module, ref: nn.Module, root: nn.Module) -> dict[str, Any]:
    """A module's own config copy (gradnas gives one to layers that read sizes from it)."""
    config: Any = getattr(module, "config", None)
    ref_config: Any = getattr(ref, "config", None)
    if module is root or config is None or config is getattr(root, "config", None) \
            or not hasattr(config, "to_dict") or not hasattr(ref_config, "to_dict"):
        return {}
    theirs = ref_config.to_dict()
    return {key: value for key, value in config.to_dict().items()
            if key not in (STRUCTURE_KEY, "auto_map") and _plain(value)
            and theirs.get(key) != value}


def auto_classes(model: nn.Module) -> list[str]:
    """The ``transformers`` Auto classes that map ``model``'s config to ``model``'s class
    (``auto_map`` keys), e.g. ``["AutoModelForCausalLM"]`` for ``LlamaForCausalLM``.

    Examples:
        >>> import transformers as tf
        >>> from modeopt_masks.hf_remote import auto_classes
        >>> auto_classes(tf.GPT2Model(tf.GPT2Config(n_embd=8, n_layer=1, n_head=2)))
        ['AutoModel']
    """
    from transformers.models.auto import modeling_auto

    cls_name = _stock_class_name(model)
    model_type = getattr(model.config, "model_type", None)
    found = []
    for auto in dir(modeling_auto):
        mapping = getattr(getattr(getattr(modeling_auto, auto), "_model_mapping", None),
                          "_model_mapping", None)
        if auto.startswith("AutoModel") and isinstance(mapping, dict):
            names = mapping.get(model_type)
            if names == cls_name or (isinstance(names, (tuple, list)) and cls_name in names):
                found.append(auto)
    return found or ["AutoModel"]


def _stock_class(model: nn.Module) -> type:
    """The first class of ``model``'s MRO defined in transformers (a reloaded
    ``Pruned<X>`` model: ``X``)."""
    cls = next((c for c in type(model).__mro__ if c.__module__.startswith("transformers.")
                and c.__module__ != "transformers.modeling_utils"), None)
    if cls is None or getattr(model, "config", None) is None:
        raise ValueError(f"{type(model).__name__} is not a transformers model with a config")
    return cls


def _stock_class_name(model: nn.Module) -> str:
    return _stock_class(model).__name__


def modeling_source(class_names: list[str]) -> str:
    """The text of ``modeling_modeopt_pruned.py``: the template plus one
    ``Pruned<name>`` class per transformers class in ``class_names``.

    Examples:
        >>> from modeopt_masks.hf_remote import modeling_source
        >>> src = modeling_source(["LlamaForCausalLM"])
        >>> "class PrunedLlamaForCausalLM(PrunedStructure, transformers.LlamaForCausalLM)" in src
        True
        >>> import ast  # what the file imports: transformers and torch, never this library
        >>> sorted({(n.module if isinstance(n, ast.ImportFrom) else n.names[0].name).split(".")[0]
        ...         for n in ast.walk(ast.parse(src)) if isinstance(n, (ast.Import, ast.ImportFrom))})
        ['__future__', 'copy', 'torch', 'transformers', 'typing']
    """
    text = Path(hf_remote_modeling.__file__).read_text() + "\nimport transformers  # noqa: E402\n"
    for name in class_names:
        text += (f"\n\nclass Pruned{name}(PrunedStructure, transformers.{name}):\n"
                 f'    """``transformers.{name}`` with the per-module shapes of '
                 f'``config.{STRUCTURE_KEY}``."""\n')
    return text


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike[str], *args: Any,
                    force_remote_code: bool = False, **kwargs: Any) -> Any:
    """``model.save_pretrained(save_directory, ...)``, plus, when the config cannot describe
    the model (or ``force_remote_code``), the structure record in ``config.json``, the
    modeling file and ``auto_map``; ``model.config`` is left as it was. A model converted
    again after its export (modes in its history) is saved by the class's ``save_pretrained``
    (see [`modeopt_masks.hf_checkpointing`][modeopt_masks.hf_checkpointing]) with the record of its base
    ([`base_structure_record`][modeopt_masks.hf_remote.base_structure_record]), so loading builds the per-layer shapes before
    restoring the modes; a conversion the record cannot describe raises ``ValueError``
    before anything is written, pointing to ``mm.save`` / ``mm.restore``.

    Examples:
        >>> import tempfile, os, transformers as tf
        >>> from modeopt_masks.hf_remote import save_pretrained
        >>> m = tf.GPT2Model(tf.GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=8))
        >>> d = tempfile.mkdtemp(); _ = save_pretrained(m, d)  # nothing pruned: plain folder
        >>> os.path.exists(os.path.join(d, "modeling_modeopt_pruned.py"))
        False
    """
    from .conversion import mode_history
    from .model_card import export_record

    save = _class_save_pretrained(model)
    if mode_history(model):  # converted again after export: the library-aware checkpoint route
        if not _base_shapes_differ(model):  # the config builds the base: a plain checkpoint
            return save(model, save_directory, *args, **kwargs)
        try:  # the folder must still say how to build the per-layer shapes
            record = base_structure_record(model)
        except ValueError as e:
            modes = [s.mode for s in mode_history(model)]
            raise ValueError(
                f"save_pretrained: this per-layer export was converted again ({modes}) in a "
                f"way its folder cannot describe ({e}); save it with mm.save(model, path) and "
                "restore it with mm.restore(export, path) onto the export reloaded (e.g. "
                "saved before converting, loaded with trust_remote_code=True)") from e
        if not record["modules"]:
            return save(model, save_directory, *args, **kwargs)
    else:
        record = structure_record(model)
    folder = Path(save_directory)
    stale = folder / MODELING_FILE
    remote = bool(record["modules"]) or force_remote_code
    card = export_record(model)
    if card is not None:  # the model card (README.md) says how to load the folder
        card["remote_code"] = remote
    if not remote:
        result = save(model, save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            stale.unlink(missing_ok=True)  # a plain model over an old pruned folder
        return result
    config: Any = model.config
    class_name = _stock_class_name(model)
    previous = {key: config.__dict__[key] for key in (STRUCTURE_KEY, "auto_map")
                if key in config.__dict__}
    config.__dict__[STRUCTURE_KEY] = record
    config.__dict__["auto_map"] = {auto: f"{_MODELING_MODULE}.Pruned{class_name}"
                                   for auto in auto_classes(model)}
    try:
        result = save(model, save_directory, *args, **kwargs)
    finally:
        for key in (STRUCTURE_KEY, "auto_map"):
            config.__dict__.pop(key, None)
        config.__dict__.update(previous)
    if kwargs.get("is_main_process", True):
        tmp = stale.with_suffix(".tmp")
        tmp.write_text(modeling_source([class_name]))
        tmp.replace(stale)
    return result


def _base_shapes_differ(model: nn.Module) -> bool:
    """Whether the base tensors of converted ``model`` (its modes' left out) are not what
    its config builds."""
    from .persistence import _base_state

    stock = {k: v.shape for k, v in _stock_model(model).state_dict().items()}
    return any(stock.get(k) != v.shape for k, v in _base_state(model).items())


def _class_save_pretrained(model: nn.Module) -> Any:
    save = getattr(type(model), "save_pretrained", None)
    if save is None:
        raise ValueError(f"{type(model).__name__} has no save_pretrained (not a transformers "
                         "model)")
    return save


def attach(model: nn.Module) -> nn.Module:
    """Make ``model.save_pretrained`` this module's [`save_pretrained`][modeopt_masks.hf_remote.save_pretrained] (an instance
    attribute, so deep copies keep it); a model without ``save_pretrained`` is left alone.

    Examples:
        >>> import transformers as tf
        >>> from modeopt_masks.hf_remote import attach
        >>> m = attach(tf.GPT2Model(tf.GPT2Config(n_embd=8, n_layer=1, n_head=2)))
        >>> m.save_pretrained.__func__.__module__
        'modeopt_masks.hf_remote'
    """
    if callable(getattr(type(model), "save_pretrained", None)) and hasattr(model, "config"):
        model.__dict__["save_pretrained"] = types.MethodType(save_pretrained, model)
    return model
