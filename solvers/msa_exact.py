"""Exact per-layer maximization of MSA's augmented Hamiltonian with CasADi + IPOPT.

For small problems, ``θ_k^{j+1} = argmax_θ [H̃_k(θ) − C_k(θ)]`` is solved layer by layer to
IPOPT's tolerance instead of by a few optimizer steps (:func:`solvers.msa.maximize_hamiltonians`).
The objective is the same as :func:`solvers.msa.inner_objective` (up to a constant):

    −mean_i p̃⁺_i·r_{1,i}(θ) − (ρ/2) mean_i (‖r_{1,i}‖² + ‖r_{2,i}‖²) − h R(θ) − C_k(θ),
    r_1 = z_{k+1} − Ψ_h(z_k, θ),   r_2 = target_k − J_zΨ_h(z_k, θ)ᵀ p̃_{k+1},

built once per problem structure on :mod:`solvers.casadi_model` (the one CasADi translation of
the core), with ``h``, the weights and ``ρ`` as NLP parameters. It runs from inside the jitted
MSA step through ``jax.pure_callback``, so the solver keeps its ``init``/``step`` contract (and
checkpoints). IPOPT starts every layer at ``θ_k^j`` and returns a local maximum: the problem is
non-convex. ``R`` must be smooth here (no L¹ term). Enable with ``ExtendedMSA(inner="ipopt")``
(the strategy :class:`solvers.msa.Ipopt`, which imports this module, and so CasADi, only when
it runs).
"""

from __future__ import annotations

import dataclasses
import functools

import casadi as ca
import jax
import numpy as np

import controlnet as cn

from . import casadi_model

__all__ = ["layer_objective", "maximize_exactly"]

_WEIGHTS = cn.ControlProblem.weight_names


def _structure(problem):
    """The static part of ``problem`` that the layer NLP depends on (hashable)."""
    shapes = jax.eval_shape(lambda k: problem.dynamics.init(k, problem.width),
                            jax.ShapeDtypeStruct((2,), np.uint32))
    return (problem.dynamics, problem.integrator, problem.loss, int(problem.width), int(problem.S),
            problem.terms, tuple((k, tuple(shapes[k].shape)) for k in sorted(shapes)))


@functools.lru_cache(maxsize=16)
def _layer_functions(structure):
    """``(objective Function, IPOPT solver, Model)`` for one layer, parameters symbolic."""
    dynamics, integrator, loss, d, S, terms, shapes = structure
    h, rho = ca.MX.sym("h"), ca.MX.sym("rho")
    w = {n: ca.MX.sym(n) for n in _WEIGHTS}
    m = casadi_model.Model(dynamics=dynamics, integrator=integrator, loss=loss, N=1, d=d, S=S, h=h,
                           weights=w, terms=terms, z0=None, y=None, shapes=shapes,
                           n_out=int(loss.n_out))
    p = m.p
    v = ca.MX.sym("theta", p)
    Z, Zn, Pn, Tg = (ca.MX.sym(n, d, S) for n in ("z", "z_next", "p_next", "target"))
    prev, nxt = ca.MX.sym("theta_prev", p), ca.MX.sym("theta_next", p)
    has_prev, has_next = ca.MX.sym("has_prev"), ca.MX.sym("has_next")
    Psi = m.step(Z, v)
    r1 = Zn - Psi
    r2 = Tg - ca.gradient(ca.sum1(ca.sum2(Pn * Psi)), Z)
    sq = lambda x: ca.sum1(ca.sum2(x * x))  # noqa: E731
    obj = -ca.sum1(ca.sum2(Pn * r1)) / S - 0.5 * rho * (sq(r1) + sq(r2)) / S - h * m.running(v)
    if "smoothness" in terms:
        obj = obj - 0.5 * w["smoothness"] / h * (has_prev * sq(v - prev) + has_next * sq(nxt - v))
    params = [Z, Zn, Pn, Tg, prev, nxt, has_prev, has_next, h, rho] + [w[n] for n in _WEIGHTS]
    f = ca.Function("layer_objective", [v] + params, [obj])
    flat = ca.vertcat(*[ca.vec(q) for q in params])
    nlp = {"x": v, "p": flat, "f": -obj}
    opts = {"ipopt.print_level": 0, "print_time": False, "ipopt.sb": "yes", "ipopt.tol": 1e-10,
            "ipopt.max_iter": 200, "error_on_fail": False}
    return f, ca.nlpsol("layer_max", "ipopt", nlp, opts), m


def _packer(m, theta):
    """The model with ``N`` set to the number of layers of ``theta``: packs and unpacks ``Θ (p×N)``."""
    return dataclasses.replace(m, N=int(jax.tree_util.tree_leaves(theta)[0].shape[0]))


def _layer_args(m, data, k, theta_flat, numbers):
    """Numeric parameters of layer ``k`` in the order of :func:`_layer_functions`."""
    N = theta_flat.shape[1]
    prev = theta_flat[:, k - 1] if k > 0 else theta_flat[:, k]
    nxt = theta_flat[:, k + 1] if k < N - 1 else theta_flat[:, k]
    z, zn, pn, tg = (np.asarray(a[k], float) for a in (data.z, data.z_next, data.p_next, data.target))
    return [z, zn, pn, tg, prev, nxt, float(k > 0), float(k < N - 1), *numbers]


def layer_objective(problem, data, theta, rho):
    """The CasADi layer objective (module doc) for every layer, shape ``(N,)`` (numpy; tests)."""
    f, _, m = _layer_functions(_structure(problem))
    m = _packer(m, theta)
    numbers = [float(problem.h), float(rho)] + [float(getattr(problem, n)) for n in _WEIGHTS]
    T0 = m.pack_theta(jax.tree_util.tree_map(np.asarray, data.theta))
    T = m.pack_theta(jax.tree_util.tree_map(np.asarray, theta))
    return np.array([float(f(T[:, k], *_layer_args(m, data, k, T0, numbers)))
                     for k in range(T.shape[1])])


def maximize_exactly(problem, data, rho):
    """``θ^{j+1}``: every layer's augmented Hamiltonian maximized by IPOPT from ``θ_k^j``.

    Callable inside ``jit`` (a ``jax.pure_callback``); returns controls shaped like ``data.theta``.
    """
    if "l1" in problem.terms:
        raise ValueError("the exact (IPOPT) layer maximization needs a smooth running cost; drop "
                         "l1 or use the optax inner maximizer (inner='optax')")
    structure = _structure(problem)
    _layer_functions(structure)  # build (and cache) outside the callback

    def solve(z, zn, pn, tg, theta, h, rho_, *weights):
        _, nlp, m = _layer_functions(structure)
        m = _packer(m, theta)
        d = data._replace(z=z, z_next=zn, p_next=pn, target=tg)
        T0 = m.pack_theta(jax.tree_util.tree_map(np.asarray, theta))
        numbers = [float(h), float(rho_)] + [float(x) for x in weights]
        out = np.empty_like(T0)
        for k in range(T0.shape[1]):
            args = _layer_args(m, d, k, T0, numbers)
            p = np.concatenate([np.asarray(a, float).ravel(order="F") for a in args])
            out[:, k] = np.asarray(nlp(x0=T0[:, k], p=p)["x"]).ravel()
        new = m.unpack_theta(out)
        return {k: new[k].astype(np.asarray(theta[k]).dtype) for k in theta}

    shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), data.theta)
    weights = [getattr(problem, n) for n in _WEIGHTS]
    return jax.pure_callback(solve, shapes, data.z, data.z_next, data.p_next, data.target,
                             data.theta, problem.h, rho, *weights)
