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

The linearization of a layer is ``jax.vjp`` of ``(z, θ, w) ↦ (Ψ_h(z, θ), L(z, w))``. When the
states are given (:func:`backward`, :func:`gradient`), each layer is linearized inside the
backward scan, at its state, and the recursion runs layer by layer. :func:`value_and_gradient`
needs no co-state trajectory: it takes one ``jax.vjp`` of the whole forward scan and pulls
``(p_N, −h)`` back through it; JAX's transpose of the scan is the same recursion. Each layer of
that scan is rematerialized (``jax.checkpoint``): the forward pass keeps only the states
``z_k``, and the transposed scan re-linearizes each layer from its state. Evaluating the field
twice is cheaper than writing and reading its residuals (for ``σ(Wz + b)`` both ``σ`` and
``σ'``, two more ``(d, S)`` arrays per layer): 0.94× the time of a gradient step on the
reference problem, 0.70× with RK4, 0.82× for a two-layer field, 0.85-0.91× at widths 8-32
(measured; docs/architecture.md). A field whose evaluation dominates (a convolution) sets
``VectorField.rematerialize = False`` and keeps its residuals instead. ``∇R`` is evaluated for all layers at once, outside the scans.

Like the forward pass (:mod:`controlnet.state`), the scans carry states and co-states in the
vector field's layout (feature-major ``(d, S)`` for dense fields); the public arrays are
``(N+1, S, *shape)``: every formula here holds for any state shape.

A learned lift ``z_0 = λ1(x; φ)`` (:class:`~controlnet.ConvLift`) gets
``∇_φ J = −J_φλ1ᵀ p_0 + ∇_φ(lift cost)``: the co-state ``p_0`` pulled back through the lift.

Memory. :func:`gradient` keeps all states and co-states, ``2 (N+1) S d`` numbers.
:func:`value_and_gradient` keeps no co-state trajectory, and with ``block=B`` residuals only
inside one block of ``B`` layers at a time: the forward pass keeps the states
at the start of every block, the backward pass recomputes a block's linearizations from its first
state (checkpointing), so memory is ``O((N/B + B) S d)`` for one extra forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .problem import Controls, _total, _tracking_sum
from .state import scan_final, forward, from_scan, stack_from_scan, stack_to_scan, scan_step, to_scan

__all__ = ["terminal_costate", "backward", "flow_and_backward", "costates", "gradient",
           "value_and_gradient", "gradient_from_hamiltonian"]

_tree_map = jax.tree_util.tree_map


def terminal_costate(problem, zN, w):
    """``p_N = −∇_z Φ(z_N, w)``."""
    return -jax.grad(problem.terminal)(zN, w)


def _tracking(problem):
    return "tracking" in problem.terms


def _pullback(problem, zT, theta, w):
    """One layer's pull-back at feature-major ``zT (d, S)``: ``jax.vjp`` of
    ``(z, θ, w) ↦ (Ψ_h(z, θ), L(z, w))`` (of ``(z, θ) ↦ Ψ_h(z, θ)`` without tracking);
    :func:`_pull` applies it."""
    if _tracking(problem):
        return jax.vjp(lambda z, th, w: (scan_step(problem, z, th), problem.tracking_cost(from_scan(problem, z), w)),
                       zT, theta, w)[1]
    return jax.vjp(lambda z, th: scan_step(problem, z, th), zT, theta)[1]


def _pull(problem, vjp, p_next):
    """``(∇_z H_k, J_θΨ_kᵀ p_{k+1}, ∇_w H_k or None)`` from a layer's pull-back:
    ``J_zΨᵀp − h∇_zL``, ``J_θΨᵀp``, ``−h∇_wL``."""
    if _tracking(problem):
        return vjp((p_next, -problem.h))
    return (*vjp(p_next), None)


def _flow_vjp(problem, theta, w, z0T):
    """The flow through the layers of ``theta`` from ``z0T (d, S)``, linearized.

    Returns ``(z_n, Σ_k L(z_k, w), pull)``; ``pull(p_n) = (p_0, J_θΨ_kᵀ p_{k+1} per layer,
    Σ_k ∇_w H_k or None)``. It is one ``jax.vjp`` of the forward scan with cotangents
    ``(p_n, −h)``: JAX's transpose of the scan runs the co-state recursion
    ``p_k = J_zΨ_kᵀ p_{k+1} − h∇_z L(z_k, w)`` (the equations :func:`backward` runs layer by
    layer), each layer re-linearized from the state ``z_k`` the forward pass kept (module doc).
    """
    # Module doc: each layer re-linearized from z_k in the backward pass, unless the field keeps
    # its residuals (VectorField.rematerialize).
    remat = jax.checkpoint if problem.dynamics.rematerialize else (lambda f: f)
    if _tracking(problem):

        def flow(z0, th, w):
            @remat
            def layer(z, t):
                return scan_step(problem, z, t), problem.tracking_cost(from_scan(problem, z), w)

            z_n, Ls = jax.lax.scan(layer, z0, th)
            return z_n, jnp.sum(Ls)

        (z_n, track), vjp = jax.vjp(flow, z0T, theta, w)
        return z_n, track, lambda p: vjp((p, -problem.h))

    def flow(z0, th):
        layer = remat(lambda z, t: (scan_step(problem, z, t), None))
        return jax.lax.scan(layer, z0, th)[0]

    z_n, vjp = jax.vjp(flow, z0T, theta)
    return z_n, 0.0, lambda p: (*vjp(p), None)


def _backward_scan(problem, zsT, theta, w, pT):
    """Reverse scan ``p_k = ∇_z H_k`` from ``pT = p_N (d, S)``, each layer linearized at its
    state ``zsT[k] (d, S)`` inside the scan.

    Returns ``(ps (N, d, S), J_θΨ_kᵀ p_{k+1} per layer, Σ_k ∇_w H_k or None)``.
    """

    def layer(p_next, x):
        p, g_th, g_w = _pull(problem, _pullback(problem, *x, w), p_next)
        return p, (p, g_th, g_w)

    _, (ps, g_th, g_w) = jax.lax.scan(layer, pT, (zsT, theta), reverse=True)
    g_w = None if g_w is None else _tree_map(lambda g: g.sum(axis=0), g_w)
    return ps, g_th, g_w


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


def backward(problem, controls, zs):
    """Co-states and the layers' Hamiltonian gradients from the states ``zs (N+1, S, d)``.

    Returns ``(ps, g_theta, g_w)``: ``ps`` of shape ``(N+1, S, *shape)``, ``g_theta = ∇_θ H_k``
    per layer (leading axis ``N``) and ``g_w = Σ_k ∇_w H_k``.
    """
    theta, w = controls.theta, controls.w
    pN = terminal_costate(problem, zs[-1], w)
    psT, pulled_th, pulled_w = _backward_scan(problem, stack_to_scan(problem, zs[:-1]), theta, w,
                                              to_scan(problem, pN))
    ps = jnp.concatenate([stack_from_scan(problem, psT), pN[None]], axis=0)
    return (ps, *_layer_gradients(problem, theta, w, pulled_th, pulled_w))


def flow_and_backward(problem, theta, z0=None):
    """``(zs, backward)``: the states ``z_0..z_N``, shape ``(N+1, S, *shape)``, from ``z0``
    (default ``λ1(x)``; a learned lift needs ``problem.z0(controls.lift)``) by one forward
    pass, and ``backward(w) -> (ps, g_theta, g_w)``, what :func:`backward` returns for
    ``Controls(theta, w)`` and these states, for a read-out ``w`` chosen after the forward pass
    (MSA's Newton read-out).

    The co-state recursion ``p_k = J_zΨ_kᵀ p_{k+1} − h∇_z L(z_k, w)`` is JAX's transpose of the
    forward scan, each layer re-linearized from its state (``jax.checkpoint``, as in
    :func:`value_and_gradient`): ``p_k`` is the cotangent of a zero perturbation ``ε_k`` of
    layer ``k``'s input state, and the tracking term enters as the cotangent
    ``−h∇_z L(z_k, w)`` of the states the scan returns, so ``w`` is needed only at the pull.
    Forward and backward together took 0.80× the time of :func:`controlnet.forward` followed
    by :func:`backward` on the reference problem (paired), with the same numbers.
    """
    z0T = to_scan(problem, problem.z0() if z0 is None else z0)

    def flow(z0, th, eps):
        @jax.checkpoint
        def layer(z, x):
            t, e = x
            z = z + e
            return scan_step(problem, z, t), z

        return jax.lax.scan(layer, z0, (th, eps))

    (zNT, zsT), vjp = jax.vjp(flow, z0T, theta, jnp.zeros((problem.N,) + z0T.shape, z0T.dtype))
    zs = jnp.concatenate([stack_from_scan(problem, zsT), from_scan(problem, zNT)[None]], axis=0)

    def pull(w):
        pN = terminal_costate(problem, zs[-1], w)
        if _tracking(problem):
            # ∇_z L(z_k, w) for every k and Σ_k ∇_w L(z_k, w) from one gradient of Σ_k L.
            track = lambda zs, w: jnp.sum(jax.vmap(problem.tracking_cost, in_axes=(0, None))(zs, w))  # noqa: E731
            dL, dw = jax.grad(track, argnums=(0, 1))(zs[:-1], w)
            states_ct = -problem.h * stack_to_scan(problem, dL)
            pulled_w = _tree_map(lambda g: -problem.h * g, dw)
        else:
            states_ct, pulled_w = jnp.zeros_like(zsT), None
        _, pulled_th, p_eps = vjp((to_scan(problem, pN), states_ct))
        ps = jnp.concatenate([stack_from_scan(problem, p_eps), pN[None]], axis=0)
        return (ps, *_layer_gradients(problem, theta, w, pulled_th, pulled_w))

    return zs, pull


def costates(problem, controls, zs=None):
    """Co-states ``p_0..p_N``, shape ``(N+1, S, *shape)`` (states recomputed if not given)."""
    zs = forward(problem, controls.theta, problem.z0(controls.lift)) if zs is None else zs
    return backward(problem, controls, zs)[0]


def gradient(problem, controls):
    """``(J, ∇J, zs, ps)``: the objective and its gradient by the adjoint method.

    ``∇J`` is a :class:`Controls`; it equals ``jax.grad`` of :func:`controlnet.objective` to
    round-off (tested in float64).
    """
    theta, w = controls.theta, controls.w
    zs = forward(problem, theta, problem.z0(controls.lift))
    phi, pN, dphi_dw = _terminal(problem, zs[-1], w)
    psT, pulled_th, pulled_w = _backward_scan(problem, stack_to_scan(problem, zs[:-1]), theta, w,
                                              to_scan(problem, pN))
    ps = jnp.concatenate([stack_from_scan(problem, psT), pN[None]], axis=0)
    g_theta, g_w = _layer_gradients(problem, theta, w, pulled_th, pulled_w)
    J = _total(problem, controls, phi, _tracking_sum(problem, zs, w))
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


def value_and_gradient(problem, controls, *, block=None):
    """``(J, ∇J, z_N)`` by the adjoint method, keeping no co-state trajectory.

    Without ``block`` the forward pass keeps the states and the backward pass re-linearizes each
    layer from its state as it pulls the co-states back (:func:`_flow_vjp`, module doc). With
    ``block=B`` (a divisor of ``N``) only
    ``z_0, z_B, z_{2B}, …`` are kept from the forward pass; the backward pass re-linearizes each
    block from its first state. Memory
    ``O((N/B + B) S d)`` instead of ``O(N S d)``, for one extra forward pass; ``B ≈ √N`` is the
    smallest. The result equals :func:`gradient` to round-off (tested).
    """
    nb, B = _blocks(problem.N, block)
    theta, w = controls.theta, controls.w
    z0T = to_scan(problem, problem.z0(controls.lift))
    if block is None:
        zNT, track, pull = _flow_vjp(problem, theta, w, z0T)
        zN = from_scan(problem, zNT)
        phi, pN, dphi_dw = _terminal(problem, zN, w)
        p0T, pulled_th, pulled_w = pull(to_scan(problem, pN))
    else:
        theta_b = _tree_map(lambda a: a.reshape((nb, B) + a.shape[1:]), theta)
        zNT, starts = jax.lax.scan(lambda z, th: (scan_final(problem, th, z), z), z0T, theta_b)
        zN = from_scan(problem, zNT)
        phi, pN, dphi_dw = _terminal(problem, zN, w)

        def bwd_block(p_next, inputs):
            z_start, th = inputs
            _, track, pull = _flow_vjp(problem, th, w, z_start)
            p, g_th, g_w = pull(p_next)
            return p, (g_th, g_w, track)

        p0T, (pulled_th, pulled_w, tracks) = jax.lax.scan(bwd_block, to_scan(problem, pN), (starts, theta_b),
                                                          reverse=True)
        pulled_th = _tree_map(lambda a: a.reshape((nb * B,) + a.shape[2:]), pulled_th)
        pulled_w = None if pulled_w is None else _tree_map(lambda g: g.sum(axis=0), pulled_w)
        track = jnp.sum(tracks)
    g_theta, g_w = _layer_gradients(problem, theta, w, pulled_th, pulled_w)
    J = _total(problem, controls, phi, track)
    p0 = None if problem.lift is None else from_scan(problem, p0T)
    return J, _assemble(problem, controls, g_theta, g_w, dphi_dw, p0), zN
