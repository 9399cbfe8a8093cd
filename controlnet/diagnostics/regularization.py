"""What regularization does to the control ``θ(t)``, piecewise constant on ``[t_k, t_{k+1})``.

    ‖θ‖_{L²(0,T)}   = ( h Σ_k ‖θ_k‖² )^{1/2}
    ‖θ‖_{L¹(0,T)}   = h Σ_k ‖θ_k‖₁                  (entrywise ℓ¹ inside, as in the cost α₁‖θ‖₁)
    ‖∂_t θ‖_{L²}    = ( Σ_k ‖θ_{k+1} − θ_k‖² / h )^{1/2}

The last one is the H¹ seminorm of the piecewise-linear interpolant of the layer values, so
``½‖∂_tθ‖²`` is exactly the smoothness term ``(1/2h) Σ ‖θ_{k+1} − θ_k‖²`` of the cost.
With an L¹ running cost the optimal control switches off for good after a time ``T*`` (the
*stopping time*): :func:`stopping_time` returns the earliest grid time after which ``θ ≈ 0``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .turnpike import control_norms

__all__ = ["l2_norm", "l1_norm", "time_derivative_norm", "stopping_time", "regularization_summary"]


def _leaves(theta):
    return [leaf.reshape(leaf.shape[0], -1) for leaf in jax.tree_util.tree_leaves(theta)]


@jax.jit
def l2_norm(theta, h):
    """``‖θ‖_{L²(0,T)} = (h Σ_k ‖θ_k‖²)^{1/2}``."""
    return jnp.sqrt(h * jnp.sum(control_norms(theta) ** 2))


@jax.jit
def l1_norm(theta, h):
    """``‖θ‖_{L¹(0,T)} = h Σ_k ‖θ_k‖₁`` (entrywise absolute values summed)."""
    return h * sum(jnp.sum(jnp.abs(leaf)) for leaf in _leaves(theta))


@jax.jit
def time_derivative_norm(theta, h):
    """``‖∂_t θ‖_{L²} = (Σ_{k<N−1} ‖θ_{k+1} − θ_k‖² / h)^{1/2}`` (zero for a single layer)."""
    return jnp.sqrt(sum(jnp.sum((leaf[1:] - leaf[:-1]) ** 2) for leaf in _leaves(theta)) / h)


def stopping_time(theta, h, tol: float = 1e-6) -> float:
    """``T* = k* h`` with ``k*`` the first layer from which ``max_entry |θ_j| ≤ tol`` for every
    ``j ≥ k*``; ``T* = T`` if the last layer is active, ``0`` if the control vanishes everywhere."""
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    leaves = _leaves(theta)
    active = np.any(np.stack([np.max(np.abs(np.asarray(l)), axis=1) > tol for l in leaves]), axis=0)
    idx = np.flatnonzero(active)
    k_star = 0 if idx.size == 0 else int(idx[-1]) + 1
    return float(k_star * h)


def regularization_summary(theta, h, tol: float = 1e-6) -> dict:
    """The four numbers above as floats: ``l2``, ``l1``, ``dt_l2``, ``stopping_time``."""
    return {
        "l2": float(l2_norm(theta, h)),
        "l1": float(l1_norm(theta, h)),
        "dt_l2": float(time_derivative_norm(theta, h)),
        "stopping_time": stopping_time(theta, h, tol),
    }
