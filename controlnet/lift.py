"""The input layer ``λ1``: data ``x`` to initial states ``z(0)``.

Data are ``x (S, C_in, *space)``: ``C_in`` features (or channels) per sample, then any spatial
axes (none for vectors). The state keeps the spatial axes and has ``d`` channels.

* :func:`lift` (no parameters): zero padding of the channel axis, ``z(0) = (x, 0)``. ``d > C_in``
  is an *augmented* network, the data embedded in a higher-dimensional state space; ``d = C_in``
  is the identity (non-augmented).
* :class:`ConvLift` (learned): ``z(0) = K₀ ∗ x + b₀``, a convolution from ``C_in`` to ``d``
  channels (for vectors, ``kernel=1`` and no spatial axes: an affine map ``A₀x + b₀``). Its
  parameters ``φ = (K₀, b₀)`` are a terminal parameter like the read-out's ``w``, the field
  ``lift`` of :class:`~controlnet.problem.Controls`, regularized by ``(α_λ/2)‖φ‖²``; their
  gradient is ``∇_φ J = −J_φλ1ᵀ p_0``, the co-state ``p_0`` pulled back through the lift.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .convolution import check_implementation, conv

__all__ = ["lift", "ConvLift"]


def lift(x, d: int):
    """``z(0) = (x, 0)``: zero-padding of the channel axis 1 of ``x (S, C_in, …)`` to ``d ≥ C_in``."""
    d_in = x.shape[1]
    if d < d_in:
        raise ValueError(
            f"state width {d} is smaller than the data dimension {d_in}; "
            f"use a width of at least {d_in}"
        )
    if d == d_in:
        return x
    pad = jnp.zeros(x.shape[:1] + (d - d_in,) + x.shape[2:], x.dtype)
    return jnp.concatenate([x, pad], axis=1)


@dataclasses.dataclass(frozen=True)
class ConvLift:
    """A learned lift ``z(0) = K₀ ∗ x + b₀`` (module doc); ``kernel`` odd, 1 is pointwise;
    ``implementation`` the convolution's formulation (:mod:`controlnet.convolution`)."""

    kernel: int = 1
    implementation: str = "auto"

    def __post_init__(self):
        if not isinstance(self.kernel, int) or isinstance(self.kernel, bool) or self.kernel < 1 \
                or self.kernel % 2 == 0:
            raise ValueError(f"ConvLift kernel must be an odd positive integer, got {self.kernel!r}")
        check_implementation(self.implementation)

    def init(self, key, x_shape, d: int, scale: float = 1.0) -> dict:
        """``φ = (K₀ (d, C_in, k, …), b₀ = 0)``, ``K₀`` with standard deviation ``scale/√(C_in kⁿ)``;
        ``x_shape`` is one sample's shape ``(C_in, *space)``."""
        c_in, ndim = x_shape[0], len(x_shape) - 1
        if ndim == 0 and self.kernel != 1:
            raise ValueError("a vector input has no spatial axes: use ConvLift(kernel=1)")
        shape = (d, c_in) + (self.kernel,) * ndim
        K = scale / (c_in * self.kernel**ndim) ** 0.5 * jax.random.normal(key, shape)
        return {"K": K, "b": jnp.zeros((d,))}

    def __call__(self, x, params):
        """``K₀ ∗ x + b₀`` for ``x (S, C_in, *space)``, shape ``(S, d, *space)``."""
        K, b = params["K"], params["b"]
        if K.ndim == 2:  # vectors: an affine map
            return x @ K.T + b
        return conv(x, K, self.implementation) + b.reshape(b.shape + (1,) * (K.ndim - 2))
