"""Turnpike diagnostics: how close the optimal flow stays to a steady state for most of ``[0, T]``.

Per layer ``k`` (control interval ``[t_k, t_{k+1}]``, ``t_k = k h``):

    ‖θ_k‖                                   (all leaves of the layer together)
    v_k = ( (1/S) Σ_i ‖z_{i,k+1} − z_{i,k}‖² )^{1/2} / h          (flow speed)
    r_k = (1/S) Σ_i ℓ(λ2(z_{i,k}; w), y_i),  k = 0..N              (risk of the read-out at layer k)

The steady problem (Esteve, Geshkovski, Pighin & Zuazua, "Large-time asymptotics in deep
learning") is

    min_{z̄, θ̄}  R(θ̄) + L(z̄, w)   subject to  f(z̄_i, θ̄) = 0  for every sample i,

with the read-out ``w`` held at the trained one. :func:`steady_state` solves it by an augmented
Lagrangian (below). For the built-in vector fields ``f(z, 0) = 0`` for every ``z``, so ``θ̄ = 0``
is feasible and minimizes ``R ≥ 0``; the steady control is then exactly ``θ̄ = 0`` and ``z̄_i``
minimizes the tracking loss of sample ``i`` alone (for a logistic loss on separable data that
minimum is at infinity: the steady *state* is not attained and only ``θ̄ = 0`` is meaningful).

The turnpike property says ``‖θ(t) − θ̄‖ + ‖z(t) − z̄‖ ≤ C (e^{−μ t} + e^{−μ (T−t)})``;
:func:`fit_turnpike` fits that profile and :func:`band_fraction` measures the share of the
horizon spent inside an ``ε``-band.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..state import forward

__all__ = [
    "control_norms",
    "flow_speed",
    "layer_risk",
    "turnpike_profile",
    "steady_state",
    "SteadyState",
    "steady_distance",
    "fit_turnpike",
    "TurnpikeFit",
    "band_fraction",
]


@jax.jit
def control_norms(theta):
    """``‖θ_k‖ = (Σ_leaves Σ_entries θ_k²)^{1/2}`` for every layer, shape ``(N,)``."""
    leaves = jax.tree_util.tree_leaves(theta)
    return jnp.sqrt(sum(jnp.sum(leaf.reshape(leaf.shape[0], -1) ** 2, axis=1) for leaf in leaves))


@jax.jit
def flow_speed(zs, h):
    """``v_k = ((1/S) Σ_i ‖z_{i,k+1} − z_{i,k}‖²)^{1/2} / h``, shape ``(N,)``, from ``zs (N+1, S, *shape)``
    (``‖·‖`` over all of a sample's state: features, or channels × space)."""
    dz = zs[1:] - zs[:-1]
    dz = dz.reshape(dz.shape[:2] + (-1,))
    return jnp.sqrt(jnp.mean(jnp.sum(dz**2, axis=-1), axis=-1)) / h


@jax.jit
def layer_risk(problem, zs, w):
    """``r_k = (1/S) Σ_i ℓ(λ2(z_{i,k}; w), y_i)`` for ``k = 0..N``, shape ``(N+1,)``."""
    return jax.vmap(lambda z: problem.data_loss(z, w))(zs)


@jax.jit
def turnpike_profile(problem, controls, zs=None) -> dict:
    """All per-layer turnpike curves of ``controls`` (states recomputed if not given).

    Returns ``t`` (interval midpoints ``(k + ½) h``, shape ``(N,)``), ``theta_norm``, ``speed``,
    ``t_nodes`` (``k h``, shape ``(N+1,)``) and ``risk``.
    """
    zs = forward(problem, controls.theta, problem.z0(controls.lift)) if zs is None else zs
    h = problem.h
    k = jnp.arange(problem.N)
    return {
        "t": (k + 0.5) * h,
        "theta_norm": control_norms(controls.theta),
        "speed": flow_speed(zs, h),
        "t_nodes": jnp.arange(problem.N + 1) * h,
        "risk": layer_risk(problem, zs, controls.w),
    }


# -- the steady problem ------------------------------------------------------------------------
class SteadyState(NamedTuple):
    """Solution of the steady problem: ``z`` (S, d), ``theta`` (one layer), the cost
    ``R(θ̄) + L(z̄, w)`` and the constraint residual ``max_i ‖f(z̄_i, θ̄)‖``."""

    z: jax.Array
    theta: dict
    cost: jax.Array
    residual: jax.Array


def steady_state(problem, w, z_init, theta_init, *, rho: float = 10.0, rounds: int = 20,
                 iters: int = 100) -> SteadyState:
    """Solve ``min R(θ̄) + L(z̄, w)`` s.t. ``f(z̄_i, θ̄) = 0`` by an augmented Lagrangian.

    With ``c_i = f(z̄_i, θ̄)`` and multipliers ``λ_i``, each of ``rounds`` rounds minimizes

        R(θ̄) + L(z̄, w) + (1/S) Σ_i [λ_i · c_i + (ρ/2) ‖c_i‖²]

    over ``(z̄, θ̄)`` by ``iters`` L-BFGS steps (optax) from the previous point, then updates
    ``λ_i ← λ_i + ρ c_i``. At a KKT point the multiplier term makes the solution exact for a
    finite ``ρ`` (no ``ρ → ∞`` needed). ``(z_init, theta_init)`` is the start (e.g. the states
    and control of the middle layer); the problem is non-convex, so the answer is a local one.
    """
    if rounds < 1 or iters < 1:
        raise ValueError(f"rounds and iters must be >= 1, got {rounds}, {iters}")
    return _steady_state(problem, w, jnp.asarray(z_init), theta_init, rho, rounds, iters)


@functools.partial(jax.jit, static_argnums=(5, 6))
def _steady_state(problem, w, z0, th0, rho, rounds, iters):
    f = problem.dynamics
    S = z0.shape[0]

    def cost(v):
        z, th = v
        return problem.running(th) + problem.tracking_cost(z, w)

    def lagrangian(v, lam):
        c = f(v[0], v[1])
        return cost(v) + (jnp.sum(lam * c) + 0.5 * rho * jnp.sum(c**2)) / S

    opt = optax.lbfgs()

    def one_round(carry, _):
        v, lam = carry
        fun = lambda u: lagrangian(u, lam)  # noqa: E731
        vg = optax.value_and_grad_from_state(fun)

        def inner(c, _):
            u, state = c
            value, grad = vg(u, state=state)
            upd, state = opt.update(grad, state, u, value=value, grad=grad, value_fn=fun)
            return (optax.apply_updates(u, upd), state), None

        (v, _), _ = jax.lax.scan(inner, (v, opt.init(v)), None, length=iters)
        return (v, lam + rho * f(v[0], v[1])), None

    v0 = (z0, th0)
    (v, _), _ = jax.lax.scan(one_round, (v0, jnp.zeros_like(z0)), None, length=rounds)
    res = jnp.max(jnp.linalg.norm(f(v[0], v[1]), axis=-1))
    return SteadyState(v[0], v[1], cost(v), res)


@jax.jit
def steady_distance(theta, zs, steady: SteadyState) -> dict:
    """``‖θ_k − θ̄‖`` (shape ``(N,)``) and ``((1/S) Σ_i ‖z_{i,k} − z̄_i‖²)^{1/2}`` (``(N+1,)``)."""
    diff = jax.tree_util.tree_map(lambda a, b: a - b[None], theta, steady.theta)
    state = jnp.sqrt(jnp.mean(jnp.sum((zs - steady.z[None]) ** 2, axis=-1), axis=-1))
    return {"control": control_norms(diff), "state": state}


# -- the exponential profile -------------------------------------------------------------------
class TurnpikeFit(NamedTuple):
    """``v(t) ≈ C₀ e^{−μ t} + C_T e^{−μ (T−t)}`` (``C₀ = C_T = C`` for the symmetric fit);
    ``r2`` is the coefficient of determination of ``log v`` and ``rel_rms`` the relative RMS
    error of ``v`` itself."""

    mu: float
    C0: float
    CT: float
    r2: float
    rel_rms: float


def fit_turnpike(t, values, T, *, amplitudes: str = "equal") -> TurnpikeFit:
    """Least-squares fit of the turnpike profile to positive values ``v(t_k)``.

    ``amplitudes="equal"``: ``log v = log C + log(e^{−μ t} + e^{−μ (T−t)})``, the form of the
    turnpike estimate. For a fixed ``μ`` the best ``log C`` is the mean residual.
    ``amplitudes="free"``: ``v = C₀ e^{−μ t} + C_T e^{−μ (T−t)}`` with ``C₀, C_T ≥ 0``, for
    profiles whose two ends differ (with a tracking term the terminal cost agrees with the running
    one and often only the initial arc remains, ``C_T ≈ 0``). For a fixed ``μ`` the amplitudes
    minimize the relative error ``Σ ((v − model)/v)²``, a non-negative linear least-squares
    problem.

    Either way the fit is then a 1-D search over ``μ`` (a grid on ``[0, 20/Δt]``, ``Δt`` the
    smallest spacing of ``t``, refined by a bounded scalar minimization) of the squared error of
    ``log v``. With equal amplitudes ``μ`` and ``−μ`` give the same shape, so ``μ ≥ 0``:
    ``μ > 0`` is decay away from the ends, ``μ = 0`` a flat profile; a profile with a bump in
    the middle fits badly (low ``r2``). Non-positive values carry no logarithm and are left out;
    at least three positive values are needed.
    """
    from scipy.optimize import minimize_scalar, nnls

    if amplitudes not in ("equal", "free"):
        raise ValueError(f"amplitudes must be 'equal' or 'free', got {amplitudes!r}")
    t = np.asarray(t, dtype=float)
    v = np.asarray(values, dtype=float)
    T = float(T)
    if t.shape != v.shape or t.ndim != 1:
        raise ValueError(f"t and values must be vectors of the same length, got {t.shape}, {v.shape}")
    if not T > 0:
        raise ValueError(f"horizon T must be positive, got {T}")
    keep = np.isfinite(v) & (v > 0)
    if keep.sum() < 3:
        raise ValueError(f"need at least 3 positive values to fit μ, got {int(keep.sum())}")
    t, v = t[keep], v[keep]
    logv = np.log(v)
    dt = np.min(np.diff(np.sort(t)))
    dt = dt if dt > 0 else T

    def model(mu):
        """``(C₀, C_T, log model)`` for this ``μ``."""
        g0, gT = np.exp(-mu * t), np.exp(-mu * (T - t))
        if amplitudes == "equal":
            logg = np.logaddexp(-mu * t, -mu * (T - t))
            logC = float(np.mean(logv - logg))
            return np.exp(logC), np.exp(logC), logC + logg
        (c0, cT), _ = nnls(np.stack([g0 / v, gT / v], axis=1), np.ones_like(v))
        m = c0 * g0 + cT * gT
        with np.errstate(divide="ignore"):
            return c0, cT, np.where(m > 0, np.log(np.maximum(m, 1e-300)), -np.inf)

    def ssr(mu):
        r = logv - model(mu)[2]
        return float(np.sum(r**2)) if np.all(np.isfinite(r)) else np.inf

    grid = np.concatenate([[0.0], np.geomspace(1e-3 / T, 20.0 / dt, 400)])
    vals = np.array([ssr(m) for m in grid])
    j = int(np.argmin(vals))
    mu = grid[j]
    lo, hi = grid[max(j - 1, 0)], grid[min(j + 1, len(grid) - 1)]
    if hi > lo:
        res = minimize_scalar(ssr, bounds=(lo, hi), method="bounded",
                              options={"xatol": 1e-12 * max(1.0, abs(mu))})
        if res.fun < vals[j]:
            mu = float(res.x)
    c0, cT, logm = model(mu)
    sst = float(np.sum((logv - logv.mean()) ** 2))
    err = ssr(mu)
    tiny = 1e-20 * len(v)  # a flat profile: both sums are round-off
    r2 = 1.0 - err / sst if sst > tiny else float(err <= tiny)
    rel = float(np.sqrt(np.mean((v - np.exp(logm)) ** 2) / np.mean(v**2)))
    return TurnpikeFit(float(mu), float(c0), float(cT), float(r2), rel)


def band_fraction(values, eps: float) -> float:
    """Share of the horizon with ``v_k ≤ ε``: ``#{k : v_k ≤ ε} / N`` for per-interval values
    (each interval lasts ``h``, so this is the measure of ``{t : v(t) ≤ ε}`` over ``T``)."""
    if not eps >= 0:
        raise ValueError(f"band width eps must be >= 0, got {eps}")
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be a non-empty vector, got shape {v.shape}")
    return float(np.mean(v <= eps))
