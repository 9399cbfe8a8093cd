"""The inner maximization of the MSA solvers as strategy objects: how every layer's
``H̃_k − C_k`` is ascended from ``θ_k^j`` in one outer iteration.

Two families (:class:`solvers.options.Family`), each member a frozen pytree dataclass found by
its ``name`` (the spelling the solvers' keywords and the command line take):

- :class:`InnerMethod`: :class:`OptaxAscent` (``"optax"``: ``inner_steps`` safeguarded steps of
  an optax optimizer, all layers at once, :mod:`.ascent`), :class:`Newton` (``"newton"``: a
  safeguarded Newton step per layer, :mod:`.newton`), :class:`Ipopt` (``"ipopt"``: every layer
  to IPOPT's tolerance, :mod:`solvers.msa_exact`, CasADi imported only then) and :class:`Auto`
  (``"auto"``: Newton where its Hessian has a closed form and a layer is small, else optax).
- :class:`InnerGradient`: :class:`ClosedFormGradient` (``"closed_form"``: the registered closed
  form where there is one, :mod:`.closed_forms`, else autodiff) and :class:`AutodiffGradient`
  (``"autodiff"``).

A method reads the solver's shared options (``inner_steps``, ``hessian_samples``, ...) from the
solver it is given, so each number lives in one place.
"""

from __future__ import annotations

import dataclasses

from typing import ClassVar

import jax

from controlnet.pytrees import pytree_dataclass

from ..options import Family
from .ascent import maximize
from .closed_forms import has_closed_form_hessian
from .hamiltonian import residual_sums, residuals, sample_axis
from .newton import inner_hessian, newton_preconditioner, subsample

__all__ = ["InnerMethod", "Auto", "OptaxAscent", "Newton", "Ipopt", "InnerGradient", "ClosedFormGradient",
           "AutodiffGradient", "layer_params", "inner_method", "NEWTON_AUTO_MAX_PARAMS", "NEWTON_MAX_PARAMS"]

#: ``inner="auto"`` takes the Newton step up to this many parameters per layer. Its Hessian
#: costs ``P²`` per sample and its factorization ``P³`` per layer; measured to pay at ``P = 12``
#: (the ring, width 3) and ``P = 30`` (``sin x``, width 5), not measured beyond.
NEWTON_AUTO_MAX_PARAMS = 32
#: ``inner="newton"`` refuses more parameters per layer than this (a ``P × P`` Hessian per layer).
NEWTON_MAX_PARAMS = 1024


class InnerGradient(Family):
    """How the inner gradient is computed (module doc); ``method`` is the name the functions of
    :mod:`.hamiltonian` take."""

    @property
    def method(self) -> str:
        return self.name


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class ClosedFormGradient(InnerGradient):
    """The closed form registered for the problem's integrator and field, else autodiff."""

    name: ClassVar[str] = "closed_form"


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class AutodiffGradient(InnerGradient):
    """Automatic differentiation (forward over reverse) for every field."""

    name: ClassVar[str] = "autodiff"


def layer_params(problem) -> int:
    """``P``: the number of parameters of one layer's ``θ_k``."""
    theta = jax.eval_shape(lambda: problem.init_controls(jax.random.PRNGKey(0))).theta
    return sum(x.size for x in jax.tree_util.tree_leaves(theta)) // problem.N


class InnerMethod(Family):
    """How every layer's ``H̃_k − C_k`` is maximized in one outer iteration (module doc).

    ``maximize(solver, problem, data, rho, optimizer, start, key, state)`` returns
    ``(θ^{j+1}, sums, η, inner_state)``: the new controls, the :func:`~.hamiltonian.residual_sums`
    there, and the step scales and optimizer state to carry (``state``'s, if it carries none).
    """

    #: Whether the extended MSA carries the step scales ``η`` and optimizer state across iterations.
    carries: ClassVar[bool] = False

    def resolve(self, solver, problem) -> "InnerMethod":
        """The concrete method on ``problem``, checked (itself, except for :class:`Auto`)."""
        return self


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class OptaxAscent(InnerMethod):
    """``inner_steps`` (default 3) safeguarded steps of the solver's inner optimizer
    (:func:`~.ascent.maximize_hamiltonians`), starting from the carried ``η`` and optimizer
    state where the state has them."""

    name: ClassVar[str] = "optax"
    carries: ClassVar[bool] = True

    def maximize(self, solver, problem, data, rho, optimizer, start, key, state):
        steps = solver.inner_steps if solver.inner_steps is not None else 3
        carry = not _empty(state.eta)  # MSAState.eta: () where nothing is carried
        carry_opt = carry and not _empty(state.inner_state)
        theta, sums, eta, opt_state = maximize(problem, data, rho, optimizer, steps, solver.inner_gradient.method,
                                               start, state.eta if carry else None,
                                               state.inner_state if carry_opt else None)
        return theta, sums, eta if carry else state.eta, opt_state if carry_opt else state.inner_state


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class Newton(InnerMethod):
    """A safeguarded Newton step per layer, its Hessian at ``θ^j`` estimated on
    ``hessian_samples`` of the samples (:func:`~.newton.subsample`); ``inner_steps`` (default
    1) steps reuse it with the new gradient. Refused for more than :data:`NEWTON_MAX_PARAMS`
    parameters per layer."""

    name: ClassVar[str] = "newton"

    def resolve(self, solver, problem):
        P = layer_params(problem)
        if P > NEWTON_MAX_PARAMS:
            raise ValueError(f"inner='newton' forms a P x P Hessian for every layer, and a layer here has "
                             f"P = {P} parameters (at most {NEWTON_MAX_PARAMS}); use inner='optax'")
        return self

    def maximize(self, solver, problem, data, rho, optimizer, start, key, state):
        del optimizer  # the step is Newton's
        method = solver.inner_gradient.method
        hdata = subsample(data, jax.random.fold_in(key, 1), solver.hessian_samples, sample_axis(problem))
        newton = newton_preconditioner(inner_hessian(problem, hdata, rho, method), data.theta)
        steps = solver.inner_steps if solver.inner_steps is not None else 1
        theta, sums, _, _ = maximize(problem, data, rho, newton, steps, method, start)
        return theta, sums, state.eta, state.inner_state


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class Ipopt(InnerMethod):
    """Every layer to IPOPT's tolerance with CasADi (:func:`solvers.msa_exact.maximize_exactly`;
    small problems, smooth ``R``)."""

    name: ClassVar[str] = "ipopt"

    def maximize(self, solver, problem, data, rho, optimizer, start, key, state):
        from ..msa_exact import maximize_exactly  # CasADi only when asked for

        theta = maximize_exactly(problem, data, rho)
        sums = residual_sums(problem, data, *residuals(problem, data, theta, solver.inner_gradient.method))
        return theta, sums, state.eta, state.inner_state


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class Auto(InnerMethod):
    """:class:`Newton` where its Hessian has a closed form for the problem (with
    ``inner_gradient="closed_form"``), a layer has at most :data:`NEWTON_AUTO_MAX_PARAMS`
    parameters and the solver has no ``inner_optimizer``; else :class:`OptaxAscent`."""

    name: ClassVar[str] = "auto"

    def resolve(self, solver, problem):
        closed = isinstance(solver.inner_gradient, ClosedFormGradient) and has_closed_form_hessian(problem)
        small = layer_params(problem) <= NEWTON_AUTO_MAX_PARAMS
        return Newton() if closed and small and solver.inner_optimizer is None else OptaxAscent()


def inner_method(solver, problem) -> str:
    """The name of the inner method ``solver`` runs on ``problem`` (its ``inner``, resolved)."""
    return solver.inner.resolve(solver, problem).name


def _empty(x) -> bool:
    """Whether ``x`` is the ``()`` that marks a state component as not carried."""
    return isinstance(x, tuple) and not x
