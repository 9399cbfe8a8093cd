"""The state equation, forward in time: ``z_0 = λ1(x)``, ``z_{k+1} = Ψ_h(z_k, θ_k)``.

One forward pass serves every solver (gradient descent, MSA, the diagnostics).

Layout. The public arrays are sample-major, ``(S, d)`` per layer. Inside the scan the state is
carried *feature-major*, ``(d, S)``: the vector field (written for one sample, ``(d,)``) is
vmapped over the last axis, so its ``W z`` becomes one ``(d, d) × (d, S)`` product. For the
small widths of these networks (``d`` = 2-3) XLA's CPU matmul is several times faster in that
shape than as ``(S, d) × (d, d)`` (measured in ``benchmarks/peers.py``, ``layout`` entry).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["forward", "final_state"]


def step_fm(problem, zT, theta):
    """``Ψ_h(z, θ)`` on feature-major states ``zT (d, S)``.

    With a layout-free integrator (Euler, RK4, ...) the step runs on ``zT`` directly with the
    field's :meth:`~controlnet.dynamics.VectorField.feature_major`; otherwise ``problem.step``
    is vmapped over the samples.
    """
    if problem.integrator.layout_free:
        return problem.integrator.step(problem.dynamics.feature_major, zT, theta, problem.h)
    return jax.vmap(problem.step, in_axes=(1, None), out_axes=1)(zT, theta)


def states_fm(problem, theta, z0T):
    """States ``z_0..z_N`` feature-major, shape ``(N+1, d, S)`` (or ``(n+1, d, S)`` for ``n`` layers)."""

    def layer(z, th):
        z_next = step_fm(problem, z, th)
        return z_next, z_next

    _, zs = jax.lax.scan(layer, z0T, theta)
    return jnp.concatenate([z0T[None], zs], axis=0)


def final_fm(problem, theta, z0T):
    """Only ``z_N`` feature-major, ``(d, S)``: no trajectory kept."""
    zN, _ = jax.lax.scan(lambda z, th: (step_fm(problem, z, th), None), z0T, theta)
    return zN


def forward(problem, theta, z0=None):
    """All states ``z_0..z_N``, shape ``(N+1, S, d)``, by ``lax.scan`` over layers.

    ``theta`` is the per-layer pytree with leading axis ``N``; ``z0`` defaults to ``λ1(x)``.
    """
    z0 = problem.z0() if z0 is None else z0
    return jnp.swapaxes(states_fm(problem, theta, z0.T), 1, 2)


def final_state(problem, theta, z0=None):
    """Only ``z_N`` (no trajectory kept): the network's output before the read-out."""
    z0 = problem.z0() if z0 is None else z0
    return final_fm(problem, theta, z0.T).T
