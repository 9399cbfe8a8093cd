"""The depth-versus-turnpike study: train the same problem over a range of horizons and measure.

Esteve, Geshkovski, Pighin & Zuazua ("Large-time asymptotics in deep learning") prove that with
an L² running cost the training error of optimal controls is ``O(1/T)``, and that with a tracking
term the optimal ``θ(t)`` and states stay exponentially close to the steady problem's solution
except near the ends (turnpike). This module sweeps

* ``T`` at a fixed step ``h`` (so the number of layers ``N = T/h`` grows with ``T``), or
* ``N`` at a fixed ``T`` (``fixed_T``; the same ``N`` values, so depth and horizon separate),

trains each problem with the given solver and records, per horizon, the final training error
(the data loss ``(1/S) Σ ℓ`` at the last layer), ``‖θ‖_{L²}``, the turnpike rate ``μ`` fitted to
``‖θ(t) − θ̄‖`` and to the flow speed, and the share of the horizon inside an ``ε``-band; over the
sweep, the least-squares slope of ``log(error)`` against ``log T`` (or ``log N``).

The distance to the steady control is ``‖θ_k − θ̄‖`` with ``θ̄ = 0``: for the built-in vector
fields ``f(z, 0) = 0``, so ``θ̄ = 0`` solves the steady problem exactly
(:mod:`controlnet.diagnostics.turnpike`). The study takes a problem factory
``factory(T, N, tracking) -> ControlProblem`` and a solver, so it imports only ``controlnet`` and
the solvers' driver; :func:`regularization_sweep` takes the noisy data as arguments.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import numpy as np

import controlnet as cn
from controlnet import diagnostics as dg

from .driver import solve

__all__ = ["horizon_grid", "warm_start_controls", "measure", "run_record", "train_and_measure", "study_summary",
           "depth_study", "depth_vs_turnpike", "loglog_slope", "regularization_sweep"]

Factory = Callable[[float, int, float], cn.ControlProblem]


def horizon_grid(horizons: Sequence[float], step: float, fixed_T: float | None = None):
    """``[(T, N)]``: ``N = max(1, round(T_j / h))`` and ``T = T_j``, or ``T = fixed_T`` for all."""
    hs = [float(T) for T in horizons]
    if not hs or any(not (T > 0 and math.isfinite(T)) for T in hs):
        raise ValueError(f"horizons must be positive numbers, got {list(horizons)}")
    if not (step > 0 and math.isfinite(step)):
        raise ValueError(f"step h must be a positive number, got {step}")
    if fixed_T is not None and not fixed_T > 0:
        raise ValueError(f"fixed_T must be positive, got {fixed_T}")
    grid = [(T if fixed_T is None else float(fixed_T), max(1, int(round(T / step)))) for T in hs]
    if len({N for _, N in grid}) < len(grid):
        raise ValueError(f"horizons {hs} give repeated layer counts at step {step}; "
                         "use a smaller step or more distinct horizons")
    return grid


def loglog_slope(x, y) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (``nan`` with fewer than two points)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = (x > 0) & (y > 0) & np.isfinite(y)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def _fit(t, v, T, amplitudes="equal"):
    try:
        f = dg.fit_turnpike(t, v, T, amplitudes=amplitudes)
    except ValueError:  # e.g. a control that vanishes everywhere: no rate to fit
        return {"mu": float("nan"), "C0": float("nan"), "CT": float("nan"), "r2": float("nan")}
    return {"mu": f.mu, "C0": f.C0, "CT": f.CT, "r2": f.r2}


def warm_start_controls(controls: cn.Controls, N: int, mode: str = "fixed_h") -> cn.Controls:
    """Controls of a shorter sweep entry as the start of the next one with ``N`` layers.

    ``fixed_h`` (same step, longer horizon): the layers are kept and the new ones get ``θ = 0``,
    the steady control of the built-in fields, so the old trajectory is followed and then held
    (continuation in ``T``, the turnpike's own picture). ``fixed_T`` (same horizon, finer grid):
    ``θ(t)`` is kept as a piecewise-constant function, ``θ_new[k] = θ_old[⌊k N_old / N⌋]``.
    """
    N_old = jax.tree_util.tree_leaves(controls.theta)[0].shape[0]
    if mode == "fixed_h":
        if N < N_old:
            raise ValueError(f"cannot extend {N_old} layers to fewer ({N}); sort the horizons")
        pad = lambda a: jax.numpy.concatenate([a, jax.numpy.zeros((N - N_old,) + a.shape[1:], a.dtype)])  # noqa: E731
        return controls._replace(theta=jax.tree_util.tree_map(pad, controls.theta))
    if mode == "fixed_T":
        idx = (np.arange(N) * N_old) // N
        return controls._replace(theta=jax.tree_util.tree_map(lambda a: a[idx], controls.theta))
    raise ValueError(f"mode must be 'fixed_h' or 'fixed_T', got {mode!r}")


def measure(problem: cn.ControlProblem, controls: cn.Controls, *, eps: float = 0.1) -> dict:
    """The turnpike measurements of trained ``controls`` on ``problem`` (no training, no solver).

    Returns JSON-able numbers: ``T``, ``N``, ``h``; ``‖θ‖`` in L², L¹ and of ``∂_tθ``; the rate
    ``μ`` of ``‖θ(t)‖ ≈ C(e^{−μt} + e^{−μ(T−t)})`` (equal amplitudes, and ``free`` ones) and of
    the flow speed; the share of the horizon inside the band ``‖θ(t)‖ ≤ ε`` (and speed ``≤ ε``);
    the largest values in the middle half and at the ends; the per-layer curves ``theta_norm``,
    ``speed`` (per interval, midpoints ``t``) and ``risk`` (per node).
    """
    prof = {k: np.asarray(v, float) for k, v in jax.jit(dg.turnpike_profile)(problem, controls).items()}
    T, h = float(problem.T), float(problem.h)
    fit_theta = _fit(prof["t"], prof["theta_norm"], T)
    fit_speed = _fit(prof["t"], prof["speed"], T)
    free = _fit(prof["t"], prof["theta_norm"], T, "free")
    reg = dg.regularization_summary(controls.theta, h)
    mid = slice(problem.N // 4, problem.N - problem.N // 4)  # the middle half of the horizon
    return {
        "T": T, "N": problem.N, "h": h,
        "theta_l2": reg["l2"], "theta_l1": reg["l1"], "theta_dt_l2": reg["dt_l2"],
        "mu": fit_theta["mu"], "mu_r2": fit_theta["r2"], "mu_C": fit_theta["C0"],
        "mu_free": free["mu"], "mu_free_r2": free["r2"], "mu_free_C0": free["C0"],
        "mu_free_CT": free["CT"],
        "mu_speed": fit_speed["mu"], "mu_speed_r2": fit_speed["r2"],
        "eps": eps,
        "band_fraction": dg.band_fraction(prof["theta_norm"], eps),
        "band_fraction_speed": dg.band_fraction(prof["speed"], eps),
        "theta_norm_mid": float(np.max(prof["theta_norm"][mid])),
        "theta_norm_ends": float(max(prof["theta_norm"][0], prof["theta_norm"][-1])),
        "speed_mid": float(np.max(prof["speed"][mid])),
        "speed_ends": float(max(prof["speed"][0], prof["speed"][-1])),
        "t": prof["t"].tolist(), "theta_norm": prof["theta_norm"].tolist(),
        "speed": prof["speed"].tolist(), "risk": prof["risk"].tolist(),
    }


def run_record(status: str, info: dict) -> dict:
    """A solve's own numbers for the study's record: ``status``, ``iterations``, ``wall_time``
    (the iterations), ``compile_time`` (``None`` for a solver that does not time it apart),
    ``loss``, ``training_error`` (the data loss at the last layer), ``accuracy``, and the test
    split's ``test_loss``, ``test_accuracy`` when there is one."""
    out = {"status": status, "iterations": info["iterations"], "wall_time": info["wall_time"],
           "compile_time": info.get("compile_time"), "loss": info["loss"],
           "training_error": info["data_loss"], "accuracy": info["accuracy"]}
    out.update({k: info[k] for k in ("test_loss", "test_accuracy") if k in info})
    return out


def train_and_measure(problem, solver, *, max_iters: int = 1000, seed: int = 0,
                      init_scale: float = 0.1, eps: float = 0.1, test=None, controls=None) -> dict:
    """Train ``problem`` from ``controls`` (default: random, ``init_scale``) and :func:`measure`
    the trained controls.

    Returns :func:`measure`'s numbers with the solve's (:func:`run_record`: status, iterations,
    iteration and compile times, losses, accuracy), and under ``"controls"`` the trained
    controls themselves (not JSON-able; the study drops them).
    """
    if controls is None:
        controls = problem.init_controls(jax.random.PRNGKey(seed), scale=init_scale)
    result = solve(solver, problem, controls, max_iters=max_iters, seed=seed, test=test, progress=False)
    out = {**measure(problem, result.controls, eps=eps), **run_record(result.status, result.info)}
    out["controls"] = result.controls
    return out


def depth_study(factory: Factory, solver, horizons: Sequence[float], *, step: float = 0.25,
                fixed_T: float | None = None, tracking: float = 0.0, max_iters: int = 1000,
                seed: int = 0, init_scale: float = 0.1, eps: float = 0.1, warm_start: bool = False,
                callback=None) -> dict:
    """One sweep (module doc) for one tracking weight; ``callback(run)`` after each horizon.

    With ``warm_start`` the horizons run in increasing order and each starts from the previous
    solution (:func:`warm_start_controls`) instead of random controls; the first is random.

    Returns ``{"mode", "step", "tracking", "eps", "runs": [...], "slope", "slope_against"}``
    where ``slope`` is :func:`loglog_slope` of the training error against ``T`` (``fixed_h``)
    or against ``N`` (``fixed_T``).
    """
    runs = []
    grid = horizon_grid(horizons, step, fixed_T)
    if warm_start:
        grid = sorted(grid, key=lambda TN: TN[1])
    mode = "fixed_T" if fixed_T is not None else "fixed_h"
    previous = None
    for T, N in grid:
        problem = factory(T, N, tracking)
        if not isinstance(problem, cn.ControlProblem) or problem.N != N:
            raise ValueError(f"factory(T={T}, N={N}, tracking={tracking}) must return a "
                             f"ControlProblem with N={N} layers")
        start = warm_start_controls(previous, N, mode) if (warm_start and previous is not None) else None
        run = train_and_measure(problem, solver, max_iters=max_iters, seed=seed,
                                init_scale=init_scale, eps=eps, controls=start)
        previous = run.pop("controls")
        run["warm_start"] = start is not None
        runs.append(run)
        if callback is not None:
            callback(run)
    return study_summary(runs, step=step, fixed_T=fixed_T, tracking=tracking, eps=eps, warm_start=warm_start)


def study_summary(runs: list, *, step: float, fixed_T: float | None, tracking: float, eps: float,
                  warm_start: bool = False) -> dict:
    """One sweep's summary from its runs' records (:func:`train_and_measure`'s, in horizon
    order): ``{"mode", "warm_start", "step", "fixed_T", "tracking", "eps", "runs", "slope",
    "slope_against"}``, the slope of ``log`` training error against ``log T`` (or ``log N`` at a
    fixed ``T``)."""
    against = "N" if fixed_T is not None else "T"
    return {
        "mode": "fixed_T" if fixed_T is not None else "fixed_h", "warm_start": bool(warm_start),
        "step": float(step), "fixed_T": fixed_T, "tracking": float(tracking), "eps": eps,
        "runs": runs,
        "slope": loglog_slope([r[against] for r in runs], [r["training_error"] for r in runs]),
        "slope_against": against,
    }


def depth_vs_turnpike(factory: Factory, solver, horizons: Sequence[float], *,
                      tracking: float = 1.0, **options) -> dict:
    """The L²-only sweep and, if ``tracking > 0``, the sweep with tracking weight ``tracking``:
    ``{"l2": depth_study(..., tracking=0), "tracking": depth_study(..., tracking=tracking)}``."""
    if not tracking >= 0:
        raise ValueError(f"tracking weight must be >= 0, got {tracking}")
    out = {"l2": depth_study(factory, solver, horizons, tracking=0.0, **options)}
    if tracking > 0:
        out["tracking"] = depth_study(factory, solver, horizons, tracking=tracking, **options)
    return out


def regularization_sweep(problem: cn.ControlProblem, solver, weights: Sequence[float], data, *,
                         kind: str = "l2", max_iters: int = 1000, seed: int = 0,
                         init_scale: float = 0.1) -> dict:
    """Train ``problem`` on ``data = (x, y, x_test, y_test)`` for each regularization weight.

    ``kind`` is the weight varied: ``"l2"`` (α), ``"l1"`` (α₁) or ``"smoothness"`` (β). Each run
    reports the training and test data loss and error ``1 − accuracy``, and ``‖θ‖_{L²}``,
    ``‖θ‖_{L¹}``, the L¹ stopping time and ``‖∂_tθ‖_{L²}``.
    """
    if kind not in ("l2", "l1", "smoothness"):
        raise ValueError(f"kind must be 'l2', 'l1' or 'smoothness', got {kind!r}")
    try:
        x, y, x_test, y_test = data
    except (TypeError, ValueError):
        raise ValueError("data must be a tuple (x, y, x_test, y_test)") from None
    runs = []
    for weight in weights:
        p = dataclasses.replace(problem, x=x, y=y, **{kind: float(weight)})
        p_test = p.with_data(x_test, y_test)  # validates the test split before training
        controls = p.init_controls(jax.random.PRNGKey(seed), scale=init_scale)
        result = solve(solver, p, controls, max_iters=max_iters, seed=seed,
                       test=(p_test.x, p_test.y), progress=False)
        info = result.info
        reg = dg.regularization_summary(result.controls.theta, float(p.h))
        runs.append({
            "weight": float(weight), "status": result.status,
            "train_loss": info["data_loss"], "test_loss": info["test_loss"],
            "train_error": 1.0 - info["accuracy"], "test_error": 1.0 - info["test_accuracy"],
            "theta_l2": reg["l2"], "theta_l1": reg["l1"], "theta_dt_l2": reg["dt_l2"],
            "stopping_time": reg["stopping_time"],
        })
    return {"kind": kind, "runs": runs}
