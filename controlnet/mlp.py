"""The multilayer perceptron as a control problem: a one-step map with no residual.

    z_{k+1} = Ψ(z_k, θ_k) = f(z_k, θ_k)

With :class:`~controlnet.dynamics.InnerActivation` this is the MLP layer ``σ(W_k z_k + b_k)``;
with :class:`~controlnet.dynamics.TwoLayer` it is ``B_k σ(A_k z_k + a_k)``. The map does not
depend on the step ``h``: an MLP is a discrete-time system, not the discretisation of an ODE, so
the horizon ``T`` only weights the running cost ``h R(θ)``. State, adjoint and Hamiltonian need
nothing else (they only call ``problem.step``), so every solver trains an MLP unchanged. Unlike a
ResNet (a homeomorphism for ``h Lip(f) < 1``), the MLP layer can fold or collapse the state space:
``σ`` saturates and ``W_k`` may be singular (see :mod:`controlnet.architecture`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from .integrators import INTEGRATORS, Integrator

__all__ = ["NoResidual"]


@dataclasses.dataclass(frozen=True)
class NoResidual(Integrator):
    """``Ψ_h(z, θ) = f(z, θ)``: the layer *is* the vector field's map (an MLP layer); ``h`` unused."""

    order: int = dataclasses.field(init=False, default=0)
    layout_free: ClassVar[bool] = True

    def step(self, f, z, theta, h):
        return f(z, theta)


INTEGRATORS.update({"no_residual": NoResidual})
