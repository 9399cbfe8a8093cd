"""One MSA iteration from ``(θ^j, w^j)``, in three parts: *propose* ``θ^{j+1}`` (every layer's
augmented Hamiltonian ascended by the solver's inner method), the *terminal parameters* ``w``
and ``φ`` (read-out and learned lift), and *accept or reject* the move (the extended MSA's
adaptive ``ρ``). The solver classes (:mod:`.solver`) choose ``ρ`` and the inner optimizer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import controlnet as cn

from ..inputs import require_single_block
from ..minibatch import minibatch
from ..trees import tree_norm
from .hamiltonian import layer_data
from .readout import GradientReadout, NewtonReadout, optimizer_step, readout_newton, terminal_optimizer

__all__ = ["MSAState", "Iterate", "init_state", "linearize", "propose", "terminal_parameters",
           "accept_or_reject", "msa_step"]


class MSAState(NamedTuple):
    controls: cn.Controls
    readout_state: Any
    key: jax.Array
    iteration: jax.Array
    rho: jax.Array
    lift_state: Any = ()
    #: The inner steps' per-layer scales ``η_k`` where the last iteration left them
    #: (:func:`~.ascent.maximize_hamiltonians`), carried by the extended MSA's ``inner="optax"``;
    #: ``()`` (basic MSA): every iteration starts from 1.
    eta: Any = ()
    #: The inner optimizer's state where the last iteration left it (``inner="optax"`` of the
    #: extended MSA with ``carry_inner_state``): Adam's moments, a schedule's count, ... carry
    #: over, as they would in one optimizer run; ``()``: every iteration starts it afresh.
    inner_state: Any = ()


class Iterate(NamedTuple):
    """Iterate ``j`` on the batch: controls before (``c0``) and after the Newton read-out
    (``c``), states ``zs``, ``∇J`` at ``c``, the :class:`~.hamiltonian.LayerData`, the metrics."""

    c0: cn.Controls
    c: cn.Controls
    zs: Any
    grad: cn.Controls
    data: Any
    metrics: dict


def init_state(s, problem, controls, key, rho0, inner_optimizer=None) -> MSAState:
    """The first :class:`MSAState`; ``inner_optimizer``: the optimizer whose state the
    iterations carry (:attr:`MSAState.inner_state`), if any."""
    require_single_block(problem, s)
    readout = s.readout.resolve(problem)
    ro = terminal_optimizer(s.readout_optimizer).init(controls.w) if isinstance(readout, GradientReadout) else ()
    lo = terminal_optimizer(s.readout_optimizer).init(controls.lift) if problem.lift is not None else ()
    dtype = jnp.result_type(float)
    carry = s.carries_inner and s.inner.resolve(s, problem).carries
    eta = jnp.ones((problem.N,), dtype) if carry else ()
    inner_state = inner_optimizer.init(controls.theta) if carry and inner_optimizer is not None else ()
    return MSAState(controls, ro, key, jnp.zeros((), jnp.int32), jnp.asarray(rho0, dtype), lo, eta, inner_state)


def linearize(s, problem, c0) -> Iterate:
    """Forward and backward passes at ``c0`` (module doc of :mod:`solvers.msa`, steps 1-2)."""
    zs, backward = cn.flow_and_backward(problem, c0.theta, problem.z0(c0.lift))
    m = cn.metrics(problem, c0, zs)
    # Newton read-out first (Gauss-Seidel): the co-states then belong to the w that is kept.
    newton = isinstance(s.readout.resolve(problem), NewtonReadout)
    c = c0._replace(w=readout_newton(problem, zs, c0.w)) if newton else c0
    ps, g_theta, g_w = backward(c.w)
    # ∇J from the same backward pass (the adjoint identities), for grad_norm, read-out and lift.
    grad = cn.gradient_from_hamiltonian(problem, c, g_theta, g_w, zs[-1], ps[0])
    return Iterate(c0, c, zs, grad, layer_data(problem, c, zs, ps), m)


def propose(s, problem, it: Iterate, state: MSAState, rho, optimizer, key):
    """``(θ^{j+1}, sums, η, inner_state)`` by the solver's inner method (:mod:`.inner`), which
    starts from the gradient ``−∇_θ J`` the backward pass already has."""
    start = jax.tree_util.tree_map(jnp.negative, it.grad.theta)
    inner = s.inner.resolve(s, problem)
    return inner.maximize(s, problem, it.data, rho, optimizer, start, key, state)


def terminal_parameters(s, problem, it: Iterate, state: MSAState):
    """``(w, readout_state, φ, lift_state)``: the gradient read-out's optimizer step (the
    Newton read-out is already in ``it.c``) and the learned lift's."""
    w, ro = it.c.w, state.readout_state
    if isinstance(s.readout.resolve(problem), GradientReadout):
        w, ro = optimizer_step(terminal_optimizer(s.readout_optimizer), it.grad.w, ro, it.c.w)
    lift, lo = it.c.lift, state.lift_state
    if problem.lift is not None:  # a learned lift: one optimizer step along ∇_φ J, like w
        lift, lo = optimizer_step(terminal_optimizer(s.readout_optimizer), it.grad.lift, lo, it.c.lift)
    return w, ro, lift, lo


def accept_or_reject(problem, it: Iterate, state: MSAState, new: MSAState, rho, adapt):
    """``(kept, ρ_{j+1}, accepted)``: ``new`` if ``J(θ^{j+1}, w^{j+1}) <= J(θ^j, w)`` (up to
    rounding), else the incoming controls and optimizer states with the Newton read-out;
    ``ρ ×= down`` (not below ``rho_min``) on acceptance, ``ρ ×= up`` on rejection.
    ``adapt = (up, down, rho_min)``."""
    up, down, rho_min = adapt
    J_ref = cn.metrics(problem, it.c, it.zs)["loss"]  # J(θ^j, w^{j+1}) for Newton, else J(θ^j, w^j)
    J_new = cn.objective_value(problem, new.controls)
    # Rounding: the same J computed twice may differ in the last bits; a tie is a success.
    # Relative to J: with (1 + |J|) float32 let rises of 1e-5 through at J = 0.01.
    tol = 64 * jnp.finfo(J_ref.dtype).eps * jnp.abs(J_ref)
    accept = jnp.isfinite(J_new) & (J_new <= J_ref + tol)
    keep = lambda a, b: jax.tree_util.tree_map(lambda x, y: jnp.where(accept, x, y), a, b)  # noqa: E731
    c = it.c
    kept = new._replace(controls=cn.Controls(keep(new.controls.theta, c.theta), keep(new.controls.w, c.w),
                                             keep(new.controls.lift, c.lift)),
                        readout_state=keep(new.readout_state, state.readout_state),
                        lift_state=keep(new.lift_state, state.lift_state),
                        inner_state=keep(new.inner_state, state.inner_state))
    rho_next = jnp.where(accept, jnp.maximum(rho * down, rho_min), jnp.minimum(rho * up, 1e12))
    return kept, rho_next.astype(state.rho.dtype), accept


def _info(problem, it: Iterate, theta, sums, rho):
    """The logged numbers (module doc of :mod:`solvers.msa`)."""
    # H_k(θ') − H_k(θ^j) = −mean_i p̃⁺·r₁(θ') − h[R(θ') − R(θ^j)]  (module doc).
    run = lambda th: jnp.sum(jax.vmap(problem.running)(th)) if problem.terms & {"l2", "l1"} else 0.0  # noqa: E731
    dH = -jnp.sum(sums[:, 0]) - problem.h * (run(theta) - run(it.c.theta))
    m = it.metrics
    return {"loss": m["loss"], "accuracy": m["accuracy"], "grad_norm": tree_norm(it.grad), "dH": dH,
            "state_residual": jnp.sum(sums[:, 1]), "costate_residual": jnp.sum(sums[:, 2]),
            "rho": jnp.asarray(rho, dtype=m["loss"].dtype)}


def msa_step(s, problem, state: MSAState, rho, optimizer, adapt=None):
    """One MSA iteration (module doc) with penalty ``rho`` and inner ``optimizer``;
    ``adapt = (up, down, rho_min)`` (:func:`accept_or_reject`) or ``None``."""
    key, sub = jax.random.split(state.key)
    batch = minibatch(problem, sub, s.batch_size)
    it = linearize(s, batch, state.controls)
    theta, sums, eta, inner_state = propose(s, batch, it, state, rho, optimizer, sub)
    w, ro, lift, lo = terminal_parameters(s, batch, it, state)
    info = _info(batch, it, theta, sums, rho)
    new = MSAState(cn.Controls(theta, w, lift), ro, key, state.iteration + 1, state.rho, lo, eta, inner_state)
    if adapt is not None:
        new, rho_next, accept = accept_or_reject(batch, it, state, new, rho, adapt)
        new = new._replace(rho=rho_next)
        info["accepted"] = accept.astype(info["loss"].dtype)
    return new, info
