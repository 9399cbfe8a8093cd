"""Splitting integrators for vector fields that are sums of simpler parts.

A :class:`SplitField` is ``f = f_1 + … + f_n``. A splitting method advances one part at a time,
each by one forward-Euler sub-step ``φ_t^j(z) = z + t f_j(z, θ)``:

    Lie–Trotter    Ψ_h = φ_{h_n}^n ∘ … ∘ φ_{h_1}^1                                   (order 1)
    Strang         Ψ_h = φ_{h_1/2}^1 ∘ … ∘ φ_{h_{n−1}/2}^{n−1} ∘ φ_{h_n}^n
                         ∘ φ_{h_{n−1}/2}^{n−1} ∘ … ∘ φ_{h_1/2}^1                       (order 2)

with sub-step sizes ``(h_1..h_n) = f.substeps(h)``, normally all ``h``.

For a :class:`PartitionedField`, ``z = (x, v)`` with ``ẋ = F(v, θ)`` and ``v̇ = G(x, θ)``, the two
parts are shears whose Euler sub-steps are their *exact* flows; Lie splitting is then symplectic
Euler ``x⁺ = x + h F(v), v⁺ = v + h G(x⁺)`` and Strang splitting is the Störmer–Verlet
(leapfrog) method. Both are compositions of shears, so ``det ∂Ψ/∂z = 1`` (volume preservation)
whatever ``F`` and ``G`` are, and symplectic when ``F = ∂H/∂v``, ``G = −∂H/∂x``
(Haber & Ruthotto, "Stable architectures for deep neural networks", 2017; Celledoni et al.,
"Structure-preserving deep learning", 2021).
"""

from __future__ import annotations

import abc
import dataclasses

import jax.numpy as jnp

from .dynamics import VectorField
from .integrators import INTEGRATORS, Integrator

__all__ = [
    "SplitField",
    "PartitionedField",
    "LieSplitting",
    "StrangSplitting",
    "split_state",
]


@dataclasses.dataclass(frozen=True)
class SplitField(VectorField):
    """Interface: ``f(z, θ) = Σ_j f_j(z, θ)``, the parts advanced separately by a splitting method."""

    @property
    @abc.abstractmethod
    def n_parts(self) -> int:
        """Number of parts ``n``."""

    @abc.abstractmethod
    def part(self, j: int, z, theta):
        """The velocity ``f_j(z, θ)`` of part ``j`` (``0 ≤ j < n``), same shape as ``z``."""

    @abc.abstractmethod
    def substeps(self, h) -> tuple:
        """Sub-step sizes ``(h_1..h_n)`` for a step ``h``: ``(h,)*n`` unless the field fixes its own."""

    def __call__(self, z, theta):
        return sum(self.part(j, z, theta) for j in range(self.n_parts))


def split_state(z):
    """``z = (x, v)``: the two halves of the last axis (its length must be even)."""
    d = z.shape[-1]
    if d % 2:
        raise ValueError(
            f"a two-variable (x, v) network needs an even state width, got {d}; "
            f"use width {d + 1}"
        )
    return z[..., : d // 2], z[..., d // 2 :]


@dataclasses.dataclass(frozen=True)
class PartitionedField(SplitField):
    """Interface: ``ẋ = F(v, θ)``, ``v̇ = G(x, θ)`` for ``z = (x, v)``, ``x, v ∈ R^{d/2}``.

    The parts are ``f_1 = (F(v), 0)`` and ``f_2 = (0, G(x))``.
    """

    @abc.abstractmethod
    def x_velocity(self, v, theta):
        """``F(v, θ)``, the velocity of ``x``."""

    @abc.abstractmethod
    def v_velocity(self, x, theta):
        """``G(x, θ)``, the velocity of ``v``."""

    @property
    def n_parts(self):
        return 2

    def substeps(self, h):
        return (h, h)

    def part(self, j, z, theta):
        x, v = split_state(z)
        if j == 0:
            return jnp.concatenate([self.x_velocity(v, theta), jnp.zeros_like(v)], axis=-1)
        return jnp.concatenate([jnp.zeros_like(x), self.v_velocity(x, theta)], axis=-1)

    def __call__(self, z, theta):
        x, v = split_state(z)
        return jnp.concatenate([self.x_velocity(v, theta), self.v_velocity(x, theta)], axis=-1)


def _require_split(f, method):
    if not isinstance(f, SplitField):
        raise TypeError(
            f"{method} needs a SplitField (a sum of parts such as Hamiltonian, VolumePreserving "
            f"or LipschitzNet), got {type(f).__name__}; use Euler or RK4 for this vector field"
        )


def _substep(f, j, z, theta, t):
    return z + t * f.part(j, z, theta)


@dataclasses.dataclass(frozen=True)
class LieSplitting(Integrator):
    """Lie–Trotter splitting ``Ψ_h = φ_{h_n}^n ∘ … ∘ φ_{h_1}^1``; symplectic Euler on (x, v) fields. Order 1."""

    order: int = dataclasses.field(init=False, default=1)

    def step(self, f, z, theta, h):
        _require_split(f, "LieSplitting")
        for j, hj in enumerate(f.substeps(h)):
            z = _substep(f, j, z, theta, hj)
        return z


@dataclasses.dataclass(frozen=True)
class StrangSplitting(Integrator):
    """Strang splitting (symmetric: half sub-steps around the last part); leapfrog on (x, v) fields. Order 2."""

    order: int = dataclasses.field(init=False, default=2)

    def step(self, f, z, theta, h):
        _require_split(f, "StrangSplitting")
        hs = f.substeps(h)
        n = len(hs)
        for j in range(n - 1):
            z = _substep(f, j, z, theta, 0.5 * hs[j])
        z = _substep(f, n - 1, z, theta, hs[n - 1])
        for j in reversed(range(n - 1)):
            z = _substep(f, j, z, theta, 0.5 * hs[j])
        return z


INTEGRATORS.update(
    {
        "lie": LieSplitting,
        "strang": StrangSplitting,
        # The names under which the two-variable networks are usually published.
        "symplectic_euler": LieSplitting,
        "leapfrog": StrangSplitting,
    }
)
