"""Activation functions ``σ`` by name."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["ACTIVATIONS", "activation", "softplus"]


def softplus(s):
    """``log(1 + e^s)`` as ``max(s, 0) + log1p(exp(−|s|))``, safe for any ``s``."""
    return jnp.maximum(s, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(s)))


ACTIVATIONS = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "softplus": softplus,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda s: s,
}


def activation(name: str):
    """The activation function called ``name``; a clear error for an unknown one."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None
