"""Connective layers: the maps between the blocks of a multi-stage network (:mod:`controlnet.stages`).

A connective ``C(z; ψ)`` takes the final state of one block, ``(S, C_in, *space)``, to the
initial state of the next, ``(S, C_out, *space')``: a learned convolution that changes the
number of channels, and, when it downsamples, halves every spatial axis (Haber & Ruthotto 2017;
Ruthotto & Haber 2018)::

    downsample=None:      C(z; ψ) = K ∗ z + b                      (space' = space)
    downsample="stride":  C(z; ψ) = (K ∗ z)[::2, …] + b            (a strided convolution)
    downsample="pool":    C(z; ψ) = K ∗ avgpool₂(z) + b            (2×…×2 average pooling first)

``K`` has shape ``(C_out, C_in, k, …)`` (``k`` odd, 'same' zero padding); ``ψ = (K, b)`` is a
terminal-like parameter, as the learned lift's ``φ`` is: it enters no Hamiltonian, its gradient is
``∇_ψ J = −J_ψCᵀ p_0 + α_c ψ`` with ``p_0`` the next block's first co-state, and the co-state
crosses the connective backward as ``p_N = J_zCᵀ p_0`` (its ``vjp``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .conv import conv

__all__ = ["Connective", "DOWNSAMPLES"]

#: How a connective changes the resolution: not at all, by a stride-2 convolution, by 2× pooling.
DOWNSAMPLES = (None, "stride", "pool")


@dataclasses.dataclass(frozen=True)
class Connective:
    """A connective layer (formulas in the module doc): a learned ``kernel``-wide convolution,
    odd ``kernel`` (1: pointwise, a 1×1 convolution), with ``downsample`` one of
    :data:`DOWNSAMPLES`."""

    kernel: int = 1
    downsample: str | None = None

    def __post_init__(self):
        k = self.kernel
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0:
            raise ValueError(f"Connective kernel must be an odd positive integer, got {k!r}")
        if self.downsample not in DOWNSAMPLES:
            raise ValueError(f"Connective downsample must be one of {list(DOWNSAMPLES)}, got {self.downsample!r}")

    def out_space(self, space: tuple) -> tuple:
        """The spatial shape after this connective; refuses an axis it cannot halve."""
        space = tuple(space)
        if self.downsample is None:
            return space
        if not space:
            raise ValueError(f"Connective(downsample={self.downsample!r}) halves spatial axes, but the "
                             "states are vectors: use downsample=None")
        if any(n % 2 for n in space):
            raise ValueError(f"Connective(downsample={self.downsample!r}) halves every spatial axis, but "
                             f"the states have spatial shape {space}: use even sizes (or downsample=None)")
        return tuple(n // 2 for n in space)

    def init(self, key, c_in: int, c_out: int, ndim: int, scale: float = 1.0) -> dict:
        """``ψ = (K (c_out, c_in, k, …), b = 0)``, ``K`` with standard deviation ``scale/√(c_in kⁿ)``."""
        if ndim == 0 and self.kernel != 1:
            raise ValueError("vector states have no spatial axes: use Connective(kernel=1)")
        K = scale / (c_in * self.kernel**ndim) ** 0.5 * jax.random.normal(key, (c_out, c_in) + (self.kernel,) * ndim)
        return {"K": K, "b": jnp.zeros((c_out,))}

    def __call__(self, z, params):
        """``C(z; ψ)`` for ``z (S, C_in, *space)`` (module doc)."""
        K, b = params["K"], params["b"]
        ndim = z.ndim - 2
        if ndim == 0:
            return z @ K.T + b
        if self.downsample == "pool":
            z = _avgpool2(z)
        y = conv(z, K)
        if self.downsample == "stride":
            y = y[(slice(None), slice(None)) + (slice(None, None, 2),) * ndim]
        return y + b.reshape(b.shape + (1,) * ndim)


def _avgpool2(z):
    """The mean over non-overlapping 2×…×2 windows of the spatial axes of ``z (S, C, *space)``."""
    shape = z.shape[:2]
    for n in z.shape[2:]:
        shape += (n // 2, 2)
    return jnp.mean(z.reshape(shape), axis=tuple(range(3, 2 + 2 * (z.ndim - 2), 2)))
