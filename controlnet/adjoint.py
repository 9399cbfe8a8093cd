"""The co-state (adjoint) equation, backward in time, and the gradient it gives.

    p_N = −∇_z Φ(z_N, w),        p_k = ∇_z H_k(z_k, p_{k+1}, θ_k),   k = N−1..0

    ∇_{θ_k} J = −∇_θ H_k(z_k, p_{k+1}, θ_k) + ∇_{θ_k} (coupling),
    ∇_w J     = ∇_w Φ(z_N, w) − Σ_k ∇_w H_k(z_k, p_{k+1}, θ_k)

``p_{N,i} = −(1/S)∇ℓ_i``: the co-states of the batch-*summed* Hamiltonian, so that the
identities above hold exactly. One ``jax.grad`` of ``H_k`` per layer gives ``p_k`` and
``∇_θ H_k`` together, so the backward pass costs about one forward pass.
"""

from __future__ import annotations

import jax

from .hamiltonian import hamiltonian
from .problem import Controls, _cost_from_states
from .state import forward

__all__ = ["terminal_costate", "backward", "costates", "gradient"]

_grad_H = jax.grad(hamiltonian, argnums=(1, 3, 4))


def terminal_costate(problem, zN, w):
    """``p_N = −∇_z Φ(z_N, w)``."""
    return -jax.grad(problem.terminal)(zN, w)


def backward(problem, controls, zs):
    """Co-states and the layers' Hamiltonian gradients from the states ``zs (N+1, S, d)``.

    Returns ``(ps, g_theta, g_w)``: ``ps`` of shape ``(N+1, S, d)``, ``g_theta = ∇_θ H_k`` per
    layer (leading axis ``N``) and ``g_w = Σ_k ∇_w H_k``.
    """
    w = controls.w
    pN = terminal_costate(problem, zs[-1], w)

    def layer(p_next, inputs):
        z, th = inputs
        p, g_th, g_w = _grad_H(problem, z, p_next, th, w)
        return p, (p, g_th, g_w)

    _, (ps, g_theta, g_w) = jax.lax.scan(layer, pN, (zs[:-1], controls.theta), reverse=True)
    ps = jax.numpy.concatenate([ps, pN[None]], axis=0)
    g_w = jax.tree_util.tree_map(lambda g: g.sum(axis=0), g_w)
    return ps, g_theta, g_w


def costates(problem, controls, zs=None):
    """Co-states ``p_0..p_N``, shape ``(N+1, S, d)`` (states recomputed if not given)."""
    zs = forward(problem, controls.theta) if zs is None else zs
    return backward(problem, controls, zs)[0]


def gradient(problem, controls):
    """``(J, ∇J, zs, ps)``: the objective and its gradient by the adjoint method.

    ``∇J`` is a :class:`Controls`; it equals ``jax.grad`` of :func:`controlnet.objective` to
    round-off (tested in float64).
    """
    zs = forward(problem, controls.theta)
    ps, g_theta, g_w = backward(problem, controls, zs)
    d_coupling = jax.grad(problem.coupling)(controls.theta) if "smoothness" in problem.terms else None
    grad_theta = jax.tree_util.tree_map(lambda g: -g, g_theta)
    if d_coupling is not None:
        grad_theta = jax.tree_util.tree_map(lambda a, b: a + b, grad_theta, d_coupling)
    dPhi_dw = jax.grad(problem.terminal, argnums=1)(zs[-1], controls.w)
    grad_w = jax.tree_util.tree_map(lambda a, b: a - b, dPhi_dw, g_w)
    J = _cost_from_states(problem, controls, zs)
    return J, Controls(grad_theta, grad_w), zs, ps
