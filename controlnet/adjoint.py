"""The co-state (adjoint) equation, backward in time, and the gradient it gives.

    p_N = −∇_z Φ(z_N, w),        p_k = ∇_z H_k(z_k, p_{k+1}, θ_k),   k = N−1..0

    ∇_{θ_k} J = −∇_θ H_k(z_k, p_{k+1}, θ_k) + ∇_{θ_k} (coupling),
    ∇_w J     = ∇_w Φ(z_N, w) − Σ_k ∇_w H_k(z_k, p_{k+1}, θ_k)

``p_{N,i} = −(1/S)∇ℓ_i``: the co-states of the batch-*summed* Hamiltonian, so that the
identities above hold exactly. One ``jax.grad`` of ``H_k`` per layer gives ``p_k`` and
``∇_θ H_k`` together, so the backward pass costs about one forward pass.

Like the forward pass (:mod:`controlnet.state`), the backward scan carries states and co-states
feature-major, ``(d, S)``; the public arrays are ``(N+1, S, d)``.

Memory. :func:`gradient` keeps all states and co-states, ``2 (N+1) S d`` numbers.
:func:`value_and_gradient` keeps no co-state trajectory, and with ``block=B`` only the states at
the start of every block of ``B`` layers: the backward pass recomputes a block's states from its
first one (checkpointing), so memory is ``O((N/B + B) S d)`` for one extra forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .problem import Controls, _cost_from_states
from .state import final_fm, forward, states_fm, step_fm

__all__ = ["terminal_costate", "backward", "costates", "gradient", "value_and_gradient"]


def terminal_costate(problem, zN, w):
    """``p_N = −∇_z Φ(z_N, w)``."""
    return -jax.grad(problem.terminal)(zN, w)


def _hamiltonian_fm(problem, zT, pT, theta, w):
    """:func:`controlnet.hamiltonian` on feature-major ``zT, pT (d, S)``: the same formula,
    ``Σ_i p_i·Ψ_h(z_i, θ) − h R(θ) − h L(z, w)``."""
    h = problem.h
    return (
        jnp.sum(pT * step_fm(problem, zT, theta))
        - h * problem.running(theta)
        - h * problem.tracking_cost(zT.T, w)
    )


_grad_H_fm = jax.grad(_hamiltonian_fm, argnums=(1, 3, 4))


def _backward_fm(problem, theta, w, zsT, pNT, keep_costates):
    """Reverse scan of the co-state equation over the layers of ``zsT (n+1, d, S)``.

    Returns ``(ps or p_0, ∇_θ H_k per layer, Σ_k ∇_w H_k)``; ``ps`` is ``(n, d, S)`` (``p_0..p_{n−1}``).
    """

    def layer(p_next, inputs):
        z, th = inputs
        p, g_th, g_w = _grad_H_fm(problem, z, p_next, th, w)
        return p, ((p if keep_costates else None), g_th, g_w)

    p0, (ps, g_theta, g_w) = jax.lax.scan(layer, pNT, (zsT[:-1], theta), reverse=True)
    g_w = jax.tree_util.tree_map(lambda g: g.sum(axis=0), g_w)
    return (ps if keep_costates else p0), g_theta, g_w


def backward(problem, controls, zs):
    """Co-states and the layers' Hamiltonian gradients from the states ``zs (N+1, S, d)``.

    Returns ``(ps, g_theta, g_w)``: ``ps`` of shape ``(N+1, S, d)``, ``g_theta = ∇_θ H_k`` per
    layer (leading axis ``N``) and ``g_w = Σ_k ∇_w H_k``.
    """
    w = controls.w
    pN = terminal_costate(problem, zs[-1], w)
    psT, g_theta, g_w = _backward_fm(problem, controls.theta, w, jnp.swapaxes(zs, 1, 2), pN.T, True)
    ps = jnp.concatenate([jnp.swapaxes(psT, 1, 2), pN[None]], axis=0)
    return ps, g_theta, g_w


def costates(problem, controls, zs=None):
    """Co-states ``p_0..p_N``, shape ``(N+1, S, d)`` (states recomputed if not given)."""
    zs = forward(problem, controls.theta) if zs is None else zs
    return backward(problem, controls, zs)[0]


def _assemble(problem, controls, g_theta, g_w, zN):
    """``∇J`` from the Hamiltonian gradients (module doc), plus the coupling term."""
    grad_theta = jax.tree_util.tree_map(lambda g: -g, g_theta)
    if "smoothness" in problem.terms:
        d_coupling = jax.grad(problem.coupling)(controls.theta)
        grad_theta = jax.tree_util.tree_map(lambda a, b: a + b, grad_theta, d_coupling)
    dPhi_dw = jax.grad(problem.terminal, argnums=1)(zN, controls.w)
    grad_w = jax.tree_util.tree_map(lambda a, b: a - b, dPhi_dw, g_w)
    return Controls(grad_theta, grad_w)


def gradient(problem, controls):
    """``(J, ∇J, zs, ps)``: the objective and its gradient by the adjoint method.

    ``∇J`` is a :class:`Controls`; it equals ``jax.grad`` of :func:`controlnet.objective` to
    round-off (tested in float64).
    """
    w = controls.w
    zsT = states_fm(problem, controls.theta, problem.z0().T)
    zs = jnp.swapaxes(zsT, 1, 2)
    pN = terminal_costate(problem, zs[-1], w)
    psT, g_theta, g_w = _backward_fm(problem, controls.theta, w, zsT, pN.T, True)
    ps = jnp.concatenate([jnp.swapaxes(psT, 1, 2), pN[None]], axis=0)
    J = _cost_from_states(problem, controls, zs)
    return J, _assemble(problem, controls, g_theta, g_w, zs[-1]), zs, ps


def _blocks(N, block):
    if block is None:
        return 1, N
    if not isinstance(block, int) or isinstance(block, bool) or not 1 <= block <= N or N % block:
        divisors = [b for b in range(1, N + 1) if N % b == 0]
        near = sorted(divisors, key=lambda b: abs(b * b - N))[:3]
        raise ValueError(f"block must be a divisor of the number of layers N={N}, got {block!r}; "
                         f"e.g. {sorted(near)} (about √N keeps memory lowest)")
    return N // block, block


def value_and_gradient(problem, controls, *, block=None):
    """``(J, ∇J, z_N)`` by the adjoint method, keeping no co-state trajectory.

    With ``block=B`` (a divisor of ``N``) only ``z_0, z_B, z_{2B}, …`` are kept from the forward
    pass; the backward pass recomputes each block's states from its first one. Memory
    ``O((N/B + B) S d)`` instead of ``O(N S d)``, for one extra forward pass; ``B ≈ √N`` is the
    smallest. The result equals :func:`gradient` to round-off (tested).
    """
    nb, B = _blocks(problem.N, block)
    w = controls.w
    h = problem.h
    theta_b = jax.tree_util.tree_map(lambda a: a.reshape((nb, B) + a.shape[1:]), controls.theta)
    tracking = "tracking" in problem.terms

    def fwd_block(z, th):
        if tracking:
            zsT = states_fm(problem, th, z)
            track = jnp.sum(jax.vmap(lambda zt: problem.tracking_cost(zt.T, w))(zsT[:-1]))
            return zsT[-1], (z, track)
        return final_fm(problem, th, z), (z, 0.0)

    zNT, (starts, track) = jax.lax.scan(fwd_block, problem.z0().T, theta_b)
    zN = zNT.T
    pN = terminal_costate(problem, zN, w)

    def bwd_block(p_next, inputs):
        z_start, th = inputs
        zsT = states_fm(problem, th, z_start)
        p, g_th, g_w = _backward_fm(problem, th, w, zsT, p_next, False)
        return p, (g_th, g_w)

    _, (g_theta, g_w) = jax.lax.scan(bwd_block, pN.T, (starts, theta_b), reverse=True)
    g_theta = jax.tree_util.tree_map(lambda a: a.reshape((nb * B,) + a.shape[2:]), g_theta)
    g_w = jax.tree_util.tree_map(lambda g: g.sum(axis=0), g_w)
    run = jnp.sum(jax.vmap(problem.running)(controls.theta)) if problem.terms & {"l2", "l1"} else 0.0
    J = problem.terminal(zN, w) + h * (run + jnp.sum(track)) + problem.coupling(controls.theta)
    return J, _assemble(problem, controls, g_theta, g_w, zN), zN
