"""Stability and invertibility of the layers and of the whole flow.

Per layer the residual branch is ``g_k(z) = h f(z, θ_k)`` and ``Ψ_h = id + g_k`` (Euler). By
Behrmann et al. ("Invertible residual networks", ICML 2019) the layer is invertible when
``h·Lip(f(·, θ_k)) < 1``. Two estimates of ``Lip(f(·, θ))``:

* :func:`lipschitz_bound`, a certified *upper* bound from the weights,
  ``Lip(σ(Wz+b)) ≤ L_σ ‖W‖₂``, ``Lip(Wσ(z)+b) ≤ ‖W‖₂ L_σ``, ``Lip(Bσ(Az+a)) ≤ ‖B‖₂ L_σ ‖A‖₂``
  (``L_σ`` the Lipschitz constant of the activation);
* :func:`jacobian_norms`, the local constant along the data, ``max_i ‖∂_z f(z_{i,k}, θ_k)‖₂``
  (a *lower* bound of the global one; any vector field).

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

from ..dynamics import InnerActivation, OuterActivation, TwoLayer
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

#: Lipschitz constants ``L_σ`` of the activations in :data:`controlnet.ACTIVATIONS`.
ACTIVATION_LIPSCHITZ = {"tanh": 1.0, "relu": 1.0, "softplus": 1.0, "sigmoid": 0.25, "identity": 1.0}


def _spectral(M):
    return jnp.linalg.norm(M, ord=2, axis=(-2, -1))


@functools.partial(jax.jit, static_argnums=0)
def lipschitz_bound(dynamics, theta):
    """Upper bound of ``Lip(f(·, θ_k))`` per layer from the weights (module doc), shape ``(N,)``.

    Only for the built-in vector fields; for others use :func:`jacobian_norms`.
    """
    if not isinstance(dynamics, (InnerActivation, OuterActivation, TwoLayer)):
        raise ValueError(f"no weight bound for {type(dynamics).__name__}; "
                         "use jacobian_norms (the local Lipschitz constant along the data)")
    act = dynamics.activation
    if act not in ACTIVATION_LIPSCHITZ:
        raise ValueError(f"no Lipschitz constant known for activation {act!r}; "
                         f"known: {sorted(ACTIVATION_LIPSCHITZ)}")
    L = ACTIVATION_LIPSCHITZ[act]
    if isinstance(dynamics, TwoLayer):
        return L * _spectral(theta["B"]) * _spectral(theta["A"])
    return L * _spectral(theta["W"])


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
    return jnp.max(_spectral(_jacobians(problem, theta, zs)), axis=1)


@jax.jit
def invertibility(problem, theta, zs=None) -> dict:
    """Per layer ``h·Lip`` from the weight bound (if available) and from the data, and the
    verdict ``invertible = h·Lip_bound < 1`` (Behrmann et al.; certified only by the bound)."""
    h = problem.h
    out = {"h_lip_local": h * jacobian_norms(problem, theta, zs)}
    try:
        bound = h * lipschitz_bound(problem.dynamics, theta)
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
