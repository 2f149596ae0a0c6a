"""A model card (``README.md``) for an exported gradnas model.

``mm.export`` of a gradnas model records what it did on the model ([`CARD_ATTR`][modeopt_masks.model_card.CARD_ATTR]):
which layers were pruned, the units each layer kept, params before and after, and
(when [`prune`][modeopt_masks.pruning.prune] ran the search) the constraint and the score data.
[`model_card`][modeopt_masks.model_card.model_card] renders it as markdown; ``save_pretrained`` writes it as ``README.md``
beside the weights once [`enable_huggingface_checkpointing`][modeopt_masks.hf_checkpointing.enable_huggingface_checkpointing] is on.

Examples:
    >>> import torch.nn as nn, modeopt_masks as mm
    >>> from modeopt_masks.model_card import model_card
    >>> from modeopt_masks.structured import gradnas_hparams
    >>> net = mm.convert(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "gradnas")
    >>> gradnas_hparams(net)["0"].keep([0, 1, 2, 3])
    >>> card = model_card(mm.export(net))
    >>> "| 0 | 4 of 8 |" in card, "58 -> 30" in card
    (True, True)
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

CARD_ATTR = "_mm_export_card"
"""Root-module attribute where gradnas export records what it pruned."""


def record_export(model: nn.Module, record: dict[str, Any]) -> None:
    """Keep ``record`` (params before/after, kept units, search) on ``model`` for the card."""
    model.__dict__[CARD_ATTR] = record


def export_record(model: nn.Module) -> dict[str, Any] | None:
    """What the last gradnas export of ``model`` recorded (``None``: none)."""
    return model.__dict__.get(CARD_ATTR)


def model_card(model: nn.Module) -> str:
    """The markdown card of an exported model (``""`` when export recorded nothing)."""
    rec = export_record(model)
    if rec is None:
        return ""
    before, after = rec["params_before"], rec["params_after"]
    lines = ["# Pruned with modeopt-masks (gradnas)", "",
             f"- params: {before} -> {after} ({100 * after / before:.1f}%)"]
    search = rec.get("search") or {}
    for kind, c in (search.get("constraints") or {}).items():
        lines.append(f"- constraint {kind}: target {c['target']:.6g}, achieved "
                     f"{c['achieved']:.6g} ({100 * c['ratio']:.1f}% of {c['original']:.6g})")
    if search:
        lines += [f"- searcher: {search.get('searcher')}",
                  f"- score data: {search.get('score_data')}"]
    else:
        lines.append("- selection set by hand (no search recorded)")
    if rec.get("remote_code"):
        lines.append("- per-layer shapes: `config.json` records them (`modeopt_structure`) and "
                     "`modeling_modeopt_pruned.py` (torch + transformers only) rebuilds them; "
                     "load with `AutoModel*.from_pretrained(folder, trust_remote_code=True)`")
    elif rec.get("unexpressed"):
        lines.append("- config.json cannot describe: " + "; ".join(rec["unexpressed"])
                     + " (stock from_pretrained refuses this folder)")
    lines += ["", "| layer | kept units |", "| --- | --- |"]
    for name, (kept, total) in rec["kept"].items():
        lines.append(f"| {name} | {kept} of {total} |")
    return "\n".join(lines) + "\n"
