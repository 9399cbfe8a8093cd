"""Solvers of the control problem; each imports :mod:`controlnet` only.

Every solver has ``init(problem, controls, *, key)`` and a pure ``step(problem, state)``;
:func:`solve` drives any of them.
"""

from .driver import evaluate, solve
from .gd import GradientDescent
from .direct import Direct

#: Solver classes by the names the CLI uses.
SOLVERS = {"gd": GradientDescent}

SOLVERS["direct"] = Direct

from .discrete import DiscreteMSA  # noqa: E402
from .msa import MSA, ExtendedMSA  # noqa: E402

from .proximal import ProximalGradient  # noqa: E402

SOLVERS.update({"msa": MSA, "emsa": ExtendedMSA, "discrete": DiscreteMSA, "pgd": ProximalGradient})


def make_solver(name: str, **options):
    """The solver called ``name`` with ``options``; a clear error for an unknown name."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}")
    return SOLVERS[name](**options)
