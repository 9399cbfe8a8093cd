"""The safeguarded inner ascent: a few steps of any optax optimizer on every layer's augmented
Hamiltonian at once, each layer's step scaled by a trust factor ``η_k`` that never lets its
objective decrease."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from .hamiltonian import LayerData, params_part, value_grad_sums, value_sums

__all__ = ["maximize_hamiltonians", "maximize"]


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
    return maximize(problem, data, rho, optimizer, steps, method, start, eta, opt_state)[0]


def _scale(u, eta):
    """``η_k u_k`` for every layer (``eta``: ``(N,)``)."""
    return jax.tree_util.tree_map(lambda x: x * eta.reshape((-1,) + (1,) * (x.ndim - 1)), u)


def _pick(ok, a, b):
    """Layer ``k`` of ``a`` where ``ok[k]``, else of ``b``."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(ok.reshape((-1,) + (1,) * (x.ndim - 1)), x, y), a, b)


def maximize(problem, data, rho, optimizer, steps, method, start, eta=None, opt_state=None):
    """:func:`maximize_hamiltonians`, the :func:`~.hamiltonian.residual_sums` at the ``θ`` it
    returns, and the step scales ``η`` and optimizer state it ends with."""
    vg = lambda th: value_grad_sums(problem, data, th, rho, method)  # noqa: E731
    if start is None:
        v0, g0, sums0 = vg(data.theta)
    else:  # both residuals vanish at θ^j: only the parameter terms remain
        v0, g0 = params_part(problem, data, data.theta), start
        sums0 = jnp.zeros(v0.shape + (3,), v0.dtype)
    eta0 = jnp.ones_like(v0) if eta is None else jnp.asarray(eta, v0.dtype)

    def value(th):  # the last step needs no gradient at its candidate
        v, sums = value_sums(problem, data, th, rho, method)
        return v, None, sums

    def body(carry, evaluate=vg):
        theta, v, g, sums, eta, opt_state = carry
        updates, opt_state = optimizer.update(jax.tree_util.tree_map(jnp.negative, g), opt_state, theta)
        cand = optax.apply_updates(theta, _scale(updates, eta))
        vc, gc, sc = evaluate(cand)
        ok = vc >= v
        eta = jnp.where(ok, jnp.minimum(1.5 * eta, 1.0), 0.5 * eta)
        g = g if gc is None else _pick(ok, gc, g)
        return _pick(ok, cand, theta), jnp.where(ok, vc, v), g, _pick(ok, sc, sums), eta, opt_state

    opt_state = optimizer.init(data.theta) if opt_state is None else opt_state
    carry = (data.theta, v0, g0, sums0, eta0, opt_state)
    carry = jax.lax.fori_loop(0, steps - 1, lambda _, c: body(c), carry)
    theta, _, _, sums, eta, opt_state = body(carry, value)
    return theta, sums, eta, opt_state
