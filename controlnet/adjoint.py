"""The co-state (adjoint) equation, backward in time, and the gradient it gives.

    p_N = −∇_z Φ(z_N, w),        p_k = ∇_z H_k(z_k, p_{k+1}, θ_k),   k = N−1..0

    ∇_{θ_k} J = −∇_θ H_k(z_k, p_{k+1}, θ_k) + ∇_{θ_k} (coupling),
    ∇_w J     = ∇_w Φ(z_N, w) − Σ_k ∇_w H_k(z_k, p_{k+1}, θ_k)

``p_{N,i} = −(1/S)∇ℓ_i``: the co-states of the batch-*summed* Hamiltonian, so that the
identities above hold exactly.

How ``∇H_k`` is computed. ``H_k = p·Ψ_h(z_k, θ_k) − h R(θ_k) − h L(z_k, w)`` is linear in ``p``,
so its gradients are the pull-back of ``p_{k+1}`` through the layer's linearization plus the
running costs' gradients:

    ∇_z H_k = J_zΨ_kᵀ p_{k+1} − h ∇_z L(z_k, w),    ∇_θ H_k = J_θΨ_kᵀ p_{k+1} − h ∇R(θ_k),
    ∇_w H_k = −h ∇_w L(z_k, w).

One recursion serves every entry point (:func:`_sweep`): one ``jax.vjp`` of the forward scan
over the layers, pulled back from ``p_N``; JAX's transpose of the scan *is* the co-state
recursion ``p_k = J_zΨ_kᵀ p_{k+1} − h∇_z L(z_k, w)``. Its options:

- *keep the co-states*: layer ``k``'s input state gets a zero perturbation ``ε_k``, whose
  cotangent is ``p_k``; without it only ``p_0`` is formed (the cotangent of ``z_0``);
- *the states*: computed by the scan from ``z_0``, or given (:func:`backward`): layer ``k`` is
  then linearized at the given ``z_k`` while the co-state still runs through the scan's carry;
- *tracking*: ``L`` enters as the cotangent ``−h∇_z L(z_k, w)`` of the states the scan returns,
  so the read-out ``w`` is needed only at the pull (MSA chooses it after the forward pass);
  where ``w`` is known before the sweep (gradient descent), ``L(z_k, w)`` is a second output of
  each layer instead, with cotangent ``−h``, so no state trajectory is kept for it;
- *rematerialization*: each layer under ``jax.checkpoint`` keeps only its input state and is
  re-linearized in the backward pass (``VectorField.rematerialize``, the default: evaluating a
  dense field again is cheaper than storing its residuals), or keeps its residuals (a field
  whose evaluation dominates, a convolution);
- *blocks* (:func:`value_and_gradient`, ``block=B``): the same sweep block by block from the
  states kept at every block's start (checkpointing).

``∇R`` is evaluated for all layers at once, outside the scans. The scans carry states and
co-states in the vector field's layout (:mod:`controlnet.state`); the public arrays are
``(N+1, S, *shape)``: every formula here holds for any state shape.

A learned lift ``z_0 = λ1(x; φ)`` (:class:`~controlnet.ConvLift`) gets
``∇_φ J = −J_φλ1ᵀ p_0 + ∇_φ(lift cost)``: the co-state ``p_0`` pulled back through the lift.

Memory. :func:`gradient` keeps all states and co-states, ``2 (N+1) S d`` numbers.
:func:`value_and_gradient` keeps no co-state trajectory, and with ``block=B`` states only at
block starts and inside one block at a time: ``O((N/B + B) S d)`` for one extra forward pass.

:func:`linearize_layer` gives one layer's ``Ψ_h(z_k, θ)`` with its ``jvp`` and ``vjp`` on the
scans' layout, for a solver that works layer by layer (MSA's augmented Hamiltonian).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from .problem import ControlProblem, Controls, objective_from_parts, tracking_sum
from .state import forward, from_scan, scan_final, scan_step, stack_from_scan, stack_to_scan, to_scan

__all__ = ["terminal_costate", "backward", "flow_and_backward", "costates", "gradient",
           "value_and_gradient", "gradient_from_hamiltonian", "linearize_layer", "LayerLinearization", "pullback"]

_tree_map = jax.tree_util.tree_map


def terminal_costate(problem, zN, w):
    """``p_N = −∇_z Φ(z_N, w)``."""
    return -jax.grad(problem.terminal)(zN, w)


class LayerLinearization(NamedTuple):
    """One layer ``Ψ_h(z, θ)`` at ``(z, θ)`` on the scans' layout (:func:`linearize_layer`).

    ``value = Ψ_h(z, θ)``; ``jvp(dz, dθ=None) = J_zΨ dz + J_θΨ dθ``;
    ``vjp(p) = (J_zΨᵀ p, J_θΨᵀ p)``.
    """

    value: Any
    jvp: Callable
    vjp: Callable


def linearize_layer(problem, zT, theta) -> LayerLinearization:
    """``Ψ_h(z, θ)`` and its linearization at states ``zT`` in the scans' layout (``(d, S)`` for
    dense fields, :func:`controlnet.to_scan`) and one layer's ``θ``.

    Differentiable in ``theta`` (``jax.grad`` of a function of ``jvp(dz)`` gives
    ``∇_θ ⟨q, J_zΨ(z, θ) dz⟩``, MSA's augmented Hamiltonian).
    """
    step = lambda z, th: scan_step(problem, z, th)  # noqa: E731
    value, vjp = jax.vjp(step, zT, theta)

    def jvp(dz, dtheta=None):
        dtheta = _tree_map(jnp.zeros_like, theta) if dtheta is None else dtheta
        return jax.jvp(step, (zT, theta), (dz, dtheta))[1]

    return LayerLinearization(value, jvp, vjp)


@jax.custom_jvp
def _linearized_at(z, given):
    """``given`` in value, ``z`` in derivative: a layer evaluated and linearized at a given state
    while the co-state recursion still runs through the scan's carry ``z``."""
    return given


@_linearized_at.defjvp
def _linearized_at_jvp(primals, tangents):
    return primals[1], tangents[0]


def _sweep(problem, theta, z0T, *, states=None, keep_costates=False, w=None):
    """The co-state recursion (module doc): one ``jax.vjp`` of the forward scan from ``z0T``.

    ``states``: the layers' input states ``z_0..z_{n−1}`` in the scans' layout, to linearize
    at (default: computed by the scan). Returns ``(z_n, zs, pull)``: ``zs`` the layers' input
    states when kept (co-states or tracking), and ``pull(p_n, w) -> (p, J_θΨ_kᵀ p_{k+1} per
    layer, Σ_k ∇_w H_k or None, Σ_k L(z_k, w))``, ``p`` being ``p_0..p_{n−1}`` with
    ``keep_costates``, else ``p_0``. With the read-out ``w`` known already (gradient descent),
    tracking is evaluated inside each layer instead, so no state trajectory is kept for it
    (``pull`` then ignores its ``w``).
    """
    tracking = "tracking" in problem.terms
    inside = tracking and w is not None and states is None and not keep_costates
    keep_states = keep_costates or (tracking and not inside) or states is not None
    remat = jax.checkpoint if problem.dynamics.rematerialize else (lambda f: f)
    n = jax.tree_util.tree_leaves(theta)[0].shape[0]
    eps = jnp.zeros((n,) + z0T.shape, z0T.dtype) if keep_costates else None

    def flow(z0, th, eps, w):
        @remat
        def layer(z, x):
            t, e, given = x
            z = z if given is None else _linearized_at(z, given)
            z = z if e is None else z + e
            L = problem.tracking_cost(from_scan(problem, z), w) if inside else None
            return scan_step(problem, z, t), ((z if keep_states else None), L)

        return jax.lax.scan(layer, z0, (th, eps, states))

    (zNT, (zsT, Ls)), vjp = jax.vjp(flow, z0T, theta, eps, w if inside else None)

    def pull(pT, w):
        track, pulled_w, states_ct = 0.0, None, None if zsT is None else jnp.zeros_like(zsT)
        if inside:
            track = jnp.sum(Ls)
            p0T, pulled_th, p_eps, pulled_w = vjp((pT, (states_ct, jnp.full_like(Ls, -problem.h))))
            return p0T, pulled_th, pulled_w, track
        if tracking:
            # Σ_k L(z_k, w), ∇_z L(z_k, w) for every k and Σ_k ∇_w L from one gradient of Σ_k L.
            zs = stack_from_scan(problem, zsT)
            track, (dL, dw) = jax.value_and_grad(_tracking_over, argnums=(1, 2))(problem, zs, w)
            states_ct = -problem.h * stack_to_scan(problem, dL)
            pulled_w = _tree_map(lambda g: -problem.h * g, dw)
        p0T, pulled_th, p_eps, _ = vjp((pT, (states_ct, None)))
        return (p_eps if keep_costates else p0T), pulled_th, pulled_w, track

    return zNT, zsT, pull


def _tracking_over(problem, zs, w):
    """``Σ_k L(z_k, w)`` over the layers' input states ``zs (n, S, *shape)``, every one counted."""
    return jnp.sum(jax.vmap(problem.tracking_cost, in_axes=(0, None))(zs, w))


def _layer_gradients(problem, theta, w, pulled_th, pulled_w):
    """``(∇_θ H_k per layer, Σ_k ∇_w H_k)`` from the pulled-back parts:
    ``∇_θ H_k = J_θΨ_kᵀ p_{k+1} − h ∇R(θ_k)``, with ``∇R`` of all layers at once."""
    g_w = _tree_map(jnp.zeros_like, w) if pulled_w is None else pulled_w
    if not problem.terms & {"l2", "l1"}:
        return pulled_th, g_w
    dR = jax.vmap(jax.grad(problem.running))(theta)
    return _tree_map(lambda a, b: a - problem.h * b, pulled_th, dR), g_w


def _lift_gradient(problem, controls, p0):
    """``∇_φ J = −J_φλ1ᵀ p_0 + ∇_φ(lift cost)`` for a learned lift (``None`` without one);
    ``p0`` sample-major."""
    if problem.lift is None:
        return None
    pulled = jax.vjp(problem.z0, controls.lift)[1](p0)[0]
    cost = jax.grad(problem.lift_cost)(controls.lift)
    return _tree_map(lambda a, b: b - a, pulled, cost)


def _assemble(problem, controls, g_theta, g_w, dphi_dw, p0=None):
    """``∇J`` from the Hamiltonian gradients (module doc), plus the coupling term; ``p0`` (the
    co-state ``p_0``, sample-major) is needed for a learned lift only."""
    grad_theta = _tree_map(lambda g: -g, g_theta)
    if "smoothness" in problem.terms:
        grad_theta = _tree_map(lambda a, b: a + b, grad_theta, jax.grad(problem.coupling)(controls.theta))
    grad_lift = None if p0 is None else _lift_gradient(problem, controls, p0)
    return Controls(grad_theta, _tree_map(lambda a, b: a - b, dphi_dw, g_w), grad_lift)


def gradient_from_hamiltonian(problem, controls, g_theta, g_w, zN, p0=None):
    """``∇J`` (a :class:`Controls`) from the outputs ``g_theta, g_w`` of :func:`backward` and
    the final state ``z_N``: ``∇_{θ_k}J = −∇_θH_k + ∇_{θ_k}(coupling)``,
    ``∇_w J = ∇_wΦ(z_N, w) − Σ_k ∇_wH_k``, and with a learned lift ``∇_φ J = −J_φλ1ᵀ p_0 + …``
    from the co-state ``p0 = p_0`` (module doc)."""
    if problem.lift is not None and p0 is None:
        raise ValueError("this problem's lift is learned: pass the co-state p0 = ps[0] for its gradient")
    dphi_dw = jax.grad(problem.terminal, argnums=1)(zN, controls.w)
    return _assemble(problem, controls, g_theta, g_w, dphi_dw, p0)


def _terminal(problem, zN, w):
    """``(Φ(z_N, w), p_N = −∇_zΦ, ∇_wΦ)`` from one gradient evaluation."""
    phi, (dz, dw) = jax.value_and_grad(problem.terminal, argnums=(0, 1))(zN, w)
    return phi, -dz, dw


def _costates_pull(problem, theta, zs, pull, w, pN=None):
    """``(ps (N+1, S, *shape), ∇_θ H_k per layer, Σ_k ∇_w H_k)`` from a sweep that keeps the
    co-states, with ``p_N = −∇_zΦ(z_N, w)`` unless given."""
    pN = terminal_costate(problem, zs[-1], w) if pN is None else pN
    psT, pulled_th, pulled_w, _ = pull(to_scan(problem, pN), w)
    ps = jnp.concatenate([stack_from_scan(problem, psT), pN[None]], axis=0)
    return (ps, *_layer_gradients(problem, theta, w, pulled_th, pulled_w))


def backward(problem, controls, zs, pN=None):
    """Co-states and the layers' Hamiltonian gradients from the states ``zs (N+1, S, d)``; each
    layer is linearized at its given state. ``pN``: the final co-state, by default
    ``−∇_zΦ(z_N, w)`` (a block inside a larger network gets it from the layers after it).

    Returns ``(ps, g_theta, g_w)``: ``ps`` of shape ``(N+1, S, *shape)``, ``g_theta = ∇_θ H_k``
    per layer (leading axis ``N``) and ``g_w = Σ_k ∇_w H_k``.
    """
    zsT = stack_to_scan(problem, zs[:-1])
    _, _, pull = _sweep(problem, controls.theta, zsT[0], states=zsT, keep_costates=True)
    return _costates_pull(problem, controls.theta, zs, pull, controls.w, pN)


def flow_and_backward(problem, theta, z0=None):
    """``(zs, backward)``: the states ``z_0..z_N``, shape ``(N+1, S, *shape)``, from ``z0``
    (default ``λ1(x)``; a learned lift needs ``problem.z0(controls.lift)``) by one forward
    pass, and ``backward(w) -> (ps, g_theta, g_w)``, what :func:`backward` returns for
    ``Controls(theta, w)`` and these states, for a read-out ``w`` chosen after the forward pass
    (MSA's Newton read-out). One sweep (module doc): the layers linearized in the forward pass
    are pulled back without a second forward pass.
    """
    z0T = to_scan(problem, problem.z0() if z0 is None else z0)
    zNT, zsT, pull = _sweep(problem, theta, z0T, keep_costates=True)
    zs = jnp.concatenate([stack_from_scan(problem, zsT), from_scan(problem, zNT)[None]], axis=0)
    return zs, lambda w: _costates_pull(problem, theta, zs, pull, w)


def costates(problem, controls, zs=None):
    """Co-states ``p_0..p_N``, shape ``(N+1, S, *shape)`` (states recomputed if not given)."""
    zs = forward(problem, controls.theta, problem.z0(controls.lift)) if zs is None else zs
    return backward(problem, controls, zs)[0]


def gradient(problem, controls):
    """``(J, ∇J, zs, ps)``: the objective and its gradient by the adjoint method.

    ``∇J`` is a :class:`Controls`; it equals ``jax.grad`` of :func:`controlnet.objective` to
    round-off (tested in float64).
    """
    zs, pull = flow_and_backward(problem, controls.theta, problem.z0(controls.lift))
    ps, g_theta, g_w = pull(controls.w)
    phi = problem.terminal(zs[-1], controls.w)
    dphi_dw = jax.grad(problem.terminal, argnums=1)(zs[-1], controls.w)
    J = objective_from_parts(problem, controls, phi, tracking_sum(problem, zs, controls.w))
    return J, _assemble(problem, controls, g_theta, g_w, dphi_dw, ps[0]), zs, ps


def _blocks(N, block):
    if block is None:
        return 1, N
    if not isinstance(block, int) or isinstance(block, bool) or not 1 <= block <= N or N % block:
        divisors = [b for b in range(1, N + 1) if N % b == 0]
        near = sorted(divisors, key=lambda b: abs(b * b - N))[:3]
        raise ValueError(f"block must be a divisor of the number of layers N={N}, got {block!r}; "
                         f"e.g. {sorted(near)} (about √N keeps memory lowest)")
    return N // block, block


def _blocked_pull(problem, theta, w, z0T, nb, B):
    """``(z_N, pull)`` with only the states at block starts kept: ``pull(p_N)`` runs the sweep
    block by block, backward, each from its first state (checkpointing)."""
    theta_b = _tree_map(lambda a: a.reshape((nb, B) + a.shape[1:]), theta)
    zNT, starts = jax.lax.scan(lambda z, th: (scan_final(problem, th, z), z), z0T, theta_b)

    def pull(pT, w):
        def bwd_block(p_next, inputs):
            z_start, th = inputs
            p, g_th, g_w, track = _sweep(problem, th, z_start, w=w)[2](p_next, w)
            return p, (g_th, g_w, track)

        p0T, (pulled_th, pulled_w, tracks) = jax.lax.scan(bwd_block, pT, (starts, theta_b), reverse=True)
        pulled_th = _tree_map(lambda a: a.reshape((nb * B,) + a.shape[2:]), pulled_th)
        pulled_w = None if pulled_w is None else _tree_map(lambda g: g.sum(axis=0), pulled_w)
        return p0T, pulled_th, pulled_w, jnp.sum(tracks)

    return zNT, pull


def value_and_gradient(problem, controls, *, block=None):
    """``(J, ∇J, z_N)`` by the adjoint method, keeping no co-state trajectory.

    Without ``block`` one sweep (module doc) from ``z_0``. With ``block=B`` (a divisor of ``N``)
    only ``z_0, z_B, z_{2B}, …`` are kept from the forward pass; the backward pass runs the
    sweep over each block from its first state. Memory ``O((N/B + B) S d)`` instead of
    ``O(N S d)``, for one extra forward pass; ``B ≈ √N`` is the smallest. The result equals
    :func:`gradient` to round-off (tested).
    """
    if not isinstance(problem, ControlProblem):  # a problem of another kind (staged) brings its own
        return problem.value_and_gradient(controls, block=block)
    nb, B = _blocks(problem.N, block)
    theta, w = controls.theta, controls.w
    z0T = to_scan(problem, problem.z0(controls.lift))
    if block is None:
        zNT, _, pull = _sweep(problem, theta, z0T, w=w)
    else:
        zNT, pull = _blocked_pull(problem, theta, w, z0T, nb, B)
    zN = from_scan(problem, zNT)
    phi, pN, dphi_dw = _terminal(problem, zN, w)
    p0T, pulled_th, pulled_w, track = pull(to_scan(problem, pN), w)
    g_theta, g_w = _layer_gradients(problem, theta, w, pulled_th, pulled_w)
    J = objective_from_parts(problem, controls, phi, track)
    p0 = None if problem.lift is None else from_scan(problem, p0T)
    return J, _assemble(problem, controls, g_theta, g_w, dphi_dw, p0), zN


def pullback(problem, theta, z0, *, block=None):
    """``(z_N, pull)``: the forward pass from the given ``z0 (S, *shape)`` and
    ``pull(p_N) -> (p_0, ∇_θH_k per layer)`` from any final co-state ``p_N``, by the sweep of
    :func:`value_and_gradient` (``block`` as there). For a block of layers inside a larger network
    (:mod:`controlnet.stages`), whose ``p_N`` comes from the layers after it; no tracking.
    """
    if "tracking" in problem.terms:
        raise ValueError("pullback has no read-out for the tracking cost: build the problem with tracking=0")
    nb, B = _blocks(problem.N, block)
    z0T = to_scan(problem, z0)
    if block is None:
        zNT, _, pull = _sweep(problem, theta, z0T)
    else:
        zNT, pull = _blocked_pull(problem, theta, None, z0T, nb, B)

    def pull_back(pN):
        p0T, pulled_th, _, _ = pull(to_scan(problem, pN), None)
        return from_scan(problem, p0T), _layer_gradients(problem, theta, None, pulled_th, None)[0]

    return from_scan(problem, zNT), pull_back
