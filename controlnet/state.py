"""The state equation, forward in time: ``z_0 = λ1(x)``, ``z_{k+1} = Ψ_h(z_k, θ_k)``.

One forward pass serves every solver (gradient descent, MSA, the diagnostics).

Layout. The public arrays are sample-major, ``(S, *shape)`` per layer: ``(S, d)`` for vector
states, ``(S, C, L)`` or ``(S, C, H, W)`` for signals and images. Inside the scans the state is
carried in the vector field's own layout, the samples on its ``sample_axis``
(:func:`to_scan`, :func:`from_scan`). Dense fields are carried *feature-major*, ``(d, S)``: the
field's ``W z`` becomes one ``(d, d) × (d, S)`` product, and for the small widths of these
networks (``d`` = 2-3) XLA's CPU matmul is several times faster in that shape than as
``(S, d) × (d, d)`` (measured in ``benchmarks/peers.py``, ``layout`` entry). Convolutional fields
keep samples first (the convolution routine chooses its own internal layout).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["forward", "final_state", "to_scan", "from_scan", "stack_to_scan", "stack_from_scan", "scan_step", "scan_states", "scan_final"]


def to_scan(problem, z):
    """Sample-major states ``z (S, *shape)`` in the scans' layout: the samples moved to the
    field's ``sample_axis`` (``(d, S)`` for dense fields, unchanged for convolutional ones)."""
    return jnp.moveaxis(z, 0, problem.dynamics.sample_axis)


def from_scan(problem, zT):
    """The inverse of :func:`to_scan`: scan-layout states back to ``(S, *shape)``."""
    return jnp.moveaxis(zT, problem.dynamics.sample_axis, 0)


def stack_to_scan(problem, zs):
    """:func:`to_scan` for a stack of states with a leading layer axis, ``(n, S, *shape)``."""
    axis = problem.dynamics.sample_axis
    return jnp.moveaxis(zs, 1, axis if axis < 0 else axis + 1)


def stack_from_scan(problem, zsT):
    """:func:`from_scan` for a stack with a leading layer axis."""
    axis = problem.dynamics.sample_axis
    return jnp.moveaxis(zsT, axis if axis < 0 else axis + 1, 1)


def scan_step(problem, zT, theta):
    """``Ψ_h(z, θ)`` on states in the scans' layout (``(d, S)`` for dense fields).

    With a layout-free integrator (Euler, RK4, ...) the step runs on ``zT`` directly with the
    field's :meth:`~controlnet.dynamics.VectorField.scan_call`; otherwise ``problem.step``
    is vmapped over the samples.
    """
    if problem.integrator.layout_free:
        return problem.integrator.step(problem.dynamics.scan_call, zT, theta, problem.h)
    axis = problem.dynamics.sample_axis
    return jax.vmap(problem.step, in_axes=(axis, None), out_axes=axis)(zT, theta)


def scan_states(problem, theta, z0T):
    """States ``z_0..z_N`` in the scans' layout, shape ``(N+1, d, S)`` for dense fields (or
    ``n+1`` states for ``n`` layers)."""

    def layer(z, th):
        z_next = scan_step(problem, z, th)
        return z_next, z_next

    _, zs = jax.lax.scan(layer, z0T, theta)
    return jnp.concatenate([z0T[None], zs], axis=0)


def scan_final(problem, theta, z0T):
    """Only ``z_N`` in the scans' layout: no trajectory kept."""
    zN, _ = jax.lax.scan(lambda z, th: (scan_step(problem, z, th), None), z0T, theta)
    return zN


def forward(problem, theta, z0=None):
    """All states ``z_0..z_N``, shape ``(N+1, S, *shape)``, by ``lax.scan`` over layers.

    ``theta`` is the per-layer pytree with leading axis ``N``; ``z0`` defaults to ``λ1(x)``
    (a learned lift needs its parameters: pass ``z0 = problem.z0(controls.lift)``).
    """
    z0 = problem.z0() if z0 is None else z0
    return stack_from_scan(problem, scan_states(problem, theta, to_scan(problem, z0)))


def final_state(problem, theta, z0=None):
    """Only ``z_N`` (no trajectory kept): the network's output before the read-out."""
    z0 = problem.z0() if z0 is None else z0
    return from_scan(problem, scan_final(problem, theta, to_scan(problem, z0)))
