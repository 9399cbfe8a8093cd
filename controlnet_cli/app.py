"""The ``controlnet`` command line.

The application layer (:mod:`controlnet_cli`): it imports :mod:`controlnet`, :mod:`problems` and
:mod:`solvers`, and nothing imports it. Each subcommand is a module with ``add_parser`` (its
options) and ``run`` (its handler): :mod:`~controlnet_cli.train`, :mod:`~controlnet_cli.turnpike`,
:mod:`~controlnet_cli.compare`, :mod:`~controlnet_cli.sweep`. Bad input prints one line ``controlnet: error: ...`` (no
traceback) and exits with status 2, before any data, compile or file; a diverged solve exits
with status 3, an interrupted one (Ctrl-C, its last iterate saved and resumable) with 130.

Every command turns on JAX's persistent compilation cache (:mod:`studies.cache`) before its
first compile, so a second identical command reads its programs from disk; ``--no-compile-cache``
or ``CONTROLNET_COMPILE_CACHE=0`` turns it off.
"""

from __future__ import annotations

import argparse
import os
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
    for command in sub.choices.values():
        command.add_argument("--no-compile-cache", action="store_true",
                             help="compile every program again instead of reading JAX's persistent "
                                  "compilation cache (~/.cache/controlnet/jax; also "
                                  "CONTROLNET_COMPILE_CACHE=0)")
    return parser


def main(argv=None) -> int:
    """Run the command line ``argv``; returns the exit status (0 ok, 2 bad input, 3 diverged,
    130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        _configure_jax(args)
        return args.handler(args)
    except (UsageError, ValueError, TypeError, OSError) as e:
        # Validation errors say what to change; a traceback would hide that line.
        print(f"controlnet: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside a solve (which handles Ctrl-C itself): nothing to save
        print("controlnet: interrupted", file=sys.stderr)
        return 130


def _configure_jax(args):
    """Precision and the persistent compilation cache, set before anything compiles."""
    import jax

    from studies.cache import enable_compile_cache

    if getattr(args, "float64", False):
        jax.config.update("jax_enable_x64", True)
    if args.no_compile_cache:
        # In the environment too, so that a sweep's worker processes leave it off as well.
        os.environ["CONTROLNET_COMPILE_CACHE"] = "0"
    enable_compile_cache()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
