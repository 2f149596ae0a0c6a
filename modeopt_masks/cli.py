"""Command line: ``modeopt-masks demo`` runs the main job on data that needs no download.

Examples:
    >>> from modeopt_masks.cli import build_parser
    >>> build_parser().parse_args(["demo", "--quick"]).quick
    True
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """The ``modeopt-masks`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="modeopt-masks",
        description="Circuit discovery and pruning masks as Model-Optimizer-style modes.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train, prune (gradnas), export and probe a tiny ViT on "
                                       "scikit-learn digits, and MiniLM if installed")
    demo.add_argument("--out", default="demo_output", help="directory for report.json and plots")
    demo.add_argument("--quick", action="store_true", help="short training (a smoke run)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-minilm", action="store_true", help="skip the pretrained MiniLM step")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub.add_parser("modes", help="list the registered modes")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``modeopt-masks`` command."""
    args = build_parser().parse_args(argv)
    if args.command == "modes":
        import modeopt_masks as mm

        for name in mm.available_modes():
            print(name)
        return 0
    import torch

    from .demo import run_demo

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    run_demo(args.out, quick=args.quick, seed=args.seed, minilm=not args.no_minilm,
             progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
