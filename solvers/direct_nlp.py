"""The direct solver's NLP (:mod:`solvers.direct`): decision variables, the dynamics as
equality constraints, and the co-states read off their multipliers.

Variables ``Θ (p×N)`` (split ``Θ = Θ⁺ − Θ⁻``, ``Θ± ≥ 0``, with L1), the states
``Z_1 … Z_N`` (each ``d×S``, multiple shooting) and the read-out ``w``, stacked in one column in
that order; constraints ``g_k = Ψ_h(Z_k, θ_k) − Z_{k+1} = 0``; co-states ``p_{k+1} = −λ_k`` and
``p_0 = ∇_z H_0(z_0, p_1, θ_0)`` (``Z_0`` is data, so no multiplier carries it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import casadi_model
from .casadi_model import ca

__all__ = ["NLP", "Variables", "decision_variables", "dynamics_constraints", "initial_costate_function",
           "costates_from_multipliers", "pack_states", "theta_w", "split_x"]


class NLP(NamedTuple):
    solver: Any
    monitor: Any
    model: casadi_model.Model
    slices: dict
    lbx: np.ndarray
    ubx: np.ndarray
    n_g: int
    dHdz: Any


class Variables(NamedTuple):
    """The NLP's decision variables: ``x`` (all of them, one column), its bounds and the
    slices of each part, and the symbols the objective and dynamics are written in."""

    x: Any
    lbx: np.ndarray
    ubx: np.ndarray
    slices: dict
    Theta: Any  # p × N: θ (or θ⁺ − θ⁻ with the L1 split)
    l1: Any  # Σ(θ⁺ + θ⁻) with the split, else None
    Z: Any  # d × S·N: [Z_1 … Z_N] (multiple shooting), else None
    w: Any


def decision_variables(m, split: bool, multiple: bool) -> Variables:
    """``Θ`` (split into ``Θ⁺, Θ⁻ ≥ 0`` with L1), the states ``Z_1 … Z_N`` (multiple shooting)
    and the read-out ``w``, stacked in that order."""
    N, S, d, p = m.N, m.S, m.d, m.p
    parts, lb = [], []
    if split:
        Tp, Tm = ca.MX.sym("theta_plus", p, N), ca.MX.sym("theta_minus", p, N)
        Theta, l1 = Tp - Tm, ca.sum1(ca.sum2(Tp + Tm))
        parts += [("theta_plus", Tp), ("theta_minus", Tm)]
        lb += [np.zeros(2 * p * N)]
    else:
        Theta, l1 = ca.MX.sym("theta", p, N), None
        parts += [("theta", Theta)]
        lb += [np.full(p * N, -np.inf)]
    Z = ca.MX.sym("Z", d, S * N) if multiple else None
    if multiple:
        parts.append(("Z", Z))
        lb.append(np.full(d * S * N, -np.inf))
    w = ca.MX.sym("w", m.n_w)
    parts.append(("w", w))
    lb.append(np.full(m.n_w, -np.inf))
    slices, off = {}, 0
    for name, sym in parts:
        slices[name] = slice(off, off + sym.numel())
        off += sym.numel()
    x = ca.vertcat(*[ca.vec(sym) for _, sym in parts])
    lbx = np.concatenate(lb)
    return Variables(x, lbx, np.full(lbx.shape, np.inf), slices, Theta, l1, Z, w)


def dynamics_constraints(m, v: Variables):
    """``(Z_0 … Z_{N−1}, Z_N, g)``: with multiple shooting the states are variables and
    ``g_k = Ψ_h(Z_k, θ_k) − Z_{k+1}`` (all layers by one mapped CasADi function); with single
    shooting the forward pass, and no constraints."""
    if v.Z is None:
        Zbefore, ZN = m.rollout(v.Theta)
        return Zbefore, ZN, ca.MX(0, 1)
    S, N = m.S, m.N
    Zbefore = ca.horzcat(ca.DM(m.z0), v.Z[:, : S * (N - 1)])
    g = ca.vec(m.step_function().map(N)(Zbefore, v.Theta) - v.Z)
    return Zbefore, v.Z[:, S * (N - 1):], g


def initial_costate_function(m):
    """``(z, p, θ, w) ↦ ∇_z H(z, p, θ, w)``: ``p_0`` from ``p_1`` (``Z_0`` is data, so no
    multiplier carries it)."""
    Zs, Ps = ca.MX.sym("z", m.d, m.S), ca.MX.sym("p", m.d, m.S)
    th, ws = ca.MX.sym("theta", m.p), ca.MX.sym("w", m.n_w)
    return ca.Function("dHdz", [Zs, Ps, th, ws], [ca.gradient(m.hamiltonian(Zs, Ps, th, ws), Zs)])


def costates_from_multipliers(nlp, xv, lam_g) -> np.ndarray:
    """Co-states ``p_0 … p_N`` ``(N+1, S, d)`` from the dynamics' multipliers: ``p_{k+1} = −λ_k``
    (module doc), and ``p_0 = ∇_z H_0(z_0, p_1, θ_0)``."""
    m = nlp.model
    ps_next = m.states((-lam_g).reshape(m.d, -1, order="F"))  # p_1 … p_N
    Theta, w = theta_w(xv, nlp.slices, m)
    p0 = np.asarray(nlp.dHdz(m.z0, ps_next[0].T, Theta[:, 0], w), float).T
    return np.concatenate([p0[None], ps_next])


def pack_states(zs) -> np.ndarray:
    """States ``(K, S, d)`` as the column-major vector of ``[Z_1 … Z_K] (d × S·K)``."""
    K, S, d = zs.shape
    return np.asarray(zs, float).transpose(2, 0, 1).reshape(d, K * S).ravel(order="F")


def theta_w(xv, sl, m):
    if "theta" in sl:
        Theta = xv[sl["theta"]].reshape(m.p, m.N, order="F")
    else:
        Theta = (xv[sl["theta_plus"]] - xv[sl["theta_minus"]]).reshape(m.p, m.N, order="F")
    return Theta, xv[sl["w"]]


def split_x(xv, sl, m):
    Theta, wv = theta_w(xv, sl, m)
    return m.unpack_theta(Theta), m.unpack_w(wv)
