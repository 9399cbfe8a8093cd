"""What a solver is: the two kinds :func:`solvers.solve` drives, written down as protocols.

A **step solver** (gradient descent, MSA, E-MSA, proximal gradient) is an iteration::

    name: str                                          (class attribute: the CLI's and the logs' name)
    init(problem, controls, *, key) -> state           (``state.controls`` holds the iterate)
    step(problem, state) -> (state, info)              (pure; ``info``: scalars about the
                                                        *incoming* iterate, at least ``loss``)

``step`` must be a pure function of its arguments, traceable by ``jax.jit``: the driver compiles
it once inside a device-side loop (:mod:`solvers.driver`), and the state it returns must have the
types it came in with. A step solver declared with :func:`controlnet.pytrees.pytree_dataclass` is
handed to that loop as an *argument*: its numbers (learning rates, ``ρ``) are leaves, traced, so
two solvers that differ only in them share one compiled program, and equal configurations hit
the same cache entry. Any other hashable object (a plain frozen dataclass) is structure as a
whole: each distinct value compiles its own program.

A **one-shot solver** (the direct solver: one IPOPT solve) runs itself::

    name: str
    run(problem, controls, budget, *, key, seed, test, progress, callback) -> controlnet.Result

with ``budget`` a :class:`~solvers.config.Budget`.

Both are :class:`typing.Protocol` classes, checked structurally with ``isinstance`` (no base class
to inherit); :func:`solver_kind` is the one place that tells them apart, and refuses anything else
with what to pass instead.
"""

from __future__ import annotations

import dataclasses

from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import numpy as np

from controlnet.pytrees import pytree_dataclass, static_field

__all__ = ["StepSolver", "OneShotSolver", "solver_kind", "solver_name", "as_argument", "Whole"]


@runtime_checkable
class StepSolver(Protocol):
    """A solver that iterates: ``init`` once, then a pure ``step`` compiled by the driver."""

    name: ClassVar[str]

    def init(self, problem, controls, *, key) -> Any:
        """The solver state at ``controls`` (a pytree with a ``controls`` attribute)."""

    def step(self, problem, state) -> tuple[Any, dict]:
        """``(next state, info)``; ``info["loss"]`` is the loss of the incoming iterate."""


@runtime_checkable
class OneShotSolver(Protocol):
    """A solver that runs itself to the end within a :class:`~solvers.config.Budget`."""

    name: ClassVar[str]

    def run(self, problem, controls, budget, *, key=None, seed=0, test=None, progress=None,
            callback=None) -> Any:
        """The whole solve, as a :class:`controlnet.Result`."""


def _describe(obj) -> str:
    module = type(obj).__module__
    return type(obj).__name__ if module == "builtins" else f"{module}.{type(obj).__qualname__}"


def solver_kind(solver) -> type:
    """:class:`StepSolver` or :class:`OneShotSolver`, whichever ``solver`` is (a one-shot solver
    that also steps counts as one-shot: it runs itself); a ``TypeError`` saying what to pass for
    anything else, such as a bare optax optimizer."""
    if isinstance(solver, type):
        raise TypeError(f"solver must be a solver instance, got the class {solver.__name__}; "
                        f"pass {solver.__name__}(...)")
    if isinstance(solver, OneShotSolver):
        return OneShotSolver
    if isinstance(solver, StepSolver):
        return StepSolver
    if callable(getattr(solver, "init", None)) and callable(getattr(solver, "update", None)):
        raise TypeError(f"solver must be a solver, got an optax optimizer ({_describe(solver)}); "
                        "pass a solver, e.g. GradientDescent(optax.adam(1e-2))")
    missing = [m for m in ("name", "init", "step") if not hasattr(solver, m)]
    raise TypeError(f"solver must be a solver (a step solver with name, init and step, or a one-shot "
                    f"solver with name and run), got {_describe(solver)} without "
                    f"{', '.join(missing)}; pass e.g. solvers.GradientDescent() or solvers.ExtendedMSA()")


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class Whole:
    """A solver that is not a pytree (a plain frozen dataclass), carried as structure: each
    distinct (equal-comparing) value compiles its own program."""

    solver: Any = static_field()


def as_argument(solver):
    """``solver`` as an argument of the compiled loop: itself if it is a pytree whose leaves are
    numbers or arrays, else wrapped in :class:`Whole` (it must then be hashable)."""
    leaves, treedef = jax.tree_util.tree_flatten(solver)
    if not (treedef.num_leaves == 1 and treedef.num_nodes == 1 and leaves[0] is solver):
        for path, leaf in jax.tree_util.tree_flatten_with_path(solver)[0]:
            if not isinstance(leaf, (int, float, complex, np.ndarray, np.generic, jax.Array)):
                raise TypeError(f"solver {solver_name(solver)!r}: field{jax.tree_util.keystr(path)} holds a "
                                f"{type(leaf).__name__}, which is not a number; declare that field "
                                "with controlnet.pytrees.static_field() (structure, not data)")
        return solver
    try:
        hash(solver)
    except TypeError:
        raise TypeError(f"solver {solver_name(solver)!r} is neither a pytree nor hashable; declare it with "
                        "@controlnet.pytrees.pytree_dataclass (or @dataclasses.dataclass(frozen=True))") from None
    return Whole(solver)


def solver_name(solver) -> str:
    """The solver's ``name`` (its class name if it has none)."""
    return getattr(solver, "name", type(solver).__name__)
