"""One-way compact_masks gives the freed logits' memory back (issue 16)."""

from __future__ import annotations

import weakref

import torch.nn as nn

import modeopt_masks as mm
import modeopt_masks.compact as compact


def _net():
    return mm.convert(nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4)),
                      "continuous_sparsification")


def _techniques(net):
    return [weakref.ref(m) for m in net.modules() if isinstance(m, mm.MaskTechnique)
            and not isinstance(m, compact.CompactMask)]


def test_one_way_compaction_trims_the_heap_after_the_logits_are_freed(monkeypatch):
    net = _net()
    refs = _techniques(net)
    alive_at_trim: list[int] = []
    monkeypatch.setattr(compact, "release_freed_heap",
                        lambda: alive_at_trim.append(sum(r() is not None for r in refs)))
    mm.compact_masks(net)
    # trimmed exactly once, and only after every replaced technique was gone
    assert alive_at_trim == [0]
    assert len(refs) == 2


def test_keep_logits_keeps_the_techniques_and_does_not_trim(monkeypatch):
    net = _net()
    refs = _techniques(net)
    calls: list[int] = []
    monkeypatch.setattr(compact, "release_freed_heap", lambda: calls.append(1))
    mm.compact_masks(net, keep_logits=True)
    assert calls == []
    assert all(r() is not None for r in refs)
    assert type(mm.expand_masks(net)[0].weight_mask).__name__ == "ContinuousSparsificationMask"


def test_release_freed_heap_runs_on_this_platform():
    assert isinstance(compact.release_freed_heap(), bool)


def test_compacting_an_already_compact_model_changes_nothing():
    net = mm.compact_masks(_net())
    bits = net[0].weight_mask.bits.clone()
    assert mm.compact_masks(net) is net
    assert net[0].weight_mask.bits.equal(bits)
