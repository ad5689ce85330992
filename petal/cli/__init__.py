"""The ``petal`` command: one module per subcommand (``add_parser`` + ``run``). Run ``petal <command> -h``."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import compare, demo, evaluate, presets, train
from .args import positive_int

COMMANDS = {"demo": demo, "train": train, "eval": evaluate, "presets": presets, "compare": compare}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petal", description="Parameter-efficient tuning of vision-language models (PETAL, VL-PET): "
        "train, evaluate, and a CPU demo.")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: 1 for demo, else torch's choice)")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    sub.required = True
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads or args.command == "demo":
        import torch

        # the embedded model's ops are tiny: one thread beats several (and is far faster on a busy machine)
        torch.set_num_threads(args.threads or 1)
    try:
        return COMMANDS[args.command].run(args)
    except (ValueError, OSError) as e:  # bad input or an unusable file: one line naming it, no traceback
        message = " ".join(str(e).split())
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) or not message:
            message = f"{type(e).__name__}: {message}"
        parser.exit(2, f"petal {args.command}: error: {message}\n")


if __name__ == "__main__":
    sys.exit(main())
