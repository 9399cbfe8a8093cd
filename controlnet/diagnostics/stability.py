"""Stability and invertibility of the layers and of the whole flow.

Per layer the residual branch is ``g_k(z) = h f(z, θ_k)`` and ``Ψ_h = id + g_k`` (Euler). By
Behrmann et al. ("Invertible residual networks", ICML 2019) the layer is invertible when
``h·Lip(f(·, θ_k)) < 1``. Two estimates of ``Lip(f(·, θ))``:

* :func:`lipschitz_bound`, an *upper* bound from the weights, which the field itself gives
  (:meth:`controlnet.VectorField.lipschitz_bound`), e.g. ``Lip(σ(Wz+b)) ≤ L_σ ‖W‖₂``,
  ``Lip(Wσ(z)+b) ≤ ‖W‖₂ L_σ``, ``Lip(Bσ(Az+a)) ≤ ‖B‖₂ L_σ ‖A‖₂`` (``L_σ`` the Lipschitz
  constant of the activation); for the convolutional fields ``Lip(σ(K∗z+b)) ≤ L_σ ‖K‖₂``,
  ``Lip(−Kᵀσ(K∗z+b)) ≤ L_σ ‖K‖₂²``, ``Lip(σ((K−Kᵀ)∗z+b)) ≤ L_σ ‖K−Kᵀ‖₂``, with the operator
  norm on the states' spatial shape estimated by power iteration
  (:func:`controlnet.conv_spectral_norm`; it converges to the norm from below, so this bound is
  an estimate, not a certificate). A field without a bound returns ``None``;
* :func:`jacobian_norms`, the local constant along the data, ``max_i ‖∂_z f(z_{i,k}, θ_k)‖₂``
  (a *lower* bound of the global one; any vector field; by power iteration with
  ``jvp``/``vjp`` for states with spatial axes, whose Jacobians are not formed).

Forward Euler is stable for ``ż = J z`` when ``|1 + hλ| ≤ 1`` for every eigenvalue ``λ`` of
``J``: :func:`jacobian_eigenvalues` gives ``λ`` of ``∂_z f(z_{i,k}, θ_k)`` along the trajectories.

:func:`flow_lipschitz` estimates ``Lip`` of the flow map ``z_0 ↦ z_N``: from below by
``max_i ‖∂z_N/∂z_0(z_{i,0})‖₂`` and from above by ``Π_k Lip(Ψ_h(·, θ_k))`` with
``Lip(Ψ_h) ≤ 1 + hL`` (Euler), ``≤ Σ_{j≤4} (hL)^j/j!`` (RK4), ``≤ e^{hL}`` (other integrators).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from ..activations import ACTIVATION_LIPSCHITZ
from ..integrators import RK4, Euler
from ..state import final_state, forward

__all__ = [
    "ACTIVATION_LIPSCHITZ",
    "lipschitz_bound",
    "jacobian_norms",
    "invertibility",
    "jacobian_eigenvalues",
    "euler_stable",
    "flow_lipschitz",
]

def _spectral(M):
    return jnp.linalg.norm(M, ord=2, axis=(-2, -1))


@functools.partial(jax.jit, static_argnums=(0, 2))
def lipschitz_bound(dynamics, theta, space=None):
    """Upper bound of ``Lip(f(·, θ_k))`` per layer from the weights, shape ``(N,)``: the field's
    :meth:`~controlnet.VectorField.lipschitz_bound` for every layer.

    A ``ValueError`` for a field without one (use :func:`jacobian_norms`). ``space``: the
    states' spatial shape, needed by the convolutional fields (e.g. ``problem.state_shape[1:]``).
    """
    bounds = jax.vmap(lambda th: dynamics.lipschitz_bound(th, space))(theta)
    if bounds is None:
        raise ValueError(f"no weight bound for {type(dynamics).__name__} (its lipschitz_bound method gives "
                         "none); use jacobian_norms (the local Lipschitz constant along the data)")
    return bounds


def _power_norms(problem, theta, zs, iters=30):
    """``‖∂_z f(z_{i,k}, θ_k)‖₂`` per layer and sample, shape ``(N, S)``, by ``iters`` power
    iterations on ``JᵀJ`` with ``jvp`` and ``vjp`` (no Jacobian formed)."""
    f = problem.dynamics

    def one(z, th, key):
        lin = lambda v: jax.jvp(lambda x: f(x, th), (z,), (v,))[1]  # noqa: E731
        vjp = jax.vjp(lambda x: f(x, th), z)[1]
        v = jax.random.normal(key, z.shape, z.dtype)

        def body(_, v):
            u = vjp(lin(v))[0]
            return u / jnp.linalg.norm(u)

        v = jax.lax.fori_loop(0, iters, body, v / jnp.linalg.norm(v))
        return jnp.linalg.norm(lin(v))

    S = zs.shape[1]
    keys = jax.random.split(jax.random.PRNGKey(0), S)
    return jax.vmap(lambda z, th: jax.vmap(lambda zi, k: one(zi, th, k))(z, keys))(zs[:-1], theta)


def _jacobians(problem, theta, zs):
    """``∂_z f(z_{i,k}, θ_k)`` for every layer and sample, shape ``(N, S, d, d)``."""
    f = problem.dynamics
    jac = jax.jacfwd(lambda z, th: f(z, th))
    per_layer = jax.vmap(lambda z, th: jax.vmap(lambda zi: jac(zi, th))(z))
    return per_layer(zs[:-1], theta)


@jax.jit
def jacobian_norms(problem, theta, zs=None):
    """``max_i ‖∂_z f(z_{i,k}, θ_k)‖₂`` per layer, shape ``(N,)`` (states recomputed if absent)."""
    zs = forward(problem, theta) if zs is None else zs
    if zs.ndim > 3:  # states with spatial axes
        return jnp.max(_power_norms(problem, theta, zs), axis=1)
    return jnp.max(_spectral(_jacobians(problem, theta, zs)), axis=1)


@jax.jit
def invertibility(problem, theta, zs=None) -> dict:
    """Per layer ``h·Lip`` from the weight bound (if available) and from the data, and the
    verdict ``invertible = h·Lip_bound < 1`` (Behrmann et al.; certified only by the bound)."""
    h = problem.h
    out = {"h_lip_local": h * jacobian_norms(problem, theta, zs)}
    try:
        bound = h * lipschitz_bound(problem.dynamics, theta, problem.state_shape[1:] or None)
    except ValueError:
        return out
    out["h_lip_bound"] = bound
    out["invertible"] = bound < 1.0
    return out


@jax.jit
def jacobian_eigenvalues(problem, theta, zs=None):
    """Eigenvalues ``λ`` of ``∂_z f(z_{i,k}, θ_k)``, complex, shape ``(N, S, d)``."""
    zs = forward(problem, theta) if zs is None else zs
    return jnp.linalg.eigvals(_jacobians(problem, theta, zs))


@jax.jit
def euler_stable(eigenvalues, h, tol: float = 1e-12):
    """Per layer: ``|1 + hλ| ≤ 1`` for every eigenvalue of that layer (leading axis), and the
    worst amplification ``max |1 + hλ|``. Returns ``(stable (N,), amplification (N,))``."""
    amp = jnp.abs(1.0 + h * eigenvalues)
    worst = jnp.max(amp.reshape(amp.shape[0], -1), axis=1)
    return worst <= 1.0 + tol, worst


def _step_bound(integrator, hL):
    if isinstance(integrator, Euler):
        return 1.0 + hL
    if isinstance(integrator, RK4):
        return sum(hL**j / math.factorial(j) for j in range(5))
    return jnp.exp(hL)


@jax.jit
def flow_lipschitz(problem, theta, z0=None) -> dict:
    """Lipschitz estimates of the flow map ``z_0 ↦ z_N`` (module doc).

    Returns ``local``: ``max_i ‖∂z_N/∂z_0‖₂`` over the initial states ``z0`` (default ``λ1(x)``),
    and, for the built-in vector fields, ``bound``: ``Π_k Lip(Ψ_h(·, θ_k))``.
    """
    z0 = problem.z0() if z0 is None else z0
    flow = lambda z: final_state(problem, theta, z[None])[0]  # noqa: E731
    J = jax.vmap(jax.jacfwd(flow))(z0)
    out = {"local": jnp.max(_spectral(J))}
    try:
        L = lipschitz_bound(problem.dynamics, theta)
    except ValueError:
        return out
    out["bound"] = jnp.prod(_step_bound(problem.integrator, problem.h * L))
    return out
