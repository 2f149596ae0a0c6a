"""How deep and how scattered one ``prune`` call is: library calls, depth, file switches.

Counts, with ``sys.setprofile``, the Python calls into ``modeopt_masks`` during one
``mm.prune(model, "gradnas", ...)`` on a tiny ``Linear -> ReLU -> Linear`` network (imports
and a warm-up call happen before, so import time and first-call caches are excluded):

* ``calls``: library function calls;
* ``max_depth``: the deepest nesting of library frames;
* ``file_switches``: consecutive library calls made in different files;
* ``files``: distinct library files entered.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.bench_prune_calls``.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn as nn

import modeopt_masks as mm


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(),
                         nn.Linear(16, 1))


def _config() -> dict:
    g = torch.Generator().manual_seed(1)
    return {"data_loader": [(torch.randn(8, 8, generator=g),) for _ in range(2)],
            "loss_func": lambda out, batch: out.pow(2).mean(), "progress": False}


def measure() -> dict[str, int]:
    """The four counts of one prune call (see the module docstring)."""
    root = os.path.dirname(mm.__file__)
    mm.prune(_net(), "gradnas", constraints={"params": "60%"}, config=_config())  # warm-up
    net, cfg = _net(), _config()
    stats = {"calls": 0, "max_depth": 0, "file_switches": 0}
    files: set[str] = set()
    depth = [0]
    last = [""]

    def profile(frame, event, arg):  # noqa: ANN001
        path = frame.f_code.co_filename
        if not path.startswith(root):
            return
        if event == "call":
            depth[0] += 1
            stats["calls"] += 1
            stats["max_depth"] = max(stats["max_depth"], depth[0])
            if last[0] and path != last[0]:
                stats["file_switches"] += 1
            last[0] = path
            files.add(path)
        elif event == "return":
            depth[0] -= 1

    sys.setprofile(profile)
    try:
        mm.prune(net, "gradnas", constraints={"params": "60%"}, config=cfg)
    finally:
        sys.setprofile(None)
    return {**stats, "files": len(files)}


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps(measure()))
