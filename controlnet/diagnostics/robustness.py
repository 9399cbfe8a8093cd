"""Adversarial attacks through the adjoint, certified radii, and Lipschitz estimates.

**The input gradient is a co-state.** The co-states of :func:`controlnet.backward` are those of
the batch-summed Hamiltonian, ``p_0 = −∇_{z_0} J``, and the per-sample losses enter ``J`` as
their mean, so with per-sample co-states ``p̃_0 = S p_0``

    ∇_{x_i} ℓ_i = −J_{λ1}(x_i)ᵀ p̃_{0,i}

(``J_{λ1}`` the input layer's Jacobian: a projection for zero padding). One forward and one
backward pass give it for all samples at once (:func:`input_gradient`); with a tracking term
the attacked loss includes it (it depends on the inputs through the states).

**Attacks.** FGSM (Goodfellow, Shlens & Szegedy 2015) takes one step of size ``ε`` along
``sign(g)`` (ℓ∞) or ``g/‖g‖`` (ℓ2); the projected gradient attack (Madry et al. 2018) takes
``steps`` such steps of size ``step`` and projects back onto the ball ``‖δ‖ ≤ ε`` after each.

**Certified radius** (Tsuzuku, Sato & Sugiyama, "Lipschitz-margin training", NeurIPS 2018). If
the map ``x ↦ f(x)`` from inputs to outputs is ``L``-Lipschitz in the ℓ2 norm, the prediction
cannot change within

    r(x) = m(x) / L            (two classes, one score s: m = s for label 1, −s for label 0)
    r(x) = m(x) / (√2 L)       (several classes, m = f_y − max_{j≠y} f_j: each difference
                                f_y − f_j is √2 L-Lipschitz)

of a correctly classified ``x`` (``r = 0`` for a misclassified one), and within ``r/√n`` in the
ℓ∞ norm for inputs of ``n`` entries. :func:`lipschitz_bound`
bounds ``L`` for networks of :class:`~controlnet.LipschitzNet` layers: the input layer (zero
padding: 1), the layers (:meth:`~controlnet.LipschitzNet.layer_lipschitz` each: with the
orthogonal ``A`` the contractive step's exact constant ``max(|1 − h_C|, 1 − h_C/2)`` times
``1 + h_E``, below the ``√(1 − h_C + h_C²)(1 + h_E) ≤ 1`` of Murari et al.), and the read-out's
spectral norm. :func:`empirical_lipschitz` is a lower estimate for any network: the
largest ℓ2 norm of the input-output Jacobian over the given inputs.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from ..adjoint import backward
from ..costs import Logistic, SoftmaxCrossEntropy
from ..splitting import LieSplitting, StrangSplitting
from ..state import final_state, forward
from ..structured import LipschitzNet

__all__ = ["input_gradient", "outputs", "fgsm", "pgd", "margins", "certified_radius", "lipschitz_bound",
           "empirical_lipschitz", "robust_accuracy", "ball_direction", "ball_projection"]

NORMS = ("2", "inf")


def _check_norm(norm):
    if norm not in NORMS:
        raise ValueError(f"norm must be '2' or 'inf', got {norm!r}")


def outputs(problem, controls, x):
    """The network's outputs ``λ2(z_N(x))`` for inputs ``x`` (shaped like ``problem.x``)."""
    q = problem.replace_data(x, jnp.zeros((x.shape[0],) + problem.y.shape[1:], problem.y.dtype))
    zN = final_state(q, controls.theta, q.z0(controls.lift))
    return q.readout(zN, controls.w)


@jax.jit
def input_gradient(problem, controls, x, y):
    """``∇_{x_i} ℓ_i`` for every sample, shaped like ``x``, from the co-state ``p_0`` (module doc)."""
    z0, lift_vjp = jax.vjp(lambda v: problem.replace_data(v, y).z0(controls.lift), x)
    q = problem.replace_data(x, y)
    ps = backward(q, controls, forward(q, controls.theta, z0))[0]
    return lift_vjp(-x.shape[0] * ps[0])[0]


def _per_sample_norm(v):
    return jnp.sqrt(jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=1)).reshape((-1,) + (1,) * (v.ndim - 1))


def ball_direction(g, norm):
    """The steepest ascent step of unit size in the ball's norm: ``sign(g)`` (ℓ∞) or ``g/‖g_i‖``
    per sample (ℓ2)."""
    if norm == "inf":
        return jnp.sign(g)
    return g / jnp.maximum(_per_sample_norm(g), 1e-30)


def ball_projection(delta, eps, norm):
    """``Π_B(δ)``: each sample's ``δ_i`` onto ``‖δ_i‖ ≤ ε`` (clipping for ℓ∞, scaling for ℓ2)."""
    if norm == "inf":
        return jnp.clip(delta, -eps, eps)
    return delta * jnp.minimum(1.0, eps / jnp.maximum(_per_sample_norm(delta), 1e-30))


def fgsm(problem, controls, x, y, eps, norm="inf"):
    """``x + ε·sign(∇_x ℓ)`` (ℓ∞) or ``x + ε ∇_x ℓ/‖∇_x ℓ‖`` (ℓ2), every sample at once."""
    _check_norm(norm)
    return x + eps * ball_direction(input_gradient(problem, controls, x, y), norm)


@functools.partial(jax.jit, static_argnames=("norm", "steps"))
def pgd(problem, controls, x, y, eps, norm="2", steps=20, step=None):
    """Projected gradient ascent on the loss within ``‖x' − x‖ ≤ ε`` (module doc): ``steps``
    steps of size ``step`` (default ``2.5 ε / steps``, Madry et al.'s rule), each followed by the
    projection onto the ball. Returns the attacked inputs."""
    _check_norm(norm)
    step = 2.5 * eps / steps if step is None else step

    def body(_, xa):
        g = input_gradient(problem, controls, xa, y)
        return x + ball_projection(xa + step * ball_direction(g, norm) - x, eps, norm)

    return jax.lax.fori_loop(0, steps, body, x)


def margins(problem, controls, x, y):
    """``m(x)`` (module doc): positive exactly where ``x`` is classified correctly."""
    out = outputs(problem, controls, x)
    if isinstance(problem.loss, Logistic):
        return jnp.where(y > 0.5, out[..., 0], -out[..., 0])
    if isinstance(problem.loss, SoftmaxCrossEntropy):
        y = y.astype(jnp.int32)
        own = jnp.take_along_axis(out, y[:, None], axis=1)[:, 0]
        others = jnp.where(jax.nn.one_hot(y, out.shape[1], dtype=bool), -jnp.inf, out)
        return own - jnp.max(others, axis=1)
    raise ValueError(f"margins need a classification loss (Logistic or SoftmaxCrossEntropy), "
                     f"got {type(problem.loss).__name__}")


def certified_radius(problem, controls, x, y, lipschitz, norm="2"):
    """The radius around each ``x`` within which the prediction provably stays, given an upper
    bound ``lipschitz`` of the network's ℓ2 Lipschitz constant (module doc); 0 where ``x`` is
    misclassified. ``norm="inf"``: the ℓ∞ radius ``r/√n`` (``n`` the number of input entries),
    since ``‖δ‖₂ ≤ √n ‖δ‖∞``."""
    _check_norm(norm)
    m = margins(problem, controls, x, y)
    scale = 1.0 if isinstance(problem.loss, Logistic) else math.sqrt(2.0)
    if norm == "inf":
        scale *= math.sqrt(math.prod(x.shape[1:]))
    return jnp.maximum(m, 0.0) / (scale * lipschitz)


def lipschitz_bound(problem, controls):
    """An upper bound of the ℓ2 Lipschitz constant of ``x ↦ λ2(z_N(x))`` for a network of
    :class:`~controlnet.LipschitzNet` layers with zero-padding input, integrated by Lie or
    Strang splitting: ``layer_lipschitz^N · ‖A‖₂`` (module doc). Other networks have no certified
    bound here; use :func:`empirical_lipschitz` for an estimate."""
    if not isinstance(problem.dynamics, LipschitzNet):
        raise ValueError(f"lipschitz_bound certifies networks of LipschitzNet layers, not "
                         f"{type(problem.dynamics).__name__}; use empirical_lipschitz for an estimate")
    if not isinstance(problem.integrator, (LieSplitting, StrangSplitting)):
        raise ValueError("a LipschitzNet is 1-Lipschitz per layer only with its own step sizes: integrate it with "
                         "cn.LieSplitting() or cn.StrangSplitting()")
    if problem.lift is not None or problem.x.ndim != 2:
        raise ValueError("lipschitz_bound takes vector inputs with the zero-padding lift")
    strang = isinstance(problem.integrator, StrangSplitting)
    layers = problem.dynamics.layer_lipschitz(strang) ** problem.N
    return layers * jnp.linalg.norm(controls.w["A"], ord=2)


@jax.jit
def empirical_lipschitz(problem, controls, x):
    """``max_i ‖∂f/∂x(x_i)‖₂``: the largest local Lipschitz constant of the input-output map at
    the inputs ``x``, a lower estimate of its Lipschitz constant."""

    def f(v):
        return outputs(problem, controls, v[None])[0]

    J = jax.vmap(jax.jacfwd(f))(x)
    J = J.reshape(J.shape[0], J.shape[1], -1)
    return jnp.max(jnp.linalg.norm(J, ord=2, axis=(1, 2)))


def robust_accuracy(problem, controls, x, y, eps, norm="2", steps=20):
    """The accuracy on inputs attacked by :func:`pgd` at radius ``eps``."""
    xa = pgd(problem, controls, x, y, eps, norm=norm, steps=steps)
    return float(jnp.mean(margins(problem, controls, xa, y) > 0))
