"""Vector fields ``f(z, θ)`` of the controlled ODE ``ż = f(z, θ(t))``.

A vector field is a frozen dataclass: its fields are structural (activation, inner width),
its parameters ``θ`` for one layer are a dict of arrays made by :meth:`VectorField.init`.
``__call__`` acts on a batch of states ``z`` of shape ``(..., d)`` (samples on the leading
axes), so a whole data set moves through one layer as one matrix product.

What a field is lives with it: its formula, its parameters, and the capabilities a solver or a
diagnostic asks it for, each with a documented default: :meth:`VectorField.lipschitz_bound` (the
stability diagnostic's weight bound) and :meth:`VectorField.casadi` (the direct solver's
symbolic translation).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from .activations import activation, casadi_activation, lipschitz_constant

__all__ = [
    "VectorField",
    "InnerActivation",
    "OuterActivation",
    "TwoLayer",
    "DYNAMICS",
]


@dataclasses.dataclass(frozen=True)
class VectorField(abc.ABC):
    """Interface: ``f(z, θ)`` for a batch ``z`` of shape ``(..., d)``.

    ``sample_axis``: where the scans keep the samples. Dense fields are carried feature-major,
    ``(d, S)`` (samples last, ``-1``); fields on structured states (:mod:`controlnet.conv`)
    keep their own layout, samples first (``0``).

    ``rematerialize``: whether the adjoint's backward pass re-evaluates each layer from its
    state (``True``: the forward pass keeps only the states; right where evaluating the field
    is cheap next to storing its residuals, as for dense fields) or keeps the forward pass's
    residuals (``False``: where the field's evaluation dominates, as a convolution does).
    """

    sample_axis: ClassVar[int] = -1
    rematerialize: ClassVar[bool] = True

    @abc.abstractmethod
    def __call__(self, z, theta):
        """The velocity ``f(z, θ)``, same shape as ``z``."""

    @abc.abstractmethod
    def init(self, key, d: int, scale: float = 1.0) -> dict:
        """Random parameters of one layer for state width ``d``."""

    def scan_call(self, zT, theta):
        """``f`` on states stored feature-major, ``zT (d, S)`` (the scans' layout).

        The default vmaps :meth:`__call__` over the samples; fields whose formula is a matrix
        product override it with ``W @ zT``, which XLA's CPU backend runs several times faster
        for small ``d`` than the vmapped per-sample product.
        """
        return jax.vmap(self, in_axes=(1, None), out_axes=1)(zT, theta)

    def lipschitz_bound(self, theta, space=None):
        """An upper bound of ``Lip(f(·, θ))`` from one layer's weights ``θ``, a 0-d array;
        ``space`` is the states' spatial shape (for fields on structured states).

        The default is ``None``: no bound known, and the stability diagnostics then report
        only the local constant along the data (:func:`controlnet.diagnostics.jacobian_norms`).
        """
        return None

    def casadi(self, Z, theta, ca):
        """``f(Z, θ)`` in CasADi expressions for a batch ``Z (d×S)`` (samples along columns) and
        one layer's ``θ`` as a dict of CasADi matrices shaped like :meth:`init`'s; ``ca`` is the
        ``casadi`` module (passed in: the core does not import it). Used by the direct solver.

        The default is ``NotImplemented``: the field has no translation.
        """
        return NotImplemented

    def check_state(self, shape) -> None:
        """Raise ``ValueError`` unless one sample's state ``shape`` suits the field: ``(d,)`` here."""
        if len(shape) != 1:
            raise ValueError(f"{type(self).__name__} acts on vector states (samples, features), got states "
                             f"of shape (samples, {', '.join(map(str, shape))}); flatten x to (samples, "
                             "features) or use a convolutional field (controlnet.Conv)")


def _spectral(M):
    """``‖M‖₂``, the largest singular value."""
    return jnp.linalg.norm(M, ord=2)


def _normal(key, shape, std):
    return std * jax.random.normal(key, shape)


def _square_init(key, d, scale):
    kW, kb = jax.random.split(key)
    return {"W": _normal(kW, (d, d), scale / d**0.5), "b": _normal(kb, (d,), scale * 0.1)}


@dataclasses.dataclass(frozen=True)
class InnerActivation(VectorField):
    """``f(z, θ) = σ(W z + b)``, ``θ = (W ∈ R^{d×d}, b ∈ R^d)``."""

    activation: str = "tanh"

    def __post_init__(self):
        activation(self.activation)  # raises for an unknown name

    def __call__(self, z, theta):
        return activation(self.activation)(z @ theta["W"].T + theta["b"])

    def scan_call(self, zT, theta):
        return activation(self.activation)(theta["W"] @ zT + theta["b"][:, None])

    def init(self, key, d, scale=1.0):
        return _square_init(key, d, scale)

    def lipschitz_bound(self, theta, space=None):
        """``Lip(σ(Wz + b)) ≤ L_σ ‖W‖₂``."""
        return lipschitz_constant(self.activation) * _spectral(theta["W"])

    def casadi(self, Z, theta, ca):
        act = casadi_activation(self.activation, ca)
        return act(ca.mtimes(theta["W"], Z) + ca.repmat(theta["b"], 1, Z.shape[1]))


@dataclasses.dataclass(frozen=True)
class OuterActivation(VectorField):
    """``f(z, θ) = W σ(z) + b``, ``θ = (W ∈ R^{d×d}, b ∈ R^d)``."""

    activation: str = "tanh"

    def __post_init__(self):
        activation(self.activation)  # raises for an unknown name

    def __call__(self, z, theta):
        return activation(self.activation)(z) @ theta["W"].T + theta["b"]

    def scan_call(self, zT, theta):
        return theta["W"] @ activation(self.activation)(zT) + theta["b"][:, None]

    def init(self, key, d, scale=1.0):
        return _square_init(key, d, scale)

    def lipschitz_bound(self, theta, space=None):
        """``Lip(Wσ(z) + b) ≤ ‖W‖₂ L_σ``."""
        return lipschitz_constant(self.activation) * _spectral(theta["W"])

    def casadi(self, Z, theta, ca):
        act = casadi_activation(self.activation, ca)
        return ca.mtimes(theta["W"], act(Z)) + ca.repmat(theta["b"], 1, Z.shape[1])


@dataclasses.dataclass(frozen=True)
class TwoLayer(VectorField):
    """``f(z, θ) = B σ(A z + a)``, ``A ∈ R^{m×d}, a ∈ R^m, B ∈ R^{d×m}``; ``m = width``."""

    width: int = 16
    activation: str = "tanh"

    def __post_init__(self):
        activation(self.activation)  # raises for an unknown name
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"TwoLayer width must be a positive integer, got {self.width!r}")

    def __call__(self, z, theta):
        return activation(self.activation)(z @ theta["A"].T + theta["a"]) @ theta["B"].T

    def scan_call(self, zT, theta):
        return theta["B"] @ activation(self.activation)(theta["A"] @ zT + theta["a"][:, None])

    def init(self, key, d, scale=1.0):
        kA, ka, kB = jax.random.split(key, 3)
        m = self.width
        return {
            "A": _normal(kA, (m, d), scale / d**0.5),
            "a": _normal(ka, (m,), scale * 0.1),
            "B": _normal(kB, (d, m), scale / m**0.5),
        }

    def lipschitz_bound(self, theta, space=None):
        """``Lip(Bσ(Az + a)) ≤ ‖B‖₂ L_σ ‖A‖₂``."""
        return lipschitz_constant(self.activation) * _spectral(theta["B"]) * _spectral(theta["A"])

    def casadi(self, Z, theta, ca):
        act = casadi_activation(self.activation, ca)
        return ca.mtimes(theta["B"], act(ca.mtimes(theta["A"], Z) + ca.repmat(theta["a"], 1, Z.shape[1])))


#: The fields by the names the command line and :mod:`problems` take.
DYNAMICS = {
    "inner": InnerActivation,
    "outer": OuterActivation,
    "two_layer": TwoLayer,
}
