"""Costs: terminal losses ``ℓ(λ2(z_N), y)`` and running costs on the controls.

Losses are per sample and written in overflow-safe form. Running costs act on one layer's
parameters ``θ_k`` (a pytree); the smoothness term couples neighbouring layers.
"""

from __future__ import annotations

import abc
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .activations import softplus

__all__ = [
    "Loss",
    "Logistic",
    "SoftmaxCrossEntropy",
    "SquaredError",
    "LOSSES",
    "l2",
    "l1",
    "smoothness",
]


@dataclasses.dataclass(frozen=True)
class Loss(abc.ABC):
    """Interface: per-sample loss of read-out outputs ``out (S, n_out)`` against labels ``y``."""

    @property
    @abc.abstractmethod
    def n_out(self) -> int:
        """Number of read-out outputs the loss expects."""

    @abc.abstractmethod
    def __call__(self, out, y):
        """Per-sample losses, shape ``(S,)``."""

    def accuracy(self, out, y):
        """Fraction classified correctly; ``nan`` for regression losses."""
        return jnp.nan

    @abc.abstractmethod
    def check_labels(self, y) -> None:
        """Raise ``ValueError`` if the labels ``y`` (numpy) do not suit this loss."""


@dataclasses.dataclass(frozen=True)
class Logistic(Loss):
    """Binary logistic loss, ``ℓ(s, y) = log(1 + e^s) − y s`` for ``y ∈ {0, 1}``."""

    @property
    def n_out(self):
        return 1

    def __call__(self, out, y):
        s = out[..., 0]
        return softplus(s) - y * s

    def accuracy(self, out, y):
        return jnp.mean((out[..., 0] > 0) == (y > 0.5))

    def check_labels(self, y):
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(f"logistic labels must be a vector of 0/1, got shape {y.shape}")
        if not np.all((y == 0) | (y == 1)):
            raise ValueError(
                f"logistic labels must be 0 or 1, found values {np.unique(y)[:5]}; "
                "use SoftmaxCrossEntropy for more classes"
            )


@dataclasses.dataclass(frozen=True)
class SoftmaxCrossEntropy(Loss):
    """Softmax cross-entropy, ``ℓ(o, y) = logsumexp(o) − o_y`` for ``y ∈ {0..C−1}``."""

    n_classes: int = 2

    @property
    def n_out(self):
        return self.n_classes

    def __call__(self, out, y):
        o_y = jnp.take_along_axis(out, y[..., None].astype(jnp.int32), axis=-1)[..., 0]
        return jax.nn.logsumexp(out, axis=-1) - o_y

    def accuracy(self, out, y):
        return jnp.mean(jnp.argmax(out, axis=-1) == y)

    def check_labels(self, y):
        y = np.asarray(y)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"cross-entropy labels must be a vector of integers, got {y.dtype} {y.shape}"
            )
        if y.size and (y.min() < 0 or y.max() >= self.n_classes):
            raise ValueError(
                f"labels must lie in 0..{self.n_classes - 1}, found {y.min()}..{y.max()}; "
                "raise n_classes or fix the labels"
            )


@dataclasses.dataclass(frozen=True)
class SquaredError(Loss):
    """Squared error, ``ℓ(o, y) = ½ ‖o − y‖²`` for targets ``y ∈ R^dim``."""

    dim: int = 1

    @property
    def n_out(self):
        return self.dim

    def __call__(self, out, y):
        return 0.5 * jnp.sum((out - y) ** 2, axis=-1)

    def check_labels(self, y):
        y = np.asarray(y)
        if y.ndim != 2 or y.shape[1] != self.dim:
            raise ValueError(
                f"squared-error targets must have shape (samples, {self.dim}), got {y.shape}"
            )


LOSSES = {"logistic": Logistic, "cross_entropy": SoftmaxCrossEntropy, "squared": SquaredError}


def l2(theta):
    """``½ ‖θ‖²`` summed over all leaves of one layer's parameters."""
    return 0.5 * sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(theta))


def l1(theta):
    """``‖θ‖₁`` summed over all leaves of one layer's parameters."""
    return sum(jnp.sum(jnp.abs(leaf)) for leaf in jax.tree_util.tree_leaves(theta))


def smoothness(thetas, h):
    """H¹ seminorm in time, ``(1/2h) Σ_k ‖θ_{k+1} − θ_k‖²`` over layers (leading axis)."""
    return sum(
        0.5 / h * jnp.sum((leaf[1:] - leaf[:-1]) ** 2)
        for leaf in jax.tree_util.tree_leaves(thetas)
    )
