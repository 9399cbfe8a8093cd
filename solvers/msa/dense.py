"""Closed forms of the inner gradient and Hessian for forward Euler with the library's dense
fields ``σ(Wz + b)``, ``Wσ(z) + b`` and ``Bσ(Az + a)``, registered through the public
:func:`~.closed_forms.register_closed_form` like any other field's.

The layers are batched and the samples on the *last* axis, ``(N, d, S)``: with states of width
3 that layout is many times faster on CPU than ``(…, S, d)``. Each function is the contract of
:mod:`.closed_forms`; the formulas are in their docstrings, the tests check them against autodiff.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import controlnet as cn
from controlnet.activations import activation

from .closed_forms import register_closed_form

__all__ = ["sigma_derivatives", "gradient_inner", "gradient_outer", "gradient_two_layer", "hessian_inner",
           "hessian_outer", "ravel_order"]


def sigma_derivatives(name, a):
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


def gradient_inner(problem, data, theta, rho):
    """Euler, ``f = σ(Wz + b)``; per sample, with ``a = Wz + b``, ``u = σ'(a)⊙p̃⁺``:

        r₁ = z⁺ − z − hσ(a),   r₂ = t − p̃⁺ − hWᵀu,
        e = h(p̃⁺ + ρr₁)⊙σ'(a) + ρh(Wr₂)⊙σ''(a)⊙p̃⁺,
        ∂/∂W = mean_i[e zᵀ + ρh u r₂ᵀ],   ∂/∂b = mean_i e.
    """
    h, W, b = problem.h, theta["W"], theta["b"]
    z, pn = data.z, data.p_next
    s0, s1, s2 = sigma_derivatives(problem.dynamics.activation, jnp.einsum("ned,nds->nes", W, z) + b[..., None])
    u = s1 * pn
    r1 = data.z_next - z - h * s0
    r2 = data.target - pn - h * jnp.einsum("ned,nes->nds", W, u)
    e = h * (pn + rho * r1) * s1 + rho * h * jnp.einsum("ned,nds->nes", W, r2) * s2 * pn
    S = z.shape[-1]
    gW = (jnp.einsum("nes,nds->ned", e, z) + rho * h * jnp.einsum("nes,nds->ned", u, r2)) / S
    return r1, r2, {"W": gW, "b": jnp.sum(e, -1) / S}


def gradient_outer(problem, data, theta, rho):
    """Euler, ``f = Wσ(z) + b`` (linear in ``θ``, so ``H̃_k`` is quadratic); per sample:

        r₁ = z⁺ − z − h(Wσ(z) + b),   r₂ = t − p̃⁺ − hσ'(z)⊙(Wᵀp̃⁺),
        ∂/∂W = mean_i[h(p̃⁺ + ρr₁)σ(z)ᵀ + ρh p̃⁺(σ'(z)⊙r₂)ᵀ],   ∂/∂b = mean_i h(p̃⁺ + ρr₁).
    """
    h, W, b = problem.h, theta["W"], theta["b"]
    z, pn = data.z, data.p_next
    sz, s1, _ = sigma_derivatives(problem.dynamics.activation, z)
    r1 = data.z_next - z - h * (jnp.einsum("nde,nes->nds", W, sz) + b[..., None])
    r2 = data.target - pn - h * s1 * jnp.einsum("nde,nds->nes", W, pn)
    q = h * (pn + rho * r1)
    S = z.shape[-1]
    gW = (jnp.einsum("nds,nes->nde", q, sz) + rho * h * jnp.einsum("nds,nes->nde", pn, s1 * r2)) / S
    return r1, r2, {"W": gW, "b": jnp.sum(q, -1) / S}


def gradient_two_layer(problem, data, theta, rho):
    """Euler, ``f = Bσ(Az + a)``; per sample, with ``q = Az + a``, ``v = Bᵀp̃⁺``, ``u = σ'(q)⊙v``:

        r₁ = z⁺ − z − hBσ(q),   r₂ = t − p̃⁺ − hAᵀu,   g = ρh(Ar₂)⊙σ'(q),
        e = σ'(q)⊙Bᵀ(h(p̃⁺ + ρr₁)) + ρh(Ar₂)⊙σ''(q)⊙v,
        ∂/∂A = mean_i[e zᵀ + ρh u r₂ᵀ],   ∂/∂a = mean_i e,   ∂/∂B = mean_i[h(p̃⁺ + ρr₁)σ(q)ᵀ + p̃⁺gᵀ].
    """
    h, A, a, B = problem.h, theta["A"], theta["a"], theta["B"]
    z, pn = data.z, data.p_next
    sq, s1, s2 = sigma_derivatives(problem.dynamics.activation, jnp.einsum("nmd,nds->nms", A, z) + a[..., None])
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


def hessian_inner(problem, data, rho):
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
    _, s1, s2 = sigma_derivatives(problem.dynamics.activation, jnp.einsum("ned,nds->nes", W, z) + b[..., None])
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
    return ravel_order(hess)


def hessian_outer(problem, data, rho):
    """Euler, ``f = Wσ(z) + b``: the samples' part of ``∇²_θ H̃_k``, ``(N, P, P)`` in
    ``ravel_pytree`` order. ``Ψ_h`` is linear in ``Θ = [W | b]``, so ``∇²H_k = 0``, the residuals
    are affine in ``Θ`` and ``H̃_k`` is a quadratic whose Hessian does not depend on ``Θ``. With
    ``s̃ = (σ(z), 1)``, ``∂r₁_f/∂Θ_ec = −h δ_fe s̃_c`` and ``∂r₂_f/∂W_ec = −h δ_cf σ'(z_f) p̃⁺_e``:

        −ρh² mean_i[δ_ee' s̃_c s̃_c' + δ_cc'[c<d] σ'(z_c)² p̃⁺_e p̃⁺_e'].
    """
    h = problem.h
    N, d, S = data.z.shape
    sz, s1, _ = sigma_derivatives(problem.dynamics.activation, data.z)
    st = jnp.concatenate([sz, jnp.ones_like(sz[:, :1])], 1)  # (N, d+1, S)
    gram = jnp.einsum("ncs,nks->nck", st, st) / S
    pp = jnp.einsum("ncs,nes,nfs->ncef", s1 * s1, data.p_next, data.p_next) / S  # [c, e, e']
    pp = jnp.concatenate([pp, jnp.zeros_like(pp[:, :1])], 1)  # c = d (the bias): no term
    eye_d, eye_c = jnp.eye(d, dtype=st.dtype), jnp.eye(d + 1, dtype=st.dtype)
    hess = (jnp.einsum("ef,nck->neckf", eye_d, gram).transpose(0, 1, 2, 4, 3)
            + jnp.einsum("ck,ncef->necfk", eye_c, pp))
    return ravel_order(-rho * h * h * hess)


def ravel_order(hess):
    """``(N, d, d+1, d, d+1)`` over ``Θ = [W | b]``'s ``(e, c), (e', c')`` → ``(N, P, P)`` in
    ``ravel_pytree``'s order of ``{"W", "b"}``: ``W[e, c]`` at ``e·d + c``, ``b[e]`` at ``d² + e``."""
    N, d = hess.shape[:2]
    hess = hess.reshape(N, d * (d + 1), d * (d + 1))
    e, c = jnp.divmod(jnp.arange(d * (d + 1)), d + 1)
    order = jnp.argsort(jnp.where(c < d, e * d + c, d * d + e))
    return hess[:, order][:, :, order]


# The library registers its own closed forms through the public function, as a user would.
register_closed_form(cn.Euler, cn.InnerActivation, gradient=gradient_inner, hessian=hessian_inner)
register_closed_form(cn.Euler, cn.OuterActivation, gradient=gradient_outer, hessian=hessian_outer)
register_closed_form(cn.Euler, cn.TwoLayer, gradient=gradient_two_layer)
