"""Architecture classes: non-augmented, augmented, or with a bottleneck (Kuehn & Kuntz).

A feed-forward model maps through layers of widths ``n_0 (input), n_1, …, n_L (output)``; layer
``l`` acts through a weight (or Jacobian) of rank ``r_l ≤ min(n_l, n_{l+1})``. A rank-deficient
weight is *degenerate*: the model factors through ``R^{r_l}``, so it is equivalent to a model
with an extra layer of width ``r_l`` (the normal form of Kuehn & Kuntz, "Analysis of the
geometric structure of neural networks and neural ODEs via Morse functions", 2024). On the
effective widths ``e = (n_0, [r_0], n_1, [r_1], …, n_L)`` (``r_l`` inserted where degenerate):

    non-augmented   e is non-increasing (no layer wider than an earlier one): the input-output
                    map has no critical points, and cannot represent e.g. ``x ↦ x²`` in 1-D
    bottleneck      some inner e_i is narrower than an earlier *and* a later width: information
                    lost at e_i cannot be recovered; critical points may be degenerate
    augmented       otherwise (some layer wider than the input, no bottleneck)

A degenerate layer is always a bottleneck (``r_l`` is narrower than both its neighbours); the
flag ``degenerate`` says whether the bottleneck comes from a rank rather than a width.

For a control problem the widths are ``d_in``, the state width ``d`` after the lift and after
each of the ``N`` layers, and ``n_out`` after the read-out; the layer ranks are the generic ranks
of ``∂Ψ_h/∂z`` on the data (a ResNet step ``z + h f`` is full rank for small ``h``; an MLP step
``σ(Wz + b)`` has the rank of ``W``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from .state import forward

__all__ = ["Architecture", "classify", "weight_ranks", "layer_ranks", "classify_problem"]

KINDS = ("non-augmented", "augmented", "bottleneck")


class Architecture(NamedTuple):
    """``kind`` (one of ``KINDS``), whether some layer is ``degenerate``, the effective widths."""

    kind: str
    degenerate: bool
    effective_widths: tuple
    reason: str


def classify(widths, ranks=None) -> Architecture:
    """Classify a model with layer widths ``(n_0..n_L)`` and weight ranks ``(r_0..r_{L−1})``.

    ``ranks=None`` means every weight has full rank ``min(n_l, n_{l+1})``.
    """
    widths = tuple(int(n) for n in widths)
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"widths must list at least the input and output widths, all >= 1; got {widths}")
    L = len(widths) - 1
    if ranks is None:
        ranks = [min(widths[l], widths[l + 1]) for l in range(L)]
    ranks = tuple(int(r) for r in ranks)
    if len(ranks) != L:
        raise ValueError(f"need one rank per layer map: {L} for widths {widths}, got {len(ranks)}")
    for l, r in enumerate(ranks):
        if not 0 <= r <= min(widths[l], widths[l + 1]):
            raise ValueError(
                f"rank {r} of layer {l} is impossible for a {widths[l + 1]}x{widths[l]} weight"
            )
    eff, labels = [widths[0]], ["the input"]
    for l in range(L):
        if ranks[l] < min(widths[l], widths[l + 1]):
            eff.append(ranks[l])
            labels.append(f"the rank-{ranks[l]} weight of layer {l}")
        eff.append(widths[l + 1])
        labels.append(f"layer {l + 1} of width {widths[l + 1]}")
    eff = tuple(eff)
    degenerate = len(eff) > len(widths)
    for i in range(1, len(eff) - 1):
        if eff[i] < max(eff[:i]) and eff[i] < max(eff[i + 1 :]):
            return Architecture(
                "bottleneck", degenerate, eff,
                f"{labels[i]} is narrower than a layer before and after it (effective widths {eff})",
            )
    if all(a >= b for a, b in zip(eff, eff[1:])):
        return Architecture("non-augmented", degenerate, eff,
                            f"no layer wider than the input (effective widths {eff})")
    return Architecture("augmented", degenerate, eff,
                        f"a layer wider than the input, no bottleneck (effective widths {eff})")


def weight_ranks(matrices, rtol=None) -> tuple:
    """Numerical ranks of weight matrices (singular values above ``rtol·σ_max``; numpy's default)."""
    return tuple(int(np.linalg.matrix_rank(np.asarray(M), rtol=rtol)) for M in matrices)


def layer_ranks(problem, theta, rtol=None) -> np.ndarray:
    """Per layer, ``max_i rank ∂Ψ_h/∂z (z_{k,i}, θ_k)`` over the samples: the generic rank, shape ``(N,)``."""
    ranks = np.linalg.matrix_rank(np.asarray(_step_jacobians(problem, theta)), rtol=rtol)
    return ranks.max(axis=1)


@jax.jit
def _step_jacobians(problem, theta):
    """``∂Ψ_h/∂z`` at every state of the forward pass, shape ``(N, S, d, d)``."""
    zs = forward(problem, theta)

    def jac(z, th):
        return jax.jacfwd(lambda u: problem.step(u[None], th)[0])(z)

    return jax.vmap(jax.vmap(jac, in_axes=(0, None)))(zs[:-1], theta)


def classify_problem(problem, controls, rtol=None) -> Architecture:
    """:func:`classify` for a control problem: widths ``(d_in, d, …, d, n_out)``, Jacobian ranks."""
    d_in, d = problem.x.shape[1], problem.width
    widths = (d_in,) + (d,) * (problem.N + 1) + (problem.loss.n_out,)
    ranks = (
        (d_in,)
        + tuple(int(r) for r in layer_ranks(problem, controls.theta, rtol))
        + weight_ranks([controls.w["A"]], rtol)
    )
    return classify(widths, ranks)
