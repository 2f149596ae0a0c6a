"""``prune``: convert a model with a structured mode, search a subnetwork, apply it.

``prune(model, "gradnas", constraints={"params": "70%"}, dummy_input=batch,
config={"data_loader": dl})`` converts the model (if it is not already a
gradnas model), scores heads and channels, searches the largest subnetwork
that meets the constraints, keeps it (units masked) and returns
``(model, SearchResult)``. ``mm.export(model)`` then slices the weights; until
then ``mm.save`` / ``mm.restore`` replay the conversion and the selection.
Save before exporting: an exported Hugging Face model keeps its original
``config`` (one head count for all layers), so its ``save_pretrained`` folder
does not reload with ``from_pretrained`` (size mismatch); rebuild it with
``mm.export(mm.restore(fresh_original_model, dir))`` instead.

``("gradnas", {"axes": ["heads", "mlp", "hidden", "depth"]})`` also searches the hidden
size and the number of blocks of a Hugging Face transformer, jointly under the one target
(see ``docs/llm_pruning.md`` and [`modeopt_masks.searchers.joint`][modeopt_masks.searchers.joint]).

``config`` mixes the mode's rule config (type keys such as ``"hf.attention"``)
and the searcher's options (``data_loader``, ``loss_func``, ...); each key goes
where it belongs, and an unknown key names both sets of valid keys.

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> from modeopt_masks.pruning import prune
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1))
    >>> data = [(torch.randn(16, 8),) for _ in range(2)]
    >>> net, res = prune(net, "gradnas", constraints={"params": "70%"}, config={
    ...     "data_loader": data, "loss_func": lambda out, b: out.pow(2).mean(), "progress": False})
    >>> res.constraints["params"]["ratio"] <= 0.70
    True
    >>> net = mm.export(net); net[0].out_features == res.selection["0"]
    True
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch.nn as nn

from .conversion import _set_history, _undo, convert, mode_history, normalise_modes, validate_config
from .registry import available_modes, get_mode
from .searchers import BaseSearcher, SearchResult, get_searcher
from .structured.hparam import gradnas_hparams


def _split_config(mode: str, config: Mapping[str, Any], searcher: BaseSearcher
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    cls = get_mode(mode).config_class
    mode_keys = set(cls.layer_keys) | set(cls.option_names())
    mode_cfg, search_cfg = {}, {}
    for key, value in config.items():
        if key in mode_keys:
            mode_cfg[key] = value
        elif key in searcher.default_config:
            search_cfg[key] = value
        else:
            raise ValueError(
                f"prune: unknown config key {key!r}; mode {mode!r} keys: {sorted(mode_keys)}; "
                f"{type(searcher).__name__} keys: {sorted(searcher.default_config)}"
            )
    return mode_cfg, search_cfg


def prune(
    model: nn.Module,
    mode: str | tuple[str, Any] = "gradnas",
    constraints: Mapping[str, Any] | None = None,
    dummy_input: Any = None,
    config: Mapping[str, Any] | None = None,
    searcher: str | BaseSearcher | None = None,
) -> tuple[nn.Module, SearchResult]:
    """Search a subnetwork of ``model`` that meets ``constraints``; return ``(model, result)``.

    The ``"gradient_binary"`` searcher (default for gradnas) needs ``config["data_loader"]``,
    ``"binary"`` needs ``config["score_func"]``. On error the model is left as it was.

    Args:
        model: The model to prune (converted in place).
        mode: A structured mode name, or ``(mode, config)``; default ``"gradnas"``.
        constraints: Targets, e.g. ``{"params": "70%"}`` or ``{"flops": 1e9}`` (a number or a
            percentage of the original).
        dummy_input: A model input; needed for FLOPs constraints.
        config: Searcher options (``data_loader``, ``loss_func``, ``score_func``...).
        searcher: ``"gradient_binary"``, ``"binary"`` or a searcher instance; default by mode.

    Returns:
        ``(model, result)``: the converted model set to the chosen subnetwork, and the
        [`SearchResult`][modeopt_masks.searchers.base.SearchResult].

    Raises:
        ValueError: For an unknown constraint, an unreachable target or missing searcher options.
    """
    ((name, mode_given),) = normalise_modes(mode)
    desc = get_mode(name)
    if desc.search_algorithm is None:
        raise ValueError(
            f"mode {name!r} has no searcher; searchable modes: "
            f"{[m for m in available_modes() if get_mode(m).search_algorithm]}"
        )
    search = get_searcher(searcher or desc.search_algorithm)
    mode_cfg, search_cfg = _split_config(name, dict(config or {}), search)
    if mode_given is not None:
        if mode_cfg:
            raise ValueError("give the mode's rules either in mode=(name, rules) or in config, not both")
        mode_cfg = dict(validate_config(name, mode_given).to_dict())
    search_cfg = search.sanitize_config(search_cfg)  # validated once, before converting
    history = mode_history(model)
    start = len(history)
    converted = not (history and history[-1].mode == name)
    if not converted and mode_cfg:
        raise ValueError(f"the model is already converted with {name!r}; drop the mode rules")
    if converted:
        model = convert(model, (name, mode_cfg))
    began = time.perf_counter()
    try:
        result = search.run(model, constraints or {}, dummy_input, search_cfg,
                            gradnas_hparams(model))
    except Exception:
        if converted:
            history = mode_history(model)
            _undo(model, history, start)
            _set_history(model, history)
        raise
    result.seconds = time.perf_counter() - began
    _record_search(model, name, result, search_cfg)
    return model, result


def _record_search(model: nn.Module, mode: str, result: SearchResult, cfg: Mapping[str, Any]
                   ) -> None:
    """Keep what the search aimed at and scored with in the mode's metadata (for model cards)."""
    history = mode_history(model)
    if not history or history[-1].mode != mode:
        return
    loader = cfg.get("data_loader")
    if loader is not None:
        size = len(loader) if hasattr(loader, "__len__") else "an iterable of"
        data = f"{size} batches from data_loader (max_iter_data_loader={cfg.get('max_iter_data_loader')})"
    else:
        data = "score_func" if cfg.get("score_func") is not None else "none"
    history[-1].metadata["search"] = {"searcher": result.searcher, "score_data": data,
                                      "constraints": result.constraints}
