"""The terminal parameters' updates of the MSA solvers: the read-out ``w`` (a Newton step on the
convex read-out problem, or an optimizer step along ``∇_w J``) and a learned lift ``φ`` (an
optimizer step along ``∇_φ J``). The discrete-weight MSA (:mod:`solvers.discrete`) shares them.

The read-out is no layer's control: from the states ``z^j`` of iterate ``j`` it solves (or
descends) ``J_w(w) = Φ(z_N^j, w) + h Σ_k L(z_k^j, w)``, convex in ``w``. The Newton step (Hessian
of size ``(n_out (d+1))²``) is safeguarded by keeping the best of ``w^j`` and the step lengths 1,
½, ¼; for a squared-error loss the full step *is* the exact ridge least-squares solution.

How a solver updates ``w`` is a strategy object of the family :class:`ReadoutMethod`:
:class:`NewtonReadout` (``"newton"``), :class:`GradientReadout` (``"gradient"``) and
:class:`AutoReadout` (``"auto"``: Newton up to :data:`READOUT_NEWTON_MAX_PARAMS` parameters).
"""

from __future__ import annotations

import dataclasses

from typing import ClassVar

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from controlnet.pytrees import pytree_dataclass

from ..options import Family

__all__ = ["readout_objective", "readout_newton", "ReadoutMethod", "AutoReadout", "NewtonReadout",
           "GradientReadout", "readout_method", "READOUT_NEWTON_MAX_PARAMS", "terminal_optimizer", "optimizer_step"]

#: ``readout="auto"`` takes the Newton step up to this many read-out parameters (its Hessian is
#: ``n × n``; a flattened read-out of a convolutional state has ``10·C·L + 10`` parameters,
#: whose Hessian would not fit in memory at a few tens of channels).
READOUT_NEWTON_MAX_PARAMS = 2048


def readout_objective(problem, zs):
    """``J_w(w) = Φ(z_N, w) + h Σ_k L(z_k, w)`` with the states frozen."""

    def J_w(w):
        val = problem.terminal(zs[-1], w)
        if "tracking" in problem.terms:
            val = val + problem.h * jnp.sum(jax.vmap(lambda z: problem.tracking_cost(z, w))(zs[:-1]))
        return val

    return J_w


def readout_newton(problem, zs, w):
    """The best of ``w`` and ``w − t H⁻¹∇J_w``, ``t ∈ {1, ½, ¼}`` (``J_w``: :func:`readout_objective`)."""
    flat, unravel = ravel_pytree(w)
    J_w = readout_objective(problem, zs)
    f = lambda v: J_w(unravel(v))  # noqa: E731
    g = jax.grad(f)(flat)
    H = jax.hessian(f)(flat)
    if "readout_l2" not in problem.terms:
        # A relative ridge of 1e-10 keeps the solve defined without α_w on separable data.
        H = H + 1e-10 * (jnp.trace(H) / flat.size + 1e-30) * jnp.eye(flat.size, dtype=flat.dtype)
    d = jnp.linalg.solve(H, g)
    cands = jnp.stack([flat, flat - d, flat - 0.5 * d, flat - 0.25 * d])
    vals = jax.vmap(f)(cands)
    vals = jnp.where(jnp.isfinite(vals), vals, jnp.inf)
    return unravel(cands[jnp.argmin(vals)])


def terminal_optimizer(optimizer):
    """The optimizer of a gradient step on ``w`` or ``φ``: ``optimizer``, by default Adam with
    learning rate 1e-2 (built on use, so that equal solver options compare equal)."""
    return optimizer if optimizer is not None else optax.adam(1e-2)


def optimizer_step(optimizer, grad, opt_state, params):
    """``(params', opt_state')``: one step of ``optimizer`` along ``grad``."""
    updates, opt_state = optimizer.update(grad, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


class ReadoutMethod(Family):
    """How an MSA solver updates the read-out ``w`` (module doc)."""

    def resolve(self, problem) -> "ReadoutMethod":
        """The concrete method on ``problem`` (itself, except for :class:`AutoReadout`)."""
        return self


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class NewtonReadout(ReadoutMethod):
    """A safeguarded Newton step on ``J_w`` (:func:`readout_newton`) *before* the co-states are
    computed (Gauss-Seidel order: the co-states belong to the read-out that is kept)."""

    name: ClassVar[str] = "newton"


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class GradientReadout(ReadoutMethod):
    """One step of the solver's ``readout_optimizer`` along ``∇_w J``, simultaneous with ``θ``."""

    name: ClassVar[str] = "gradient"


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class AutoReadout(ReadoutMethod):
    """:class:`NewtonReadout` up to :data:`READOUT_NEWTON_MAX_PARAMS` read-out parameters, else
    :class:`GradientReadout`."""

    name: ClassVar[str] = "auto"

    def resolve(self, problem) -> ReadoutMethod:
        n = (problem.readout_width + 1) * problem.loss.n_out
        return NewtonReadout() if n <= READOUT_NEWTON_MAX_PARAMS else GradientReadout()


def readout_method(solver, problem) -> str:
    """The name of the read-out update ``solver`` runs on ``problem`` (its ``readout``, resolved)."""
    return solver.readout.resolve(problem).name
