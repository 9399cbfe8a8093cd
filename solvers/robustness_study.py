"""The robustness study: attacked and certified accuracy against the attack radius.

Trains each network of a problem (e.g. an unconstrained ResNet and a 1-Lipschitz network) with
one solver from the same seed, attacks every test sample with the projected gradient attack
through the adjoint (:func:`controlnet.diagnostics.robustness.pgd`) at each radius ``ε``, and,
for networks with a certified Lipschitz bound (:func:`~controlnet.diagnostics.robustness.
lipschitz_bound`), reports the certified accuracy: the fraction of test samples whose certified
radius is at least ``ε``. A certified accuracy is a lower bound of the accuracy under any attack
of that radius. The problems come from a factory, so this module needs nothing from
``problems/``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from controlnet.diagnostics import robustness as rb

from .driver import solve

__all__ = ["robustness_study", "measure"]


def _radii(eps) -> list[float]:
    eps = [float(e) for e in eps]
    if any(not e >= 0 for e in eps):
        raise ValueError(f"attack radii must be >= 0, got {eps}")
    return eps


def measure(problem, controls, test, eps, *, steps: int = 40, norm: str = "2") -> dict:
    """The robustness of trained ``controls`` on the test split ``test = (x, y)`` (no training).

    Returns ``eps``, ``attacked`` (accuracy under the attack at each radius; at ``ε = 0`` the
    clean accuracy), ``empirical_lipschitz``, and where a bound exists ``lipschitz_bound`` and
    ``certified`` (at ``ε = 0``: the fraction classified correctly).
    """
    eps = _radii(eps)
    c = controls
    x, y = (jnp.asarray(a) for a in test)
    clean = float(jnp.mean(rb.margins(problem, c, x, y) > 0))
    row = {"eps": eps, "attacked": [clean if e == 0 else rb.robust_accuracy(problem, c, x, y, e, norm=norm, steps=steps)
                                    for e in eps],
           "empirical_lipschitz": float(rb.empirical_lipschitz(problem, c, x))}
    try:
        L = float(rb.lipschitz_bound(problem, c))
    except ValueError:  # no certified bound for this network
        L = None
    if L is not None and norm == "2":
        radius = np.asarray(rb.certified_radius(problem, c, x, y, L))
        row.update(lipschitz_bound=L,
                   certified=[float(np.mean(radius > 0)) if e == 0 else float(np.mean(radius >= e)) for e in eps])
    return row


def robustness_study(factory, solver, eps, *, max_iters: int, seed: int = 0, steps: int = 40,
                     norm: str = "2") -> dict:
    """``{label: row}`` for every network of ``factory() -> {label: (problem, (x_test, y_test))}``,
    each trained from ``init_controls(PRNGKey(seed))`` and then :func:`measure`d (its ``row``)."""
    eps = _radii(eps)
    out = {}
    for label, (p, test) in factory().items():
        c = solve(solver, p, p.init_controls(jax.random.PRNGKey(seed)), max_iters=max_iters, seed=seed,
                  progress=False).controls
        out[label] = measure(p, c, test, eps, steps=steps, norm=norm)
    return out
