"""The Method of Successive Approximations (Li, Chen, Tai & E, JMLR 2018), basic and extended.

One iteration from the controls ``(θ^j, w^j)``:

1. forward: states ``z^j`` (``cn.flow_and_backward(θ^j)``, which keeps the layers for step 2);
2. backward: co-states ``p^j`` and ``∇_θ H_k`` (batch-summed ``H``), pulled back after the
   read-out (below), as ``cn.backward`` would give them;
3. for every layer ``k`` at once, a few safeguarded steps of an optax optimizer ascending the
   augmented Hamiltonian from ``θ_k^j`` (:func:`maximize_hamiltonians`), all of ``z, p`` from
   iterate ``j``:

       H̃_k(θ) = H_k(z_k, p_{k+1}, θ) − C_k(θ) − (ρ/2) (1/S) Σ_i (‖r_{1,i}(θ)‖² + ‖r_{2,i}(θ)‖²)

       r_{1,i}(θ) = z_{k+1,i} − Ψ_h(z_{k,i}, θ)                    (state feasibility)
       r_{2,i}(θ) = p̃_{k,i} − ∇_{z_i} H̃ᵢ(z_{k,i}, p̃_{k+1,i}, θ)     (costate feasibility)

   ``H_k = Σ_i p_i·Ψ_h(z_i, θ) − hR(θ) − hL`` is :func:`controlnet.hamiltonian` with the
   batch-summed co-states ``p`` of ``cn.backward``; it *is* the batch average of the per-sample
   Hamiltonians ``H̃ᵢ = p̃ᵢ·Ψ_h(zᵢ, θ)`` with per-sample co-states ``p̃ = S p``
   (``p̃_{N,i} = −∇ℓᵢ``). The penalties are batch averages in that per-sample scale, so ``ρ``
   does not depend on ``S``; ``1/ρ`` acts like a step size. Since ``Ψ_h(z_k, θ^j) = z_{k+1}``,
   ``H_k(θ) = H_k(θ^j) − (1/S) Σ_i p̃_{k+1,i}·r_{1,i}(θ) − h[R(θ) − R(θ^j)]``: the whole
   inner objective is a function of the two residuals, which is how it is computed.
   ``ρ = 0`` is basic MSA (:class:`MSA`), ``ρ > 0`` extended MSA (:class:`ExtendedMSA`); ``ρ``
   may be a number or a schedule ``j ↦ ρ_j``.
   With ``inner="newton"`` the step is Newton's instead, per layer: ``θ_k^j + M_k⁻¹∇H̃_k``,
   ``M_k = −∇²H̃_k(θ_k^j)`` (made positive definite where it is not). At ``θ^j`` both residuals
   vanish, so ``∇²H̃_k = ∇²H_k − ρ mean_i(J₁ᵀJ₁ + J₂ᵀJ₂)`` (``J_m = ∂r_m/∂θ_k``) needs only
   first and second derivatives of ``Ψ_h``: sample moments of size ``P × P`` per layer
   (:func:`inner_hessian`), estimated on a subsample.

Choosing ``ρ``. Li et al.'s convergence result needs ``ρ`` large compared with Lipschitz
constants that grow with the co-states (with ``‖w‖``), so a fixed ``ρ`` that is fast early can
oscillate later. By default :class:`ExtendedMSA` adapts it: an iteration that would raise ``J``
is rejected and doubles ``ρ``; an accepted one lowers ``ρ`` by 10 %, not below ``rho_min``.
The default inner optimizer is gradient ascent with step ``inner_lr/(ρ h²)``, since the
penalties' curvature in ``θ`` is ``ρ h²`` times a data moment: ``1/ρ`` is then literally a step
size.

Speed. The inner gradient ``∇_θ Σ_k H̃_k`` touches every sample of every layer at every inner
step, and the costate residual makes it a second derivative of ``Ψ_h``. For forward Euler with
the library's vector fields (``σ(Wz+b)``, ``Wσ(z)+b``, ``Bσ(Az+a)``) it is computed in closed
form (formulas in :func:`_inner_grad_inner`, :func:`_inner_grad_outer`,
:func:`_inner_grad_two_layer`), with the layers batched and the samples on the *last* axis,
``(N, d, S)``: with states of width 3 that layout is many times faster on CPU than ``(…, S, d)``.
Any other integrator or vector field (the convolutional ones among them) takes the same
gradient by automatic differentiation, one ``jax.jvp`` of the step under one ``jax.grad``
(:func:`_autodiff_value_grad_sums`; ``inner_gradient="autodiff"`` forces it; tests check it
against the closed forms and against ``jax.grad`` of the objective), at about the cost of one
gradient step per inner step.

Couplings between layers, handled explicitly:

- **H¹ smoothness** ``(β/2h) Σ_k ‖θ_{k+1} − θ_k‖²``: a Jacobi sweep. Layer ``k`` maximizes
  ``H̃_k`` minus its share ``C_k(θ) = (β/2h)(‖θ − θ^j_{k−1}‖² + ‖θ^j_{k+1} − θ‖²)`` with both
  neighbours frozen at iterate ``j`` (one term at the ends), whose gradient in ``θ_k`` is exactly
  that of the coupling in ``J``; all layers then move at once.
- **Read-out** ``w`` (a terminal parameter, no layer's control), from the states ``z^j``.
  ``readout="newton"`` (``"auto"``, the default, for small read-outs) first takes a Newton step on the convex
  ``J_w(w) = Φ(z_N^j, w) + h Σ_k L(z_k^j, w)`` (Hessian of size ``(n_out (d+1))²``), safeguarded
  by keeping the best of ``w^j`` and the step lengths 1, ½, ¼ (for a squared-error loss the full
  step *is* the exact ridge least-squares solution), and the co-states are then computed with
  this ``w^{j+1}`` (a Gauss-Seidel order: the co-states belong to the read-out that is kept).
  ``readout="gradient"`` takes one step of ``readout_optimizer`` along ``∇_w J``, simultaneously
  with ``θ``.
- **Tracking** ``h Σ_k L(z_k, w)``: independent of ``θ_k``, it enters the layer problems through
  the co-states (``cn.backward`` puts ``−h∇_z L`` in ``p_k``) and the costate residual (the
  target is ``p̃_k + hS∇_z L(z_k)``, the ``θ``-dependent part of ``∇_z H_k`` being
  ``J_zΨ_h(z_k, θ)ᵀ p_{k+1}``), and the read-out problem ``J_w`` directly.

With ``batch_size`` set, each iteration draws a minibatch without replacement and runs steps
1-3 on it (states and co-states on the batch, as in the paper); the logged ``loss`` is then the
minibatch loss.

Logged every iteration, about the incoming iterate ``j``: ``loss`` (``J``), ``accuracy``,
``grad_norm`` (``‖∇J‖`` over ``θ`` and ``w``, from the same backward pass, so at
``(θ^j, w^{j+1})`` with the Newton read-out); about the move to
``θ^{j+1}``: ``dH = Σ_k [H_k(θ_k^{j+1}) − H_k(θ_k^j)]`` (``z, p`` of iterate ``j``),
``state_residual = Σ_k (1/S) Σ_i ‖r_{1,i}(θ_k^{j+1})‖²`` and ``costate_residual`` likewise with
``r_2`` (both zero at ``θ^j``: they measure how far the update leaves the old trajectory), and
``rho``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

import controlnet as cn
from controlnet.activations import activation
from controlnet.state import stack_to_scan, scan_step

from .minibatch import minibatch
from .trees import tree_norm

__all__ = [
    "MSA",
    "ExtendedMSA",
    "MSAState",
    "LayerData",
    "layer_data",
    "residuals",
    "inner_objective",
    "inner_gradient",
    "maximize_hamiltonians",
    "inner_hessian",
    "has_closed_form_hessian",
    "inner_method",
    "newton_preconditioner",
    "subsample",
    "readout_newton",
    "readout_method",
]


class MSAState(NamedTuple):
    controls: cn.Controls
    readout_state: Any
    key: jax.Array
    iteration: jax.Array
    rho: jax.Array
    lift_state: Any = ()
    #: The inner steps' per-layer scales ``η_k`` where the last iteration left them
    #: (:func:`maximize_hamiltonians`), carried by the extended MSA's ``inner="optax"``;
    #: ``()`` (basic MSA): every iteration starts from 1.
    eta: Any = ()
    #: The inner optimizer's state where the last iteration left it (``inner="optax"`` of the
    #: extended MSA): Adam's moments, a schedule's count, ... carry over, as they would in one
    #: optimizer run; ``()``: every iteration starts the optimizer afresh.
    inner_state: Any = ()


class LayerData(NamedTuple):
    """Iterate ``j`` per layer in the scans' layout: ``z, z_next, p_next, target`` of shape
    ``(N, d, S)`` for dense fields (samples last), ``(N, S, C, *space)`` for convolutional ones.

    ``p_next = p̃_{k+1} = S p_{k+1}``, ``target = S (p_k + h∇_z L(z_k))`` (``= J_zΨ_h(z_k, θ_k^j)ᵀ
    p̃_{k+1}``, the costate residual's target), ``theta`` = ``θ^j`` (for the Jacobi coupling).
    """

    z: Any
    z_next: Any
    p_next: Any
    target: Any
    theta: Any


def layer_data(problem, controls, zs, ps) -> LayerData:
    """:class:`LayerData` from the states and batch-summed co-states ``(N+1, S, *shape)``."""
    S = zs.shape[1]
    zT, pT = stack_to_scan(problem, zs), S * stack_to_scan(problem, ps)  # one transpose each
    t = pT[:-1]
    if "tracking" in problem.terms:
        dL = jax.vmap(jax.grad(problem.tracking_cost), in_axes=(0, None))(zs[:-1], controls.w)
        t = t + problem.h * S * stack_to_scan(problem, dL)
    return LayerData(zT[:-1], zT[1:], pT[1:], t, controls.theta)


def residuals(problem, data: LayerData, theta, method="closed_form"):
    """``(r_1, r_2)`` per layer and sample, shaped like ``data.z`` (module doc); by the closed
    forms where available (``method="closed_form"``), else by ``jax.vjp`` of ``problem.step``."""
    if method == "closed_form" and has_closed_form(problem):
        # The kernel's gradient is unused here, and XLA drops it under jit.
        return _CLOSED_FORM[type(problem.integrator), type(problem.dynamics)](problem, data, theta, 0.0)[:2]

    return _layer_residuals(problem, data, theta)


def _jacobi_coupling(problem, theta, theta_frozen):
    """``C_k(θ_k)`` for every layer, shape ``(N,)``: the H¹ share with neighbours frozen at ``theta_frozen``."""
    N = jax.tree_util.tree_leaves(theta)[0].shape[0]
    if "smoothness" not in problem.terms or N < 2:
        return jnp.zeros(N)
    c = 0.0
    for th, fr in zip(jax.tree_util.tree_leaves(theta), jax.tree_util.tree_leaves(theta_frozen)):
        sq = lambda x: jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1)  # noqa: E731
        left, right = sq(th[1:] - fr[:-1]), sq(fr[1:] - th[:-1])
        c = c + jnp.concatenate([jnp.zeros(1), left]) + jnp.concatenate([right, jnp.zeros(1)])
    return 0.5 * problem.smoothness / problem.h * c


def _params_part(problem, data, theta):
    """``−hR(θ_k) − C_k(θ_k)`` per layer, shape ``(N,)``: the terms of ``H̃_k`` that see no sample."""
    run = jax.vmap(problem.running)(theta) if problem.terms & {"l2", "l1"} else 0.0
    return -problem.h * run - _jacobi_coupling(problem, theta, data.theta)


def _sample_axis(problem) -> int:
    """The samples' axis in :class:`LayerData`'s arrays (after the leading layer axis)."""
    axis = problem.dynamics.sample_axis
    return axis if axis < 0 else axis + 1


def _residual_sums(problem, data, r1, r2):
    """Per layer ``(mean_i p̃⁺·r₁, mean_i ‖r₁‖², mean_i ‖r₂‖²)``, shape ``(N, 3)``."""
    S = r1.shape[_sample_axis(problem)]
    ax = tuple(range(1, r1.ndim))
    return jnp.stack([jnp.sum(data.p_next * r1, ax), jnp.sum(r1**2, ax), jnp.sum(r2**2, ax)], 1) / S


def _sample_part(sums, rho):
    """``−mean_i p̃⁺·r₁ − (ρ/2) mean_i(‖r₁‖² + ‖r₂‖²)`` per layer, from :func:`_residual_sums`."""
    return -sums[:, 0] - 0.5 * rho * (sums[:, 1] + sums[:, 2])


def inner_objective(problem, data: LayerData, theta, rho, method="closed_form"):
    """``H̃_k(θ_k) − C_k(θ_k) − H_k(θ_k^j) − hR(θ_k^j)`` per layer, shape ``(N,)`` (module doc):
    ``−mean_i p̃⁺·r₁ − (ρ/2) mean_i(‖r₁‖²+‖r₂‖²) − hR(θ_k) − C_k(θ_k)``."""
    return _value_sums(problem, data, theta, rho, method)[0]


def _value_sums(problem, data, theta, rho, method):
    """``(v, sums)``: :func:`inner_objective` and the :func:`_residual_sums` at ``θ``."""
    sums = _residual_sums(problem, data, *residuals(problem, data, theta, method))
    return _sample_part(sums, rho) + _params_part(problem, data, theta), sums


def _sigma_derivatives(name, a):
    """``(σ(a), σ'(a), σ''(a))`` elementwise: closed forms for tanh and sigmoid (one
    transcendental per entry), forward mode otherwise."""
    if name == "tanh":
        t = jnp.tanh(a)
        d1 = 1.0 - t * t
        return t, d1, -2.0 * t * d1
    if name == "sigmoid":
        t = jax.nn.sigmoid(a)
        d1 = t * (1.0 - t)
        return t, d1, d1 * (1.0 - 2.0 * t)
    s = activation(name)
    ds = lambda x: jax.jvp(s, (x,), (jnp.ones_like(x),))[1]  # noqa: E731
    return s(a), ds(a), jax.jvp(ds, (a,), (jnp.ones_like(a),))[1]


def _inner_grad_inner(problem, data, theta, rho):
    """Euler, ``f = σ(Wz + b)``; per sample, with ``a = Wz + b``, ``u = σ'(a)⊙p̃⁺``:

        r₁ = z⁺ − z − hσ(a),   r₂ = t − p̃⁺ − hWᵀu,
        e = h(p̃⁺ + ρr₁)⊙σ'(a) + ρh(Wr₂)⊙σ''(a)⊙p̃⁺,
        ∂/∂W = mean_i[e zᵀ + ρh u r₂ᵀ],   ∂/∂b = mean_i e.
    """
    h, W, b = problem.h, theta["W"], theta["b"]
    z, pn = data.z, data.p_next
    s0, s1, s2 = _sigma_derivatives(problem.dynamics.activation, jnp.einsum("ned,nds->nes", W, z) + b[..., None])
    u = s1 * pn
    r1 = data.z_next - z - h * s0
    r2 = data.target - pn - h * jnp.einsum("ned,nes->nds", W, u)
    e = h * (pn + rho * r1) * s1 + rho * h * jnp.einsum("ned,nds->nes", W, r2) * s2 * pn
    S = z.shape[-1]
    gW = (jnp.einsum("nes,nds->ned", e, z) + rho * h * jnp.einsum("nes,nds->ned", u, r2)) / S
    return r1, r2, {"W": gW, "b": jnp.sum(e, -1) / S}


def _inner_grad_outer(problem, data, theta, rho):
    """Euler, ``f = Wσ(z) + b`` (linear in ``θ``, so ``H̃_k`` is quadratic); per sample:

        r₁ = z⁺ − z − h(Wσ(z) + b),   r₂ = t − p̃⁺ − hσ'(z)⊙(Wᵀp̃⁺),
        ∂/∂W = mean_i[h(p̃⁺ + ρr₁)σ(z)ᵀ + ρh p̃⁺(σ'(z)⊙r₂)ᵀ],   ∂/∂b = mean_i h(p̃⁺ + ρr₁).
    """
    h, W, b = problem.h, theta["W"], theta["b"]
    z, pn = data.z, data.p_next
    sz, s1, _ = _sigma_derivatives(problem.dynamics.activation, z)
    r1 = data.z_next - z - h * (jnp.einsum("nde,nes->nds", W, sz) + b[..., None])
    r2 = data.target - pn - h * s1 * jnp.einsum("nde,nds->nes", W, pn)
    q = h * (pn + rho * r1)
    S = z.shape[-1]
    gW = (jnp.einsum("nds,nes->nde", q, sz) + rho * h * jnp.einsum("nds,nes->nde", pn, s1 * r2)) / S
    return r1, r2, {"W": gW, "b": jnp.sum(q, -1) / S}


def _inner_grad_two_layer(problem, data, theta, rho):
    """Euler, ``f = Bσ(Az + a)``; per sample, with ``q = Az + a``, ``v = Bᵀp̃⁺``, ``u = σ'(q)⊙v``:

        r₁ = z⁺ − z − hBσ(q),   r₂ = t − p̃⁺ − hAᵀu,   g = ρh(Ar₂)⊙σ'(q),
        e = σ'(q)⊙Bᵀ(h(p̃⁺ + ρr₁)) + ρh(Ar₂)⊙σ''(q)⊙v,
        ∂/∂A = mean_i[e zᵀ + ρh u r₂ᵀ],   ∂/∂a = mean_i e,   ∂/∂B = mean_i[h(p̃⁺ + ρr₁)σ(q)ᵀ + p̃⁺gᵀ].
    """
    h, A, a, B = problem.h, theta["A"], theta["a"], theta["B"]
    z, pn = data.z, data.p_next
    sq, s1, s2 = _sigma_derivatives(problem.dynamics.activation, jnp.einsum("nmd,nds->nms", A, z) + a[..., None])
    v = jnp.einsum("ndm,nds->nms", B, pn)
    u = s1 * v
    r1 = data.z_next - z - h * jnp.einsum("ndm,nms->nds", B, sq)
    r2 = data.target - pn - h * jnp.einsum("nmd,nms->nds", A, u)
    c = h * (pn + rho * r1)
    Ar2 = rho * h * jnp.einsum("nmd,nds->nms", A, r2)
    e = s1 * jnp.einsum("ndm,nds->nms", B, c) + Ar2 * s2 * v
    S = z.shape[-1]
    gA = (jnp.einsum("nms,nds->nmd", e, z) + rho * h * jnp.einsum("nms,nds->nmd", u, r2)) / S
    gB = (jnp.einsum("nds,nms->ndm", c, sq) + jnp.einsum("nds,nms->ndm", pn, Ar2 * s1)) / S
    return r1, r2, {"A": gA, "a": jnp.sum(e, -1) / S, "B": gB}


_CLOSED_FORM = {
    (cn.Euler, cn.InnerActivation): _inner_grad_inner,
    (cn.Euler, cn.OuterActivation): _inner_grad_outer,
    (cn.Euler, cn.TwoLayer): _inner_grad_two_layer,
}


def has_closed_form(problem) -> bool:
    """Whether :func:`inner_gradient` has a closed form for this integrator and vector field."""
    return (type(problem.integrator), type(problem.dynamics)) in _CLOSED_FORM


def inner_value_and_grad(problem, data: LayerData, theta, rho, method="closed_form"):
    """``(v, g)``: :func:`inner_objective` per layer and its gradient in every ``θ_k`` (closed
    form where available, else autodiff; the sum is separable, so ``g_k`` is layer ``k``'s own)."""
    return _value_grad_sums(problem, data, theta, rho, method)[:2]


def _value_grad_sums(problem, data, theta, rho, method):
    """``(v, g, sums)``: :func:`inner_value_and_grad` and the :func:`_residual_sums` at ``θ``."""
    if method == "closed_form" and has_closed_form(problem):
        r1, r2, g = _CLOSED_FORM[type(problem.integrator), type(problem.dynamics)](problem, data, theta, rho)
        gp = jax.grad(lambda th: jnp.sum(_params_part(problem, data, th)))(theta)
        sums = _residual_sums(problem, data, r1, r2)
        v = _sample_part(sums, rho) + _params_part(problem, data, theta)
        return v, jax.tree_util.tree_map(jnp.add, g, gp), sums

    return _autodiff_value_grad_sums(problem, data, theta, rho)


def _layer_residuals(problem, data, theta):
    """``(r_1, r_2)`` of every layer in the scans' layout: one ``jax.vjp`` of the step per layer."""

    def layer(z, zn, pn, t, th):
        Psi, vjp = jax.vjp(lambda x: scan_step(problem, x, th), z)
        return zn - Psi, t - vjp(pn)[0]

    return jax.vmap(layer)(data.z, data.z_next, data.p_next, data.target, theta)


def _autodiff_value_grad_sums(problem, data, theta, rho):
    """:func:`_value_grad_sums` for any integrator and vector field, by forward over reverse.

    With ``∂r₁/∂θ = −∂_θΨ`` and ``r₂·∂_θ(J_zΨᵀp̃⁺) = ∂_θ(p̃⁺·J_zΨ r₂)``, the gradient of the
    sample part of ``H̃_k`` is, with the residuals held fixed at ``θ``,

        ∇_θ mean_i[(p̃⁺ + ρr₁)·Ψ_h(z, θ) + ρ p̃⁺·J_zΨ_h(z, θ) r₂],

    a ``jax.jvp`` of the step in the direction ``r₂`` (one pass for ``Ψ`` and ``J_zΨ r₂``) under
    one ``jax.grad``. Differentiating the residuals themselves would take the reverse mode of
    ``r₂``'s ``vjp``, which measured several times slower.
    """
    r1, r2 = _layer_residuals(problem, data, theta)
    sums = _residual_sums(problem, data, r1, r2)
    v = _sample_part(sums, rho) + _params_part(problem, data, theta)
    S = r1.shape[_sample_axis(problem)]
    c, q = (data.p_next + rho * r1) / S, rho * data.p_next / S

    def linear(th):
        def layer(z, dz, c, q, th):
            Psi, dPsi = jax.jvp(lambda x: scan_step(problem, x, th), (z,), (dz,))
            return jnp.sum(c * Psi) + jnp.sum(q * dPsi)

        return jnp.sum(jax.vmap(layer)(data.z, r2, c, q, th)) + jnp.sum(_params_part(problem, data, th))

    return v, jax.grad(linear)(theta), sums


def _per_layer(theta):
    """``(flat, unravel)``: every layer's parameters as one row of an ``(N, P)`` array (the
    order of ``ravel_pytree`` of one layer's ``θ_k``), and the map back to the pytree."""
    one = jax.tree_util.tree_map(lambda x: x[0], theta)
    unravel = ravel_pytree(one)[1]
    flat = jax.vmap(lambda th: ravel_pytree(th)[0])(theta)
    return flat, jax.vmap(unravel)


def _block_hessian(fn, theta):
    """Per-layer Hessian blocks ``(N, P, P)`` of ``Σ_k fn(θ)_k`` for ``fn`` separable over layers
    (``fn(θ)_k`` sees only ``θ_k``): ``P`` Hessian-vector products (forward over reverse) whose
    tangent is the same unit vector in every layer, so column ``q`` of every block at once."""
    flat, unravel = _per_layer(theta)
    N, P = flat.shape
    grad = jax.grad(lambda th: jnp.sum(fn(th)))

    def column(e):
        tangent = unravel(jnp.broadcast_to(e, (N, P)))
        return _per_layer(jax.jvp(grad, (theta,), (tangent,))[1])[0]

    return jnp.transpose(jax.vmap(column)(jnp.eye(P, dtype=flat.dtype)), (1, 2, 0))


def _hessian_inner(problem, data, rho):
    """Euler, ``f = σ(Wz + b)``: the samples' part of ``∇²_θ H̃_k`` at ``θ^j``, ``(N, P, P)`` in
    ``ravel_pytree`` order (``W`` row-major, then ``b``). With ``Θ = [W | b]``, ``z̃ = (z, 1)``,
    ``a = Θz̃``, ``α = σ'(a)⊙p̃⁺``, ``β = σ''(a)⊙p̃⁺`` and both residuals zero at ``θ^j``,
    ``∇²H̃ = ∇²(mean_i p̃⁺·hσ(a)) − ρ mean_i(J₁ᵀJ₁ + J₂ᵀJ₂)`` with ``J_m = ∂r_m/∂Θ``:

        ∂r₁_f/∂Θ_ec = −h δ_fe σ'(a_e) z̃_c,    ∂r₂_f/∂Θ_ec = −h(δ_cf α_e + W_ef β_e z̃_c),

    so, over ``(e, c), (e', c')`` (``[c < d]``: a weight, not the bias),

        δ_ee' mean_i(hβ_e − ρh²σ'(a_e)²) z̃_c z̃_c'
        − ρh² mean_i[δ_cc'[c<d] α_e α_e' + W_e'c[c<d] α_e β_e' z̃_c' + W_ec'[c'<d] α_e' β_e z̃_c
                     + (WWᵀ)_ee' β_e β_e' z̃_c z̃_c'].
    """
    h, W, b = problem.h, data.theta["W"], data.theta["b"]
    N, d, S = data.z.shape
    z, pn = data.z, data.p_next
    _, s1, s2 = _sigma_derivatives(problem.dynamics.activation, jnp.einsum("ned,nds->nes", W, z) + b[..., None])
    zt = jnp.concatenate([z, jnp.ones_like(z[:, :1])], 1)  # (N, d+1, S)
    alpha, beta = s1 * pn, s2 * pn
    y = (beta[:, :, None] * zt[:, None]).reshape(N, d * (d + 1), S)  # β_e z̃_c
    wz = ((h * beta - rho * h * h * s1 * s1)[:, :, None] * zt[:, None]).reshape(N, d * (d + 1), S)
    diag = jnp.einsum("nps,ncs->npc", wz, zt).reshape(N, d, d + 1, d + 1) / S
    aa = jnp.einsum("nes,nfs->nef", alpha, alpha) / S
    ab = jnp.einsum("nes,nps->nep", alpha, y).reshape(N, d, d, d + 1) / S  # [e, e', c']
    bb = jnp.einsum("nps,nqs->npq", y, y).reshape(N, d, d + 1, d, d + 1) / S  # [e, c, e', c']
    Wp = jnp.concatenate([W, jnp.zeros_like(W[..., :1])], -1)  # W_ec with W_ed = 0: [c < d]
    eye = jnp.eye(d + 1, dtype=z.dtype).at[d, d].set(0.0)  # δ_cc'[c < d]
    WWt = jnp.einsum("nef,ngf->neg", W, W)
    j2 = (jnp.einsum("nef,ck->necfk", aa, eye)
          + jnp.einsum("nfc,nefk->necfk", Wp, ab)  # W_e'c α_e β_e' z̃_c'
          + jnp.einsum("nek,nfec->necfk", Wp, ab)  # W_ec' α_e' β_e z̃_c
          + WWt[:, :, None, :, None] * bb)
    hess = jnp.einsum("ef,necd->necfd", jnp.eye(d, dtype=z.dtype), diag) - rho * h * h * j2
    return _ravel_order(hess)


def _hessian_outer(problem, data, rho):
    """Euler, ``f = Wσ(z) + b``: the samples' part of ``∇²_θ H̃_k``, ``(N, P, P)`` in
    ``ravel_pytree`` order. ``Ψ_h`` is linear in ``Θ = [W | b]``, so ``∇²H_k = 0``, the residuals
    are affine in ``Θ`` and ``H̃_k`` is a quadratic whose Hessian does not depend on ``Θ``. With
    ``s̃ = (σ(z), 1)``, ``∂r₁_f/∂Θ_ec = −h δ_fe s̃_c`` and ``∂r₂_f/∂W_ec = −h δ_cf σ'(z_f) p̃⁺_e``:

        −ρh² mean_i[δ_ee' s̃_c s̃_c' + δ_cc'[c<d] σ'(z_c)² p̃⁺_e p̃⁺_e'].
    """
    h = problem.h
    N, d, S = data.z.shape
    sz, s1, _ = _sigma_derivatives(problem.dynamics.activation, data.z)
    st = jnp.concatenate([sz, jnp.ones_like(sz[:, :1])], 1)  # (N, d+1, S)
    gram = jnp.einsum("ncs,nks->nck", st, st) / S
    pp = jnp.einsum("ncs,nes,nfs->ncef", s1 * s1, data.p_next, data.p_next) / S  # [c, e, e']
    pp = jnp.concatenate([pp, jnp.zeros_like(pp[:, :1])], 1)  # c = d (the bias): no term
    eye_d, eye_c = jnp.eye(d, dtype=st.dtype), jnp.eye(d + 1, dtype=st.dtype)
    hess = (jnp.einsum("ef,nck->neckf", eye_d, gram).transpose(0, 1, 2, 4, 3)
            + jnp.einsum("ck,ncef->necfk", eye_c, pp))
    return _ravel_order(-rho * h * h * hess)


def _ravel_order(hess):
    """``(N, d, d+1, d, d+1)`` over ``Θ = [W | b]``'s ``(e, c), (e', c')`` → ``(N, P, P)`` in
    ``ravel_pytree``'s order of ``{"W", "b"}``: ``W[e, c]`` at ``e·d + c``, ``b[e]`` at ``d² + e``."""
    N, d = hess.shape[:2]
    hess = hess.reshape(N, d * (d + 1), d * (d + 1))
    e, c = jnp.divmod(jnp.arange(d * (d + 1)), d + 1)
    order = jnp.argsort(jnp.where(c < d, e * d + c, d * d + e))
    return hess[:, order][:, :, order]


def inner_gradient(problem, data: LayerData, theta, rho, method="closed_form"):
    """``∇_θ Σ_k [H̃_k(θ_k) − C_k(θ_k)]`` for all layers (see :func:`inner_value_and_grad`)."""
    return inner_value_and_grad(problem, data, theta, rho, method)[1]


_CLOSED_FORM_HESSIAN = {(cn.Euler, cn.InnerActivation): _hessian_inner, (cn.Euler, cn.OuterActivation): _hessian_outer}


def has_closed_form_hessian(problem) -> bool:
    """Whether :func:`inner_hessian` has a closed form for this integrator and vector field."""
    return (type(problem.integrator), type(problem.dynamics)) in _CLOSED_FORM_HESSIAN


def inner_hessian(problem, data: LayerData, rho, method="closed_form"):
    """Every layer's ``∇²_{θ_k}(H̃_k − C_k)`` at ``θ^j = data.theta``, shape ``(N, P, P)``
    (``ravel_pytree`` order of one layer's ``θ_k``). The samples' part in closed form where
    available (:func:`_hessian_inner`; only at ``θ^j``, where both residuals vanish), else by
    ``P`` Hessian-vector products of :func:`inner_objective`; the parameter terms
    (``−hR − C_k``) always by the latter."""
    theta = data.theta
    if method == "closed_form" and has_closed_form_hessian(problem):
        sample = _CLOSED_FORM_HESSIAN[type(problem.integrator), type(problem.dynamics)](problem, data, rho)
        return sample + _block_hessian(lambda th: _params_part(problem, data, th), theta)
    return _block_hessian(lambda th: inner_objective(problem, data, th, rho, "autodiff"), theta)


def newton_preconditioner(hessian, theta) -> optax.GradientTransformation:
    """The optax transformation ``u ↦ −M_k⁻¹u`` per layer (an ascent step ``M_k⁻¹∇`` from the
    descent direction ``u = −∇`` optax passes): Newton's step on ``H̃_k − C_k`` where it is
    concave, ``M_k = −∇²_k`` (its Cholesky factor exists); elsewhere the modified Newton step
    with ``M_k = −∇²_k + μ_k I``, ``μ_k`` the Gershgorin shift ``max_i(Σ_{j≠i}|M_ij| − M_ii)``
    plus ``1e-6 max_i |M_ii|``, which makes every eigenvalue positive (Nocedal & Wright §3.4).
    ``hessian``: ``(N, P, P)`` from :func:`inner_hessian`; ``theta``: one ``θ_k`` per leading
    index (for the shapes)."""
    M = -hessian
    P = M.shape[-1]
    eye = jnp.eye(P, dtype=M.dtype)
    diag = jnp.diagonal(M, axis1=-2, axis2=-1)
    radius = jnp.sum(jnp.abs(M), -1) - jnp.abs(diag)
    mu = jnp.maximum(jnp.max(radius - diag, -1), 0.0) + 1e-6 * jnp.max(jnp.abs(diag), -1) + jnp.finfo(M.dtype).tiny
    chol = jnp.linalg.cholesky(M)
    shifted = jnp.linalg.cholesky(M + mu[:, None, None] * eye)
    chol = jnp.where(jnp.all(jnp.isfinite(chol), (-2, -1))[:, None, None], chol, shifted)
    _, unravel = _per_layer(theta)

    def update(updates, state, params=None):
        del params
        u = _per_layer(updates)[0]
        return unravel(-jax.vmap(lambda c, v: jax.scipy.linalg.cho_solve((c, True), v))(chol, u)), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def subsample(data: LayerData, key, n, axis: int = -1) -> LayerData:
    """``data`` on every ``s``-th sample, ``s = ⌊S/n⌋``, from a random offset in ``[0, s)``:
    ``⌊S/s⌋`` samples (``n`` to ``2n − 1``), spread over the whole set; all of them if ``n``
    is ``None`` or more than ``S/2``. The Newton step's Hessian is a sample mean, estimated on
    these. A strided slice, so nearly free (a gather of ``n`` random samples cost more than
    the Hessian itself). ``axis``: the samples' axis of the arrays."""
    S = data.z.shape[axis]
    s = 1 if n is None else max(S // n, 1)
    if s == 1:
        return data
    m, r = S // s, jax.random.randint(key, (), 0, s)

    def pick(x):
        x = jnp.moveaxis(x, axis, -1)
        x = x[..., : m * s].reshape(x.shape[:-1] + (m, s))
        return jnp.moveaxis(jax.lax.dynamic_index_in_dim(x, r, axis=-1, keepdims=False), -1, axis)

    return LayerData(*(pick(x) for x in data[:4]), data.theta)


def maximize_hamiltonians(problem, data: LayerData, rho, optimizer, steps, method="closed_form", start=None,
                          eta=None, opt_state=None):
    """``θ^{j+1}``: ``steps`` safeguarded steps of ``optimizer`` ascending ``H̃_k − C_k`` from ``θ^j``.

    The sum over layers is separable (neighbours frozen in ``C_k``), so its gradient holds every
    layer's own gradient and an elementwise optimizer (SGD, Adam, ...) moves every layer on its
    own, all at once. Each step ``u`` of the optimizer is scaled per layer by ``η_k`` (``eta``,
    ``(N,)``; default 1): a layer takes ``θ_k + η_k u_k`` only if its objective does not
    decrease; otherwise it stays and ``η_k`` halves (after a success ``η_k`` grows by 1.5, up
    to 1). So every layer's ``H̃_k − C_k`` is non-decreasing along the inner iterations, whatever
    the optimizer. The extended MSA carries ``η`` from one outer iteration to the next, a trust
    region radius per layer: with one inner step per iteration, a step that is too long for
    the field's curvature (the default step ``inner_lr / (ρ h²)`` assumes an ``O(1)`` data
    moment; a convolution's sums over positions and channels make it far larger) is then
    shortened over the iterations instead of rejected at every one.

    ``start``: the gradient at ``θ^j`` if known; it is ``∇_θ H_k − ∇_{θ_k} C = −∇_{θ_k} J``
    (the penalties are stationary there), which the backward pass has already computed.
    ``opt_state``: the optimizer's state to start from (default ``optimizer.init(θ^j)``); the
    extended MSA passes the one the previous iteration ended with.
    """
    return _maximize(problem, data, rho, optimizer, steps, method, start, eta, opt_state)[0]


def _maximize(problem, data, rho, optimizer, steps, method, start, eta=None, opt_state=None):
    """:func:`maximize_hamiltonians`, the :func:`_residual_sums` at the ``θ`` it returns, and the
    step scales ``η`` and optimizer state it ends with."""
    vg = lambda th: _value_grad_sums(problem, data, th, rho, method)  # noqa: E731
    if start is None:
        v0, g0, sums0 = vg(data.theta)
    else:  # both residuals vanish at θ^j: only the parameter terms remain
        v0, g0 = _params_part(problem, data, data.theta), start
        sums0 = jnp.zeros(v0.shape + (3,), v0.dtype)
    eta0 = jnp.ones_like(v0) if eta is None else jnp.asarray(eta, v0.dtype)

    def scale(u, eta):
        return jax.tree_util.tree_map(lambda x: x * eta.reshape((-1,) + (1,) * (x.ndim - 1)), u)

    def pick(ok, a, b):
        return jax.tree_util.tree_map(lambda x, y: jnp.where(ok.reshape((-1,) + (1,) * (x.ndim - 1)), x, y), a, b)

    def value(th):  # the last step needs no gradient at its candidate
        v, sums = _value_sums(problem, data, th, rho, method)
        return v, None, sums

    def body(carry, evaluate=vg):
        theta, v, g, sums, eta, opt_state = carry
        updates, opt_state = optimizer.update(jax.tree_util.tree_map(jnp.negative, g), opt_state, theta)
        cand = optax.apply_updates(theta, scale(updates, eta))
        vc, gc, sc = evaluate(cand)
        ok = vc >= v
        eta = jnp.where(ok, jnp.minimum(1.5 * eta, 1.0), 0.5 * eta)
        g = g if gc is None else pick(ok, gc, g)
        return pick(ok, cand, theta), jnp.where(ok, vc, v), g, pick(ok, sc, sums), eta, opt_state

    opt_state = optimizer.init(data.theta) if opt_state is None else opt_state
    carry = (data.theta, v0, g0, sums0, eta0, opt_state)
    carry = jax.lax.fori_loop(0, steps - 1, lambda _, c: body(c), carry)
    theta, _, _, sums, eta, opt_state = body(carry, value)
    return theta, sums, eta, opt_state


def _readout_objective(problem, zs):
    """``J_w(w) = Φ(z_N, w) + h Σ_k L(z_k, w)`` with the states frozen."""

    def J_w(w):
        val = problem.terminal(zs[-1], w)
        if "tracking" in problem.terms:
            val = val + problem.h * jnp.sum(jax.vmap(lambda z: problem.tracking_cost(z, w))(zs[:-1]))
        return val

    return J_w


def readout_newton(problem, zs, w):
    """The best of ``w`` and ``w − t H⁻¹∇J_w``, ``t ∈ {1, ½, ¼}`` (``J_w`` in the module doc)."""
    flat, unravel = ravel_pytree(w)
    J_w = _readout_objective(problem, zs)
    f = lambda v: J_w(unravel(v))  # noqa: E731
    g = jax.grad(f)(flat)
    H = jax.hessian(f)(flat)
    if "readout_l2" not in problem.terms:
        # A relative ridge of 1e-10 keeps the solve defined without α_w on separable data.
        H = H + 1e-10 * (jnp.trace(H) / flat.size + 1e-30) * jnp.eye(flat.size, dtype=flat.dtype)
    d = jnp.linalg.solve(H, g)
    cands = jnp.stack([flat, flat - d, flat - 0.5 * d, flat - 0.25 * d])
    vals = jax.vmap(f)(cands)
    vals = jnp.where(jnp.isfinite(vals), vals, jnp.inf)
    return unravel(cands[jnp.argmin(vals)])


def _check(s):
    if s.inner_steps is not None and (not isinstance(s.inner_steps, int) or isinstance(s.inner_steps, bool)
                                      or s.inner_steps < 1):
        raise ValueError(f"inner_steps must be a positive integer, got {s.inner_steps!r}")
    if not float(s.inner_lr) > 0:
        raise ValueError(f"inner_lr must be positive, got {s.inner_lr!r}")
    if s.inner_optimizer is not None and not isinstance(s.inner_optimizer, optax.GradientTransformation):
        raise TypeError("inner_optimizer must be an optax.GradientTransformation (e.g. optax.adam(0.02)) or None")
    if s.inner_gradient not in ("closed_form", "autodiff"):
        raise ValueError(f"inner_gradient must be 'closed_form' or 'autodiff', got {s.inner_gradient!r}")
    if s.inner not in ("auto", "optax", "newton", "ipopt"):
        raise ValueError(f"inner must be 'auto', 'optax' (a few optimizer steps), 'newton' (a Newton step per "
                         f"layer) or 'ipopt' (exact per layer), got {s.inner!r}")
    if s.inner not in ("auto", "optax") and s.inner_optimizer is not None:
        raise ValueError(f"inner_optimizer is the optimizer of inner='optax'; inner={s.inner!r} takes none")
    if s.readout not in ("auto", "newton", "gradient"):
        raise ValueError(f"readout must be 'auto', 'newton' or 'gradient', got {s.readout!r}")
    if s.readout_optimizer is not None and not isinstance(s.readout_optimizer, optax.GradientTransformation):
        raise TypeError("readout_optimizer must be an optax.GradientTransformation or None")
    if s.batch_size is not None and (not isinstance(s.batch_size, int) or s.batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {s.batch_size!r}")
    if s.hessian_samples is not None and (not isinstance(s.hessian_samples, int)
                                          or isinstance(s.hessian_samples, bool) or s.hessian_samples < 1):
        raise ValueError(f"hessian_samples must be a positive integer or None (all samples), "
                         f"got {s.hessian_samples!r}")


#: ``inner="auto"`` takes the Newton step up to this many parameters per layer. Its Hessian
#: costs ``P²`` per sample and its factorization ``P³`` per layer; measured to pay at ``P = 12``
#: (the ring, width 3) and ``P = 30`` (``sin x``, width 5), not measured beyond.
NEWTON_AUTO_MAX_PARAMS = 32
#: ``inner="newton"`` refuses more parameters per layer than this (a ``P × P`` Hessian per layer).
NEWTON_MAX_PARAMS = 1024


def layer_params(problem) -> int:
    """``P``: the number of parameters of one layer's ``θ_k``."""
    theta = jax.eval_shape(lambda: problem.init_controls(jax.random.PRNGKey(0))).theta
    return sum(x.size for x in jax.tree_util.tree_leaves(theta)) // problem.N


def inner_method(s, problem) -> str:
    """The inner maximization solver ``s`` runs on ``problem``: its ``inner``, where ``"auto"`` is
    ``"newton"`` when the Newton step's Hessian has a closed form for the problem
    (:func:`inner_hessian`), a layer has at most :data:`NEWTON_AUTO_MAX_PARAMS` parameters and
    no ``inner_optimizer`` is given, else ``"optax"``. Raises for ``"newton"`` with more than
    :data:`NEWTON_MAX_PARAMS` parameters per layer."""
    if s.inner not in ("auto", "newton"):
        return s.inner
    P = layer_params(problem)
    if s.inner == "newton":
        if P > NEWTON_MAX_PARAMS:
            raise ValueError(f"inner='newton' forms a P x P Hessian for every layer, and a layer here has "
                             f"P = {P} parameters (at most {NEWTON_MAX_PARAMS}); use inner='optax'")
        return "newton"
    closed = s.inner_gradient == "closed_form" and has_closed_form_hessian(problem)
    return "newton" if closed and P <= NEWTON_AUTO_MAX_PARAMS and s.inner_optimizer is None else "optax"


#: ``readout="auto"`` takes the Newton step up to this many read-out parameters (its Hessian is
#: ``n × n``; a flattened read-out of a convolutional state has ``10·C·L + 10``, 12,810 for
#: MNIST-1D at 32 channels, whose Hessian alone would take 0.66 GB).
READOUT_NEWTON_MAX_PARAMS = 2048


def readout_method(s, problem) -> str:
    """How ``s`` updates the read-out on ``problem``: its ``readout``, where ``"auto"`` is
    ``"newton"`` up to :data:`READOUT_NEWTON_MAX_PARAMS` read-out parameters, else ``"gradient"``."""
    if s.readout != "auto":
        return s.readout
    n = (problem.readout_width + 1) * problem.loss.n_out
    return "newton" if n <= READOUT_NEWTON_MAX_PARAMS else "gradient"


def _readout_optimizer(s):
    # Built on use, so that two solvers with equal options compare equal (one compiled step).
    return s.readout_optimizer if s.readout_optimizer is not None else optax.adam(1e-2)


def _lift_optimizer(s):
    # A learned lift is a terminal parameter like w: one optimizer step along ∇_φ J per iteration.
    return s.readout_optimizer if s.readout_optimizer is not None else optax.adam(1e-2)


def _init(s, problem, controls, key, rho0, inner_optimizer=None):
    """The first :class:`MSAState`; ``inner_optimizer``: the optimizer whose state the
    iterations carry (:attr:`MSAState.inner_state`), if any."""
    ro = _readout_optimizer(s).init(controls.w) if readout_method(s, problem) == "gradient" else ()
    lo = _lift_optimizer(s).init(controls.lift) if problem.lift is not None else ()
    dtype = jnp.result_type(float)
    carry = s.name == "emsa" and inner_method(s, problem) == "optax"
    eta = jnp.ones((problem.N,), dtype) if carry else ()
    inner_state = inner_optimizer.init(controls.theta) if carry and inner_optimizer is not None else ()
    return MSAState(controls, ro, key, jnp.zeros((), jnp.int32), jnp.asarray(rho0, dtype), lo, eta, inner_state)


def _step(s, problem, state, rho, optimizer, adapt=None):
    """One MSA iteration (module doc) with penalty ``rho``; ``adapt = (up, down, rho_min)`` or None."""
    key, sub = jax.random.split(state.key)
    batch = minibatch(problem, sub, s.batch_size)
    c0 = state.controls
    zs, backward = cn.flow_and_backward(batch, c0.theta, batch.z0(c0.lift))
    m = cn.metrics(batch, c0, zs)
    # Newton read-out first (Gauss-Seidel): the co-states then belong to the w that is kept.
    readout = readout_method(s, batch)
    c = c0._replace(w=readout_newton(batch, zs, c0.w)) if readout == "newton" else c0
    ps, g_theta, g_w = backward(c.w)

    # ∇J from the same backward pass (the adjoint identities), for grad_norm, read-out and lift.
    grad = cn.gradient_from_hamiltonian(batch, c, g_theta, g_w, zs[-1], ps[0])
    grad_theta, grad_w = grad.theta, grad.w

    data = layer_data(batch, c, zs, ps)
    start = jax.tree_util.tree_map(jnp.negative, grad_theta)
    inner = inner_method(s, batch)
    eta = state.eta
    inner_state = state.inner_state
    if inner == "ipopt":
        from .msa_exact import maximize_exactly  # CasADi only when asked for

        theta = maximize_exactly(batch, data, rho)
        sums = _residual_sums(batch, data, *residuals(batch, data, theta, s.inner_gradient))
    else:
        if inner == "newton":
            hdata = subsample(data, jax.random.fold_in(sub, 1), s.hessian_samples, _sample_axis(batch))
            optimizer = newton_preconditioner(inner_hessian(batch, hdata, rho, s.inner_gradient), c.theta)
        steps = s.inner_steps if s.inner_steps is not None else (1 if inner == "newton" else 3)
        carry = inner == "optax" and not isinstance(state.eta, tuple)  # MSAState.eta
        carry_opt = carry and not isinstance(state.inner_state, tuple)
        theta, sums, eta_end, opt_end = _maximize(batch, data, rho, optimizer, steps, s.inner_gradient, start,
                                                  state.eta if carry else None,
                                                  state.inner_state if carry_opt else None)
        eta = eta_end if carry else state.eta
        inner_state = opt_end if carry_opt else state.inner_state
    ro = state.readout_state
    w = c.w
    if readout == "gradient":
        upd, ro = _readout_optimizer(s).update(grad_w, ro, c.w)
        w = optax.apply_updates(c.w, upd)
    lo, lift = state.lift_state, c.lift
    if batch.lift is not None:
        upd, lo = _lift_optimizer(s).update(grad.lift, lo, c.lift)
        lift = optax.apply_updates(c.lift, upd)

    # H_k(θ') − H_k(θ^j) = −mean_i p̃⁺·r₁(θ') − h[R(θ') − R(θ^j)]  (module doc).
    run = lambda th: jnp.sum(jax.vmap(batch.running)(th)) if batch.terms & {"l2", "l1"} else 0.0  # noqa: E731
    dH = -jnp.sum(sums[:, 0]) - batch.h * (run(theta) - run(c.theta))
    info = {
        "loss": m["loss"],
        "accuracy": m["accuracy"],
        "grad_norm": tree_norm(grad),
        "dH": dH,
        "state_residual": jnp.sum(sums[:, 1]),
        "costate_residual": jnp.sum(sums[:, 2]),
        "rho": jnp.asarray(rho, dtype=m["loss"].dtype),
    }
    rho_next = state.rho
    if adapt is not None:
        up, down, rho_min = adapt
        J_ref = cn.metrics(batch, c, zs)["loss"]  # J(θ^j, w^{j+1}) for Newton, else J(θ^j, w^j)
        J_new = cn.objective_value(batch, cn.Controls(theta, w, lift))
        # Rounding: the same J computed twice may differ in the last bits; a tie is a success.
        # Relative to J: with (1 + |J|) float32 let rises of 1e-5 through at J = 0.01.
        tol = 64 * jnp.finfo(J_ref.dtype).eps * jnp.abs(J_ref)
        accept = jnp.isfinite(J_new) & (J_new <= J_ref + tol)
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), new, old)  # noqa: E731
        theta, w, ro = keep(theta, c.theta), keep(w, c.w), keep(ro, state.readout_state)
        lift, lo = keep(lift, c.lift), keep(lo, state.lift_state)
        inner_state = keep(inner_state, state.inner_state)
        rho_next = jnp.where(accept, jnp.maximum(rho * down, rho_min), jnp.minimum(rho * up, 1e12))
        rho_next = rho_next.astype(state.rho.dtype)
        info["accepted"] = accept.astype(m["loss"].dtype)
    new = MSAState(cn.Controls(theta, w, lift), ro, key, state.iteration + 1, rho_next, lo, eta, inner_state)
    return new, info


@dataclasses.dataclass(frozen=True)
class ExtendedMSA:
    """Extended MSA: ascend the augmented Hamiltonian ``H̃_k`` (module doc) for every layer at once.

    Args:
        rho: penalty ``ρ > 0``: the initial value, or a schedule ``j ↦ ρ_j`` (any callable of
            the outer iteration count, e.g. ``optax.linear_schedule(20.0, 5.0, 50)``).
        adaptive: with a numeric ``rho``, adapt it to the loss: an iteration whose
            ``J(θ^{j+1}, w^{j+1})`` exceeds ``J(θ^j, w)`` is rejected (``θ`` stays, ``ρ ×= 2``),
            an accepted one lowers ``ρ ×= 0.9`` down to ``rho_min``. One extra forward pass; with
            the Newton read-out ``J`` then never increases (``w^{j+1}`` is kept either way, and
            it lowers ``J``). ``info["accepted"]`` says which; ``dH`` and the residuals
            describe the proposed move either way.
        rho_min: the floor of the adaptive ``ρ``.
        inner_steps: steps on ``H̃`` per iteration; default (``None``) 1 Newton step, or 3 optax
            steps. An optax step evaluates ``H̃``'s gradient over every layer and sample (about
            half a gradient step of work), so more steps make more progress per iteration but
            fewer iterations per second. At equal wall time, 3 optax steps ended at or below 10
            on all four problems and five seeds of ``benchmarks/inner_steps.py`` (median ``J``
            ratio 0.55-0.98); 2 steps failed twice on the spiral, 1 step often. Newton steps
            after the first reuse its Hessian (with the new gradient); 2 were no better than 1.
        inner_optimizer: the optax optimizer of ``"optax"``'s steps. Default (``None``):
            gradient ascent with step ``inner_lr / (ρ_j h²)``, scaled to the penalties, whose
            curvature in ``θ`` is ``ρ h²`` times an ``O(1)`` data moment.
        inner_lr: the dimensionless step of the default inner optimizer.
        carry_inner_state: ``"optax"``'s optimizer state (Adam's moments, a schedule's step
            count) carries from one iteration to the next, as in one run of the optimizer
            (default); ``False`` starts it afresh every iteration, so that Adam's first step,
            ``lr·sign(g)`` elementwise, is the only kind it ever takes with one inner step.
            Since the inner gradient at ``θ^j`` is ``−∇_θ J``, one carried Adam step per
            iteration is an Adam step on ``J`` that the augmented Hamiltonian and the ``J`` test
            may shorten or reject.
        inner_gradient: ``"closed_form"`` (default; falls back to autodiff where no closed form
            exists) or ``"autodiff"``.
        inner: how every layer's ``H̃_k − C_k`` is maximized:

            - ``"auto"`` (default): ``"newton"`` where its Hessian has a closed form (Euler,
              ``σ(Wz+b)`` or ``Wσ(z)+b``), a layer has at most 32 parameters (width 5) and no
              ``inner_optimizer`` is given, else ``"optax"`` (:func:`inner_method`);
            - ``"optax"``: ``inner_steps`` safeguarded optimizer steps, all layers at once;
            - ``"newton"``: a safeguarded Newton step per layer (:func:`inner_hessian`,
              :func:`newton_preconditioner`) with the Hessian at ``θ^j`` on
              ``hessian_samples`` of the samples. Closed form for ``σ(Wz+b)`` and ``Wσ(z)+b``
              with Euler (on the latter ``H̃_k`` is quadratic, so the step is its maximum); other
              fields take ``P`` Hessian-vector products (``P`` parameters per layer). Its cost
              grows as ``P²`` per sample, so it suits narrow layers: on the reference ring it
              reaches ``J <= 0.05`` in 24-34 iterations from three starts against 34-58 for
              ``"optax"``, in 0.47-0.60× the wall time (``benchmarks/msa_cost.py``); on the
              spiral (two-layer field, ``P = 80``, by autodiff) it is far slower, hence
              ``"auto"``;
            - ``"ipopt"``: to IPOPT's tolerance with CasADi (:mod:`solvers.msa_exact`; small
              problems, smooth ``R``).
        hessian_samples: the Newton step's Hessian is a sample mean; it is estimated on every
            ``⌊S/n⌋``-th sample from a random offset (:func:`subsample`; ``n`` to ``2n − 1``
            samples, all for ``None``), the gradient always on all. On the reference ring 100 to
            all 1,000 samples took the same number of iterations within ±5; 128 (142 samples
            there) ended lower than 256 at equal wall time on the rings and ``sin x``.
        readout: ``"newton"`` or ``"gradient"``: how ``w`` is updated (module doc); ``"auto"``
            (default) is Newton's step up to :data:`READOUT_NEWTON_MAX_PARAMS` read-out
            parameters, else the gradient step (:func:`readout_method`).
        readout_optimizer: optax optimizer for ``readout="gradient"`` (default Adam, 1e-2).
        batch_size: minibatch size (default: full batch).
    """

    rho: Any = 5.0
    adaptive: bool = True
    rho_min: float = 1.0
    inner_steps: int | None = None
    inner_optimizer: Any = None
    inner_lr: float = 0.5
    carry_inner_state: bool = True
    inner_gradient: str = "closed_form"
    inner: str = "auto"
    readout: str = "auto"
    readout_optimizer: Any = None
    batch_size: int | None = None
    hessian_samples: int | None = 128
    name: ClassVar[str] = "emsa"

    def __post_init__(self):
        _check(self)
        if not callable(self.rho) and not float(self.rho) > 0:
            raise ValueError(f"rho must be positive for extended MSA, got {self.rho!r}; use MSA for rho = 0")
        if not float(self.rho_min) > 0:
            raise ValueError(f"rho_min must be positive, got {self.rho_min!r}")
        if not isinstance(self.carry_inner_state, bool):
            raise TypeError(f"carry_inner_state must be True or False, got {self.carry_inner_state!r}")

    def rho_at(self, state):
        """``ρ_j`` for the state's iteration: the schedule's value, else the (adapted) state's."""
        return self.rho(state.iteration) if callable(self.rho) else state.rho

    def _inner_optimizer(self, problem, rho):
        if self.inner_optimizer is not None:
            return self.inner_optimizer
        return optax.sgd(self.inner_lr / (rho * problem.h**2))

    def init(self, problem, controls, *, key):
        rho0 = 0.0 if callable(self.rho) else self.rho
        carried = self._inner_optimizer(problem, 1.0) if self.carry_inner_state else None
        return _init(self, problem, controls, key, rho0, carried)

    def step(self, problem, state):
        rho = self.rho_at(state)
        opt = self._inner_optimizer(problem, rho)
        adapt = (2.0, 0.9, self.rho_min) if self.adaptive and not callable(self.rho) else None
        return _step(self, problem, state, rho, opt, adapt)


@dataclasses.dataclass(frozen=True)
class MSA:
    """Basic MSA: ascend ``H_k`` itself (``ρ = 0``); options as in :class:`ExtendedMSA`.

    The inner maximization starts from ``θ^j`` and takes ``inner_steps`` optimizer steps (default
    Adam with learning rate ``inner_lr``), so the argmax is approximate; with more steps or a
    larger inner learning rate it approaches the exact argmax, which is what makes basic MSA
    stall or diverge (the failure E-MSA fixes). No safeguard: ``J`` may rise. Default 10 inner
    steps (E-MSA's default is 3): basic MSA is the maximum principle's plain iteration, and its
    inner problem should be solved closely.
    """

    inner_steps: int = 10
    inner_optimizer: Any = None
    inner_lr: float = 0.05
    inner_gradient: str = "closed_form"
    inner: str = "optax"
    readout: str = "auto"
    readout_optimizer: Any = None
    batch_size: int | None = None
    hessian_samples: int | None = 128
    name: ClassVar[str] = "msa"

    def __post_init__(self):
        _check(self)

    def init(self, problem, controls, *, key):
        return _init(self, problem, controls, key, 0.0)

    def step(self, problem, state):
        opt = self.inner_optimizer if self.inner_optimizer is not None else optax.adam(self.inner_lr)
        return _step(self, problem, state, jnp.zeros((), jnp.result_type(float)), opt)
