"""Newton's step on every layer's augmented Hamiltonian: the per-layer Hessian, the
preconditioner that turns an optax ascent step into a (modified) Newton step, and the strided
subsample the Hessian is estimated on.

At ``θ^j`` both residuals vanish, so ``∇²H̃_k = ∇²H_k − ρ mean_i(J₁ᵀJ₁ + J₂ᵀJ₂)``
(``J_m = ∂r_m/∂θ_k``) needs only first and second derivatives of ``Ψ_h``: sample moments of
size ``P × P`` per layer, in closed form where one is registered (:mod:`.closed_forms`), else by
``P`` Hessian-vector products.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from .closed_forms import closed_form
from .hamiltonian import LayerData, check_method, inner_objective, params_part

__all__ = ["per_layer", "block_hessian", "inner_hessian", "newton_preconditioner", "subsample"]


def per_layer(theta):
    """``(flat, unravel)``: every layer's parameters as one row of an ``(N, P)`` array (the
    order of ``ravel_pytree`` of one layer's ``θ_k``), and the map back to the pytree."""
    one = jax.tree_util.tree_map(lambda x: x[0], theta)
    unravel = ravel_pytree(one)[1]
    flat = jax.vmap(lambda th: ravel_pytree(th)[0])(theta)
    return flat, jax.vmap(unravel)


def block_hessian(fn, theta):
    """Per-layer Hessian blocks ``(N, P, P)`` of ``Σ_k fn(θ)_k`` for ``fn`` separable over layers
    (``fn(θ)_k`` sees only ``θ_k``): ``P`` Hessian-vector products (forward over reverse) whose
    tangent is the same unit vector in every layer, so column ``q`` of every block at once."""
    flat, unravel = per_layer(theta)
    N, P = flat.shape
    grad = jax.grad(lambda th: jnp.sum(fn(th)))

    def column(e):
        tangent = unravel(jnp.broadcast_to(e, (N, P)))
        return per_layer(jax.jvp(grad, (theta,), (tangent,))[1])[0]

    return jnp.transpose(jax.vmap(column)(jnp.eye(P, dtype=flat.dtype)), (1, 2, 0))



def inner_hessian(problem, data: LayerData, rho, method="closed_form"):
    """Every layer's ``∇²_{θ_k}(H̃_k − C_k)`` at ``θ^j = data.theta``, shape ``(N, P, P)``
    (``ravel_pytree`` order of one layer's ``θ_k``). The samples' part in closed form where one
    is registered (only at ``θ^j``, where both residuals vanish), else by ``P`` Hessian-vector
    products of :func:`~.hamiltonian.inner_objective`; the parameter terms (``−hR − C_k``)
    always by the latter."""
    check_method(method)
    theta = data.theta
    hessian = closed_form(problem).hessian
    if method == "closed_form" and hessian is not None:
        sample = hessian(problem, data, rho)
        return sample + block_hessian(lambda th: params_part(problem, data, th), theta)
    return block_hessian(lambda th: inner_objective(problem, data, th, rho, "autodiff"), theta)


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
    _, unravel = per_layer(theta)

    def update(updates, state, params=None):
        del params
        u = per_layer(updates)[0]
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
