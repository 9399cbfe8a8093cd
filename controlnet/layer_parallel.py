"""The states, co-states and gradient of a control problem by MGRIT over the layers.

The state recursion ``z_{k+1} = Ψ_h(z_k, θ_k)`` and the co-state recursion (:mod:`.adjoint`)

    p_N = −∇_zΦ(z_N, w),     p_k = J_zΨ_h(z_k, θ_k)ᵀ p_{k+1} − h ∇_z L(z_k, w)

are each solved by two-level MGRIT (:func:`controlnet.mgrit.mgrit`) instead of a serial sweep.
The coarse propagator of interval ``j`` (layers ``jc..jc+c−1``) is the problem's own integrator
with step ``c·h`` and the control of the interval injected (``θ_{jc}``) or averaged
(``(1/c) Σ_i θ_{jc+i}``):

    G_j(z) = Ψ_{ch}(z, θ̄_j),          G_jᵀ(p) = J_zΨ_{ch}(z_{jc}, θ̄_j)ᵀ p    (co-state).

From the states and co-states, every layer's ``∇_θ H_k = J_θΨ_kᵀ p_{k+1} − h∇R(θ_k)`` is one
``vmap`` over the layers (parallel), and ``∇J`` follows as in :mod:`.adjoint`
(:func:`~controlnet.gradient_from_hamiltonian`). Run to convergence, all three equal the serial
ones to round-off (tested in float64); with a fixed small number of iterations they are the
inexact states and gradient that layer-parallel training uses (Günther et al. 2020).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .adjoint import gradient_from_hamiltonian, terminal_costate
from .mgrit import RELAXATIONS, mgrit
from .problem import objective_from_parts, tracking_sum
from .state import from_scan, scan_step, stack_from_scan, stack_to_scan, to_scan

__all__ = ["MGRIT", "LayerParallelInfo", "mgrit_states", "mgrit_costates", "mgrit_gradient",
           "coarse_step"]

_tree_map = jax.tree_util.tree_map


@dataclasses.dataclass(frozen=True)
class MGRIT:
    """MGRIT's options (:mod:`controlnet.mgrit`).

    Args:
        iterations: MGRIT iterations per solve (state and co-state each), fixed.
        coarsening: the coarsening factor ``c`` (a divisor of ``N``).
        relaxation: ``"FCF"`` (default) or ``"F"``.
        coarse_controls: ``"inject"`` (``θ_{jc}``, default) or ``"average"`` over the interval.
        mesh, layer_axis: lay the layers out in contiguous blocks along this mesh axis
            (``N/c`` a multiple of its size); ``data_axis``: split the samples along that one too
            (a 2-D samples × layers mesh). ``mesh=None``: one device.
    """

    iterations: int = 2
    coarsening: int = 4
    relaxation: str = "FCF"
    coarse_controls: str = "inject"
    mesh: Any = None
    layer_axis: str = "layers"
    data_axis: str | None = None

    def __post_init__(self):
        for name in ("iterations", "coarsening"):
            v = getattr(self, name)
            low = 0 if name == "iterations" else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"MGRIT {name} must be an integer >= {low}, got {v!r}")
        if self.relaxation not in RELAXATIONS:
            raise ValueError(f"MGRIT relaxation must be one of {RELAXATIONS}, got {self.relaxation!r}")
        if self.coarse_controls not in ("inject", "average"):
            raise ValueError(f"MGRIT coarse_controls must be 'inject' or 'average', got {self.coarse_controls!r}")
        if self.mesh is not None:
            for name in (self.layer_axis, self.data_axis):
                if name is not None and name not in self.mesh.shape:
                    raise ValueError(f"mesh has no axis {name!r} (its axes: {tuple(self.mesh.shape)}); "
                                     f"pass layer_axis= / data_axis=")

    def check(self, N: int) -> None:
        """Refuse a depth this configuration cannot split (before any compile)."""
        c = self.coarsening
        if N % c:
            divisors = [d for d in range(2, N + 1) if N % d == 0][:6]
            raise ValueError(f"MGRIT coarsening must divide the number of layers N={N}, got {c}; e.g. {divisors}")
        n_dev = 1 if self.mesh is None else self.mesh.shape[self.layer_axis]
        if (N // c) % n_dev:
            raise ValueError(f"N/coarsening = {N // c} coarse intervals cannot be split over {n_dev} devices; "
                             f"choose N/coarsening a multiple of {n_dev}")

    def run(self, fine, coarse, u_start, xs, Xs, *, reverse, sample_axis):
        return mgrit(fine, coarse, u_start, xs, Xs, coarsening=self.coarsening, iterations=self.iterations,
                     relaxation=self.relaxation, reverse=reverse, mesh=self.mesh, layer_axis=self.layer_axis,
                     data_axis=self.data_axis, sample_axis=sample_axis)


class LayerParallelInfo(NamedTuple):
    """MGRIT residual norms per iteration of the state and the co-state solves."""

    state_residuals: jax.Array
    costate_residuals: jax.Array


def coarse_step(problem, zT, theta, H):
    """``Ψ_H(z, θ)`` with the problem's integrator and step ``H`` on scan-layout states."""
    if problem.integrator.layout_free:
        return problem.integrator.step(problem.dynamics.scan_call, zT, theta, H)
    axis = problem.dynamics.sample_axis
    one = lambda z, th: problem.integrator.step(problem.dynamics, z, th, H)  # noqa: E731
    return jax.vmap(one, in_axes=(axis, None), out_axes=axis)(zT, theta)


def _coarse_controls(opts, theta):
    c = opts.coarsening
    blocks = _tree_map(lambda a: a.reshape((a.shape[0] // c, c) + a.shape[1:]), theta)
    if opts.coarse_controls == "inject":
        return _tree_map(lambda a: a[:, 0], blocks)
    return _tree_map(lambda a: a.mean(axis=1), blocks)


def mgrit_states(problem, theta, z0T, opts: MGRIT):
    """``(zsT, residuals)``: the states ``z_0..z_N`` in the scans' layout (leading ``N+1``)."""
    H = opts.coarsening * problem.h
    fine = lambda z, x: scan_step(problem, z, x[1])  # noqa: E731
    coarse = lambda z, X: coarse_step(problem, z, X[1], H)  # noqa: E731
    return opts.run(fine, coarse, z0T, (None, theta), (None, _coarse_controls(opts, theta)),
                    reverse=False, sample_axis=problem.dynamics.sample_axis)


def _tracking_cotangents(problem, zs, w):
    """``−h ∇_z L(z_k, w)`` for ``k = 0..N−1`` in the scans' layout (``None`` without tracking)."""
    if "tracking" not in problem.terms:
        return None
    dL = jax.vmap(jax.grad(problem.tracking_cost), in_axes=(0, None))(zs[:-1], w)
    return -problem.h * stack_to_scan(problem, dL)


def mgrit_costates(problem, theta, zsT, pNT, dLT, opts: MGRIT):
    """``(psT, residuals)``: the co-states ``p_0..p_N`` in the scans' layout, from the states
    ``zsT`` (leading ``N+1``), ``p_N`` and the tracking cotangents ``dLT`` (or ``None``)."""
    H = opts.coarsening * problem.h

    def fine(p, x):
        (z, dL), th = x
        pulled = jax.vjp(lambda u: scan_step(problem, u, th), z)[1](p)[0]
        return pulled if dL is None else pulled + dL

    def coarse(p, X):
        z, th = X
        return jax.vjp(lambda u: coarse_step(problem, u, th, H), z)[1](p)[0]

    c = opts.coarsening
    xs = ((zsT[:-1], dLT), theta)
    Xs = (zsT[:-1:c], _coarse_controls(opts, theta))
    return opts.run(fine, coarse, pNT, xs, Xs, reverse=True, sample_axis=problem.dynamics.sample_axis)


def mgrit_gradient(problem, controls, opts: MGRIT):
    """``(J, ∇J, z_N, info)`` with the states and co-states from MGRIT (module doc); ``info`` a
    :class:`LayerParallelInfo`. Equal to :func:`controlnet.value_and_gradient` when MGRIT has
    converged; an inexact gradient after a fixed small number of iterations."""
    opts.check(problem.N)
    theta, w = controls.theta, controls.w
    zsT, res_z = mgrit_states(problem, theta, to_scan(problem, problem.z0(controls.lift)), opts)
    zs = stack_from_scan(problem, zsT)
    zN = zs[-1]
    pN = terminal_costate(problem, zN, w)
    psT, res_p = mgrit_costates(problem, theta, zsT, to_scan(problem, pN), _tracking_cotangents(problem, zs, w), opts)

    def pulled(z, th, p):
        return jax.vjp(lambda t: scan_step(problem, z, t), th)[1](p)[0]

    g_theta = jax.vmap(pulled)(zsT[:-1], theta, psT[1:])
    if problem.terms & {"l2", "l1"}:
        dR = jax.vmap(jax.grad(problem.running))(theta)
        g_theta = _tree_map(lambda a, b: a - problem.h * b, g_theta, dR)
    if "tracking" in problem.terms:
        dw = jax.grad(lambda w_: tracking_sum(problem, zs, w_))(w)
        g_w = _tree_map(lambda g: -problem.h * g, dw)
    else:
        g_w = _tree_map(jnp.zeros_like, w)
    p0 = None if problem.lift is None else from_scan(problem, psT[0])
    grad = gradient_from_hamiltonian(problem, controls, g_theta, g_w, zN, p0)
    J = objective_from_parts(problem, controls, problem.terminal(zN, w), tracking_sum(problem, zs, w))
    return J, grad, zN, LayerParallelInfo(res_z, res_p)
