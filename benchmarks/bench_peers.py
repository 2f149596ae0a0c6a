"""The bench_masks workload through peer libraries, where they are installed.

NeuroSurgeon (``pip install --no-deps neurosurgeon``): its CircuitModel with
continuous sparsification on every linear layer of the same 4-layer BERT, the
masked training step and the eval forward as ratios to the plain model, beside
ours, all in one process. A peer that does not import is reported as skipped.
(``nvidia-modelopt==0.44.0`` needs transformers 4.57, which cannot share this
environment with transformers 5; it is reported as skipped unless importable.)

Run: ``python -m benchmarks.bench_peers [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import modeopt_masks as mm
from benchmarks.bench_masks import _eval_forward, _train_step, build
from benchmarks.common import interleaved_ratio


def _neurosurgeon(quick: bool) -> dict:
    try:
        from NeuroSurgeon.Models.circuit_model import CircuitConfig, CircuitModel
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return {"skipped": f"NeuroSurgeon not importable ({type(e).__name__}: {e})"}
    rounds = 3 if quick else 5
    plain, ids, _ = build("bert", quick)
    ours, _, _ = build("bert", quick)
    theirs, _, _ = build("bert", quick)
    targets = [n for n, m in theirs.named_modules() if type(m) is torch.nn.Linear]
    ns = CircuitModel(CircuitConfig(
        mask_method="continuous_sparsification", target_layers=targets, freeze_base=True,
        add_l0=False,
        mask_hparams={"ablation": "none", "mask_unit": "weight", "mask_bias": False,
                      "mask_init_value": 0.5},
    ), theirs)
    ours = mm.convert(ours, ("continuous_sparsification", {
        "freeze_base": True, "nn.Linear": {"*": {"mask_init_value": 0.5}}}))
    plain.train()
    ours.train()
    ns.train()
    opt_plain = torch.optim.Adam(plain.parameters(), 1e-4)
    opt_ours = torch.optim.Adam([p for p in ours.parameters() if p.requires_grad], 1e-2)
    opt_ns = torch.optim.Adam([p for p in ns.parameters() if p.requires_grad], 1e-2)
    plain_step = _train_step(plain, ids, opt_plain)
    result = {
        "train_step_ratio": {
            "modeopt_masks": interleaved_ratio(_train_step(ours, ids, opt_ours), plain_step,
                                               rounds, 2)["ratio"],
            "neurosurgeon": interleaved_ratio(_train_step(ns, ids, opt_ns), plain_step,
                                              rounds, 2)["ratio"],
        }
    }
    plain.eval()
    ours.eval()
    ns.eval()
    plain_fwd = _eval_forward(plain, ids)
    result["eval_forward_ratio"] = {
        "modeopt_masks": interleaved_ratio(_eval_forward(ours, ids), plain_fwd, rounds)["ratio"],
        "neurosurgeon": interleaved_ratio(_eval_forward(ns, ids), plain_fwd, rounds)["ratio"],
    }
    return {k: {n: round(v, 3) for n, v in d.items()} for k, d in result.items()}


def _modelopt() -> dict:
    try:
        import modelopt.torch.prune  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return {"skipped": f"nvidia-modelopt not importable ({type(e).__name__}: {e}); it "
                           "needs transformers 4.57 in an environment of its own"}
    return {"skipped": "nvidia-modelopt importable, but its GradNAS needs head_mask "
                       "(transformers < 5); not run in this environment"}


def run(quick: bool = False) -> dict:
    """Peer figures, or why each peer was skipped."""
    torch.set_num_threads(2)
    return {"neurosurgeon": _neurosurgeon(quick), "nvidia_modelopt": _modelopt()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    json.dump(run(parser.parse_args(argv).quick), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
