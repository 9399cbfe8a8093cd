"""Convolutional vector fields on channel × space states: signals ``(C, L)``, images ``(C, H, W)``.

A batch of states is ``z (S, C, *space)`` (samples first, then channels, then ``ndim`` spatial
axes), and the scans carry it in that same layout (:attr:`sample_axis` ``= 0``). ``K ∗ z`` is the
cross-correlation with "same" zero padding and stride 1, with kernel ``K (C_out, C_in, k, …)``;
the kernel size ``k`` is odd so the padding is symmetric. Then the adjoint operator ``Kᵀ``
(``⟨K ∗ u, v⟩ = ⟨u, Kᵀ ∗ v⟩``) is the correlation with the kernel flipped in space and its two
channel axes swapped (:func:`conv_transpose`). Both are :mod:`controlnet.convolution`'s one
routine, formulated per backend (a matrix product of the windows on the CPU, XLA's convolution
elsewhere); a field's ``implementation`` (``"auto"``, ``"matmul"``, ``"xla"``) forces one.

The fields:

* :class:`Conv`: ``f(z, θ) = σ(K ∗ z + b)``, the convolutional ResNet block;
* :class:`ParabolicConv`: ``f(z, θ) = −Kᵀ σ(K ∗ z + b)`` (Haber & Ruthotto, "Stable
  architectures for deep neural networks", 2017): for a non-decreasing ``σ`` its Jacobian
  ``−Kᵀ diag(σ') K`` is symmetric negative semi-definite, so the flow is non-expansive and
  forward Euler is stable for ``h ‖K‖₂² max σ' ≤ 2``;
* :class:`AntisymmetricConv`: ``f(z, θ) = σ((K − Kᵀ) ∗ z + b)``: the operator ``K − Kᵀ`` is
  antisymmetric (purely imaginary spectrum), the convolutional form of Haber & Ruthotto's
  antisymmetric networks.

:func:`conv_spectral_norm` estimates ``‖K‖₂`` of the convolution as an operator on a given
spatial shape by power iteration on ``KᵀK`` (the stability diagnostics use it).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax

from .activations import activation, lipschitz_constant
from .convolution import check_implementation, conv, conv_spectral_norm, conv_transpose, transposed_kernel
from .dynamics import DYNAMICS, VectorField

__all__ = ["Conv", "ParabolicConv", "AntisymmetricConv", "conv", "conv_transpose",
           "conv_spectral_norm", "transposed_kernel", "CONV_DYNAMICS"]


def _check_kernel_ndim(kernel, ndim):
    if ndim not in (1, 2):
        raise ValueError(f"ndim (spatial dimensions) must be 1 (signals) or 2 (images), got {ndim!r}")
    if not isinstance(kernel, int) or isinstance(kernel, bool) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel size must be an odd positive integer (same padding is then "
                         f"symmetric), got {kernel!r}")


def _bias(b, ndim):
    return b.reshape(b.shape + (1,) * ndim)


def _init_kernel(key, C, kernel, ndim, scale):
    kK, kb = jax.random.split(key)
    fan_in = C * kernel**ndim
    return {"K": scale / fan_in**0.5 * jax.random.normal(kK, (C, C) + (kernel,) * ndim),
            "b": 0.1 * scale * jax.random.normal(kb, (C,))}


@dataclasses.dataclass(frozen=True)
class _ConvField(VectorField):
    """Shared structure of the convolutional fields: kernel size, activation, spatial dims, and
    the convolution's ``implementation`` (:mod:`controlnet.convolution`; ``"auto"`` by backend)."""

    kernel: int = 3
    activation: str = "tanh"
    ndim: int = 1
    implementation: str = "auto"
    sample_axis: ClassVar[int] = 0
    # Recomputing a layer's convolution in the backward pass costs a third of the gradient's
    # convolutions; its residuals (one state-sized array per layer) are cheap to keep.
    rematerialize: ClassVar[bool] = False

    def __post_init__(self):
        activation(self.activation)  # raises for an unknown name
        _check_kernel_ndim(self.kernel, self.ndim)
        check_implementation(self.implementation)

    def scan_call(self, zT, theta):
        # The scans carry conv states in their own layout (module doc): nothing to transpose.
        return self(zT, theta)

    def init(self, key, d, scale=1.0):
        """``K (d, d, k, …)`` with standard deviation ``scale/√(d kⁿ)``; ``d`` is the channel count."""
        return _init_kernel(key, d, self.kernel, self.ndim, scale)

    def _operator_norm(self, K, space):
        """``‖K‖₂`` on states of spatial shape ``space`` (power iteration, an estimate from below)."""
        if space is None:
            raise ValueError("a convolutional field's bound needs the states' spatial shape: "
                             "pass space=problem.state_shape[1:]")
        return conv_spectral_norm(K, tuple(space), implementation=self.implementation)

    def check_state(self, shape) -> None:
        """Raise unless ``shape`` (one sample's state) is ``(C, *space)`` with ``ndim`` spatial axes."""
        if len(shape) != 1 + self.ndim:
            kind = "(channels, length)" if self.ndim == 1 else "(channels, height, width)"
            raise ValueError(f"{type(self).__name__}(ndim={self.ndim}) acts on states {kind}, got a state "
                             f"of shape {tuple(shape)}; pass x of shape (samples, channels, "
                             f"{'length' if self.ndim == 1 else 'height, width'}) or set ndim={len(shape) - 1}")


@dataclasses.dataclass(frozen=True)
class Conv(_ConvField):
    """``f(z, θ) = σ(K ∗ z + b)``, ``θ = (K ∈ R^{C×C×k^n}, b ∈ R^C)`` (module doc)."""

    def __call__(self, z, theta):
        return activation(self.activation)(conv(z, theta["K"], self.implementation) + _bias(theta["b"], self.ndim))

    def lipschitz_bound(self, theta, space=None):
        """``Lip(σ(K∗z + b)) ≤ L_σ ‖K‖₂`` (``‖K‖₂`` estimated, :func:`conv_spectral_norm`)."""
        return lipschitz_constant(self.activation) * self._operator_norm(theta["K"], space)


@dataclasses.dataclass(frozen=True)
class ParabolicConv(_ConvField):
    """``f(z, θ) = −Kᵀ σ(K ∗ z + b)`` (Haber & Ruthotto; module doc)."""

    def __call__(self, z, theta):
        K = theta["K"]
        u = activation(self.activation)(conv(z, K, self.implementation) + _bias(theta["b"], self.ndim))
        return -conv_transpose(u, K, self.implementation)

    def lipschitz_bound(self, theta, space=None):
        """``Lip(−Kᵀσ(K∗z + b)) ≤ L_σ ‖K‖₂²`` (``‖K‖₂`` estimated, :func:`conv_spectral_norm`)."""
        return lipschitz_constant(self.activation) * self._operator_norm(theta["K"], space) ** 2


@dataclasses.dataclass(frozen=True)
class AntisymmetricConv(_ConvField):
    """``f(z, θ) = σ((K − Kᵀ) ∗ z + b)`` (module doc)."""

    def __call__(self, z, theta):
        K = theta["K"]
        Ka = K - transposed_kernel(K)
        return activation(self.activation)(conv(z, Ka, self.implementation) + _bias(theta["b"], self.ndim))

    def lipschitz_bound(self, theta, space=None):
        """``Lip(σ((K−Kᵀ)∗z + b)) ≤ L_σ ‖K−Kᵀ‖₂`` (estimated, :func:`conv_spectral_norm`)."""
        K = theta["K"]
        return lipschitz_constant(self.activation) * self._operator_norm(K - transposed_kernel(K), space)


#: Names used by the problems and the command line (also registered in ``DYNAMICS``).
CONV_DYNAMICS = {"conv": Conv, "parabolic": ParabolicConv, "antisymmetric_conv": AntisymmetricConv}
DYNAMICS.update(CONV_DYNAMICS)
