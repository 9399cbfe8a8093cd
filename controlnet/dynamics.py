"""Vector fields ``f(z, θ)`` of the controlled ODE ``ż = f(z, θ(t))``.

A vector field is a frozen dataclass: its fields are structural (activation, inner width),
its parameters ``θ`` for one layer are a dict of arrays made by :meth:`VectorField.init`.
``__call__`` acts on a batch of states ``z`` of shape ``(..., d)`` (samples on the leading
axes), so a whole data set moves through one layer as one matrix product.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import jax

from .activations import activation

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

    def check_state(self, shape) -> None:
        """Raise ``ValueError`` unless one sample's state ``shape`` suits the field: ``(d,)`` here."""
        if len(shape) != 1:
            raise ValueError(f"{type(self).__name__} acts on vector states (samples, features), got states "
                             f"of shape (samples, {', '.join(map(str, shape))}); flatten x to (samples, "
                             "features) or use a convolutional field (controlnet.Conv)")


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


#: Names used by the CLI and by :func:`controlnet.problem.make_dynamics`.
DYNAMICS = {
    "inner": InnerActivation,
    "outer": OuterActivation,
    "two_layer": TwoLayer,
}
