"""Solvers of the control problem; each imports :mod:`controlnet` only.

A solver is a *step solver* (``name``, ``init(problem, controls, *, key)``, a pure
``step(problem, state)``) or a *one-shot solver* (``name``, ``run(problem, controls, budget,
...)``), as :mod:`solvers.protocol` writes down; :func:`solve` drives either. :data:`SOLVERS` is
the registry the command line and :func:`make_solver` use. The studies built on ``solve`` are
the submodules :mod:`solvers.compare` and :mod:`solvers.depth_study`.
"""

from controlnet import evaluate

from . import compare, depth_study
from .adversarial import YOPO, PGDTraining
from .config import Budget, Checkpoints
from .direct import Direct
from .discrete import DiscreteMSA
from .driver import solve
from .gd import SGD, Adam, GradientDescent
from .msa import MSA, ExtendedMSA
from .protocol import OneShotSolver, StepSolver
from .proximal import ProximalGradient

#: Solver classes by their ``name`` (the names the CLI takes).
SOLVERS = {cls.name: cls for cls in (GradientDescent, MSA, ExtendedMSA, DiscreteMSA, ProximalGradient, Direct)}
# Adversarial training (solvers.adversarial).
SOLVERS.update({cls.name: cls for cls in (PGDTraining, YOPO)})

__all__ = ["SOLVERS", "make_solver", "solve", "evaluate", "Budget", "Checkpoints", "GradientDescent", "Adam",
           "SGD", "MSA", "ExtendedMSA", "DiscreteMSA", "ProximalGradient", "Direct", "StepSolver",
           "OneShotSolver", "compare", "depth_study", "PGDTraining", "YOPO"]


def make_solver(name: str, **options):
    """The solver called ``name`` with ``options``; a clear error for an unknown name."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}")
    return SOLVERS[name](**options)
