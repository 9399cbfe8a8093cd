"""Critical points of a trained network's scalar input-output map (Kuehn & Kuntz, 2024).

A neural ODE or ResNet with invertible layers whose state is no wider than its input
(non-augmented) maps inputs to states by a diffeomorphism, so ``F(x) = a·z_N(x) + c`` has
``∇F(x) = J_{z_N}(x)ᵀ a ≠ 0`` everywhere: no critical points. An augmented network (state wider
than the input) can have them, and for almost all weights each is non-degenerate (``F`` is a
Morse function).

:func:`critical_points` finds them in a box: Newton's method on ``∇F = 0``,
``x ← x − (∇²F)⁻¹∇F``, from every point of a grid of starts (it converges to minima, maxima and
saddles alike), keeps the points where ``‖∇F‖`` fell below ``tol`` inside the box, merges those
closer than ``merge``, and classifies each by the eigenvalues of ``∇²F`` there: its index (the
number of negative eigenvalues: 0 a minimum, ``n`` a maximum, else a saddle) and whether it is
degenerate (an eigenvalue below ``degenerate_tol`` relative to the largest in size).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .robustness import outputs

__all__ = ["CriticalPoint", "output_map", "critical_points"]


class CriticalPoint(NamedTuple):
    """A critical point ``x`` of ``F``: its value, the Hessian's eigenvalues, index, degeneracy."""

    x: np.ndarray
    value: float
    eigenvalues: np.ndarray
    index: int
    degenerate: bool


def output_map(problem, controls, output: int = 0):
    """``F(x) = λ2(z_N(x))_output`` for one input vector ``x`` (the network's scalar output)."""

    def F(x):
        return outputs(problem, controls, x[None].astype(problem.x.dtype))[0, output]

    return F


def critical_points(F, lower, upper, *, grid: int = 9, newton_steps: int = 60, tol: float = 1e-7,
                    merge: float = 1e-3, degenerate_tol: float = 1e-6) -> list[CriticalPoint]:
    """The critical points of the scalar ``F: ℝⁿ → ℝ`` in the box ``[lower, upper]`` (module doc),
    sorted by their first coordinate. ``grid`` starts per axis (``gridⁿ`` in all)."""
    lower, upper = np.atleast_1d(np.asarray(lower, float)), np.atleast_1d(np.asarray(upper, float))
    if lower.shape != upper.shape or np.any(upper <= lower):
        raise ValueError(f"the box needs lower < upper in every coordinate, got {lower} and {upper}")
    n = lower.size
    axes = [np.linspace(a, b, grid) for a, b in zip(lower, upper)]
    starts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, n)
    g, H = jax.grad(F), jax.hessian(F)

    def newton(x):
        def body(_, x):
            step = jnp.linalg.solve(H(x) + 1e-12 * jnp.eye(n, dtype=x.dtype), g(x))
            return jnp.where(jnp.all(jnp.isfinite(step)), x - step, x)

        x = jax.lax.fori_loop(0, newton_steps, body, x)
        return x, jnp.linalg.norm(g(x))

    xs, residual = jax.jit(jax.vmap(newton))(jnp.asarray(starts))
    xs, residual = np.asarray(xs), np.asarray(residual)
    inside = np.all((xs >= lower) & (xs <= upper), axis=1) & (residual < tol)
    found: list[np.ndarray] = []
    for x in xs[inside]:
        if all(np.linalg.norm(x - y) > merge for y in found):
            found.append(x)
    out = []
    for x in sorted(found, key=lambda v: tuple(v)):
        ev = np.linalg.eigvalsh(np.asarray(H(jnp.asarray(x))))
        scale = max(1.0, float(np.max(np.abs(ev))))
        out.append(CriticalPoint(x, float(F(jnp.asarray(x))), ev, int(np.sum(ev < 0)),
                                 bool(np.min(np.abs(ev)) < degenerate_tol * scale)))
    return out
