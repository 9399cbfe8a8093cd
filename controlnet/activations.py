"""Activation functions ``σ`` by name, with their Lipschitz constants and CasADi twins."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["ACTIVATIONS", "ACTIVATION_LIPSCHITZ", "activation", "lipschitz_constant", "casadi_activation",
           "softplus"]


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


#: Lipschitz constants ``L_σ = sup |σ'|`` of the activations in :data:`ACTIVATIONS`.
ACTIVATION_LIPSCHITZ = {"tanh": 1.0, "relu": 1.0, "softplus": 1.0, "sigmoid": 0.25, "identity": 1.0}


def lipschitz_constant(name: str) -> float:
    """``L_σ`` of the activation called ``name`` (:data:`ACTIVATION_LIPSCHITZ`)."""
    activation(name)
    if name not in ACTIVATION_LIPSCHITZ:
        raise ValueError(f"no Lipschitz constant known for activation {name!r}; "
                         f"known: {sorted(ACTIVATION_LIPSCHITZ)}")
    return ACTIVATION_LIPSCHITZ[name]


def casadi_activation(name: str, ca):
    """The activation called ``name`` on CasADi expressions, written with the ``casadi`` module
    ``ca`` passed in (the core does not import CasADi). Overflow-safe as the JAX versions:
    ``softplus`` as above, ``sigmoid(s) = (1 + tanh(s/2))/2`` (no ``exp`` to overflow)."""
    activation(name)
    table = {
        "tanh": ca.tanh,
        "relu": lambda s: ca.fmax(s, 0),
        "softplus": lambda s: ca.fmax(s, 0) + ca.log1p(ca.exp(-ca.fabs(s))),
        "sigmoid": lambda s: 0.5 * (1 + ca.tanh(0.5 * s)),
        "identity": lambda s: s,
    }
    if name not in table:
        raise ValueError(f"activation {name!r} has no CasADi translation; choose one of {sorted(table)}")
    return table[name]
