"""The loss landscape: ``J(θ + a δ₁ + b δ₂, w)`` on a 2-D grid of ``(a, b)``.

``δ₁, δ₂`` are Gaussian directions in ``θ``-space (the read-out ``w`` is held fixed), made
orthogonal *per layer* (Gram-Schmidt on each layer's flattened parameters, which makes them
orthogonal globally too) and normalized per layer, ``‖δ_{j,k}‖ = ‖θ_k‖`` (the layer-wise
normalization of Li et al., "Visualizing the loss landscape of neural nets", 2018), so that
``a = 1`` is a step as large as the layer itself. A layer with ``θ_k = 0`` gets unit-norm
directions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..problem import Controls, objective
from .turnpike import control_norms

__all__ = ["random_directions", "landscape"]


def _flat(theta):
    leaves, treedef = jax.tree_util.tree_flatten(theta)
    N = leaves[0].shape[0]
    flat = jnp.concatenate([leaf.reshape(N, -1) for leaf in leaves], axis=1)

    def unflat(v):
        out, i = [], 0
        for leaf in leaves:
            n = leaf[0].size
            out.append(v[:, i:i + n].reshape(leaf.shape))
            i += n
        return jax.tree_util.tree_unflatten(treedef, out)

    return flat, unflat


@jax.jit
def random_directions(key, theta):
    """Two directions ``(δ₁, δ₂)`` shaped like ``theta``, orthogonal and normalized per layer."""
    flat, unflat = _flat(theta)
    k1, k2 = jax.random.split(key)
    d1 = jax.random.normal(k1, flat.shape, flat.dtype)
    d2 = jax.random.normal(k2, flat.shape, flat.dtype)
    d1 = d1 / jnp.linalg.norm(d1, axis=1, keepdims=True)
    d2 = d2 - jnp.sum(d2 * d1, axis=1, keepdims=True) * d1
    d2 = d2 / jnp.linalg.norm(d2, axis=1, keepdims=True)
    scale = control_norms(theta)
    scale = jnp.where(scale > 0, scale, 1.0)[:, None]
    return unflat(scale * d1), unflat(scale * d2)


def landscape(problem, controls: Controls, d1, d2, alphas, betas):
    """``J(θ + a δ₁ + b δ₂, w)`` for ``a`` in ``alphas`` (rows) and ``b`` in ``betas`` (columns)."""
    return _landscape(problem, controls, d1, d2, jnp.asarray(alphas), jnp.asarray(betas))


@jax.jit
def _landscape(problem, controls, d1, d2, alphas, betas):
    def J(a, b):
        th = jax.tree_util.tree_map(lambda t, u, v: t + a * u + b * v, controls.theta, d1, d2)
        return objective(problem, Controls(th, controls.w))[0]

    return jax.vmap(lambda a: jax.vmap(lambda b: J(a, b))(betas))(alphas)
