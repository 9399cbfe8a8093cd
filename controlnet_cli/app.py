"""The ``controlnet`` command line.

The application layer (:mod:`controlnet_cli`): it imports :mod:`controlnet`, :mod:`problems` and
:mod:`solvers`, and nothing imports it. Each subcommand is a module with ``add_parser`` (its
options) and ``run`` (its handler): :mod:`~controlnet_cli.train`, :mod:`~controlnet_cli.turnpike`,
:mod:`~controlnet_cli.compare`, :mod:`~controlnet_cli.sweep`. Bad input prints one line ``controlnet: error: ...`` (no
traceback) and exits with status 2, before any data, compile or file; a diverged solve exits
with status 3, an interrupted one (Ctrl-C, its last iterate saved and resumable) with 130.
"""

from __future__ import annotations

import argparse
import sys

from . import compare, sweep, train, turnpike
from .arguments import Parser, UsageError
from .problem_options import fill_training_defaults, task_from_args
from .solver_options import solver_from_args

__all__ = ["main", "build_parser", "SUBCOMMANDS", "fill_training_defaults", "task_from_args", "solver_from_args"]

#: The subcommands' ``add_parser`` functions, in the order ``--help`` lists them.
SUBCOMMANDS = [train.add_parser, turnpike.add_parser, compare.add_parser, sweep.add_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="controlnet", description="Train neural networks as optimal control problems.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    """Run the command line ``argv``; returns the exit status (0 ok, 2 bad input, 3 diverged,
    130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "float64", False):
            import jax

            jax.config.update("jax_enable_x64", True)
        return args.handler(args)
    except (UsageError, ValueError, TypeError, OSError) as e:
        # Validation errors say what to change; a traceback would hide that line.
        print(f"controlnet: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside a solve (which handles Ctrl-C itself): nothing to save
        print("controlnet: interrupted", file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
