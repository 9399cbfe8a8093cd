"""Solvers of the control problem; each imports :mod:`controlnet` only.

Every solver has ``init(problem, controls, *, key)`` and a pure ``step(problem, state)`` (or,
for a one-shot method, ``run``) and a class attribute ``name``; :func:`solve` drives any of
them. :data:`SOLVERS` is the registry the command line and :func:`make_solver` use.
"""

from .config import Budget, Checkpoints
from .direct import Direct
from .discrete import DiscreteMSA
from .driver import evaluate, solve
from .gd import GradientDescent
from .msa import MSA, ExtendedMSA
from .proximal import ProximalGradient

#: Solver classes by their ``name`` (the names the CLI takes).
SOLVERS = {cls.name: cls for cls in (GradientDescent, MSA, ExtendedMSA, DiscreteMSA, ProximalGradient, Direct)}

__all__ = ["SOLVERS", "make_solver", "solve", "evaluate", "Budget", "Checkpoints", "GradientDescent", "MSA", "ExtendedMSA", "DiscreteMSA",
           "ProximalGradient", "Direct"]


def make_solver(name: str, **options):
    """The solver called ``name`` with ``options``; a clear error for an unknown name."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}")
    return SOLVERS[name](**options)
