"""The input layer ``λ1``: data ``x ∈ R^{d_in}`` to initial states ``z(0) ∈ R^d``.

``d > d_in`` pads with zeros (an *augmented* network, the data embedded in a higher-dimensional
state space); ``d = d_in`` is the identity (non-augmented).
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["lift"]


def lift(x, d: int):
    """``z(0) = (x, 0) ∈ R^d``: zero-padding of ``x (S, d_in)`` to ``(S, d)``, ``d ≥ d_in``."""
    d_in = x.shape[-1]
    if d < d_in:
        raise ValueError(
            f"state width {d} is smaller than the data dimension {d_in}; "
            f"use a width of at least {d_in}"
        )
    if d == d_in:
        return x
    return jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (d - d_in,), x.dtype)], axis=-1)
