"""The state equation, forward in time: ``z_0 = λ1(x)``, ``z_{k+1} = Ψ_h(z_k, θ_k)``.

One forward pass serves every solver (gradient descent, MSA, the diagnostics).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["forward", "final_state"]


def forward(problem, theta, z0=None):
    """All states ``z_0..z_N``, shape ``(N+1, S, d)``, by ``lax.scan`` over layers.

    ``theta`` is the per-layer pytree with leading axis ``N``; ``z0`` defaults to ``λ1(x)``.
    """
    z0 = problem.z0() if z0 is None else z0

    def layer(z, th):
        z_next = problem.step(z, th)
        return z_next, z_next

    _, zs = jax.lax.scan(layer, z0, theta)
    return jnp.concatenate([z0[None], zs], axis=0)


def final_state(problem, theta, z0=None):
    """Only ``z_N`` (no trajectory kept): the network's output before the read-out."""
    z0 = problem.z0() if z0 is None else z0
    zN, _ = jax.lax.scan(lambda z, th: (problem.step(z, th), None), z0, theta)
    return zN
