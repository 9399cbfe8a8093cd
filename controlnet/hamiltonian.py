"""The Hamiltonian of layer ``k`` and its gradients.

    H_k(z, p, θ) = Σ_i p_i · Ψ_h(z_i, θ)  −  h R(θ)  −  h L(z, w)

summed over the batch (``z, p`` of shape ``(S, d)``). The co-state equation is
``p_k = ∇_z H_k(z_k, p_{k+1}, θ_k)`` and the gradient identity ``∇_{θ_k} J = −∇_θ H_k`` (plus the
explicit coupling terms of ``J``); Pontryagin's principle says an optimal ``θ_k`` maximizes
``H_k(z_k*, p_{k+1}*, ·)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["hamiltonian", "grad_theta", "grad_z", "layer_hamiltonians"]


def hamiltonian(problem, z, p, theta, w):
    """``H_k(z, p, θ)`` for one layer (formula in the module doc)."""
    h = problem.h
    return (
        jnp.sum(p * problem.step(z, theta))
        - h * problem.running(theta)
        - h * problem.tracking_cost(z, w)
    )


def grad_theta(problem, z, p, theta, w):
    """``∇_θ H_k(z, p, θ)``, a pytree shaped like one layer's ``θ``."""
    return jax.grad(hamiltonian, argnums=3)(problem, z, p, theta, w)


def grad_z(problem, z, p, theta, w):
    """``∇_z H_k(z, p, θ)``; at ``p = p_{k+1}`` it is the co-state ``p_k``."""
    return jax.grad(hamiltonian, argnums=1)(problem, z, p, theta, w)


def layer_hamiltonians(problem, zs, ps, theta, w):
    """``H_k(z_k, p_{k+1}, θ_k)`` for every ``k``, shape ``(N,)`` (vmapped over layers)."""
    return jax.vmap(lambda z, p, th: hamiltonian(problem, z, p, th, w))(zs[:-1], ps[1:], theta)
