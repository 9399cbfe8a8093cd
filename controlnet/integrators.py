"""One-step maps ``z_{k+1} = Ψ_h(z_k, θ_k)`` for a vector field ``f``.

The control is piecewise constant on the grid, so every stage of a step uses the same ``θ_k``;
the solver grid *is* the control grid and gradients are exact for the discrete problem.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

__all__ = ["Integrator", "Euler", "RK4", "INTEGRATORS"]


@dataclasses.dataclass(frozen=True)
class Integrator(abc.ABC):
    """Interface: ``step(f, z, θ, h) = Ψ_h(z, θ)``; ``order`` is the global order.

    ``layout_free``: the step only adds and scales ``z`` and evaluations of ``f``, so it works
    on states in any layout given an ``f`` for that layout (the scans then call it with
    :meth:`~controlnet.dynamics.VectorField.scan_call`). Integrators that index the state
    (splitting into halves) leave it ``False``.
    """

    order: int = dataclasses.field(init=False, default=0)
    layout_free: ClassVar[bool] = False

    @abc.abstractmethod
    def step(self, f, z, theta, h):
        """One step of size ``h`` from ``z`` with the control ``θ`` held constant."""


@dataclasses.dataclass(frozen=True)
class Euler(Integrator):
    """Forward Euler, ``Ψ_h(z, θ) = z + h f(z, θ)``: exactly a ResNet block. Order 1."""

    order: int = dataclasses.field(init=False, default=1)
    layout_free: ClassVar[bool] = True

    def step(self, f, z, theta, h):
        return z + h * f(z, theta)


@dataclasses.dataclass(frozen=True)
class RK4(Integrator):
    """Classical Runge-Kutta of order 4 with the control frozen over the step.

    ``k1 = f(z)``, ``k2 = f(z + h k1/2)``, ``k3 = f(z + h k2/2)``, ``k4 = f(z + h k3)``,
    ``Ψ_h(z, θ) = z + h (k1 + 2 k2 + 2 k3 + k4)/6``.
    """

    order: int = dataclasses.field(init=False, default=4)
    layout_free: ClassVar[bool] = True

    def step(self, f, z, theta, h):
        k1 = f(z, theta)
        k2 = f(z + 0.5 * h * k1, theta)
        k3 = f(z + 0.5 * h * k2, theta)
        k4 = f(z + h * k3, theta)
        return z + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


INTEGRATORS = {"euler": Euler, "rk4": RK4}
