"""The augmented Hamiltonian of the extended MSA: layer data, the two residuals, the inner
objective and its gradient.

For every layer ``k``, with the states ``z`` and co-states ``p`` of iterate ``j`` frozen,

    H̃_k(θ) = H_k(z_k, p_{k+1}, θ) − C_k(θ) − (ρ/2) (1/S) Σ_i (‖r_{1,i}(θ)‖² + ‖r_{2,i}(θ)‖²)

    r_{1,i}(θ) = z_{k+1,i} − Ψ_h(z_{k,i}, θ)                    (state feasibility)
    r_{2,i}(θ) = p̃_{k,i} − ∇_{z_i} H̃ᵢ(z_{k,i}, p̃_{k+1,i}, θ)     (costate feasibility)

``H_k = Σ_i p_i·Ψ_h(z_i, θ) − hR(θ) − hL`` is :func:`controlnet.hamiltonian` with the
batch-summed co-states ``p`` of ``cn.backward``; it *is* the batch average of the per-sample
Hamiltonians ``H̃ᵢ = p̃ᵢ·Ψ_h(zᵢ, θ)`` with per-sample co-states ``p̃ = S p``. The penalties are
batch averages in that per-sample scale, so ``ρ`` does not depend on ``S``. Since
``Ψ_h(z_k, θ^j) = z_{k+1}``, ``H_k(θ) = H_k(θ^j) − (1/S) Σ_i p̃_{k+1,i}·r_{1,i}(θ) −
h[R(θ) − R(θ^j)]``: the whole inner objective is a function of the two residuals, which is how
it is computed. ``C_k`` is layer ``k``'s share of the H¹ coupling with its neighbours frozen at
iterate ``j`` (a Jacobi sweep: :func:`jacobi_coupling`).

The gradient in ``θ_k`` comes from a closed form where one is registered for the problem's
integrator and field (:mod:`.closed_forms`, ``method="closed_form"``), else by automatic
differentiation (:func:`autodiff_value_grad_sums`; ``method="autodiff"`` forces it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from controlnet.state import scan_step, stack_to_scan

from .closed_forms import closed_form

__all__ = ["LayerData", "layer_data", "residuals", "layer_residuals", "jacobi_coupling", "params_part",
           "sample_axis", "residual_sums", "sample_part", "inner_objective", "value_sums",
           "inner_value_and_grad", "value_grad_sums", "autodiff_value_grad_sums", "inner_gradient",
           "check_method", "METHODS"]

#: The ways of computing the inner gradient (the ``method`` argument below).
METHODS = ("closed_form", "autodiff")


def check_method(method: str) -> None:
    """Raise ``ValueError`` unless ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise ValueError(f"method must be 'closed_form' or 'autodiff', got {method!r}")


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
    form where one is registered (``method="closed_form"``), else by ``jax.vjp`` of the step."""
    check_method(method)
    gradient = closed_form(problem).gradient
    if method == "closed_form" and gradient is not None:
        # The kernel's gradient is unused here, and XLA drops it under jit.
        return gradient(problem, data, theta, 0.0)[:2]
    return layer_residuals(problem, data, theta)


def layer_residuals(problem, data, theta):
    """``(r_1, r_2)`` of every layer in the scans' layout: one ``jax.vjp`` of the step per layer."""

    def layer(z, zn, pn, t, th):
        Psi, vjp = jax.vjp(lambda x: scan_step(problem, x, th), z)
        return zn - Psi, t - vjp(pn)[0]

    return jax.vmap(layer)(data.z, data.z_next, data.p_next, data.target, theta)


def jacobi_coupling(problem, theta, theta_frozen):
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


def params_part(problem, data, theta):
    """``−hR(θ_k) − C_k(θ_k)`` per layer, shape ``(N,)``: the terms of ``H̃_k`` that see no sample."""
    run = jax.vmap(problem.running)(theta) if problem.terms & {"l2", "l1"} else 0.0
    return -problem.h * run - jacobi_coupling(problem, theta, data.theta)


def sample_axis(problem) -> int:
    """The samples' axis in :class:`LayerData`'s arrays (after the leading layer axis)."""
    axis = problem.dynamics.sample_axis
    return axis if axis < 0 else axis + 1


def residual_sums(problem, data, r1, r2):
    """Per layer ``(mean_i p̃⁺·r₁, mean_i ‖r₁‖², mean_i ‖r₂‖²)``, shape ``(N, 3)``."""
    S = r1.shape[sample_axis(problem)]
    ax = tuple(range(1, r1.ndim))
    return jnp.stack([jnp.sum(data.p_next * r1, ax), jnp.sum(r1**2, ax), jnp.sum(r2**2, ax)], 1) / S


def sample_part(sums, rho):
    """``−mean_i p̃⁺·r₁ − (ρ/2) mean_i(‖r₁‖² + ‖r₂‖²)`` per layer, from :func:`residual_sums`."""
    return -sums[:, 0] - 0.5 * rho * (sums[:, 1] + sums[:, 2])


def inner_objective(problem, data: LayerData, theta, rho, method="closed_form"):
    """``H̃_k(θ_k) − C_k(θ_k) − H_k(θ_k^j) − hR(θ_k^j)`` per layer, shape ``(N,)`` (module doc):
    ``−mean_i p̃⁺·r₁ − (ρ/2) mean_i(‖r₁‖²+‖r₂‖²) − hR(θ_k) − C_k(θ_k)``."""
    return value_sums(problem, data, theta, rho, method)[0]


def value_sums(problem, data, theta, rho, method):
    """``(v, sums)``: :func:`inner_objective` and the :func:`residual_sums` at ``θ``."""
    sums = residual_sums(problem, data, *residuals(problem, data, theta, method))
    return sample_part(sums, rho) + params_part(problem, data, theta), sums


def inner_value_and_grad(problem, data: LayerData, theta, rho, method="closed_form"):
    """``(v, g)``: :func:`inner_objective` per layer and its gradient in every ``θ_k`` (closed
    form where registered, else autodiff; the sum is separable, so ``g_k`` is layer ``k``'s own)."""
    return value_grad_sums(problem, data, theta, rho, method)[:2]


def inner_gradient(problem, data: LayerData, theta, rho, method="closed_form"):
    """``∇_θ Σ_k [H̃_k(θ_k) − C_k(θ_k)]`` for all layers (see :func:`inner_value_and_grad`)."""
    return inner_value_and_grad(problem, data, theta, rho, method)[1]


def value_grad_sums(problem, data, theta, rho, method):
    """``(v, g, sums)``: :func:`inner_value_and_grad` and the :func:`residual_sums` at ``θ``."""
    check_method(method)
    gradient = closed_form(problem).gradient
    if method == "closed_form" and gradient is not None:
        r1, r2, g = gradient(problem, data, theta, rho)
        gp = jax.grad(lambda th: jnp.sum(params_part(problem, data, th)))(theta)
        sums = residual_sums(problem, data, r1, r2)
        v = sample_part(sums, rho) + params_part(problem, data, theta)
        return v, jax.tree_util.tree_map(jnp.add, g, gp), sums
    return autodiff_value_grad_sums(problem, data, theta, rho)


def autodiff_value_grad_sums(problem, data, theta, rho):
    """:func:`value_grad_sums` for any integrator and vector field, by forward over reverse.

    With ``∂r₁/∂θ = −∂_θΨ`` and ``r₂·∂_θ(J_zΨᵀp̃⁺) = ∂_θ(p̃⁺·J_zΨ r₂)``, the gradient of the
    sample part of ``H̃_k`` is, with the residuals held fixed at ``θ``,

        ∇_θ mean_i[(p̃⁺ + ρr₁)·Ψ_h(z, θ) + ρ p̃⁺·J_zΨ_h(z, θ) r₂],

    a ``jax.jvp`` of the step in the direction ``r₂`` (one pass for ``Ψ`` and ``J_zΨ r₂``) under
    one ``jax.grad``. Differentiating the residuals themselves would take the reverse mode of
    ``r₂``'s ``vjp``, which measured several times slower.
    """
    r1, r2 = layer_residuals(problem, data, theta)
    sums = residual_sums(problem, data, r1, r2)
    v = sample_part(sums, rho) + params_part(problem, data, theta)
    S = r1.shape[sample_axis(problem)]
    c, q = (data.p_next + rho * r1) / S, rho * data.p_next / S

    def linear(th):
        def layer(z, dz, c, q, th):
            Psi, dPsi = jax.jvp(lambda x: scan_step(problem, x, th), (z,), (dz,))
            return jnp.sum(c * Psi) + jnp.sum(q * dPsi)

        return jnp.sum(jax.vmap(layer)(data.z, r2, c, q, th)) + jnp.sum(params_part(problem, data, th))

    return v, jax.grad(linear)(theta), sums


